"""A model on the annotated recordings of a cube: their calls, detections, thresholds and scores.

What training (validation thresholds, test scores, hard negative mining) and ``batml evaluate``
run a :class:`~pipeline.model.predictor.Predictor` on. The ``recording`` of both tables is the
cube's recording index, as a string.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.model.predictor import Predictor


def calls_table(recordings, cube) -> pd.DataFrame:
    """The calls of annotated recordings as :mod:`pipeline.evaluation` reads them (``recording``
    = the cube's recording index as a string; ``class`` 1..K, 0 for a species unknown)."""
    from pipeline.annotations.matching import match_recordings

    rows = []
    indices, _ = match_recordings(cube, [rec.file for rec in recordings])
    for rec, r in zip(recordings, indices):
        if r is None:
            continue
        classes = rec.classes if rec.classes is not None else np.ones(len(rec.positions), np.int64)
        rows += [(str(r), float(p), int(c)) for p, c in zip(rec.positions, classes)]
    return pd.DataFrame(rows, columns=["recording", "position", "class"])


def detect_recordings(predictor: Predictor, cube, recordings, classes, thresholds=None) -> pd.DataFrame:
    """Detection events of the annotated recordings (``recording`` = cube index as a string).

    Only the annotated parts of a recording are looked at (its ``windows``, when known): a
    detection outside them can be neither right nor wrong.
    """
    from pipeline.annotations.matching import match_recordings
    from pipeline.detection.recording import detect_recording

    thresholds = thresholds or {"detection": 0.0, **{c: 0.0 for c in classes}}
    tables = []
    indices, _ = match_recordings(cube, [rec.file for rec in recordings])
    for rec, r in zip(recordings, indices):
        if r is None:
            continue
        one = cube.batml.recording(r)
        spectrogram = one["spectrogram"].values.astype(np.float32)
        events = detect_recording(predictor, spectrogram, one["offset"].values, classes, thresholds)
        if getattr(rec, "windows", None) is not None:
            events = events[inside_windows(events["time"].to_numpy(), rec.windows)]
        tables.append(events.assign(recording=str(r)))
    columns = ["recording", "time", "score", *[f"prob_{c}" for c in classes]]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=columns)


def inside_windows(times: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """Whether each time lies in one of the windows ``[start, end)`` (real s)."""
    windows = np.asarray(windows, dtype=np.float64).reshape(-1, 2)
    times = np.asarray(times, dtype=np.float64)
    return ((times[:, None] >= windows[None, :, 0]) & (times[:, None] < windows[None, :, 1])).any(axis=1)


def tuned_thresholds(predictor, cube, recordings, classes) -> dict[str, float]:
    """Per-class and detection thresholds maximising F1 on validation recordings."""
    from pipeline.evaluation.thresholds import tune_thresholds

    calls = calls_table(recordings, cube)
    detections = detect_recordings(predictor, cube, recordings, classes)
    if calls.empty or detections.empty:
        return {"detection": 0.5, **{c: 0.5 for c in classes}}
    return tune_thresholds(calls, detections, classes)


def evaluate_model(predictor, cube, recordings, classes, thresholds) -> dict:
    """The reference system's and the proper metrics of a model on annotated recordings."""
    from pipeline.evaluation.report import evaluate

    calls = calls_table(recordings, cube)
    detections = detect_recordings(predictor, cube, recordings, classes)
    return evaluate(calls, detections, classes, thresholds)
