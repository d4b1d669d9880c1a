"""Check the units of the real annotation sets against their audio, and print the figures.

Usage::

    python benchmarks/annotation_units.py [--data ../shared/data/real]

For ``tadarida_rsdb`` (WAV headers 38.4 kHz, time-expanded x10): whether the ``.ta`` times
(``StTime``, ``Dur``, ms) and frequencies (``Fmin``, ``Fmax``, kHz) are real, by reading each
labelled call's samples at the real rate and comparing its spectrum with the label, and
comparing the band's energy at the label's time read as real time and read as header time.

For ``soundclass`` (44.1 kHz headers, x10): whether ``label_position`` is a sample index, and
where in the call it falls, from the envelope of the signal above 15 kHz (real).

The figures are quoted in the docstrings of :mod:`pipeline.annotations.tadarida` and
:mod:`pipeline.annotations.soundclass`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.signal
import soundfile

from pipeline.annotations import read_soundclass, read_tadarida
from pipeline.annotations.tabular import read_delimited

HERE = Path(__file__).resolve().parent
TIME_EXPANSION = 10


def band_energy_ratio(power: np.ndarray, freqs: np.ndarray, times: np.ndarray, start: float, end: float,
                      low: float, high: float) -> float:
    """Mean power in [low, high] Hz during [start, end] s over its mean over the whole recording."""
    band = (freqs >= low) & (freqs <= high)
    during = (times >= start) & (times <= end)
    if not band.any() or not during.any():
        return float("nan")
    return float(power[band][:, during].mean() / power[band].mean())


def tadarida(data: Path) -> None:
    annotated = read_tadarida(data / "tadarida_rsdb", element_gap=0)  # the elements, as Tadarida-D detects them
    folder = data / "tadarida_rsdb" / "RSDB_sample" / "20160822"
    rows = []
    headers = []
    for name, calls in annotated.calls.groupby("file"):
        stem = name.rsplit("/", 1)[-1]
        samples, header_rate = soundfile.read(str(folder / f"{stem}.wav"))
        rate = header_rate * TIME_EXPANSION
        ta = read_delimited(folder / "txt" / f"{stem}.ta")
        headers.append((header_rate, len(samples) / header_rate, float(ta.rows[0]["SampleRate"]), float(ta.rows[0]["FileDur"])))
        freqs, times, power = scipy.signal.spectrogram(samples, fs=rate, nperseg=512, noverlap=384)
        for call in calls.to_dict("records"):
            start, end, low, high = call["position"], call["end"], call["low_freq"], call["high_freq"]
            real = band_energy_ratio(power, freqs, times, start, end, low, high)
            header = band_energy_ratio(power, freqs, times, start / TIME_EXPANSION, end / TIME_EXPANSION, low, high)
            segment = samples[int(start * rate): int(end * rate) + 1]
            peak = np.nan
            if len(segment) >= 64:
                f, p = scipy.signal.periodogram(segment * np.hanning(len(segment)), fs=rate)
                p[f < 8000] = 0
                peak = f[np.argmax(p)]
            rows.append({"class": call["class"], "event": call["event"], "real": real, "header": header, "peak": peak,
                         "inside": low - 1000 <= peak <= high + 1000})  # fmt: skip
    table = pd.DataFrame(rows)
    head = pd.DataFrame(headers, columns=["wav_rate", "wav_duration", "ta_rate", "ta_duration"])
    print("tadarida_rsdb: WAV header rate", sorted(set(head["wav_rate"])), "Hz; .ta SampleRate", sorted(set(head["ta_rate"])))
    print(f"  .ta FileDur / (WAV header duration / 10): median {np.median(head['ta_duration'] / (head['wav_duration'] / 10)):.4f}")
    bats = table[table["event"] == "echolocation"]
    print(f"  band energy at the label, read as real time: median {bats['real'].median():.2f} x the band's mean "
          f"({(bats['real'] > 2).mean():.0%} above 2x); read as header time (/10): median {bats['header'].median():.2f} "
          f"({(bats['header'] > 2).mean():.0%} above 2x); {len(bats)} bat echolocation calls")
    print("  peak frequency of the labelled samples (kHz, real), by species: median, share inside Fmin..Fmax")
    for species, group in bats.groupby("class"):
        print(f"    {species:28s} {group['peak'].median() / 1000:6.1f}  {group['inside'].mean():4.0%}  (n={len(group)})")


def soundclass(data: Path) -> None:
    folder = data / "soundclass"
    calls = read_soundclass(folder / "demo_db.sqlite3", time_expansion=TIME_EXPANSION).calls
    to_peak, to_start, share, wrong, fraction = [], [], [], [], []
    for name, group in calls.groupby("file"):
        samples, header_rate = soundfile.read(str(folder / f"{name}.wav"))
        rate = header_rate * TIME_EXPANSION
        mono = samples.mean(axis=1) if samples.ndim > 1 else samples
        sos = scipy.signal.butter(4, 15_000, "highpass", fs=rate, output="sos")
        envelope = np.convolve(np.abs(scipy.signal.sosfiltfilt(sos, mono)), np.ones(64) / 64, "same")
        quiet = np.median(envelope)
        for position in group["position"]:
            index = int(round(position * rate))
            fraction.append(index / len(mono))
            lo = max(0, index - 3000)
            peak = lo + int(np.argmax(envelope[lo: index + 3000]))
            threshold = quiet + 0.1 * (envelope[peak] - quiet)
            start = peak
            while start > 0 and envelope[start] > threshold:
                start -= 1
            to_peak.append(peak - index)
            to_start.append(start - index)
            share.append(envelope[max(0, index - 441): index + 441].max() / quiet)
            other = int(round(position * 1.3 * rate)) % len(envelope)
            wrong.append(envelope[max(0, other - 441): other + 441].max() / quiet)
    print(f"soundclass: {len(calls)} labels with audio; label_position / frames: max {max(fraction):.3f}")
    print(f"  envelope peak - label: median {np.median(to_peak):.0f} samples, median |.| {np.median(np.abs(to_peak)):.0f} "
          f"({np.median(np.abs(to_peak)) / (44100 * TIME_EXPANSION) * 1e6:.0f} us real); call start - label: median "
          f"{np.median(to_start):.0f} samples ({np.median(to_start) / (44100 * TIME_EXPANSION) * 1e3:.2f} ms real)")
    print(f"  envelope within 1 ms of the label > 3x the recording's median: {np.mean(np.array(share) > 3):.0%} "
          f"(at 1.3 x the label's time: {np.mean(np.array(wrong) > 3):.0%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "real")
    args = parser.parse_args()
    tadarida(args.data)
    soundclass(args.data)


if __name__ == "__main__":
    main()
