"""From a recording's spectrogram to the model's probability of every window.

A model sees *windows*: 20 consecutive columns of the model-ready spectrogram (one column is
two STFT frames, about 1.16 ms of real time), given to it as an array ``(130, 20, 1)``
(frequency, time, channel). Whatever the model (one network with K + 1 sigmoid outputs, or a
detector followed by a classifier), detection sees it as a *predictor*::

    predict(windows: float32 (b, 130, 20, 1)) -> (b, K + 1)

whose column 0 is the probability that the window holds no call ("not call") and column
``k`` the probability of class ``k`` (1..K).

- :func:`recording_windows`: the windows starting at some columns (a strided view of the
  spectrogram; only the batch asked for is copied);
- :func:`column_probabilities`: the window starting at every column scored, in batches: an
  ``(n_columns, K + 1)`` array; the last ``width - 1`` columns, which start no complete
  window, are "not call"; with a :class:`Scan`, coarse to fine (the fast path);
- :func:`call_score`: ``1 - P(not call)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.config import WINDOW_COLUMNS

#: Windows scored per call of the predictor. 256 windows are 2.7 MB of input, but the CNN's
#: first convolution alone holds 256 x 130 x 20 x 48 float32 (128 MB) of activations: with
#: 1024, a worker's peak memory passed 2 GB (benchmarks/detect_speed.py).
BATCH_WINDOWS = 256


Predictor = Callable[[np.ndarray], np.ndarray]
"""``predict(windows (b, rows, width, 1) float32) -> (b, K + 1)``: column 0 P(not call)."""


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


def scored_columns(
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
    return scored_columns(
        predict, spectrogram, 0, n_columns, n_columns, int(width), int(batch_size), n_outputs, scan
    )


def call_score(probs: np.ndarray) -> np.ndarray:
    """The probability of a call at every column, ``1 - P(not call)`` (float32, contiguous)."""
    probs = np.asarray(probs, dtype=np.float32)
    return np.ascontiguousarray(np.float32(1.0) - probs[:, 0])
