"""Raven Pro selection tables of the detections: ``OUT/raven/`` or one combined table.

A Raven table covers a whole file, its channels told apart by Raven's ``Channel`` (counting
from 1), and lists, besides the reported species (as the CSV's rows), each detected call of
which no class reaches its threshold as one selection of species ``"unknown"``. Written by
streaming over the parts, atomically.
"""

from __future__ import annotations

import math
import os
import posixpath
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.detection.schema import probability_column, species_rows, threshold_values
from pipeline.files import atomic_file, replace_directory, temporary_name
from pipeline.outputs.folder import RAVEN_COMBINED_NAME, RAVEN_DIRNAME, RAVEN_SUFFIX, output_directory
from pipeline.outputs.parts import empty_detections, iter_parts

#: Species of a Raven row for a detected call of which no class reaches its threshold.
UNKNOWN_SPECIES = "unknown"


#: Raven Pro's view of the selections.
RAVEN_VIEW = "Spectrogram 1"


#: Columns of a Raven table of one file, in order.
RAVEN_COLUMNS = (
    "Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
    "High Freq (Hz)", "Species", "Probability", "Score",
)  # fmt: skip


#: Columns of the combined Raven table (all files), in order.
RAVEN_COMBINED_COLUMNS = (*RAVEN_COLUMNS, "Begin File", "File Offset (s)")


def raven_rows(
    events: pd.DataFrame,
    classes: Sequence[str],
    thresholds: Mapping[str, float] | None,
    *,
    window_seconds: float,
    low_hz: float,
    high_hz: float,
    include_unknown: bool = True,
) -> pd.DataFrame:
    """Raven selections of some events (no ``Selection`` number yet).

    Parameters
    ----------
    events : pandas.DataFrame
        Rows of a detection part.
    classes, thresholds
        As :func:`reference_rows`.
    window_seconds : float
        Duration of a selection (the model window's, in real seconds).
    low_hz, high_hz : float
        Frequency band of every selection.
    include_unknown : bool
        Whether an event whose score reaches the detection threshold, but whose classes all
        stay below theirs, gives a row of species :data:`UNKNOWN_SPECIES` (empty
        ``Probability``).

    Returns
    -------
    pandas.DataFrame
        The columns of :data:`RAVEN_COMBINED_COLUMNS` but ``Selection``, with
        ``Begin Time (s)`` the time in the file: one row per row of :func:`reference_rows`
        (same order) plus, with ``include_unknown``, one row per unclassified call in its
        event's place. ``Channel`` counts from 1 (a mix is channel 1).
    """
    classes = [str(name) for name in classes]
    window_seconds, low_hz, high_hz = float(window_seconds), float(low_hz), float(high_hz)
    if not (math.isfinite(window_seconds) and window_seconds > 0):
        raise ValueError(f"window_seconds={window_seconds} must be a positive number of seconds")
    if not (math.isfinite(low_hz) and math.isfinite(high_hz) and 0 <= low_hz < high_hz):
        raise ValueError(f"the band {low_hz}..{high_hz} Hz must satisfy 0 <= low_hz < high_hz")
    detection_threshold, class_thresholds = threshold_values(thresholds, classes)
    n = len(events)
    # species_rows names each row by its event's index: the rows' events, in order.
    numbered = events.assign(recording=pd.Series(np.arange(n), index=events.index, dtype=object))
    rows = species_rows(numbered, classes, thresholds)
    event_index = np.asarray(rows["file_name"], dtype=np.int64)
    species = np.asarray(rows["predicted_species"], dtype=object)
    probability = np.asarray(rows["predicted_prob"], dtype=np.float32)
    if include_unknown and n:
        prob = np.column_stack([np.asarray(events[probability_column(c)], dtype=np.float64) for c in classes])
        called = np.asarray(events["score"], dtype=np.float64) >= detection_threshold
        unknown = np.flatnonzero(called & ~np.any(prob >= class_thresholds, axis=1))
        event_index = np.concatenate([event_index, unknown])
        species = np.concatenate([species, np.full(len(unknown), UNKNOWN_SPECIES, dtype=object)])
        probability = np.concatenate([probability, np.full(len(unknown), np.nan, dtype=np.float32)])
        order = np.argsort(event_index, kind="stable")
        event_index, species, probability = event_index[order], species[order], probability[order]
    time = np.asarray(events["time"], dtype=np.float64)[event_index]
    channel = np.asarray(events["channel"], dtype=np.int64)[event_index]
    return pd.DataFrame(
        {
            "View": pd.Series([RAVEN_VIEW] * len(event_index), dtype=object),
            "Channel": np.maximum(channel, 0) + 1,
            "Begin Time (s)": time,
            "End Time (s)": time + window_seconds,
            "Low Freq (Hz)": np.full(len(event_index), low_hz),
            "High Freq (Hz)": np.full(len(event_index), high_hz),
            "Species": pd.Series(species, dtype=object),
            "Probability": probability,
            "Score": np.asarray(events["score"], dtype=np.float32)[event_index],
            "Begin File": pd.Series(np.asarray(events["file"], dtype=object)[event_index], dtype=object),
            "File Offset (s)": time,
        }
    )


def _path_parts(path: str) -> list[str]:
    return [part for part in str(path).split("/") if part]


def _common_prefix(lists: Sequence[list[str]]) -> list[str]:
    """The longest list that starts every list of ``lists`` (empty when there is none)."""
    if not lists:
        return []
    common = list(lists[0])
    for items in lists[1:]:
        k = 0
        while k < min(len(common), len(items)) and common[k] == items[k]:
            k += 1
        common = common[:k]
    return common


#: The longest file name (bytes) of common file systems (ext4, XFS, APFS, NTFS in UTF-16 units).
MAX_NAME_BYTES = 255


def _fit_file_name(stem: str, suffix: str, key: str) -> str:
    """``stem + suffix``, or, when longer than :data:`MAX_NAME_BYTES`, ``stem`` cut (on a
    character boundary) followed by ``~`` and 8 hex digits of the SHA-256 of ``key``."""
    import hashlib

    if len((stem + suffix).encode("utf-8")) <= MAX_NAME_BYTES:
        return stem + suffix
    tag = "~" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]
    room = MAX_NAME_BYTES - len((tag + suffix).encode("utf-8"))
    cut = stem.encode("utf-8")[:room].decode("utf-8", errors="ignore")
    return cut + tag + suffix


def raven_table_names(paths: Sequence[str]) -> dict[str, str]:
    """The name of each file's Raven table.

    Parameters
    ----------
    paths : sequence of str
        The files' paths as the cube stores them (local paths or URLs, ``/``-separated).

    Returns
    -------
    dict of str to str
        For each path, its path relative to the longest common folder of all ``paths``,
        extension dropped, ``/`` replaced by ``__``, and ``.Table.1.selections.txt`` added
        (Raven Pro's naming): ``/data/site1/night2/a.wav`` among files under ``/data``
        gives ``site1__night2__a.Table.1.selections.txt``. Files whose names would collide
        once their extension is dropped (``a.wav``, ``a.flac``) keep it
        (``a.wav.Table.1.selections.txt``). A name longer than file systems allow (255
        bytes) is cut and ends with ``~`` and 8 hex digits of its path's SHA-256.

    Raises
    ------
    ValueError
        When two paths still give one name (``a__b/c.wav`` and ``a/b__c.wav``).
    """
    paths = list(dict.fromkeys(str(p) for p in paths))
    split = {path: _path_parts(path) for path in paths}
    common = _common_prefix([parts[:-1] for parts in split.values()])
    relative = {path: parts[len(common):] for path, parts in split.items()}
    stems = {path: "__".join([*parts[:-1], posixpath.splitext(parts[-1])[0]]) for path, parts in relative.items()}
    uses = Counter(stems.values())
    names = {
        path: _fit_file_name(stems[path] if uses[stems[path]] == 1 else "__".join(relative[path]), RAVEN_SUFFIX, path)
        for path in paths
    }
    seen: dict[str, str] = {}
    for path, name in names.items():
        if name in seen:
            raise ValueError(f"{seen[name]} and {path} would share the Raven table {name}")
        seen[name] = path
    return names


def _raven_text(rows: pd.DataFrame, columns: Sequence[str], first_selection: int) -> str:
    """Tab-separated lines of Raven rows, numbered from ``first_selection``."""
    numbered = rows.assign(Selection=np.arange(first_selection, first_selection + len(rows)))
    return numbered[list(columns)].to_csv(sep="\t", header=False, index=False, lineterminator="\n")


def _raven_header(columns: Sequence[str]) -> str:
    return "\t".join(columns) + "\n"


def _files_in_order(out_dir, recordings: pd.DataFrame | None) -> list[str]:
    """Every file of the detections (and of ``recordings``), in archive order."""
    paths: dict[str, None] = {}
    if recordings is not None:
        paths.update(dict.fromkeys(str(p) for p in recordings["path"]))
    for _, part in iter_parts(out_dir, columns=["file"]):
        paths.update(dict.fromkeys(str(p) for p in part["file"].unique()))
    return list(paths)


def _write_raven_per_file(out_dir, target: Path, rows_of_parts, recordings) -> list[Path]:
    names = raven_table_names(_files_in_order(out_dir, recordings))
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_name(target)
    staging.mkdir()
    try:
        counts: dict[str, int] = {}
        for rows in rows_of_parts:
            for path, group in rows.groupby("Begin File", sort=False):
                table = staging / names[path]
                with open(table, "a", encoding="utf-8", newline="") as fh:
                    if path not in counts:
                        fh.write(_raven_header(RAVEN_COLUMNS))
                        counts[path] = 0
                    fh.write(_raven_text(group, RAVEN_COLUMNS, counts[path] + 1))
                counts[path] += len(group)
        for path, name in names.items():
            if path not in counts:  # a processed file without any selection: header only
                (staging / name).write_text(_raven_header(RAVEN_COLUMNS), encoding="utf-8")
        replace_directory(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [target / name for name in names.values()]


def _timeline(durations: Mapping[str, float]) -> dict[str, float]:
    """Start of each file on the concatenated timeline, files in the mapping's order."""
    starts, total = {}, 0.0
    for path, seconds in durations.items():
        seconds = float(seconds)
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"duration {seconds} of {path} is not a number of seconds")
        starts[str(path)] = total
        total += seconds
    return starts


def _write_raven_combined(target: Path, rows_of_parts, durations) -> list[Path]:
    starts = None if durations is None else _timeline(durations)
    selection = 1
    with atomic_file(target) as fh:
        fh.write(_raven_header(RAVEN_COMBINED_COLUMNS))
        for rows in rows_of_parts:
            if starts is not None and len(rows):
                files = rows["Begin File"]
                missing = sorted(set(files) - set(starts))
                if missing:
                    raise ValueError(f"durations lack the file(s) {', '.join(missing[:5])}")
                offset = files.map(starts).to_numpy(dtype=np.float64)
                rows = rows.assign(
                    **{
                        "Begin Time (s)": rows["File Offset (s)"].to_numpy() + offset,
                        "End Time (s)": rows["End Time (s)"].to_numpy() + offset,
                    }
                )
            fh.write(_raven_text(rows, RAVEN_COMBINED_COLUMNS, selection))
            selection += len(rows)
    return [target]


def write_raven(
    out_dir: str | os.PathLike,
    classes: Sequence[str],
    thresholds: Mapping[str, float] | None,
    *,
    window_seconds: float,
    low_hz: float,
    high_hz: float,
    per_recording: bool = True,
    dest: str | os.PathLike | None = None,
    recordings: pd.DataFrame | None = None,
    durations: Mapping[str, float] | None = None,
    include_unknown: bool = True,
) -> list[Path]:
    """Write Raven Pro selection tables of the detections, streaming over the parts.

    Parameters
    ----------
    out_dir : str or os.PathLike
        The output folder (or its folder of parts).
    classes, thresholds
        As :func:`write_reference_csv`.
    window_seconds : float
        Duration of each selection: ``End Time = Begin Time + window_seconds``.
    low_hz, high_hz : float
        Frequency band of every selection.
    per_recording : bool
        True: one table per file, in the folder ``dest`` (default ``OUT/raven``), named by
        :func:`raven_table_names`; the channels of a multichannel file share its table
        (Raven opens a file with all its channels). False: one combined table, the file
        ``dest`` (default ``OUT/detections.selections.txt``), with the columns
        ``Begin File`` (the path as the cube stores it) and ``File Offset (s)``.
    recordings : pandas.DataFrame, optional
        Every processed recording (column ``path``; others ignored): with
        ``per_recording``, a file without any selection still gets a table, header only,
        so that it shows as processed.
    durations : mapping of str to float, optional
        Combined table only: each file's duration (s), in the order of the sound set that
        Raven opens. ``Begin Time (s)`` is then on the files' concatenated timeline (the
        file's start plus ``File Offset (s)``), as Raven reads a table of a multi-file sound
        set; without it ``Begin Time (s)`` equals ``File Offset (s)``, the time in the file.
    include_unknown : bool
        Whether a detected call (score reaching the detection threshold) of which no class
        reaches its threshold gets a row of species ``"unknown"`` with an empty
        ``Probability`` (default: yes, so that a reviewer sees and can label every detected
        call; the reference system's CSV has no row for them).

    Returns
    -------
    list of pathlib.Path
        The tables written (per file: in archive order).

    Notes
    -----
    A table is tab-separated text: the header ``Selection  View  Channel  Begin Time (s)
    End Time (s)  Low Freq (Hz)  High Freq (Hz)  Species  Probability  Score`` (and
    ``Begin File  File Offset (s)`` for the combined table), then one row per (event,
    species reaching its threshold) as in the reference system's CSV, in archive order, numbered
    ``Selection`` 1..n in each table. ``View`` is ``Spectrogram 1``; ``Channel`` counts
    from 1 (channel 0 and a mix are 1). The tables are written in a temporary place and
    renamed into place: the per-file folder is replaced whole, so that no table of an
    earlier run's remains.
    """
    classes = [str(name) for name in classes]
    threshold_values(thresholds, classes)
    options = dict(window_seconds=window_seconds, low_hz=low_hz, high_hz=high_hz, include_unknown=include_unknown)
    raven_rows(empty_detections(classes, None), classes, thresholds, **options)  # check the options now
    rows_of_parts = (
        raven_rows(events, classes, thresholds, **options) for _, events in iter_parts(out_dir)
    )
    out = output_directory(out_dir)
    if per_recording:
        target = Path(dest) if dest is not None else out / RAVEN_DIRNAME
        return _write_raven_per_file(out_dir, target, rows_of_parts, recordings)
    target = Path(dest) if dest is not None else out / RAVEN_COMBINED_NAME
    return _write_raven_combined(target, rows_of_parts, durations)
