"""The canonical table of a run: one Parquet part per cube chunk, and its readers.

``OUT/detections.parquet`` holds one part per chunk of the cube, written by
:func:`write_part` when the chunk is finished. A part is written whole or not at all (a
temporary name in the same folder, flushed to disk, then renamed), and an empty part is
written too: the existence of a readable part is what records that its chunk is done
(:func:`finished_parts` is the resume journal). Parts concatenated in chunk order give the
events in archive order: recordings in cube order, and within a recording (even one that
spans two chunks) in time order.

Every part has the columns of :func:`pipeline.detection.schema.event_schema`, and its Parquet
metadata holds, under the key ``b"batml"``, a JSON object with the class list
(:func:`detection_classes`). Read it with :func:`read_detections` (pandas, filters pushed
down to the files) or :func:`open_detections` (a lazy Dask DataFrame, one partition per
part), or with any Parquet reader; :func:`iter_parts` streams it one part at a time, which
the derived outputs (CSV, Raven, report) do, so that their memory is that of one part
whatever the size of the run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.detection.schema import (
    BASE_COLUMNS,
    DETECTIONS_FORMAT,
    METADATA_KEY,
    base_fields,
    classes_of_columns,
    event_schema,
)
from pipeline.files import atomic_file
from pipeline.outputs.folder import PART_NAME, DetectionsError, part_path, parts_directory


def _classes_of_schema(schema: pa.Schema, where: str) -> list[str]:
    """The class list in a part's metadata (or, lacking it, its ``prob_`` columns)."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        return classes_of_columns(schema.names)
    try:
        document = json.loads(raw.decode("utf-8"))
        classes = [str(name) for name in document["classes"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise DetectionsError(f"{where}: unreadable {METADATA_KEY.decode()} metadata ({exc})") from None
    if int(document.get("format", DETECTIONS_FORMAT)) > DETECTIONS_FORMAT:
        raise DetectionsError(
            f"{where}: detections of format {document['format']}, newer than this code "
            f"({DETECTIONS_FORMAT}); upgrade batml to read them"
        )
    return classes


def _arrow_events(events: pd.DataFrame, classes: Sequence[str] | None) -> pa.Table:
    """``events`` as an arrow table of :func:`event_schema` (types checked and cast)."""
    if classes is None:
        classes = classes_of_columns(events.columns)
        if not classes:
            raise ValueError(
                "events have no prob_<class> column: give the classes (an empty table of "
                "events_table has them)"
            )
    schema = event_schema(classes)
    if len(events.columns) == 0 and len(events) == 0:
        return schema.empty_table()
    names = list(schema.names)
    unexpected = [name for name in events.columns if name not in names]
    missing = [name for name in names if name not in events.columns]
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"lack {', '.join(missing)}")
        if unexpected:
            problems.append(f"have unexpected {', '.join(map(str, unexpected))}")
        raise ValueError(
            f"events {' and '.join(problems)}; build them with events_table (columns: "
            f"{', '.join(names)})"
        )
    return pa.Table.from_pandas(events[names], schema=schema, preserve_index=False)


def write_part(
    out_dir: str | os.PathLike,
    chunk: int,
    events: pd.DataFrame,
    *,
    classes: Sequence[str] | None = None,
) -> Path:
    """Write the events of a finished chunk as its part, atomically.

    Parameters
    ----------
    out_dir : str or os.PathLike
        The run's output folder (or its folder of parts); created when missing.
    chunk : int
        The cube chunk whose events these are.
    events : pandas.DataFrame
        The chunk's events, in archive order: the columns of :func:`event_schema`
        (:func:`events_table` of each recording piece, concatenated). May be empty: the
        part is written anyway, with the schema, and records that the chunk is done
        (``pandas.DataFrame()`` will do, with ``classes``).
    classes : sequence of str, optional
        The model's class names. Default: those of the ``prob_<name>`` columns of
        ``events``, in their order.

    Returns
    -------
    pathlib.Path
        ``OUT/detections.parquet/part-{chunk:06d}.parquet``.

    Notes
    -----
    The part is written to ``.part-{chunk:06d}.parquet.tmp-<hex>`` in the same folder,
    flushed to disk and renamed onto its name (``os.replace``): a part under its own name
    is always complete, and writing it again (a rerun of the chunk) replaces it whole.
    """
    target = part_path(out_dir, chunk)
    table = _arrow_events(events, classes)
    with atomic_file(target, "wb") as fh:
        pq.write_table(table, fh)
    return target


def _part_files(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(chunk, path)`` of the files named as parts, in chunk order (readable or not)."""
    folder = parts_directory(out_dir)
    if not folder.is_dir():
        return []
    parts = []
    for entry in folder.iterdir():
        match = PART_NAME.match(entry.name)
        if match and entry.is_file():
            parts.append((int(match.group(1)), entry))
    return sorted(parts)


def finished_parts(out_dir: str | os.PathLike) -> set[int]:
    """The chunks whose part is complete: the resume journal of a detection run.

    Parameters
    ----------
    out_dir : str or os.PathLike
        The output folder, or its folder of parts (which need not exist yet).

    Returns
    -------
    set of int
        Chunks with a readable part under its own name. Temporaries are ignored, and so is
        a file under a part's name that is not a readable parquet file: its chunk counts as
        unfinished, and its rerun replaces the file.
    """
    finished = set()
    for chunk, path in _part_files(out_dir):
        try:
            pq.read_metadata(path)
        except (OSError, pa.ArrowException):
            continue
        finished.add(chunk)
    return finished


def _checked_parts(path: str | os.PathLike) -> tuple[list[Path], list[str] | None]:
    """The part files in chunk order and their common class list (None when no part).

    Raises
    ------
    FileNotFoundError
        When there is no folder of parts.
    DetectionsError
        When a part is unreadable or the parts disagree on the classes.
    """
    folder = parts_directory(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no detections (no such folder)")
    parts = [file for _, file in _part_files(folder)]
    classes, first = None, None
    for file in parts:
        try:
            schema = pq.read_schema(file)
        except (OSError, pa.ArrowException) as exc:
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DetectionsError(f"{file}: not a readable detection part ({first_line})") from None
        part_classes = _classes_of_schema(schema, str(file))
        if classes is None:
            classes = part_classes
            first = file
        elif part_classes != classes:
            raise DetectionsError(
                f"{file}: classes {', '.join(part_classes)} differ from those of {first.name} "
                f"({', '.join(classes)}): parts of different models in one folder"
            )
    return parts, classes


def detection_classes(path: str | os.PathLike) -> list[str] | None:
    """The class names of a run's detections, from its parts' metadata.

    Parameters
    ----------
    path : str or os.PathLike
        The output folder, or its folder of parts.

    Returns
    -------
    list of str or None
        The classes in the model's order; None when no part is written yet.
    """
    return _checked_parts(path)[1]


def checked_species(species: str | Iterable[str], classes: Sequence[str]) -> list[str]:
    species = [species] if isinstance(species, str) else [str(name) for name in species]
    unknown = [name for name in species if name not in classes]
    if unknown:
        raise ValueError(
            f"unknown species {', '.join(unknown)}; the detections hold {', '.join(classes)}"
        )
    return species


def empty_detections(classes: Sequence[str] | None, columns: Sequence[str] | None) -> pd.DataFrame:
    schema = event_schema(classes) if classes else pa.schema(base_fields())
    frame = schema.empty_table().to_pandas()
    return frame if columns is None else frame[list(columns)]


def read_detections(
    path: str | os.PathLike,
    *,
    species: str | Iterable[str] | None = None,
    min_probability: float | None = None,
    columns: Sequence[str] | None = None,
    files: str | Iterable[str] | None = None,
) -> pd.DataFrame:
    """Load a run's detected events into pandas, in archive order.

    Parameters
    ----------
    path : str or os.PathLike
        The output folder, or its folder of parts ``detections.parquet``.
    species : str or iterable of str, optional
        Keep the events whose most probable ``class`` is one of these.
    min_probability : float, optional
        Keep the events whose ``probability`` (that of their class) reaches this value,
        compared in float64 as the thresholds are.
    columns : sequence of str, optional
        The columns to load (default: all); the filters may use columns not loaded.
    files : str or iterable of str, optional
        Keep the events of these files (their ``file``, the path as the cube stores it).

    Returns
    -------
    pandas.DataFrame
        The events of every part, parts in chunk order (so rows in archive order), with a
        fresh ``RangeIndex``. With no part yet: an empty table (with the ``prob_`` columns
        only when the classes are known).

    Raises
    ------
    FileNotFoundError
        When there is no folder of parts.
    DetectionsError
        When a part is unreadable or the parts were written for different classes.
    ValueError
        For a species that is not one of the classes, or an unknown column.

    Notes
    -----
    The filters are pushed down to the parquet reader (:mod:`pyarrow.dataset`): row groups
    that cannot match are not read.
    """
    parts, classes = _checked_parts(path)
    if columns is not None:
        columns = list(columns)
        known = list(event_schema(classes).names) if classes else list(BASE_COLUMNS)
        unknown = [name for name in columns if name not in known]
        if unknown:
            raise ValueError(f"unknown column(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if not parts:
        return empty_detections(classes, columns)
    schema = event_schema(classes)
    condition = None
    if species is not None:
        condition = ds.field("class").isin(checked_species(species, classes))
    if min_probability is not None:
        reached = ds.field("probability").cast(pa.float64()) >= float(min_probability)
        condition = reached if condition is None else condition & reached
    if files is not None:
        wanted = ds.field("file").isin([files] if isinstance(files, str) else [str(f) for f in files])
        condition = wanted if condition is None else condition & wanted
    dataset = ds.dataset([os.fspath(p) for p in parts], schema=schema, format="parquet")
    table = dataset.to_table(columns=columns, filter=condition)
    return table.to_pandas()


def _dask_filters(species, min_probability, classes) -> list[tuple] | None:
    filters = []
    if species is not None:
        filters.append(("class", "in", checked_species(species, classes)))
    if min_probability is not None:
        filters.append(("probability", ">=", float(min_probability)))
    return filters or None


def open_detections(
    path: str | os.PathLike,
    *,
    species: str | Iterable[str] | None = None,
    min_probability: float | None = None,
    columns: Sequence[str] | None = None,
):
    """A run's detected events as a lazy Dask DataFrame, one partition per part.

    Parameters
    ----------
    path, species, min_probability, columns
        As :func:`read_detections`; the filters are given to
        :func:`dask.dataframe.read_parquet` (``min_probability`` is compared by arrow to
        the float32 ``probability``).

    Returns
    -------
    dask.dataframe.DataFrame
        Partition ``i`` holds the ``i``-th part in chunk order, so that ``.compute()`` gives
        the rows of :func:`read_detections` (string columns come as arrow-backed strings).
        With no part yet: one empty partition.
    """
    import dask.dataframe as dd

    parts, classes = _checked_parts(path)
    if not parts:
        return dd.from_pandas(empty_detections(classes, columns), npartitions=1)
    filters = _dask_filters(species, min_probability, classes)
    return dd.read_parquet(
        [os.fspath(p) for p in parts],
        columns=None if columns is None else list(columns),
        filters=filters,
        split_row_groups=False,
        index=False,
    )


def iter_parts(
    path: str | os.PathLike, columns: Sequence[str] | None = None
) -> Iterator[tuple[int, pd.DataFrame]]:
    """The parts one at a time, in chunk order: ``(chunk, events)``.

    Parameters
    ----------
    path : str or os.PathLike
        The output folder, or its folder of parts.
    columns : sequence of str, optional
        The columns to read (default: all).

    Returns
    -------
    iterator of (int, pandas.DataFrame)
        Each part's chunk and its events, read when reached: one part in memory at a time.
        The parts are listed and checked (:func:`read_detections`'s errors) on the call.
    """
    parts, _ = _checked_parts(path)  # checked now, read lazily
    columns = None if columns is None else list(columns)
    return ((int(PART_NAME.match(f.name).group(1)), _read_part(f, columns)) for f in parts)


def _read_part(file: Path, columns: list[str] | None) -> pd.DataFrame:
    return pq.read_table(file, columns=columns).to_pandas()
