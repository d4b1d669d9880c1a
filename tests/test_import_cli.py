"""Format detection, read_annotations' options, and ``batml convert``."""

from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pytest

from pipeline.annotations import FORMATS, AnnotationError, detect_format, read_annotations, read_csv
from pipeline.cli import main
from pipeline.io.annotations import RecordingCalls, write_reference_npz

RAVEN = "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tSpecies\n" \
        "1\tSpectrogram 1\t1\t1.5\t1.6\t4000\t6000\tPipistrellus kuhlii\n"  # fmt: skip


@pytest.fixture
def sources(tmp_path):
    """One small file or folder of each format."""
    out = {}
    out["npz"] = write_reference_npz(tmp_path / "seed.npz", [RecordingCalls("a", 1.0, np.array([0.1]), np.array([2]))], [])
    out["csv"] = tmp_path / "calls.csv"
    out["csv"].write_text("file,position\na,0.1\n", encoding="utf-8")
    out["aoef"] = tmp_path / "whombat export.json"
    out["aoef"].write_text(json.dumps({"version": "1.1.0", "data": {"collection_type": "annotation_set", "uuid": "x"}}))
    (tmp_path / "bd2").mkdir()
    out["batdetect2"] = tmp_path / "bd2"
    (tmp_path / "bd2" / "r.wav.json").write_text(json.dumps({"id": "r.wav", "duration": 1, "annotation": []}))
    (tmp_path / "raven" / "night 1").mkdir(parents=True)
    (tmp_path / "raven" / "night 1" / "r.Table.1.selections.txt").write_text(RAVEN, encoding="utf-8")
    out["raven"] = tmp_path / "raven"
    out["raven_file"] = tmp_path / "raven" / "night 1" / "r.Table.1.selections.txt"
    (tmp_path / "tad" / "eti").mkdir(parents=True)
    (tmp_path / "tad" / "eti" / "r.eti").write_text("Cri\tEspece\tType\n", encoding="latin-1")
    out["tadarida"] = tmp_path / "tad"
    out["soundclass"] = tmp_path / "labels.db"
    with sqlite3.connect(out["soundclass"]) as db:
        db.execute("CREATE TABLE labels (recording TEXT, label_position NUMERIC, label_class TEXT)")
    return out


def test_every_format_is_detected(sources):
    assert set(FORMATS) == {"raven", "aoef", "tadarida", "soundclass", "batdetect2", "csv", "npz"}
    for name, path in sources.items():
        assert detect_format(path) == name.removesuffix("_file"), name
    assert detect_format(sources["tadarida"] / "eti" / "r.eti") == "tadarida"
    assert detect_format(sources["batdetect2"] / "r.wav.json") == "batdetect2"


def test_undetectable_inputs_say_what_was_expected(tmp_path, sources):
    (tmp_path / "notes.txt").write_text("some notes\n")
    with pytest.raises(AnnotationError, match=r"notes\.txt: cannot tell the annotation format; expected a reference-system \.npz"):
        detect_format(tmp_path / "notes.txt")
    (tmp_path / "other.json").write_text("[1, 2]")
    with pytest.raises(AnnotationError, match="neither AOEF .* nor batdetect2"):
        detect_format(tmp_path / "other.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnnotationError, match=r"empty: cannot tell the annotation format of this folder"):
        detect_format(tmp_path / "empty")
    with pytest.raises(AnnotationError, match="unknown annotation format 'elan'"):
        read_annotations(sources["csv"], format="elan")
    with pytest.raises(AnnotationError, match=r"option\(s\) species_column do not apply to tadarida"):
        read_annotations(sources["tadarida"], species_column="Species")


def test_generic_options_reach_each_reader(sources, tmp_path):
    raven = read_annotations(sources["raven_file"], time_expansion=10, species_column="Species")
    assert raven.calls["position"].tolist() == [0.15] and raven.calls["low_freq"].tolist() == [40000.0]
    assert raven.calls["file"].tolist() == ["r"]
    assert read_annotations(sources["raven"]).calls["file"].tolist() == ["night 1/r"]
    names = tmp_path / "names.txt"
    names.write_text("Myotis daubentonii\nPipistrellus kuhlii\n", encoding="utf-8")
    assert read_annotations(sources["npz"], species_list=names).calls["class"].tolist() == ["Pipistrellus kuhlii"]
    assert read_annotations(sources["npz"], species_list=None).calls["class"].tolist() == ["Envsp"]


def test_batml_convert_options_and_exit_status(real_data, tmp_path, capsys):
    out = tmp_path / "calls.csv"
    assert main(["convert", str(real_data / "annotated" / "anns"), "-o", str(out), "-q"]) == 0
    converted = read_csv(out)
    assert len(converted.calls) == 28 and "Myotis mystacinus" in set(converted.calls["class"])
    assert (tmp_path / "calls.windows.csv").exists()
    assert "28 calls in 3 recordings (batdetect2)" in capsys.readouterr().out
    # soundClass: x10 time expansion; Mesc001's labels have no audio: listed, exit status 3
    db = real_data / "soundclass" / "demo_db.sqlite3"
    assert main(["convert", str(db), "-o", str(out), "--time-expansion", "10", "-q"]) == 3
    printed = capsys.readouterr().out
    assert "150 calls in 14 recordings (soundclass)" in printed and "skipped:" in printed and "Mesc001" in printed
    assert read_csv(out).calls["position"].max() < 2.0  # real seconds
    # Tadarida with an explicit species list and format
    species = real_data / "tadarida_rsdb" / "Sonotypes" / "SpeciesListComplete.csv"
    rsdb = real_data / "tadarida_rsdb" / "RSDB_sample" / "20160822"
    assert main(["convert", str(rsdb), "-o", str(out), "--format", "tadarida", "--species-list", str(species), "-q"]) == 0
    pipistrelle = read_csv(out).calls["class"] == "Pipistrellus pipistrellus"
    assert pipistrelle.sum() == 274 + 13  # echolocation calls (433 elements joined) and buzzes
    elements = tmp_path / "elements.csv"
    assert main(["convert", str(rsdb), "-o", str(elements), "--element-gap", "0", "-q"]) == 0
    assert (read_csv(elements).calls["class"] == "Pipistrellus pipistrellus").sum() == 433 + 13


def test_batml_convert_errors_are_one_line(tmp_path, sources, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,position\na,soon\n", encoding="utf-8")
    assert main(["convert", str(bad), "-o", str(tmp_path / "out.csv")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.csv, line 2: position 'soon' is not a number" in err[0]
    assert not (tmp_path / "out.csv").exists()
    assert main(["convert", str(sources["tadarida"]), "-o", str(tmp_path / "o.csv"), "--species-column", "X"]) == 1
    assert "do not apply to tadarida" in capsys.readouterr().err


class _Exploit:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (shutil.copyfile, (__file__, self.target))


def test_batml_convert_never_runs_a_pickle(tmp_path, capsys):
    pwned = tmp_path / "pwned.py"
    ragged = np.empty(1, dtype=object)
    ragged[0] = _Exploit(pwned)
    evil = tmp_path / "evil.npz"
    np.savez(evil, train_files=np.array(["a"]), train_durations=np.array([1.0]), train_pos=ragged,
             test_files=np.array([], dtype=str), test_durations=np.array([]), test_pos=np.empty(0, dtype=object))  # fmt: skip
    assert main(["convert", str(evil), "-o", str(tmp_path / "calls.csv")]) == 1
    err = capsys.readouterr().err
    assert "--trust-npz" in err and not pwned.exists() and not (tmp_path / "calls.csv").exists()
