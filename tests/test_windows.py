"""Windows read from a cube: equal to slicing it, in the order asked; batches for Keras."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import zarr

from pipeline.config import IngestSettings, Settings
from pipeline.ingestion import ingest
from pipeline.io.annotations import read_reference_npz
from pipeline.io.cube import open_cube
from pipeline.sampling import SamplingSettings, build_samples
from pipeline.simulation import simulate_archive
from pipeline.windows import ChunkCache, WindowSequence, read_windows

CHUNK = 256
K = 7


@pytest.fixture(scope="module")
def cube_path(tmp_path_factory, client):
    tmp = tmp_path_factory.mktemp("windows")
    archive = simulate_archive(tmp / "audio", minutes=0.5, seed=2)
    path = tmp / "night.zarr"
    ingest(archive.root, path, settings=Settings(ingest=IngestSettings(chunk_columns=CHUNK)), client=client,
           progress=False)
    return path, archive


@pytest.fixture(scope="module")
def samples(cube_path):
    path, archive = cube_path
    dataset = read_reference_npz(archive.annotations_npz)
    samples, problems = build_samples(dataset.train + dataset.test, open_cube(path), K, SamplingSettings(), seed=0)
    assert problems == []
    return samples


def sliced(cube, columns, width=20):
    """The windows cut from the xarray cube directly, transposed to (frequency, time, 1)."""
    spectrogram = cube["spectrogram"].values
    return np.stack([spectrogram[c : c + width].T[..., None] for c in columns]).astype(np.float32)


def columns_to_read(n_time, rng):
    """Random columns, windows straddling chunk borders, a repeat and the very last window."""
    borders = np.arange(CHUNK, n_time - 20, CHUNK)[:12]
    straddling = np.concatenate([borders - 1, borders - 19, borders - 10])
    chosen = np.concatenate([rng.integers(0, n_time - 20, 40), straddling, [0, n_time - 20]])
    chosen = np.concatenate([chosen, chosen[:5]])  # repeats
    return rng.permutation(chosen)


@pytest.mark.parametrize("max_range_chunks", [1, 4])
def test_read_windows_equals_slicing_the_cube(cube_path, max_range_chunks):
    path, _ = cube_path
    cube = open_cube(path)
    array = zarr.open_array(f"{path}/spectrogram", mode="r")
    assert array.chunks[0] == CHUNK
    columns = columns_to_read(array.shape[0], np.random.default_rng(0))
    windows = read_windows(array, columns, max_range_chunks=max_range_chunks)
    assert windows.dtype == np.float32 and windows.shape == (len(columns), 130, 20, 1)
    np.testing.assert_array_equal(windows, sliced(cube, columns))


def test_read_windows_accepts_a_data_array_a_numpy_array_and_a_cache(cube_path):
    path, _ = cube_path
    cube = open_cube(path)
    array = zarr.open_array(f"{path}/spectrogram", mode="r")
    columns = columns_to_read(array.shape[0], np.random.default_rng(1))
    expected = sliced(cube, columns)
    np.testing.assert_array_equal(read_windows(cube["spectrogram"], columns), expected)
    np.testing.assert_array_equal(read_windows(array[:], columns), expected)
    np.testing.assert_array_equal(read_windows(ChunkCache(array, 3), columns, max_range_chunks=1), expected)
    np.testing.assert_array_equal(read_windows(array, columns, width=7), sliced(cube, columns, width=7))
    assert read_windows(array, []).shape == (0, 130, 20, 1)


def test_read_windows_refuses_nan_naming_the_first_bad_column(tmp_path):
    values = np.ones((400, 130), dtype=np.float16)
    values[237, 5] = np.nan
    array = zarr.create_array(str(tmp_path / "s.zarr"), shape=values.shape, chunks=(64, 130), dtype="float16")
    array[:] = values
    assert read_windows(array, [0, 300, 380]).shape == (3, 130, 20, 1)
    with pytest.raises(ValueError, match="column 237"):
        read_windows(array, [0, 230, 225])
    with pytest.raises(ValueError, match="column 237"):
        read_windows(values, [220])


def test_read_windows_refuses_a_window_outside_the_cube():
    values = np.zeros((100, 130), dtype=np.float16)
    with pytest.raises(IndexError, match="column 81"):
        read_windows(values, [0, 81])
    with pytest.raises(IndexError):
        read_windows(values, [-1])


def test_chunk_cache_decodes_each_chunk_once_while_it_is_kept(cube_path):
    path, _ = cube_path
    array = zarr.open_array(f"{path}/spectrogram", mode="r")
    cache = ChunkCache(array, max_chunks=2)
    np.testing.assert_array_equal(cache[10:600], array[10:600])  # chunks 0, 1, 2
    assert cache.decoded == 3
    np.testing.assert_array_equal(cache[300:500], array[300:500])  # chunk 1, kept
    assert cache.decoded == 3
    np.testing.assert_array_equal(cache[20:30], array[20:30])  # chunk 0 again; chunk 2 (least recent) goes
    assert cache.decoded == 4
    cache[300:310]
    assert cache.decoded == 4
    cache[520:530]
    assert cache.decoded == 5
    end = array.shape[0]
    np.testing.assert_array_equal(cache[end - 30 : end], array[end - 30 : end])


# --- batches ----------------------------------------------------------------------------------


def all_indices(sequence):
    return np.concatenate([sequence.batch_indices(i) for i in range(len(sequence))])


@pytest.mark.parametrize("pool_columns", [None, 512, 2**19])
def test_every_sample_is_in_exactly_one_batch_per_epoch(cube_path, samples, pool_columns):
    path, _ = cube_path
    sequence = WindowSequence(path, samples, batch_size=100, seed=3, pool_columns=pool_columns)
    assert len(sequence) == -(-len(samples) // 100)
    for _ in range(3):
        np.testing.assert_array_equal(np.sort(all_indices(sequence)), np.arange(len(samples)))
        sequence.on_epoch_end()


def test_batches_hold_the_windows_and_targets_of_their_samples(cube_path, samples):
    path, _ = cube_path
    cube = open_cube(path)
    sequence = WindowSequence(path, samples, batch_size=64, seed=1, pool_columns=512)
    for i in (0, len(sequence) - 1):
        x, y = sequence[i]
        chosen = sequence.batch_indices(i)
        assert x.shape == (len(chosen), 130, 20, 1) and y.shape == (len(chosen), K + 1)
        assert x.dtype == np.float32 and y.dtype == np.float32
        np.testing.assert_array_equal(x, sliced(cube, samples.columns[chosen]))
        np.testing.assert_array_equal(y, samples.targets[chosen])
    assert len(sequence[len(sequence) - 1][0]) == len(samples) - 64 * (len(sequence) - 1)
    with pytest.raises(IndexError):
        sequence[len(sequence)]


def test_order_changes_every_epoch_and_repeats_for_a_seed(cube_path, samples):
    path, _ = cube_path
    one = WindowSequence(path, samples, seed=7)
    two = WindowSequence(path, samples, seed=7)
    other = WindowSequence(path, samples, seed=8)
    first = all_indices(one)
    np.testing.assert_array_equal(first, all_indices(two))
    assert not np.array_equal(first, all_indices(other))
    one.on_epoch_end()
    two.on_epoch_end()
    assert not np.array_equal(first, all_indices(one))
    np.testing.assert_array_equal(all_indices(one), all_indices(two))
    fixed = WindowSequence(path, samples, shuffle=False)
    np.testing.assert_array_equal(all_indices(fixed), np.arange(len(samples)))
    fixed.on_epoch_end()
    np.testing.assert_array_equal(all_indices(fixed), np.arange(len(samples)))


def test_a_pooled_shuffle_visits_each_pool_of_chunks_in_one_run(cube_path, samples):
    path, _ = cube_path
    sequence = WindowSequence(path, samples, batch_size=32, seed=2, pool_columns=CHUNK)  # pools of one chunk
    chunk = samples.columns[all_indices(sequence)] // CHUNK
    runs = chunk[np.r_[True, chunk[1:] != chunk[:-1]]]
    assert len(runs) == len(np.unique(chunk))  # each chunk's windows come together
    assert not np.all(np.diff(runs) > 0)  # in a random order of chunks
    for i in range(len(sequence)):
        sequence[i]
    assert sequence.spectrogram.decoded <= 2 * len(np.unique(chunk))  # each chunk (and its next) once


def test_sample_weights_come_as_a_third_element(cube_path, samples):
    path, _ = cube_path
    weights = np.linspace(0.5, 2.0, len(samples))
    sequence = WindowSequence(path, (samples.columns, samples.targets), batch_size=50, sample_weight=weights)
    x, y, w = sequence[1]
    np.testing.assert_allclose(w, weights[sequence.batch_indices(1)], rtol=1e-6)
    with pytest.raises(ValueError, match="sample weights"):
        WindowSequence(path, samples, sample_weight=weights[:-1])


def test_a_sequence_survives_pickling_for_worker_processes(cube_path, samples):
    path, _ = cube_path
    sequence = WindowSequence(path, samples, batch_size=40, seed=5)
    sequence[0]
    copy = pickle.loads(pickle.dumps(sequence))
    np.testing.assert_array_equal(copy[2][0], sequence[2][0])


def test_a_keras_model_trains_on_a_sequence(cube_path, samples):
    import keras

    path, _ = cube_path
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((130, 20, 1)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(K + 1, activation="sigmoid"),
    ])
    model.compile(optimizer="adam", loss="binary_crossentropy")
    sequence = WindowSequence(path, samples, batch_size=128, seed=0)
    history = model.fit(sequence, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and np.all(np.isfinite(history.history["loss"]))
    assert sequence.epoch >= 1  # Keras moved it on to a new order
