"""Raven Pro selection tables.

Facts of the format (the Raven Pro User's Manual of the Cornell Lab of Ornithology, chapters on
selection tables and on large datasets; and the tables batml itself writes,
:func:`pipeline.io.detections.write_raven`):

- A selection table is tab-separated text with one header line, saved by default as
  ``<sound file name without extension>.Table.<n>.selections.txt``.
- Standard columns: ``Selection`` (number), ``View`` (``Spectrogram 1``, ``Waveform 1``...),
  ``Channel`` (from 1), ``Begin Time (s)``, ``End Time (s)``, ``Low Freq (Hz)``,
  ``High Freq (Hz)``; annotation columns that the user adds (``Species``, ``Class``,
  ``Label``, ``Annotation``...), and measurements.
- A selection visible in several views is one row **per view**, with the same ``Selection``
  number and the same bounds: read once here (the spectrogram view's row is preferred).
- A table made on a multi-file sound set adds ``Begin File`` (the file the selection starts
  in; ``Begin Path`` its full path) and ``File Offset (s)`` (its start within that file);
  ``Begin Time (s)`` is then on the concatenated timeline of the sound set. Times in the file
  come from ``File Offset (s)``; the recording is ``Begin File`` (else ``Begin Path``'s file name).
- ``Channel`` is not kept: a call belongs to its file, whatever the channel it was drawn on.
- Times are in seconds and frequencies in hertz **of the sound as Raven opened it**: unless the
  file was opened with its speed corrected, Raven does not undo time expansion, so a table made
  on a x10 time-expanded file has times 10 times too long and frequencies 10 times too low.
  Give ``time_expansion=10`` for such tables; times are divided and frequencies multiplied by
  it. batml's own tables are in real time already.
- Encoding: UTF-8, or the computer's code page (accented names in Latin-1); both are read.

batml's own output reads back: per-recording tables (``raven/*.Table.1.selections.txt``,
recording named after the table, ``unknown`` species as a detection-only call) and the combined
table (``detections.selections.txt``, with ``Begin File`` and ``File Offset (s)``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from pipeline.annotations.table import (
    AnnotationSet,
    class_and_event,
    empty_calls,
    event_name,
    parse_numbers,
    to_real_time,
    validate_calls,
)
from pipeline.annotations.tabular import DelimitedTable, read_delimited
from pipeline.io.annotations import AnnotationError

#: Columns searched, in order, for the species when none is named (then case-insensitively).
SPECIES_COLUMNS = ("Species", "species", "Class", "class", "Label", "label", "Annotation", "annotation",
                   "Taxon", "Species Code", "Spp")  # fmt: skip
#: Columns searched for the kind of sound (echolocation, social, buzz...) when none is named.
EVENT_COLUMNS = ("Event", "Call Type", "Sound Type Category", "Call type", "event", "call type")
BEGIN, END, LOW, HIGH = "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)"
BEGIN_FILE, BEGIN_PATH, FILE_OFFSET = "Begin File", "Begin Path", "File Offset (s)"

_TABLE_SUFFIX = re.compile(r"\.Table\.\d+\.selections\.txt$", re.IGNORECASE)


def recording_of_table(name: str) -> str:
    """The recording a per-recording table is named after: its name up to
    ``.Table.<n>.selections.txt`` (else up to ``.selections.txt`` or ``.txt``)."""
    for pattern in (_TABLE_SUFFIX, re.compile(r"\.selections\.txt$", re.I), re.compile(r"\.txt$", re.I)):
        stem = pattern.sub("", name)
        if stem != name:
            return stem
    return name


def _find_column(table: DelimitedTable, given: str | None, defaults: tuple[str, ...], what: str) -> str | None:
    if given is not None:
        if given not in table.header:
            raise AnnotationError(
                f"{table.path}: no {what} column {given!r} (the header has {', '.join(map(repr, table.header))})"
            )
        return given
    for name in defaults:
        if name in table.header:
            return name
    lowered = {name.lower(): name for name in table.header}
    for name in defaults:
        if name.lower() in lowered:
            return lowered[name.lower()]
    return None


def _one_row_per_selection(table: DelimitedTable) -> list[int]:
    """Indices of the rows to keep: one per selection (per file), the spectrogram view first."""
    if "Selection" not in table.header:
        return list(range(len(table.rows)))
    chosen: dict[tuple[str, str], int] = {}
    for i, row in enumerate(table.rows):
        key = (row.get(BEGIN_FILE, ""), row["Selection"])
        if key not in chosen:
            chosen[key] = i
        elif row.get("View", "").lower().startswith("spectrogram") and not table.rows[chosen[key]].get(
            "View", ""
        ).lower().startswith("spectrogram"):
            chosen[key] = i
    return sorted(chosen.values())


def _table_calls(table: DelimitedTable, recording: str | None, species_column: str | None,
                 event_column: str | None) -> tuple[pd.DataFrame, list[str]]:
    """The calls of one table, as the file states them (before time expansion)."""
    table.require(BEGIN, END)
    species = _find_column(table, species_column, SPECIES_COLUMNS, "species")
    events = _find_column(table, event_column, EVENT_COLUMNS, "event")
    keep = _one_row_per_selection(table)
    rows = [table.rows[i] for i in keep]
    where = [table.where(i) for i in keep]
    begin = parse_numbers([r[BEGIN] for r in rows], column=BEGIN, where=where)
    end = parse_numbers([r[END] for r in rows], column=END, where=where)
    low = parse_numbers([r.get(LOW, "") for r in rows], column=LOW, where=where, required=False)
    high = parse_numbers([r.get(HIGH, "") for r in rows], column=HIGH, where=where, required=False)
    file_column = BEGIN_FILE if BEGIN_FILE in table.header else (BEGIN_PATH if BEGIN_PATH in table.header else None)
    if file_column is not None:
        files = [r[file_column] for r in rows]
        if file_column == BEGIN_PATH:  # a full path on the annotator's computer: its file name
            files = [re.split(r"[\\/]", name)[-1] for name in files]
        for i, name in enumerate(files):
            if not name:
                raise AnnotationError(f"{where[i]}: {file_column} is empty")
        if FILE_OFFSET in table.header:
            offset = parse_numbers([r[FILE_OFFSET] for r in rows], column=FILE_OFFSET, where=where)
        elif len(set(files)) <= 1:
            offset = begin
        else:
            raise AnnotationError(
                f"{table.path}: selections in {len(set(files))} files but no {FILE_OFFSET!r} column: "
                f"{BEGIN!r} is on the sound set's timeline, so the time in each file is unknown"
            )
    else:
        files = [recording] * len(rows)
        offset = begin
    for i in np.flatnonzero(end < begin):
        raise AnnotationError(f"{where[i]}: {END} {float(end[i])!r} is before {BEGIN} {float(begin[i])!r}")
    labels, kinds = [], []
    for i, row in enumerate(rows):
        kind = None
        if events is not None and row[events]:
            kind = event_name(row[events])
            if kind is None:
                raise AnnotationError(f"{where[i]}: unknown kind of sound {row[events]!r} in column {events!r}")
        label, kind = class_and_event(row[species] if species is not None else None, kind)
        labels.append(label)
        kinds.append(kind)
    calls = pd.DataFrame(
        {
            "file": files,
            "position": offset,
            "end": offset + (end - begin),
            "low_freq": low,
            "high_freq": high,
            "class": pd.Series(labels, dtype=object),
            "event": kinds,
        }
    )
    return calls, where


def _tables_in(folder: Path) -> list[Path]:
    texts = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(".txt"))
    tables = [p for p in texts if p.name.lower().endswith(".selections.txt")]
    if tables:
        return tables
    found = []
    for path in texts:
        with open(path, "rb") as fh:
            if BEGIN.encode() in fh.readline():
                found.append(path)
    return found


def read_raven(
    path: str | os.PathLike,
    *,
    time_expansion: float = 1.0,
    species_column: str | None = None,
    event_column: str | None = None,
    recording: str | None = None,
    extent_as_window: bool = False,
) -> AnnotationSet:
    """Read Raven Pro selection tables.

    Parameters
    ----------
    path : str or os.PathLike
        One table, or a folder searched recursively for tables (``*.selections.txt``; failing
        those, ``*.txt`` files whose header has ``Begin Time (s)``).
    time_expansion : float
        Factor by which the audio Raven showed was slowed down (10 for x10 time-expanded files
        opened as they are); 1 (default) when the times are real.
    species_column : str, optional
        The column holding the class. Default: the first of :data:`SPECIES_COLUMNS` present
        (exact name, then ignoring case); with none, every selection is a detection-only call.
        ``unknown``, ``Bat`` or an empty cell is a call of unknown species; ``Noise``,
        ``Insect``, ``Social``... in it set the kind of sound instead (see
        :func:`pipeline.annotations.table.class_and_event`).
    event_column : str, optional
        The column holding the kind of sound (``Echolocation``, ``Social``, ``Feeding buzz``,
        ``Noise``...). Default: the first of :data:`EVENT_COLUMNS` present; with none, from the
        species column as above, else echolocation.
    recording : str, optional
        The recording a single table without ``Begin File`` belongs to. Default: the table's
        name up to ``.Table.<n>.selections.txt`` (in a folder, with its sub-folder in front).
    extent_as_window : bool
        If True, each recording's annotated window is the extent of its selections (earliest
        begin to latest end): negatives are then sampled, and evaluation counted, only there.
        Default False: recordings annotated whole.

    Returns
    -------
    AnnotationSet
        ``source="raven"``; ``classes`` None.

    Raises
    ------
    AnnotationError
        One line naming the table, the line and the reason: a missing ``Begin Time (s)`` or
        ``End Time (s)`` column, a species column that is not there, a time that is not a number,
        negative, or an end before its begin, an unknown kind of sound, several files without
        ``File Offset (s)``.
    """
    path = Path(path)
    if path.is_dir():
        if recording is not None:
            raise AnnotationError(f"{path}: recording= names the recording of a single table, not of a folder")
        tables = _tables_in(path)
        if not tables:
            raise AnnotationError(f"{path}: no Raven selection table (*.selections.txt) in this folder")
        names = {t: str(PurePosixPath(*t.relative_to(path).parent.parts, recording_of_table(t.name))) for t in tables}
    elif path.exists():
        tables = [path]
        names = {path: recording if recording is not None else recording_of_table(path.name)}
    else:
        raise AnnotationError(f"{path}: file not found")
    parts, where = [], []
    for table_path in tables:
        table = read_delimited(table_path)
        calls, rows = _table_calls(table, names[table_path], species_column, event_column)
        parts.append(calls)
        where += rows
    calls = pd.concat(parts, ignore_index=True) if parts else empty_calls()
    calls = validate_calls(to_real_time(calls, time_expansion), where=where, origin=str(path))
    windows = None
    if extent_as_window:
        extent = calls.groupby("file", sort=False).agg(start=("position", "min"), end=("end", "max"))
        windows = extent.reset_index()
    return AnnotationSet(calls=calls, windows=windows, classes=None, source="raven")
