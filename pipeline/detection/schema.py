"""The detections schema: what a detected call is, in memory and on disk.

One row per detected call (an *event*: a peak of the call score, whatever its species), with
these columns, in this order (:func:`event_schema` gives them as an arrow schema, the one of
every Parquet part and of :meth:`pipeline.model.Model.detect`'s table):

=============== ======= ===============================================================
``file``        string  the recording's file, as the cube stores its path
``channel``     int32   its channel (0-based), -1 (:data:`MIX_CHANNEL`) for a mix
``time``        float64 start of the detection, real seconds from the start of the file
``class``       string  the most probable class at the event (of equal ones, the first)
``probability`` float32 that class's probability
``score``       float32 the detection score: calibrated, roughly the precision of such events
``prob_<name>`` float32 the probability of each class, in the model's class order
=============== ======= ===============================================================

**Score and probabilities.** ``score`` ranks the events: it is the call score ``1 - P(not
call)`` at the peak (the model's raw output, smoothed) mapped through the model's calibration
(:mod:`pipeline.detection.calibration`), a strictly increasing map onto [0, 1] fitted on the
validation recordings when the model was trained, so that among events of score ``p`` about a
fraction ``p`` are calls; a model without a calibration reports the raw call score. It is
computed in float64 (:func:`pipeline.detection.events.find_detections`: distinct raw scores keep
distinct scores, so the ranking is the raw score's) and stored as float32. Every peak
of the call score is an event, whatever its score; a table holds those whose score reaches the
detection threshold. ``probability`` and ``prob_<name>`` are *raw*: the model's smoothed
probability of each class at the event's column (independent per-class outputs, multi-label: they
need not sum to 1), not calibrated; the class thresholds apply to them as they are.

**Thresholds** are a mapping with the key ``"detection"`` (on ``score``, in calibrated units)
and one key per class name (on the raw class probabilities); a missing key means
:data:`DEFAULT_THRESHOLD`. A value is *reached* when the score or probability is greater than
or equal to it (:func:`threshold_values`). A *reported species* of an event is a class whose
probability reaches its threshold, at an event whose score reaches the detection threshold
(:func:`species_rows`): two species at one event are two reports (multi-label); an event with
none is a call of no known species.

Compute (:mod:`pipeline.detection`) and I/O (:mod:`pipeline.outputs`) both import this
module; it imports neither.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

#: Version of the layout of the parts (in their metadata).
DETECTIONS_FORMAT = 1


#: Key of the parts' parquet metadata that holds the class list.
METADATA_KEY = b"batml"



#: Columns of every part before the per-class probabilities.
BASE_COLUMNS = ("file", "channel", "time", "class", "probability", "score")


#: The threshold of a class or of the detection when none is given.
DEFAULT_THRESHOLD = 0.5


SPECIES_COLUMNS = ("file_name", "predicted_time", "predicted_species", "predicted_prob")


def probability_column(name: str) -> str:
    """Name of the column of ``detections`` holding the probability of class ``name``."""
    return f"prob_{name}"


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


def _class_names(classes: Sequence[str]) -> list[str]:
    classes = [str(name) for name in classes]
    if not classes:
        raise ValueError("a detection table needs at least one class")
    if len(set(classes)) != len(classes):
        raise ValueError(f"class names must be distinct: {', '.join(classes)}")
    return classes


def _metadata(classes: Sequence[str]) -> dict[bytes, bytes]:
    document = {"format": DETECTIONS_FORMAT, "classes": list(classes)}
    return {METADATA_KEY: json.dumps(document, ensure_ascii=False).encode("utf-8")}


def base_fields() -> list[pa.Field]:
    return [
        pa.field("file", pa.string(), nullable=False),
        pa.field("channel", pa.int32(), nullable=False),
        pa.field("time", pa.float64(), nullable=False),
        pa.field("class", pa.string(), nullable=False),
        pa.field("probability", pa.float32(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
    ]


def event_schema(classes: Sequence[str]) -> pa.Schema:
    """The arrow schema of a detection part for a model's classes.

    Parameters
    ----------
    classes : sequence of str
        The model's class names, in its order.

    Returns
    -------
    pyarrow.Schema
        :data:`BASE_COLUMNS` then ``prob_<name>`` for every class (see the module's
        documentation for the types), with the class list in the metadata under
        :data:`METADATA_KEY`.
    """
    classes = _class_names(classes)
    fields = base_fields() + [pa.field(probability_column(name), pa.float32(), nullable=False) for name in classes]
    return pa.schema(fields, metadata=_metadata(classes))


def classes_of_columns(columns: Iterable[str]) -> list[str]:
    prefix = probability_column("")
    return [name[len(prefix):] for name in columns if name.startswith(prefix)]


def events_table(file: str, channel: int, events: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """The events of one recording as rows of a detection part.

    Parameters
    ----------
    file : str
        The recording's path, as the cube stores it.
    channel : int
        Its channel, :data:`MIX_CHANNEL` (-1) for a mix.
    events : pandas.DataFrame
        Its events from :func:`pipeline.detection.events.find_detections`: ``time``, ``score`` and
        ``prob_<name>`` for every class (``column`` and any other column are dropped).
    classes : sequence of str
        The model's class names, in its order.

    Returns
    -------
    pandas.DataFrame
        The columns of :func:`event_schema`, in its order and types, one row per event in
        the order given: ``class`` is the most probable class (of equal probabilities, the
        first in class order) and ``probability`` its probability.
    """
    classes = _class_names(classes)
    prob_columns = [probability_column(name) for name in classes]
    missing = [name for name in ["time", "score", *prob_columns] if name not in events.columns]
    if missing:
        raise ValueError(f"events lack the column(s) {', '.join(missing)}")
    n = len(events)
    prob = np.column_stack([np.asarray(events[c], dtype=np.float32) for c in prob_columns])
    prob = prob.reshape(n, len(classes))
    best = np.argmax(prob, axis=1) if n else np.zeros(0, dtype=np.int64)
    table = {
        "file": pd.Series([str(file)] * n, dtype="str"),
        "channel": np.full(n, int(channel), dtype=np.int32),
        "time": np.asarray(events["time"], dtype=np.float64),
        "class": pd.Series(np.asarray(classes, dtype=object)[best], dtype="str"),
        "probability": prob[np.arange(n), best],
        "score": np.asarray(events["score"], dtype=np.float32),
    }
    for k, column in enumerate(prob_columns):
        table[column] = prob[:, k]
    return pd.DataFrame(table)


def species_rows(
    events: pd.DataFrame,
    classes: Sequence[str],
    thresholds: Mapping[str, float] | None = None,
    *,
    file_name: str | None = None,
) -> pd.DataFrame:
    """The reference system's output: one row per (event, species whose probability reaches its threshold).

    Parameters
    ----------
    events : pandas.DataFrame
        Detected events (:func:`find_detections`): ``time``, ``prob_<name>`` for every
        class, optionally ``recording`` and ``score``.
    classes : sequence of str
        The K class names.
    thresholds : mapping, optional
        ``"detection"`` and one threshold per class (0.5 when missing).
    file_name : str, optional
        The ``file_name`` of every row when ``events`` has no ``recording`` column.

    Returns
    -------
    pandas.DataFrame
        ``file_name`` (the event's ``recording``, else ``file_name``), ``predicted_time``
        (its ``time``), ``predicted_species``, ``predicted_prob``: in event order, then
        class order. Two species reaching their thresholds at one event give two rows with
        the same time (multi-label). An event where no class reaches its threshold gives
        no row: it is still a detected call (kept in the events table), of no known species.

    Notes
    -----
    When ``events`` has a ``score`` column, the events whose score does not reach the
    detection threshold give no row, as in :func:`pipeline.evaluation.metrics.end_to_end_scores`; events
    of :func:`find_detections` at the same threshold all reach it.
    """
    classes = [str(name) for name in classes]
    detection_threshold, class_thresholds = threshold_values(thresholds, classes)
    missing = [c for c in ["time", *map(probability_column, classes)] if c not in events.columns]
    if missing:
        raise ValueError(f"events lack the column(s) {', '.join(missing)}")
    n = len(events)
    if "recording" in events.columns:
        names = np.asarray(events["recording"], dtype=object)
    else:
        names = np.full(n, file_name, dtype=object)
    prob = np.column_stack(
        [np.asarray(events[probability_column(name)]) for name in classes] or [np.zeros((n, 0))]
    ).reshape(n, len(classes))
    reported = prob >= class_thresholds
    if "score" in events.columns:
        reported &= (np.asarray(events["score"], dtype=np.float64) >= detection_threshold)[:, None]
    event_index, class_index = np.nonzero(reported)  # row-major: event order, then class
    rows = pd.DataFrame(
        {
            "file_name": pd.Series(names[event_index], dtype=object),
            "predicted_time": np.asarray(events["time"], dtype=np.float64)[event_index],
            "predicted_species": pd.Series(
                np.asarray(classes, dtype=object)[class_index], dtype=object
            ),
            "predicted_prob": prob[event_index, class_index],
        }
    )
    return rows[list(SPECIES_COLUMNS)]
