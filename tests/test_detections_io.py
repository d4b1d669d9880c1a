"""The detection outputs: parts on disk, readers, the reference system's CSV, Raven tables, the report."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.detection.schema import event_schema, events_table, species_rows
from pipeline.outputs.folder import PARTS_DIRNAME, DetectionsError, part_path, remove_stale_temporaries
from pipeline.outputs.parts import (
    detection_classes,
    finished_parts,
    iter_parts,
    open_detections,
    read_detections,
    write_part,
)
from pipeline.outputs.raven import RAVEN_COMBINED_COLUMNS, raven_table_names, write_raven
from pipeline.outputs.reference_csv import recording_label, write_reference_csv
from pipeline.outputs.report import calls_per_class, write_report

CLASSES = ["Pip", "Nyc", "Myo"]


def _events(times, probs, scores=None) -> pd.DataFrame:
    """Events as find_detections gives them: time, column, score, prob_<name>."""
    probs = np.asarray(probs, dtype=np.float32).reshape(len(times), len(CLASSES))
    table = {
        "time": np.asarray(times, dtype=np.float64),
        "column": np.arange(len(times), dtype=np.int64) * 7,
        "score": np.asarray(scores if scores is not None else [0.9] * len(times), dtype=np.float32),
    }
    for k, name in enumerate(CLASSES):
        table[f"prob_{name}"] = probs[:, k]
    return pd.DataFrame(table)


def _random_part(rng, file, channel, n, t0=0.0) -> pd.DataFrame:
    probs = rng.uniform(0, 1, size=(n, len(CLASSES)))
    times = t0 + np.sort(rng.uniform(0, 10, size=n))
    return events_table(file, channel, _events(times, probs, rng.uniform(0.5, 1, n)), CLASSES)


def _temporaries(out) -> list[str]:
    """Hidden temporaries left in OUT or its folder of parts."""
    found = []
    for folder in (out, out / PARTS_DIRNAME):
        if folder.is_dir():
            found += [e.name for e in folder.iterdir() if e.name.startswith(".")]
    return found


# --------------------------------------------------------------------------------------------
# Parts


def test_events_table_schema_argmax_and_ties():
    events = _events([0.5, 1.25, 2.0], [[0.2, 0.7, 0.1], [0.6, 0.6, 0.3], [0.1, 0.2, 0.9]], [0.8, 0.7, 0.95])
    table = events_table("/data/a.wav", -1, events, CLASSES)
    assert list(table.columns) == list(event_schema(CLASSES).names)
    assert list(table.columns[:6]) == ["file", "channel", "time", "class", "probability", "score"]
    assert "column" not in table.columns
    assert list(table["class"]) == ["Nyc", "Pip", "Myo"]  # a tie goes to the first class
    np.testing.assert_array_equal(table["probability"], np.float32([0.7, 0.6, 0.9]))
    assert table["channel"].dtype == np.int32 and set(table["channel"]) == {-1}
    assert table["probability"].dtype == np.float32 and table["time"].dtype == np.float64
    empty = events_table("/data/a.wav", 0, events.iloc[:0], CLASSES)
    assert len(empty) == 0 and list(empty.columns) == list(table.columns)


def test_part_round_trip_keeps_values_types_and_classes(tmp_path):
    rng = np.random.default_rng(0)
    events = _random_part(rng, "/data/a.wav", 1, 40)
    path = write_part(tmp_path, 12, events)
    assert path == tmp_path / "detections.parquet" / "part-000012.parquet"
    table = pq.read_table(path)
    assert table.schema.equals(event_schema(CLASSES), check_metadata=False)
    assert json.loads(table.schema.metadata[b"batml"])["classes"] == CLASSES
    pd.testing.assert_frame_equal(table.to_pandas(), events)
    assert detection_classes(tmp_path) == CLASSES
    assert _temporaries(tmp_path) == []


def test_empty_part_is_written_with_its_schema(tmp_path):
    empty = events_table("/data/a.wav", 0, _events([], []), CLASSES)
    write_part(tmp_path, 0, empty)
    write_part(tmp_path, 1, pd.DataFrame(), classes=CLASSES)  # no columns at all, classes given
    for chunk in (0, 1):
        schema = pq.read_schema(part_path(tmp_path, chunk))
        assert schema.names == event_schema(CLASSES).names
        assert json.loads(schema.metadata[b"batml"])["classes"] == CLASSES
    assert finished_parts(tmp_path) == {0, 1}
    read = read_detections(tmp_path)
    assert len(read) == 0 and list(read.columns) == list(event_schema(CLASSES).names)


def test_write_part_refuses_events_not_of_the_schema(tmp_path):
    raw = _events([0.1], [[0.9, 0.1, 0.1]])  # find_detections output: 'column', no 'file'
    with pytest.raises(ValueError, match="events_table"):
        write_part(tmp_path, 0, raw)
    with pytest.raises(ValueError, match="prob_"):
        write_part(tmp_path, 0, pd.DataFrame())
    assert finished_parts(tmp_path) == set()
    assert _temporaries(tmp_path) == []


def test_finished_parts_ignores_temporaries_and_unreadable_files(tmp_path):
    events = _random_part(np.random.default_rng(1), "/data/a.wav", 0, 5)
    write_part(tmp_path, 2, events)
    write_part(tmp_path, 7, events)
    parts = tmp_path / "detections.parquet"
    # A killed run: a complete-looking temporary, a truncated temporary, a corrupt part.
    good_bytes = (parts / "part-000002.parquet").read_bytes()
    (parts / ".part-000003.parquet.tmp-0123abcd").write_bytes(good_bytes)
    (parts / ".part-000004.parquet.tmp-89ef").write_bytes(good_bytes[:50])
    (parts / "part-000005.parquet").write_bytes(b"PAR1 not really")
    (parts / "notes.txt").write_text("not a part")
    assert finished_parts(tmp_path) == {2, 7}
    assert finished_parts(parts) == {2, 7}  # the folder of parts itself works too
    assert finished_parts(tmp_path / "elsewhere") == set()
    # The temporaries go, the parts (even the corrupt one, which a rerun replaces) stay.
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [".part-000003.parquet.tmp-0123abcd", ".part-000004.parquet.tmp-89ef"]
    assert sorted(p.name for p in parts.iterdir()) == [
        "notes.txt", "part-000002.parquet", "part-000005.parquet", "part-000007.parquet",
    ]  # fmt: skip
    # The rerun of chunk 5 replaces the corrupt file.
    write_part(tmp_path, 5, events)
    assert finished_parts(tmp_path) == {2, 5, 7}


def test_readers_refuse_a_corrupt_part(tmp_path):
    write_part(tmp_path, 0, _random_part(np.random.default_rng(2), "/a.wav", 0, 3))
    (tmp_path / "detections.parquet" / "part-000001.parquet").write_bytes(b"garbage")
    with pytest.raises(DetectionsError, match="part-000001.parquet"):
        read_detections(tmp_path)


def test_parts_of_other_classes_are_refused(tmp_path):
    write_part(tmp_path, 0, _random_part(np.random.default_rng(3), "/a.wav", 0, 3))
    other = events_table("/b.wav", 0, pd.DataFrame({"time": [1.0], "score": [0.9], "prob_X": [0.8]}), ["X"])
    write_part(tmp_path, 1, other)
    with pytest.raises(DetectionsError, match="different models"):
        read_detections(tmp_path)


def test_parts_read_back_in_chunk_order_whatever_the_writing_order(tmp_path):
    rng = np.random.default_rng(4)
    # Recording /r/long.wav spans chunks 2 and 10 (the next chunk that holds events).
    chunk2 = pd.concat(
        [_random_part(rng, "/r/a.wav", 0, 30), _random_part(rng, "/r/long.wav", 0, 20, t0=0.0)],
        ignore_index=True,
    )
    chunk10 = _random_part(rng, "/r/long.wav", 0, 25, t0=10.0)
    write_part(tmp_path, 10, chunk10)
    write_part(tmp_path, 2, chunk2)
    read = read_detections(tmp_path)
    expected = pd.concat([chunk2, chunk10], ignore_index=True)
    pd.testing.assert_frame_equal(read, expected)
    long = read[read["file"] == "/r/long.wav"]["time"].to_numpy()
    assert np.all(np.diff(long) >= 0)  # one recording over two parts: still in time order
    # Many parts, of different sizes, written in random order.
    chunks = list(range(20, 60))
    random.Random(0).shuffle(chunks)
    parts = {c: _random_part(rng, f"/r/{c:03d}.wav", 0, int(rng.integers(0, 300))) for c in chunks}
    for c in chunks:
        write_part(tmp_path, c, parts[c])
    read = read_detections(tmp_path / "detections.parquet")
    expected = pd.concat([chunk2, chunk10, *(parts[c] for c in sorted(parts))], ignore_index=True)
    pd.testing.assert_frame_equal(read, expected)
    assert [c for c, _ in iter_parts(tmp_path)] == [2, 10, *sorted(chunks)]
    lazy = open_detections(tmp_path)
    assert lazy.npartitions == 2 + len(chunks)
    pd.testing.assert_frame_equal(lazy.compute().reset_index(drop=True), expected, check_dtype=False)


@pytest.fixture
def run(tmp_path):
    """An output folder with three parts, one empty."""
    rng = np.random.default_rng(5)
    write_part(tmp_path, 0, pd.concat([_random_part(rng, "/r/a.wav", 0, 50), _random_part(rng, "/r/b.wav", 1, 50)], ignore_index=True))
    write_part(tmp_path, 1, _random_part(rng, "/r/c.wav", -1, 0))
    last = _random_part(rng, "/r/c.wav", -1, 60)
    last.loc[3, ["class", "probability"]] = ["Nyc", 0.75]  # an exact float32: the bound is reached
    last.loc[4, ["class", "probability"]] = ["Nyc", np.float32(0.75) - np.float32(1e-6)]
    write_part(tmp_path, 2, last)
    return tmp_path


def test_read_detections_filters(run):
    every = read_detections(run)
    nyc = read_detections(run, species="Nyc")
    pd.testing.assert_frame_equal(nyc, every[every["class"] == "Nyc"].reset_index(drop=True))
    two = read_detections(run, species=["Pip", "Myo"], min_probability=0.75)
    keep = every["class"].isin(["Pip", "Myo"]) & (every["probability"].astype(np.float64) >= 0.75)
    pd.testing.assert_frame_equal(two, every[keep].reset_index(drop=True))
    at_bound = read_detections(run, species="Nyc", min_probability=0.75, columns=["file", "time"])
    assert list(at_bound.columns) == ["file", "time"]
    expected = every[(every["class"] == "Nyc") & (every["probability"] >= np.float32(0.75))]
    assert 103 in expected.index and 104 not in expected.index  # rows 3 and 4 of the last part
    assert len(at_bound) == len(expected)
    np.testing.assert_array_equal(at_bound["time"], expected["time"])
    with pytest.raises(ValueError, match="unknown species"):
        read_detections(run, species="Eptesicus")
    with pytest.raises(ValueError, match="unknown column"):
        read_detections(run, columns=["time", "nope"])
    with pytest.raises(FileNotFoundError):
        read_detections(run / "missing")


def test_open_detections_is_lazy_one_partition_per_part_and_same_rows(run):
    frame = open_detections(run)
    assert frame.npartitions == 3
    got = frame.compute().reset_index(drop=True)
    expected = read_detections(run)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    for column in ("channel", "time", "probability", "score", "prob_Pip"):
        assert got[column].dtype == expected[column].dtype
    filtered = open_detections(run, species=["Nyc"], min_probability=0.75, columns=["file", "time"])
    pd.testing.assert_frame_equal(
        filtered.compute().reset_index(drop=True),
        read_detections(run, species=["Nyc"], min_probability=0.75, columns=["file", "time"]),
        check_dtype=False,
    )


def test_readers_of_a_run_without_parts(tmp_path):
    (tmp_path / "detections.parquet").mkdir()
    assert len(read_detections(tmp_path)) == 0
    assert len(open_detections(tmp_path).compute()) == 0
    assert detection_classes(tmp_path) is None


# --------------------------------------------------------------------------------------------
# The reference system's CSV


@pytest.fixture
def hand_run(tmp_path):
    """Hand-built events over two parts; thresholds detection 0.6, Pip 0.5, Nyc 0.75, Myo 0.5."""
    first = events_table(
        "/data/site/a.wav", 0,
        _events(
            [0.10, 0.20, 0.30, 0.40],
            [[0.80, 0.90, 0.10],   # Pip and Nyc: two rows, one time
             [0.90, 0.90, 0.90],   # score below the detection threshold: no row
             [0.20, 0.75, 0.10],   # Nyc exactly at its threshold: reached
             [0.10, 0.20, 0.30]],  # a call of no species: no CSV row, 'unknown' in Raven
            [0.95, 0.55, 0.6, 0.7],
        ),
        CLASSES,
    )  # fmt: skip
    second = pd.concat(
        [
            events_table("/data/site/night2/b.wav", 1, _events([1.5], [[0.1, 0.1, 0.8]], [0.9]), CLASSES),
            events_table("/data/other/c.wav", -1, _events([2.5], [[0.7, 0.1, 0.1]], [0.99]), CLASSES),
        ],
        ignore_index=True,
    )
    write_part(tmp_path, 4, second)
    write_part(tmp_path, 3, events_table("/data/site/a.wav", 0, _events([], []), CLASSES))
    write_part(tmp_path, 0, first)
    thresholds = {"detection": 0.6, "Pip": 0.5, "Nyc": 0.75, "Myo": 0.5}
    return tmp_path, thresholds


def test_seed_csv_rows_and_header(hand_run):
    out, thresholds = hand_run
    path = write_reference_csv(out, CLASSES, thresholds)
    assert path == out / "detections.csv"
    lines = path.read_text().splitlines()
    assert lines[0] == "file_name,predicted_time,predicted_species,predicted_prob"
    csv = pd.read_csv(path)
    assert list(csv.itertuples(index=False, name=None)) == [
        ("/data/site/a.wav", 0.1, "Pip", pytest.approx(0.8)),
        ("/data/site/a.wav", 0.1, "Nyc", pytest.approx(0.9)),
        ("/data/site/a.wav", 0.3, "Nyc", pytest.approx(0.75)),
        ("/data/site/night2/b.wav#ch1", 1.5, "Myo", pytest.approx(0.8)),
        ("/data/other/c.wav", 2.5, "Pip", pytest.approx(0.7)),
    ]
    # The same rows as species_rows on all the events at once.
    every = read_detections(out)
    every["recording"] = [recording_label(f, c) for f, c in zip(every["file"], every["channel"])]
    expected = species_rows(every, CLASSES, thresholds)
    pd.testing.assert_frame_equal(csv, expected, check_dtype=False, check_exact=False, rtol=1e-6)
    assert _temporaries(out) == []


def test_seed_csv_of_a_run_without_events_has_its_header(tmp_path):
    write_part(tmp_path, 0, pd.DataFrame(), classes=CLASSES)
    dest = tmp_path / "elsewhere" / "calls.csv"
    assert write_reference_csv(tmp_path, CLASSES, None, dest=dest) == dest
    assert dest.read_text() == "file_name,predicted_time,predicted_species,predicted_prob\n"


def test_seed_csv_refuses_unknown_thresholds_and_keeps_the_previous_file(hand_run):
    out, thresholds = hand_run
    write_reference_csv(out, CLASSES, thresholds)
    before = (out / "detections.csv").read_bytes()
    with pytest.raises(ValueError, match="unknown class"):
        write_reference_csv(out, CLASSES, {"Eptesicus": 0.5})
    assert (out / "detections.csv").read_bytes() == before
    assert _temporaries(out) == []


def test_calls_per_class_counts_the_csv_rows(hand_run):
    out, thresholds = hand_run
    assert calls_per_class(out, CLASSES, thresholds) == {"Pip": 2, "Nyc": 2, "Myo": 1}
    assert list(calls_per_class(out, CLASSES, thresholds)) == CLASSES


# --------------------------------------------------------------------------------------------
# Raven


def _read_raven(path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", keep_default_na=False, na_values=[""])


def test_raven_tables_per_file(hand_run):
    out, thresholds = hand_run
    recordings = pd.DataFrame(
        {"path": ["/data/site/a.wav", "/data/site/silent.wav", "/data/site/night2/b.wav", "/data/other/c.wav"],
         "channel": [0, 0, 1, -1]}
    )  # fmt: skip
    paths = write_raven(
        out, CLASSES, thresholds, window_seconds=0.023, low_hz=15000, high_hz=120000, recordings=recordings
    )
    folder = out / "raven"
    assert [p.name for p in paths] == [
        "site__a.Table.1.selections.txt",
        "site__silent.Table.1.selections.txt",
        "site__night2__b.Table.1.selections.txt",
        "other__c.Table.1.selections.txt",
    ]
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in paths)
    header = "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tSpecies\tProbability\tScore"
    for path in paths:
        assert path.read_text().splitlines()[0] == header
    a = _read_raven(folder / "site__a.Table.1.selections.txt")
    assert list(a["Selection"]) == [1, 2, 3, 4]
    assert list(a["Species"]) == ["Pip", "Nyc", "Nyc", "unknown"]
    np.testing.assert_allclose(a["Begin Time (s)"], [0.1, 0.1, 0.3, 0.4])
    np.testing.assert_allclose(a["End Time (s)"] - a["Begin Time (s)"], 0.023, atol=1e-12)
    np.testing.assert_allclose(a["Probability"][:3], [0.8, 0.9, 0.75], rtol=1e-6)
    assert np.isnan(a["Probability"][3])  # an unclassified call: no probability
    np.testing.assert_allclose(a["Score"], [0.95, 0.95, 0.6, 0.7], rtol=1e-6)
    assert set(a["View"]) == {"Spectrogram 1"} and set(a["Channel"]) == {1}
    assert set(a["Low Freq (Hz)"]) == {15000} and set(a["High Freq (Hz)"]) == {120000}
    b = _read_raven(folder / "site__night2__b.Table.1.selections.txt")
    assert list(b["Selection"]) == [1] and list(b["Channel"]) == [2]  # channel 1 is Raven's 2
    c = _read_raven(folder / "other__c.Table.1.selections.txt")
    assert list(c["Channel"]) == [1] and list(c["Species"]) == ["Pip"]  # a mix is channel 1
    silent = _read_raven(folder / "site__silent.Table.1.selections.txt")
    assert len(silent) == 0 and list(silent.columns) == header.split("\t")
    assert _temporaries(out) == []
    # Rewritten with other thresholds and without 'recordings': no stale table stays.
    paths = write_raven(
        out, CLASSES, {"detection": 0.9}, window_seconds=0.01, low_hz=1, high_hz=2, include_unknown=False
    )
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in paths)
    assert "site__silent.Table.1.selections.txt" not in {p.name for p in paths}
    a = _read_raven(folder / "site__a.Table.1.selections.txt")
    assert list(a["Species"]) == ["Pip", "Nyc"] and list(a["Selection"]) == [1, 2]
    assert _temporaries(out) == []


def test_raven_selections_of_a_file_over_two_parts_are_numbered_on(tmp_path):
    first = events_table("/x/long.wav", 0, _events([1.0, 2.0], [[0.9, 0, 0], [0.9, 0, 0]]), CLASSES)
    second = events_table("/x/long.wav", 0, _events([3.0], [[0.9, 0, 0]]), CLASSES)
    write_part(tmp_path, 0, first)
    write_part(tmp_path, 1, second)
    (path,) = write_raven(tmp_path, CLASSES, None, window_seconds=0.02, low_hz=0, high_hz=1e5)
    assert path.name == "long.Table.1.selections.txt"
    table = _read_raven(path)
    assert list(table["Selection"]) == [1, 2, 3]
    assert list(table["Begin Time (s)"]) == [1.0, 2.0, 3.0]


def test_raven_combined_table(hand_run):
    out, thresholds = hand_run
    (path,) = write_raven(
        out, CLASSES, thresholds, window_seconds=0.02, low_hz=10000, high_hz=100000, per_recording=False
    )
    assert path == out / "detections.selections.txt"
    table = _read_raven(path)
    assert list(table.columns) == list(RAVEN_COMBINED_COLUMNS)
    assert list(table["Selection"]) == [1, 2, 3, 4, 5, 6]  # numbered on across the parts
    assert list(table["Begin File"]) == ["/data/site/a.wav"] * 4 + ["/data/site/night2/b.wav", "/data/other/c.wav"]
    assert list(table["Species"]) == ["Pip", "Nyc", "Nyc", "unknown", "Myo", "Pip"]
    assert list(table["Channel"]) == [1, 1, 1, 1, 2, 1]
    np.testing.assert_allclose(table["File Offset (s)"], [0.1, 0.1, 0.3, 0.4, 1.5, 2.5])
    # Without durations the times are those in each file.
    np.testing.assert_allclose(table["Begin Time (s)"], table["File Offset (s)"])
    np.testing.assert_allclose(table["End Time (s)"] - table["Begin Time (s)"], 0.02, atol=1e-12)
    # With durations, Begin Time is on the files' concatenated timeline.
    durations = {"/data/site/a.wav": 10.0, "/data/site/night2/b.wav": 20.0, "/data/other/c.wav": 5.0}
    write_raven(
        out, CLASSES, thresholds, window_seconds=0.02, low_hz=10000, high_hz=100000,
        per_recording=False, durations=durations,
    )  # fmt: skip
    timeline = _read_raven(path)
    start = timeline["Begin File"].map({"/data/site/a.wav": 0.0, "/data/site/night2/b.wav": 10.0, "/data/other/c.wav": 30.0})
    np.testing.assert_allclose(timeline["Begin Time (s)"], start + timeline["File Offset (s)"])
    np.testing.assert_allclose(timeline["End Time (s)"] - timeline["Begin Time (s)"], 0.02, atol=1e-9)
    np.testing.assert_allclose(timeline["File Offset (s)"], table["File Offset (s)"])
    assert _temporaries(out) == []


def test_raven_combined_write_that_fails_midway_leaves_the_previous_table(hand_run):
    out, thresholds = hand_run
    options = dict(window_seconds=0.02, low_hz=10000, high_hz=100000, per_recording=False)
    (path,) = write_raven(out, CLASSES, thresholds, **options)
    before = path.read_bytes()
    # The first part's file has a duration, the second part's do not: the write stops there.
    with pytest.raises(ValueError, match="durations lack"):
        write_raven(out, CLASSES, thresholds, durations={"/data/site/a.wav": 10.0}, **options)
    assert path.read_bytes() == before
    assert _temporaries(out) == []


def test_raven_refuses_bad_options(hand_run):
    out, thresholds = hand_run
    with pytest.raises(ValueError, match="window_seconds"):
        write_raven(out, CLASSES, thresholds, window_seconds=0, low_hz=0, high_hz=1)
    with pytest.raises(ValueError, match="low_hz < high_hz"):
        write_raven(out, CLASSES, thresholds, window_seconds=0.02, low_hz=5, high_hz=5)
    assert not (out / "raven").exists() and _temporaries(out) == []


def test_raven_table_names():
    names = raven_table_names(["/d/s1/a.wav", "/d/s2/n/b.WAV", "/d/s1/a.flac", "/d/s1/c.wav"])
    assert names == {
        "/d/s1/a.wav": "s1__a.wav.Table.1.selections.txt",  # a.wav and a.flac keep their extensions
        "/d/s2/n/b.WAV": "s2__n__b.Table.1.selections.txt",
        "/d/s1/a.flac": "s1__a.flac.Table.1.selections.txt",
        "/d/s1/c.wav": "s1__c.Table.1.selections.txt",
    }
    assert raven_table_names(["/only/one/x.wav"]) == {"/only/one/x.wav": "x.Table.1.selections.txt"}
    urls = raven_table_names(["s3://bucket/night/a.wav", "s3://bucket/night/b.wav"])
    assert urls == {"s3://bucket/night/a.wav": "a.Table.1.selections.txt", "s3://bucket/night/b.wav": "b.Table.1.selections.txt"}
    with pytest.raises(ValueError, match="share"):
        raven_table_names(["/d/a__b/c.wav", "/d/a/b__c.wav"])


def test_raven_table_names_fit_the_file_system(tmp_path):
    """A 250-byte recording name (the bad-file corpus has one) gives a table name of at most
    255 bytes, cut on a character boundary, distinct for distinct paths, that can be created."""
    long_a, long_b = "é" * 120 + "a.wav", "é" * 120 + "b.wav"
    names = raven_table_names([f"/d/s1/{long_a}", f"/d/s1/{long_b}", "/d/s2/x.wav"])
    assert len(set(names.values())) == 3
    for name in names.values():
        assert len(name.encode("utf-8")) <= 255 and name.endswith(".Table.1.selections.txt")
        (tmp_path / name).write_text("ok")
    assert names["/d/s2/x.wav"] == "s2__x.Table.1.selections.txt"


# --------------------------------------------------------------------------------------------
# The report


def test_report_json_round_trip_and_text(tmp_path):
    report = {
        "files_processed": 12,
        "files_failed": [
            {"file": "/data/bad one.wav", "reason": "not a WAV file"},
            {"file": "/data/short.wav", "reason": "truncated:\nheader says 10 s"},
        ],
        "calls_per_class": {"Pip": np.int64(40), "Nyc": 2},
        "n_detections": 45,
        "settings_fingerprint": "abc123",
        "model": {"path": "/models/default", "architecture": "cnn", "fingerprint": "f00d"},
        "timings": {"detect": np.float32(12.5), "total": 20.0},
        "audio_seconds": 3600.0,
        "outputs": {"csv": tmp_path / "detections.csv"},
        "unused": float("nan"),
    }
    path = write_report(tmp_path, report)
    assert path == tmp_path / "report.json"
    text = path.read_text()
    document = json.loads(text)
    assert text == json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert document["files_failed"] == report["files_failed"]
    assert document["calls_per_class"] == {"Pip": 40, "Nyc": 2}
    assert document["outputs"] == {"csv": os.fspath(tmp_path / "detections.csv")}
    assert document["unused"] is None and document["timings"]["detect"] == 12.5
    summary = (tmp_path / "report.txt").read_text().splitlines()
    assert "failed: /data/bad one.wav: not a WAV file" in summary
    assert "failed: /data/short.wav: truncated: header says 10 s" in summary
    assert sum(line.startswith("failed: ") for line in summary) == 2
    assert "files processed: 12" in summary and "detections: 45" in summary
    assert "  Pip: 40" in summary
    assert any("/models/default" in line and "cnn" in line for line in summary)
    assert _temporaries(tmp_path) == []


def test_remove_stale_temporaries_of_derived_outputs(hand_run):
    out, thresholds = hand_run
    write_reference_csv(out, CLASSES, thresholds)
    (out / ".detections.csv.tmp-0a1b2c").write_text("half")
    (out / ".raven.tmp-0a1b2c").mkdir()
    (out / ".raven.tmp-0a1b2c" / "x.Table.1.selections.txt").write_text("half")
    (out / ".keep-me").write_text("not ours")
    removed = remove_stale_temporaries(out)
    assert sorted(p.name for p in removed) == [".detections.csv.tmp-0a1b2c", ".raven.tmp-0a1b2c"]
    assert sorted(e.name for e in out.iterdir()) == [".keep-me", "detections.csv", "detections.parquet"]
