"""Discovering an archive's recordings and building its manifest (pipeline.io.archive)."""

import os
from pathlib import Path

import dask.config
import fsspec
import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin

import pipeline.distributed  # noqa: F401  (batml's dask defaults)
from pipeline.config import SpectrogramSettings
from pipeline.io.archive import (
    MANIFEST_COLUMNS,
    ArchiveError,
    ArchiveNotFoundError,
    build_manifest,
    discover,
    manifest_row,
    read_manifest,
    write_manifest,
)
from pipeline.testing import OK, write_bad_corpus, write_tone

#: Found only when the samples are decoded; a header read sees a valid file.
NON_FINITE = "contains NaN or infinite samples"
DTYPES = {
    "size": "int64",
    "mtime": "float64",
    "sample_rate": "int64",
    "frames": "int64",
    "duration": "float64",
    "channels": "int64",
    "time_expansion": "float64",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return folder, write_bad_corpus(folder)


@pytest.fixture
def memory_corpus(corpus):
    """The corpus in fsspec's in-memory filesystem, under /archive-test, with more names.

    Returns the filesystem and, for each recording discovery must find there, the name
    of the local corpus file it copies.
    """
    folder, expectations = corpus
    fs = fsspec.filesystem("memory")
    copies = {name: name for name in expectations if name != "x.wav"}
    copies["x.wav/inside.wav"] = "pcm16.wav"
    for name, original in {**copies, "._pcm16.wav": "pcm16.wav", ".hidden/a.wav": "pcm16.wav"}.items():
        fs.pipe(f"/archive-test/{name}", (folder / original).read_bytes())
    yield fs, copies
    fs.rm("/archive-test", recursive=True)


def manifest_expectation(expected):
    return OK if expected == NON_FINITE else expected


def test_every_corpus_file_gets_its_expected_manifest_row(corpus):
    folder, expectations = corpus
    for name, expected in expectations.items():
        row = manifest_row(folder / name)
        assert list(row) == MANIFEST_COLUMNS
        assert row["path"] == str(folder / name)
        expected = manifest_expectation(expected)
        if expected == OK:
            assert (row["status"], row["reason"]) == ("ok", ""), name
            assert row["sample_rate"] > 0 and row["duration"] > 0, name
        else:
            assert row["status"] == "rejected", name
            assert expected in row["reason"] and "\n" not in row["reason"], name


def test_rejected_rows_keep_what_is_known(corpus):
    folder, _ = corpus
    too_low = manifest_row(folder / "rate_8khz.wav")
    assert (too_low["sample_rate"], too_low["channels"], too_low["subtype"]) == (8_000, 1, "PCM_16")
    text = manifest_row(folder / "text.wav")
    assert text["size"] == (folder / "text.wav").stat().st_size
    assert text["mtime"] == (folder / "text.wav").stat().st_mtime
    assert (text["sample_rate"], text["channels"], text["subtype"]) == (0, 0, None)
    assert np.isnan(text["duration"]) and np.isnan(text["time_expansion"])
    missing = manifest_row(folder / "missing.wav")
    assert (missing["status"], missing["reason"]) == ("rejected", "no such file")
    assert (missing["size"], missing["mtime"]) == (0, 0.0)


def test_manifest_options_reach_every_row(corpus):
    folder, _ = corpus
    path = folder / "guano_te10_50khz.wav"
    assert manifest_row(path)["time_expansion"] == 10.0
    assert "too low" in manifest_row(path, time_expansion=1)["reason"]
    strict = manifest_row(folder / "pcm16.wav", settings=SpectrogramSettings(min_sample_rate=500_000))
    assert "minimum 500000 Hz" in strict["reason"]


def test_build_manifest_never_raises_and_keeps_the_order_and_dtypes(corpus):
    folder, expectations = corpus
    paths = [str(folder / name) for name in reversed(list(expectations))] + [str(folder / "missing.wav")]
    df = build_manifest(paths)
    assert list(df.columns) == MANIFEST_COLUMNS
    assert df["path"].tolist() == paths
    assert df.dtypes[list(DTYPES)].astype(str).to_dict() == DTYPES
    assert all(isinstance(dtype, pd.StringDtype) for dtype in df.dtypes.drop(list(DTYPES)))
    dated = {Path(path).name for path in df.loc[df["timestamp"].notna(), "path"]}
    assert dated == {"guano_te10_50khz.wav", "guano_odd_data_padded.wav", "guano_odd_data_unpadded.wav"}
    readable = [manifest_expectation(expected) for expected in expectations.values()].count(OK)
    assert (df["status"] == "ok").sum() == readable
    assert build_manifest([]).shape == (0, len(MANIFEST_COLUMNS))


def test_distributed_manifest_equals_the_plain_one(corpus):
    folder, expectations = corpus
    paths = [str(folder / name) for name in expectations]
    plain = build_manifest(paths)
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster, Client(cluster) as client:
        batched = build_manifest(paths, client=client, batch_size=4, progress=True)
        single = build_manifest(paths, client=client, batch_size=len(paths))
    pd.testing.assert_frame_equal(batched, plain)
    pd.testing.assert_frame_equal(single, plain)


class _ManifestTasks(SchedulerPlugin):
    """Counts the manifest tasks the scheduler sees, and the most it holds (not released) at once."""

    name = "test-manifest-tasks"

    def __init__(self):
        self.seen, self.held, self.peak = set(), set(), 0

    def transition(self, key, start, finish, *args, **kwargs):
        if not str(key).startswith("_manifest_table"):
            return
        if finish in ("released", "forgotten"):
            self.held.discard(key)
        else:
            self.seen.add(key)
            self.held.add(key)
            self.peak = max(self.peak, len(self.held))


def test_distributed_manifest_holds_a_bounded_number_of_batch_tasks(tmp_path, client):
    paths = [str(write_tone(tmp_path / f"f{i:03d}.wav", 8000, 0.01, 1000.0)) for i in range(200)]
    client.register_plugin(_ManifestTasks())
    try:
        df = build_manifest(paths, client=client, batch_size=4)
        seen, peak = client.run_on_scheduler(
            lambda dask_scheduler: (len(dask_scheduler.plugins[_ManifestTasks.name].seen),
                                    dask_scheduler.plugins[_ManifestTasks.name].peak)
        )  # fmt: skip
    finally:
        client.unregister_scheduler_plugin(_ManifestTasks.name)
    pd.testing.assert_frame_equal(df, build_manifest(paths))
    assert seen == 50  # one task per batch of 4 files, never one per file
    # A few batches per worker thread at a time, not the archive (a released batch may reach
    # the scheduler just after the next one is submitted, hence the slack of 2).
    in_flight = sum(client.nthreads().values()) * dask.config.get("batml.tasks_per_thread") + 2
    assert peak <= in_flight + 2 < seen


def test_discover_finds_recordings_recursively_in_any_case_and_sorted(corpus):
    folder, expectations = corpus
    (folder / "notes.txt").write_text("not a recording")
    found = discover(folder)
    recordings = [name for name in expectations if name != "x.wav"]
    assert found == sorted(str(folder / name) for name in recordings)
    assert str(folder / "Chauve-souris été.wav") in found and str(folder / "UPPER.WAV") in found
    assert str(folder / "x.wav") not in found
    assert discover(str(folder)) == found


def test_discover_searches_folders_named_wav_skips_hidden_names_and_follows_links_once(tmp_path):
    write_tone(tmp_path / "site" / "night 1" / "a.wav", 384_000, 0.01, 40_000.0)
    write_tone(tmp_path / "site" / "x.wav" / "b.wav", 384_000, 0.01, 40_000.0)
    write_tone(tmp_path / "site" / "._a.wav", 384_000, 0.01, 40_000.0)
    write_tone(tmp_path / ".Trashes" / "c.wav", 384_000, 0.01, 40_000.0)
    (tmp_path / "site" / "loop").symlink_to(tmp_path / "site", target_is_directory=True)
    (tmp_path / "elsewhere").symlink_to(tmp_path / "site" / "night 1", target_is_directory=True)
    found = discover(tmp_path)
    assert found == [str(tmp_path / "elsewhere" / "a.wav"), str(tmp_path / "site" / "x.wav" / "b.wav")]
    assert os.path.realpath(found[0]) == os.path.realpath(tmp_path / "site" / "night 1" / "a.wav")


def test_discover_a_single_file_or_a_missing_root(tmp_path):
    path = write_tone(tmp_path / "one.wav", 384_000, 0.01, 40_000.0)
    assert discover(path) == [str(path)]
    with pytest.raises(ArchiveNotFoundError, match="no such folder") as caught:
        discover(tmp_path / "missing")
    assert str(caught.value) == f"{tmp_path / 'missing'}: no such folder"
    assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, ArchiveError)
    with pytest.raises(ArchiveNotFoundError):
        discover("memory://archive-test-missing")


def test_discover_warns_about_and_skips_a_folder_it_cannot_list(tmp_path, monkeypatch):
    write_tone(tmp_path / "a.wav", 384_000, 0.01, 40_000.0)
    locked = tmp_path / "locked"
    write_tone(locked / "b.wav", 384_000, 0.01, 40_000.0)
    scandir = os.scandir

    def refuse_locked(path):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse_locked)
    with pytest.warns(UserWarning, match="cannot list folder, skipped: .*Permission denied"):
        assert discover(tmp_path) == [str(tmp_path / "a.wav")]


def test_discover_and_manifest_through_fsspec_memory(memory_corpus, corpus):
    fs, copies = memory_corpus
    names = sorted(copies)
    found = discover("memory://archive-test")
    assert found == [f"memory://archive-test/{name}" for name in names]
    in_filesystem = discover("/archive-test", filesystem=fs)
    assert in_filesystem == [f"/archive-test/{name}" for name in names]
    local = build_manifest([str(corpus[0] / copies[name]) for name in names])
    columns = ["size", "sample_rate", "duration", "channels", "time_expansion", "status", "reason"]
    pd.testing.assert_frame_equal(build_manifest(found)[columns], local[columns])
    pd.testing.assert_frame_equal(build_manifest(in_filesystem, filesystem=fs)[columns], local[columns])


def test_manifest_parquet_round_trip(corpus, tmp_path):
    folder, expectations = corpus
    df = build_manifest([str(folder / name) for name in expectations])
    target = tmp_path / "manifest.parquet"
    write_manifest(df, target)
    write_manifest(df, target)
    assert os.listdir(tmp_path) == ["manifest.parquet"]
    again = read_manifest(target)
    pd.testing.assert_frame_equal(again, df)
    assert again.dtypes[list(DTYPES)].astype(str).to_dict() == DTYPES


def test_read_manifest_refuses_another_table(tmp_path):
    path = tmp_path / "other.parquet"
    pd.DataFrame({"path": ["a.wav"]}).to_parquet(path)
    with pytest.raises(ArchiveError, match="not a manifest .*size"):
        read_manifest(path)


@pytest.mark.realdata
def test_real_archive_is_discovered_and_every_recording_is_ok(real_data):
    # The recordings of batdetect2's repositories: 3 annotated, 9 from real detectors.
    found = discover(real_data / "annotated") + discover(real_data / "unannotated")
    assert len(found) == 12
    assert all(Path(path).suffix.lower() == ".wav" for path in found)
    df = build_manifest(found)
    assert (df["status"] == "ok").all(), df.loc[df["status"] != "ok", ["path", "reason"]]
    assert df["recorder"].notna().sum() == 8
