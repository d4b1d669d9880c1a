"""Exact dense scoring (valid-time CNN rows, strip passes) and the TensorFlow-free runtime."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipeline.detect import column_probabilities, recording_windows
from pipeline.model.params import ParamsError, load_params

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "pipeline" / "model" / "default"


def _network(row: str, seed: int = 3):
    import keras

    from pipeline.model.cnn import build_cnn

    keras.utils.set_random_seed(seed)
    return build_cnn(8, load_params(row), name=row)


def _keras_scores(network, windows):
    from pipeline.train import embedding_and_head

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
    assert "time_padding" not in load_params("cnn_8")  # the seed's row is untouched
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
    from pipeline.train import Predictor

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
        from pipeline.detect import recording_windows
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


# ------------------------------------------------------------------ a trained valid-time model, int8


@pytest.fixture(scope="module")
def trained_dense(tmp_path_factory, client):
    """cnn8 trained by batml's training code with the cnn_8_dense row (as the user's CSV's
    cnn_8), on a 1-minute simulated archive, 3 epochs."""
    from pipeline.model.bundle import load_bundle
    from pipeline.simulate import simulate_archive
    from pipeline.train import TrainSettings, train

    root = tmp_path_factory.mktemp("dense")
    packaged = Path(__file__).resolve().parents[1] / "pipeline" / "model" / "params" / "networks.csv"
    lines = packaged.read_text().splitlines()
    dense = next(line for line in lines if line.startswith("cnn_8_dense,"))
    (root / "networks.csv").write_text(f"{lines[0]}\n{dense.replace('cnn_8_dense,', 'cnn_8,', 1)}\n")
    archive = simulate_archive(root / "audio", minutes=1.0, seed=21, empty_fraction=0.2, test_fraction=0.3)
    settings = TrainSettings(model_type="cnn8", epochs=3, networks_csv=str(root / "networks.csv"), seed=2)
    train(archive.annotations_npz, archive.root, root / "model", settings=settings, cube=root / "cube.zarr",
          client=client, progress=False)  # fmt: skip
    return archive, root / "cube.zarr", load_bundle(root / "model")


@pytest.mark.slow
def test_int8_strip_keeps_detection_ap_within_0_005(trained_dense):
    from pipeline.io.cube import open_cube
    from pipeline.model.accuracy import scorer_accuracy
    from pipeline.model.export import quantized_int8, strip_graph, window_graph
    from pipeline.model.runtime import NetworkRuntime
    from pipeline.sampling import match_recordings
    from pipeline.train import Predictor, read_annotations

    archive, cube_path, bundle = trained_dense
    network = bundle.network("cnn_8")
    assert network.get_layer("conv_1").get_config()["padding"] == "valid"  # the variant was trained
    cube = open_cube(cube_path)
    annotations = read_annotations(archive.annotations_npz)
    indices, _ = match_recordings(cube, [rec.file for rec in annotations.train])
    calibration = [
        cube.batml.recording(r)["spectrogram"].values.astype(np.float32).T[:, :531]
        for r in indices if r is not None
    ][:12]  # fmt: skip
    strip = strip_graph(network)
    float_runtime = NetworkRuntime(window_graph(network), strip)
    int8 = quantized_int8(strip, calibration)
    assert any(node.op_type == "QuantizeLinear" for node in int8.graph.node)
    int8_runtime = NetworkRuntime(window_graph(network), int8)

    predictor = Predictor.from_bundle(bundle)
    keras_result = scorer_accuracy(lambda s: column_probabilities(predictor, s), cube, annotations.test, bundle.classes)
    float_result = scorer_accuracy(float_runtime.column_probabilities, cube, annotations.test, bundle.classes)
    int8_result = scorer_accuracy(int8_runtime.column_probabilities, cube, annotations.test, bundle.classes)
    assert keras_result.n_events > 0 and keras_result.detection_ap > 0.2  # it learned something
    assert float_result.detection_ap == pytest.approx(keras_result.detection_ap, abs=1e-6)
    assert abs(int8_result.detection_ap - float_result.detection_ap) <= 0.005

