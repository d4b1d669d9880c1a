"""From per-column probabilities to detected call events: smoothing and non-maximum suppression.

- :func:`smooth_probabilities`: Gaussian smoothing along time of every output;
- :func:`find_detections`: the detected *events*, every peak of the call score
  ``1 - P(not call)`` after non-maximum suppression (Cython, :func:`pipeline.nms.peaks_1d`),
  with its calibrated score (:mod:`pipeline.detection.calibration`) and the class
  probabilities there;
- :func:`find_class_peaks`: the reference system's per-class peaks, for comparison.

**Events rather than class peaks (a difference from the reference system, on purpose).** The
reference system ran the NMS separately on each class's probability and kept a class peak
when it exceeded that frame's not-call probability and the class threshold
(:func:`find_class_peaks` does exactly that). Here the NMS runs once, on the call score: each
call moment is one event, found or missed whatever its species (detection is
class-agnostic, as the evaluation counts it), and the event reports every class whose
probability reaches its threshold at that column (multi-label: two bats calling together
are one event with two species). Per-class peaks of one call fall a few columns apart from
class to class, so the reference system reported one call at slightly different times for
each class that rose; one event per moment cannot.

**Times.** An event at column ``c`` is reported at ``times[c]``, which the caller chooses:
:func:`pipeline.spectrogram.column_times` gives the start of the window's first column; a
constant offset (say, to the window's centre) must agree with where the training placed the
calls in their windows. The NMS radius is 10 columns, the reference's +-21 frames rounded
down to whole columns (+-10.5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from pipeline.detection.calibration import IDENTITY, ScoreCalibration
from pipeline.detection.schema import probability_column, threshold_values
from pipeline.detection.scoring import call_score
from pipeline.nms import peaks_1d

#: Standard deviation (columns) of the smoothing of the probabilities: the reference system smoothed
#: with sigma ~1 frame, and a column is 2 frames.
SMOOTHING_SIGMA_COLUMNS = 0.5


#: Columns on each side of a peak that must not exceed it: the reference system's +-21 frames (12 ms)
#: are 10.5 columns.
NMS_RADIUS_COLUMNS = 10


#: Gaussian kernels of the smoothing are truncated at this many standard deviations (scipy's default).
SMOOTHING_TRUNCATE = 4.0


def smoothing_reach(sigma_columns: float) -> int:
    """Columns on each side that :func:`smooth_probabilities` reaches (0: no smoothing)."""
    if not sigma_columns > 0:
        return 0
    return int(SMOOTHING_TRUNCATE * float(sigma_columns) + 0.5)


def smooth_probabilities(probs: np.ndarray, sigma_columns: float = SMOOTHING_SIGMA_COLUMNS) -> np.ndarray:
    """Gaussian smoothing of every output along time.

    Parameters
    ----------
    probs : array, shape (n_columns, K + 1)
        Per-column probabilities (:func:`column_probabilities`).
    sigma_columns : float
        Standard deviation in columns; the reference system's sigma of about one frame is 0.5 column.
        0 returns an unsmoothed copy.

    Returns
    -------
    numpy.ndarray
        float32, same shape. The kernel is truncated at 4 standard deviations
        (:func:`smoothing_reach` columns on each side), and the first and last columns are
        repeated beyond the ends of the recording (``mode="nearest"``).
    """
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 2:
        raise ValueError(f"probabilities are (n_columns, K + 1), not of shape {probs.shape}")
    if sigma_columns < 0:
        raise ValueError(f"sigma_columns={sigma_columns} must be >= 0")
    if smoothing_reach(sigma_columns) == 0 or len(probs) == 0:
        return probs.copy()
    return ndimage.gaussian_filter1d(
        probs, float(sigma_columns), axis=0, mode="nearest", truncate=SMOOTHING_TRUNCATE
    )


def _checked_inputs(probs, times, classes, radius_columns):
    classes = [str(name) for name in classes]
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 2 or probs.shape[1] != len(classes) + 1:
        raise ValueError(
            f"probabilities of shape {probs.shape} do not hold 'not call' and the "
            f"{len(classes)} classes given (expected (n_columns, {len(classes) + 1}))"
        )
    times = np.asarray(times, dtype=np.float64)
    if times.shape != (len(probs),):
        raise ValueError(f"{len(times)} times given for {len(probs)} columns")
    radius_columns = int(radius_columns)
    if radius_columns < 0:
        raise ValueError(f"radius_columns={radius_columns} must be >= 0")
    return probs, times, classes, radius_columns


def find_detections(
    probs: np.ndarray,
    times: np.ndarray,
    classes: Sequence[str],
    thresholds: Mapping[str, float] | None = None,
    *,
    radius_columns: int = NMS_RADIUS_COLUMNS,
    calibration: ScoreCalibration | None = None,
) -> pd.DataFrame:
    """The detected call events of one recording: the peaks of the call score.

    Parameters
    ----------
    probs : array, shape (n_columns, K + 1)
        Smoothed per-column probabilities, column 0 "not call" (:func:`smooth_probabilities`).
    times : array, shape (n_columns,)
        Real-time start (s) of each column
        (:func:`pipeline.spectrogram.column_times`).
    classes : sequence of str
        The K class names, class ``k`` being column ``k`` of ``probs``.
    thresholds : mapping, optional
        ``"detection"``: the smallest (calibrated) score of an event (0.5 when missing); 0
        keeps every peak. The class thresholds are not used here (see :func:`species_rows`).
    radius_columns : int
        Columns on each side of a peak that must not exceed it (10: the reference system's +-21 frames).
    calibration : ScoreCalibration, optional
        The model's map of the raw call score to the reported score
        (:mod:`pipeline.detection.calibration`); default the identity.

    Returns
    -------
    pandas.DataFrame
        One row per event, in column order: ``time`` (``times[column]``), ``column`` (int64),
        ``score`` (the calibrated call score, float64: see :class:`ScoreCalibration`; the
        detection tables store it as float32) and ``prob_<name>`` for every class (its raw
        probability at that column, float32).

    Notes
    -----
    The raw call score ``1 - P(not call)`` peaks where no column within ``radius_columns`` on
    either side is greater (of equal columns, the first; :func:`pipeline.nms.peaks_1d`). Every
    peak is an event, whatever its score; its ``score`` is ``calibration(raw score)``, and it is
    kept when that reaches the detection threshold. A peak below the threshold still
    suppresses its neighbours, and the calibration is strictly increasing, so that detecting at
    a low threshold and keeping the events whose score reaches a higher one gives the events
    detected at the higher one: :func:`pipeline.evaluation.thresholds.tune_thresholds` can tune
    the detection threshold on one run at threshold 0, which holds the whole ranked list.

    Unlike the reference system, which ran the NMS per class (:func:`find_class_peaks`) and kept
    a peak only where it beat P(not call) (a call score above 0.5), each call moment is one
    event, whatever its species and its score: detection is class-agnostic, the event carries
    every class probability (multi-label), one call is never reported at slightly different
    times for different classes, and a low threshold reaches the doubtful calls.
    """
    probs, times, classes, radius_columns = _checked_inputs(probs, times, classes, radius_columns)
    detection_threshold, _ = threshold_values(thresholds, classes)
    raw = call_score(probs)
    peaks = peaks_1d(raw, radius_columns, np.float32(-np.inf))  # every peak (NaN never is one)
    score = (IDENTITY if calibration is None else calibration)(raw[peaks])  # float64
    kept = score >= detection_threshold
    peaks, score = peaks[kept], score[kept]
    table = {
        "time": times[peaks],
        "column": peaks.astype(np.int64),
        "score": score,
    }
    for k, name in enumerate(classes, start=1):
        table[probability_column(name)] = probs[peaks, k]
    return pd.DataFrame(table)


def find_class_peaks(
    probs: np.ndarray,
    times: np.ndarray,
    classes: Sequence[str],
    thresholds: Mapping[str, float] | None = None,
    radius_columns: int = NMS_RADIUS_COLUMNS,
) -> pd.DataFrame:
    """The reference system's detections: non-maximum suppression on each class separately.

    Parameters
    ----------
    probs, times, classes, radius_columns
        As :func:`find_detections`.
    thresholds : mapping, optional
        One threshold per class name (0.5 when missing); ``"detection"`` is not used.

    Returns
    -------
    pandas.DataFrame
        One row per (peak, class), ordered by column then class: ``time``, ``column``,
        ``species`` (the class name), ``prob`` (that class's probability), ``score``
        (``1 - P(not call)``) and ``prob_<name>`` for every class, all at that column.

    Notes
    -----
    The reference system's rule: a column is a peak of class ``k`` when no column within
    ``radius_columns`` on either side has a greater probability of ``k`` (of equal columns,
    the first); the peak is kept when its probability exceeds the not-call probability at
    that column and reaches the threshold of ``k``. One call often gives peaks of several
    classes a few columns apart; :func:`find_detections` gives one event instead.
    """
    probs, times, classes, radius_columns = _checked_inputs(probs, times, classes, radius_columns)
    _, class_thresholds = threshold_values(thresholds, classes)
    peak_columns, peak_classes = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for k in range(1, len(classes) + 1):
        prob = np.ascontiguousarray(probs[:, k])
        threshold = class_thresholds[k - 1]
        peaks = peaks_1d(prob, radius_columns, np.float32(threshold))
        peaks = peaks[
            (prob[peaks] > probs[peaks, 0]) & (prob[peaks].astype(np.float64) >= threshold)
        ]
        peak_columns.append(peaks)
        peak_classes.append(np.full(len(peaks), k, dtype=np.int64))
    columns = np.concatenate(peak_columns)
    class_index = np.concatenate(peak_classes)
    order = np.lexsort((class_index, columns))
    columns, class_index = columns[order], class_index[order]
    table = {
        "time": times[columns],
        "column": columns.astype(np.int64),
        "species": pd.Series(np.asarray(classes, dtype=object)[class_index - 1], dtype=object),
        "prob": probs[columns, class_index],
        "score": call_score(probs)[columns],
    }
    for k, name in enumerate(classes, start=1):
        table[probability_column(name)] = probs[columns, k]
    return pd.DataFrame(table)
