"""From a recording's spectrogram to detected calls and their species.

A model sees *windows*: 20 consecutive columns of the model-ready spectrogram (one column is
two STFT frames, about 1.16 ms of real time), given to it as an array ``(130, 20, 1)``
(frequency, time, channel). Whatever the model (one network with K + 1 sigmoid outputs, or a
detector followed by a classifier), detection sees it as a *predictor*::

    predict(windows: float32 (b, 130, 20, 1)) -> (b, K + 1)

whose column 0 is the probability that the window holds no call ("not call") and column
``k`` the probability of class ``k`` (1..K). The steps, each a pure function:

1. :func:`recording_windows` - the windows starting at some columns (a strided view of the
   spectrogram; only the batch asked for is copied);
2. :func:`column_probabilities` - the window starting at every column scored, in batches:
   an ``(n_columns, K + 1)`` array; the last ``width - 1`` columns, which start no complete
   window, are "not call";
3. :func:`smooth_probabilities` - Gaussian smoothing along time of every output;
4. :func:`find_detections` - the detected *events*: peaks of the call score
   ``1 - P(not call)`` after non-maximum suppression, with the class probabilities there;
5. :func:`species_rows` - the seed's output: one row per (event, species above its
   threshold).

:func:`detect_recording` chains 2 to 4 on a whole recording; :func:`detect_columns` gives the
same rows for a recording of any length, reading and scoring it in blocks of columns.

**Events rather than class peaks (a difference from the seed, on purpose).** The seed ran
the NMS separately on each class's probability and kept a class peak when it exceeded that
frame's not-call probability and the class threshold (:func:`find_class_peaks` does exactly
that, for comparison). Here the NMS runs once, on the call score ``1 - P(not call)``: each
call moment is one event, found or missed whatever its species (detection is
class-agnostic, as the evaluation counts it), and the event reports every class whose
probability reaches its threshold at that column (multi-label: two bats calling together
are one event with two species). Per-class peaks of one call fall a few columns apart from
class to class, so the seed reported one call at slightly different times for each class
that rose; one event per moment cannot.

**Thresholds** are a mapping with the key ``"detection"`` (the call score) and one key per
class name; a missing key means 0.5. A value is *reached* when the probability is greater
than or equal to it, as in :mod:`pipeline.evaluate` (the seed said "exceeds"; on float32
probabilities the two differ only at a probability exactly equal to the threshold).

**Times.** An event at column ``c`` is reported at ``times[c]``, which the caller chooses:
:func:`pipeline.spectrogram.column_times` gives the start of the window's first column; a
constant offset (say, to the window's centre) must agree with where the training placed
the calls in their windows. The NMS radius is 10 columns, the seed's +-21 frames rounded
down to whole columns (+-10.5).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from pipeline.evaluate import probability_column, threshold_values
from pipeline.nms import peaks_1d

#: Spectrogram columns in a model window (40 STFT frames, about 23 ms, zoomed by 2).
WINDOW_COLUMNS = 20

#: Standard deviation (columns) of the smoothing of the probabilities: the seed smoothed
#: with sigma ~1 frame, and a column is 2 frames.
SMOOTHING_SIGMA_COLUMNS = 0.5

#: Columns on each side of a peak that must not exceed it: the seed's +-21 frames (12 ms)
#: are 10.5 columns.
NMS_RADIUS_COLUMNS = 10

#: Windows scored per call of the predictor. 256 windows are 2.7 MB of input, but the CNN's
#: first convolution alone holds 256 x 130 x 20 x 48 float32 (128 MB) of activations: with
#: 1024, a worker's peak memory passed 2 GB (benchmarks/detect_speed.py).
BATCH_WINDOWS = 256

#: Columns per block of :func:`detect_columns` (65,536 columns: about 76 s of audio).
BLOCK_COLUMNS = 65_536

#: Gaussian kernels are truncated at this many standard deviations (scipy's default).
_TRUNCATE = 4.0

Predictor = Callable[[np.ndarray], np.ndarray]
"""``predict(windows (b, rows, width, 1) float32) -> (b, K + 1)``: column 0 P(not call)."""

SpectrogramReader = Callable[[int, int], np.ndarray]
"""``read(start, stop)`` returns the spectrogram columns ``[start, stop)``, ``(stop - start, rows)``."""

SPECIES_COLUMNS = ("file_name", "predicted_time", "predicted_species", "predicted_prob")


# --------------------------------------------------------------------------------------------
# Windows and probabilities
# --------------------------------------------------------------------------------------------


def recording_windows(
    spectrogram: np.ndarray, columns: np.ndarray | None = None, width: int = WINDOW_COLUMNS
) -> np.ndarray:
    """The model windows starting at some columns of a spectrogram.

    Parameters
    ----------
    spectrogram : array, shape (n_columns, rows)
        A recording's model-ready spectrogram, time first (any float dtype).
    columns : int array, optional
        Columns at which the windows start, each in ``0 .. n_columns - width``. Default: every
        such column (this copies the whole recording ``width`` times: for a long recording
        ask for a batch at a time, as :func:`column_probabilities` does).
    width : int
        Columns per window.

    Returns
    -------
    numpy.ndarray
        float32, shape ``(len(columns), rows, width, 1)``: frequency, time, channel, so that
        ``windows[i, f, j, 0] == spectrogram[columns[i] + j, f]``.

    Raises
    ------
    ValueError
        When ``spectrogram`` is not 2-D, ``width`` is below 1, or a column starts no
        complete window.
    """
    spectrogram = np.asarray(spectrogram)
    if spectrogram.ndim != 2:
        raise ValueError(f"a spectrogram is (n_columns, rows), not of shape {spectrogram.shape}")
    width = int(width)
    if width < 1:
        raise ValueError(f"width={width} must be at least 1 column")
    n_columns, rows = spectrogram.shape
    n_windows = max(n_columns - width + 1, 0)
    if columns is None:
        columns = np.arange(n_windows)
    columns = np.asarray(columns)
    if columns.ndim != 1 or (columns.size and not np.issubdtype(columns.dtype, np.integer)):
        raise ValueError("columns must be a 1-D array of integer column indices")
    if columns.size and (columns.min() < 0 or columns.max() >= n_windows):
        raise ValueError(
            f"window columns must lie in 0..{n_windows - 1} (a {width}-column window must fit "
            f"in {n_columns} columns); got {int(columns.min())}..{int(columns.max())}"
        )
    windows = np.empty((len(columns), rows, width, 1), dtype=np.float32)
    if len(columns):
        # view[c, f, j] is spectrogram[c + j, f]: (frequency, time) without a copy.
        view = np.lib.stride_tricks.sliding_window_view(spectrogram, width, axis=0)
        windows[..., 0] = view[columns]
    return windows


def _not_call_rows(n_rows: int, n_outputs: int) -> np.ndarray:
    """Probabilities of columns that start no complete window: certainly no call."""
    probs = np.zeros((n_rows, n_outputs), dtype=np.float32)
    probs[:, 0] = 1.0
    return probs


def _predicted(predict: Predictor, windows: np.ndarray, n_outputs: int | None) -> np.ndarray:
    """``predict(windows)`` as float32, its shape checked."""
    probs = np.asarray(predict(windows), dtype=np.float32)
    if probs.ndim != 2 or probs.shape[0] != len(windows) or probs.shape[1] < 1:
        raise ValueError(
            f"predict returned shape {probs.shape} for {len(windows)} windows; expected "
            f"({len(windows)}, K + 1) with column 0 the probability of no call"
        )
    if n_outputs is not None and probs.shape[1] != n_outputs:
        raise ValueError(f"predict returned {probs.shape[1]} outputs per window, expected {n_outputs}")
    return probs


def _scored_columns(
    predict: Predictor,
    spectrogram: np.ndarray,
    first_column: int,
    stop_column: int,
    n_columns: int,
    width: int,
    batch_size: int,
    n_outputs: int | None,
    scan: "Scan | None" = None,
) -> np.ndarray:
    """Probabilities of the columns ``[first_column, stop_column)`` of a recording of
    ``n_columns`` columns, ``spectrogram`` holding its columns from ``first_column`` on (at
    least up to ``min(stop_column + width - 1, n_columns)``); every window when ``scan`` is
    None or dense, else coarse to fine (:class:`Scan`)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    last_window = n_columns - width  # the last column that starts a complete window
    window_stop = max(min(stop_column, last_window + 1), first_column)
    n_rows = stop_column - first_column
    starts = np.arange(first_column, window_stop)
    if scan is not None and scan.stride > 1:
        starts = starts[starts % scan.stride == 0]  # the coarse grid, in recording columns
    if len(starts) == 0:
        if n_outputs is None:
            # Nothing to score: one blank window tells how many outputs the predictor has.
            blank = np.zeros((1, spectrogram.shape[1], width, 1), dtype=np.float32)
            n_outputs = _predicted(predict, blank, None).shape[1]
        return _not_call_rows(n_rows, n_outputs)
    probs = None

    def score(columns: np.ndarray) -> None:
        nonlocal probs, n_outputs
        for start in range(0, len(columns), batch_size):
            local = columns[start : start + batch_size] - first_column
            batch = _predicted(predict, recording_windows(spectrogram, local, width), n_outputs)
            if probs is None:
                n_outputs = batch.shape[1]
                probs = _not_call_rows(n_rows, n_outputs)
            probs[local] = batch

    score(starts)
    if scan is not None and scan.stride > 1:
        score(scan.refined(starts, call_score(probs[starts - first_column]), first_column, window_stop))
    return probs


@dataclass(frozen=True)
class Scan:
    """Coarse-to-fine scoring of a recording's windows (the fast path).

    The windows starting at every ``stride``-th column of the recording are scored first;
    then every window within ``stride - 1`` columns of a coarse window whose call score
    reaches ``gamma``; the others are "not call" without being scored. A call moves the
    score over several consecutive windows, so a low ``gamma`` on the coarse grid finds
    where to look; ``stride=1`` scores every window (the dense reference).
    ``benchmarks/detect_speed.py`` measures what each setting costs in detection AP.
    """

    stride: int = 4
    gamma: float = 0.02

    def __post_init__(self):
        if int(self.stride) < 1:
            raise ValueError(f"stride={self.stride} must be at least 1")
        if not 0.0 <= float(self.gamma) <= 1.0:
            raise ValueError(f"gamma={self.gamma} must lie in [0, 1]")

    @property
    def reach(self) -> int:
        """Columns on each side of a column that its (fast) probability depends on."""
        return int(self.stride) - 1

    def refined(self, coarse: np.ndarray, coarse_score: np.ndarray, first: int, stop: int) -> np.ndarray:
        """The columns to score after the coarse grid: near the coarse windows that reach
        ``gamma``, within ``[first, stop)``, not on the grid."""
        hot = coarse[coarse_score >= self.gamma]
        if len(hot) == 0:
            return np.zeros(0, dtype=np.int64)
        near = (hot[:, None] + np.arange(-self.reach, self.reach + 1)[None, :]).ravel()
        near = np.unique(near[(near >= first) & (near < stop)])
        return near[near % self.stride != 0]


DENSE = Scan(stride=1, gamma=0.0)
"""Every window scored: the reference the fast path is measured against."""


def column_probabilities(
    predict: Predictor,
    spectrogram: np.ndarray,
    *,
    width: int = WINDOW_COLUMNS,
    batch_size: int = BATCH_WINDOWS,
    n_outputs: int | None = None,
    scan: Scan | None = None,
) -> np.ndarray:
    """The model's probabilities for the window starting at every column of a recording.

    Parameters
    ----------
    predict : callable
        ``predict(windows (b, rows, width, 1) float32) -> (b, K + 1)``, column 0 the
        probability of no call, column ``k`` that of class ``k``.
    spectrogram : array, shape (n_columns, rows)
        The recording's model-ready spectrogram.
    width : int
        Columns per window.
    batch_size : int
        Windows per call of ``predict``: the memory used is that of one batch, whatever the
        length of the recording.
    n_outputs : int, optional
        K + 1, checked against every batch. Default: what ``predict`` returns; when the
        recording holds no complete window, ``predict`` is then asked once about a blank
        window to learn it.
    scan : Scan, optional
        Coarse-to-fine scoring (the fast path); default: every window.

    Returns
    -------
    numpy.ndarray
        float32, shape ``(n_columns, K + 1)``: row ``c`` scores the window starting at column
        ``c`` (with ``scan``, the windows it skipped are "not call"). The last ``width - 1`` columns start no complete window: they are "not call"
        (1 in column 0, 0 elsewhere), and so is every column of a recording shorter than a
        window.
    """
    spectrogram = np.asarray(spectrogram)
    if spectrogram.ndim != 2:
        raise ValueError(f"a spectrogram is (n_columns, rows), not of shape {spectrogram.shape}")
    n_columns = spectrogram.shape[0]
    return _scored_columns(
        predict, spectrogram, 0, n_columns, n_columns, int(width), int(batch_size), n_outputs, scan
    )


def smoothing_reach(sigma_columns: float) -> int:
    """Columns on each side that :func:`smooth_probabilities` reaches (0: no smoothing)."""
    if not sigma_columns > 0:
        return 0
    return int(_TRUNCATE * float(sigma_columns) + 0.5)


def smooth_probabilities(probs: np.ndarray, sigma_columns: float = SMOOTHING_SIGMA_COLUMNS) -> np.ndarray:
    """Gaussian smoothing of every output along time.

    Parameters
    ----------
    probs : array, shape (n_columns, K + 1)
        Per-column probabilities (:func:`column_probabilities`).
    sigma_columns : float
        Standard deviation in columns; the seed's sigma of about one frame is 0.5 column.
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
        probs, float(sigma_columns), axis=0, mode="nearest", truncate=_TRUNCATE
    )


# --------------------------------------------------------------------------------------------
# Detections
# --------------------------------------------------------------------------------------------


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


def call_score(probs: np.ndarray) -> np.ndarray:
    """The probability of a call at every column, ``1 - P(not call)`` (float32, contiguous)."""
    probs = np.asarray(probs, dtype=np.float32)
    return np.ascontiguousarray(np.float32(1.0) - probs[:, 0])


def find_detections(
    probs: np.ndarray,
    times: np.ndarray,
    classes: Sequence[str],
    thresholds: Mapping[str, float] | None = None,
    *,
    radius_columns: int = NMS_RADIUS_COLUMNS,
) -> pd.DataFrame:
    """The detected call events of one recording: peaks of the call score.

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
        ``"detection"``: the smallest call score of an event (0.5 when missing); the class
        thresholds are not used here (see :func:`species_rows`).
    radius_columns : int
        Columns on each side of a peak that must not exceed it (10: the seed's +-21 frames).

    Returns
    -------
    pandas.DataFrame
        One row per event, in column order: ``time`` (``times[column]``), ``column`` (int64),
        ``score`` (the call score ``1 - P(not call)``, float32) and ``prob_<name>`` for every
        class (its probability at that column, float32).

    Notes
    -----
    The call score ``score = 1 - P(not call)`` peaks where no column within
    ``radius_columns`` on either side is greater (of equal columns, the first;
    :func:`pipeline.nms.peaks_1d`). A peak is an event when its score beats ``P(not call)``
    at that column (that is, ``score > 0.5``) and reaches the detection threshold. A peak
    that fails these tests still suppresses its neighbours, so that detecting at a low
    threshold and keeping the events whose score reaches a higher one gives the events
    detected at the higher one: :func:`pipeline.evaluate.tune_thresholds` can tune the
    detection threshold on one low-threshold run.

    Unlike the seed, which ran the NMS per class (:func:`find_class_peaks`), each call
    moment is one event, whatever its species: detection is class-agnostic and the event
    carries every class probability (multi-label), and one call is never reported at
    slightly different times for different classes.
    """
    probs, times, classes, radius_columns = _checked_inputs(probs, times, classes, radius_columns)
    detection_threshold, _ = threshold_values(thresholds, classes)
    score = call_score(probs)
    peaks = peaks_1d(score, radius_columns, np.float32(detection_threshold))
    # peaks_1d compares in float32; recheck in float64 so that a threshold between two
    # float32 values is still reached exactly as in pipeline.evaluate.
    peaks = peaks[
        (score[peaks] > probs[peaks, 0])
        & (score[peaks].astype(np.float64) >= detection_threshold)
    ]
    table = {
        "time": times[peaks],
        "column": peaks.astype(np.int64),
        "score": score[peaks],
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
    """The seed's detections: non-maximum suppression on each class separately.

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
    The seed's rule: a column is a peak of class ``k`` when no column within
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


def species_rows(
    events: pd.DataFrame,
    classes: Sequence[str],
    thresholds: Mapping[str, float] | None = None,
    *,
    file_name: str | None = None,
) -> pd.DataFrame:
    """The seed's output: one row per (event, species whose probability reaches its threshold).

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
    detection threshold give no row, as in :func:`pipeline.evaluate.end_to_end_scores`; events
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


# --------------------------------------------------------------------------------------------
# Whole recordings
# --------------------------------------------------------------------------------------------


def detect_recording(
    predict: Predictor,
    spectrogram: np.ndarray,
    times: np.ndarray,
    classes: Sequence[str],
    thresholds: Mapping[str, float] | None = None,
    *,
    width: int = WINDOW_COLUMNS,
    sigma_columns: float = SMOOTHING_SIGMA_COLUMNS,
    radius_columns: int = NMS_RADIUS_COLUMNS,
    batch_size: int = BATCH_WINDOWS,
    scan: Scan | None = None,
) -> pd.DataFrame:
    """The detected events of a recording held in memory.

    Parameters
    ----------
    predict : callable
        As :func:`column_probabilities`, with ``len(classes) + 1`` outputs.
    spectrogram : array, shape (n_columns, rows)
        The recording's model-ready spectrogram.
    times : array, shape (n_columns,)
        Real-time start (s) of each column.
    classes, thresholds, radius_columns
        As :func:`find_detections`.
    width, batch_size, scan
        As :func:`column_probabilities`.
    sigma_columns
        As :func:`smooth_probabilities`.

    Returns
    -------
    pandas.DataFrame
        The events of :func:`find_detections`. A recording shorter than one window has none.
    """
    probs = column_probabilities(
        predict, spectrogram, width=width, batch_size=batch_size, n_outputs=len(classes) + 1, scan=scan
    )
    return find_detections(
        smooth_probabilities(probs, sigma_columns),
        times,
        classes,
        thresholds,
        radius_columns=radius_columns,
    )


def minimum_halo_columns(radius_columns: int, sigma_columns: float, scan: Scan | None = None) -> int:
    """The fewest columns of context on each side of a block for exact block-wise detection.

    A peak's test reads the smoothed probabilities ``radius_columns`` away, each of which
    reads the raw ones :func:`smoothing_reach` further; the raw probability of a column
    depends on its window alone (dense), or on the coarse windows within ``scan.reach``
    columns (coarse to fine).
    """
    return int(radius_columns) + smoothing_reach(sigma_columns) + (scan.reach if scan else 0)


def default_halo_columns(
    radius_columns: int = NMS_RADIUS_COLUMNS,
    sigma_columns: float = SMOOTHING_SIGMA_COLUMNS,
    width: int = WINDOW_COLUMNS,
    scan: Scan | None = None,
) -> int:
    """A halo comfortably above :func:`minimum_halo_columns`: one window more."""
    reach = scan.reach if scan else 0
    return int(radius_columns) + math.ceil(_TRUNCATE * max(sigma_columns, 0.0)) + int(width) + reach


def detect_block(
    predict: Predictor,
    spectrogram: np.ndarray,
    first_column: int,
    n_columns: int,
    times: np.ndarray,
    owned: tuple[int, int],
    classes: Sequence[str],
    thresholds: Mapping[str, float] | None = None,
    *,
    width: int = WINDOW_COLUMNS,
    sigma_columns: float = SMOOTHING_SIGMA_COLUMNS,
    radius_columns: int = NMS_RADIUS_COLUMNS,
    batch_size: int = BATCH_WINDOWS,
    halo_columns: int | None = None,
    scan: Scan | None = None,
) -> pd.DataFrame:
    """The events at the columns ``owned = (start, stop)`` of a recording, from a block of it.

    Parameters
    ----------
    spectrogram : array, shape (m, rows)
        The recording's columns from ``first_column`` on, covering at least
        ``[start - halo, min(stop + halo + width - 1, n_columns))`` (clipped to the
        recording).
    first_column : int
        The recording column of ``spectrogram[0]``.
    n_columns : int
        Columns of the whole recording.
    times : array
        Real-time start (s) of each column of ``spectrogram``.
    owned : (int, int)
        The recording columns whose events are returned.
    halo_columns : int, optional
        Context on each side, at least :func:`minimum_halo_columns`; default
        :func:`default_halo_columns`.
    others
        As :func:`detect_recording`.

    Returns
    -------
    pandas.DataFrame
        The events of :func:`find_detections` whose ``column`` (a recording column) lies in
        ``owned``: exactly those that detecting on the whole recording finds there.
    """
    start, stop = int(owned[0]), int(owned[1])
    minimum = minimum_halo_columns(radius_columns, sigma_columns, scan)
    halo = default_halo_columns(radius_columns, sigma_columns, width, scan) if halo_columns is None else int(halo_columns)
    if halo < minimum:
        raise ValueError(
            f"halo_columns={halo} is too small for exact block borders: at least {minimum} "
            f"(radius {radius_columns} + smoothing reach {smoothing_reach(sigma_columns)}"
            f"{f' + scan reach {scan.reach}' if scan else ''})"
        )
    lo, hi = max(start - halo, 0), min(stop + halo, n_columns)
    need = min(hi + width - 1, n_columns)
    if first_column > lo or first_column + len(spectrogram) < need:
        raise ValueError(
            f"the block holds columns {first_column}..{first_column + len(spectrogram)}; "
            f"columns {lo}..{need} are needed for {start}..{stop}"
        )
    block = np.asarray(spectrogram[lo - first_column : need - first_column])
    probs = _scored_columns(predict, block, lo, hi, n_columns, width, int(batch_size), len(classes) + 1, scan)
    events = find_detections(
        smooth_probabilities(probs, sigma_columns),
        np.asarray(times[lo - first_column : hi - first_column], dtype=np.float64),
        classes,
        thresholds,
        radius_columns=radius_columns,
    )
    events["column"] += lo
    keep = ((events["column"] >= start) & (events["column"] < stop)).to_numpy()
    return events[keep].reset_index(drop=True)


def detect_columns(
    predict: Predictor,
    spectrogram_reader: SpectrogramReader,
    n_columns: int,
    times: np.ndarray,
    classes: Sequence[str],
    thresholds: Mapping[str, float] | None = None,
    *,
    width: int = WINDOW_COLUMNS,
    sigma_columns: float = SMOOTHING_SIGMA_COLUMNS,
    radius_columns: int = NMS_RADIUS_COLUMNS,
    batch_size: int = BATCH_WINDOWS,
    block_columns: int = BLOCK_COLUMNS,
    halo_columns: int | None = None,
    scan: Scan | None = None,
) -> pd.DataFrame:
    """The detected events of a recording of any length, read and scored block by block.

    Parameters
    ----------
    predict : callable
        As :func:`detect_recording`.
    spectrogram_reader : callable
        ``read(start, stop)`` -> the spectrogram columns ``[start, stop)`` of the recording,
        shape ``(stop - start, rows)`` (for instance a slice of the cube's zarr array).
    n_columns : int
        Columns of the recording.
    times : array-like, shape (n_columns,)
        Real-time start (s) of each column; only the slices of each block are read.
    classes, thresholds, width, sigma_columns, radius_columns, batch_size, scan
        As :func:`detect_recording`.
    block_columns : int
        Columns owned by each block: the memory used is that of a block and its halo.
    halo_columns : int, optional
        Columns of context on each side of a block, at least
        :func:`minimum_halo_columns`; default :func:`default_halo_columns`.

    Returns
    -------
    pandas.DataFrame
        Row for row the result of :func:`detect_recording` on the whole recording (for a
        predictor that scores each window independently of its batch).

    Notes
    -----
    Each block (:func:`detect_block`) scores the windows starting at its columns and at
    ``halo_columns`` columns on each side (reading ``width - 1`` more spectrogram columns
    after them, to complete the last windows), smooths and finds peaks there, and keeps the
    peaks at the columns it owns. The halo holds every column that a smoothed probability or
    a peak's NMS window within the block depends on, and the ends of the halo that are not
    ends of the recording are at least a halo away from the owned columns; so every peak is
    found exactly as on the whole recording, by the one block that owns its column, even on
    a block border. Unlike the seed (0.4 s chunks, no NMS across them), no call near a border
    is lost or reported twice.
    """
    n_columns, width = int(n_columns), int(width)
    block_columns = int(block_columns)
    if n_columns < 0:
        raise ValueError(f"n_columns={n_columns} must be >= 0")
    if block_columns < 1:
        raise ValueError(f"block_columns={block_columns} must be at least 1")
    if len(times) != n_columns:
        raise ValueError(f"{len(times)} times given for {n_columns} columns")
    halo = default_halo_columns(radius_columns, sigma_columns, width, scan) if halo_columns is None else int(halo_columns)
    classes = [str(name) for name in classes]
    blocks = []
    for start in range(0, n_columns, block_columns):
        stop = min(start + block_columns, n_columns)
        lo, read_stop = max(start - halo, 0), min(stop + halo + width - 1, n_columns)
        spectrogram = np.asarray(spectrogram_reader(lo, read_stop))
        if spectrogram.ndim != 2 or spectrogram.shape[0] != read_stop - lo:
            raise ValueError(
                f"spectrogram_reader({lo}, {read_stop}) returned shape {spectrogram.shape}; "
                f"expected ({read_stop - lo}, rows)"
            )
        blocks.append(
            detect_block(
                predict, spectrogram, lo, n_columns, np.asarray(times[lo:read_stop]), (start, stop), classes,
                thresholds, width=width, sigma_columns=sigma_columns, radius_columns=radius_columns,
                batch_size=batch_size, halo_columns=halo, scan=scan,
            )  # fmt: skip
        )
    if not blocks:
        return find_detections(
            np.zeros((0, len(classes) + 1), dtype=np.float32), np.zeros(0), classes, thresholds
        )
    return pd.concat(blocks, ignore_index=True)
