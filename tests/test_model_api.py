"""The model as the API (``pipeline.open_model()``): detect on a file, an array, a spectrogram or a
cube, the same calls as ``batml detect``; the top-level verbs; Dask client reuse; --debug logs."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import pipeline
from pipeline.cli import main
from pipeline.detection.schema import event_schema
from pipeline.io.audio import read_info, read_samples

REAL_FILE = "unannotated/0166_20240531_223911.wav"  # a dense Batlogger bat pass


@pytest.fixture(scope="module")
def model():
    return pipeline.open_model()


@pytest.fixture(scope="module")
def reference_run(real_data, tmp_path_factory):
    """``batml detect`` on one real recording, with a low threshold so that there are many calls."""
    audio = tmp_path_factory.mktemp("api") / "audio"
    audio.mkdir()
    shutil.copy(real_data / REAL_FILE, audio / "pass.wav")
    out = audio.parent / "out"
    code = main(["detect", str(audio), "--out", str(out), "--threshold", "0.3", "--workers", "1", "-q"])
    assert code == 0
    return audio / "pass.wav", out, pipeline.read_detections(out)


def _same_calls(ours: pd.DataFrame, theirs: pd.DataFrame, step: float) -> None:
    assert len(ours) == len(theirs) > 5
    np.testing.assert_allclose(ours["time"].to_numpy(), theirs["time"].to_numpy(), atol=step + 1e-9)
    assert ours["class"].tolist() == theirs["class"].tolist()


def test_the_model_object_describes_itself(model):
    assert model.architecture == "hybrid_cnn_xgboost"
    assert model.classes == list(model.manifest["classes"]) and len(model.classes) == 7
    assert set(model.thresholds) == {"detection", *model.classes}
    assert model.settings.fingerprint() == model.fingerprint
    probs = model.predict(np.zeros((4, model.settings.n_rows, 20), np.float32))
    assert probs.shape == (4, 8) and np.all((probs >= 0) & (probs <= 1))


@pytest.mark.realdata
def test_detect_on_a_real_file_an_array_and_a_cube_equals_batml_detect(model, reference_run):
    path, out, theirs = reference_run
    model = pipeline.open_model(thresholds={"detection": 0.3})
    step = model.settings.column_step_s(read_info(path).real_rate)
    from_file = model.detect(path)
    assert list(from_file.columns) == event_schema(model.classes).names
    _same_calls(from_file, theirs, step)
    samples = read_samples(path, channel=0)
    from_array = model.detect(samples, rate=read_info(path).real_rate, name="pass")
    _same_calls(from_array, theirs, step)
    assert set(from_array["file"]) == {"pass"}
    from_cube = model.detect(out / "cube.zarr")
    _same_calls(from_cube, theirs, step)
    cube = pipeline.open_cube(out / "cube.zarr")
    from_spectrogram = model.detect(cube.batml.recording(0)["spectrogram"])
    _same_calls(from_spectrogram, theirs, step)


@pytest.mark.realdata
def test_detect_a_folder_and_a_list_skips_bad_files_with_a_warning(model, reference_run, tmp_path):
    path, _, theirs = reference_run
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(path, folder / "good.wav")
    (folder / "bad.wav").write_text("not audio")
    with pytest.warns(UserWarning, match="bad.wav"):
        table = pipeline.open_model(thresholds={"detection": 0.3}).detect(folder)
    assert [f for f, _ in table.attrs["failed"]] == [str(folder / "bad.wav")]
    assert len(table) == len(theirs)


def test_import_pipeline_loads_neither_tensorflow_nor_matplotlib():
    code = "import sys, pipeline; pipeline.open_cube; print(sorted(m for m in ('tensorflow', 'keras', 'matplotlib', 'xgboost') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_top_level_verbs_are_the_commands():
    from pipeline.detection.archive import detect_archive
    from pipeline.evaluation.run import evaluate_saved_model
    from pipeline.ingestion import ingest
    from pipeline.training.job import train
    from pipeline.tuning import tune_model

    assert (pipeline.ingest, pipeline.detect, pipeline.train, pipeline.evaluate, pipeline.tune) == (
        ingest, detect_archive, train, evaluate_saved_model, tune_model)  # fmt: skip
    assert callable(pipeline.simulate) and isinstance(pipeline.open_model(), pipeline.model.model.Model)


def test_a_running_client_is_used_and_no_cluster_is_started(client, small_archive, tmp_path, monkeypatch):
    """With a distributed.Client in the process, pipeline.ingest runs on it: no LocalCluster is made."""
    import distributed

    started = []
    original = distributed.LocalCluster.__init__

    def spy(self, *args, **kwargs):
        started.append(args)
        original(self, *args, **kwargs)

    monkeypatch.setattr(distributed.LocalCluster, "__init__", spy)
    workers_before = set(client.scheduler_info()["workers"])
    report = pipeline.ingest(small_archive.root, tmp_path / "cube.zarr", progress=False)
    assert report.complete and started == []
    assert set(client.scheduler_info()["workers"]) == workers_before


def test_debug_keeps_a_failed_task_s_traceback_in_the_log(small_archive, tmp_path):
    """A bug inside a Dask task: one line on the terminal, the whole traceback in the debug log."""
    cube = tmp_path / "night.zarr"
    script = (
        "import sys, pipeline.ingestion as ing\n"
        "def broken(*a, **k):\n    raise RuntimeError('a bug deep in a task')\n"
        "ing.ingest_chunk = broken\n"
        "from pipeline.cli import main\n"
        f"sys.exit(main(['ingest', {str(small_archive.root)!r}, '--cube', {str(cube)!r}, '--workers', '1', '-q', '--debug']))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    log = tmp_path / "night.zarr.batml-debug.log"
    assert result.returncode == 1, result.stderr
    assert "a bug deep in a task" in result.stdout + result.stderr
    text = log.read_text()
    assert "Traceback" in text and "RuntimeError: a bug deep in a task" in text
    assert "Traceback" not in result.stdout  # the terminal gets the one line
