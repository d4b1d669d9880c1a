"""The ResNets learn: batch-norm statistics re-estimated after training, and a ResNet50 trained
for a few steps on a tiny simulated archive (the real ``batml train`` path, ``fit_networks``)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import zarr  # noqa: E402

from pipeline.training.batch_norm import batch_norm_layers, estimation_batches, reestimate_batch_norm  # noqa: E402

# Keras's TensorFlow backend calls np.array on tensors in a way numpy 2 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

REFERENCE_PARAMS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reference_models" / "resnet_params.csv"

#: The reference's column for each of batml's (its resnet_params.csv).
REFERENCE_COLUMNS = {
    "l2": "L2_weight_decay",
    "batch_norm_momentum": "batch_norm_decay",
    "batch_norm_epsilon": "batch_norm_epsilon",
    "learning_rate": "learn_rate_adam",
    "beta_1": "beta_1",
    "beta_2": "beta_2",
    "adam_epsilon": "epsilon",
    "min_delta": "min_delta",
    "patience": "patience",
    "batch_size": "batchsize",
}


@pytest.mark.parametrize("row", ["resnet_8", "resnet_2", "resnet_7"])
def test_resnet_rows_are_the_reference_systems(row):
    import pandas as pd

    from pipeline.model.params import load_params

    if not REFERENCE_PARAMS.is_file():
        pytest.skip(f"the reference's resnet_params.csv not found at {REFERENCE_PARAMS} (see ../shared/data/README.md)")
    reference = pd.read_csv(REFERENCE_PARAMS, encoding="utf-8-sig").set_index("model").loc[row]
    ours = load_params(row)
    for column, theirs in REFERENCE_COLUMNS.items():
        assert ours[column] == pytest.approx(float(reference[theirs]), rel=1e-12), column


def small_network():
    """Dense -> batch norm, and the model of the batch norm's input."""
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, name="dense")(inputs)
    outputs = keras.layers.BatchNormalization(momentum=0.99, name="bn")(hidden)
    return keras.Model(inputs, outputs), keras.Model(inputs, hidden)


def test_batch_norm_statistics_become_the_mean_of_the_batches():
    keras.utils.set_random_seed(0)
    network, before_norm = small_network()
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc=3.0 * k, scale=1.0 + k, size=(16, 3)).astype(np.float32) for k in range(3)]
    assert reestimate_batch_norm(network, batches) == 3
    hidden = [np.asarray(before_norm(b)) for b in batches]
    layer = network.get_layer("bn")
    np.testing.assert_allclose(layer.moving_mean.numpy(), np.mean([h.mean(axis=0) for h in hidden], axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(), np.mean([h.var(axis=0) for h in hidden], axis=0), rtol=1e-4)
    assert layer.momentum == 0.99  # put back
    # the trainable weights are untouched
    np.testing.assert_array_equal(network.get_layer("dense").get_weights()[0], before_norm.get_layer("dense").get_weights()[0])


def test_a_frozen_batch_norm_keeps_its_statistics():
    network, _ = small_network()
    layer = network.get_layer("bn")
    layer.trainable = False
    assert batch_norm_layers(network) == []
    batch = np.full((8, 3), 5.0, dtype=np.float32)
    assert reestimate_batch_norm(network, [batch]) == 0
    np.testing.assert_array_equal(layer.moving_mean.numpy(), np.zeros(4))


def test_estimation_batches_are_whole_batches_of_distinct_windows():
    batches = estimation_batches(1000, 96, 500, seed=0)
    assert [len(b) for b in batches] == [96] * 5
    assert len(np.unique(np.concatenate(batches))) == 480
    assert [len(b) for b in estimation_batches(50, 96, 2048, seed=0)] == [50]
    assert estimation_batches(0, 96, 2048, seed=0) == []


@pytest.mark.slow
def test_a_resnet50_trained_a_few_steps_lowers_its_loss_and_finds_calls(tmp_path, client):
    """The real ResNet50 of row ``resnet_8`` (23.6 M parameters), the reference's rows, three
    epochs of about five steps on half a minute of simulated audio."""
    from pipeline.annotations.dataset import read_dataset
    from pipeline.ingestion import ingest
    from pipeline.io.cube import open_cube
    from pipeline.model.params import load_params
    from pipeline.model.registry import build_networks, compile_network, get_architecture
    from pipeline.sampling import build_samples
    from pipeline.simulation import simulate_archive
    from pipeline.training.job import TrainSettings
    from pipeline.training.networks import fit_networks
    from pipeline.windows import read_windows
    from sklearn.metrics import roc_auc_score

    archive = simulate_archive(tmp_path / "audio", minutes=0.5, seed=3, empty_fraction=0.0, test_fraction=0.4)
    cube_path = tmp_path / "cube.zarr"
    ingest(archive.root, cube_path, client=client, progress=False).require_complete()
    annotations = read_dataset(archive.annotations_npz)
    n_classes = len(annotations.classes)
    cube = open_cube(cube_path)
    train, _ = build_samples(annotations.train, cube, n_classes, seed=0)
    held_out, _ = build_samples(annotations.test, cube, n_classes, seed=1)
    is_call = held_out.targets[:, 0] < 0.5
    assert 300 < len(train) < 1000 and is_call.any() and (~is_call).any()

    arch = get_architecture("resnet8")
    rows = {"resnet_8": load_params("resnet_8")}
    keras.utils.set_random_seed(0)
    network = build_networks(arch, n_classes, rows)["resnet_8"]
    compile_network(network, rows["resnet_8"])
    windows = read_windows(zarr.open_array(f"{cube_path}/spectrogram", mode="r"), held_out.columns)
    before = network.evaluate(windows, held_out.targets, verbose=0, return_dict=True)

    histories = fit_networks(
        arch, {"resnet_8": network}, rows, str(cube_path), train, held_out,
        TrainSettings(model_type="resnet8", epochs=3, seed=0), progress=False,
    )  # fmt: skip
    history = histories["resnet_8"]
    assert len(history["cpu_seconds"]) == 3 and min(history["cpu_seconds"]) > 0
    assert len(history["batch_norm_cpu_seconds"]) == 3  # before each validation pass
    after = network.evaluate(windows, held_out.targets, verbose=0, return_dict=True)
    # the cross-entropy alone (the L2 penalties of ~50 kernels dominate Keras's "loss")
    assert after["cross_entropy"] < 0.5 * before["cross_entropy"]
    assert history["cross_entropy"][-1] < history["cross_entropy"][0]

    score = 1.0 - network.predict(windows, verbose=0)[:, 0]  # the call score of detection
    assert (score[is_call] > 0.5).mean() > 0.2  # detection needs score > P(not call)
    assert np.median(score[is_call]) > 0.5 > np.median(score[~is_call])
    assert roc_auc_score(is_call, score) > 0.6  # calls rank above the other windows
