"""Exact dense scoring (valid-time CNN rows, strip passes) and the TensorFlow-free runtime."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipeline.detection.scoring import column_probabilities, recording_windows
from pipeline.model.params import ParamsError, load_params

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "pipeline" / "model" / "default"


def _network(row: str, seed: int = 3):
    import keras

    from pipeline.model.cnn import build_cnn

    keras.utils.set_random_seed(seed)
    return build_cnn(8, load_params(row), name=row)


def _keras_scores(network, windows):
    from pipeline.model.predictor import embedding_and_head

    embedding, head = (x.numpy() for x in embedding_and_head(network)(windows, training=False))
    return head, embedding


def _spectrogram(n_columns: int, seed: int = 0) -> np.ndarray:
    """Columns (n_columns, 130) with structure: noise plus a few bright sweeps."""
    rng = np.random.default_rng(seed)
    spec = rng.gamma(1.0, 0.3, size=(n_columns, 130)).astype(np.float32)
    for start in rng.integers(0, n_columns - 12, size=max(n_columns // 60, 1)):
        rows = np.linspace(100, 30, 12).astype(int)
        spec[start + np.arange(12), rows] += 4.0
    return spec


# ------------------------------------------------------------------ rows and geometry


def test_valid_time_rows_load_and_the_defaults_stay_as_defined():
    from pipeline.model.cnn import build_cnn

    dense = load_params("cnn_8_dense")
    assert dense["time_padding"] == "valid" and dense["time_kernel"] == 3
    assert {k: v for k, v in dense.items() if k not in ("time_padding", "time_kernel")} == load_params("cnn_8")
    assert "time_padding" not in load_params("cnn_8")  # the reference system's row is untouched
    seed_net = build_cnn(8, load_params("cnn_8"), name="cnn_8")
    assert seed_net.count_params() == 569_048
    assert not any(layer.name.startswith("pad_") for layer in seed_net.layers)
    assert seed_net.get_layer("conv_1").get_config()["padding"] == "same"
    net = _network("cnn_8_dense")
    assert net.input_shape == (None, 130, 20, 1) and net.output_shape == (None, 8)
    assert net.get_layer("embedding").units == 320
    assert all(net.get_layer(f"conv_{i}").get_config()["padding"] == "valid" for i in (1, 2, 3))


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        ("valid,21", "block 1 has 20 column(s) left for a time kernel of 21"),
        ("valid,5", "block 3 has 2 column(s) left for a time kernel of 5"),
    ],
)
def test_a_time_kernel_that_does_not_fit_is_one_line(tmp_path, cells, expected):
    from pipeline.model.cnn import build_cnn

    path = tmp_path / "networks.csv"
    path.write_text(
        "name,conv_layers,filters,kernel,pool_size,dense_layers,dense_units,dropout_conv,dropout_dense,"
        f"time_padding,time_kernel\ncnn_8,3,8,4,2,1,16,0.5,0.5,{cells}\n"
    )
    with pytest.raises(ParamsError) as error:
        build_cnn(8, load_params("cnn_8", path), name="cnn_8")
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_an_unknown_time_padding_names_the_file_and_row(tmp_path):
    path = tmp_path / "networks.csv"
    path.write_text("name,time_padding\ncnn_8,causal\n")
    with pytest.raises(ParamsError) as error:
        load_params("cnn_8", path)
    message = str(error.value)
    assert str(path) in message and "'cnn_8'" in message and "one of same, valid" in message


# ------------------------------------------------------------------ strip == every window


@pytest.mark.parametrize("row", ["cnn_8_dense", "cnn_8_dense_light"])
def test_strip_pass_equals_scoring_each_window(row):
    from pipeline.model.dense_scoring import network_geometry, strip_network
    from pipeline.model.export import strip_graph, window_graph
    from pipeline.model.runtime import NetworkRuntime

    net = _network(row)
    spec = _spectrogram(300)
    windows = recording_windows(spec)
    head, embedding = _keras_scores(net, windows)
    assert network_geometry(net).span <= 20
    assert np.ptp(head[:, 0]) > 1e-3 and np.ptp(embedding) > 1e-2  # outputs that vary with the window

    keras_probs, keras_embedding = (x.numpy()[0] for x in strip_network(net)(spec.T[None, :, :, None]))
    np.testing.assert_allclose(keras_probs[: len(windows)], head, rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(keras_embedding[: len(windows)], embedding, rtol=1e-4, atol=2e-5)

    runtime = NetworkRuntime(window_graph(net), strip_graph(net))
    whole = runtime.strip(spec.T)
    assert whole.probabilities.shape == (281, 8) and whole.embedding.shape == (281, 320)
    np.testing.assert_allclose(whole.probabilities, head, rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(whole.embedding, embedding, rtol=1e-4, atol=2e-5)
    pieces = runtime.strip(spec.T, piece_windows=37)  # piece borders change nothing
    np.testing.assert_allclose(pieces.probabilities, whole.probabilities, rtol=1e-5, atol=1e-6)
    # the detection's per-column array, the not-call tail included
    np.testing.assert_allclose(
        runtime.column_probabilities(spec), column_probabilities(runtime, spec), rtol=1e-4, atol=2e-6
    )
    assert runtime.strip(spec.T[:, :19]).probabilities.shape == (0, 8)


def test_a_strided_strip_pass_scores_exactly_the_coarse_grid():
    from pipeline.model.export import strip_graph, strip_strides, window_graph
    from pipeline.model.runtime import NetworkRuntime

    net = _network("cnn_8_dense")
    assert strip_strides(net) == (1, 2, 4)
    spec = _spectrogram(301, seed=4)
    head, embedding = _keras_scores(net, recording_windows(spec))  # 282 windows
    for stride in (2, 4):
        runtime = NetworkRuntime(window_graph(net), strip_graph(net, stride=stride))
        for piece in (2048, 30):
            scores = runtime.strip(spec.T, piece_windows=piece)
            assert scores.stride == stride and len(scores.probabilities) == -(-282 // stride)
            np.testing.assert_allclose(scores.probabilities, head[::stride], rtol=1e-4, atol=2e-6)
            np.testing.assert_allclose(scores.embedding, embedding[::stride], rtol=1e-4, atol=2e-5)
        with pytest.raises(ValueError, match="dense scoring needs stride 1"):
            runtime.column_probabilities(spec)
    with pytest.raises(ValueError, match="stride 8 is not one of"):
        strip_graph(net, stride=8)


def test_a_network_padded_along_time_has_no_strip_pass():
    from pipeline.model.dense_scoring import strip_network
    from pipeline.model.export import strip_graph

    net = _network("cnn_8")
    for make in (strip_network, strip_graph):
        with pytest.raises(ValueError, match="pads its windows along time"):
            make(net)


# ------------------------------------------------------------------ export == Keras


@pytest.fixture(scope="module")
def bundled():
    from pipeline.model.bundle import load_bundle

    bundle = load_bundle(DEFAULT_MODEL)
    return bundle, bundle.network(bundle.spec.network_rows[0])


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_exported_window_graph_equals_the_trained_keras_network(bundled, engine, real_data):
    pytest.importorskip(engine)
    from pipeline.model.export import window_graph
    from pipeline.model.runtime import NetworkRuntime

    _, network = bundled
    import soundfile as sf

    from pipeline.config import SpectrogramSettings
    from pipeline.io.audio import read_samples
    from pipeline.spectrogram import spectrogram

    wav = sorted((real_data / "unannotated").glob("0166_*.wav"))[0]
    spec = spectrogram(read_samples(wav), sf.info(str(wav)).samplerate, SpectrogramSettings())
    windows = recording_windows(spec, np.arange(0, spec.shape[0] - 19, 7))
    head, embedding = _keras_scores(network, windows)
    assert np.ptp(head[:, 0]) > 0.1  # real calls and silence: the head moves
    runtime = NetworkRuntime(window_graph(network), engine=engine)
    got_head, got_embedding = runtime.embed(windows)
    np.testing.assert_allclose(got_head, head, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_embedding, embedding, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("gate", [0.0, 0.01])
def test_runtime_with_boosters_equals_the_predictor(bundled, gate):
    from pipeline.model.export import window_graph
    from pipeline.model.runtime import NetworkRuntime
    from pipeline.model.predictor import Predictor

    bundle, network = bundled
    windows = recording_windows(_spectrogram(400, seed=5))
    expected = Predictor.from_bundle(bundle, booster_gate=gate)(windows)
    runtime = NetworkRuntime(window_graph(network), boosters=bundle.boosters(), booster_gate=gate)
    got = runtime(windows)
    assert got.shape == (len(windows), 8) and runtime.n_outputs == 8
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_a_broken_model_file_is_one_line(tmp_path):
    from pipeline.model.runtime import NetworkRuntime, RuntimeModelError

    bad = tmp_path / "network.onnx"
    bad.write_bytes(b"not a graph")
    for path, reason in ((bad, "cannot load it"), (tmp_path / "missing.onnx", "no such model file")):
        with pytest.raises(RuntimeModelError) as error:
            NetworkRuntime(path)
        assert str(path) in str(error.value) and reason in str(error.value) and "\n" not in str(error.value)


# ------------------------------------------------------------------ no TensorFlow in the runtime


def test_the_runtime_scores_without_importing_tensorflow(tmp_path, bundled):
    from pipeline.model.export import strip_graph, window_graph, write_model
    from pipeline.model.runtime import NetworkRuntime

    bundle, network = bundled
    dense = _network("cnn_8_dense_light")
    write_model(window_graph(network), tmp_path / "windows.onnx")
    write_model(window_graph(dense), tmp_path / "dense_windows.onnx")
    write_model(strip_graph(dense), tmp_path / "dense_strip.onnx")
    boosters = sorted((DEFAULT_MODEL / "boosters").glob("output_*.ubj"), key=lambda p: int(p.stem.split("_")[1]))
    spec = _spectrogram(120, seed=9)
    np.save(tmp_path / "spec.npy", spec)
    expected_hybrid = NetworkRuntime(window_graph(network), boosters=bundle.boosters())(recording_windows(spec))
    expected_strip = NetworkRuntime(window_graph(dense), strip_graph(dense)).strip(spec.T).probabilities
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import pipeline.model.runtime as runtime
        from pipeline.detection.scoring import recording_windows
        spec = np.load({str(tmp_path / "spec.npy")!r})
        hybrid = runtime.NetworkRuntime.from_files({str(tmp_path / "windows.onnx")!r},
                                                   booster_files={[str(b) for b in boosters]!r})
        np.save({str(tmp_path / "hybrid.npy")!r}, hybrid(recording_windows(spec)))
        dense = runtime.NetworkRuntime.from_files({str(tmp_path / "dense_windows.onnx")!r},
                                                  {str(tmp_path / "dense_strip.onnx")!r})
        np.save({str(tmp_path / "strip.npy")!r}, dense.strip(spec.T).probabilities)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
        print("IMPORTED", heavy)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "IMPORTED []" in done.stdout, done.stdout
    np.testing.assert_allclose(np.load(tmp_path / "hybrid.npy"), expected_hybrid, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "strip.npy"), expected_strip, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ trained models: AP through detection


@pytest.fixture(scope="module")
def simulated_cube(tmp_path_factory, client):
    """A 1-minute simulated archive with a test split, and its spectrogram cube."""
    from pipeline.ingestion import ingest
    from pipeline.io.cube import open_cube
    from pipeline.simulation.archive import simulate_archive

    root = tmp_path_factory.mktemp("int8")
    archive = simulate_archive(root / "audio", minutes=1.0, seed=21, empty_fraction=0.2, test_fraction=0.4)
    ingest(archive.root, root / "cube.zarr", client=client, progress=False)
    return archive, root / "cube.zarr", open_cube(root / "cube.zarr")


def _calibration(cube, recordings, columns: int = 531, count: int = 12):
    """Strips of the recordings' first ``columns`` columns, (130, columns): int8 calibration."""
    from pipeline.annotations.matching import match_recordings

    indices, _ = match_recordings(cube, [rec.file for rec in recordings])
    strips = [cube.batml.recording(r)["spectrogram"].values.astype(np.float32).T for r in indices if r is not None]
    return [s[:, :columns] for s in strips if s.shape[1] >= columns][:count]


def test_int8_network_keeps_detection_ap_within_0_01(bundled, simulated_cube):
    """The bundled (well trained) network, int8 by :func:`quantized_int8` calibrated on the
    training split, against float, through batml's detection and evaluation on the test split.

    The AP is over every peak of the call score (the full ranked list): 0.841 float, 0.833
    int8 when measured; int8's error weighs most on low scores (on the peaks above 0.5 alone
    the two differ by 0.002)."""
    from pipeline.model.accuracy import scorer_accuracy
    from pipeline.model.export import quantized_int8, window_graph
    from pipeline.model.runtime import NetworkRuntime
    from pipeline.annotations.dataset import read_dataset

    bundle, network = bundled
    archive, _, cube = simulated_cube
    annotations = read_dataset(archive.annotations_npz)
    windows_graph = window_graph(network)
    calibration = [recording_windows(s.T, np.arange(0, s.shape[1] - 19, 4)) for s in _calibration(cube, annotations.train)]
    int8 = quantized_int8(windows_graph, calibration)
    assert sum(node.op_type == "QuantizeLinear" for node in int8.graph.node) >= 4
    float_runtime, int8_runtime = NetworkRuntime(windows_graph), NetworkRuntime(int8)
    windows = recording_windows(cube.batml.recording(0)["spectrogram"].values.astype(np.float32))
    error = np.abs(int8_runtime(windows) - float_runtime(windows))
    assert error.max() > 0 and error.mean() < 0.05  # really quantized, close on average

    def scorer(runtime):
        return lambda spec: column_probabilities(runtime, spec)

    float_result = scorer_accuracy(scorer(float_runtime), cube, annotations.test, bundle.classes)
    int8_result = scorer_accuracy(scorer(int8_runtime), cube, annotations.test, bundle.classes)
    assert float_result.n_events > 10 and float_result.detection_ap > 0.5
    assert abs(int8_result.detection_ap - float_result.detection_ap) <= 0.01


@pytest.mark.slow
def test_the_valid_time_variant_trains_with_batml_train_and_its_strip_scores_as_keras(
    tmp_path_factory, client, simulated_cube
):
    """cnn8 trained by ``train`` with the ``cnn_8_dense`` row (as the user CSV's ``cnn_8``), 2
    epochs: the bundle holds the variant, and detection through the strip pass gives the AP and
    mAP of detection through Keras per window."""
    from pipeline.model.accuracy import scorer_accuracy
    from pipeline.model.bundle import load_bundle
    from pipeline.model.export import strip_graph, window_graph
    from pipeline.model.runtime import NetworkRuntime
    from pipeline.model.predictor import Predictor
    from pipeline.training.job import TrainSettings, train
    from pipeline.annotations.dataset import read_dataset

    archive, cube_path, cube = simulated_cube
    root = tmp_path_factory.mktemp("dense-model")
    packaged = Path(__file__).resolve().parents[1] / "pipeline" / "model" / "params" / "networks.csv"
    lines = packaged.read_text().splitlines()
    dense = next(line for line in lines if line.startswith("cnn_8_dense,"))
    (root / "networks.csv").write_text(f"{lines[0]}\n{dense.replace('cnn_8_dense,', 'cnn_8,', 1)}\n")
    settings = TrainSettings(model_type="cnn8", epochs=2, networks_csv=str(root / "networks.csv"), seed=2)
    train(archive.annotations_npz, archive.root, root / "model", settings=settings, cube=cube_path,
          client=client, progress=False)  # fmt: skip
    bundle = load_bundle(root / "model")
    network = bundle.network("cnn_8")
    assert network.get_layer("conv_1").get_config()["padding"] == "valid"
    assert bundle.manifest["hyperparameters"]["cnn_8"]["time_padding"] == "valid"
    test = read_dataset(archive.annotations_npz).test
    predictor = Predictor.from_bundle(bundle)
    keras_result = scorer_accuracy(lambda s: column_probabilities(predictor, s), cube, test, bundle.classes)
    runtime = NetworkRuntime(window_graph(network), strip_graph(network))
    strip_result = scorer_accuracy(runtime.column_probabilities, cube, test, bundle.classes)
    assert keras_result.n_events > 0
    assert strip_result.n_events == keras_result.n_events
    assert strip_result.detection_ap == pytest.approx(keras_result.detection_ap, abs=1e-6)
    assert strip_result.class_map == pytest.approx(keras_result.class_map, abs=1e-6)


def test_boosters_run_only_near_the_peaks_of_the_head(bundled):
    from pipeline.detection.scoring import call_score
    from pipeline.detection.events import smooth_probabilities
    from pipeline.model.export import window_graph
    from pipeline.model.runtime import NetworkRuntime, booster_columns, booster_probabilities, hybrid_probabilities
    from pipeline.nms import peaks_1d

    bundle, network = bundled
    spec = _spectrogram(600, seed=11)
    head, embedding = NetworkRuntime(window_graph(network)).embed(recording_windows(spec))
    mask = booster_columns(head, gate=0.01, margin=2)
    score = call_score(smooth_probabilities(head))
    peaks = peaks_1d(score, 10, np.float32(0.0))
    kept = peaks[score[peaks] >= 0.01]
    assert len(kept) > 0
    expected = np.zeros(len(head), bool)
    for peak in kept:
        expected[max(peak - 2, 0) : peak + 3] = True
    np.testing.assert_array_equal(mask, expected)
    assert mask.mean() < 0.6  # at most 5 columns per 11: the NMS radius spaces the peaks
    probs = hybrid_probabilities(head, embedding, bundle.boosters(), mask)
    np.testing.assert_allclose(probs[mask], booster_probabilities(bundle.boosters(), embedding[mask]), rtol=1e-6)
    np.testing.assert_array_equal(probs[~mask], head[~mask])
