"""A model on the annotated recordings of a cube: their calls, detections, calibration, thresholds and scores.

What training (validation calibration and thresholds, test scores, hard negative mining) and
``batml evaluate`` run a :class:`~pipeline.model.predictor.Predictor` on. The ``recording`` of
both tables is the cube's recording index, as a string. Detections are every peak of the call
score (threshold 0, the dense path), so that the precision-recall curves and the AP see the
whole ranked list.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.detection.calibration import IDENTITY, CalibrationError, ScoreCalibration, fit_calibration
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


def detect_recordings(
    predictor: Predictor, cube, recordings, classes, thresholds=None, calibration: ScoreCalibration | None = None
) -> pd.DataFrame:
    """Detection events of the annotated recordings (``recording`` = cube index as a string).

    Every peak of the call score by default (thresholds 0), its ``score`` mapped through
    ``calibration`` (default the identity: the raw call score). Only the annotated parts of a
    recording are looked at (its ``windows``, when known): a detection outside them can be
    neither right nor wrong.
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
        events = detect_recording(
            predictor, spectrogram, one["offset"].values, classes, thresholds, calibration=calibration
        )
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


def calibrated_thresholds(predictor, cube, recordings, classes) -> tuple[ScoreCalibration, dict[str, float]]:
    """The score's calibration and the thresholds, fitted on validation recordings.

    Every peak of the raw call score is matched to the calls (within 10 ms, each call at most
    once); the calibration maps the raw score to the fraction of peaks around it that matched
    (:func:`pipeline.detection.calibration.fit_calibration`); then the detection threshold (on
    the calibrated score) and the class thresholds maximise F1
    (:func:`pipeline.evaluation.thresholds.tune_thresholds`). Without calls or peaks, or when
    every peak or none matched, the calibration is the identity, and without calls or peaks
    every threshold is 0.5.
    """
    from pipeline.evaluation.matching import match_detections
    from pipeline.evaluation.thresholds import tune_thresholds

    calls = calls_table(recordings, cube)
    detections = detect_recordings(predictor, cube, recordings, classes)
    if calls.empty or detections.empty:
        return IDENTITY, {"detection": 0.5, **{c: 0.5 for c in classes}}
    try:
        calibration = fit_calibration(detections["score"], match_detections(calls, detections) >= 0)
    except CalibrationError:
        calibration = IDENTITY
    detections = detections.assign(score=calibration(detections["score"]))
    return calibration, tune_thresholds(calls, detections, classes)


def evaluate_model(predictor, cube, recordings, classes, thresholds, calibration: ScoreCalibration | None = None) -> dict:
    """The reference system's and the proper metrics of a model on annotated recordings
    (every peak detected, scores mapped through ``calibration``; thresholds in its units)."""
    from pipeline.evaluation.report import evaluate

    calls = calls_table(recordings, cube)
    detections = detect_recordings(predictor, cube, recordings, classes, calibration=calibration)
    return evaluate(calls, detections, classes, thresholds)
