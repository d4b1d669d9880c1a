"""Detection AP and class mAP of any per-column scorer, through batml's detection and evaluation.

What an inference path (Keras windows, a strip pass, an int8 or bf16 graph) costs in accuracy
is measured the same way for all of them: its per-column probabilities of each annotated
recording are smoothed, peaks found (:func:`pipeline.detection.events.find_detections`, every peak kept),
and the events scored against the calls (:func:`pipeline.evaluation.metrics.detection_average_precision`,
:func:`pipeline.evaluation.metrics.class_average_precision`): threshold-free figures, so two paths compare
without tuning thresholds for each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

ColumnScorer = Callable[[np.ndarray], np.ndarray]
"""``score(spectrogram (n_columns, rows) float32) -> (n_columns, K + 1)``, as
:func:`pipeline.detection.scoring.column_probabilities` returns (column 0 P(not call))."""


@dataclass(frozen=True)
class ScorerAccuracy:
    """Threshold-free accuracy of one scorer on annotated recordings.

    Parameters
    ----------
    detection_ap : float
        Average precision of the call score (calls matched within 10 ms).
    class_map : float
        Mean over classes of the per-class average precision.
    n_events : int
        Detected events (every peak of the call score).
    """

    detection_ap: float
    class_map: float
    n_events: int


def scorer_events(score: ColumnScorer, cube, recordings: Sequence, classes: Sequence[str]) -> pd.DataFrame:
    """Every peak of a scorer's call score in annotated recordings of a cube.

    Parameters
    ----------
    score : callable
        A :data:`ColumnScorer`.
    cube : xarray.Dataset
        The spectrogram cube (:func:`pipeline.io.cube.open_cube`) holding the recordings.
    recordings : sequence of RecordingCalls
        Annotated recordings (e.g. ``read_dataset(...).test``); those not in the cube are
        left out.
    classes : sequence of str
        The class names.

    Returns
    -------
    pandas.DataFrame
        The events of :func:`pipeline.detection.events.find_detections` with ``recording`` (the cube's
        recording index as a string, as :func:`pipeline.evaluation.recordings.calls_table` names them).
    """
    from pipeline.detection.events import find_detections, smooth_probabilities
    from pipeline.annotations.matching import match_recordings

    everything = {"detection": 0.0, **{name: 0.0 for name in classes}}
    tables = []
    indices, _ = match_recordings(cube, [rec.file for rec in recordings])
    for r in indices:
        if r is None:
            continue
        one = cube.batml.recording(r)
        probs = np.asarray(score(one["spectrogram"].values.astype(np.float32)), dtype=np.float32)
        events = find_detections(smooth_probabilities(probs), one["offset"].values, classes, everything)
        tables.append(events.assign(recording=str(r)))
    if not tables:
        return pd.DataFrame(columns=["recording", "time", "score", *[f"prob_{c}" for c in classes]])
    return pd.concat(tables, ignore_index=True)


def scorer_accuracy(score: ColumnScorer, cube, recordings: Sequence, classes: Sequence[str]) -> ScorerAccuracy:
    """Detection AP and class mAP of a scorer on annotated recordings of a cube (see
    :func:`scorer_events`)."""
    from pipeline.evaluation.metrics import class_average_precision, detection_average_precision
    from pipeline.evaluation.recordings import calls_table

    calls = calls_table(recordings, cube)
    events = scorer_events(score, cube, recordings, classes)
    detection = detection_average_precision(calls, events).average_precision
    per_class = class_average_precision(calls, events, list(classes)).mean_average_precision
    return ScorerAccuracy(float(detection), float(per_class), len(events))
