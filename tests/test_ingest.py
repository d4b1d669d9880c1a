"""The spectrogram cube built by Dask: content, layout, bad files, resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask.config
import numpy as np
import pytest
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.utils import key_split

from pipeline import spectrogram as sg
from pipeline.cli import main
from pipeline.config import IngestSettings, Settings, SpectrogramSettings
from pipeline.ingestion import ingest
from pipeline.io import audio
from pipeline.io.cube import JOURNAL, CubeError, open_cube
from pipeline.testing import write_tone

SMALL_CHUNKS = Settings(ingest=IngestSettings(chunk_columns=512))


def expected_columns(path: str, channel, settings=SpectrogramSettings()) -> np.ndarray:
    """The recording's spectrogram computed directly, whole, rounded like the cube."""
    info = audio.read_info(path)
    samples = audio.read_samples(path, channel=channel)
    return sg.spectrogram(samples, info.real_rate, settings).astype(np.float16)


@pytest.fixture(scope="module")
def built(mixed_archive, tmp_path_factory, client):
    root, corpus = mixed_archive
    cube = tmp_path_factory.mktemp("cube") / "night.zarr"
    report = ingest(root, cube, settings=SMALL_CHUNKS, client=client, progress=False)
    return root, corpus, cube, report


def test_cube_structure_and_attributes(built):
    _, _, path, report = built
    cube = open_cube(path)
    assert cube["spectrogram"].dtype == np.float16
    assert cube.sizes["frequency"] == 130
    assert cube["frequency"].attrs["units"] == "Hz" and cube["offset"].attrs["units"] == "s"
    assert cube["spectrogram"].encoding["chunks"] == (512, 130)
    assert cube.attrs["fingerprint"] == SpectrogramSettings().fingerprint()
    assert cube.attrs["complete"] == 1 and cube.attrs["batml_version"]
    assert cube.sizes["time"] == int(cube["n_columns"].sum())
    assert report.chunks_written == report.n_chunks > 1 and report.chunks_skipped == 0
    # opening is lazy: the spectrogram is a dask array
    assert cube["spectrogram"].chunks is not None


def test_every_recording_equals_its_direct_spectrogram(built):
    _, _, path, _ = built
    cube = open_cube(path)
    recordings = cube.batml.recordings
    ok = recordings[recordings["status"] == "ok"]
    assert len(ok) >= 10
    spanning = 0
    for r, rec in ok.iterrows():
        one = cube.batml.recording(r)
        channel = "mix" if rec["channel"] < 0 else int(rec["channel"])
        np.testing.assert_allclose(
            one["spectrogram"].values.astype(np.float32),
            expected_columns(rec["path"], channel).astype(np.float32),
            rtol=2e-3,
            atol=2e-3,
        )
        assert (one["recording_id"].values == r).all()
        step = SpectrogramSettings().column_step_s(rec["real_rate"])
        np.testing.assert_allclose(np.diff(one["offset"].values), step)
        spanning += rec["start"] // 512 != (rec["start"] + rec["n_columns"] - 1) // 512
    assert spanning > 0, "the test should cover recordings split across chunks"


def test_bad_files_are_rejected_with_their_reason_and_the_rest_goes_on(built):
    root, corpus, path, report = built
    manifest = open_cube(path).batml.manifest
    by_name = {Path(p).name: row for p, row in zip(manifest["path"], manifest.itertuples())}
    for name, expectation in corpus.items():
        if (root / "odd" / name).is_dir():
            assert name not in by_name
            continue
        row = by_name[name]
        if expectation == "ok":
            assert row.status == "ok", (name, row.reason)
        else:  # rejected from its header, or failed when decoded
            assert row.status in ("rejected", "failed") and expectation in row.reason, (name, row.reason)
    rejected = dict(report.rejected)
    failed = {p: reason for p, _, reason in report.failed}
    for name, expectation in corpus.items():
        if expectation != "ok" and not (root / "odd" / name).is_dir():
            full = str(root / "odd" / name)
            reason = rejected.get(full) or failed.get(full)
            assert reason and expectation in reason, (name, reason)
            assert "\n" not in reason
    assert not report.ok and report.complete


def test_stereo_files_give_one_recording_per_channel(built):
    _, _, path, _ = built
    recordings = open_cube(path).batml.recordings
    manifest = open_cube(path).batml.manifest
    stereo = manifest.index[(manifest["channels"] == 2) & (manifest["status"] == "ok")]
    assert len(stereo) >= 1
    for f in stereo:
        assert sorted(recordings.loc[recordings["file_index"] == f, "channel"]) == [0, 1]


def test_time_expanded_file_is_in_real_time(built):
    _, _, path, _ = built
    cube = open_cube(path)
    manifest = cube.batml.manifest
    te = manifest[manifest["time_expansion"] == 10]
    assert len(te) >= 1
    row = te.iloc[0]
    assert row["sample_rate"] * 10 == cube.batml.recordings.set_index("file_index").loc[te.index[0], "real_rate"]


def test_rerun_skips_everything_and_changes_nothing(built, client):
    root, _, path, _ = built
    before = open_cube(path)["spectrogram"].values
    report = ingest(root, path, settings=SMALL_CHUNKS, client=client, progress=False)
    assert report.chunks_written == 0 and report.chunks_skipped == report.n_chunks
    np.testing.assert_array_equal(open_cube(path)["spectrogram"].values, before)


def test_lost_chunks_are_recomputed_and_nothing_is_duplicated(built, client, tmp_path):
    root, _, path, _ = built
    copy = tmp_path / "copy.zarr"
    shutil.copytree(path, copy)
    markers = sorted((copy / JOURNAL).glob("chunk-*.json"))
    for marker in markers[1::3]:  # as if the run had died before these chunks
        marker.unlink()
    report = ingest(root, copy, settings=SMALL_CHUNKS, client=client, progress=False)
    assert report.chunks_written == len(markers[1::3])
    a, b = open_cube(path), open_cube(copy)
    np.testing.assert_array_equal(a["spectrogram"].values, b["spectrogram"].values)
    assert a.sizes == b.sizes


def test_other_settings_or_files_are_refused(built, client, tmp_path):
    root, _, path, _ = built
    other = Settings(spectrogram=SpectrogramSettings(smoothing_sigma=2.0), ingest=SMALL_CHUNKS.ingest)
    with pytest.raises(CubeError, match="other spectrogram settings"):
        ingest(root, path, settings=other, client=client, progress=False)
    archive = tmp_path / "archive"
    archive.mkdir()
    for wav in sorted(root.rglob("*.wav"))[:3]:
        shutil.copy(wav, archive / wav.name)
    cube = tmp_path / "small.zarr"
    ingest(archive, cube, settings=SMALL_CHUNKS, client=client, progress=False)
    shutil.copy(archive / sorted(os.listdir(archive))[0], archive / "new.wav")
    with pytest.raises(CubeError, match=r"archive changed .*\(1 new, 0 missing, 0 changed files\)"):
        ingest(archive, cube, settings=SMALL_CHUNKS, client=client, progress=False)
    (archive / "new.wav").unlink()
    os.utime(next(archive.iterdir()), (0, 0))
    with pytest.raises(CubeError, match=r"\(0 new, 0 missing, 1 changed files\)"):
        ingest(archive, cube, settings=SMALL_CHUNKS, client=client, progress=False)


def test_select_by_path_and_time_range(built):
    _, _, path, _ = built
    cube = open_cube(path)
    rec = cube.batml.recordings.query("status == 'ok' and channel == 0 and duration > 0.5").iloc[0]
    tail = "/".join(Path(rec["path"]).parts[-2:])
    one = cube.batml.recording(tail, channel=0)
    assert one.sizes["time"] == rec["n_columns"]
    part = cube.batml.time_range(tail, 0.1, 0.2, channel=0)
    assert part["offset"].min() >= 0.1 and part["offset"].max() < 0.2
    with pytest.raises(KeyError):
        cube.batml.recording("no/such/file.wav")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL to every process", "SIGTERM"])
def test_interrupted_run_resumes_to_the_same_cube(built, tmp_path, how):
    """Kill ``batml ingest`` (all its processes at once) or stop it with SIGTERM mid-run,
    run the same command again, and compare with an uninterrupted run."""
    root, _, reference, _ = built
    config = tmp_path / "batml.toml"
    config.write_text("[ingest]\nchunk_columns = 128\n")
    cube = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "pipeline.cli", "ingest", str(root), "--cube", str(cube),
           "--config", str(config), "--workers", "1", "-q"]  # fmt: skip
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    journal = cube / JOURNAL
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if journal.is_dir() and len(list(journal.glob("chunk-*.json"))) >= 5:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted mid-way"
    if how == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130 and "interrupted; run the same command again" in err
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert open_cube(cube).attrs["complete"] == 0
    assert main(["ingest", str(root), "--cube", str(cube), "--config", str(config), "--workers", "1", "-q"]) == 3
    a, b = open_cube(reference), open_cube(cube)
    assert b.attrs["complete"] == 1
    np.testing.assert_array_equal(a["spectrogram"].values, b["spectrogram"].values)
    assert list(a["status"].values) == list(b["status"].values)
    assert not [p for p in cube.parent.iterdir() if p.name.startswith(".killed.zarr.tmp")]


def test_cli_ingest_reports_and_exit_status(tmp_path, capsys, real_data):
    audio_dir = tmp_path / "real"
    shutil.copytree(real_data / "annotated", audio_dir)
    code = main(["ingest", str(audio_dir), "--cube", str(tmp_path / "r.zarr"), "--workers", "1", "-q"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "files: 3 (0 rejected)" in out
    cube = open_cube(tmp_path / "r.zarr")
    assert set(cube.batml.recordings["status"]) == {"ok"}
    meta = json.loads(cube.attrs["spectrogram_settings"])
    assert meta["window_s"] == 0.002322


def test_cli_error_is_one_line(tmp_path, capsys):
    code = main(["ingest", str(tmp_path / "missing"), "--cube", str(tmp_path / "c.zarr"), "-q"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("batml: error:") and err.count("\n") == 1


def test_an_fsspec_url_gives_the_same_cube_as_the_local_path(small_archive, client, tmp_path):
    archive = tmp_path / "few"
    archive.mkdir()
    for wav in sorted(small_archive.root.rglob("*.wav"))[:3]:
        shutil.copy(wav, archive / wav.name)
    local = ingest(archive, tmp_path / "local.zarr", client=client, progress=False)
    remote = ingest(f"file://{archive}", tmp_path / "url.zarr", client=client, progress=False)
    assert local.ok and remote.ok and remote.n_recordings == local.n_recordings == 3
    a, b = open_cube(tmp_path / "local.zarr"), open_cube(tmp_path / "url.zarr")
    np.testing.assert_array_equal(a["spectrogram"].values, b["spectrogram"].values)
    assert all(p.startswith("file://") for p in b["path"].values)


class _IngestTasks(SchedulerPlugin):
    """Counts the ingest tasks the scheduler sees, and the most it holds (not released) at once."""

    name = "test-ingest-tasks"

    def __init__(self):
        self.seen, self.held, self.peak = {}, set(), 0

    def transition(self, key, start, finish, *args, **kwargs):
        kind = key_split(key)
        if kind not in ("recording_statistics", "ingest_chunk"):
            return
        if finish in ("released", "forgotten"):
            self.held.discard(key)
        else:
            self.seen.setdefault(kind, set()).add(key)
            self.held.add(key)
            self.peak = max(self.peak, len(self.held))


def test_the_scheduler_holds_a_bounded_number_of_ingest_tasks(tmp_path, client):
    # 100 recordings, each split across 2 or 3 chunks: each needs its statistics task.
    for i in range(100):
        write_tone(tmp_path / "audio" / f"r{i:03d}.wav", 192_000, 0.1, 40_000.0)
    client.register_plugin(_IngestTasks())
    try:
        report = ingest(tmp_path / "audio", tmp_path / "c.zarr", settings=Settings(ingest=IngestSettings(chunk_columns=64)),
                        client=client, progress=False)  # fmt: skip
        seen, peak = client.run_on_scheduler(
            lambda dask_scheduler: (
                {k: len(v) for k, v in dask_scheduler.plugins[_IngestTasks.name].seen.items()},
                dask_scheduler.plugins[_IngestTasks.name].peak,
            )
        )
    finally:
        client.unregister_scheduler_plugin(_IngestTasks.name)
    assert report.ok and report.chunks_written == report.n_chunks
    assert seen == {"recording_statistics": 100, "ingest_chunk": report.n_chunks}
    # A few chunks per worker thread and their recordings' statistics, never the whole archive
    # (slack of 2: a released task may reach the scheduler after the next submission).
    in_flight = sum(client.nthreads().values()) * dask.config.get("batml.tasks_per_thread") + 2
    assert peak <= 2 * in_flight + 3 < 100
