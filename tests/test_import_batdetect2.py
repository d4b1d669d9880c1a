"""batdetect2's annotation files: the three annotated real recordings, and broken files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.annotations import AnnotationError, read_batdetect2, select_calls

MYOMYS = "20170701_213954-MYOMYS-LR_0_0.5.wav"
EPTSER = "20180530_213516-EPTSER-LR_0_0.5.wav"
RHIFER = "20180627_215323-RHIFER-LR_0_0.5.wav"


def test_the_annotated_real_recordings_keep_species_names(real_data):
    annotated = read_batdetect2(real_data / "annotated" / "anns")
    calls = annotated.calls
    assert annotated.source == "batdetect2" and annotated.classes is None and annotated.skipped == []
    counts = calls.fillna({"class": "-"}).groupby(["file", "class", "event"]).size().to_dict()
    assert counts == {
        (MYOMYS, "Myotis mystacinus", "echolocation"): 11,
        (EPTSER, "Eptesicus serotinus", "echolocation"): 4,
        (EPTSER, "-", "echolocation"): 7,  # "Bat": a call of unknown species, detection only
        (EPTSER, "-", "other"): 1,  # "Unknown" event of class "Unknown": neither bat nor negative
        (RHIFER, "Rhinolophus ferrumequinum", "echolocation"): 5,
    }
    assert annotated.windows[["file", "start", "end"]].values.tolist() == [[f, 0.0, 0.5] for f in (MYOMYS, EPTSER, RHIFER)]
    assert calls["position"].between(0, 0.5).all() and (calls["end"] > calls["position"]).all()
    assert calls["low_freq"].between(20_000, 120_000).all() and (calls["high_freq"] > calls["low_freq"]).all()
    learned = select_calls(annotated)
    assert len(learned) == 27 and set(learned["role"]) == {"positive"}


def test_the_seed_groups_on_request(real_data):
    grouped = read_batdetect2(real_data / "annotated" / "anns", groups="reference")
    assert grouped.classes == ["Barbarg", "Envsp", "Myosp", "Pip35", "Pip50", "Plesp", "Rhisp"]
    assert grouped.calls["class"].value_counts().to_dict() == {"Myosp": 11, "Rhisp": 5, "Envsp": 4}
    mine = read_batdetect2(real_data / "annotated" / "anns", groups={"Myotis mystacinus": "Myotis"})
    assert mine.classes == ["Myotis"] and mine.calls["class"].value_counts().to_dict() == {"Myotis": 11}
    assert any("'Rhinolophus ferrumequinum', a species without a group" in line for line in mine.skipped)


def _file(tmp_path, doc, name="x.wav.json"):
    path = tmp_path / name
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def _doc(**changes):
    event = {"start_time": 0.1, "end_time": 0.11, "low_freq": 30000, "high_freq": 60000, "class": "Nyctalus noctula",
             "event": "Echolocation", "individual": "0"}  # fmt: skip
    doc = {"id": "x.wav", "duration": 1.0, "time_exp": 1, "annotated": True, "issues": False, "notes": "",
           "class_name": "Nyctalus noctula", "annotation": [event, {**event, "start_time": 0.5, "end_time": 0.52,
                                                                    "event": "Feeding"}]}  # fmt: skip
    doc.update(changes)
    return doc


def test_events_time_expansion_and_unannotated_files(tmp_path):
    folder = tmp_path / "anns"
    folder.mkdir()
    _file(folder, _doc())
    _file(folder, _doc(id="y.wav", annotated=False), "y.wav.json")
    annotated = read_batdetect2(folder)
    assert annotated.calls["event"].tolist() == ["echolocation", "buzz"]
    assert annotated.calls["file"].unique().tolist() == ["x.wav"]
    assert len(annotated.skipped) == 1 and "'annotated': false" in annotated.skipped[0]
    assert read_batdetect2(folder, include_unannotated=True).calls["file"].nunique() == 2
    slow = read_batdetect2(folder / "x.wav.json", time_expansion=10)
    np.testing.assert_allclose(slow.calls["position"], [0.01, 0.05])
    np.testing.assert_allclose(slow.calls["low_freq"], [300000, 300000])


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"id": "x.wav"}, r"not a batdetect2 annotation file: no 'annotation' list"),
        (_doc(annotation=[{"end_time": 0.2, "class": "Bat"}]), r"annotation\[0\]\.start_time: missing"),
        (_doc(annotation=[{"start_time": "0.1s", "class": "Bat"}]), r"annotation\[0\]\.start_time: '0\.1s' is not a number"),
        (_doc(annotation=[{"start_time": 0.1, "event": "Singing"}]), r"annotation\[0\]\.event: unknown kind of sound 'Singing'"),
        (_doc(annotation=[{"start_time": 0.3, "end_time": 0.2}]), r"annotation\[0\]: end time 0\.2 s is before"),
    ],
)
def test_malformed_files_are_one_line_naming_the_event(tmp_path, doc, message):
    path = _file(tmp_path, doc)
    with pytest.raises(AnnotationError, match=message) as info:
        read_batdetect2(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_bad_json(tmp_path):
    path = tmp_path / "x.wav.json"
    path.write_text('{"id": "x.wav", "annotation": [', encoding="utf-8")
    with pytest.raises(AnnotationError, match=r"x\.wav\.json: not valid JSON \(line 1, column 32: Expecting value\)$"):
        read_batdetect2(tmp_path)
