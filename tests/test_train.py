"""End to end: every one of the six models trains on a tiny simulated archive, is saved as a
bundle, loads back, and is evaluated; plus the CLI's train and evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.annotations.dataset import read_dataset
from pipeline.cli import main
from pipeline.model.bundle import load_bundle
from pipeline.model.predictor import Predictor
from pipeline.simulation import simulate_archive
from pipeline.training.job import TrainSettings, train

TINY_XGBOOST = "name,max_depth,eta,n_estimators,gamma,subsample,scale_pos_weight,min_child_weight\n" \
    "xgboost_spectrogram,4,0.3,20,0.001,0.9,1.5,1\n"  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    archive = simulate_archive(root / "audio", minutes=0.5, seed=12, empty_fraction=0.2, test_fraction=0.4)
    assert sum(len(r.positions) for r in read_dataset(archive.annotations_npz).test) > 0
    xgb = root / "xgboost.csv"
    xgb.write_text(TINY_XGBOOST)
    return root, archive, xgb


@pytest.mark.slow
@pytest.mark.parametrize(
    "model_type", ["cnn8", "hybrid_cnn_xgboost", "cnn2", "resnet8", "resnet2", "hybrid_resnet_xgboost"]
)
def test_every_model_trains_saves_loads_and_evaluates(tiny, client, model_type):
    root, archive, xgb = tiny
    out = root / f"model-{model_type}"
    report = train(
        archive.annotations_npz,
        archive.root,
        out,
        settings=TrainSettings(model_type=model_type, epochs=1, xgboost_csv=str(xgb), seed=1),
        cube=root / "cube.zarr",
        client=client,
        progress=False,
    )
    assert report.n_windows > 100
    bundle = load_bundle(out)
    assert bundle.architecture == model_type
    assert bundle.classes == read_dataset(archive.annotations_npz).classes
    assert set(bundle.thresholds) == {"detection", *bundle.classes}
    predictor = Predictor.from_bundle(bundle)
    probs = predictor(np.random.default_rng(0).random((3, 130, 20, 1), dtype=np.float32))
    assert probs.shape == (3, 8) and np.all((probs >= 0) & (probs <= 1))
    metrics = json.loads((out / "evaluation.json").read_text())
    assert 0 <= metrics["detection"]["ap"] <= 1
    assert set(metrics["classification"]["per_class"]) == set(bundle.classes)


@pytest.mark.slow
def test_cli_train_then_evaluate_json(tiny, tmp_path, capsys):
    root, archive, xgb = tiny
    model = tmp_path / "cnn8"
    code = main([
        "train", str(archive.annotations_npz), "--audio", str(archive.root), "--out", str(model),
        "--model-type", "cnn8", "--epochs", "1", "--cube", str(root / "cube.zarr"), "--workers", "1", "-q",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr()
    capsys.readouterr()
    code = main([
        "evaluate", str(model), str(archive.annotations_npz), "--audio", str(archive.root),
        "--cube", str(root / "cube.zarr"), "--json", "--workers", "1", "-q",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out)
    assert {"ap", "precision", "recall", "f1"} <= set(result["detection"])
    assert {"map", "per_class"} <= set(result["classification"])


def test_unknown_model_type_is_refused_by_the_cli(tiny, capsys):
    root, archive, _ = tiny
    with pytest.raises(SystemExit) as exit_:
        main(["train", str(archive.annotations_npz), "--audio", str(archive.root), "--out", str(root / "x"),
              "--model-type", "cnn9"])  # fmt: skip
    assert exit_.value.code == 2 and "invalid choice: 'cnn9'" in capsys.readouterr().err


@pytest.mark.slow
def test_hard_negative_mining_adds_the_model_s_mistakes(tiny, client):
    """One HNM round: false detections become negatives, missed calls extra positives, and the
    network is retrained from scratch on the larger set."""
    root, archive, _ = tiny
    common = dict(cube=root / "cube.zarr", client=client, progress=False)
    plain = train(archive.annotations_npz, archive.root, root / "plain",
                  settings=TrainSettings(model_type="cnn8", epochs=1, seed=3), **common)  # fmt: skip
    mined = train(archive.annotations_npz, archive.root, root / "mined",
                  settings=TrainSettings(model_type="cnn8", epochs=1, seed=3, hnm_rounds=1), **common)  # fmt: skip
    assert mined.n_windows > plain.n_windows
    manifest = load_bundle(root / "mined").manifest
    assert manifest["training"]["hnm_rounds"] == 1
    assert manifest["training"]["windows"] == mined.n_windows


def test_the_simulator_csv_reads_as_the_same_annotations_as_its_npz(tiny):
    _, archive, _ = tiny
    from_npz = read_dataset(archive.annotations_npz)
    from_csv = read_dataset(archive.annotations_csv)
    for split in ("train", "test"):
        with_calls = {r.file: r for r in getattr(from_npz, split) if len(r.positions)}
        csv = {r.file: r for r in getattr(from_csv, split)}
        assert set(csv) == set(with_calls)
        for name, rec in csv.items():
            assert rec.duration == pytest.approx(with_calls[name].duration)
            order = np.lexsort((with_calls[name].classes, with_calls[name].positions))
            np.testing.assert_allclose(rec.positions, with_calls[name].positions[order])
            np.testing.assert_array_equal(rec.classes, with_calls[name].classes[order])
