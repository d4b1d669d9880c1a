"""soundevent / AOEF annotation projects (Whombat's exports, batdetect2's newer annotations).

Facts of the format, from the soundevent package (``soundevent.io.aoef`` and
``soundevent.data``, version 2; AOEF version ``1.1.0``):

- One JSON object: ``{"version": "1.1.0", "created_on": ..., "data": {...}}``; ``data`` has a
  ``collection_type``: ``annotation_project`` (Whombat), ``annotation_set`` or
  ``evaluation_set`` hold annotations (``dataset`` and ``recording_set`` list recordings only,
  ``model_run`` and ``prediction_set`` hold predictions).
- Objects are listed once and referred to by id: ``tags`` (``{"id": int, "key": str,
  "value": str}``), ``recordings`` (``uuid``, ``path`` relative to the audio folder, ``duration``
  s, ``samplerate`` Hz, ``channels``, optional ``time_expansion``), ``clips`` (``uuid``,
  ``recording``, ``start_time``, ``end_time``), ``sound_events`` (``uuid``, ``recording``,
  ``geometry``), ``sound_event_annotations`` (``uuid``, ``sound_event``, ``tags``: tag ids),
  ``clip_annotations`` (``uuid``, ``clip``, ``sound_events``: ids of sound event annotations,
  ``tags``); a project adds ``tasks`` (``clip``, ``status_badges``: ``state`` = ``assigned``,
  ``completed``, ``verified`` or ``rejected``) and ``project_tags`` (the tags offered to
  annotators).
- A geometry is ``{"type": ..., "coordinates": ...}`` in seconds from the start of the recording
  and hertz: ``TimeStamp`` (t), ``TimeInterval`` ([start, end]), ``Point`` ([t, f]),
  ``BoundingBox`` ([start, low, end, high]), ``LineString`` and ``MultiPoint`` ([[t, f], ...]),
  ``Polygon`` and ``MultiLineString`` (one level deeper), ``MultiPolygon`` (two levels deeper).
  A call's start and end are the geometry's time bounds, its band its frequency bounds.
- **Time expansion**: soundevent stores a time-expanded recording's ``duration`` and
  ``samplerate`` as the real ones (the file's divided and multiplied by ``time_expansion``), and
  loads its audio at the real rate, so geometry times and frequencies are real already:
  ``time_expansion`` here defaults to 1 and is only for projects made otherwise.
- The annotated clips are the annotated windows: outside them nothing is known.
- Species are tags; batdetect2 uses the key ``species`` (its ``SPECIES_TAG_KEY``) and ``event``
  for the kind of call; Whombat lets a project choose its keys. Each species tag on a sound event
  gives one row (two species on one event: two rows at one position).

soundevent itself is not used: it pulls in pydantic, shapely and more, and reading the JSON needs
none of them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from pipeline.annotations.table import (
    AnnotationSet,
    class_and_event,
    empty_calls,
    event_name,
    to_real_time,
    validate_calls,
)
from pipeline.io.annotations import AnnotationError
from pipeline.annotations.tabular import read_utf8

#: Collection types that hold annotations.
ANNOTATED_COLLECTIONS = ("annotation_project", "annotation_set", "evaluation_set")
#: Keys tried, in order, for the species when the default key ``species`` is on no tag.
SPECIES_KEYS = ("species", "class", "dwc:scientificName", "scientific_name", "Species", "taxon")
#: Task states that mean a clip was annotated to the end.
DONE_STATES = ("completed", "verified")


class _Document:
    """The ``data`` object of an AOEF file, with JSON paths for messages."""

    def __init__(self, path: Path, data: dict):
        self.path = path
        self.data = data

    def fail(self, where: str, reason: str) -> AnnotationError:
        return AnnotationError(f"{self.path}: {where}: {reason}")

    def items(self, name: str) -> Iterator[tuple[str, dict]]:
        values = self.data.get(name) or []
        if not isinstance(values, list):
            raise self.fail(f"data.{name}", "expected a list")
        for i, item in enumerate(values):
            where = f"data.{name}[{i}]"
            if not isinstance(item, dict):
                raise self.fail(where, "expected an object")
            yield where, item

    def field(self, item: dict, where: str, name: str, kind=None):
        if name not in item or item[name] is None:
            raise self.fail(where, f"missing {name!r}")
        value = item[name]
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise self.fail(f"{where}.{name}", f"{value!r} is not a number")
            return float(value)
        return value


def _points(coordinates, depth: int, where: str, doc: _Document) -> list[tuple[float, float]]:
    """The (time, frequency) pairs of a nested coordinate list ``depth`` levels deep."""
    if depth == 0:
        if (not isinstance(coordinates, list) or len(coordinates) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in coordinates)):
            raise doc.fail(where, f"expected a [time, frequency] pair, got {coordinates!r}")
        return [(float(coordinates[0]), float(coordinates[1]))]
    if not isinstance(coordinates, list) or not coordinates:
        raise doc.fail(where, "expected a non-empty list of coordinates")
    return [p for i, item in enumerate(coordinates) for p in _points(item, depth - 1, f"{where}[{i}]", doc)]


#: Nesting depth of the [time, frequency] pairs in each geometry with points.
_POINT_DEPTH = {"Point": 0, "LineString": 1, "MultiPoint": 1, "Polygon": 2, "MultiLineString": 2, "MultiPolygon": 3}


def geometry_bounds(geometry, where: str, doc: _Document) -> tuple[float, float, float, float]:
    """(start, end, low, high) of a soundevent geometry; NaN where it says nothing."""
    if not isinstance(geometry, dict) or "type" not in geometry or "coordinates" not in geometry:
        raise doc.fail(where, "expected a geometry with 'type' and 'coordinates'")
    kind, coordinates = geometry["type"], geometry["coordinates"]
    where = f"{where}.coordinates"

    def numbers(values, n):
        if (not isinstance(values, list) or len(values) != n
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
            raise doc.fail(where, f"{kind} needs {n} numbers, got {values!r}")
        return [float(v) for v in values]

    if kind == "TimeStamp":
        (t,) = numbers([coordinates], 1)
        return t, math.nan, math.nan, math.nan
    if kind == "TimeInterval":
        start, end = numbers(coordinates, 2)
        return start, end, math.nan, math.nan
    if kind == "BoundingBox":
        start, low, end, high = numbers(coordinates, 4)
        return min(start, end), max(start, end), min(low, high), max(low, high)
    if kind in _POINT_DEPTH:
        points = np.asarray(_points(coordinates, _POINT_DEPTH[kind], where, doc))
        times, freqs = points[:, 0], points[:, 1]
        end = math.nan if kind == "Point" else float(times.max())
        return float(times.min()), end, float(freqs.min()), float(freqs.max())
    raise doc.fail(where.removesuffix(".coordinates"), f"unknown geometry type {kind!r}")


def _load(path: Path) -> _Document:
    text = read_utf8(path)
    try:
        root = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if isinstance(root, dict) and isinstance(root.get("data"), dict):
        data = root["data"]
        version = str(root.get("version", "1"))
        if not version.startswith("1"):
            raise AnnotationError(f"{path}: version: AOEF version {version} is not supported (expected 1.x)")
    elif isinstance(root, dict) and "collection_type" in root:
        data = root
    else:
        raise AnnotationError(f"{path}: not an AOEF file: no 'data' object with a 'collection_type'")
    kind = data.get("collection_type")
    if kind not in ANNOTATED_COLLECTIONS:
        raise AnnotationError(
            f"{path}: data.collection_type: {kind!r} holds no annotations; expected one of {', '.join(ANNOTATED_COLLECTIONS)}"
        )
    return _Document(path, data)


def _recording_name(raw: str, audio_dir: Path | None) -> str:
    name = PurePosixPath(str(raw).replace("\\", "/"))
    if audio_dir is not None and name.is_absolute():
        try:
            return str(PurePosixPath(Path(str(name)).relative_to(audio_dir).as_posix()))
        except ValueError:
            pass
    return str(name)


def read_aoef(
    path: str | os.PathLike,
    *,
    time_expansion: float = 1.0,
    species_key: str | None = None,
    event_key: str = "event",
    audio_dir: str | os.PathLike | None = None,
    completed_only: bool = False,
) -> AnnotationSet:
    """Read a soundevent / AOEF annotation project (or annotation set) from its JSON file.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.json`` file.
    time_expansion : float
        Extra factor by which the stored times are slowed down; 1 (default): they are real, as
        soundevent stores them.
    species_key : str, optional
        The tag key of the species. Default ``species``, or, when no tag has that key, the first
        of :data:`SPECIES_KEYS` that some tag has. A sound event without a species tag is a
        detection-only call.
    event_key : str
        The tag key of the kind of sound (``Echolocation``, ``Social``, ``Feeding``...);
        default ``event``.
    audio_dir : str or os.PathLike, optional
        Absolute recording paths under this folder are made relative to it.
    completed_only : bool
        If True, only the clips of tasks marked completed or verified (and not rejected) are
        read. Default: every annotated clip.

    Returns
    -------
    AnnotationSet
        ``source="aoef"``; ``windows`` the annotated clips; ``classes`` the species of the
        project's tags (``project_tags``), in order, when it has some, else None.

    Raises
    ------
    AnnotationError
        One line naming the file, the JSON path and the reason: bad JSON, a collection without
        annotations, a missing field, an id that refers to nothing, a geometry that is not
        one, an unknown kind of sound.
    """
    path = Path(path)
    doc = _load(path)
    audio = Path(audio_dir) if audio_dir is not None else None
    tags: dict[int, tuple[str, str]] = {}
    for where, item in doc.items("tags"):
        tags[doc.field(item, where, "id")] = (str(doc.field(item, where, "key")), str(doc.field(item, where, "value")))
    recordings: dict[str, dict] = {}
    for where, item in doc.items("recordings"):
        duration = item.get("duration")
        recordings[str(doc.field(item, where, "uuid"))] = {
            "file": _recording_name(doc.field(item, where, "path"), audio),
            "duration": doc.field(item, where, "duration", float) if duration is not None else math.nan,
        }
    clips: dict[str, tuple[str, float, float]] = {}
    for where, item in doc.items("clips"):
        recording = str(doc.field(item, where, "recording"))
        if recording not in recordings:
            raise doc.fail(f"{where}.recording", f"no recording with uuid {recording}")
        start, end = doc.field(item, where, "start_time", float), doc.field(item, where, "end_time", float)
        clips[str(doc.field(item, where, "uuid"))] = (recording, start, end)
    events: dict[str, tuple[str, tuple[float, float, float, float]]] = {}
    for where, item in doc.items("sound_events"):
        recording = str(doc.field(item, where, "recording"))
        if recording not in recordings:
            raise doc.fail(f"{where}.recording", f"no recording with uuid {recording}")
        bounds = geometry_bounds(doc.field(item, where, "geometry"), f"{where}.geometry", doc)
        events[str(doc.field(item, where, "uuid"))] = (recording, bounds)
    annotations: dict[str, tuple[str, str, list[int]]] = {}
    for where, item in doc.items("sound_event_annotations"):
        event = str(doc.field(item, where, "sound_event"))
        if event not in events:
            raise doc.fail(f"{where}.sound_event", f"no sound event with uuid {event}")
        tag_ids = item.get("tags") or []
        for j, tag in enumerate(tag_ids):
            if tag not in tags:
                raise doc.fail(f"{where}.tags[{j}]", f"no tag with id {tag!r}")
        annotations[str(doc.field(item, where, "uuid"))] = (where, event, list(tag_ids))

    keys = {key for key, _ in tags.values()}
    if species_key is None:
        species_key = next((key for key in SPECIES_KEYS if key in keys), SPECIES_KEYS[0])

    rejected, done = set(), set()
    for where, task in doc.items("tasks"):
        states = {str(badge.get("state")) for badge in task.get("status_badges") or [] if isinstance(badge, dict)}
        clip = str(task.get("clip"))
        if "rejected" in states:
            rejected.add(clip)
        elif states & set(DONE_STATES):
            done.add(clip)

    chosen: list[str] = []  # sound event annotation uuids, in order
    windows: list[dict] = []
    referenced: set[str] = set()
    for where, item in doc.items("clip_annotations"):
        clip = str(doc.field(item, where, "clip"))
        if clip not in clips:
            raise doc.fail(f"{where}.clip", f"no clip with uuid {clip}")
        members = [str(uuid) for uuid in item.get("sound_events") or []]
        for j, uuid in enumerate(members):
            if uuid not in annotations:
                raise doc.fail(f"{where}.sound_events[{j}]", f"no sound event annotation with uuid {uuid}")
        referenced.update(members)
        if completed_only and (clip not in done or clip in rejected):
            continue
        recording, start, end = clips[clip]
        windows.append({"file": recordings[recording]["file"], "start": start, "end": end})
        chosen += members
    if not completed_only:
        chosen += [uuid for uuid in annotations if uuid not in referenced]

    rows, where_rows = [], []
    for uuid in dict.fromkeys(chosen):
        where, event, tag_ids = annotations[uuid]
        recording, (start, end, low, high) = events[event]
        kinds = [value for key, value in (tags[t] for t in tag_ids) if key == event_key]
        kind = None
        if kinds:
            kind = event_name(kinds[0])
            if kind is None:
                raise doc.fail(f"{where}.tags", f"unknown kind of sound {kinds[0]!r} (tag {event_key!r})")
        species = [value for key, value in (tags[t] for t in tag_ids) if key == species_key] or [None]
        for value in species:
            label, sound = class_and_event(value, kind)
            rows.append(
                {
                    "file": recordings[recording]["file"], "position": start, "end": end, "low_freq": low,
                    "high_freq": high, "class": label, "event": sound, "duration": recordings[recording]["duration"],
                }
            )  # fmt: skip
            where_rows.append(f"{path}: {where}")
    calls = pd.DataFrame(rows) if rows else empty_calls()
    calls = validate_calls(to_real_time(calls, time_expansion), where=where_rows, origin=str(path))
    window_table = None
    if windows or doc.data.get("clip_annotations"):
        window_table = to_real_time(pd.DataFrame(windows, columns=["file", "start", "end"]), time_expansion)
        window_table = window_table.drop_duplicates(ignore_index=True)
    project = [tags[t][1] for t in doc.data.get("project_tags") or [] if t in tags and tags[t][0] == species_key]
    project = list(dict.fromkeys(name for name in project if class_and_event(name)[0] is not None))
    return AnnotationSet(calls=calls, windows=window_table, classes=project or None, source="aoef")
