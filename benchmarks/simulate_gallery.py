"""Spectrograms of simulated calls beside real ones, for checking the simulator by eye.

Writes PNG files (matplotlib) into ``--out`` and prints what each holds:

- ``generic.png``: one generic bat of each shape (FM, FM-QCF, QCF, CF-FM, broadband-FM), plus
  a feeding buzz and social calls, each as a 250 ms excerpt around its loudest call;
- ``varied.png``: the first recordings of a ``--preset varied`` archive (noises, microphones,
  sample rates, reverberation...);
- ``real.png``: real recordings of ``../shared/data/real`` rendered the same way (Tadarida
  RSDB, time-expanded x10; Batlogger, AudioMoth and Echo Meter files), when the folder exists.

    python benchmarks/simulate_gallery.py --out /tmp/gallery
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scipy.signal  # noqa: E402
import soundfile  # noqa: E402

from pipeline.simulation import SimulationSettings, simulate_archive, simulate_recording  # noqa: E402
from pipeline.simulation.settings import GENERIC_SHAPES  # noqa: E402

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"


def _panel(ax, samples: np.ndarray, rate: float, title: str, start: float = 0.0, seconds: float = 0.25) -> None:
    a = int(start * rate)
    part = samples[a:a + int(seconds * rate)].astype(np.float64)
    nfft = 512 if rate >= 200_000 else 256
    f, t, s = scipy.signal.spectrogram(part, rate, nperseg=nfft, noverlap=nfft * 3 // 4, window="hann")
    db = 10 * np.log10(s + 1e-20)
    ax.pcolormesh(t + start, f / 1e3, db, vmin=np.percentile(db, 50), vmax=db.max(), shading="auto", cmap="magma")
    ax.set_ylim(0, min(rate / 2e3, 160))
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=6)


def _loudest_start(recording) -> float:
    call = max(recording.calls, key=lambda c: c.amplitude)
    return max(call.position - 0.08, 0.0)


def generic_gallery(out: Path) -> None:
    cases = [(shape, {"generic_shapes": (shape,)}) for shape in GENERIC_SHAPES]
    cases += [("buzz", {"buzz_probability": 1.0}), ("social", {"social_probability": 1.0})]
    fig, axes = plt.subplots(len(cases), 2, figsize=(10, 2.0 * len(cases)))
    for row, (name, changes) in enumerate(cases):
        for col, seed in enumerate((1, 2)):
            settings = SimulationSettings(generic_fraction=1.0, **changes)
            rate = 384_000
            rng = np.random.default_rng(seed)
            recording = simulate_recording(rate, 2 * rate, 1, rng, settings=settings)
            if not recording.calls:
                axes[row, col].set_title(f"{name}: no call", fontsize=8)
                continue
            events = [c for c in recording.calls if c.event != "echolocation"] or recording.calls
            start = max(events[0].position - 0.05, 0.0) if name in ("buzz", "social") else _loudest_start(recording)
            species = recording.calls[0].species.species
            _panel(axes[row, col], recording.samples, rate, f"{name} (seed {seed}): {species}", start)
            print(f"generic.png row {row + 1}: {name}, seed {seed}: {len(recording.calls)} calls, "
                  f"{sorted({c.event for c in recording.calls})}")
    fig.tight_layout()
    fig.savefig(out / "generic.png", dpi=110)


def varied_gallery(out: Path) -> None:
    archive = simulate_archive(out / "varied", minutes=1.0, seed=4, settings=SimulationSettings.varied())
    fig, axes = plt.subplots(4, 2, figsize=(10, 8))
    for ax, name in zip(axes.flat, archive.files, strict=False):
        samples, header_rate = soundfile.read(archive.root / name, dtype="int16")
        rate = header_rate * (10 if header_rate < 96_000 else 1)
        _panel(ax, samples, rate, f"{name} ({rate / 1e3:g} kHz)", 0.0, min(1.0, samples.size / rate))
        print(f"varied.png: {name}")
    fig.tight_layout()
    fig.savefig(out / "varied.png", dpi=110)


def real_gallery(out: Path) -> None:
    tadarida = sorted((REAL / "tadarida_rsdb" / "RSDB_sample" / "20160822").glob("*.wav"))[:4]
    others = [REAL / "unannotated" / n for n in ("0166_20240531_223911.wav", "Audiomoth.WAV", "Echometer.wav",
                                                  "20230322_172000_selec2.wav")]
    files = [(p, 10) for p in tadarida] + [(p, 1) for p in others if p.exists()]
    if not files:
        print("real recordings not found: real.png not drawn")
        return
    fig, axes = plt.subplots(4, 2, figsize=(10, 8))
    for ax, (path, expansion) in zip(axes.flat, files, strict=False):
        samples, header_rate = soundfile.read(path, dtype="int16", always_2d=True)
        _panel(ax, samples[:, 0], header_rate * expansion, f"{path.name[:40]} (real)", 0.0, 1.0)
        print(f"real.png: {path.name}")
    fig.tight_layout()
    fig.savefig(out / "real.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("simulate-gallery"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    generic_gallery(args.out)
    varied_gallery(args.out)
    real_gallery(args.out)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
