"""Detection from per-column probabilities: windows, dense scores, smoothing, NMS, blocks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from pipeline.detection.events import find_class_peaks, find_detections, smooth_probabilities
from pipeline.detection.recording import detect_columns, detect_recording, minimum_halo_columns
from pipeline.detection.schema import species_rows
from pipeline.detection.scoring import column_probabilities, recording_windows

CLASSES = ("Myosp", "Pip50")
ROWS = 130
WIDTH = 20


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def band_energy_predict(windows: np.ndarray) -> np.ndarray:
    """A toy model: a call is energy in rows 20-39, Myosp in rows 20-29, Pip50 in 30-39."""
    assert windows.dtype == np.float32 and windows.shape[1:] == (ROWS, WIDTH, 1)
    call = windows[:, 20:40, :, 0].mean(axis=(1, 2))
    low = windows[:, 20:30, :, 0].mean(axis=(1, 2))
    high = windows[:, 30:40, :, 0].mean(axis=(1, 2))
    return np.column_stack(
        [1 - _sigmoid(4 * (call - 1.0)), _sigmoid(4 * (low - 1.0)), _sigmoid(4 * (high - 1.0))]
    ).astype(np.float32)


def _probs_from_score(score: np.ndarray, class_probs: np.ndarray | None = None) -> np.ndarray:
    """Probabilities (n, 3) whose call score is ``score``."""
    score = np.asarray(score, dtype=np.float32)
    probs = np.zeros((len(score), 3), dtype=np.float32)
    probs[:, 0] = 1 - score
    if class_probs is not None:
        probs[:, 1:] = class_probs
    return probs


def _bump(n: int, centre: int, height: float, half_width: int = 4) -> np.ndarray:
    """A triangle of ``height`` at ``centre``, zero beyond ``half_width`` columns."""
    x = np.arange(n)
    return np.clip(height * (1 - np.abs(x - centre) / (half_width + 1)), 0, None)


def _times(n: int) -> np.ndarray:
    return np.arange(n) * 0.00116


# ------------------------------------------------------------------------------------------
# Windows and dense probabilities
# ------------------------------------------------------------------------------------------


def test_windows_are_frequency_by_time_slices_of_the_spectrogram():
    rng = np.random.default_rng(0)
    spectrogram = rng.random((37, ROWS)).astype(np.float16)
    columns = np.array([0, 5, 17])
    windows = recording_windows(spectrogram, columns)
    assert windows.shape == (3, ROWS, WIDTH, 1) and windows.dtype == np.float32
    for i, c in enumerate(columns):
        for j in range(WIDTH):
            np.testing.assert_array_equal(windows[i, :, j, 0], spectrogram[c + j].astype(np.float32))
    assert recording_windows(spectrogram).shape == (37 - WIDTH + 1, ROWS, WIDTH, 1)
    with pytest.raises(ValueError, match="must lie in"):
        recording_windows(spectrogram, np.array([18]))
    with pytest.raises(ValueError, match="must lie in"):
        recording_windows(spectrogram, np.array([-1]))
    assert recording_windows(spectrogram[:5]).shape == (0, ROWS, WIDTH, 1)


def test_dense_probabilities_score_every_window_in_batches_and_pad_the_end():
    rng = np.random.default_rng(1)
    spectrogram = rng.random((50, ROWS)).astype(np.float32)
    batches = []

    def predict(windows):
        batches.append(len(windows))
        return band_energy_predict(windows)

    probs = column_probabilities(predict, spectrogram, batch_size=7)
    assert probs.shape == (50, 3) and probs.dtype == np.float32
    assert sum(batches) == 31 and max(batches) <= 7
    expected = band_energy_predict(recording_windows(spectrogram))
    np.testing.assert_array_equal(probs[:31], expected)
    np.testing.assert_array_equal(probs[31:], np.tile([1, 0, 0], (19, 1)))
    np.testing.assert_array_equal(column_probabilities(band_energy_predict, spectrogram), probs)


def test_recording_shorter_than_a_window_is_all_not_call():
    spectrogram = np.ones((WIDTH - 1, ROWS), dtype=np.float32) * 5
    probs = column_probabilities(band_energy_predict, spectrogram)
    np.testing.assert_array_equal(probs, np.tile([1, 0, 0], (WIDTH - 1, 1)))
    for n in (0, 1, WIDTH - 1):
        events = detect_recording(band_energy_predict, spectrogram[:n], _times(n), CLASSES)
        assert len(events) == 0
        assert list(events.columns) == ["time", "column", "score", "prob_Myosp", "prob_Pip50"]
    assert len(detect_columns(band_energy_predict, lambda a, b: spectrogram[a:b], 0, [], CLASSES)) == 0


def test_predictor_of_the_wrong_shape_is_refused():
    spectrogram = np.zeros((30, ROWS), dtype=np.float32)
    with pytest.raises(ValueError, match="3 outputs per window, expected 4"):
        column_probabilities(band_energy_predict, spectrogram, n_outputs=3 + 1)
    with pytest.raises(ValueError, match="predict returned shape"):
        column_probabilities(lambda w: np.zeros(len(w)), spectrogram)


def test_smoothing_is_a_gaussian_along_time_per_output():
    probs = np.zeros((21, 3), dtype=np.float32)
    probs[10, 1] = 1
    smoothed = smooth_probabilities(probs, 0.5)
    assert smoothed.dtype == np.float32
    np.testing.assert_allclose(smoothed[:, 1].sum(), 1, rtol=1e-6)
    np.testing.assert_array_equal(smoothed[:, 1], smoothed[::-1, 1])  # symmetric
    assert np.count_nonzero(smoothed[:, 1]) == 5  # 4 sigma = 2 columns each side
    assert not smoothed[:, [0, 2]].any()
    np.testing.assert_array_equal(
        smoothed, ndimage.gaussian_filter1d(probs, 0.5, axis=0, mode="nearest")
    )
    np.testing.assert_array_equal(smooth_probabilities(probs, 0), probs)


# ------------------------------------------------------------------------------------------
# Events
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gap, expected", [(9, [20]), (12, [20, 32])])
def test_nms_keeps_one_event_within_its_radius(gap, expected):
    n = 60
    score = np.maximum(_bump(n, 20, 0.9), _bump(n, 20 + gap, 0.8))
    events = find_detections(_probs_from_score(score), _times(n), CLASSES, radius_columns=10)
    assert events["column"].tolist() == expected
    np.testing.assert_allclose(events["time"], _times(n)[expected])
    np.testing.assert_allclose(events["score"], [0.9, 0.8][: len(expected)], rtol=1e-6)


def test_every_peak_is_an_event_and_the_threshold_keeps_those_reaching_it():
    n = 120
    score = _bump(n, 20, 0.9) + _bump(n, 50, 0.45) + _bump(n, 80, 0.7)
    probs = _probs_from_score(score)
    times = _times(n)
    # 0.45 does not beat P(not call) = 0.55 there, and is still an event (the reference
    # system's rule dropped it: no threshold could reach it).
    assert find_detections(probs, times, CLASSES, {"detection": 0.3})["column"].tolist() == [20, 50, 80]
    assert find_detections(probs, times, CLASSES, {"detection": 0.44})["column"].tolist() == [20, 50, 80]
    assert find_detections(probs, times, CLASSES, {"detection": 0.8})["column"].tolist() == [20]
    assert find_detections(probs, times, CLASSES, {"detection": 0.95}).empty
    # Threshold 0: the zero plateaus between the bumps hold no peak (a column with an equal
    # one before it within the radius is not one), the first column of the recording does.
    assert find_detections(probs, times, CLASSES, {"detection": 0})["column"].tolist() == [0, 20, 50, 80]


def test_a_peak_of_0_2_is_found_at_threshold_0_1_and_not_at_0_3():
    n = 200
    spectrogram = np.zeros((n, ROWS), dtype=np.float32)
    spectrogram[:, 0] = 0.05 * np.abs(np.sin(np.arange(n)))  # low noise: peaks below 0.05
    spectrogram[93:98, 0] = 0.2  # a call: its smoothed score stays 0.2 at the middle
    spectrogram[93:98, 1] = 0.6  # its class probabilities
    low = detect_recording(first_column_predict, spectrogram, _times(n), CLASSES, {"detection": 0.1})
    assert len(low) == 1 and 93 <= low.loc[0, "column"] < 98
    np.testing.assert_allclose(low["score"], [0.2], rtol=1e-6)
    np.testing.assert_allclose(low["prob_Myosp"], [0.6], rtol=1e-6)
    assert detect_recording(first_column_predict, spectrogram, _times(n), CLASSES, {"detection": 0.3}).empty
    everything = detect_recording(first_column_predict, spectrogram, _times(n), CLASSES, {"detection": 0})
    assert low.loc[0, "column"] in everything["column"].tolist() and len(everything) > 5
    assert everything["score"].max() == low["score"].max()


def test_a_higher_threshold_keeps_the_events_whose_score_reaches_it():
    rng = np.random.default_rng(2)
    n = 3000
    score = ndimage.gaussian_filter1d(rng.random(n), 3).astype(np.float32)
    score = (score - score.min()) / (score.max() - score.min())
    probs, times = _probs_from_score(score), _times(n)
    low = find_detections(probs, times, CLASSES, {"detection": 0.5})
    for threshold in (0.6, 0.75, 0.9):
        high = find_detections(probs, times, CLASSES, {"detection": threshold})
        assert len(high) > 0
        pd.testing.assert_frame_equal(
            high, low[low["score"] >= threshold].reset_index(drop=True)
        )


def test_events_carry_the_class_probabilities_of_their_column():
    n = 60
    score = _bump(n, 30, 0.9)
    class_probs = np.column_stack([np.linspace(0, 1, n), np.linspace(1, 0, n)])
    probs = _probs_from_score(score, class_probs)
    events = find_detections(probs, _times(n), CLASSES)
    assert events["column"].tolist() == [30]
    assert events.loc[0, "prob_Myosp"] == probs[30, 1]
    assert events.loc[0, "prob_Pip50"] == probs[30, 2]
    assert events["column"].dtype == np.int64


def test_species_rows_are_multi_label_and_skip_events_without_a_species():
    events = pd.DataFrame(
        {
            "recording": ["a", "a", "b"],
            "time": [0.1, 0.2, 0.3],
            "score": np.float32([0.9, 0.8, 0.7]),
            "prob_Myosp": np.float32([0.9, 0.2, 0.1]),
            "prob_Pip50": np.float32([0.7, 0.3, 0.65]),
        }
    )
    thresholds = {"detection": 0.5, "Myosp": 0.5, "Pip50": 0.6}
    rows = species_rows(events, CLASSES, thresholds)
    assert list(rows.columns) == ["file_name", "predicted_time", "predicted_species", "predicted_prob"]
    assert rows["file_name"].tolist() == ["a", "a", "b"]
    assert rows["predicted_time"].tolist() == [0.1, 0.1, 0.3]
    assert rows["predicted_species"].tolist() == ["Myosp", "Pip50", "Pip50"]
    np.testing.assert_array_equal(rows["predicted_prob"], np.float32([0.9, 0.7, 0.65]))
    # Without a recording column the name comes from file_name; a score below the detection
    # threshold reports nothing.
    unnamed = species_rows(events.drop(columns="recording"), CLASSES, {**thresholds, "detection": 0.75},
                           file_name="x.wav")
    assert unnamed["file_name"].tolist() == ["x.wav", "x.wav"]
    assert unnamed["predicted_time"].tolist() == [0.1, 0.1]
    empty = species_rows(events.iloc[:0], CLASSES, thresholds)
    assert empty.empty and list(empty.columns) == list(rows.columns)
    with pytest.raises(ValueError, match="unknown"):
        species_rows(events, CLASSES, {"Nyctalus": 0.5})


def test_class_peaks_follow_the_seeds_rule():
    n = 60
    not_call = np.full(n, 0.3, dtype=np.float32)
    not_call[28:33] = 0.7
    myosp = _bump(n, 10, 0.8) + _bump(n, 30, 0.6) + _bump(n, 50, 0.45, half_width=2)
    pip50 = _bump(n, 14, 0.7) + _bump(n, 30, 0.65, half_width=2) + _bump(n, 42, 0.55, half_width=2)
    probs = np.column_stack([not_call, myosp, pip50]).astype(np.float32)
    thresholds = {"Myosp": 0.4, "Pip50": 0.6}
    peaks = find_class_peaks(probs, _times(n), CLASSES, thresholds, radius_columns=3)
    # Myosp at 30 and Pip50 at 30 do not exceed P(not call) = 0.7; Pip50 at 42 is below its
    # threshold; Myosp at 50 is below 0.5 yet above P(not call) and its threshold: kept.
    assert list(zip(peaks["column"], peaks["species"])) == [(10, "Myosp"), (14, "Pip50"), (50, "Myosp")]
    np.testing.assert_allclose(peaks["prob"], [0.8, 0.7, 0.45], rtol=1e-6)
    np.testing.assert_allclose(peaks["score"], [0.7, 0.7, 0.7], rtol=1e-6)
    assert peaks.loc[0, "prob_Pip50"] == probs[10, 2]
    # Each class has its own NMS: even with a radius covering both, the Myosp and Pip50
    # peaks of one call are two reports, 4 columns apart (find_detections gives one event).
    wide = find_class_peaks(probs, _times(n), CLASSES, thresholds, radius_columns=10)
    assert list(zip(wide["column"], wide["species"]))[:2] == [(10, "Myosp"), (14, "Pip50")]


# ------------------------------------------------------------------------------------------
# Whole recordings and blocks
# ------------------------------------------------------------------------------------------


def _recording_with_calls(n: int, starts, seed: int = 3, amplitudes=None) -> np.ndarray:
    """Low noise everywhere and, from each start, a 20-column call in rows 20-29 or 30-39
    (both for every third call): the window starting there scores highest."""
    rng = np.random.default_rng(seed)
    spectrogram = (0.2 * rng.random((n, ROWS))).astype(np.float32)
    amplitudes = [2.0] * len(starts) if amplitudes is None else amplitudes
    for i, (start, amplitude) in enumerate(zip(starts, amplitudes)):
        rows = [slice(20, 40), slice(20, 30), slice(30, 40)][i % 3]
        spectrogram[start : start + WIDTH, rows] += amplitude
    return spectrogram


def test_detect_recording_finds_the_planted_calls():
    starts = [0, 60, 150, 260, 400]
    spectrogram = _recording_with_calls(460, starts)
    events = detect_recording(band_energy_predict, spectrogram, _times(460), CLASSES)
    assert events["column"].tolist() == starts
    assert (events["score"] > 0.5).all()
    rows = species_rows(events, CLASSES, {"detection": 0.5})
    assert rows.groupby("predicted_time").size().tolist() == [2, 1, 1, 2, 1]


@pytest.mark.parametrize(
    "block_columns, halo",
    [(97, None), (97, "minimum"), (13, "minimum"), (1000, None), (5000, None)],
)
def test_blocks_give_the_whole_recordings_events(block_columns, halo):
    n = 4321
    rng = np.random.default_rng(4)
    # Calls starting on block borders (the best window is there) or next to them ...
    borders = [97 * m + d for m, d in zip(range(2, 44, 3), [0, -1, 1, 0, 0, -1, 1] * 3)]
    random_starts = rng.choice(np.arange(0, n - WIDTH, 40), 30, replace=False)
    starts = sorted(set(borders) | {0, n - WIDTH - 1} | {int(s) for s in random_starts})
    starts = [s for i, s in enumerate(starts) if i == 0 or s - starts[i - 1] >= 25]
    amplitudes = list(rng.uniform(1.5, 3.0, len(starts)))
    # ... and pairs of calls 5-9 columns apart straddling a border, so that which of the two
    # peaks survives the NMS is decided across the border.
    for m in range(3, 44, 3):
        first = 97 * m - int(rng.integers(2, 7))
        if all(abs(first - s) > 40 for s in starts):
            starts += [first, first + int(rng.integers(5, 10))]
            amplitudes += list(rng.uniform(1.5, 3.0, 2))
    spectrogram = _recording_with_calls(n, starts, amplitudes=amplitudes)
    times = _times(n)
    whole = detect_recording(band_energy_predict, spectrogram, times, CLASSES, {"detection": 0.3})
    assert len(whole) >= 30
    on_borders = set(whole["column"]) & {97 * m for m in range(1, 45)}
    assert len(on_borders) >= 3

    reads = []

    def read(start, stop):
        reads.append((start, stop))
        return spectrogram[start:stop]

    halo_columns = minimum_halo_columns(10, 0.5) if halo == "minimum" else None
    blocks = detect_columns(
        band_energy_predict, read, n, times, CLASSES, {"detection": 0.3},
        block_columns=block_columns, halo_columns=halo_columns, batch_size=64,
    )
    pd.testing.assert_frame_equal(blocks, whole)
    widest = block_columns + 2 * (halo_columns or 10 + 2 + WIDTH) + WIDTH - 1
    assert max(stop - start for start, stop in reads) <= widest
    assert len(reads) == -(-n // block_columns)


def first_column_predict(windows: np.ndarray) -> np.ndarray:
    """A toy model whose call score is row 0 of the window's first column (rows 1 and 2: the
    class probabilities), so that a test can set every column's score at will."""
    first = windows[:, :3, 0, 0]
    return np.column_stack([1 - first[:, 0], first[:, 1], first[:, 2]]).astype(np.float32)


@pytest.mark.parametrize("block_columns", [1, 13, 97, 500])
def test_blocks_give_the_whole_recordings_events_on_random_scores(block_columns):
    # Peaks everywhere, many of them decided by NMS across a block border: any halo short
    # of the minimum changes some of them.
    n = 3000
    rng = np.random.default_rng(5)
    spectrogram = np.zeros((n, ROWS), dtype=np.float32)
    spectrogram[:, :3] = rng.random((n, 3))
    times = _times(n)
    whole = detect_recording(first_column_predict, spectrogram, times, CLASSES, {"detection": 0})
    assert len(whole) > 100
    blocks = detect_columns(
        first_column_predict, lambda a, b: spectrogram[a:b], n, times, CLASSES, {"detection": 0},
        block_columns=block_columns, halo_columns=minimum_halo_columns(10, 0.5),
    )
    pd.testing.assert_frame_equal(blocks, whole)


def test_blocks_give_the_whole_recordings_calibrated_events_at_a_low_threshold():
    from pipeline.detection.calibration import ScoreCalibration

    calibration = ScoreCalibration((0.0, 0.3, 0.8, 1.0), (0.0, 0.05, 0.6, 0.97), "isotonic")
    n = 3000
    rng = np.random.default_rng(6)
    spectrogram = np.zeros((n, ROWS), dtype=np.float32)
    spectrogram[:, :3] = rng.random((n, 3))
    times = _times(n)
    whole = detect_recording(first_column_predict, spectrogram, times, CLASSES, {"detection": 0.02},
                             calibration=calibration)  # fmt: skip
    assert len(whole) > 100 and whole["score"].min() < 0.5
    for block_columns in (13, 97):
        blocks = detect_columns(
            first_column_predict, lambda a, b: spectrogram[a:b], n, times, CLASSES, {"detection": 0.02},
            block_columns=block_columns, halo_columns=minimum_halo_columns(10, 0.5), calibration=calibration,
        )  # fmt: skip
        pd.testing.assert_frame_equal(blocks, whole)


def test_halo_too_small_is_refused():
    spectrogram = np.zeros((100, ROWS), dtype=np.float32)
    with pytest.raises(ValueError, match="halo_columns"):
        detect_columns(
            band_energy_predict, lambda a, b: spectrogram[a:b], 100, _times(100), CLASSES,
            block_columns=30, halo_columns=minimum_halo_columns(10, 0.5) - 1,
        )


def test_detection_only_models_have_no_class():
    n = 80
    spectrogram = np.zeros((n, ROWS), dtype=np.float32)
    spectrogram[:, 0] = _bump(n, 30, 0.9)

    def predict(windows):
        return (1 - windows[:, 0, 0, 0])[:, None]

    events = detect_recording(predict, spectrogram, _times(n), [])
    assert events["column"].tolist() == [30] and list(events.columns) == ["time", "column", "score"]
    assert species_rows(events, [], {"detection": 0.5}).empty
    assert find_class_peaks(column_probabilities(predict, spectrogram), _times(n), []).empty
