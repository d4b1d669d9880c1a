"""The detected events of one recording, whole or block by block with exact borders.

:func:`detect_recording` chains scoring (:mod:`pipeline.detection.scoring`), smoothing and
NMS (:mod:`pipeline.detection.events`) on a recording held in memory; :func:`detect_block`
does it for the columns a block owns, with a halo of context on each side, so that
:func:`detect_columns` gives the same rows for a recording of any length, read and scored in
blocks of columns, and a chunk of the cube finds exactly the calls at its columns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.config import WINDOW_COLUMNS
from pipeline.detection.calibration import ScoreCalibration
from pipeline.detection.events import (
    NMS_RADIUS_COLUMNS,
    SMOOTHING_SIGMA_COLUMNS,
    SMOOTHING_TRUNCATE,
    find_detections,
    smooth_probabilities,
    smoothing_reach,
)
from pipeline.detection.scoring import BATCH_WINDOWS, Predictor, Scan, column_probabilities, scored_columns

#: Columns per block of :func:`detect_columns` (65,536 columns: about 76 s of audio).
BLOCK_COLUMNS = 65_536


SpectrogramReader = Callable[[int, int], np.ndarray]
"""``read(start, stop)`` returns the spectrogram columns ``[start, stop)``, ``(stop - start, rows)``."""


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
    calibration: ScoreCalibration | None = None,
) -> pd.DataFrame:
    """The detected events of a recording held in memory.

    Parameters
    ----------
    predict : callable
        As :func:`column_probabilities`, with ``len(classes) + 1`` outputs; or a scorer of
        blocks of columns (:class:`pipeline.detection.scorers.WindowScorer`: its
        ``score_columns`` is used instead, and its ``extra_reach`` widens the halos).
    spectrogram : array, shape (n_columns, rows)
        The recording's model-ready spectrogram.
    times : array, shape (n_columns,)
        Real-time start (s) of each column.
    classes, thresholds, radius_columns, calibration
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
    if hasattr(predict, "score_columns"):
        n = len(spectrogram)
        probs = predict.score_columns(np.asarray(spectrogram, dtype=np.float32), 0, n, n, scan)
    else:
        probs = column_probabilities(
            predict, spectrogram, width=width, batch_size=batch_size, n_outputs=len(classes) + 1, scan=scan
        )
    return find_detections(
        smooth_probabilities(probs, sigma_columns),
        times,
        classes,
        thresholds,
        radius_columns=radius_columns,
        calibration=calibration,
    )


def minimum_halo_columns(radius_columns: int, sigma_columns: float, scan: Scan | None = None, extra: int = 0) -> int:
    """The fewest columns of context on each side of a block for exact block-wise detection.

    A peak's test reads the smoothed probabilities ``radius_columns`` away, each of which
    reads the raw ones :func:`smoothing_reach` further; the raw probability of a column
    depends on its window alone (dense), or on the coarse windows within ``scan.reach``
    columns (coarse to fine), and on the scorer's ``extra`` columns beyond (a hybrid's boosters
    near the head's peaks: :attr:`pipeline.detection.scorers.WindowScorer.extra_reach`).
    """
    return int(radius_columns) + smoothing_reach(sigma_columns) + (scan.reach if scan else 0) + int(extra)


def default_halo_columns(
    radius_columns: int = NMS_RADIUS_COLUMNS,
    sigma_columns: float = SMOOTHING_SIGMA_COLUMNS,
    width: int = WINDOW_COLUMNS,
    scan: Scan | None = None,
    extra: int = 0,
) -> int:
    """A halo comfortably above :func:`minimum_halo_columns`: one window more."""
    reach = scan.reach if scan else 0
    return int(radius_columns) + math.ceil(SMOOTHING_TRUNCATE * max(sigma_columns, 0.0)) + int(width) + reach + int(extra)


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
    calibration: ScoreCalibration | None = None,
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
    extra = int(getattr(predict, "extra_reach", 0))
    minimum = minimum_halo_columns(radius_columns, sigma_columns, scan, extra)
    halo = default_halo_columns(radius_columns, sigma_columns, width, scan, extra) if halo_columns is None else int(halo_columns)
    if halo < minimum:
        raise ValueError(
            f"halo_columns={halo} is too small for exact block borders: at least {minimum} "
            f"(radius {radius_columns} + smoothing reach {smoothing_reach(sigma_columns)}"
            f"{f' + scan reach {scan.reach}' if scan else ''}{f' + boosters reach {extra}' if extra else ''})"
        )
    lo, hi = max(start - halo, 0), min(stop + halo, n_columns)
    need = min(hi + width - 1, n_columns)
    if first_column > lo or first_column + len(spectrogram) < need:
        raise ValueError(
            f"the block holds columns {first_column}..{first_column + len(spectrogram)}; "
            f"columns {lo}..{need} are needed for {start}..{stop}"
        )
    block = np.asarray(spectrogram[lo - first_column : need - first_column])
    if hasattr(predict, "score_columns"):
        probs = predict.score_columns(np.asarray(block, dtype=np.float32), lo, hi, n_columns, scan)
    else:
        probs = scored_columns(predict, block, lo, hi, n_columns, width, int(batch_size), len(classes) + 1, scan)
    events = find_detections(
        smooth_probabilities(probs, sigma_columns),
        np.asarray(times[lo - first_column : hi - first_column], dtype=np.float64),
        classes,
        thresholds,
        radius_columns=radius_columns,
        calibration=calibration,
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
    calibration: ScoreCalibration | None = None,
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
    classes, thresholds, width, sigma_columns, radius_columns, batch_size, scan, calibration
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
    a block border. Unlike the reference system (0.4 s chunks, no NMS across them), no call near a border
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
    extra = int(getattr(predict, "extra_reach", 0))
    halo = default_halo_columns(radius_columns, sigma_columns, width, scan, extra) if halo_columns is None else int(halo_columns)
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
                batch_size=batch_size, halo_columns=halo, scan=scan, calibration=calibration,
            )  # fmt: skip
        )
    if not blocks:
        return find_detections(
            np.zeros((0, len(classes) + 1), dtype=np.float32), np.zeros(0), classes, thresholds,
            calibration=calibration,
        )
    return pd.concat(blocks, ignore_index=True)
