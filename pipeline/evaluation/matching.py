"""Matching detections to annotated calls.

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
(positions compared exactly, as the reference system's format writes overlapping calls at the
same position). Detection is class-agnostic: overlapping calls are one event, found or missed
together. Classification is multi-label: an event's labels are the classes of all its calls.

**Matching** (:func:`match_detections`). A detection can match an event of its own recording
at most ``tolerance`` seconds away (10 ms, the reference's, inclusive, with 1 ns of slack for
floating-point rounding). Detections are taken by decreasing ``score``; each takes the nearest
event still free; each event is taken at most once, so a second detection of one event is a
false positive. Because a detection never loses an event to a detection of lower score, the
matching of the detections whose score reaches any threshold is the greedy matching of those
detections alone: one matching serves every threshold and the precision-recall curves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: The reference system's matching tolerance: a detection within 10 ms (real time) of a call finds it.
DEFAULT_TOLERANCE = 0.010


#: Slack (s) added to the tolerance so that a detection exactly ``tolerance`` away matches
#: whatever the rounding of the subtraction.
_TIME_SLACK = 1e-9


CALL_COLUMNS = ("recording", "position", "class")


DETECTION_COLUMNS = ("recording", "time", "score")


def require_columns(table: pd.DataFrame, columns: Sequence[str], what: str) -> pd.DataFrame:
    """``table`` with ``columns`` checked; an empty table may lack them."""
    missing = [c for c in columns if c not in table.columns]
    if missing and len(table) == 0:
        table = table.assign(**{c: pd.Series([], dtype=float) for c in missing})
    elif missing:
        raise ValueError(f"{what} lack the column(s) {', '.join(missing)}")
    return table


def finite_array(values, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} must be finite numbers (found NaN or infinity)")
    return array


def checked_tolerance(tolerance: float) -> float:
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


def events_of_calls(calls: pd.DataFrame) -> _Events:
    calls = require_columns(calls, ("recording", "position"), "calls")
    position = finite_array(calls["position"], "call positions")
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


def classes_of_calls(calls: pd.DataFrame, n_classes: int) -> np.ndarray:
    calls = require_columns(calls, CALL_COLUMNS, "calls")
    classes = np.asarray(calls["class"])
    if len(classes) and not (
        np.issubdtype(classes.dtype, np.number) and np.all(classes == np.round(classes))
    ):
        raise ValueError("call classes must be integers 1..K (0: species unknown)")
    classes = classes.astype(np.int64)
    bad = (classes < 0) | (classes > n_classes)
    if np.any(bad):
        raise ValueError(
            f"call class {int(classes[bad][0])} is outside 1..{n_classes} "
            f"(the number of class names given; 0: species unknown)"
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
    events = events_of_calls(calls)
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
    events = events_of_calls(calls)
    classes = classes_of_calls(calls, n_classes)
    labels = np.zeros((len(events.position), n_classes), dtype=bool)
    known = classes >= 1
    labels[events.event_of_call[known], classes[known] - 1] = True
    return labels


def classified_only(calls: pd.DataFrame, detections: pd.DataFrame, tolerance: float = DEFAULT_TOLERANCE):
    """The calls and detections that classification is scored on.

    A call of class 0 is a bat call whose species the annotator did not give: it counts for
    detection, but its event (when no call of a known class shares it) and the detections
    matched to that event are left out of every classification score, which would otherwise
    count the species reported there as false.

    Returns
    -------
    (calls, detections)
        Subsets of the two tables (unchanged when every call has a class).
    """
    if "class" not in calls.columns:  # detection alone: no class to leave out
        return calls, detections
    calls = require_columns(calls, CALL_COLUMNS, "calls")
    unknown = np.asarray(calls["class"]) == 0
    if not unknown.any():
        return calls, detections
    events = events_of_calls(calls)
    known_event = np.zeros(len(events.position), dtype=bool)
    known_event[events.event_of_call[~unknown]] = True
    matched = match_events(events, detections, tolerance)
    keep_detection = (matched < 0) | known_event[np.maximum(matched, 0)]
    keep_call = known_event[events.event_of_call]
    return calls[keep_call], detections[keep_detection]


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


def match_events(events: _Events, detections: pd.DataFrame, tolerance: float) -> np.ndarray:
    detections = require_columns(detections, DETECTION_COLUMNS, "detections")
    time = finite_array(detections["time"], "detection times")
    score = finite_array(detections["score"], "detection scores")
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
    tolerance = checked_tolerance(tolerance)
    return match_events(events_of_calls(calls), detections, tolerance)
