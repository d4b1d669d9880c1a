"""The reference system's published networks, converted to batml bundles, on real and simulated calls.

Prints one row per (model, set): detection AP (all bat calls of the set, class-agnostic,
matched within 10 ms), top-1 group accuracy (the matched calls whose species maps to one of
the seven groups: the most probable group is the annotated one), the number of calls and the
number the top-1 accuracy is computed on.

Models (``batml convert`` makes each bundle from ``../shared/data/reference_models``):

``batml default``             the bundled model (hybrid: the reference cnn8 fine-tuned by batml on
                              simulated calls and the real sets, these included)
``ref cnn8``                  the reference's cnn8 network, as ``batml convert`` makes it
                              (log scaling at the expanded rate: ``log_scale_expansion = 10``)
``ref cnn8, log x1``          the same network fed batml's default features, to show what the
                              setting is worth
``ref cnn8, own features``    the same network fed the reference's own features, computed here
                              from the audio: each 260x40 window zoomed by 0.5 with a linear
                              spline (``scipy.ndimage.zoom(order=1)``) instead of batml's 2x2
                              block average of the whole spectrogram
``ref hybrid CNN head``       the hybrid's CNN with its own 8-output head (``cnn8`` bundle)
``ref cnn2 detector``         the cnn2 detector (one class: detection AP only)
``ref hybrid + boosters``     the hybrid's CNN, boosters trained by batml on the simulated
                              training split (``--booster-rounds`` trees each; 0 skips it)

Sets: ``annotated`` (``real/annotated``: 3 recordings, batdetect2 JSON; the calls labelled only
"Bat" count for detection), ``tadarida`` (``real/tadarida_rsdb``, time-expanded x10: bat calls
of the eti/ta labels as batml's importer reads them, one row per call),
``simulated`` (the test split of ``batml simulate sim --minutes 10 --seed 3``). To add a set,
add a function returning an :class:`EvaluationSet` to :data:`SETS` (soundClass's sqlite labels
are left for its importer: their positions are not checked yet).

Licences: the networks are for research use only, non-commercial (luciledierckx/batML);
``real/annotated`` is CC BY-NC 4.0, ``real/tadarida_rsdb`` GPL-3.

Usage::

    python benchmarks/reference_models.py                       # all sets and models
    python benchmarks/reference_models.py --sets annotated tadarida --booster-rounds 0
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.config import REFERENCE_GROUPS  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CNN8 = "25_05_21_12_12_25_classif_cnn8_hnm1"
HYBRID_WEIGHTS = "02_06_21_09_32_04_features_hybrid_cnn_xgboost_hnm2_weights.npy"
HYBRID_THRESHOLDS = "02_06_21_09_32_04_classif_hybrid_cnn_xgboost_hnm2_thresholds.npy"
DETECTOR = "25_05_21_15_09_28_detect_cnn2_hnm0_weights.npy"


@dataclass
class EvaluationSet:
    """Annotated recordings to score models on.

    ``calls``: ``recording`` (a name of ``paths``), ``position`` (call start, real s),
    ``class`` (1..7, a group of :data:`REFERENCE_GROUPS`; 0 for a bat call of no known group,
    which counts for detection only). ``paths``: every recording to score, by name (without
    extension), recordings without calls included.
    """

    name: str
    audio: Path
    paths: dict[str, Path]
    calls: pd.DataFrame
    time_expansion: float | None = None
    licence: str = ""
    notes: list[str] = field(default_factory=list)


def _group_class(species: str | None, groups: dict[str, str]) -> int:
    group = groups.get(species or "")
    return REFERENCE_GROUPS.index(group) + 1 if group else 0


def annotated_set(args) -> EvaluationSet:
    """``real/annotated``: every echolocation event; "Bat"/"Unknown" ones have no group."""
    from pipeline.annotations.names import species_groups

    root, groups, rows = args.real / "annotated", species_groups(), []
    paths = {p.stem: p for p in sorted((root / "audio").glob("*.wav"))}
    for path in sorted((root / "anns").glob("*.json")):
        doc = json.loads(path.read_text())
        name = Path(doc["id"]).stem
        expansion = float(doc.get("time_exp", 1) or 1)
        rows += [
            (name, float(event["start_time"]) / expansion, _group_class(event.get("class"), groups))
            for event in doc["annotation"]
            if event.get("event") == "Echolocation"
        ]
    calls = pd.DataFrame(rows, columns=["recording", "position", "class"])
    return EvaluationSet("annotated", root / "audio", paths, calls, None, "CC BY-NC 4.0")


def tadarida_set(args) -> EvaluationSet:
    """``real/tadarida_rsdb`` as batml's importer reads it (:func:`pipeline.annotations.read_tadarida`:
    the elements of one call joined into one call): every bat sound counts for detection
    (echolocation, buzz, social); echolocation calls of a species with a group for top-1.
    """
    from pipeline.annotations import read_tadarida
    from pipeline.annotations.names import species_groups

    folder = args.real / "tadarida_rsdb" / "RSDB_sample" / "20160822"
    calls = read_tadarida(folder).calls
    bats = calls[calls["event"].isin(["echolocation", "buzz", "social"]) & calls["class"].notna()]
    groups = species_groups()
    classes = [_group_class(species, groups) if event == "echolocation" else 0
               for species, event in zip(bats["class"], bats["event"])]  # fmt: skip
    table = pd.DataFrame({"recording": [Path(f).name for f in bats["file"]], "position": bats["position"].to_numpy(),
                          "class": classes})  # fmt: skip
    paths = {p.stem: p for p in sorted(folder.glob("*.wav"))}
    return EvaluationSet("tadarida", folder, paths, table, 10.0, "GPL-3")


def simulated_set(args) -> EvaluationSet:
    """The test split of ``batml simulate sim --minutes M --seed S``."""
    from pipeline.annotations.dataset import read_dataset
    from pipeline.simulation.archive import simulate_archive

    root = args.work / f"sim-{args.sim_minutes:g}min-seed{args.sim_seed}"
    if not (root / "annotations.npz").exists():
        simulate_archive(root, minutes=args.sim_minutes, seed=args.sim_seed, progress=False)
    test = read_dataset(root / "annotations.npz").test
    paths = {r.file: root / f"{r.file}.wav" for r in test}
    rows = [(r.file, float(p), int(c)) for r in test for p, c in zip(r.positions, r.classes)]
    calls = pd.DataFrame(rows, columns=["recording", "position", "class"])
    return EvaluationSet("simulated", root, paths, calls, None, "batml's simulator")


SETS = {"annotated": annotated_set, "tadarida": tadarida_set, "simulated": simulated_set}


# --- scores ----------------------------------------------------------------------------------


def scores(calls: pd.DataFrame, detections: pd.DataFrame, classes: list[str]) -> dict:
    """Detection AP over all calls; top-1 group accuracy over the matched calls with a group."""
    from pipeline.evaluation.matching import call_events, match_detections
    from pipeline.evaluation.metrics import detection_average_precision

    anonymous = calls.assign(**{"class": 1})  # detection is class-agnostic
    ap = detection_average_precision(anonymous, detections).average_precision
    result = {"ap": ap, "n_calls": len(call_events(anonymous)), "top1": float("nan"), "n_top1": 0}
    if list(classes) != list(REFERENCE_GROUPS) or detections.empty:
        return result
    events = call_events(anonymous)
    labels = calls[calls["class"] > 0].groupby(["recording", "position"])["class"].apply(set)
    probs = detections[[f"prob_{c}" for c in REFERENCE_GROUPS]].to_numpy(np.float64)
    right = total = 0
    for row, event in enumerate(match_detections(anonymous, detections)):
        if event < 0:
            continue
        key = (events["recording"].iloc[event], events["position"].iloc[event])
        if key in labels.index:
            total += 1
            right += int(np.argmax(probs[row]) + 1 in labels.loc[key])
    result.update(top1=right / total if total else float("nan"), n_top1=total)
    return result


# --- detections ------------------------------------------------------------------------------


def cube_detections(bundle, evaluation: EvaluationSet, work: Path, client) -> pd.DataFrame:
    """batml's dense detection of every recording of the set, from a cube made with the
    bundle's spectrogram settings (cached by fingerprint)."""
    from pipeline.config import IngestSettings, Settings
    from pipeline.detection.recording import detect_recording
    from pipeline.ingestion import ingest
    from pipeline.io.cube import open_cube
    from pipeline.annotations.matching import match_recordings
    from pipeline.model.predictor import Predictor

    cube_path = work / f"cube-{evaluation.name}-{bundle.fingerprint}.zarr"
    settings = Settings(spectrogram=bundle.spectrogram, ingest=IngestSettings(time_expansion=evaluation.time_expansion))
    report = ingest(evaluation.audio, cube_path, settings=settings, client=client, progress=False)
    if not report.complete:
        raise RuntimeError(f"{cube_path}: incomplete cube")
    cube = open_cube(cube_path)
    predictor = Predictor.from_bundle(bundle)
    names = sorted(evaluation.paths)
    indices, problems = match_recordings(cube, names)
    evaluation.notes += [p for p in problems if p not in evaluation.notes]
    tables = []
    for name, index in zip(names, indices):
        if index is None:
            continue
        one = cube.batml.recording(index)
        spectrogram = one["spectrogram"].values.astype(np.float32)
        events = detect_recording(predictor, spectrogram, one["offset"].values, bundle.classes, {"detection": 0.0})
        tables.append(events.assign(recording=name))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["recording", "time", "score"])


def reference_frames(samples: np.ndarray, real_rate: float) -> tuple[np.ndarray, int, float]:
    """The reference's denoised, smoothed log spectrogram of a recording (its own steps).

    ``samples`` in 16-bit units. The reference treated real-time audio as if time-expanded
    x10 (rate divided by 10, then its 23.22 ms window): frames of ``int(0.02322 * int(rate /
    10))`` samples, 75 % overlap, Hann, power without DC, bins 11..270 (zeros above Nyquist),
    ``log(1 + 2 / (expanded rate * sum(hann**2)) * power)``, per-frequency means subtracted
    over frames of mean log-magnitude above 0.5 and the others, clipped at 0, Gaussian of
    sigma 1 repeating the edges. Returns ``(frames, 260)`` lowest frequency first, the hop
    in samples, and the expanded rate.
    """
    from scipy import ndimage

    expanded = int(real_rate / 10)
    nfft = int(0.02322 * expanded)
    hop = nfft - int(0.75 * nfft)
    n_frames = (len(samples) - (nfft - hop)) // hop
    window = np.hanning(nfft)
    frames = np.lib.stride_tricks.sliding_window_view(samples, nfft)[::hop][:n_frames]
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    spec = np.zeros((n_frames, 260))
    top = min(270, nfft // 2)
    spec[:, : top - 10] = power[:, 11 : top + 1]
    spec = np.log1p(2.0 / (expanded * np.sum(window**2)) * spec)
    active = spec.mean(axis=1) > 0.5
    for frames_of in (active, ~active):
        if frames_of.any():
            spec[frames_of] -= spec[frames_of].mean(axis=0)
    np.clip(spec, 0, None, out=spec)
    return ndimage.gaussian_filter(spec, 1.0, mode="nearest", truncate=4.0), hop, expanded


def reference_windows(spec: np.ndarray, first: int, stop: int) -> np.ndarray:
    """The reference's windows starting at frames ``[first, stop)``: 260x40, highest frequency
    first, zoomed by 0.5 with a linear spline; ``(n, 130, 20, 1)`` float32."""
    from scipy import ndimage

    image = spec[:, ::-1].T  # (260, frames), highest frequency first
    patches = np.lib.stride_tricks.sliding_window_view(image, 40, axis=1)[:, first:stop].transpose(1, 0, 2)
    return ndimage.zoom(patches, (1, 0.5, 0.5), order=1).astype(np.float32)[..., None]


def own_feature_detections(bundle, evaluation: EvaluationSet, batch: int = 1024) -> pd.DataFrame:
    """The reference's detection of each recording with its own features: every frame's window
    scored, probabilities smoothed (sigma 0.006 s / 5.8 ms), NMS over +-21 frames."""
    import soundfile

    from pipeline.detection.events import find_detections, smooth_probabilities

    network = bundle.network("cnn_8")
    tables = []
    for name, path in sorted(evaluation.paths.items()):
        samples, header_rate = soundfile.read(path, dtype="float32", always_2d=True)
        real_rate = header_rate * (evaluation.time_expansion or 1.0)
        spec, hop, _ = reference_frames(samples[:, 0].astype(np.float64) * 32768.0, real_rate)
        n = len(spec)
        probs = np.zeros((n, len(bundle.classes) + 1), np.float32)
        probs[:, 0] = 1.0  # the last 39 frames start no whole window
        for first in range(0, max(n - 39, 0), batch):
            stop = min(first + batch, n - 39)
            windows = reference_windows(spec, first, stop)[:, ::-1]  # the bundle reverses them back
            probs[first:stop] = network(np.ascontiguousarray(windows), training=False).numpy()
        probs = smooth_probabilities(probs, 0.006 / (0.25 * 0.02322))
        times = np.arange(n) * hop / real_rate
        events = find_detections(probs, times, bundle.classes, {"detection": 0.0}, radius_columns=21)
        tables.append(events.assign(recording=name))
    return pd.concat(tables, ignore_index=True)


# --- models ----------------------------------------------------------------------------------


def make_models(args, client) -> dict[str, Path]:
    from pipeline.config import SpectrogramSettings
    from pipeline.model import reference
    from pipeline.model.bundle import DEFAULT_BUNDLE

    models_dir = args.work / "models"
    weights = args.reference
    made = {
        "batml default": DEFAULT_BUNDLE,
        "ref cnn8": reference.network_bundle(
            weights / f"{CNN8}_weights.npy", models_dir / "ref-cnn8", thresholds_path=weights / f"{CNN8}_thresholds.npy"
        ),
        "ref cnn8, log x1": reference.network_bundle(
            weights / f"{CNN8}_weights.npy", models_dir / "ref-cnn8-log1",
            thresholds_path=weights / f"{CNN8}_thresholds.npy", spectrogram=SpectrogramSettings(),
        ),
        "ref hybrid CNN head": reference.network_bundle(weights / HYBRID_WEIGHTS, models_dir / "ref-hybrid-head"),
        "ref cnn2 detector": reference.network_bundle(weights / DETECTOR, models_dir / "ref-detector"),
    }  # fmt: skip
    if args.booster_rounds > 0:
        out = models_dir / f"ref-hybrid-boosters-{args.booster_rounds}"
        if not (out / "manifest.json").exists():
            sim = simulated_set(args)
            xgb = args.work / f"xgboost-{args.booster_rounds}.csv"
            xgb.write_text(
                "name,max_depth,eta,n_estimators,gamma,subsample,scale_pos_weight,min_child_weight\n"
                f"xgboost_spectrogram,15,0.19684057798124177,{args.booster_rounds},0.001,0.9,1.5,1\n"
            )
            t0 = time.perf_counter()
            reference.hybrid_bundle(
                weights / HYBRID_WEIGHTS, sim.audio / "annotations.npz", sim.audio, out,
                thresholds_path=weights / HYBRID_THRESHOLDS, xgboost_csv=str(xgb), client=client, progress=False,
                cube=args.work / "cube-hybrid-training.zarr",
            )  # fmt: skip
            print(f"(boosters trained in {time.perf_counter() - t0:.0f} s)", flush=True)
        made["ref hybrid + boosters"] = out
    return made


def main() -> None:
    from distributed import Client, LocalCluster

    from pipeline.model.bundle import load_bundle

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", type=Path, default=SHARED / "real")
    parser.add_argument("--reference", type=Path, default=SHARED / "reference_models")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--sim-minutes", type=float, default=10.0)
    parser.add_argument("--sim-seed", type=int, default=3)
    parser.add_argument("--booster-rounds", type=int, default=150, help="trees per booster of the hybrid row (0: skip it)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/batml-reference-bench"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    with LocalCluster(n_workers=args.workers, threads_per_worker=1) as cluster, Client(cluster) as client:
        models = make_models(args, client)
        sets = [SETS[name](args) for name in args.sets]
        print(f"{'model':<24} {'set':<10} {'det AP':>6} {'top-1':>6} {'calls':>6} {'top-1 n':>7} {'s':>5}", flush=True)
        for evaluation in sets:
            for label, path in models.items():
                bundle = load_bundle(path)
                t0 = time.perf_counter()
                detections = cube_detections(bundle, evaluation, args.work, client)
                _print_row(label, evaluation, scores(evaluation.calls, detections, bundle.classes), t0)
                if label == "ref cnn8":
                    t0 = time.perf_counter()
                    detections = own_feature_detections(bundle, evaluation)
                    _print_row("ref cnn8, own features", evaluation, scores(evaluation.calls, detections, bundle.classes), t0)
            for note in evaluation.notes:
                print(f"  ({evaluation.name}: {note})")
    print("licences: reference networks research use only, non-commercial (luciledierckx/batML); "
          + "; ".join(f"{s.name} {s.licence}" for s in sets))  # fmt: skip


def _print_row(label: str, evaluation: EvaluationSet, s: dict, t0: float) -> None:
    top1 = f"{s['top1']:.3f}" if s["n_top1"] else "-"
    print(
        f"{label:<24} {evaluation.name:<10} {s['ap']:>6.3f} {top1:>6} {s['n_calls']:>6} {s['n_top1']:>7} "
        f"{time.perf_counter() - t0:>5.0f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
