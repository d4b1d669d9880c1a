"""Raven Pro selection tables: both layouts, as Raven writes them, and batml's own tables."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from pipeline.annotations import AnnotationError, read_raven
from pipeline.detection.schema import events_table
from pipeline.outputs.parts import write_part
from pipeline.outputs.raven import write_raven

HEADER = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
          "Delta Time (s)", "Species"]  # fmt: skip


def _write(path, header, selections, *, views=("Waveform 1", "Spectrogram 1"), newline="\n", encoding="utf-8"):
    """A table as Raven writes it: one row per (selection, view), tab-separated, with measurements."""
    lines = ["\t".join(header)]
    for number, values in enumerate(selections, start=1):
        for view in views:
            row = {"Selection": str(number), "View": view, "Channel": "1", **values}
            if "Delta Time (s)" in header:
                try:
                    row["Delta Time (s)"] = f"{float(row['End Time (s)']) - float(row['Begin Time (s)']):.4f}"
                except ValueError:  # a malformed time, in the tests of malformed tables
                    row["Delta Time (s)"] = ""
            lines.append("\t".join(str(row.get(name, "")) for name in header))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((newline.join(lines) + newline).encode(encoding))
    return path


def _selection(begin, end, low, high, species):
    return {"Begin Time (s)": f"{begin:.6f}", "End Time (s)": f"{end:.6f}", "Low Freq (Hz)": f"{low:.3f}",
            "High Freq (Hz)": f"{high:.3f}", "Species": species}  # fmt: skip


def test_one_table_per_recording_with_two_views_in_a_folder(tmp_path):
    folder = tmp_path / "tables"
    _write(folder / "site 1" / "20210612_231502 Mare.Table.1.selections.txt", HEADER, [
        _selection(0.101234, 0.108, 41000, 62000, "Pipistrellus kuhlii"),
        _selection(0.101234, 0.109, 38000, 55000, "Hypsugo savii"),  # two species at one moment
        _selection(0.350001, 0.362, 9000, 16000, "Murciélago rabudo"),
        _selection(0.600000, 0.700, 2000, 90000, "Noise"),
        _selection(0.800000, 0.806, 45000, 70000, "Bat"),
    ], newline="\r\n")  # fmt: skip
    _write(folder / "b.Table.1.selections.txt", HEADER, [_selection(1.5, 1.51, 20000, 40000, "Nyctalus noctula")])
    annotated = read_raven(folder)
    calls = annotated.calls
    assert annotated.source == "raven" and annotated.windows is None and annotated.classes is None
    assert len(calls) == 6  # the Waveform and Spectrogram rows of a selection count once
    first = calls[calls["file"] == "site 1/20210612_231502 Mare"].reset_index(drop=True)
    assert list(first["class"].fillna("-")) == ["Pipistrellus kuhlii", "Hypsugo savii", "Murciélago rabudo", "-", "-"]
    assert list(first["event"]) == ["echolocation", "echolocation", "echolocation", "noise", "echolocation"]
    np.testing.assert_array_equal(first["position"], [0.101234, 0.101234, 0.350001, 0.6, 0.8])
    np.testing.assert_allclose(first["end"], [0.108, 0.109, 0.362, 0.7, 0.806])
    np.testing.assert_array_equal(first["low_freq"], [41000, 38000, 9000, 2000, 45000])
    np.testing.assert_array_equal(first["high_freq"], [62000, 55000, 16000, 90000, 70000])
    assert calls.loc[calls["file"] == "b", "class"].tolist() == ["Nyctalus noctula"]


def test_one_table_with_begin_file_reads_the_time_in_each_file(tmp_path):
    header = ["Selection", "View", "Channel", "Begin File", "Begin Path", "File Offset (s)", "Begin Time (s)",
              "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)", "Species"]  # fmt: skip
    starts = {"night/a.wav": 0.0, "night/b.wav": 10.0}  # the sound set's timeline: a.wav lasts 10 s
    selections = []
    for file, offset, species in [("night/a.wav", 2.25, "Myotis nattereri"), ("night/b.wav", 0.5, "Eptesicus serotinus"),
                                  ("night/b.wav", 7.75, "Plecotus auritus")]:  # fmt: skip
        begin = starts[file] + offset
        selections.append({"Begin File": file.split("/")[1], "Begin Path": f"C:\\data\\{file}",
                           "File Offset (s)": f"{offset:.6f}", "Begin Time (s)": f"{begin:.6f}",
                           "End Time (s)": f"{begin + 0.004:.6f}", "Low Freq (Hz)": "25000.0",
                           "High Freq (Hz)": "80000.0", "Species": species})  # fmt: skip
    path = _write(tmp_path / "night.selections.txt", header, selections, views=("Spectrogram 1",))
    calls = read_raven(path).calls
    assert list(calls["file"]) == ["a.wav", "b.wav", "b.wav"]
    np.testing.assert_allclose(calls["position"], [2.25, 0.5, 7.75])
    np.testing.assert_allclose(calls["end"] - calls["position"], 0.004, atol=1e-9)
    # With Begin Path only (a full path on the annotator's computer), the file name is the recording.
    no_file = [h for h in header if h != "Begin File"]
    _write(tmp_path / "paths.selections.txt", no_file, selections, views=("Spectrogram 1",))
    assert list(read_raven(tmp_path / "paths.selections.txt").calls["file"]) == ["a.wav", "b.wav", "b.wav"]
    # Without File Offset (s), Begin Time is on the sound set's timeline: refused for several files.
    no_offset = [h for h in header if h != "File Offset (s)"]
    _write(tmp_path / "bad.selections.txt", no_offset, selections, views=("Spectrogram 1",))
    with pytest.raises(AnnotationError, match=r"bad\.selections\.txt: selections in 2 files but no 'File Offset \(s\)'"):
        read_raven(tmp_path / "bad.selections.txt")


def test_time_expansion_columns_extent_and_encoding(tmp_path):
    header = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
              "Espèce", "Call Type"]  # fmt: skip
    path = _write(tmp_path / "te10.Table.1.selections.txt", header, [
        {"Begin Time (s)": "1.5", "End Time (s)": "1.6", "Low Freq (Hz)": "4000", "High Freq (Hz)": "6000",
         "Espèce": "Pipistrelle de Kuhl", "Call Type": "Social"},
        {"Begin Time (s)": "12.0", "End Time (s)": "12.5", "Low Freq (Hz)": "3000", "High Freq (Hz)": "5000",
         "Espèce": "Pipistrelle de Kuhl", "Call Type": "Feeding buzz"},
    ], views=("Spectrogram 1",), encoding="latin-1")  # fmt: skip
    annotated = read_raven(path, time_expansion=10, species_column="Espèce", extent_as_window=True)
    calls = annotated.calls
    np.testing.assert_allclose(calls["position"], [0.15, 1.2])
    np.testing.assert_allclose(calls["end"], [0.16, 1.25])
    np.testing.assert_allclose(calls["low_freq"], [40000, 30000])
    np.testing.assert_allclose(calls["high_freq"], [60000, 50000])
    assert list(calls["event"]) == ["social", "buzz"] and set(calls["class"]) == {"Pipistrelle de Kuhl"}
    assert annotated.windows[["file", "start", "end"]].values.tolist() == [["te10", 0.15, 1.25]]
    # the species column found by default: none of the usual names here, so detection-only
    assert read_raven(path).calls["class"].isna().all()
    with pytest.raises(AnnotationError, match=r"te10\.Table\.1\.selections\.txt: no species column 'Art'"):
        read_raven(path, species_column="Art")
    assert read_raven(path, recording="site2/x.wav").calls["file"].unique().tolist() == ["site2/x.wav"]


@pytest.mark.parametrize(
    "row, message",
    [
        ({"Begin Time (s)": "0,5x"}, r"line 2: Begin Time \(s\) '0,5x' is not a number"),
        ({"Begin Time (s)": "0.9", "End Time (s)": "0.4"}, r"line 2: End Time \(s\) 0.4 is before Begin Time \(s\) 0.9"),
        ({"Begin Time (s)": "-0.2", "End Time (s)": "0.1"}, r"line 2: start time -0.2 s is negative"),
        ({"Begin Time (s)": ""}, r"line 2: Begin Time \(s\) is empty"),
        ({"Low Freq (Hz)": "high"}, r"line 2: Low Freq \(Hz\) 'high' is not a number"),
    ],
)
def test_malformed_tables_are_one_line_naming_file_line_and_reason(tmp_path, row, message):
    values = {**_selection(0.1, 0.2, 1000, 2000, "Pipistrellus pipistrellus"), **row}
    path = _write(tmp_path / "m.Table.1.selections.txt", HEADER, [values], views=("Spectrogram 1",))
    with pytest.raises(AnnotationError) as info:
        read_raven(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert re.search(message, str(info.value))


def test_missing_columns_and_folders_without_tables(tmp_path):
    path = _write(tmp_path / "x.Table.1.selections.txt", ["Selection", "View", "Begin Time (s)", "Species"],
                  [{"Begin Time (s)": "0.1", "Species": "a"}])  # fmt: skip
    with pytest.raises(AnnotationError, match=r"x\.Table\.1\.selections\.txt: missing column\(s\) 'End Time \(s\)'"):
        read_raven(path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnnotationError, match="no Raven selection table"):
        read_raven(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------
# batml's own Raven output reads back

CLASSES = ["Pipistrellus pipistrellus", "Nyctalus noctula", "Myotis myotis"]


def _events(file, times, probs):
    probs = np.asarray(probs, dtype=np.float32)
    table = {"time": np.asarray(times, dtype=np.float64), "column": np.arange(len(times), dtype=np.int64),
             "score": np.full(len(times), 0.9, dtype=np.float32)}  # fmt: skip
    for k, name in enumerate(CLASSES):
        table[f"prob_{name}"] = probs[:, k]
    return events_table(file, 0, pd.DataFrame(table), CLASSES)


@pytest.fixture
def detection_run(tmp_path):
    out = tmp_path / "run"
    write_part(out, 0, _events("/data/night/a.wav", [0.25, 1.5, 2.75], [[0.9, 0.8, 0], [0, 0.1, 0.95], [0.2, 0.1, 0.1]]))
    write_part(out, 1, _events("/data/night/b.wav", [0.5], [[0, 0.7, 0]]))
    return out


def test_batml_raven_tables_round_trip_per_recording(detection_run):
    paths = write_raven(detection_run, CLASSES, {"detection": 0.5}, window_seconds=0.023, low_hz=15000, high_hz=120000)
    calls = read_raven(detection_run / "raven").calls
    assert sorted(p.name for p in paths) == ["a.Table.1.selections.txt", "b.Table.1.selections.txt"]
    expected = [("a", 0.25, "Pipistrellus pipistrellus"), ("a", 0.25, "Nyctalus noctula"), ("a", 1.5, "Myotis myotis"),
                ("a", 2.75, None), ("b", 0.5, "Nyctalus noctula")]  # fmt: skip
    got = [(f, p, None if pd.isna(c) else c) for f, p, c in zip(calls["file"], calls["position"], calls["class"])]
    assert got == expected  # "unknown" (no species above threshold) is a detection-only call
    np.testing.assert_allclose(calls["end"] - calls["position"], 0.023)
    assert set(calls["low_freq"]) == {15000.0} and set(calls["high_freq"]) == {120000.0}
    assert set(calls["event"]) == {"echolocation"}


def test_batml_raven_combined_table_round_trip_keeps_paths(detection_run):
    (path,) = write_raven(detection_run, CLASSES, {"detection": 0.5}, window_seconds=0.02, low_hz=10000,
                            high_hz=100000, per_recording=False, durations={"/data/night/a.wav": 10.0,
                                                                           "/data/night/b.wav": 5.0})  # fmt: skip
    calls = read_raven(path).calls
    assert list(calls["file"]) == ["/data/night/a.wav"] * 4 + ["/data/night/b.wav"]
    np.testing.assert_allclose(calls["position"], [0.25, 0.25, 1.5, 2.75, 0.5])  # from File Offset, not Begin Time
    assert calls["class"].isna().tolist() == [False, False, False, True, False]
