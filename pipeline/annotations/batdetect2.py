"""batdetect2's annotation files (its annotation tool's ``<recording>.wav.json``).

Facts of the format (the repositories macaodha/batdetect2 and macaodha/batdetect2_GUI, and the
three hand-edited files of ``../shared/data/real/annotated/anns``):

- One JSON object per recording: ``id`` (the recording's file name, with its extension),
  ``duration`` (s), ``time_exp`` (time-expansion factor), ``annotated`` (whether a person
  annotated it; files written by the detector say false), ``issues`` (the annotator was unsure
  of some calls), ``class_name`` (the file's main species), ``notes``, and ``annotation``: one
  object per sound event with ``start_time``, ``end_time`` (s), ``low_freq``, ``high_freq``
  (Hz), ``class`` (a Latin species name, or ``Bat`` for a bat of unknown species, or
  ``Unknown``), ``event`` (``Echolocation``, ``Social``, ``Feeding``, ``Unknown``) and
  ``individual``.
- **Time expansion**: batdetect2 and its annotation tool read a file at its header rate times
  ``time_exp`` (``load_audio_file``: ``sampling_rate * time_exp_fact``), so the times,
  frequencies and ``duration`` of an annotation file are real already, whatever ``time_exp``
  says. (batml's first reader divided them by ``time_exp`` again; the files at hand all have
  ``time_exp`` 1.)

Classes are kept as written (``Bat``/``Unknown`` -> detection only). The seven groups of the
reference system (``pipeline/annotations/species_groups.csv``) are an option: ``groups="reference"``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from pipeline.annotations.table import (
    AnnotationSet,
    class_and_event,
    empty_calls,
    event_name,
    to_real_time,
    validate_calls,
)
from pipeline.config import REFERENCE_GROUPS
from pipeline.annotations.names import species_groups
from pipeline.io.annotations import AnnotationError


def _groups(groups) -> tuple[dict[str, str] | None, list[str] | None]:
    """The species -> class mapping asked for, and the class order it declares."""
    if groups is None:
        return None, None
    if isinstance(groups, str) and groups == "reference":
        return species_groups(), list(REFERENCE_GROUPS)
    if isinstance(groups, Mapping):
        mapping = {str(k): str(v) for k, v in groups.items()}
        return mapping, list(dict.fromkeys(mapping.values()))
    path = Path(groups)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{path}: not a readable CSV of species groups ({exc})") from None
    if not {"species", "group"} <= set(table.columns):
        raise AnnotationError(f"{path}: a species-groups CSV needs the columns species and group")
    mapping = dict(zip(table["species"], table["group"]))
    return mapping, list(dict.fromkeys(mapping.values()))


def _number(value, where: str, *, required: bool) -> float:
    if value is None or value == "":
        if required:
            raise AnnotationError(f"{where}: missing")
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AnnotationError(f"{where}: {value!r} is not a number")
    return float(value)


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.json") if p.is_file())
        if not files:
            raise AnnotationError(f"{path}: no batdetect2 annotation file (*.json) in this folder")
        return files
    raise AnnotationError(f"{path}: not found")


def read_batdetect2(
    path: str | os.PathLike,
    *,
    time_expansion: float = 1.0,
    groups: str | Mapping[str, str] | os.PathLike | None = None,
    include_unannotated: bool = False,
) -> AnnotationSet:
    """Read batdetect2 annotation files.

    Parameters
    ----------
    path : str or os.PathLike
        A folder (searched recursively for ``*.json``) or one file.
    time_expansion : float
        Extra factor by which the stored times are slowed down; 1 (default): they are real,
        as batdetect2 writes them (see the module's notes).
    groups : "reference", mapping, path or None
        None (default): classes are the species as written. ``"reference"``: species mapped to the
        reference system's seven groups (``pipeline/annotations/species_groups.csv``), classes in the reference system's order.
        A mapping or a CSV with columns ``species,group``: that mapping. A species the mapping
        lacks becomes a detection-only call (listed in ``skipped``).
    include_unannotated : bool
        Read files whose ``annotated`` is false (the detector's own output) too. Default:
        they are left out and listed in ``skipped``.

    Returns
    -------
    AnnotationSet
        ``source="batdetect2"``; ``file`` the ``id`` as written; ``class`` the species (``Bat``
        and ``Unknown`` give a detection-only call); ``event`` from the ``event`` field
        (``Feeding`` -> buzz, ``Unknown`` -> other); ``windows`` each annotated file whole
        (0 to ``duration``), files without calls included; ``classes`` None, or the groups'.

    Raises
    ------
    AnnotationError
        One line naming the file, the JSON path and the reason: bad JSON, no ``annotation``
        list, a time that is missing or not a number, an unknown ``event``.
    """
    path = Path(path)
    mapping, classes = _groups(groups)
    rows, where, windows, skipped, unmapped = [], [], [], [], {}
    for file in _files(path):
        try:
            doc = json.loads(file.read_bytes().decode("utf-8-sig"))
        except json.JSONDecodeError as exc:
            raise AnnotationError(f"{file}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise AnnotationError(f"{file}: cannot read ({exc})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("annotation"), list):
            raise AnnotationError(f"{file}: not a batdetect2 annotation file: no 'annotation' list")
        if doc.get("annotated") is False and not include_unannotated:
            skipped.append(f"{file}: not annotated by a person ('annotated': false), left out")
            continue
        name = str(doc.get("id") or file.name.removesuffix(".json"))
        duration = _number(doc.get("duration"), f"{file}: duration", required=False)
        for i, event in enumerate(doc["annotation"]):
            here = f"{file}: annotation[{i}]"
            if not isinstance(event, dict):
                raise AnnotationError(f"{here}: expected an object")
            start = _number(event.get("start_time"), f"{here}.start_time", required=True)
            end = _number(event.get("end_time"), f"{here}.end_time", required=False)
            kind = None
            if event.get("event") not in (None, ""):
                kind = event_name(event["event"])
                if kind is None:
                    raise AnnotationError(f"{here}.event: unknown kind of sound {event['event']!r}")
            label, kind = class_and_event(event.get("class"), kind)
            if mapping is not None and label is not None:
                if label in mapping:
                    label = mapping[label]
                else:
                    unmapped[label] = unmapped.get(label, 0) + 1
                    label = None
            rows.append(
                {
                    "file": name, "position": start, "end": end,
                    "low_freq": _number(event.get("low_freq"), f"{here}.low_freq", required=False),
                    "high_freq": _number(event.get("high_freq"), f"{here}.high_freq", required=False),
                    "class": label, "event": kind, "duration": duration,
                }
            )  # fmt: skip
            where.append(here)
        if math.isfinite(duration):
            windows.append({"file": name, "start": 0.0, "end": duration})
    skipped += [f"{path}: {n} call(s) of {species!r}, a species without a group, kept without class"
                for species, n in unmapped.items()]  # fmt: skip
    calls = pd.DataFrame(rows) if rows else empty_calls()
    calls = validate_calls(to_real_time(calls, time_expansion), where=where, origin=str(path))
    window_table = to_real_time(pd.DataFrame(windows, columns=["file", "start", "end"]), time_expansion) if windows else None
    return AnnotationSet(calls=calls, windows=window_table, classes=classes, source="batdetect2", skipped=skipped)
