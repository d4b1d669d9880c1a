"""Training on one's own species and annotations: any class list, detection-only data, annotated
windows, classes only in the test split, and fine-tuning from a trained bundle (``--from``)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.annotations.dataset import DETECTION_ONLY_CLASS, read_dataset
from pipeline.cli import main
from pipeline.evaluation.recordings import inside_windows
from pipeline.io.annotations import RecordingCalls
from pipeline.model.bundle import DEFAULT_BUNDLE, load_bundle
from pipeline.outputs.parts import read_detections
from pipeline.sampling import SamplingSettings, column_of, recording_samples
from pipeline.simulation import simulate_archive
from pipeline.training.job import TrainSettings, train

#: Group -> a name of the kind users write: spaces, accents, another script.
NAMES = {
    1: "Barbastelle d'Europe", 2: "Sérotine commune", 3: "Murin à moustaches", 4: "Pipistrelle de Nathusius",
    5: "Pipistrelle commune", 6: "Oreillard roux", 7: "Большой подковонос",
}  # fmt: skip


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    return root, simulate_archive(root / "audio", minutes=0.5, seed=12, empty_fraction=0.2, test_fraction=0.4)


def _calls(archive_) -> pd.DataFrame:
    return pd.read_csv(archive_.annotations_csv)


@pytest.mark.slow
def test_any_class_list_end_to_end(archive, tmp_path, capsys):
    """Names with spaces and non-ASCII characters, as many as the data has, through train,
    detect (Parquet, CSV, Raven), evaluate and the reports."""
    root, sim = archive
    calls = _calls(sim)
    calls["class"] = calls["class"].map(NAMES)
    only_in_test = calls.index[calls["split"] == "test"][:3]
    calls.loc[only_in_test, "class"] = "Nyctinomus teniotis"  # a class training never sees
    dataset = tmp_path / "calls.csv"
    calls[["file", "position", "class", "split", "duration"]].to_csv(dataset, index=False)
    model = tmp_path / "model"
    code = main([
        "train", str(dataset), "--audio", str(sim.root), "--out", str(model), "--model-type", "cnn8",
        "--epochs", "2", "--cube", str(root / "cube.zarr"), "--workers", "1", "-q",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    trained = sorted({NAMES[k] for k in pd.read_csv(sim.annotations_csv).query("split == 'train'")["class"]})
    assert load_bundle(model).classes == trained
    assert "'Nyctinomus teniotis' is only in the test split (3 calls)" in out

    results = tmp_path / "results"
    assert main(["detect", str(sim.root), "--out", str(results), "--model", str(model), "--workers", "1", "-q",
                 "--threshold", "0.05"]) in (0, 3)  # fmt: skip
    table = read_detections(results)
    assert [c for c in table.columns if c.startswith("prob_")] == [f"prob_{name}" for name in trained]
    assert set(table["class"]) <= set(trained) and len(table)
    raven = "".join(p.read_text() for p in (results / "raven").glob("*.txt"))
    assert any(name in raven for name in trained)
    assert set(pd.read_csv(results / "detections.csv")["predicted_species"]) <= set(trained)
    assert any(name in (results / "report.txt").read_text() for name in trained)

    capsys.readouterr()
    code = main(["evaluate", str(model), str(dataset), "--audio", str(sim.root), "--cube", str(root / "cube.zarr"),
                 "--json", "--workers", "1", "-q"])  # fmt: skip
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert code == 0 and set(result["classification"]["per_class"]) == set(trained)
    assert "Nyctinomus teniotis" in captured.err  # the class the model lacks is named


@pytest.mark.slow
def test_detection_only_data_gives_a_single_bat_class(archive, tmp_path, client):
    root, sim = archive
    calls = _calls(sim)[["file", "position", "split", "duration"]]  # no class column
    dataset = tmp_path / "calls.csv"
    calls.to_csv(dataset, index=False)
    model = tmp_path / "detector"
    report = train(dataset, sim.root, model, settings=TrainSettings(model_type="hybrid_cnn_xgboost", epochs=1),
                   cube=root / "cube.zarr", client=client, progress=False)  # fmt: skip
    bundle = load_bundle(model)
    assert bundle.classes == [DETECTION_ONLY_CLASS] and report.classes == [DETECTION_ONLY_CLASS]
    assert set(report.metrics["classification"]["per_class"]) == {DETECTION_ONLY_CLASS}
    assert report.metrics["detection"]["n_events"] == (calls["split"] == "test").sum()


def test_a_class_only_in_the_test_split_is_reported_and_counts_for_detection_only(tmp_path):
    calls = pd.DataFrame({
        "file": ["a", "a", "b", "c"], "position": [0.1, 0.4, 0.2, 0.3], "split": ["train", "train", "test", "test"],
        "class": ["Myotis myotis", "Eptesicus", "Myotis myotis", "Tadarida teniotis"],
    })  # fmt: skip
    path = tmp_path / "calls.csv"
    calls.to_csv(path, index=False)
    dataset = read_dataset(path)
    assert dataset.classes == ["Eptesicus", "Myotis myotis"]
    assert any("'Tadarida teniotis' is only in the test split (1 calls)" in note for note in dataset.notes)
    test = {rec.file: rec for rec in dataset.test}
    assert list(test["b"].classes) == [2] and list(test["c"].classes) == [0]  # 0: detection only
    recoded = dataset.recoded(["Myotis myotis"])
    assert [list(r.classes) for r in recoded.train] == [[1, 0]]


def test_detection_only_flag_and_unknown_species(tmp_path):
    calls = pd.DataFrame({"file": ["a", "a", "a"], "position": [0.1, 0.3, 0.5], "class": ["Pip pip", None, "Bat"]})
    path = tmp_path / "calls.csv"
    calls.to_csv(path, index=False)
    mixed = read_dataset(path)
    assert mixed.classes == ["Pip pip"] and list(mixed.train[0].classes) == [1, 0, 0]
    assert read_dataset(path, detection_only=True).classes == [DETECTION_ONLY_CLASS]


def test_unknown_species_targets_are_masked_not_negative():
    rec = RecordingCalls("x", 2.0, np.array([0.5, 1.0, 1.0]), np.array([0, 2, 0]))
    starts, targets = recording_samples(rec, 3, 0.00116, 1700, np.random.default_rng(0))
    positives = targets[:, 0] == 0
    assert np.isnan(targets[positives][:3, 1:]).all()  # the call of unknown species: classes unknown
    assert (targets[positives][3:, 2] == 1).all() and np.isnan(targets[positives][3:, [1, 3]]).all()
    assert not np.isnan(targets[~positives]).any()


def test_negatives_are_drawn_only_inside_the_annotated_windows():
    step, settings = 0.00116, SamplingSettings()
    windows = np.array([[0.20, 0.45], [1.50, 1.62]])
    rec = RecordingCalls("x", 3.0, np.array([0.3, 1.55]), np.array([1, 1]), windows=windows)
    for seed in range(20):
        starts, targets = recording_samples(rec, 1, step, 2500, np.random.default_rng(seed), settings)
        negatives = starts[targets[:, 0] == 1]
        assert len(negatives)
        begin, end = negatives * step, (negatives + settings.window_columns) * step
        inside = ((begin[:, None] >= windows[None, :, 0] - 1e-9) & (end[:, None] <= windows[None, :, 1] + 1e-9))
        assert inside.any(axis=1).all()
    whole = RecordingCalls("x", 3.0, rec.positions, rec.classes)
    starts, targets = recording_samples(whole, 1, step, 2500, np.random.default_rng(0), settings)
    assert (starts[targets[:, 0] == 1] * step > 1.7).any()  # without windows: anywhere


def test_labelled_negatives_give_windows_at_their_positions():
    step = 0.00116
    rec = RecordingCalls("x", 2.0, np.array([0.3]), np.array([1]), negatives=np.array([1.2, 0.31]))
    starts, targets = recording_samples(rec, 1, step, 1700, np.random.default_rng(0))
    negatives = set(starts[targets[:, 0] == 1].tolist())
    assert set(column_of(1.2 + np.array([-0.0015, 0, 0.0015]), step).tolist()) <= negatives
    assert column_of(0.31, step) not in negatives  # too close to the call: no window


def test_evaluation_counts_only_inside_windows():
    assert inside_windows(np.array([0.1, 0.5, 0.95, 1.0]), np.array([[0.0, 0.2], [0.9, 1.0]])).tolist() == [
        True, False, True, False]  # fmt: skip


def test_masked_loss_equals_keras_where_targets_are_known_and_skips_unknown():
    import keras

    from pipeline.model.registry import masked_binary_crossentropy

    rng = np.random.default_rng(0)
    y_pred = rng.uniform(0.01, 0.99, (5, 4)).astype(np.float32)
    y_true = rng.integers(0, 2, (5, 4)).astype(np.float32)
    expected = keras.losses.binary_crossentropy(y_true, y_pred).numpy()
    np.testing.assert_allclose(np.asarray(masked_binary_crossentropy(y_true, y_pred)), expected, rtol=1e-5)
    partial = y_true.copy()
    partial[:, 2:] = np.nan
    only_known = keras.losses.binary_crossentropy(y_true[:, :2], y_pred[:, :2]).numpy()
    np.testing.assert_allclose(np.asarray(masked_binary_crossentropy(partial, y_pred)), only_known, rtol=1e-5)


@pytest.mark.slow
def test_from_starts_from_the_parent_weights_and_changes_the_class_list(archive, tmp_path, client):
    """The new model's trunk is the parent's (first phase: the new output layer alone; second
    phase here at rate 0), its output layer has the new classes, and the manifest names the parent."""
    root, sim = archive
    calls = _calls(sim)
    calls["class"] = np.where(calls["class"] == 1, "Barbastella", "other bat")
    dataset = tmp_path / "two.csv"
    calls.to_csv(dataset, index=False)
    model = tmp_path / "fine-tuned"
    settings = TrainSettings(model_type="hybrid_cnn_xgboost", epochs=1, parent="default", head_epochs=1,
                             fine_tune_rate=0.0)  # fmt: skip
    train(dataset, sim.root, model, settings=settings, cube=root / "cube.zarr", client=client, progress=False)
    child, parent = load_bundle(model), load_bundle(DEFAULT_BUNDLE)
    assert child.classes == ["Barbastella", "other bat"]
    new, old = child.network("cnn_8"), parent.network("cnn_8")
    for a, b in zip(new.weights[:-2], old.weights[:-2]):  # every layer but the output
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert new.weights[-2].shape == (320, 3) and old.weights[-2].shape == (320, 8)
    record = child.manifest["training"]["parent"]
    assert record["architecture"] == parent.architecture and record["classes"] == parent.classes
    assert len(child.boosters()) == 3
    scratch = tmp_path / "scratch"
    train(dataset, sim.root, scratch, settings=TrainSettings(model_type="hybrid_cnn_xgboost", epochs=1),
          cube=root / "cube.zarr", client=client, progress=False)  # fmt: skip
    assert not np.array_equal(load_bundle(scratch).network("cnn_8").weights[0].numpy(), old.weights[0].numpy())


def test_the_validation_split_is_stratified_and_the_same_every_time():
    """Rare classes land on both sides of the split, and the split does not depend on numpy's
    global random state (scikit-multilearn draws its ties from it)."""
    from pipeline.training.job import _split_validation

    recordings = [RecordingCalls(f"r{i}", 1.0, np.array([0.1, 0.2]), np.array([1 + (i % 2), 3 if i < 10 else 1]))
                  for i in range(20)]  # fmt: skip
    splits = []
    for noise in range(3):
        np.random.seed(noise)
        fit, validation = _split_validation(recordings, 0.2, seed=5, n_classes=3)
        splits.append(sorted(r.file for r in validation))
        assert 3 <= len(validation) <= 5  # about a fifth (iterative stratification is greedy)
        for k in (2, 3):  # on half the recordings each: on both sides of the split
            assert 0 < sum(k in r.classes for r in validation) < len(validation)
            assert any(k in r.classes for r in fit)
    assert splits[0] == splits[1] == splits[2]
