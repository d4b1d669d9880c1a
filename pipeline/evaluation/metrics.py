"""Scores of matched detections: precision-recall curves, average precision, set metrics.

Inputs are the tables of :mod:`pipeline.evaluation.matching` (``calls``, ``detections``,
``classes``) and, where a score is taken at thresholds, the thresholds of
:func:`pipeline.detection.schema.threshold_values`.

* :func:`detection_average_precision`: the area under the class-agnostic precision-recall
  curve; recall is relative to all events, so that events never detected are misses.
* :func:`class_average_precision`: per class, every detection ranked by that class's
  probability, a true positive when it matched an event holding the class; the mean over
  classes with at least one event is the mAP.
* :func:`reference_scores`: the reference system's scores at thresholds: detection
  TP/FP/FN, precision, recall, F1 (score at or above the detection threshold), and per
  class precision, recall, F1 on the matched events only, with their macro and micro averages.
* :func:`multilabel_scores`: the predicted label sets of the matched events against their
  true label sets (scikit-learn's set metrics): micro and macro F1, Hamming loss, exact match;
  over all matched events and over those of overlapping calls (two classes or more).
* :func:`end_to_end_scores`: each (detection, class) the system would report, against each
  (event, class) annotated: what a user of the output gets.

The reference system's report called a *mean of precisions* its "average precision". An
average precision is an area under the precision-recall curve: the precision at every recall
level, weighted by how much recall that level adds (:func:`precision_recall_curve`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.detection.schema import probability_column, threshold_values
from pipeline.evaluation.matching import (
    DEFAULT_TOLERANCE,
    DETECTION_COLUMNS,
    checked_tolerance,
    classes_of_calls,
    events_of_calls,
    finite_array,
    match_events,
    require_columns,
)


@dataclass(frozen=True, eq=False)
class PrecisionRecall:
    """A precision-recall curve and the area under it.

    Parameters
    ----------
    average_precision
        Area under the curve, :math:`\\sum_n (R_n - R_{n-1}) P_n`; NaN when there is no
        positive (recall undefined), 0 when there are positives but no prediction.
    precision, recall
        Precision and recall at each threshold, thresholds decreasing (recall increasing). The
        point (recall 0, precision 1) is not included.
    thresholds
        The distinct scores, decreasing: point ``n`` counts the predictions scored at least
        ``thresholds[n]``.
    n_positives
        The recall's denominator, positives never predicted included.
    """

    average_precision: float
    precision: np.ndarray
    recall: np.ndarray
    thresholds: np.ndarray
    n_positives: int


@dataclass(frozen=True, eq=False)
class ClassAveragePrecision:
    """Per-class average precision and their mean.

    Parameters
    ----------
    per_class
        Class name to its :class:`PrecisionRecall`, in the order of ``classes``.
    mean_average_precision
        Mean of the per-class average precisions over the classes with at least one event
        (``n_positives > 0``); NaN when no class has one.
    """

    per_class: dict[str, PrecisionRecall]
    mean_average_precision: float


def _ratio(numerator, denominator):
    """``numerator / denominator``, NaN where the denominator is 0, without a warning."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out if out.ndim else float(out)


def f1_ratio(tp, fp, fn):
    """``2 TP / (2 TP + FP + FN)``: the harmonic mean of precision and recall, NaN when there
    is neither a positive nor a prediction."""
    tp = np.asarray(tp, dtype=np.float64)
    return _ratio(2 * tp, 2 * tp + np.asarray(fp) + np.asarray(fn))


def precision_recall_curve(scores, is_true, n_positives: int | None = None) -> PrecisionRecall:
    """Precision-recall curve of ranked predictions and its average precision.

    Parameters
    ----------
    scores
        Score of each prediction; higher first.
    is_true
        Whether each prediction is a true positive.
    n_positives
        The number of positives, those never predicted included: the recall's denominator.
        Defaults to ``is_true.sum()`` (every positive predicted once, as scikit-learn assumes).

    Returns
    -------
    PrecisionRecall

    Notes
    -----
    Predictions are taken by decreasing score; tied scores enter together (one point of the
    curve per distinct score). The average precision is the non-interpolated step sum
    :math:`AP = \\sum_n (R_n - R_{n-1}) P_n`, with :math:`R_0 = 0`, where :math:`P_n` and
    :math:`R_n` are the precision and recall at the n-th threshold, as in scikit-learn's
    ``average_precision_score``: no interpolation (taking the best precision at a larger
    recall) and no trapezoids, which are optimistic. Positives never predicted keep the
    recall below 1, so they lower the AP. This is not the *mean of the precisions*
    :math:`\\frac{1}{N} \\sum_n P_n` that the reference system reported as "average precision": that mean
    ignores how much recall each prediction adds, and does not see missed positives at all.
    """
    scores = finite_array(scores, "scores").ravel()
    is_true = np.asarray(is_true, dtype=bool).ravel()
    if scores.shape != is_true.shape:
        raise ValueError("scores and is_true must have the same length")
    if n_positives is None:
        n_positives = int(is_true.sum())
    n_positives = int(n_positives)
    if n_positives < int(is_true.sum()):
        raise ValueError("n_positives is smaller than the number of true positives")
    order = np.argsort(-scores, kind="stable")
    ranked_scores, ranked_true = scores[order], is_true[order]
    true_positives = np.cumsum(ranked_true)
    # The last prediction of each run of tied scores closes one point of the curve.
    last_of_tie = np.flatnonzero(np.append(np.diff(ranked_scores) != 0, len(order) > 0))
    true_positives = true_positives[last_of_tie].astype(np.float64)
    predicted = (last_of_tie + 1).astype(np.float64)
    precision = true_positives / predicted
    thresholds = ranked_scores[last_of_tie]
    if n_positives == 0:
        recall = np.full(len(last_of_tie), np.nan)
        average_precision = math.nan
    else:
        recall = true_positives / n_positives
        average_precision = float(np.sum(np.diff(recall, prepend=0.0) * precision))
    return PrecisionRecall(
        average_precision=average_precision,
        precision=precision,
        recall=recall,
        thresholds=thresholds,
        n_positives=n_positives,
    )


@dataclass(frozen=True, eq=False)
class Scored:
    """What every score needs, computed once."""

    matched_event: np.ndarray  # per detection, event index or -1
    score: np.ndarray  # per detection
    probability: np.ndarray  # (n_detections, K)
    labels: np.ndarray  # (n_events, K) bool, the true label sets
    detection_labels: np.ndarray  # (n_detections, K) bool: its matched event's labels

    @property
    def matched(self) -> np.ndarray:
        return self.matched_event >= 0

    @property
    def n_events(self) -> int:
        return self.labels.shape[0]


def _class_probabilities(detections: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    columns = [probability_column(name) for name in classes]
    if len(detections) == 0:
        return np.zeros((0, len(classes)))
    missing = [c for c in columns if c not in detections.columns]
    if missing:
        raise ValueError(f"detections lack the column(s) {', '.join(missing)}")
    probability = detections[columns].to_numpy(dtype=np.float64)
    return finite_array(probability, "class probabilities")


def prepare_scoring(calls, detections, classes, tolerance, matches=None) -> Scored:
    tolerance = checked_tolerance(tolerance)
    classes = list(classes)
    if len(set(classes)) != len(classes):
        raise ValueError("class names must be distinct")
    events = events_of_calls(calls)
    detections = require_columns(detections, DETECTION_COLUMNS, "detections")
    n_events = len(events.position)
    if matches is None:
        matched_event = match_events(events, detections, tolerance)
    else:
        matched_event = np.asarray(matches, dtype=np.int64)
        if matched_event.shape != (len(detections),) or np.any(matched_event >= n_events):
            raise ValueError("matches must hold one event index (or -1) per detection")
    labels = np.zeros((n_events, len(classes)), dtype=bool)
    if classes:  # detection alone needs no class (detection-only data has none)
        codes = classes_of_calls(calls, len(classes))
        known = codes >= 1  # class 0: species unknown (see matching.classified_only)
        labels[events.event_of_call[known], codes[known] - 1] = True
    detection_labels = np.zeros((len(matched_event), len(classes)), dtype=bool)
    matched = matched_event >= 0
    detection_labels[matched] = labels[matched_event[matched]]
    return Scored(
        matched_event=matched_event,
        score=finite_array(detections["score"], "detection scores"),
        probability=_class_probabilities(detections, classes),
        labels=labels,
        detection_labels=detection_labels,
    )


def _counts_scores(tp, fp, fn) -> dict:
    tp, fp, fn = int(tp), int(fp), int(fn)
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": f1_ratio(tp, fp, fn),
    }


def _averages(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict:
    """Macro averages over the classes with support (TP + FN > 0), a 0/0 ratio counting 0;
    micro scores from the summed counts over all classes."""
    present = (tp + fn) > 0
    macro = {}
    for name, value in (
        ("precision", _ratio(tp, tp + fp)),
        ("recall", _ratio(tp, tp + fn)),
        ("f1", f1_ratio(tp, fp, fn)),
    ):
        value = np.nan_to_num(np.asarray(value, dtype=np.float64)[present], nan=0.0)
        macro[f"macro_{name}"] = float(value.mean()) if len(value) else math.nan
    total_tp, total_fp, total_fn = int(tp.sum()), int(fp.sum()), int(fn.sum())
    return {
        **macro,
        "micro_precision": _ratio(total_tp, total_tp + total_fp),
        "micro_recall": _ratio(total_tp, total_tp + total_fn),
        "micro_f1": f1_ratio(total_tp, total_fp, total_fn),
    }


def detection_average_precision(
    calls: pd.DataFrame,
    detections: pd.DataFrame,
    tolerance: float = DEFAULT_TOLERANCE,
    matches: np.ndarray | None = None,
) -> PrecisionRecall:
    """Average precision of the detection, whatever the class.

    Parameters
    ----------
    calls, detections
        See the module's documentation; ``detections`` needs ``recording``, ``time``,
        ``score``.
    tolerance
        Matching tolerance (s).
    matches
        The result of :func:`match_detections` on the same inputs, to skip the matching.

    Returns
    -------
    PrecisionRecall
        Detections ranked by decreasing ``score``; a detection is a true positive when it
        matched an event. Recall is relative to the number of events (distinct annotated
        moments), so events never detected are misses. ``average_precision`` is the
        non-interpolated step sum :math:`\\sum_n (R_n - R_{n-1}) P_n`, as scikit-learn's
        ``average_precision_score``; NaN when there is no event, 0 when there are events and
        no detection.
    """
    scored = prepare_scoring(calls, detections, [], tolerance, matches)
    return precision_recall_curve(scored.score, scored.matched, scored.n_events)


def class_average_precision(
    calls: pd.DataFrame,
    detections: pd.DataFrame,
    classes: Sequence[str],
    tolerance: float = DEFAULT_TOLERANCE,
    matches: np.ndarray | None = None,
) -> ClassAveragePrecision:
    """Average precision of every class and their mean (mAP).

    Parameters
    ----------
    calls, detections
        See the module's documentation; ``detections`` needs ``prob_<name>`` per class.
    classes
        The K class names; class ``k`` of ``calls`` is ``classes[k - 1]``.
    tolerance
        Matching tolerance (s).
    matches
        The result of :func:`match_detections` on the same inputs, to skip the matching.

    Returns
    -------
    ClassAveragePrecision

    Notes
    -----
    For class k, what is counted:

    * every detection is one prediction, scored by its ``prob_<k>`` (not by ``score``, and
      whatever the detection threshold);
    * it is a true positive when it matched (class-agnostically, :func:`match_detections`)
      an event with a call of class k; a detection matched to an event without class k, and
      a detection matched to no event (a false positive of the detection, a second detection
      of an event included), are false positives of every class;
    * the positives are the events with a call of class k, detected or not: an event never
      detected is a miss of each of its classes (the recall's denominator counts it).

    The mAP is the mean of the per-class average precisions over the classes with at least
    one event; classes without any are reported with an undefined (NaN) AP.
    """
    classes = list(classes)
    scored = prepare_scoring(calls, detections, classes, tolerance, matches)
    per_class = {
        name: precision_recall_curve(
            scored.probability[:, k],
            scored.detection_labels[:, k],
            int(scored.labels[:, k].sum()),
        )
        for k, name in enumerate(classes)
    }
    defined = [c.average_precision for c in per_class.values() if c.n_positives > 0]
    return ClassAveragePrecision(
        per_class=per_class,
        mean_average_precision=float(np.mean(defined)) if defined else math.nan,
    )


def top1_accuracy(
    calls: pd.DataFrame,
    detections: pd.DataFrame,
    classes: Sequence[str],
    tolerance: float = DEFAULT_TOLERANCE,
    matches: np.ndarray | None = None,
) -> dict:
    """How often the most probable class of a detection is a class of the call it found.

    Every event matched by a detection counts once (whatever the thresholds): right when the
    detection's most probable class is one of the event's classes. ``"all"`` over every
    matched event with a known class, ``"per_class"`` over the matched events of each class
    (NaN when a class has none), with their counts ``n_events``.
    """
    classes = list(classes)
    scored = prepare_scoring(calls, detections, classes, tolerance, matches)
    counted = scored.matched & scored.detection_labels.any(axis=1)
    if not classes or not counted.any():
        return {"all": math.nan, "n_events": 0, "per_class": {name: math.nan for name in classes}}
    best = np.argmax(scored.probability[counted], axis=1)
    labels = scored.detection_labels[counted]
    right = labels[np.arange(len(best)), best]
    per_class = {}
    for k, name in enumerate(classes):
        of_class = labels[:, k]
        per_class[name] = float(right[of_class].mean()) if of_class.any() else math.nan
    return {"all": float(right.mean()), "n_events": int(counted.sum()), "per_class": per_class}


def predicted_sets(scored: Scored, class_thresholds: np.ndarray) -> np.ndarray:
    return scored.probability >= class_thresholds[None, :]


def reference_scores(
    calls: pd.DataFrame,
    detections: pd.DataFrame,
    classes: Sequence[str],
    thresholds: Mapping[str, float] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    matches: np.ndarray | None = None,
) -> dict:
    """The reference system's scores at given thresholds.

    Parameters
    ----------
    calls, detections
        See the module's documentation.
    classes
        The K class names.
    thresholds
        ``"detection"`` (on ``score``) and one per class name (on ``prob_<name>``); a missing
        one is 0.5. A prediction is kept when its value is at or above its threshold.
    tolerance
        Matching tolerance (s).
    matches
        The result of :func:`match_detections` on the same inputs, to skip the matching.

    Returns
    -------
    dict
        ``"detection"``: ``tp`` (kept detections that matched an event), ``fp`` (kept
        detections that did not), ``fn`` (events without a kept matching detection),
        ``precision``, ``recall``, ``f1``, ``threshold``, ``n_events``, ``n_detections``.

        ``"classification"``, on the events matched by a kept detection only (the reference system's
        choice: a missed event is a detection error, not a classification one): the predicted
        set of such an event is the classes whose probability reaches their threshold, its
        true set the classes of its calls. ``per_class``: name to ``tp``, ``fp``, ``fn``,
        ``precision``, ``recall``, ``f1``, ``support`` (matched events of the class),
        ``threshold``. ``macro_precision``, ``macro_recall``, ``macro_f1``: the means of the
        per-class values (the reference system's "averaged") over the classes with support, a 0/0 ratio
        (a class never predicted) counting 0; ``micro_*``: from the counts summed over all
        classes. ``n_events``: the matched events counted. Undefined ratios (0/0) are NaN.
        Note that ``macro_precision`` is a mean of precisions, which the reference system's report
        called an average precision; it is not one (see :func:`class_average_precision`).
    """
    classes = list(classes)
    scored = prepare_scoring(calls, detections, classes, tolerance, matches)
    detection_threshold, class_thresholds = threshold_values(thresholds, classes)
    kept = scored.score >= detection_threshold
    tp = int(np.sum(kept & scored.matched))
    fp = int(np.sum(kept)) - tp
    detection = {
        **_counts_scores(tp, fp, scored.n_events - tp),
        "threshold": detection_threshold,
        "n_events": scored.n_events,
        "n_detections": int(len(scored.score)),
    }

    counted = kept & scored.matched
    truth = scored.detection_labels[counted]
    predicted = predicted_sets(scored, class_thresholds)[counted]
    class_tp = np.sum(truth & predicted, axis=0)
    class_fp = np.sum(~truth & predicted, axis=0)
    class_fn = np.sum(truth & ~predicted, axis=0)
    per_class = {
        name: {
            **_counts_scores(class_tp[k], class_fp[k], class_fn[k]),
            "support": int(class_tp[k] + class_fn[k]),
            "threshold": float(class_thresholds[k]),
        }
        for k, name in enumerate(classes)
    }
    classification = {
        "per_class": per_class,
        **_averages(class_tp, class_fp, class_fn),
        "n_events": int(counted.sum()),
    }
    return {"detection": detection, "classification": classification}


def _multilabel_set_scores(truth: np.ndarray, predicted: np.ndarray) -> dict:
    """Set metrics of predicted against true label sets (events x classes), by scikit-learn."""
    from sklearn import metrics

    n_events = truth.shape[0]
    scores = dict.fromkeys(
        ("micro_precision", "micro_recall", "micro_f1", "macro_f1", "hamming_loss", "exact_match"), math.nan
    )
    if n_events:
        precision, recall, f1, _ = metrics.precision_recall_fscore_support(
            truth, predicted, average="micro", zero_division=np.nan
        )
        present = np.flatnonzero(truth.any(axis=0))
        scores.update(
            micro_precision=float(precision),
            micro_recall=float(recall),
            micro_f1=float(f1),
            macro_f1=(
                float(metrics.f1_score(truth, predicted, average="macro", labels=present, zero_division=0))
                if len(present) else math.nan
            ),
            hamming_loss=float(metrics.hamming_loss(truth, predicted)),
            exact_match=float(metrics.accuracy_score(truth, predicted)),
        )
    return {"n_events": int(n_events), **scores}


def multilabel_scores(
    calls: pd.DataFrame,
    detections: pd.DataFrame,
    classes: Sequence[str],
    thresholds: Mapping[str, float] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    matches: np.ndarray | None = None,
) -> dict:
    """Multi-label scores of the predicted label sets of the matched events.

    Parameters
    ----------
    calls, detections, classes, thresholds, tolerance, matches
        As :func:`reference_scores`.

    Returns
    -------
    dict
        ``"all"``: over the events matched by a kept detection (``score`` at or above the
        detection threshold); ``"overlapping"``: over those of them with calls of two classes
        or more. Each: ``n_events``; ``micro_precision``, ``micro_recall``, ``micro_f1`` (from
        the (event, class) counts summed over all K classes, so a predicted class absent from
        the data is a false positive); ``macro_f1`` (the mean of the per-class F1 over the
        classes with at least one true event in that set, as ``f1_score(average="macro",
        labels=<those classes>)`` of scikit-learn); ``hamming_loss`` (the fraction of the
        n_events x K label cells predicted wrong); ``exact_match`` (the fraction of events
        whose predicted set is exactly the true set). NaN where undefined (no event).
    """
    classes = list(classes)
    scored = prepare_scoring(calls, detections, classes, tolerance, matches)
    detection_threshold, class_thresholds = threshold_values(thresholds, classes)
    counted = (scored.score >= detection_threshold) & scored.matched
    truth = scored.detection_labels[counted]
    predicted = predicted_sets(scored, class_thresholds)[counted]
    overlapping = truth.sum(axis=1) >= 2
    return {
        "all": _multilabel_set_scores(truth, predicted),
        "overlapping": _multilabel_set_scores(truth[overlapping], predicted[overlapping]),
    }


def end_to_end_counts(scored: Scored, detection_threshold, class_thresholds):
    reported = (scored.score >= detection_threshold)[:, None] & predicted_sets(
        scored, class_thresholds
    )
    tp = np.sum(reported & scored.detection_labels, axis=0)
    fp = np.sum(reported, axis=0) - tp
    fn = np.sum(scored.labels, axis=0) - tp
    return tp, fp, fn


def end_to_end_scores(
    calls: pd.DataFrame,
    detections: pd.DataFrame,
    classes: Sequence[str],
    thresholds: Mapping[str, float] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    matches: np.ndarray | None = None,
) -> dict:
    """Scores of what the system reports: one (detection, class) per species it names.

    Parameters
    ----------
    calls, detections, classes, thresholds, tolerance, matches
        As :func:`reference_scores`.

    Returns
    -------
    dict
        ``per_class``: name to ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1``,
        ``support`` (events with a call of the class), ``threshold``; then ``macro_*`` and
        ``micro_*`` averages as in :func:`reference_scores`.

    Notes
    -----
    A detection whose ``score`` reaches the detection threshold reports every class whose
    probability reaches its threshold. A report (detection, k) is a true positive when the
    detection matched an event with a call of class k, a false positive otherwise (detection
    unmatched, or matched to an event without k); every event with a call of class k not
    reported so is a false negative. Unlike :func:`reference_scores`, detection errors count here
    for every class they affect, so raising the detection threshold to keep only easy calls
    does not flatter the classification.
    """
    classes = list(classes)
    scored = prepare_scoring(calls, detections, classes, tolerance, matches)
    detection_threshold, class_thresholds = threshold_values(thresholds, classes)
    tp, fp, fn = end_to_end_counts(scored, detection_threshold, class_thresholds)
    per_class = {
        name: {
            **_counts_scores(tp[k], fp[k], fn[k]),
            "support": int(tp[k] + fn[k]),
            "threshold": float(class_thresholds[k]),
        }
        for k, name in enumerate(classes)
    }
    return {
        "per_class": per_class,
        **_averages(tp, fp, fn),
        "detection_threshold": detection_threshold,
    }
