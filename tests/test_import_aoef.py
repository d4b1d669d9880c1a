"""soundevent / AOEF annotation projects (Whombat), made after soundevent's schema."""

from __future__ import annotations

import copy
import json
import re
import uuid

import numpy as np
import pytest

from pipeline.annotations import AnnotationError, read_aoef, select_calls


def _id(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def _project() -> dict:
    """A Whombat project: two recordings, three annotated clips, six sound events."""
    r1, r2 = _id("r1"), _id("r2")
    tags = [
        {"id": 0, "key": "species", "value": "Noctilio leporinus"},
        {"id": 1, "key": "species", "value": "Pteronotus mesoamericanus"},
        {"id": 2, "key": "event", "value": "Echolocation"},
        {"id": 3, "key": "event", "value": "Social"},
        {"id": 4, "key": "species", "value": "Murciélago pescador menor"},
        {"id": 5, "key": "quality", "value": "good"},
    ]
    geometries = {
        "e1": {"type": "BoundingBox", "coordinates": [10.2, 25000.0, 10.211, 61000.0]},
        "e2": {"type": "TimeInterval", "coordinates": [10.5, 10.52]},
        "e3": {"type": "BoundingBox", "coordinates": [10.7, 30000.0, 10.708, 70000.0]},
        "e4": {"type": "TimeStamp", "coordinates": 30.4},
        "e5": {"type": "Point", "coordinates": [0.25, 52000.0]},
        "e6": {"type": "LineString", "coordinates": [[0.6, 80000.0], [0.603, 60000.0], [0.607, 45000.0]]},
    }
    events = [{"uuid": _id(k), "recording": r1 if k < "e5" else r2, "geometry": g} for k, g in geometries.items()]
    annotation_tags = {"e1": [0, 2], "e2": [1], "e3": [0, 1, 2], "e4": [4, 3], "e5": [], "e6": [1, 2]}
    annotations = [{"uuid": _id(f"a{k}"), "sound_event": _id(k), "tags": t, "created_on": "2024-03-02T10:00:00"}
                   for k, t in annotation_tags.items()]  # fmt: skip
    clips = [
        {"uuid": _id("c1"), "recording": r1, "start_time": 10.0, "end_time": 11.0},
        {"uuid": _id("c2"), "recording": r1, "start_time": 30.0, "end_time": 31.0},
        {"uuid": _id("c3"), "recording": r2, "start_time": 0.0, "end_time": 1.0},
    ]
    members = {"c1": ["e1", "e2", "e3"], "c2": ["e4"], "c3": ["e5", "e6"]}
    clip_annotations = [{"uuid": _id(f"ca{c}"), "clip": _id(c), "tags": [5] if c == "c1" else None,
                         "sound_events": [_id(f"a{e}") for e in es], "created_on": "2024-03-02T10:00:00"}
                        for c, es in members.items()]  # fmt: skip
    tasks = [
        {"uuid": _id("t1"), "clip": _id("c1"), "status_badges": [{"state": "completed", "created_on": "2024-03-02T10:00:00"}]},
        {"uuid": _id("t2"), "clip": _id("c2"), "status_badges": [{"state": "assigned"}]},
        {"uuid": _id("t3"), "clip": _id("c3"), "status_badges": [{"state": "completed"}, {"state": "verified"}]},
    ]
    return {
        "version": "1.1.0",
        "created_on": "2024-03-05T09:00:00",
        "data": {
            "uuid": _id("project"), "collection_type": "annotation_project", "name": "Osa 2024",
            "description": "bats of the Osa peninsula", "instructions": "box every call",
            "tags": tags,
            "recordings": [
                {"uuid": r1, "path": "site A/20240301_200000.wav", "duration": 60.0, "channels": 1, "samplerate": 384000},
                {"uuid": r2, "path": "site B/grabación 2.wav", "duration": 5.0, "channels": 1, "samplerate": 500000,
                 "time_expansion": 10.0},
            ],
            "clips": clips, "sound_events": events, "sound_event_annotations": annotations,
            "clip_annotations": clip_annotations, "tasks": tasks, "project_tags": [0, 1, 4],
        },
    }  # fmt: skip


def _save(tmp_path, doc, name="project.json"):
    path = tmp_path / name
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return path


def test_project_with_two_recordings_clips_boxes_intervals_and_species_tags(tmp_path):
    annotated = read_aoef(_save(tmp_path, _project()))
    calls = annotated.calls
    assert annotated.source == "aoef"
    assert annotated.classes == ["Noctilio leporinus", "Pteronotus mesoamericanus", "Murciélago pescador menor"]
    assert annotated.windows[["file", "start", "end"]].values.tolist() == [
        ["site A/20240301_200000.wav", 10.0, 11.0], ["site A/20240301_200000.wav", 30.0, 31.0],
        ["site B/grabación 2.wav", 0.0, 1.0],
    ]  # fmt: skip
    rows = [(f, p, None if c != c else c, e) for f, p, c, e in zip(calls["file"], calls["position"], calls["class"], calls["event"])]
    a, b = "site A/20240301_200000.wav", "site B/grabación 2.wav"
    assert rows == [
        (a, 10.2, "Noctilio leporinus", "echolocation"),
        (a, 10.5, "Pteronotus mesoamericanus", "echolocation"),
        (a, 10.7, "Noctilio leporinus", "echolocation"),  # two species tags on one event: two rows, one position
        (a, 10.7, "Pteronotus mesoamericanus", "echolocation"),
        (a, 30.4, "Murciélago pescador menor", "social"),
        (b, 0.25, None, "echolocation"),  # no species tag: detection only
        (b, 0.6, "Pteronotus mesoamericanus", "echolocation"),
    ]
    np.testing.assert_allclose(calls["end"], [10.211, 10.52, 10.708, 10.708, np.nan, np.nan, 0.607])
    np.testing.assert_allclose(calls["low_freq"], [25000, np.nan, 30000, 30000, np.nan, 52000, 45000])
    np.testing.assert_allclose(calls["high_freq"], [61000, np.nan, 70000, 70000, np.nan, 52000, 80000])
    assert list(calls["duration"]) == [60.0] * 5 + [5.0] * 2  # soundevent's durations are real
    # the social call is not learned as a bat call unless asked
    chosen = select_calls(annotated)
    assert chosen.loc[chosen["event"] == "social", "role"].tolist() == ["negative"]


def test_options_completed_only_species_key_and_time_expansion(tmp_path):
    path = _save(tmp_path, _project())
    done = read_aoef(path, completed_only=True)
    assert done.windows["start"].tolist() == [10.0, 0.0]  # the assigned, unfinished clip is left out
    assert 30.4 not in done.calls["position"].tolist() and len(done.calls) == 6
    doc = _project()
    for tag in doc["data"]["tags"]:
        tag["key"] = "taxon" if tag["key"] == "species" else tag["key"]
    renamed = _save(tmp_path, doc, "taxon.json")
    assert read_aoef(renamed).calls["class"].notna().sum() == 6  # 'taxon' is among the keys searched
    assert read_aoef(renamed, species_key="species").calls["class"].isna().all()
    slow = read_aoef(path, time_expansion=2.0)
    np.testing.assert_allclose(slow.calls["position"].iloc[:2], [5.1, 5.25])
    np.testing.assert_allclose(slow.calls["low_freq"].iloc[0], 50000.0)
    assert slow.windows["end"].tolist() == [5.5, 15.5, 0.5]


def _broken(change):
    doc = _project()
    change(doc["data"])
    return doc


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(collection_type="dataset"), r"data\.collection_type: 'dataset' holds no annotations"),
        (lambda d: d["sound_event_annotations"][2].update(sound_event=_id("nothing")),
         r"data\.sound_event_annotations\[2\]\.sound_event: no sound event with uuid"),
        (lambda d: d["sound_events"][0]["geometry"].update(coordinates=[1.0, 2.0, 3.0]),
         r"data\.sound_events\[0\]\.geometry\.coordinates: BoundingBox needs 4 numbers"),
        (lambda d: d["sound_events"][1]["geometry"].update(type="Circle"),
         r"data\.sound_events\[1\]\.geometry: unknown geometry type 'Circle'"),
        (lambda d: d["tags"][2].update(value="Singing"),
         r"data\.sound_event_annotations\[0\]\.tags: unknown kind of sound 'Singing'"),
        (lambda d: d["recordings"][0].pop("path"), r"data\.recordings\[0\]: missing 'path'"),
        (lambda d: d["clips"][1].update(start_time="ten"), r"data\.clips\[1\]\.start_time: 'ten' is not a number"),
        (lambda d: d["sound_events"][3]["geometry"].update(coordinates=-1.0), r"start time -1\.0 s is negative"),
        (lambda d: d["clip_annotations"][0]["sound_events"].append(_id("ghost")),
         r"data\.clip_annotations\[0\]\.sound_events\[3\]: no sound event annotation"),
    ],
)
def test_malformed_projects_are_one_line_naming_the_json_path(tmp_path, change, message):
    path = _save(tmp_path, _broken(change))
    with pytest.raises(AnnotationError) as info:
        read_aoef(path)
    text = str(info.value)
    assert text.startswith(str(path)) and "\n" not in text
    assert re.search(message, text), text


def test_bad_json_and_other_documents(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text(json.dumps(_project())[:200], encoding="utf-8")
    with pytest.raises(AnnotationError, match=r"cut\.json: not valid JSON \(line 1, column \d+"):
        read_aoef(path)
    with pytest.raises(AnnotationError, match="not an AOEF file"):
        read_aoef(_save(tmp_path, {"annotation": []}, "bd2.json"))
    bare = copy.deepcopy(_project()["data"])  # the data object alone is accepted too
    assert len(read_aoef(_save(tmp_path, bare, "bare.json")).calls) == 7
