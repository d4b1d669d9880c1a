"""Thresholds that maximise the end-to-end F1 on validation recordings.

:func:`tune_thresholds` tunes the detection threshold and one threshold per class by
coordinate ascent on :func:`pipeline.evaluation.metrics.end_to_end_scores`'s F1, over the grid
:data:`THRESHOLD_GRID`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from pipeline.detection.schema import DEFAULT_THRESHOLD
from pipeline.evaluation.matching import DEFAULT_TOLERANCE, classified_only
from pipeline.evaluation.metrics import end_to_end_counts, f1_ratio, predicted_sets, prepare_scoring

#: The thresholds :func:`tune_thresholds` tries for every coordinate.
THRESHOLD_GRID = np.linspace(0.05, 0.95, 19)


def _middle_of_best(values: np.ndarray) -> int:
    """Index of the best value; among ties, the middle one (the lower middle of an even
    count), the threshold farthest from both ends of the tied range."""
    values = np.where(np.isnan(values), -np.inf, values)
    best = np.flatnonzero(values >= values.max() - 1e-12)
    return int(best[(len(best) - 1) // 2])


def _sums_at_or_above(values: np.ndarray, grid: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """For each threshold of the sorted ``grid``, the sums of the rows of ``weights`` (n, K)
    whose value reaches it: shape (len(grid), K), in O(n K) whatever the grid."""
    bucket = np.searchsorted(grid, values, side="right")  # number of thresholds reached
    per_bucket = np.stack(
        [
            np.bincount(bucket, weights=column, minlength=len(grid) + 1)
            for column in np.asarray(weights, dtype=np.float64).T
        ],
        axis=1,
    ).reshape(len(grid) + 1, -1)
    return np.rint(np.cumsum(per_bucket[::-1], axis=0)[::-1][1:]).astype(np.int64)


def tune_thresholds(
    calls: pd.DataFrame,
    detections: pd.DataFrame,
    classes: Sequence[str],
    tolerance: float = DEFAULT_TOLERANCE,
    grid: Sequence[float] = THRESHOLD_GRID,
    rounds: int = 3,
    objective: str = "macro",
    matches: np.ndarray | None = None,
) -> dict[str, float]:
    """Thresholds of the detection and of every class that maximise F1 on a validation set.

    Parameters
    ----------
    calls, detections, classes, tolerance, matches
        As :func:`reference_scores`; the validation set.
    grid
        The thresholds tried for every coordinate.
    rounds
        The most passes over all coordinates; stops earlier when a pass changes nothing.
    objective
        ``"macro"`` (default): the mean over the classes with events of their end-to-end F1
        (:func:`end_to_end_scores`), so that each class threshold maximises its own F1;
        ``"micro"``: the end-to-end F1 of all (event, class) pairs together. Without any
        class event (detection-only data), the detection threshold maximises the detection
        F1 and the class thresholds stay at 0.5.

    Returns
    -------
    dict
        ``"detection"`` and one threshold per class name (plain floats, values of ``grid``).

    Notes
    -----
    Coordinate ascent from 0.5 everywhere: the detection threshold first, then the classes in
    order, each set to the grid value that maximises the objective with the others fixed;
    among tied values the middle one, so that the result is deterministic and away from the
    edges of a flat optimum. The objective never decreases. The end-to-end objective couples
    the detection threshold with the class thresholds (a detection below its threshold
    reports no class), hence the rounds. Each coordinate costs O(n K) for n detections,
    whatever the size of the grid.
    """
    if objective not in ("macro", "micro"):
        raise ValueError(f"objective must be 'macro' or 'micro', not {objective!r}")
    grid = np.unique(np.round(np.asarray(grid, dtype=np.float64).ravel(), 12))
    if len(grid) == 0 or not np.all(np.isfinite(grid)):
        raise ValueError("grid must be a non-empty sequence of finite thresholds")
    classes = list(classes)
    if matches is None:
        calls, detections = classified_only(calls, detections, tolerance)
    scored = prepare_scoring(calls, detections, classes, tolerance, matches)
    n_positives = scored.labels.sum(axis=0).astype(np.int64)
    present = n_positives > 0
    detection_threshold = DEFAULT_THRESHOLD
    class_thresholds = np.full(len(classes), DEFAULT_THRESHOLD)

    if not np.any(present):
        # Detection-only: the detection F1 alone.
        tp = _sums_at_or_above(scored.score, grid, scored.matched[:, None])[:, 0]
        fp = _sums_at_or_above(scored.score, grid, np.ones((len(scored.score), 1)))[:, 0] - tp
        detection_threshold = float(grid[_middle_of_best(f1_ratio(tp, fp, scored.n_events - tp))])
        return {"detection": detection_threshold, **{n: DEFAULT_THRESHOLD for n in classes}}

    def objective_of(tp, fp, fn):  # counts of shape (G, K)
        if objective == "micro":
            return f1_ratio(tp.sum(axis=1), fp.sum(axis=1), fn.sum(axis=1))
        return np.nan_to_num(f1_ratio(tp, fp, fn), nan=0.0)[:, present].mean(axis=1)

    truth = scored.detection_labels
    for _ in range(max(int(rounds), 0)):
        before = (detection_threshold, class_thresholds.copy())
        # The detection threshold, the class thresholds fixed.
        predicted = predicted_sets(scored, class_thresholds)
        tp = _sums_at_or_above(scored.score, grid, predicted & truth)
        fp = _sums_at_or_above(scored.score, grid, predicted) - tp
        detection_threshold = float(grid[_middle_of_best(objective_of(tp, fp, n_positives - tp))])
        # Each class in turn, the others and the detection threshold fixed.
        kept = scored.score >= detection_threshold
        tp, fp, fn = end_to_end_counts(scored, detection_threshold, class_thresholds)
        for k in range(len(classes)):
            probability = scored.probability[kept, k]
            class_tp = _sums_at_or_above(probability, grid, truth[kept, k][:, None])[:, 0]
            class_fp = _sums_at_or_above(probability, grid, np.ones((len(probability), 1)))[:, 0]
            class_fp = class_fp - class_tp
            tps, fps, fns = (np.tile(c, (len(grid), 1)) for c in (tp, fp, fn))
            tps[:, k], fps[:, k], fns[:, k] = class_tp, class_fp, n_positives[k] - class_tp
            best = _middle_of_best(objective_of(tps, fps, fns))
            class_thresholds[k] = grid[best]
            tp[k], fp[k], fn[k] = tps[best, k], fps[best, k], fns[best, k]
        if detection_threshold == before[0] and np.array_equal(class_thresholds, before[1]):
            break
    return {
        "detection": float(detection_threshold),
        **{name: float(class_thresholds[k]) for k, name in enumerate(classes)},
    }
