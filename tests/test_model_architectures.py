"""The six architectures: default parameters, network shapes and sizes, training, saving."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pipeline.model.cnn import build_cnn  # noqa: E402
from pipeline.model.params import COLUMNS, ParamsError, check_required, list_rows, load_params  # noqa: E402
from pipeline.model.registry import (  # noqa: E402
    ARCHITECTURE_NAMES,
    ARCHITECTURES,
    BOOSTER_ROW,
    Architecture,
    build_networks,
    compile_network,
    get_architecture,
)
from pipeline.model.resnet import build_resnet  # noqa: E402

# Keras's TensorFlow backend calls np.array on tensors in a way numpy 2 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

NETWORK_ROWS = ("cnn_8", "cnn_2", "cnn_7", "resnet_8", "resnet_2", "resnet_7")
#: Valid-time variants of cnn_8 (exact dense scoring, pipeline.model.dense_scoring).
DENSE_ROWS = ("cnn_8_dense", "cnn_8_dense_light")
PATCHES = np.random.default_rng(0).random((4, 130, 20, 1), dtype=np.float32)

# Hand arithmetic of the reference system's CNNs on a 130x20x1 patch (weights + biases):
# cnn_8: 3 conv 4x4x48 -> 16x2x48 = 1536 -> 320 -> 8
CNN_8_PARAMS = (16 * 1 * 48 + 48) + 2 * (16 * 48 * 48 + 48) + (1536 * 320 + 320) + (320 * 8 + 8)
# cnn_2: 4 conv 3x3x48 -> 8x1x48 = 384 -> 384 -> 2
CNN_2_PARAMS = (9 * 1 * 48 + 48) + 3 * (9 * 48 * 48 + 48) + (384 * 384 + 384) + (384 * 2 + 2)


@pytest.fixture(scope="module")
def resnets():
    """ResNets built once for the module, by (n_outputs, activation)."""
    built = {}

    def get(n_outputs, activation="sigmoid"):
        key = (n_outputs, activation)
        if key not in built:
            row = "resnet_2" if activation == "softmax" else "resnet_8"
            built[key] = build_resnet(n_outputs, load_params(row), activation=activation)
        return built[key]

    return get


# ---------------------------------------------------------------- parameter files


def test_every_row_loads_with_its_types():
    assert sorted(list_rows()) == sorted((*NETWORK_ROWS, *DENSE_ROWS, BOOSTER_ROW))
    for row in list_rows():
        params = load_params(row)
        assert params, row
        for column, value in params.items():
            assert type(value) is COLUMNS[column], (row, column, value)
    cnn_8 = load_params("cnn_8")
    assert cnn_8["conv_layers"] == 3 and cnn_8["filters"] == 48 and cnn_8["kernel"] == 4
    assert cnn_8["dense_units"] == 320 and cnn_8["dropout_dense"] == 0.6
    assert cnn_8["batch_size"] == 320 and cnn_8["patience"] == 20 and cnn_8["epochs"] == 200
    assert cnn_8["learning_rate"] == pytest.approx(8.48e-4, rel=1e-3)
    assert cnn_8["min_delta"] == 0.005
    assert "l2" not in cnn_8 and "batch_norm_momentum" not in cnn_8  # empty cells left out
    assert "filters" not in load_params("resnet_8") and load_params("resnet_8")["l2"] > 0
    assert load_params(BOOSTER_ROW) == {
        "max_depth": 15,
        "eta": pytest.approx(0.197, abs=1e-3),
        "n_estimators": 2000,
        "gamma": 0.001,
        "subsample": 0.9,
        "scale_pos_weight": 1.5,
        "min_child_weight": 1.0,
    }


def test_a_user_file_overrides_the_defaults(tmp_path):
    packaged = load_params("cnn_8")
    user = tmp_path / "my_networks.csv"
    user.write_text(
        "name,conv_layers,filters,kernel,pool_size,dense_layers,dense_units,"
        "dropout_conv,dropout_dense,learning_rate,beta_1,beta_2\n"
        "cnn_8, 3, 48, 4, 2, 1, 64, 0.6, 0.6, 1e-3, 0.9, 0.999\n"
    )
    params = load_params("cnn_8", user)
    assert params["dense_units"] == 64 and params["learning_rate"] == 1e-3
    assert packaged["dense_units"] == 320  # the packaged row is untouched
    networks = build_networks("cnn8", 7, {"cnn_8": params})
    assert networks["cnn_8"].get_layer("embedding").output.shape == (None, 64)


@pytest.mark.parametrize(
    "text, row, reason",
    [
        ("name,filters\ncnn_8,forty\n", "cnn_8", "filters = 'forty' is not a number"),
        ("name,filters\ncnn_8,4.5\n", "cnn_8", "is not a whole number"),
        ("name,dropout_conv\ncnn_8,1.2\n", "cnn_8", "must be in [0, 1)"),
        ("name,learning_rate\ncnn_8,0\n", "cnn_8", "must be > 0"),
        ("name,eta\nxgboost_spectrogram,nan\n", "xgboost_spectrogram", "not a finite number"),
        ("name,filters\ncnn_8,48\n", "cnn_7", "no such row; rows: cnn_8"),
        ("name,fliters\ncnn_8,48\n", "cnn_8", "unknown column(s) fliters"),
        ("row,filters\ncnn_8,48\n", "cnn_8", "no 'name' column"),
        ("name,filters\ncnn_8,48\ncnn_8,40\n", "cnn_8", "appears more than once"),
        ("name,filters\ncnn_8,48,3\n", "cnn_8", "line 2 has 3 cells"),
        ("", "cnn_8", "the file is empty"),
    ],
)
def test_a_bad_file_is_refused_with_one_line(tmp_path, text, row, reason):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ParamsError) as error:
        load_params(row, path)
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message and repr(row) in message and reason in message
    assert isinstance(error.value, ValueError)


def test_a_missing_file_or_row_is_refused_with_one_line(tmp_path):
    with pytest.raises(ParamsError, match=r"cannot read the file") as error:
        load_params("cnn_8", tmp_path / "absent.csv")
    assert "\n" not in str(error.value) and "absent.csv" in str(error.value)
    with pytest.raises(ParamsError, match=r"row 'cnn_9': no such row; rows: cnn_8, ") as error:
        load_params("cnn_9")
    assert "\n" not in str(error.value) and "networks.csv" in str(error.value)


def test_a_builder_names_the_parameters_it_lacks():
    with pytest.raises(ParamsError, match=r"build_cnn \(cnn\) needs filters, kernel"):
        build_cnn(8, {"conv_layers": 3, "pool_size": 2})
    with pytest.raises(ParamsError, match=r"needs l2"):
        build_resnet(8, load_params("cnn_8"))
    with pytest.raises(ParamsError, match=r"leave nothing of a 130x20 patch"):
        build_cnn(8, {**load_params("cnn_8"), "conv_layers": 5})
    with pytest.raises(ParamsError, match=r"compile_network needs learning_rate"):
        check_required({}, ["learning_rate"], needed_by="compile_network")


# ---------------------------------------------------------------- registry


def test_registry_knows_the_six_models():
    assert ARCHITECTURE_NAMES == (
        "cnn8",
        "cnn2",
        "resnet8",
        "resnet2",
        "hybrid_cnn_xgboost",
        "hybrid_resnet_xgboost",
    )
    for arch in ARCHITECTURES:
        assert isinstance(arch, Architecture) and get_architecture(arch.name) is arch
        assert arch.family in ("cnn", "resnet")
        assert all(row.startswith(arch.family + "_") for row in arch.network_rows)
        assert len(arch.network_rows) == (2 if arch.two_stage else 1)
        assert not (arch.two_stage and arch.hybrid)
        assert arch.description
    assert get_architecture("cnn2").network_rows == ("cnn_2", "cnn_7")
    assert get_architecture("resnet2").network_rows == ("resnet_2", "resnet_7")
    assert get_architecture("hybrid_cnn_xgboost").network_rows == ("cnn_8",)
    assert get_architecture("hybrid_resnet_xgboost").network_rows == ("resnet_8",)
    with pytest.raises(KeyError, match="known: cnn8, cnn2, resnet8, resnet2, hybrid_cnn"):
        get_architecture("cnn3")
    with pytest.raises(AttributeError):
        get_architecture("cnn8").name = "other"  # frozen


@pytest.mark.parametrize("n_classes", [3, 7])
def test_heads_follow_the_number_of_classes(n_classes):
    for arch in ARCHITECTURES:
        heads = [arch.head(row, n_classes) for row in arch.network_rows]
        if arch.two_stage:
            assert heads == [(2, "softmax"), (n_classes, "sigmoid")]
            assert (arch.detector_row, arch.classifier_row) == arch.network_rows
        else:
            assert heads == [(n_classes + 1, "sigmoid")]
    with pytest.raises(ValueError):
        get_architecture("cnn8").head("cnn_8", 0)
    with pytest.raises(KeyError):
        get_architecture("cnn8").head("cnn_7", 7)


# ---------------------------------------------------------------- network sizes and shapes


def test_cnn_parameter_counts_match_the_seed():
    assert CNN_8_PARAMS == 569_048
    cnn_8 = build_cnn(8, load_params("cnn_8"))
    assert cnn_8.count_params() == 569_048
    assert cnn_8.get_layer("flatten").output.shape == (None, 1536)
    assert cnn_8.get_layer("embedding").output.shape == (None, 320)
    detector = build_cnn(2, load_params("cnn_2"), activation="softmax")
    assert detector.count_params() == CNN_2_PARAMS == pytest.approx(211_000, rel=0.02)
    assert detector.get_layer("embedding").output.shape == (None, 384)
    classifier = build_cnn(7, load_params("cnn_7"))
    assert classifier.get_layer("dense_1").output.shape == (None, 512)
    assert classifier.get_layer("embedding").output.shape == (None, 512)
    assert [layer.name for layer in classifier.layers if layer.name.startswith("conv_")] == [
        "conv_1",
        "conv_2",
        "conv_3",
    ]


def test_resnet_parameter_count_and_embedding(resnets):
    resnet = resnets(8)
    assert resnet.count_params() == pytest.approx(23_600_000, rel=0.02)
    assert resnet.get_layer("embedding").output.shape == (None, 2048)
    assert resnet.get_layer("stage5_block1_out").output.shape == (None, 5, 1, 2048)
    convs = [layer for layer in resnet.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 1 + 3 * 16 + 4  # stem, 3 per bottleneck, 4 projections
    assert all(layer.kernel_regularizer is not None for layer in convs)
    assert resnet.get_layer("output").kernel_regularizer is not None


@pytest.mark.parametrize("n_classes", [3, 7])
@pytest.mark.parametrize("name", ["cnn8", "cnn2", "hybrid_cnn_xgboost"])
def test_cnn_networks_give_probabilities(name, n_classes):
    arch = get_architecture(name)
    networks = build_networks(arch, n_classes)
    assert tuple(networks) == arch.network_rows
    for row, network in networks.items():
        n_outputs, activation = arch.head(row, n_classes)
        assert network.name == row
        probabilities = np.asarray(network.predict(PATCHES, verbose=0))
        assert probabilities.shape == (4, n_outputs)
        assert np.all((probabilities >= 0) & (probabilities <= 1))
        if activation == "softmax":
            np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("n_classes", [3, 7])
def test_resnet_networks_give_probabilities(resnets, n_classes):
    for n_outputs, activation in [(n_classes + 1, "sigmoid"), (n_classes, "sigmoid")]:
        probabilities = np.asarray(resnets(n_outputs, activation).predict(PATCHES, verbose=0))
        assert probabilities.shape == (4, n_outputs)
        assert np.all((probabilities >= 0) & (probabilities <= 1))
    detector = np.asarray(resnets(2, "softmax").predict(PATCHES, verbose=0))
    assert detector.shape == (4, 2)
    np.testing.assert_allclose(detector.sum(axis=1), 1.0, rtol=1e-5)


def test_build_networks_makes_two_resnets_for_resnet2():
    networks = build_networks("resnet2", 3)
    assert list(networks) == ["resnet_2", "resnet_7"]
    assert networks["resnet_2"].output.shape == (None, 2)
    assert networks["resnet_7"].output.shape == (None, 3)
    assert networks["resnet_2"].get_layer("output").get_config()["activation"] == "softmax"


def test_impossible_heads_are_refused():
    with pytest.raises(ValueError, match="at least 2 outputs"):
        build_cnn(1, load_params("cnn_2"), activation="softmax")
    with pytest.raises(ValueError, match="not one of"):
        build_cnn(8, load_params("cnn_8"), activation="relu")
    with pytest.raises(ValueError, match="positive integer"):
        build_resnet(0, load_params("resnet_8"))


# ---------------------------------------------------------------- training and saving


def bright_row_patches(n, seed=0):
    """Noise patches with one bright frequency row; the label says it is in the top half."""
    rng = np.random.default_rng(seed)
    patches = rng.random((n, 130, 20, 1), dtype=np.float32) * 0.2
    labels = np.arange(n) % 2
    rows = np.where(labels == 1, rng.integers(0, 65, n), rng.integers(65, 130, n))
    patches[np.arange(n), rows, :, 0] = 1.0
    return patches, labels.astype(np.float32)[:, None]


def test_a_cnn_learns_a_toy_target():
    keras.utils.set_random_seed(0)
    patches, labels = bright_row_patches(64)
    params = {**load_params("cnn_8"), "learning_rate": 1e-3}
    network = compile_network(build_cnn(1, params), params)
    assert network.loss == "binary_crossentropy"
    before = network.evaluate(patches, labels, verbose=0)
    history = network.fit(patches, labels, epochs=2, batch_size=16, shuffle=True, verbose=0)
    after = network.evaluate(patches, labels, verbose=0)
    assert len(history.history["loss"]) == 2
    assert after < before - 0.02


def test_a_detector_compiles_with_categorical_cross_entropy():
    params = load_params("cnn_2")
    network = compile_network(build_cnn(2, params, activation="softmax"), params)
    assert network.loss == "categorical_crossentropy"
    assert network.optimizer.learning_rate.numpy() == pytest.approx(params["learning_rate"])
    assert float(network.optimizer.beta_1) == params["beta_1"]


@pytest.mark.parametrize("family", ["cnn", "resnet"])
def test_a_saved_network_loads_safely_and_predicts_the_same(tmp_path, family, resnets):
    if family == "cnn":  # trained for one epoch, so that its optimizer state is saved too
        params = load_params("cnn_8")
        network = compile_network(build_cnn(4, params, name="cnn_8"), params)
        patches, labels = bright_row_patches(8)
        network.fit(patches, np.repeat(labels, 4, axis=1), epochs=1, batch_size=8, verbose=0)
    else:
        network = resnets(4)
    path = tmp_path / f"{family}.keras"
    network.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in loaded.layers)
    np.testing.assert_allclose(
        loaded.predict(PATCHES, verbose=0), network.predict(PATCHES, verbose=0), rtol=1e-6
    )
    assert loaded.get_layer("embedding").output.shape == network.get_layer("embedding").output.shape
