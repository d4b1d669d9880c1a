"""batml's CSV of calls (class optional), the reference system's .npz, and conversion to CSV and back."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.annotations import AnnotationError, convert, read_annotations, read_csv, read_npz, write_calls_csv
from pipeline.io.annotations import RecordingCalls, write_reference_npz

SEVEN = ["Barbarg", "Envsp", "Myosp", "Pip35", "Pip50", "Plesp", "Rhisp"]


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_the_old_form_reads_as_before(tmp_path):
    numbers = read_csv(_write(tmp_path / "n.csv", "file,position,class,duration\na,0.1,1,2.0\na,0.1,5,2.0\nb,0.4,7,1.0\n"))
    assert numbers.calls["class"].tolist() == ["Barbarg", "Pip50", "Rhisp"] and numbers.classes == SEVEN
    mixed = read_csv(_write(tmp_path / "m.csv", "file,position,class\na,0.1,Envsp\na,0.2,3\n"))
    assert mixed.calls["class"].tolist() == ["Envsp", "Myosp"] and mixed.classes == SEVEN
    assert (mixed.calls["event"] == "echolocation").all()


def test_detection_only_any_names_and_integer_classes_beyond_seven(tmp_path):
    detection = read_csv(_write(tmp_path / "d.csv", "file,position\nsite 1/a,0.1\nsite 1/a,0.3\n"))
    assert detection.calls["class"].isna().all() and detection.classes is None
    names = read_csv(_write(tmp_path / "s.csv", "file,position,class,event,split\n"
                            "cr/ruta 1,0.1,Noctilio leporinus,,train\ncr/ruta 1,0.1,Murciélago pescador,,train\n"
                            "cr/ruta 2,1.5,,Feeding buzz,test\ncr/ruta 2,2.5,Bat,,test\n"))  # fmt: skip
    assert names.calls["class"].fillna("-").tolist() == ["Noctilio leporinus", "Murciélago pescador", "-", "-"]
    assert names.calls["event"].tolist() == ["echolocation", "echolocation", "buzz", "echolocation"]
    assert names.calls["split"].tolist() == ["train", "train", "test", "test"]
    ten = read_csv(_write(tmp_path / "ten.csv", "file,position,class\na,0.1,10\na,0.2,8\n"))
    assert ten.calls["class"].tolist() == ["10", "8"] and ten.classes == [str(k) for k in range(1, 11)]
    names_file = _write(tmp_path / "species.txt", "\n".join(f"Especie {k}" for k in range(1, 11)) + "\n")
    named = read_csv(tmp_path / "ten.csv", class_names=names_file)
    assert named.calls["class"].tolist() == ["Especie 10", "Especie 8"] and len(named.classes) == 10
    with pytest.raises(AnnotationError, match=r"ten\.csv, line 2: class 10 outside 1\.\.3"):
        read_csv(tmp_path / "ten.csv", class_names=["x", "y", "z"])


@pytest.mark.parametrize(
    "text, message",
    [
        ("file,class\na,1\n", r"missing column\(s\) position"),
        ("file;position\na;1\n", r"missing column\(s\) file, position \(the header has one column with ';'"),
        ("file,position\na,0.1\nb,1.2.3\n", r"line 3: position '1\.2\.3' is not a number"),
        ("file,position,end\na,0.5,0.25\n", r"line 2: end time 0\.25 s is before the start time 0\.5 s"),
        ("file,position\na,-1\n", r"line 2: start time -1\.0 s is negative"),
        ("file,position,split\na,1,validation\n", r"line 2: unknown split 'validation'"),
        ("file,position,event\na,1,singing\n", r"line 2: unknown event 'singing'"),
        ("file,position\n,1\n", r"line 2: the recording's name is empty"),
    ],
)
def test_malformed_csv_is_one_line_naming_file_line_and_reason(tmp_path, text, message):
    path = _write(tmp_path / "bad.csv", text)
    with pytest.raises(AnnotationError, match=message) as info:
        read_csv(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_npz_classes_windows_and_names(tmp_path):
    train = [RecordingCalls("a/x", 2.0, np.array([0.1, 0.1, 0.5]), np.array([1, 3, 5])),
             RecordingCalls("a/silent", 3.0, np.array([]), np.array([], dtype=int))]  # fmt: skip
    test = [RecordingCalls("b/y", 1.0, np.array([0.2]), np.array([7]))]
    path = write_reference_npz(tmp_path / "d.npz", train, test)
    annotated = read_npz(path)
    assert annotated.classes == SEVEN
    assert annotated.calls[["file", "position", "class", "split"]].values.tolist() == [
        ["a/x", 0.1, "Barbarg", "train"], ["a/x", 0.1, "Myosp", "train"], ["a/x", 0.5, "Pip50", "train"],
        ["b/y", 0.2, "Rhisp", "test"],
    ]  # fmt: skip
    # every recording is an annotated window, the one without calls included
    assert annotated.windows.values.tolist() == [["a/x", 0.0, 2.0, "train"], ["a/silent", 0.0, 3.0, "train"],
                                                 ["b/y", 0.0, 1.0, "test"]]  # fmt: skip
    names = [f"Clase {k}" for k in range(1, 8)]
    assert read_npz(path, class_names=names).calls["class"].tolist()[0] == "Clase 1"
    detection = write_reference_npz(tmp_path / "det.npz", [RecordingCalls("a", 1.0, np.array([0.3]), None)], [])
    only = read_npz(detection)
    assert only.calls["class"].isna().all() and only.classes is None
    with pytest.raises(AnnotationError, match="class outside 1..2"):
        read_npz(path, class_names=["one", "two"])


def _aoef(tmp_path):
    from test_import_aoef import _project

    path = tmp_path / "project.json"
    path.write_text(json.dumps(_project(), ensure_ascii=False), encoding="utf-8")
    return path


@pytest.mark.parametrize("source", ["npz", "aoef", "raven", "csv"])
def test_convert_to_csv_and_back_gives_the_same_set(tmp_path, source):
    if source == "npz":
        train = [RecordingCalls("a/x", 2.0, np.array([0.1, 0.1, 1 / 3]), np.array([1, 3, 5]))]
        path = write_reference_npz(tmp_path / "d.npz", train, [RecordingCalls("b/y", 1.0, np.array([0.2]), np.array([7]))])
    elif source == "aoef":
        path = _aoef(tmp_path)
    elif source == "raven":
        path = _write(tmp_path / "r 1.Table.1.selections.txt",
                      "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tSpecies\n"
                      "1\tSpectrogram 1\t1\t0.123456789\t0.13\t20000\t45000.5\tPipistrellus kuhlii\n"
                      "2\tSpectrogram 1\t1\t0.5\t0.51\t9000\t15000\tNoise\n")  # fmt: skip
    else:
        path = _write(tmp_path / "in.csv", "file,position,class\na,0.1,10\na,0.2,\n")
    original = read_annotations(path)
    out = tmp_path / "out" / "calls.csv"
    written = convert(path, out)
    again = read_annotations(out)
    assert again.source == "csv"
    pd.testing.assert_frame_equal(again.calls, original.calls)
    pd.testing.assert_frame_equal(written.calls, original.calls)
    assert again.classes == original.classes
    if original.windows is None:
        assert again.windows is None and not (tmp_path / "out" / "calls.windows.csv").exists()
    else:
        pd.testing.assert_frame_equal(again.windows, original.windows)
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")) == []  # no temporaries


def test_write_calls_csv_removes_stale_sidecars_and_checks_tables(tmp_path):
    out = tmp_path / "calls.csv"
    npz = write_reference_npz(tmp_path / "d.npz", [RecordingCalls("a", 1.0, np.array([0.1]), np.array([2]))], [])
    convert(npz, out)
    assert (tmp_path / "calls.windows.csv").exists() and (tmp_path / "calls.classes.txt").exists()
    convert(_write(tmp_path / "plain.csv", "file,position\nb,0.5\n"), out)
    assert not (tmp_path / "calls.windows.csv").exists() and not (tmp_path / "calls.classes.txt").exists()
    assert read_csv(out).calls["file"].tolist() == ["b"]
    with pytest.raises(AnnotationError, match="start time -1.0 s is negative"):
        write_calls_csv(tmp_path / "x.csv", pd.DataFrame({"file": ["a"], "position": [-1.0]}))
    assert not (tmp_path / "x.csv").exists()


def test_the_simulators_csv_and_npz_give_the_same_calls(tmp_path):
    """The simulator writes both (the CSV with its extra columns): they read as one set of calls."""
    from pipeline.simulation.archive import simulate_archive

    archive = simulate_archive(tmp_path / "sim", minutes=0.1, seed=3)
    from_csv, from_npz = read_annotations(archive.annotations_csv), read_annotations(archive.annotations_npz)
    columns = ["file", "position", "class", "split", "duration"]
    key = ["file", "position", "class"]
    a = from_csv.calls[columns].sort_values(key, ignore_index=True)
    b = from_npz.calls[columns].sort_values(key, ignore_index=True)
    assert len(a) > 0
    pd.testing.assert_frame_equal(a, b)
    assert from_csv.classes == from_npz.classes == SEVEN
    assert from_csv.calls["end"].notna().all() and from_csv.calls["low_freq"].notna().all()  # the CSV says more
