"""``batml detect`` on Dask: exact chunk borders, outputs, resume, bad files, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import psutil
import pytest

from pipeline.cli import main
from pipeline.config import IngestSettings, Settings
from pipeline.detection.archive import DEFAULT_MODEL, detect_archive, is_cube
from pipeline.detection.recording import detect_recording
from pipeline.detection.settings import DetectError, DetectSettings
from pipeline.io.cube import open_cube
from pipeline.model.bundle import load_bundle
from pipeline.detection.scorers import model_scorer
from pipeline.model.inference import runtime_graphs
from pipeline.outputs.folder import parts_directory
from pipeline.outputs.parts import read_detections

#: Chunks of 512 columns (0.6 s): a 1-minute archive gives about a hundred chunk borders.
SMALL_CHUNKS = Settings(ingest=IngestSettings(chunk_columns=512))


@pytest.fixture(scope="module")
def detected(mixed_archive, tmp_path_factory, client):
    root, _ = mixed_archive
    out = tmp_path_factory.mktemp("run") / "out"
    report = detect_archive(root, out, ingest_settings=SMALL_CHUNKS, client=client, progress=False)
    return root, out, report


def _parts_frame(out) -> pd.DataFrame:
    return read_detections(out)


def test_the_default_model_is_bundled_and_loads():
    bundle = load_bundle(DEFAULT_MODEL)
    assert bundle.architecture == "hybrid_cnn_xgboost"
    assert len(bundle.classes) == 7
    sizes = [f.stat().st_size for f in DEFAULT_MODEL.rglob("*") if f.is_file()]
    assert max(sizes) < 5_000_000 and sum(sizes) < 8_000_000  # no file over 5 MB in the repository


def test_outputs_are_written_and_consistent(detected):
    _, out, report = detected
    assert report.complete and report.n_chunks > 50
    events = _parts_frame(out)
    assert len(events) == report.n_detections > 0
    assert list(events.columns[:6]) == ["file", "channel", "time", "class", "probability", "score"]
    bundle = load_bundle(DEFAULT_MODEL)
    assert (events["score"] >= bundle.thresholds["detection"]).all()
    csv = pd.read_csv(out / "detections.csv")
    assert list(csv.columns) == ["file_name", "predicted_time", "predicted_species", "predicted_prob"]
    assert set(csv["predicted_species"]) <= set(bundle.classes)
    assert report.calls_per_class == csv["predicted_species"].value_counts().reindex(bundle.classes, fill_value=0).to_dict()
    tables = sorted((out / "raven").glob("*.Table.1.selections.txt"))
    recordings = open_cube(out / "cube.zarr").batml.recordings
    assert len(tables) == recordings.loc[recordings["status"] == "ok", "path"].nunique()
    saved = json.loads((out / "report.json").read_text())
    assert saved["n_detections"] == len(events) and saved["complete"] is True
    assert not list(out.rglob(".*tmp*"))


def test_chunk_borders_change_nothing(detected):
    """Every recording's events equal those of detecting it whole, in memory, in one piece."""
    root, out, _ = detected
    cube = open_cube(out / "cube.zarr")
    bundle = load_bundle(DEFAULT_MODEL)
    settings = DetectSettings()
    predictor = model_scorer(  # what the workers score with: the runtime, the boosters near the peaks
        bundle, graphs=runtime_graphs(bundle), booster_gate=settings.booster_gate, booster_margin=settings.booster_margin
    )
    events = _parts_frame(out)
    recordings = cube.batml.recordings
    n_compared = 0
    for r in np.flatnonzero(recordings["status"] == "ok"):
        one = cube.batml.recording(int(r))
        if one.sizes["time"] < 3 * 512:
            continue  # only recordings cut by several chunk borders
        whole = detect_recording(
            predictor, one["spectrogram"].values.astype(np.float32), one["offset"].values, bundle.classes,
            bundle.thresholds, scan=DetectSettings().scan, calibration=bundle.calibration,
        )  # fmt: skip
        mine = events[(events["file"] == recordings["path"].iat[r]) & (events["channel"] == recordings["channel"].iat[r])]
        np.testing.assert_array_equal(mine["time"].to_numpy(), whole["time"].to_numpy())
        np.testing.assert_allclose(mine["score"].to_numpy(), whole["score"].to_numpy(), atol=1e-5)
        n_compared += 1
    assert n_compared >= 3


def test_bad_files_are_reported_and_the_run_goes_on(detected, mixed_archive):
    root, corpus = mixed_archive
    _, out, report = detected
    failed = dict(report.failed)
    assert not report.ok and report.complete
    for name, expected in corpus.items():
        if (root / "odd" / name).is_dir():  # not a recording: never listed
            assert not any(path.endswith("/" + name) for path in failed)
            continue
        reasons = [reason for path, reason in failed.items() if path.endswith("/" + name)]
        if expected == "ok":
            assert not reasons, (name, reasons)
        else:
            assert reasons and expected in reasons[0], (name, reasons)
    text = (out / "report.txt").read_text()
    assert all(f"failed: {path}" in text for path in failed)


def test_rerun_skips_every_chunk_and_gives_the_same_outputs(detected, client):
    root, out, first = detected
    before = _parts_frame(out)
    csv_before = (out / "detections.csv").read_bytes()
    again = detect_archive(root, out, ingest_settings=SMALL_CHUNKS, client=client, progress=False)
    assert again.chunks_skipped == first.n_chunks and again.chunks_detected == 0
    pd.testing.assert_frame_equal(_parts_frame(out), before)
    assert (out / "detections.csv").read_bytes() == csv_before


def test_lost_parts_are_detected_again_without_duplicates(detected, client, tmp_path):
    root, out, first = detected
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    parts = sorted(parts_directory(copy).glob("part-*.parquet"))
    for part in parts[::7]:
        part.unlink()
    (parts_directory(copy) / ".part-000001.parquet.tmp-dead").write_bytes(b"half")
    again = detect_archive(copy / "cube.zarr", copy, client=client, progress=False)
    assert again.chunks_detected == len(parts[::7])
    pd.testing.assert_frame_equal(_parts_frame(copy), _parts_frame(out))
    assert not list(parts_directory(copy).glob(".part-*"))


def test_another_threshold_or_fast_path_is_refused_in_the_same_out(detected, client):
    root, out, _ = detected
    with pytest.raises(DetectError, match="another thresholds"):
        detect_archive(out / "cube.zarr", out, settings=DetectSettings(thresholds={"detection": 0.9}), client=client, progress=False)
    with pytest.raises(DetectError, match="another settings"):
        detect_archive(out / "cube.zarr", out, settings=DetectSettings(scan_stride=1), client=client, progress=False)


def test_a_cube_is_recognised_and_a_bad_option_refused(detected, tmp_path, client):
    root, out, _ = detected
    assert is_cube(out / "cube.zarr") and not is_cube(root)
    with pytest.raises(DetectError, match="no class 'Nyctalus'"):
        detect_archive(out / "cube.zarr", tmp_path / "o", settings=DetectSettings(thresholds={"Nyctalus": 0.5}), client=client)
    with pytest.raises(DetectError, match="unknown output format"):
        DetectSettings(formats=("parquet", "xlsx"))


def test_dense_reference_scores_every_window_and_fast_path_agrees_on_strong_calls(detected, client, tmp_path):
    """The dense path (every window, boosters everywhere) and the fast one find the same
    strong calls on this archive (the benchmark measures the AP difference)."""
    root, out, _ = detected
    dense = detect_archive(
        out / "cube.zarr", tmp_path / "dense", settings=DetectSettings(scan_stride=1, scan_gamma=0, booster_gate=0, booster_margin=None),
        client=client, progress=False,
    )  # fmt: skip
    assert dense.complete
    fast, slow = _parts_frame(out), _parts_frame(tmp_path / "dense")
    strong = slow[slow["score"] > 0.99]
    matched = 0
    for row in strong.itertuples():
        near = fast[(fast["file"] == row.file) & (fast["channel"] == row.channel) & ((fast["time"] - row.time).abs() < 0.005)]
        matched += len(near) > 0
    assert matched >= 0.97 * len(strong)


# --- the command line ------------------------------------------------------------------------


def test_cli_detect_formats_threshold_and_exit_status(real_data, tmp_path, capsys):
    audio = tmp_path / "real"
    shutil.copytree(real_data / "annotated" / "audio", audio)
    out = tmp_path / "out"
    code = main(["detect", str(audio), "--out", str(out), "--format", "csv", "--threshold", "0.6", "--workers", "1", "-q"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert (out / "detections.csv").is_file() and not (out / "raven").exists()
    assert "files processed: 3" in printed
    events = _parts_frame(out)
    assert len(events) > 0 and (events["score"] >= 0.6).all()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--threshold", "x=y"], "is not a threshold"),
        (["--format", "xlsx"], "formats are a comma-separated list"),
    ],
)
def test_cli_bad_options_are_usage_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        main(["detect", str(tmp_path), "--out", str(tmp_path / "o"), *argv])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_cli_missing_model_is_one_line(tmp_path, capsys, small_archive):
    code = main(["detect", str(small_archive.root), "--out", str(tmp_path / "o"), "--model", str(tmp_path / "none"), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("batml: error:") and err.count("\n") == 1


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL to every process", "SIGKILL to a worker"])
def test_interrupted_run_resumes_to_the_same_outputs(detected, tmp_path, how):
    """Stop ``batml detect`` mid-run (SIGTERM; SIGKILL of every process) and run it again, or
    kill one worker while it runs: the outputs equal the uninterrupted run's."""
    root, reference, _ = detected
    out = tmp_path / "out"
    out.mkdir()
    shutil.copytree(reference / "cube.zarr", out / "cube.zarr")  # the same cube: compare detections only
    config = tmp_path / "batml.toml"
    config.write_text("[ingest]\nchunk_columns = 512\n")
    options = ["--out", str(out), "--config", str(config), "-q"]
    cmd = [sys.executable, "-m", "pipeline.cli", "detect", str(root), *options, "--workers", "2"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    parts = parts_directory(out)
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if parts.is_dir() and len(list(parts.glob("part-*.parquet"))) >= 10:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted mid-way"
    if how == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130 and "run the same command again" in err
    elif how == "SIGKILL to every process":
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    else:
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "spawn" in " ".join(p.cmdline())]
        assert workers, "no worker process found"
        max(workers, key=lambda p: p.memory_info().rss).kill()
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 3, err  # done; the bad files are reported
    if how != "SIGKILL to a worker":
        assert main(["detect", str(root), *options, "--workers", "1"]) == 3
    pd.testing.assert_frame_equal(_parts_frame(out), _parts_frame(reference))
    assert (out / "detections.csv").read_bytes() == (reference / "detections.csv").read_bytes()
    assert not list(out.rglob(".*tmp*"))
