"""Scores of detections against annotated calls: detection, classification, multi-label.

Every function here is a pure function of two tables, with no I/O and no model:

``calls``
    one row per annotated call: ``recording`` (the recording's name), ``position`` (real
    seconds) and ``class`` (an integer 1..K). Two species calling at the same moment are two
    rows with the same ``recording`` and the same ``position``.
``detections``
    one row per detection: ``recording``, ``time`` (real seconds), ``score`` (the probability
    that there is a call at all) and, for the classification scores, one column
    ``prob_<name>`` per class, the probability of that class; ``classes`` lists the K names,
    class ``k`` of ``calls`` being ``classes[k - 1]``.

**Events.** The distinct ``(recording, position)`` pairs of ``calls`` are its *events*
(positions compared exactly, as the seed's format writes overlapping calls at the same
position). Detection is class-agnostic: overlapping calls are one event, found or missed
together. Classification is multi-label: an event's labels are the classes of all its calls.

**Matching** (:func:`match_detections`). A detection can match an event of its own recording
at most ``tolerance`` seconds away (10 ms, the seed's, inclusive, with 1 ns of slack for
floating-point rounding). Detections are taken by decreasing ``score``; each takes the nearest
event still free; each event is taken at most once, so a second detection of one event is a
false positive. Because a detection never loses an event to a detection of lower score, the
matching of the detections whose score reaches any threshold is the greedy matching of those
detections alone: one matching serves every threshold and the precision-recall curves.

**What is scored.**

* :func:`detection_average_precision`: the area under the class-agnostic precision-recall
  curve; recall is relative to all events, so that events never detected are misses.
* :func:`class_average_precision`: per class, every detection ranked by that class's
  probability, a true positive when it matched an event holding the class; the mean over
  classes with at least one event is the mAP.
* :func:`seed_scores`: the seed's scores at thresholds: detection TP/FP/FN, precision, recall,
  F1 (score at or above the detection threshold), and per class precision, recall, F1 on the
  matched events only, with their macro and micro averages.
* :func:`multilabel_scores`: the predicted label sets of the matched events against their true
  label sets: micro and macro F1, Hamming loss, exact match; over all matched events and over
  those of overlapping calls (two classes or more).
* :func:`end_to_end_scores`: each (detection, class) the system would report, against each
  (event, class) annotated: what a user of the output gets. :func:`tune_thresholds` maximises
  its F1 by coordinate ascent.
* :func:`evaluate` gathers all of these in a JSON-ready dict; :func:`format_report` prints it.

The seed's report called a *mean of precisions* its "average precision". An average precision
is an area under the precision-recall curve: the precision at every recall level, weighted by
how much recall that level adds (:func:`precision_recall`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: The seed's matching tolerance: a detection within 10 ms (real time) of a call finds it.
DEFAULT_TOLERANCE = 0.010

#: The thresholds :func:`tune_thresholds` tries for every coordinate.
THRESHOLD_GRID = np.linspace(0.05, 0.95, 19)

#: The threshold of a class or of the detection when none is given.
DEFAULT_THRESHOLD = 0.5

#: Slack (s) added to the tolerance so that a detection exactly ``tolerance`` away matches
#: whatever the rounding of the subtraction.
_TIME_SLACK = 1e-9

CALL_COLUMNS = ("recording", "position", "class")
DETECTION_COLUMNS = ("recording", "time", "score")


def probability_column(name: str) -> str:
    """Name of the column of ``detections`` holding the probability of class ``name``."""
    return f"prob_{name}"


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


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def _require_columns(table: pd.DataFrame, columns: Sequence[str], what: str) -> pd.DataFrame:
    """``table`` with ``columns`` checked; an empty table may lack them."""
    missing = [c for c in columns if c not in table.columns]
    if missing and len(table) == 0:
        table = table.assign(**{c: pd.Series([], dtype=float) for c in missing})
    elif missing:
        raise ValueError(f"{what} lack the column(s) {', '.join(missing)}")
    return table


def _finite(values, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} must be finite numbers (found NaN or infinity)")
    return array


def _check_tolerance(tolerance: float) -> float:
    tolerance = float(tolerance)
    if not tolerance >= 0.0:
        raise ValueError(f"tolerance must be a non-negative number of seconds, not {tolerance}")
    return tolerance


@dataclass(frozen=True, eq=False)
class _Events:
    """The events of ``calls``: sorted by recording name then position."""

    recordings: pd.Index  # sorted distinct recording names
    recording_code: np.ndarray  # per event, index into ``recordings``
    position: np.ndarray  # per event, seconds
    event_of_call: np.ndarray  # per row of ``calls``, its event


def _call_events(calls: pd.DataFrame) -> _Events:
    calls = _require_columns(calls, ("recording", "position"), "calls")
    position = _finite(calls["position"], "call positions")
    codes, names = pd.factorize(calls["recording"], sort=True)
    if np.any(codes < 0):
        raise ValueError("calls have rows without a recording name")
    order = np.lexsort((position, codes))
    sorted_codes, sorted_position = codes[order], position[order]
    starts = np.ones(len(order), dtype=bool)
    starts[1:] = (np.diff(sorted_codes) != 0) | (np.diff(sorted_position) != 0)
    event_of_call = np.empty(len(order), dtype=np.int64)
    event_of_call[order] = np.cumsum(starts) - 1
    return _Events(
        recordings=pd.Index(names),
        recording_code=sorted_codes[starts].astype(np.int64),
        position=sorted_position[starts],
        event_of_call=event_of_call,
    )


def _call_classes(calls: pd.DataFrame, n_classes: int) -> np.ndarray:
    calls = _require_columns(calls, CALL_COLUMNS, "calls")
    classes = np.asarray(calls["class"])
    if len(classes) and not (
        np.issubdtype(classes.dtype, np.number) and np.all(classes == np.round(classes))
    ):
        raise ValueError("call classes must be integers 1..K")
    classes = classes.astype(np.int64)
    bad = (classes < 1) | (classes > n_classes)
    if np.any(bad):
        raise ValueError(
            f"call class {int(classes[bad][0])} is outside 1..{n_classes} "
            f"(the number of class names given)"
        )
    return classes


def call_events(calls: pd.DataFrame) -> pd.DataFrame:
    """The events of ``calls``: its distinct ``(recording, position)`` pairs.

    Parameters
    ----------
    calls
        Annotated calls: ``recording``, ``position``.

    Returns
    -------
    pandas.DataFrame
        One row per event, sorted by recording name then position, index ``0..n-1`` (the event
        indices of :func:`match_detections`): ``recording``, ``position`` and ``n_calls`` (the
        number of annotated calls at that moment: 2 or more for overlapping calls).
    """
    events = _call_events(calls)
    return pd.DataFrame(
        {
            "recording": events.recordings.take(events.recording_code),
            "position": events.position,
            "n_calls": np.bincount(events.event_of_call, minlength=len(events.position)),
        }
    )


def event_labels(calls: pd.DataFrame, n_classes: int) -> np.ndarray:
    """The true label set of every event, multi-hot.

    Parameters
    ----------
    calls
        Annotated calls: ``recording``, ``position``, ``class`` (1..``n_classes``).
    n_classes
        K, the number of classes.

    Returns
    -------
    numpy.ndarray
        Boolean, shape ``(n_events, n_classes)``, rows in the order of :func:`call_events`:
        column ``k - 1`` is true when a call of class ``k`` is at that event.
    """
    events = _call_events(calls)
    classes = _call_classes(calls, n_classes)
    labels = np.zeros((len(events.position), n_classes), dtype=bool)
    labels[events.event_of_call, classes - 1] = True
    return labels


# --------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------


def _event_windows(events: _Events, detection_code, detection_time, half_width):
    """For each detection, the range ``[first, stop)`` of events of its recording whose
    position lies in ``[time - half_width, time + half_width]``.

    A binary search per recording, done for all recordings at once: the events and the two
    ends of every window are sorted together by (recording, time); the number of events
    before an end is where it would be inserted. Exact: times are never added to codes.
    """
    n_events, n_detections = len(events.position), len(detection_time)
    code = np.concatenate([events.recording_code, detection_code, detection_code])
    time = np.concatenate(
        [events.position, detection_time - half_width, detection_time + half_width]
    )
    # At equal (recording, time), a window's start sorts before the events and its stop after
    # them, so that both ends are inclusive.
    rank = np.concatenate(
        [
            np.ones(n_events, dtype=np.int8),
            np.zeros(n_detections, dtype=np.int8),
            np.full(n_detections, 2, dtype=np.int8),
        ]
    )
    order = np.lexsort((rank, time, code))
    is_event = order < n_events
    events_before = np.cumsum(is_event) - is_event
    inserted_at = np.empty(len(order), dtype=np.int64)
    inserted_at[order] = events_before
    first = inserted_at[n_events : n_events + n_detections]
    stop = inserted_at[n_events + n_detections :]
    return first, stop


def _match(events: _Events, detections: pd.DataFrame, tolerance: float) -> np.ndarray:
    detections = _require_columns(detections, DETECTION_COLUMNS, "detections")
    time = _finite(detections["time"], "detection times")
    score = _finite(detections["score"], "detection scores")
    n_detections, n_events = len(time), len(events.position)
    matched_event = np.full(n_detections, -1, dtype=np.int64)
    if n_detections == 0 or n_events == 0:
        return matched_event

    code = events.recordings.get_indexer(pd.Index(detections["recording"]))
    known = np.flatnonzero(code >= 0)
    first, stop = _event_windows(
        events, code[known], time[known], tolerance + 2 * _TIME_SLACK
    )
    counts = stop - first
    pair_detection = np.repeat(known, counts)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    pair_event = np.repeat(first, counts) + within
    distance = np.abs(time[pair_detection] - events.position[pair_event])
    close = distance <= tolerance + _TIME_SLACK
    pair_detection, pair_event, distance = (
        pair_detection[close], pair_event[close], distance[close]
    )
    if len(pair_detection) == 0:
        return matched_event

    # Greedy order: higher score first; at equal score the nearer pair; then row order.
    order = np.lexsort((pair_event, pair_detection, distance, -score[pair_detection]))
    pair_detection, pair_event = pair_detection[order], pair_event[order]

    # A pair whose detection and event have no other candidate is matched whatever the order;
    # only the others (detections or events in contention) need the sequential greedy pass.
    alone = (np.bincount(pair_detection, minlength=n_detections)[pair_detection] == 1) & (
        np.bincount(pair_event, minlength=n_events)[pair_event] == 1
    )
    matched_event[pair_detection[alone]] = pair_event[alone]
    contended = ~alone
    detection_taken, event_taken = set(), set()
    chosen_detections, chosen_events = [], []
    for d, e in zip(pair_detection[contended].tolist(), pair_event[contended].tolist()):
        if d in detection_taken or e in event_taken:
            continue
        detection_taken.add(d)
        event_taken.add(e)
        chosen_detections.append(d)
        chosen_events.append(e)
    matched_event[np.asarray(chosen_detections, dtype=np.int64)] = chosen_events
    return matched_event


def match_detections(
    calls: pd.DataFrame, detections: pd.DataFrame, tolerance: float = DEFAULT_TOLERANCE
) -> np.ndarray:
    """Match detections one-to-one to call events, whatever their class.

    Parameters
    ----------
    calls
        Annotated calls: ``recording``, ``position`` (s). Calls at the same recording and
        position are one event.
    detections
        ``recording``, ``time`` (s), ``score``.
    tolerance
        Largest distance (s) between a detection and the event it matches, inclusive.

    Returns
    -------
    numpy.ndarray
        ``int64``, one per row of ``detections`` (in row order): the index of the matched
        event in :func:`call_events` ``(calls)``, or -1 (a false positive).

    Notes
    -----
    Greedy: detection-event pairs within ``tolerance`` are accepted by decreasing detection
    score, at equal score the nearer pair first, then by detection row and event index; a pair
    is accepted when neither its detection nor its event is taken yet. So each detection takes
    the nearest free event, and a detection never loses its event to one of lower score.
    Events of other recordings never match. Windows are found by binary search per recording;
    only detections or events with more than one candidate go through the sequential pass.
    """
    tolerance = _check_tolerance(tolerance)
    return _match(_call_events(calls), detections, tolerance)


# --------------------------------------------------------------------------------------------
# Ratios and curves
# --------------------------------------------------------------------------------------------


def _ratio(numerator, denominator):
    """``numerator / denominator``, NaN where the denominator is 0, without a warning."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out if out.ndim else float(out)


def _f1(tp, fp, fn):
    """``2 TP / (2 TP + FP + FN)``: the harmonic mean of precision and recall, NaN when there
    is neither a positive nor a prediction."""
    tp = np.asarray(tp, dtype=np.float64)
    return _ratio(2 * tp, 2 * tp + np.asarray(fp) + np.asarray(fn))


def precision_recall(scores, is_true, n_positives: int | None = None) -> PrecisionRecall:
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
    :math:`\\frac{1}{N} \\sum_n P_n` that the seed reported as "average precision": that mean
    ignores how much recall each prediction adds, and does not see missed positives at all.
    """
    scores = _finite(scores, "scores").ravel()
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


# --------------------------------------------------------------------------------------------
# Shared preparation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Scored:
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
    return _finite(probability, "class probabilities")


def _prepare(calls, detections, classes, tolerance, matches=None) -> _Scored:
    tolerance = _check_tolerance(tolerance)
    classes = list(classes)
    if len(set(classes)) != len(classes):
        raise ValueError("class names must be distinct")
    events = _call_events(calls)
    detections = _require_columns(detections, DETECTION_COLUMNS, "detections")
    n_events = len(events.position)
    if matches is None:
        matched_event = _match(events, detections, tolerance)
    else:
        matched_event = np.asarray(matches, dtype=np.int64)
        if matched_event.shape != (len(detections),) or np.any(matched_event >= n_events):
            raise ValueError("matches must hold one event index (or -1) per detection")
    labels = np.zeros((n_events, len(classes)), dtype=bool)
    if classes:  # detection alone needs no class (detection-only data has none)
        labels[events.event_of_call, _call_classes(calls, len(classes)) - 1] = True
    detection_labels = np.zeros((len(matched_event), len(classes)), dtype=bool)
    matched = matched_event >= 0
    detection_labels[matched] = labels[matched_event[matched]]
    return _Scored(
        matched_event=matched_event,
        score=_finite(detections["score"], "detection scores"),
        probability=_class_probabilities(detections, classes),
        labels=labels,
        detection_labels=detection_labels,
    )


def threshold_values(thresholds: Mapping[str, float] | None, classes: Sequence[str]):
    """The detection threshold and the per-class thresholds, as ``(float, float64 array)``.

    A missing key means :data:`DEFAULT_THRESHOLD`; an unknown key or a value that is not a
    finite number raises ``ValueError``.
    """
    thresholds = dict(thresholds or {})
    unknown = set(thresholds) - {"detection", *classes}
    if unknown:
        raise ValueError(
            f"thresholds name unknown class(es) {', '.join(sorted(map(str, unknown)))}; "
            f"expected 'detection' and {', '.join(classes)}"
        )
    detection = float(thresholds.get("detection", DEFAULT_THRESHOLD))
    per_class = np.array(
        [float(thresholds.get(name, DEFAULT_THRESHOLD)) for name in classes], dtype=np.float64
    )
    if not (math.isfinite(detection) and np.all(np.isfinite(per_class))):
        raise ValueError("thresholds must be finite numbers")
    return detection, per_class


def _counts_scores(tp, fp, fn) -> dict:
    tp, fp, fn = int(tp), int(fp), int(fn)
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _f1(tp, fp, fn),
    }


def _averages(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict:
    """Macro averages over the classes with support (TP + FN > 0), a 0/0 ratio counting 0;
    micro scores from the summed counts over all classes."""
    present = (tp + fn) > 0
    macro = {}
    for name, value in (
        ("precision", _ratio(tp, tp + fp)),
        ("recall", _ratio(tp, tp + fn)),
        ("f1", _f1(tp, fp, fn)),
    ):
        value = np.nan_to_num(np.asarray(value, dtype=np.float64)[present], nan=0.0)
        macro[f"macro_{name}"] = float(value.mean()) if len(value) else math.nan
    total_tp, total_fp, total_fn = int(tp.sum()), int(fp.sum()), int(fn.sum())
    return {
        **macro,
        "micro_precision": _ratio(total_tp, total_tp + total_fp),
        "micro_recall": _ratio(total_tp, total_tp + total_fn),
        "micro_f1": _f1(total_tp, total_fp, total_fn),
    }


# --------------------------------------------------------------------------------------------
# Threshold-free scores
# --------------------------------------------------------------------------------------------


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
    scored = _prepare(calls, detections, [], tolerance, matches)
    return precision_recall(scored.score, scored.matched, scored.n_events)


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
    scored = _prepare(calls, detections, classes, tolerance, matches)
    per_class = {
        name: precision_recall(
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


# --------------------------------------------------------------------------------------------
# Scores at thresholds
# --------------------------------------------------------------------------------------------


def _predicted_sets(scored: _Scored, class_thresholds: np.ndarray) -> np.ndarray:
    return scored.probability >= class_thresholds[None, :]


def seed_scores(
    calls: pd.DataFrame,
    detections: pd.DataFrame,
    classes: Sequence[str],
    thresholds: Mapping[str, float] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    matches: np.ndarray | None = None,
) -> dict:
    """The seed's scores at given thresholds.

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

        ``"classification"``, on the events matched by a kept detection only (the seed's
        choice: a missed event is a detection error, not a classification one): the predicted
        set of such an event is the classes whose probability reaches their threshold, its
        true set the classes of its calls. ``per_class``: name to ``tp``, ``fp``, ``fn``,
        ``precision``, ``recall``, ``f1``, ``support`` (matched events of the class),
        ``threshold``. ``macro_precision``, ``macro_recall``, ``macro_f1``: the means of the
        per-class values (the seed's "averaged") over the classes with support, a 0/0 ratio
        (a class never predicted) counting 0; ``micro_*``: from the counts summed over all
        classes. ``n_events``: the matched events counted. Undefined ratios (0/0) are NaN.
        Note that ``macro_precision`` is a mean of precisions, which the seed's report
        called an average precision; it is not one (see :func:`class_average_precision`).
    """
    classes = list(classes)
    scored = _prepare(calls, detections, classes, tolerance, matches)
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
    predicted = _predicted_sets(scored, class_thresholds)[counted]
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
    n_events = truth.shape[0]
    tp = np.sum(truth & predicted, axis=0)
    fp = np.sum(~truth & predicted, axis=0)
    fn = np.sum(truth & ~predicted, axis=0)
    averages = _averages(tp, fp, fn)
    cells = truth.size
    return {
        "n_events": int(n_events),
        "micro_precision": averages["micro_precision"],
        "micro_recall": averages["micro_recall"],
        "micro_f1": averages["micro_f1"],
        "macro_f1": averages["macro_f1"],
        "hamming_loss": _ratio(np.sum(truth != predicted), cells),
        "exact_match": _ratio(np.sum(np.all(truth == predicted, axis=1)), n_events),
    }


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
        As :func:`seed_scores`.

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
    scored = _prepare(calls, detections, classes, tolerance, matches)
    detection_threshold, class_thresholds = threshold_values(thresholds, classes)
    counted = (scored.score >= detection_threshold) & scored.matched
    truth = scored.detection_labels[counted]
    predicted = _predicted_sets(scored, class_thresholds)[counted]
    overlapping = truth.sum(axis=1) >= 2
    return {
        "all": _multilabel_set_scores(truth, predicted),
        "overlapping": _multilabel_set_scores(truth[overlapping], predicted[overlapping]),
    }


def _end_to_end_counts(scored: _Scored, detection_threshold, class_thresholds):
    reported = (scored.score >= detection_threshold)[:, None] & _predicted_sets(
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
        As :func:`seed_scores`.

    Returns
    -------
    dict
        ``per_class``: name to ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1``,
        ``support`` (events with a call of the class), ``threshold``; then ``macro_*`` and
        ``micro_*`` averages as in :func:`seed_scores`.

    Notes
    -----
    A detection whose ``score`` reaches the detection threshold reports every class whose
    probability reaches its threshold. A report (detection, k) is a true positive when the
    detection matched an event with a call of class k, a false positive otherwise (detection
    unmatched, or matched to an event without k); every event with a call of class k not
    reported so is a false negative. Unlike :func:`seed_scores`, detection errors count here
    for every class they affect, so raising the detection threshold to keep only easy calls
    does not flatter the classification.
    """
    classes = list(classes)
    scored = _prepare(calls, detections, classes, tolerance, matches)
    detection_threshold, class_thresholds = threshold_values(thresholds, classes)
    tp, fp, fn = _end_to_end_counts(scored, detection_threshold, class_thresholds)
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


# --------------------------------------------------------------------------------------------
# Thresholds
# --------------------------------------------------------------------------------------------


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
        As :func:`seed_scores`; the validation set.
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
    scored = _prepare(calls, detections, classes, tolerance, matches)
    n_positives = scored.labels.sum(axis=0).astype(np.int64)
    present = n_positives > 0
    detection_threshold = DEFAULT_THRESHOLD
    class_thresholds = np.full(len(classes), DEFAULT_THRESHOLD)

    if not np.any(present):
        # Detection-only: the detection F1 alone.
        tp = _sums_at_or_above(scored.score, grid, scored.matched[:, None])[:, 0]
        fp = _sums_at_or_above(scored.score, grid, np.ones((len(scored.score), 1)))[:, 0] - tp
        detection_threshold = float(grid[_middle_of_best(_f1(tp, fp, scored.n_events - tp))])
        return {"detection": detection_threshold, **{n: DEFAULT_THRESHOLD for n in classes}}

    def objective_of(tp, fp, fn):  # counts of shape (G, K)
        if objective == "micro":
            return _f1(tp.sum(axis=1), fp.sum(axis=1), fn.sum(axis=1))
        return np.nan_to_num(_f1(tp, fp, fn), nan=0.0)[:, present].mean(axis=1)

    truth = scored.detection_labels
    for _ in range(max(int(rounds), 0)):
        before = (detection_threshold, class_thresholds.copy())
        # The detection threshold, the class thresholds fixed.
        predicted = _predicted_sets(scored, class_thresholds)
        tp = _sums_at_or_above(scored.score, grid, predicted & truth)
        fp = _sums_at_or_above(scored.score, grid, predicted) - tp
        detection_threshold = float(grid[_middle_of_best(objective_of(tp, fp, n_positives - tp))])
        # Each class in turn, the others and the detection threshold fixed.
        kept = scored.score >= detection_threshold
        tp, fp, fn = _end_to_end_counts(scored, detection_threshold, class_thresholds)
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


# --------------------------------------------------------------------------------------------
# Everything together
# --------------------------------------------------------------------------------------------


def _plain(value):
    """``value`` with numpy types made plain Python and NaN made None (JSON-ready)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


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
        As :func:`seed_scores` (thresholds: ``"detection"`` and per class, default 0.5).

    Returns
    -------
    dict
        Plain ``int``/``float``/``str``/``None`` (NaN, i.e. undefined, becomes ``None``):

        * ``tolerance``, ``thresholds`` (all K + 1 used);
        * ``detection``: ``ap`` (:func:`detection_average_precision`) and the detection part
          of :func:`seed_scores` (``precision``, ``recall``, ``f1``, ``tp``, ``fp``, ``fn``,
          ``threshold``, ``n_events``, ``n_detections``);
        * ``classification``: ``map`` (:func:`class_average_precision`), ``per_class`` (name
          to ``ap``, ``n_events`` (events of the class, AP's positives) and the per-class part
          of :func:`seed_scores`: ``precision``, ``recall``, ``f1``, ``support``, ``tp``,
          ``fp``, ``fn``, ``threshold``), ``macro_precision``, ``macro_recall``, ``macro_f1``,
          ``micro_precision``, ``micro_recall``, ``micro_f1``, ``n_events``;
        * ``multilabel``: :func:`multilabel_scores` (``all`` and ``overlapping``);
        * ``end_to_end``: :func:`end_to_end_scores`.
    """
    classes = list(classes)
    tolerance = _check_tolerance(tolerance)
    detection_threshold, class_thresholds = threshold_values(thresholds, classes)
    used = {"detection": detection_threshold, **dict(zip(classes, class_thresholds.tolist()))}
    matches = match_detections(calls, detections, tolerance)
    arguments = (calls, detections, classes, used, tolerance, matches)

    seed = seed_scores(*arguments)
    detection_ap = detection_average_precision(calls, detections, tolerance, matches)
    class_ap = class_average_precision(calls, detections, classes, tolerance, matches)
    per_class = {
        name: {
            "ap": class_ap.per_class[name].average_precision,
            "n_events": class_ap.per_class[name].n_positives,
            **seed["classification"]["per_class"][name],
        }
        for name in classes
    }
    result = {
        "tolerance": tolerance,
        "thresholds": used,
        "detection": {"ap": detection_ap.average_precision, **seed["detection"]},
        "classification": {
            "map": class_ap.mean_average_precision,
            **seed["classification"],
            "per_class": per_class,
        },
        "multilabel": multilabel_scores(*arguments),
        "end_to_end": end_to_end_scores(*arguments),
    }
    return _plain(result)


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
                "",
                "",
                n(classification[f"{kind}_precision"]),
                n(classification[f"{kind}_recall"]),
                n(classification[f"{kind}_f1"]),
                n(end_to_end.get(f"{kind}_f1")),
            ]
        )
    lines += _table(
        ["class", "events", "AP", "thresh", "matched", "precision", "recall", "F1", "e2e F1"],
        rows,
    )
    lines.append("(AP: over all events of the class; 'macro' AP is the mAP. precision, recall,")
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
