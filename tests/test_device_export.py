"""``batml export``: the device export and its reference runner (numpy + ONNX Runtime only)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "pipeline" / "model" / "default"


@pytest.fixture(scope="module")
def recordings(real_data, tmp_path_factory):
    """Two dense real passes (0166, 312.5 kHz) and an Echo Meter file (256 kHz); CC BY-NC 4.0."""
    folder = tmp_path_factory.mktemp("device-audio")
    files = sorted((real_data / "unannotated").glob("0166_*.wav"))[:2] + [real_data / "unannotated" / "Echometer.wav"]
    for f in files:
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from pipeline.model.device import export_device

    return export_device(None, tmp_path_factory.mktemp("device") / "default")


@pytest.fixture(scope="module")
def detected(recordings, tmp_path_factory):
    """``batml detect``'s events on the recordings (in this process)."""
    from pipeline.detection.archive import detect_archive
    from pipeline.outputs.parts import read_detections

    out = tmp_path_factory.mktemp("detected") / "out"
    report = detect_archive(recordings, out, cluster="in-process", progress=False)
    assert report.complete
    return read_detections(out)


def _run(runner: Path, files, out: Path, *options) -> list[str]:
    """Run the runner in a fresh interpreter; the heavy modules it imported."""
    script = textwrap.dedent(
        f"""
        import runpy, sys
        sys.argv = ["runner.py", *{[str(f) for f in files]!r}, "-o", {str(out)!r}, *{list(options)!r}]
        try:
            runpy.run_path({str(runner)!r}, run_name="__main__")
        except SystemExit as exc:
            assert not exc.code, exc.code
        heavy = ("pipeline", "tensorflow", "keras", "dask", "distributed", "xgboost", "scipy", "pandas", "onnx")
        print("IMPORTED", sorted({{m.split(".")[0] for m in sys.modules if m.split(".")[0] in heavy}}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("IMPORTED"))
    return eval(line.removeprefix("IMPORTED "))  # a list of names printed by the script above


def _by_recording(table: pd.DataFrame) -> pd.DataFrame:
    table = table.assign(name=[Path(f).name for f in table["file"]])
    return table.sort_values(["name", "channel", "time"]).reset_index(drop=True)


def test_the_export_holds_the_model_in_plain_files(exported):
    folder = exported.folder
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.txt", "boosters.npz", "model.json", "network.windows.onnx", "runner.py",
    ]  # fmt: skip
    model = json.loads((folder / "model.json").read_text())
    assert model["classes"][:2] == ["Barbarg", "Envsp"] and model["network"]["precision"] == "float"
    assert model["detection"]["booster_margin"] is None and model["detection"]["booster_gate"] == 0.01
    assert model["detection"]["scan_stride"] == 4
    readme = (folder / "README.txt").read_text()
    assert f"Terms of use of this model: {model['licence']}\n" in readme  # the bundled model's, from its manifest
    assert "research use only" in readme and "CC BY-NC 4.0" in readme  # its parent network's and its recordings'
    with np.load(folder / "boosters.npz", allow_pickle=False) as arrays:  # plain numbers, no pickle
        assert {"b0_left", "b7_value", "b3_base_margin"} <= set(arrays.files)
        assert all(arrays[k].dtype != object for k in arrays.files)
    assert 1e6 < exported.size_bytes < 5e6


def test_boosters_as_flat_arrays_equal_xgboost(real_data):
    from pipeline.model.bundle import load_bundle
    from pipeline.model.device import booster_arrays, forest_probabilities

    rng = np.random.default_rng(0)
    bundle = load_bundle(DEFAULT_MODEL)
    embedding = rng.gamma(0.5, 1.0, size=(500, 320)).astype(np.float32)
    embedding[rng.random(embedding.shape) < 0.5] = 0.0  # ReLU outputs: many exact zeros
    spread = []
    for booster in bundle.boosters().values():
        expected = booster.inplace_predict(embedding)
        got = forest_probabilities(booster_arrays(booster), embedding)
        assert len(np.unique(expected)) > 100  # the embeddings take many paths through the trees
        np.testing.assert_allclose(got, expected, atol=2e-6)
        spread.append(np.ptp(expected))
    assert np.median(spread) > 0.1  # over a real range of probabilities


def test_the_reference_runner_reproduces_batml_detect(exported, recordings, detected, tmp_path):
    """The runner (numpy, ONNX Runtime and, for batml's FFT, scipy.fft) finds batml detect's events
    at the same times with the same probabilities, and imports neither batml, TensorFlow nor Dask."""
    files = sorted(recordings.iterdir())
    imported = _run(exported.folder / "runner.py", files, tmp_path / "calls.csv")
    assert imported == ["scipy"]
    ours, theirs = _by_recording(pd.read_csv(tmp_path / "calls.csv")), _by_recording(detected)
    assert len(theirs) > 50 and set(theirs["name"]) == {f.name for f in files}
    assert list(ours.columns[:6]) == ["file", "channel", "time", "class", "probability", "score"]
    np.testing.assert_array_equal(ours["name"], theirs["name"])
    np.testing.assert_array_equal(ours["time"].to_numpy(), theirs["time"].to_numpy())
    np.testing.assert_array_equal(ours["class"], theirs["class"])
    probs = [c for c in theirs.columns if c.startswith("prob") or c == "score"]
    np.testing.assert_allclose(ours[probs].to_numpy(float), theirs[probs].to_numpy(float), atol=1e-5)


def test_with_numpy_s_fft_alone_the_runner_moves_few_events(exported, recordings, detected, tmp_path):
    """Without scipy (numpy's FFT rounds a few float32 values differently), the runner still finds
    batml's events, a few of them a column away."""
    files = sorted(recordings.iterdir())
    assert _run(exported.folder / "runner.py", files, tmp_path / "calls.csv", "--fft", "numpy") == []
    ours, theirs = _by_recording(pd.read_csv(tmp_path / "calls.csv")), _by_recording(detected)
    assert abs(len(ours) - len(theirs)) <= 0.02 * len(theirs)
    for name in set(theirs["name"]):
        a = ours.loc[ours["name"] == name, "time"].to_numpy()
        b = theirs.loc[theirs["name"] == name, "time"].to_numpy()
        distance = np.abs(b[:, None] - a[None, :]).min(axis=1)
        assert (distance == 0).mean() >= 0.95 and (distance < 0.0025).mean() >= 0.98


def test_int8_export_needs_the_bundle_s_int8_graphs_or_a_calibration(recordings, tmp_path, capsys):
    from pipeline.cli import main
    from pipeline.model.device import ExportError, export_device

    with pytest.raises(ExportError, match="holds no int8 graphs: give --calibration"):
        export_device(None, tmp_path / "int8", int8=True)
    assert main(["export", "--to", str(tmp_path / "litert"), "--format", "litert"]) == 1
    error = capsys.readouterr().err
    assert "litert is not written" in error and len(error.strip().splitlines()) == 1
    one = tmp_path / "calibration"
    one.mkdir()
    wav = sorted(recordings.glob("0166_*.wav"))[0]
    (one / wav.name).write_bytes(wav.read_bytes())
    assert main(["export", "--to", str(tmp_path / "int8"), "--int8", "--calibration", str(one)]) == 0
    assert "int8 network" in capsys.readouterr().out
    import onnx

    graph = onnx.load(str(tmp_path / "int8" / "network.windows.onnx"))
    assert sum(node.op_type == "QuantizeLinear" for node in graph.graph.node) >= 4
    assert json.loads((tmp_path / "int8" / "model.json").read_text())["network"]["precision"] == "int8"
    _run(tmp_path / "int8" / "runner.py", [wav], tmp_path / "int8.csv")
    assert len(pd.read_csv(tmp_path / "int8.csv")) > 10


def test_the_runner_applies_the_model_s_score_calibration(recordings, tmp_path):
    """With a calibrated model and a detection threshold below a raw score of 0.5, the runner keeps
    the peaks batml keeps (not only those that beat "not call") and reports the calibrated score."""
    import shutil

    import pipeline
    from pipeline.model.device import export_device

    bundle = shutil.copytree(DEFAULT_MODEL, tmp_path / "model")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["calibration"] = {"method": "isotonic", "raw": [0.0, 0.5, 1.0], "calibrated": [0.0, 0.8, 1.0], "peaks": 10, "matched": 5}
    manifest["thresholds"]["detection"] = 0.3  # a raw score of 0.1875
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    recording = sorted(recordings.iterdir())[0]

    theirs = pipeline.open_model(bundle).detect(recording)
    export = export_device(bundle, tmp_path / "export")
    _run(export.folder / "runner.py", [recording], tmp_path / "calls.csv")
    ours = pd.read_csv(tmp_path / "calls.csv").drop_duplicates("time").sort_values("time")
    theirs = theirs.drop_duplicates("time").sort_values("time")
    assert json.loads((export.folder / "model.json").read_text())["score_calibration"]["calibrated"] == [0.0, 0.8, 1.0]
    assert (theirs["score"] < 0.8).sum() >= 3  # events whose raw score is below 0.5
    np.testing.assert_array_equal(ours["time"].to_numpy(), theirs["time"].to_numpy())
    np.testing.assert_allclose(ours["score"].to_numpy(), theirs["score"].to_numpy(), atol=1e-6)
