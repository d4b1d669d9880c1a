"""Every score of detections against annotated calls in one JSON-ready document, and its text.

:func:`evaluate` gathers the matching (:mod:`~pipeline.evaluation.matching`) and the metrics
(:mod:`~pipeline.evaluation.metrics`) at given thresholds; :func:`format_report` prints it as
the aligned tables of ``evaluation.txt``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd

from pipeline.detection.schema import threshold_values
from pipeline.evaluation.matching import DEFAULT_TOLERANCE, checked_tolerance, classified_only, match_detections
from pipeline.evaluation.metrics import (
    class_average_precision,
    detection_average_precision,
    end_to_end_scores,
    multilabel_scores,
    reference_scores,
    top1_accuracy,
)
from pipeline.files import json_ready


def evaluate(
    calls: pd.DataFrame,
    detections: pd.DataFrame,
    classes: Sequence[str],
    thresholds: Mapping[str, float] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict:
    """Every score of ``detections`` against ``calls``, as a JSON-ready dict.

    Parameters
    ----------
    calls, detections, classes, thresholds, tolerance
        As :func:`reference_scores` (thresholds: ``"detection"`` and per class, default 0.5).

    Returns
    -------
    dict
        Plain ``int``/``float``/``str``/``None`` (NaN, i.e. undefined, becomes ``None``):

        * ``tolerance``, ``thresholds`` (all K + 1 used);
        * ``detection``: ``ap`` (:func:`detection_average_precision`) and the detection part
          of :func:`reference_scores` (``precision``, ``recall``, ``f1``, ``tp``, ``fp``, ``fn``,
          ``threshold``, ``n_events``, ``n_detections``);
        * ``classification``: ``map`` (:func:`class_average_precision`), ``top1_accuracy``
          (:func:`top1_accuracy`), ``per_class`` (name
          to ``ap``, ``top1_accuracy``, ``n_events`` (events of the class, AP's positives) and the per-class part
          of :func:`reference_scores`: ``precision``, ``recall``, ``f1``, ``support``, ``tp``,
          ``fp``, ``fn``, ``threshold``), ``macro_precision``, ``macro_recall``, ``macro_f1``,
          ``micro_precision``, ``micro_recall``, ``micro_f1``, ``n_events``;
        * ``multilabel``: :func:`multilabel_scores` (``all`` and ``overlapping``);
        * ``end_to_end``: :func:`end_to_end_scores`.
    """
    classes = list(classes)
    tolerance = checked_tolerance(tolerance)
    detection_threshold, class_thresholds = threshold_values(thresholds, classes)
    used = {"detection": detection_threshold, **dict(zip(classes, class_thresholds.tolist()))}
    matches = match_detections(calls, detections, tolerance)
    detection = reference_scores(calls, detections, classes, used, tolerance, matches)["detection"]
    detection_ap = detection_average_precision(calls, detections, tolerance, matches)
    # Classification: on the calls of a known species (class 0: species unknown) alone.
    calls, detections = classified_only(calls, detections, tolerance)
    matches = match_detections(calls, detections, tolerance)
    arguments = (calls, detections, classes, used, tolerance, matches)
    reference = reference_scores(*arguments)
    class_ap = class_average_precision(calls, detections, classes, tolerance, matches)
    top1 = top1_accuracy(calls, detections, classes, tolerance, matches)
    per_class = {
        name: {
            "ap": class_ap.per_class[name].average_precision,
            "top1_accuracy": top1["per_class"][name],
            "n_events": class_ap.per_class[name].n_positives,
            **reference["classification"]["per_class"][name],
        }
        for name in classes
    }
    result = {
        "tolerance": tolerance,
        "thresholds": used,
        "detection": {"ap": detection_ap.average_precision, **detection},
        "classification": {
            "map": class_ap.mean_average_precision,
            "top1_accuracy": top1["all"],
            **reference["classification"],
            "per_class": per_class,
        },
        "multilabel": multilabel_scores(*arguments),
        "end_to_end": end_to_end_scores(*arguments),
    }
    return json_ready(result)


def _number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    lines = []
    for i, row in enumerate([header, *rows]):
        cells = [str(row[0]).ljust(widths[0])]
        cells += [str(c).rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def format_report(result: Mapping) -> str:
    """A readable text report of the dict of :func:`evaluate`.

    Parameters
    ----------
    result
        The output of :func:`evaluate`.

    Returns
    -------
    str
        A few aligned tables: detection, per-class classification (AP on every event of the
        class; precision, recall, F1 on matched events; end-to-end F1), averages, and the
        multi-label scores. ``-`` marks an undefined value.
    """
    n = _number
    detection = result["detection"]
    classification = result["classification"]
    end_to_end = result.get("end_to_end", {})
    lines = [f"Evaluation (tolerance {1000 * result['tolerance']:g} ms)", ""]
    lines.append(
        f"Detection (threshold {n(detection['threshold'], 2)}): "
        f"{detection['n_events']} events, {detection['n_detections']} detections"
    )
    lines += _table(
        ["", "AP", "precision", "recall", "F1", "TP", "FP", "FN"],
        [
            [
                "all calls",
                n(detection["ap"]),
                n(detection["precision"]),
                n(detection["recall"]),
                n(detection["f1"]),
                n(detection["tp"]),
                n(detection["fp"]),
                n(detection["fn"]),
            ]
        ],
    )
    lines += ["", f"Classification ({classification['n_events']} matched events)"]
    rows = []
    for name, scores in classification["per_class"].items():
        e2e = end_to_end.get("per_class", {}).get(name, {})
        rows.append(
            [
                name,
                n(scores["n_events"]),
                n(scores["ap"]),
                n(scores.get("top1_accuracy")),
                n(scores["threshold"], 2),
                n(scores["support"]),
                n(scores["precision"]),
                n(scores["recall"]),
                n(scores["f1"]),
                n(e2e.get("f1")),
            ]
        )
    for kind in ("macro", "micro"):
        rows.append(
            [
                kind,
                "",
                n(classification["map"]) if kind == "macro" else "",
                n(classification.get("top1_accuracy")) if kind == "micro" else "",
                "",
                "",
                n(classification[f"{kind}_precision"]),
                n(classification[f"{kind}_recall"]),
                n(classification[f"{kind}_f1"]),
                n(end_to_end.get(f"{kind}_f1")),
            ]
        )
    lines += _table(
        ["class", "events", "AP", "top-1", "thresh", "matched", "precision", "recall", "F1", "e2e F1"],
        rows,
    )
    lines.append("(AP: over all events of the class; 'macro' AP is the mAP. top-1: share of its matched")
    lines.append(" events whose detection's most probable class is right ('micro': all). precision, recall,")
    lines.append(" F1: on matched events; e2e F1: every reported (detection, class) counted.)")
    multilabel = result.get("multilabel")
    if multilabel:
        lines += ["", "Multi-label (matched events)"]
        lines += _table(
            ["events", "n", "micro F1", "macro F1", "Hamming loss", "exact match"],
            [
                [
                    subset,
                    n(scores["n_events"]),
                    n(scores["micro_f1"]),
                    n(scores["macro_f1"]),
                    n(scores["hamming_loss"]),
                    n(scores["exact_match"]),
                ]
                for subset, scores in multilabel.items()
            ],
        )
    return "\n".join(lines) + "\n"
