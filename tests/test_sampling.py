"""Training samples: events, positive and negative windows, and their place in a cube."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

from pipeline.annotations.matching import match_recordings
from pipeline.config import IngestSettings, Settings, SpectrogramSettings
from pipeline.ingestion import ingest
from pipeline.io.annotations import RecordingCalls, read_reference_npz
from pipeline.io.cube import open_cube
from pipeline.sampling import (
    Samples,
    SamplingSettings,
    build_samples,
    call_targets,
    column_of,
    cube_column_steps,
    negative_windows,
    positive_windows,
    recording_samples,
)
from pipeline.simulation import simulate_archive
from pipeline.windows import read_windows

STEP = 0.001161  # about the column step of every sample rate (1.161 ms)
K = 7
SETTINGS = SamplingSettings()


@pytest.fixture(scope="module")
def annotated_cube(tmp_path_factory, client):
    """A 30-second simulated archive, its cube (small chunks) and its annotations."""
    tmp = tmp_path_factory.mktemp("sampling")
    archive = simulate_archive(tmp / "audio", minutes=0.5, seed=2)
    path = tmp / "night.zarr"
    ingest(archive.root, path, settings=Settings(ingest=IngestSettings(chunk_columns=256)), client=client,
           progress=False)
    dataset = read_reference_npz(archive.annotations_npz)
    return archive, path, open_cube(path), dataset.train + dataset.test


# --- events and positives ----------------------------------------------------------------


def test_call_targets_merge_simultaneous_calls_into_one_multi_hot_event():
    positions, multi_hot = call_targets([0.5, 0.2, 0.5, 0.5], [2, 1, 5, 2], K)
    np.testing.assert_array_equal(positions, [0.2, 0.5])
    assert multi_hot.dtype == np.float32 and multi_hot.shape == (2, K)
    np.testing.assert_array_equal(multi_hot[0], [1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(multi_hot[1], [0, 1, 0, 0, 1, 0, 0])


def test_call_targets_of_detection_only_data_are_events_without_classes():
    positions, multi_hot = call_targets([0.3, 0.1, 0.3], None, K)
    np.testing.assert_array_equal(positions, [0.1, 0.3])
    np.testing.assert_array_equal(multi_hot, np.zeros((2, K)))


def test_call_targets_refuse_a_class_out_of_range():
    with pytest.raises(ValueError, match="outside 1..7"):
        call_targets([0.1], [8], K)


def test_column_of_maps_a_column_start_to_that_column():
    k = np.arange(5000)
    np.testing.assert_array_equal(column_of(k * STEP, STEP), k)
    assert column_of(0.1, STEP) == 86  # 0.1 / 0.001161 = 86.13


def test_positive_windows_three_per_event_with_hand_computed_columns():
    starts, targets = positive_windows([0.1, 0.1], [4, 6], K, STEP, n_columns=1000)
    # (0.1 - 0.0015) / step = 84.84, 0.1 / step = 86.13, (0.1 + 0.0015) / step = 87.42
    np.testing.assert_array_equal(starts, [84, 86, 87])
    assert targets.dtype == np.float32 and targets.shape == (3, K + 1)
    np.testing.assert_array_equal(targets, np.tile([0, 0, 0, 0, 1, 0, 1, 0], (3, 1)))


def test_positive_windows_near_the_edges_are_dropped():
    # at the start: -0.001 / step = -0.86 -> -1 (dropped), 0.0005 / step = 0.43, 0.002 / step = 1.72
    starts, _ = positive_windows([0.0005], [1], K, STEP, n_columns=100)
    np.testing.assert_array_equal(starts, [0, 1])
    # at the end: the last window starts at 100 - 20 = 80; 80 +- 1.29 -> 78, 80, 81 (dropped)
    starts, _ = positive_windows([80 * STEP], [1], K, STEP, n_columns=100)
    np.testing.assert_array_equal(starts, [78, 80])
    # a recording shorter than a window has none
    assert len(positive_windows([0.005], [1], K, STEP, n_columns=19)[0]) == 0


def test_positive_windows_of_detection_only_data_say_call_without_a_class():
    starts, targets = positive_windows([0.05, 0.2], None, K, STEP, n_columns=1000)
    assert len(starts) == 6
    np.testing.assert_array_equal(targets, np.zeros((6, K + 1)))


# --- negatives -------------------------------------------------------------------------------


class CountingGenerator:
    """A generator that counts the candidate starts drawn from it."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.drawn = 0

    def integers(self, *args, size, **kwargs):
        self.drawn += size
        return self.rng.integers(*args, size=size, **kwargs)


@pytest.mark.parametrize("seed", range(8))
def test_negatives_are_never_near_any_call(seed):
    rng = np.random.default_rng(seed)
    duration = rng.uniform(0.3, 3.0)
    n_columns = int(duration / STEP)
    positions = rng.uniform(0, duration, size=rng.integers(1, 150))
    positions = np.concatenate([positions, positions[: len(positions) // 4]])  # simultaneous calls
    counter = CountingGenerator(seed)
    wanted = 3 * len(positions)
    starts = negative_windows(positions, STEP, n_columns, wanted, counter, SETTINGS)
    assert starts.dtype == np.int64 and len(starts) <= wanted
    assert np.all((starts >= 0) & (starts <= n_columns - SETTINGS.window_columns))
    distance = np.abs(starts[:, None] * STEP - positions[None, :])
    assert np.all(distance >= SETTINGS.exclusion_s(STEP))
    assert counter.drawn <= SETTINGS.max_attempts * wanted


def test_exclusion_is_half_a_window_plus_the_largest_shift():
    assert SETTINGS.exclusion_s(STEP) == pytest.approx(10 * STEP + 0.0015)


def test_negatives_of_a_recording_annotated_everywhere_are_none_and_quick():
    positions = np.arange(0, 120.0, 0.005)  # a call every 5 ms for 2 minutes
    counter = CountingGenerator(0)
    began = time.perf_counter()
    starts = negative_windows(positions, STEP, int(120 / STEP), 3 * len(positions), counter, SETTINGS)
    assert len(starts) == 0
    assert counter.drawn == SETTINGS.max_attempts * 3 * len(positions)
    assert time.perf_counter() - began < 10


def test_negatives_of_a_crowded_recording_are_fewer_than_wanted_but_valid():
    positions = np.concatenate([np.arange(0, 5.0, 0.005), np.arange(5.2, 10.0, 0.005)])  # one 200 ms gap
    starts = negative_windows(positions, STEP, int(10 / STEP), 3 * len(positions), np.random.default_rng(1))
    assert 0 < len(starts) < 3 * len(positions)
    times = starts * STEP
    assert np.all((times >= 5.0 - 0.005 + SETTINGS.exclusion_s(STEP)) & (times <= 5.2 - SETTINGS.exclusion_s(STEP)))


def test_negatives_are_deterministic_for_a_seed_and_uniform_without_calls():
    one = negative_windows([0.5], STEP, 2000, 300, np.random.default_rng(5))
    two = negative_windows([0.5], STEP, 2000, 300, np.random.default_rng(5))
    other = negative_windows([0.5], STEP, 2000, 300, np.random.default_rng(6))
    np.testing.assert_array_equal(one, two)
    assert not np.array_equal(one, other)
    free = negative_windows([], STEP, 2000, 5000, np.random.default_rng(0))
    assert len(free) == 5000 and abs(free.mean() - 990) < 30


def test_no_negatives_when_none_wanted_or_the_recording_is_too_short():
    assert len(negative_windows([0.1], STEP, 2000, 0, np.random.default_rng(0))) == 0
    assert len(negative_windows([], STEP, 19, 10, np.random.default_rng(0))) == 0


def test_recording_samples_give_three_positives_per_event_and_three_negatives_per_call():
    calls = RecordingCalls("x", 2.0, np.array([0.5, 0.5, 1.2]), np.array([1, 3, 5]))
    starts, targets = recording_samples(calls, K, STEP, int(2.0 / STEP), np.random.default_rng(0))
    positives, negatives = targets[:, 0] == 0, targets[:, 0] == 1
    assert positives.sum() == 6 and negatives.sum() == 9
    np.testing.assert_array_equal(targets[negatives, 1:], 0)
    np.testing.assert_array_equal(targets[positives][:3], np.tile([0, 1, 0, 1, 0, 0, 0, 0], (3, 1)))
    assert starts.dtype == np.int64


# --- samples ---------------------------------------------------------------------------------


def test_samples_concatenate_subset_and_shuffle():
    a = Samples([5, 6], [0, 0], np.eye(3, dtype=np.float32)[:2])
    b = Samples([100], [1], np.eye(3, dtype=np.float32)[2:])
    both = Samples.concatenate([a, b])
    assert len(both) == 3 and both.columns.dtype == np.int64 and both.recording.dtype == np.int32
    assert both.n_outputs == 3
    np.testing.assert_array_equal(both.subset(both.recording == 1).columns, [100])
    np.testing.assert_array_equal(both.subset([2, 0]).columns, [100, 5])
    shuffled = both.shuffle(np.random.default_rng(3))
    assert sorted(shuffled.columns) == [5, 6, 100]
    row = {c: t.tolist() for c, t in zip(shuffled.columns, shuffled.targets)}
    assert row[100] == [0, 0, 1] and row[5] == [1, 0, 0]
    np.testing.assert_array_equal(both.is_negative, [True, False, False])
    assert len(Samples.empty(K)) == 0 and Samples.empty(K).n_outputs == K + 1
    with pytest.raises(ValueError):
        Samples([1, 2], [0], np.zeros((2, 3)))


# --- samples of a cube ------------------------------------------------------------------------


def test_build_samples_puts_every_window_inside_its_recording(annotated_cube):
    _, _, cube, recordings = annotated_cube
    samples, problems = build_samples(recordings, cube, K, SETTINGS, seed=0)
    assert problems == []
    start, n_columns = cube["start"].values, cube["n_columns"].values
    r = samples.recording
    assert np.all(samples.columns >= start[r])
    assert np.all(samples.columns + SETTINGS.window_columns <= start[r] + n_columns[r])
    n_calls = sum(len(c.positions) for c in recordings)
    n_events = sum(len(np.unique(c.positions)) for c in recordings)
    positives = int((~samples.is_negative).sum())
    assert n_events < n_calls  # the archive holds simultaneous calls
    assert 3 * n_events - 6 <= positives <= 3 * n_events
    assert 0.9 * 3 * n_calls <= samples.is_negative.sum() <= 3 * n_calls


def test_build_samples_is_deterministic_for_a_seed(annotated_cube):
    _, _, cube, recordings = annotated_cube
    one, _ = build_samples(recordings, cube, K, SETTINGS, seed=4)
    two, _ = build_samples(recordings, cube, K, SETTINGS, seed=4)
    other, _ = build_samples(recordings, cube, K, SETTINGS, seed=5)
    np.testing.assert_array_equal(one.columns, two.columns)
    np.testing.assert_array_equal(one.targets, two.targets)
    positives = ~one.is_negative
    np.testing.assert_array_equal(one.columns[positives], other.columns[~other.is_negative])
    assert not np.array_equal(one.columns[~positives], other.columns[other.is_negative])


def test_build_samples_lists_recordings_it_cannot_use(annotated_cube):
    _, _, cube, recordings = annotated_cube
    extra = [
        RecordingCalls("site09/20260720_213000", 2.0, np.array([0.5]), np.array([1])),
        RecordingCalls(recordings[0].file.upper(), 2.0, np.array([0.5]), np.array([1])),  # case matters
    ]
    samples, problems = build_samples(recordings + extra, cube, K, SETTINGS, seed=0)
    assert problems == [f"{e.file}: not in the cube" for e in extra]
    alone, _ = build_samples(recordings, cube, K, SETTINGS, seed=0)
    assert len(samples) == len(alone)
    # a bare file name matches when it names one file only
    bare = RecordingCalls(recordings[0].file.split("/")[-1], recordings[0].duration, recordings[0].positions,
                          recordings[0].classes)
    _, problems = build_samples([bare], cube, K, SETTINGS, seed=0)
    assert problems == []


def table_cube(paths, channels, file_index):
    """A cube's small tables only (what build_samples reads), recordings of 1000 columns each."""
    n = len(paths)
    return xr.Dataset(
        {
            "path": ("recording", np.array(paths, dtype=object)),
            "channel": ("recording", np.array(channels, dtype=np.int32)),
            "file_index": ("recording", np.array(file_index)),
            "start": ("recording", 1000 * np.arange(n)),
            "n_columns": ("recording", np.full(n, 1000)),
            "real_rate": ("recording", np.full(n, 384_000.0)),
            "status": ("recording", np.array(["ok"] * n, dtype=object)),
        },
        attrs={"spectrogram_settings": json.dumps(SpectrogramSettings().to_dict())},
    )


def test_build_samples_matches_names_by_whole_path_components_and_takes_the_first_channel():
    cube = table_cube(
        ["/data/site01/a.wav", "/data/site01/a.wav", "/data/site02/a.WAV", "/data/xsite01/b.wav", "/data/c.d.wav"],
        channels=[0, 1, 0, 0, 0],
        file_index=[0, 0, 1, 2, 3],
    )
    calls = [
        RecordingCalls(name, 1.0, np.array([0.5]), np.array([1]))
        for name in ["site01/a", "data/site02/a", "a", "site01/b", "b", "c.d", "01/a"]
    ]
    samples, problems = build_samples(calls, cube, K, SETTINGS, seed=0)
    assert problems == [
        "a: ambiguous, matches 2 files of the cube",
        "site01/b: not in the cube",
        "01/a: not in the cube",
    ]
    np.testing.assert_array_equal(np.unique(samples.recording), [0, 2, 3, 4])
    first = samples.subset(samples.recording == 0)
    assert np.all((first.columns >= 0) & (first.columns < 1000))  # channel 0 of site01/a


def test_build_samples_skips_a_recording_the_cube_could_not_compute(annotated_cube):
    _, _, cube, recordings = annotated_cube
    paths = [str(p) for p in cube["path"].values]
    failed = next(i for i, p in enumerate(paths) if p.endswith(recordings[1].file + ".wav"))
    status = np.array(["ok"] * len(paths), dtype=object)
    status[failed] = "unreadable: truncated data chunk"
    broken = cube.assign(status=("recording", status))
    samples, problems = build_samples(recordings, broken, K, SETTINGS, seed=0)
    assert problems == [f"{recordings[1].file}: unreadable: truncated data chunk"]
    assert failed not in set(samples.recording.tolist())


def test_positive_windows_hold_the_call_and_negatives_do_not(annotated_cube):
    """The physical check: a call's windows are bright in its band, compared with negatives."""
    archive, path, cube, recordings = annotated_cube
    samples, _ = build_samples(recordings, cube, K, SETTINGS, seed=0)
    array = zarr.open_array(f"{path}/spectrogram", mode="r")
    calls = pd.read_csv(archive.annotations_csv)
    frequency = cube["frequency"].values
    steps = cube_column_steps(cube)
    paths = [str(p) for p in cube["path"].values]
    start = cube["start"].values
    positive_columns = set(samples.columns[~samples.is_negative].tolist())
    checked = 0
    for file, its_calls in calls.groupby("file"):
        r = next(i for i, p in enumerate(paths) if p.endswith(f"{file}.wav"))
        negatives = read_windows(array, samples.columns[samples.is_negative & (samples.recording == r)])
        for call in its_calls.itertuples():
            band = (frequency >= call.low_freq) & (frequency <= call.high_freq)
            length = min(SETTINGS.window_columns, int(np.ceil(call.call_duration / steps[r])) + 2)
            background = np.median(negatives[:, band, :length].mean(axis=(1, 2, 3)))
            for shift in SETTINGS.shifts_s:
                column = start[r] + int(column_of(call.position + shift, steps[r]))
                assert column in positive_columns
                energy = read_windows(array, [column])[0, band, :length].mean()
                assert energy > background, (file, call.position, shift)
                checked += 1
    assert checked == 3 * len(calls)


def test_match_recordings_gives_an_index_or_none_for_each_name():
    cube = table_cube(["/d/site01/a.wav", "/d/site02/b.wav"], channels=[0, 0], file_index=[0, 1])
    indices, problems = match_recordings(cube, ["site02/b", "site03/b", "a"])
    assert indices == [1, None, 0]
    assert problems == ["site03/b: not in the cube"]
