"""Recall at low detection thresholds and detection AP, on the real annotated sets, as users run detection.

For each set, the model (the bundled one by default) detects the calls of every recording as
``batml detect`` does (:meth:`pipeline.model.Model.detect`: the fast path, the same thresholds),
at the model's own detection threshold and at each ``--thresholds`` value, and prints:

* ``detections``: rows of the table at that threshold;
* ``recall``: the annotated bat echolocation events matched (within 10 ms, each at most once,
  :func:`pipeline.evaluation.matching.match_detections`) by those rows;
* ``lowest score``: the lowest ``score`` written;
* ``AP``: detection average precision of that ranked list
  (:func:`pipeline.evaluation.metrics.detection_average_precision`), events never detected
  counted as misses.

The row ``every peak (dense)`` is the model's ceiling: every window scored (``--dense``), every
peak of the call score kept (threshold 0).

Then a check of the score's calibration on real calls: the set's recordings are split in two
(alternately, by name), a calibration is fitted on the every-peak detections of one half
(:func:`pipeline.detection.calibration.fit_calibration`, as training does on its validation
recordings) and applied to the other; per bin of calibrated score, it prints the peaks, their
mean calibrated score and the fraction that matched a call (their precision), which the
calibration aims to equal.

Sets (``../shared/data/real``, see its README): ``annotated`` (3 recordings, batdetect2 JSON,
CC BY-NC 4.0) and ``tadarida`` (25 recordings time-expanded x10, Tadarida labels, GPL-3); the
calls are their ``echolocation`` rows. Nothing is written.

    python benchmarks/low_threshold_recall.py
    python benchmarks/low_threshold_recall.py --model models/mine --thresholds 0.01 0.1 0.5
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"

SETS = {
    "annotated": (REAL / "annotated" / "anns", REAL / "annotated" / "audio", None, "batdetect2", "CC BY-NC 4.0"),
    "tadarida": (REAL / "tadarida_rsdb" / "RSDB_sample" / "20160822",) * 2 + (10.0, "tadarida", "GPL-3"),
}


def echolocation_calls(annotations: Path, reader: str) -> pd.DataFrame:
    """The set's echolocation calls: ``recording`` (file stem), ``position`` (real s)."""
    from pipeline.annotations import read_batdetect2, read_tadarida

    calls = {"batdetect2": read_batdetect2, "tadarida": read_tadarida}[reader](annotations).calls
    calls = calls[calls["event"] == "echolocation"]
    return pd.DataFrame({"recording": calls["file"].map(lambda f: Path(f).stem), "position": calls["position"]})


def as_detections(table: pd.DataFrame) -> pd.DataFrame:
    """A table of :meth:`pipeline.model.Model.detect` as :mod:`pipeline.evaluation` reads detections."""
    return pd.DataFrame({"recording": table["file"].map(lambda f: Path(f).stem), "time": table["time"],
                         "score": table["score"].astype(float)})  # fmt: skip


def scores_of(calls: pd.DataFrame, table: pd.DataFrame) -> dict:
    """Recall, AP and the lowest score of one table of detections against the calls."""
    from pipeline.evaluation.matching import call_events, match_detections
    from pipeline.evaluation.metrics import detection_average_precision

    detections = as_detections(table)
    matches = match_detections(calls, detections)
    n_events = len(call_events(calls))
    return {
        "detections": len(detections),
        "recall": len(set(matches[matches >= 0])) / n_events,
        "lowest score": float(detections["score"].min()) if len(detections) else float("nan"),
        "AP": detection_average_precision(calls, detections, matches=matches).average_precision,
        "events": n_events,
    }


def matched_peaks(calls: pd.DataFrame, table: pd.DataFrame) -> np.ndarray:
    """Whether each detection of a table matched a call."""
    from pipeline.evaluation.matching import match_detections

    return match_detections(calls, as_detections(table)) >= 0


def calibration_check(name: str, calls: pd.DataFrame, every: pd.DataFrame, bins: int = 5) -> list[dict]:
    """Fit a calibration on half of the recordings' peaks, check it on the other half."""
    from pipeline.detection.calibration import fit_calibration

    stems = sorted(every["file"].map(lambda f: Path(f).stem).unique())
    halves = every["file"].map(lambda f: stems.index(Path(f).stem) % 2).to_numpy()
    fit, check = every[halves == 0], every[halves == 1]
    calibration = fit_calibration(fit["score"].to_numpy(), matched_peaks(calls, fit))
    score = calibration(check["score"].to_numpy())
    matched = matched_peaks(calls, check)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(score, edges[1:-1]), 0, bins - 1)
    return [
        {"set": name, "calibrated score": f"{edges[b]:.1f}-{edges[b + 1]:.1f}", "peaks": int((which == b).sum()),
         "mean score": float(score[which == b].mean()) if (which == b).any() else np.nan,
         "precision": float(matched[which == b].mean()) if (which == b).any() else np.nan}
        for b in range(bins)
    ]  # fmt: skip


def run_set(name: str, model_path, thresholds: list[float], checks: list) -> list[dict]:
    import pipeline
    from pipeline.detection.settings import DetectSettings

    annotations, audio, expansion, reader, licence = SETS[name]
    calls = echolocation_calls(annotations, reader)
    print(f"{name}: {len(calls)} echolocation calls ({licence})", file=sys.stderr)
    model = pipeline.open_model(model_path)
    rows = []
    runs = [(f"model's ({model.thresholds['detection']:g})", None)] + [(f"{t:g}", t) for t in thresholds]
    for label, threshold in runs:
        overrides = None if threshold is None else {"detection": threshold}
        table = pipeline.open_model(model_path, thresholds=overrides).detect(str(audio), time_expansion=expansion)
        rows.append({"set": name, "threshold": label, **scores_of(calls, table)})
    dense = DetectSettings(thresholds={"detection": 0.0}, scan_stride=1, scan_gamma=0.0, booster_gate=0.0)
    table = pipeline.open_model(model_path, detect_settings=dense).detect(str(audio), time_expansion=expansion)
    rows.append({"set": name, "threshold": "every peak (dense)", **scores_of(calls, table)})
    checks += calibration_check(name, calls, table)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a model bundle (default: the bundled model)")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--thresholds", nargs="+", type=float, default=[0.5, 0.1, 0.01])
    args = parser.parse_args(argv)
    checks: list[dict] = []
    rows = [row for name in args.sets for row in run_set(name, args.model, args.thresholds, checks)]
    with pd.option_context("display.width", 160, "display.float_format", "{:.3f}".format):
        print(pd.DataFrame(rows).to_string(index=False))
        print("\nCalibration fitted on half of the recordings, checked on the other half:")
        print(pd.DataFrame(checks).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
