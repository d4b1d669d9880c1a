"""The outputs of a detection run: the table of detected events and what is derived from it.

Layout of a run's output folder ``OUT``::

    OUT/detections.parquet/part-000000.parquet   the events of cube chunk 0
    OUT/detections.parquet/part-000001.parquet   ... one part per finished chunk
    OUT/detections.csv                           the seed's CSV (:func:`write_seed_csv`)
    OUT/raven/<name>.Table.1.selections.txt      Raven Pro tables, one per file (:func:`write_raven`)
    OUT/detections.selections.txt                or one combined Raven table
    OUT/report.json, OUT/report.txt              the run report (:func:`write_report`)

**The canonical table** is the folder ``detections.parquet``: one parquet *part* per chunk
of the cube, written by :func:`write_part` when the chunk is finished. A part is written
whole or not at all (a temporary name in the same folder, flushed to disk, then renamed),
and an empty part is written too: the existence of a readable part is what records that
its chunk is done (:func:`finished_parts` is the resume journal). Parts concatenated in
chunk order give the events in archive order: recordings in cube order, and within a
recording (even one that spans two chunks) in time order.

Every part has the columns of :func:`event_schema`, in this order:

=============== ======= ===============================================================
``file``        string  the recording's file, as the cube stores its path
``channel``     int32   its channel (0-based), -1 for a mix of the channels
``time``        float64 start of the detection, real seconds from the start of the file
``class``       string  the most probable class at the event (of equal ones, the first)
``probability`` float32 that class's probability
``score``       float32 the call score, ``1 - P(not call)``
``prob_<name>`` float32 the probability of each class, in the model's class order
=============== ======= ===============================================================

and its parquet metadata holds, under the key ``b"batml"``, a JSON object with the class
list (:func:`detection_classes`). Read it with :func:`read_detections` (pandas, filters
pushed down to the files) or :func:`open_detections` (a lazy Dask DataFrame, one partition
per part), or with any parquet reader.

**Derived outputs** (:func:`write_seed_csv`, :func:`write_raven`, :func:`calls_per_class`)
stream over the parts one at a time, so that their memory is that of one part whatever the
size of the run, and apply thresholds as :func:`pipeline.detect.species_rows` does: a row
per (event, class whose probability reaches its threshold), for the events whose score
reaches the detection threshold. They can be rewritten with other thresholds without
running the detection again (as long as the detection threshold is not below the run's).
Each is written atomically: a reader sees the previous version or the new one, never half.

Names of recordings: in the CSV, ``file_name`` is the path as the cube stores it, with
``#ch<n>`` added for a channel ``n >= 1`` of a multichannel file (:func:`recording_label`).
A Raven table covers a whole file, its channels told apart by Raven's ``Channel``
(counting from 1), and lists, besides the CSV's rows, each detected call of which no class
reaches its threshold as one selection of species ``"unknown"`` (:func:`write_raven`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import posixpath
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.detect import SPECIES_COLUMNS, species_rows
from pipeline.evaluate import probability_column, threshold_values

#: Version of the layout of the parts (in their metadata).
DETECTIONS_FORMAT = 1
#: Key of the parts' parquet metadata that holds the class list.
METADATA_KEY = b"batml"
#: Name of the folder of parts inside the output folder.
PARTS_DIRNAME = "detections.parquet"
#: File names of the derived outputs inside the output folder.
CSV_NAME = "detections.csv"
RAVEN_DIRNAME = "raven"
RAVEN_COMBINED_NAME = "detections.selections.txt"
RAVEN_SUFFIX = ".Table.1.selections.txt"
REPORT_JSON_NAME = "report.json"
REPORT_TEXT_NAME = "report.txt"

#: ``channel`` of an event of a recording that is the mix of a file's channels.
MIX_CHANNEL = -1
#: Species of a Raven row for a detected call of which no class reaches its threshold.
UNKNOWN_SPECIES = "unknown"
#: Raven Pro's view of the selections.
RAVEN_VIEW = "Spectrogram 1"

#: Columns of every part before the per-class probabilities.
BASE_COLUMNS = ("file", "channel", "time", "class", "probability", "score")
#: Columns of a Raven table of one file, in order.
RAVEN_COLUMNS = (
    "Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
    "High Freq (Hz)", "Species", "Probability", "Score",
)  # fmt: skip
#: Columns of the combined Raven table (all files), in order.
RAVEN_COMBINED_COLUMNS = (*RAVEN_COLUMNS, "Begin File", "File Offset (s)")

_PART_NAME = re.compile(r"^part-(\d+)\.parquet$")
_PART_TEMPORARY = re.compile(r"^\.part-\d+\.parquet\.tmp-[0-9a-f]+$")
_OUTPUT_TEMPORARY = re.compile(
    r"^\.(detections\.csv|detections\.selections\.txt|raven|report\.json|report\.txt)"
    r"\.(tmp|previous)-[0-9a-f]+$"
)


class DetectionsError(ValueError):
    """Detection outputs that cannot be read as asked; the message is one line for the user."""


# --------------------------------------------------------------------------------------------
# Paths and atomic writes
# --------------------------------------------------------------------------------------------


def parts_directory(out_dir: str | os.PathLike) -> Path:
    """The folder of parts of an output folder.

    Parameters
    ----------
    out_dir : str or os.PathLike
        The run's output folder ``OUT``, or ``OUT/detections.parquet`` itself.

    Returns
    -------
    pathlib.Path
        ``OUT/detections.parquet`` (whether it exists or not).
    """
    out_dir = Path(out_dir)
    return out_dir if out_dir.name == PARTS_DIRNAME else out_dir / PARTS_DIRNAME


def output_directory(out_dir: str | os.PathLike) -> Path:
    """The output folder ``OUT``, given it or its folder of parts."""
    return parts_directory(out_dir).parent


def part_path(out_dir: str | os.PathLike, chunk: int) -> Path:
    """Where the part of chunk ``chunk`` lies: ``OUT/detections.parquet/part-{chunk:06d}.parquet``."""
    chunk = int(chunk)
    if chunk < 0:
        raise ValueError(f"chunk={chunk} must be >= 0")
    return parts_directory(out_dir) / f"part-{chunk:06d}.parquet"


def _temporary_name(target: Path) -> Path:
    """A hidden name beside ``target`` for writing it: ``.<name>.tmp-<hex>``."""
    return target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:12]}")


def fsync_directory(folder: Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk, where the platform allows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(file: Path) -> None:
    with open(file, "rb") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def _atomic_file(target: Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside ``target``; on success flush it and rename it onto
    ``target``, on failure remove it (``target`` keeps its previous content)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(target)
    kwargs = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
    try:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        fsync_directory(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _replace_directory(staging: Path, target: Path) -> None:
    """Put the finished folder ``staging`` in the place of ``target`` (which may exist)."""
    for entry in staging.iterdir():
        _fsync_file(entry)
    fsync_directory(staging)
    aside = target.with_name(f".{target.name}.previous-{uuid.uuid4().hex[:12]}")
    if target.exists():
        os.rename(target, aside)
    try:
        os.rename(staging, target)
    except BaseException:
        if aside.exists() and not target.exists():
            os.rename(aside, target)
        raise
    fsync_directory(target.parent)
    shutil.rmtree(aside, ignore_errors=True)


def remove_stale_temporaries(out_dir: str | os.PathLike) -> list[Path]:
    """Delete what a killed run left half-written in an output folder.

    Removes the temporary parts (``.part-*.parquet.tmp-*`` in the folder of parts) and the
    temporaries of this module's derived outputs in ``OUT`` (``.detections.csv.tmp-*``,
    ``.raven.tmp-*``, ...). Call it only when no run is writing to ``OUT`` (at the start
    of a run): a temporary being written by a live run would be lost.

    Parameters
    ----------
    out_dir : str or os.PathLike
        The output folder, or its folder of parts.

    Returns
    -------
    list of pathlib.Path
        What was removed, sorted.
    """
    removed = []
    folders = [(parts_directory(out_dir), _PART_TEMPORARY), (output_directory(out_dir), _OUTPUT_TEMPORARY)]
    for folder, pattern in folders:
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if not pattern.match(entry.name):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return sorted(removed)


# --------------------------------------------------------------------------------------------
# The event table
# --------------------------------------------------------------------------------------------


def _class_names(classes: Sequence[str]) -> list[str]:
    classes = [str(name) for name in classes]
    if not classes:
        raise ValueError("a detection table needs at least one class")
    if len(set(classes)) != len(classes):
        raise ValueError(f"class names must be distinct: {', '.join(classes)}")
    return classes


def _metadata(classes: Sequence[str]) -> dict[bytes, bytes]:
    document = {"format": DETECTIONS_FORMAT, "classes": list(classes)}
    return {METADATA_KEY: json.dumps(document, ensure_ascii=False).encode("utf-8")}


def _base_fields() -> list[pa.Field]:
    return [
        pa.field("file", pa.string(), nullable=False),
        pa.field("channel", pa.int32(), nullable=False),
        pa.field("time", pa.float64(), nullable=False),
        pa.field("class", pa.string(), nullable=False),
        pa.field("probability", pa.float32(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
    ]


def event_schema(classes: Sequence[str]) -> pa.Schema:
    """The arrow schema of a detection part for a model's classes.

    Parameters
    ----------
    classes : sequence of str
        The model's class names, in its order.

    Returns
    -------
    pyarrow.Schema
        :data:`BASE_COLUMNS` then ``prob_<name>`` for every class (see the module's
        documentation for the types), with the class list in the metadata under
        :data:`METADATA_KEY`.
    """
    classes = _class_names(classes)
    fields = _base_fields() + [pa.field(probability_column(name), pa.float32(), nullable=False) for name in classes]
    return pa.schema(fields, metadata=_metadata(classes))


def _classes_of_columns(columns: Iterable[str]) -> list[str]:
    prefix = probability_column("")
    return [name[len(prefix):] for name in columns if name.startswith(prefix)]


def _classes_of_schema(schema: pa.Schema, where: str) -> list[str]:
    """The class list in a part's metadata (or, lacking it, its ``prob_`` columns)."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        return _classes_of_columns(schema.names)
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


def events_table(file: str, channel: int, events: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """The events of one recording as rows of a detection part.

    Parameters
    ----------
    file : str
        The recording's path, as the cube stores it.
    channel : int
        Its channel, :data:`MIX_CHANNEL` (-1) for a mix.
    events : pandas.DataFrame
        Its events from :func:`pipeline.detect.find_detections`: ``time``, ``score`` and
        ``prob_<name>`` for every class (``column`` and any other column are dropped).
    classes : sequence of str
        The model's class names, in its order.

    Returns
    -------
    pandas.DataFrame
        The columns of :func:`event_schema`, in its order and types, one row per event in
        the order given: ``class`` is the most probable class (of equal probabilities, the
        first in class order) and ``probability`` its probability.
    """
    classes = _class_names(classes)
    prob_columns = [probability_column(name) for name in classes]
    missing = [name for name in ["time", "score", *prob_columns] if name not in events.columns]
    if missing:
        raise ValueError(f"events lack the column(s) {', '.join(missing)}")
    n = len(events)
    prob = np.column_stack([np.asarray(events[c], dtype=np.float32) for c in prob_columns])
    prob = prob.reshape(n, len(classes))
    best = np.argmax(prob, axis=1) if n else np.zeros(0, dtype=np.int64)
    table = {
        "file": pd.Series([str(file)] * n, dtype="str"),
        "channel": np.full(n, int(channel), dtype=np.int32),
        "time": np.asarray(events["time"], dtype=np.float64),
        "class": pd.Series(np.asarray(classes, dtype=object)[best], dtype="str"),
        "probability": prob[np.arange(n), best],
        "score": np.asarray(events["score"], dtype=np.float32),
    }
    for k, column in enumerate(prob_columns):
        table[column] = prob[:, k]
    return pd.DataFrame(table)


def _arrow_events(events: pd.DataFrame, classes: Sequence[str] | None) -> pa.Table:
    """``events`` as an arrow table of :func:`event_schema` (types checked and cast)."""
    if classes is None:
        classes = _classes_of_columns(events.columns)
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
    with _atomic_file(target, "wb") as fh:
        pq.write_table(table, fh)
    return target


def _part_files(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(chunk, path)`` of the files named as parts, in chunk order (readable or not)."""
    folder = parts_directory(out_dir)
    if not folder.is_dir():
        return []
    parts = []
    for entry in folder.iterdir():
        match = _PART_NAME.match(entry.name)
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


def _species_list(species: str | Iterable[str], classes: Sequence[str]) -> list[str]:
    species = [species] if isinstance(species, str) else [str(name) for name in species]
    unknown = [name for name in species if name not in classes]
    if unknown:
        raise ValueError(
            f"unknown species {', '.join(unknown)}; the detections hold {', '.join(classes)}"
        )
    return species


def _empty_frame(classes: Sequence[str] | None, columns: Sequence[str] | None) -> pd.DataFrame:
    schema = event_schema(classes) if classes else pa.schema(_base_fields())
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
        return _empty_frame(classes, columns)
    schema = event_schema(classes)
    condition = None
    if species is not None:
        condition = ds.field("class").isin(_species_list(species, classes))
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
        filters.append(("class", "in", _species_list(species, classes)))
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
        return dd.from_pandas(_empty_frame(classes, columns), npartitions=1)
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
    return ((int(_PART_NAME.match(f.name).group(1)), _read_part(f, columns)) for f in parts)


def _read_part(file: Path, columns: list[str] | None) -> pd.DataFrame:
    return pq.read_table(file, columns=columns).to_pandas()


# --------------------------------------------------------------------------------------------
# Derived outputs: the seed's CSV, Raven tables, counts per class
# --------------------------------------------------------------------------------------------


def recording_label(path: str, channel: int) -> str:
    """The ``file_name`` of a recording in the seed's CSV.

    The path as the cube stores it for channel 0 or a mix (-1), so that a mono archive
    gives exactly the seed's names; ``"<path>#ch<channel>"`` for a later channel of a
    multichannel file (``"a.wav#ch1"``: the second channel).
    """
    channel = int(channel)
    return str(path) if channel in (MIX_CHANNEL, 0) else f"{path}#ch{channel}"


def seed_rows(events: pd.DataFrame, classes: Sequence[str], thresholds: Mapping[str, float] | None) -> pd.DataFrame:
    """The seed CSV's rows of some events (:func:`pipeline.detect.species_rows`).

    Parameters
    ----------
    events : pandas.DataFrame
        Rows of a detection part (``file``, ``channel``, ``time``, ``score``, ``prob_*``).
    classes : sequence of str
        The class names.
    thresholds : mapping, optional
        ``"detection"`` and one threshold per class; a missing key means 0.5.

    Returns
    -------
    pandas.DataFrame
        :data:`pipeline.detect.SPECIES_COLUMNS`, ``file_name`` by :func:`recording_label`:
        one row per (event whose score reaches the detection threshold, class whose
        probability reaches its threshold), in event then class order.
    """
    labels = [recording_label(f, c) for f, c in zip(events["file"], events["channel"])]
    with_names = events.assign(recording=pd.Series(labels, index=events.index, dtype=object))
    return species_rows(with_names, classes, thresholds)


def write_seed_csv(
    out_dir: str | os.PathLike,
    classes: Sequence[str],
    thresholds: Mapping[str, float] | None,
    dest: str | os.PathLike | None = None,
) -> Path:
    """Write the seed's CSV of detections, streaming over the parts.

    Parameters
    ----------
    out_dir : str or os.PathLike
        The output folder (or its folder of parts).
    classes : sequence of str
        The model's class names, in its order.
    thresholds : mapping, optional
        ``"detection"`` and one threshold per class (0.5 when missing); a probability equal
        to its threshold reaches it.
    dest : str or os.PathLike, optional
        Where to write; default ``OUT/detections.csv``.

    Returns
    -------
    pathlib.Path
        The CSV: header ``file_name,predicted_time,predicted_species,predicted_prob``, then
        the rows of :func:`seed_rows` part after part (archive order). Two species reaching
        their thresholds at one event give two rows with the same time; a detected call of
        no species reaching its threshold gives none. ``file_name`` is the recording's path,
        ``"<path>#ch<n>"`` for a channel ``n >= 1`` of a multichannel file
        (:func:`recording_label`).
    """
    classes = [str(name) for name in classes]
    threshold_values(thresholds, classes)  # fail early on unknown or invalid thresholds
    target = Path(dest) if dest is not None else output_directory(out_dir) / CSV_NAME
    parts = iter_parts(out_dir)
    with _atomic_file(target) as fh:
        fh.write(",".join(SPECIES_COLUMNS) + "\n")
        for _, events in parts:
            seed_rows(events, classes, thresholds).to_csv(
                fh, header=False, index=False, lineterminator="\n"
            )
    return target


def calls_per_class(
    out_dir: str | os.PathLike, classes: Sequence[str], thresholds: Mapping[str, float] | None
) -> dict[str, int]:
    """Count the calls of each class, as the rows of the seed's CSV count them.

    Parameters
    ----------
    out_dir, classes, thresholds
        As :func:`write_seed_csv`.

    Returns
    -------
    dict of str to int
        Every class, in class order, and its number of rows of :func:`seed_rows` (an event
        with two species counts once for each); streams over the parts.
    """
    classes = [str(name) for name in classes]
    counts = dict.fromkeys(classes, 0)
    for _, events in iter_parts(out_dir):
        for name, n in seed_rows(events, classes, thresholds)["predicted_species"].value_counts().items():
            counts[str(name)] += int(n)
    return counts


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
        As :func:`seed_rows`.
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
        ``Begin Time (s)`` the time in the file: one row per row of :func:`seed_rows`
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
    staging = _temporary_name(target)
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
        _replace_directory(staging, target)
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
    with _atomic_file(target) as fh:
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
        As :func:`write_seed_csv`.
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
        call; the seed's CSV has no row for them).

    Returns
    -------
    list of pathlib.Path
        The tables written (per file: in archive order).

    Notes
    -----
    A table is tab-separated text: the header ``Selection  View  Channel  Begin Time (s)
    End Time (s)  Low Freq (Hz)  High Freq (Hz)  Species  Probability  Score`` (and
    ``Begin File  File Offset (s)`` for the combined table), then one row per (event,
    species reaching its threshold) as in the seed's CSV, in archive order, numbered
    ``Selection`` 1..n in each table. ``View`` is ``Spectrogram 1``; ``Channel`` counts
    from 1 (channel 0 and a mix are 1). The tables are written in a temporary place and
    renamed into place: the per-file folder is replaced whole, so that no table of an
    earlier run's remains.
    """
    classes = [str(name) for name in classes]
    threshold_values(thresholds, classes)
    options = dict(window_seconds=window_seconds, low_hz=low_hz, high_hz=high_hz, include_unknown=include_unknown)
    raven_rows(_empty_frame(classes, None), classes, thresholds, **options)  # check the options now
    rows_of_parts = (
        raven_rows(events, classes, thresholds, **options) for _, events in iter_parts(out_dir)
    )
    out = output_directory(out_dir)
    if per_recording:
        target = Path(dest) if dest is not None else out / RAVEN_DIRNAME
        return _write_raven_per_file(out_dir, target, rows_of_parts, recordings)
    target = Path(dest) if dest is not None else out / RAVEN_COMBINED_NAME
    return _write_raven_combined(target, rows_of_parts, durations)


# --------------------------------------------------------------------------------------------
# The run report
# --------------------------------------------------------------------------------------------


def _json_ready(value: Any) -> Any:
    """``value`` as plain JSON types: numpy scalars and arrays, paths and tuples converted,
    NaN and infinities to None."""
    if isinstance(value, Mapping):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset, np.ndarray)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return [_json_ready(item) for item in items]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _one_line(value: Any) -> str:
    return " ".join(str(value).split())


def _seconds_text(seconds: Any) -> str:
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        return str(seconds)
    if not math.isfinite(seconds):
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    clock = f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {rest:04.1f} s"
    return f"{clock} ({seconds:.1f} s)"


def report_text(report: Mapping[str, Any]) -> str:
    """A readable summary of a run report (the content of ``report.txt``).

    Parameters
    ----------
    report : mapping
        As :func:`write_report`; missing keys are left out of the summary.

    Returns
    -------
    str
        Lines ``key: value``; each failed file on one line ``failed: PATH: REASON``
        (line breaks inside a reason replaced by spaces), classes and timings indented.
    """
    lines = ["batml detection run"]
    failed = list(report.get("files_failed") or [])
    if "files_processed" in report:
        lines.append(f"files processed: {report['files_processed']}")
    lines.append(f"files failed: {len(failed)}")
    for item in failed:
        if isinstance(item, Mapping):
            file, reason = item.get("file", "?"), item.get("reason", "")
        else:
            file, reason = item, ""
        lines.append(f"failed: {_one_line(file)}: {_one_line(reason)}")
    if "audio_seconds" in report:
        lines.append(f"audio: {_seconds_text(report['audio_seconds'])}")
    if "n_detections" in report:
        lines.append(f"detections: {report['n_detections']}")
    if report.get("calls_per_class"):
        lines.append("calls per class:")
        lines += [f"  {name}: {n}" for name, n in report["calls_per_class"].items()]
    model = report.get("model")
    if isinstance(model, Mapping):
        details = ", ".join(
            f"{key} {model[key]}" for key in ("architecture", "fingerprint") if key in model
        )
        lines.append(f"model: {model.get('path', '?')}" + (f" ({details})" if details else ""))
    if "settings_fingerprint" in report:
        lines.append(f"settings fingerprint: {report['settings_fingerprint']}")
    timings = report.get("timings") or {}
    if timings:
        lines.append("timings:")
        lines += [f"  {name}: {_seconds_text(seconds)}" for name, seconds in timings.items()]
        total = timings.get("total")
        audio = report.get("audio_seconds")
        if isinstance(total, (int, float)) and isinstance(audio, (int, float)) and total > 0:
            lines.append(f"speed: {audio / total:.1f} x real time")
    if report.get("outputs"):
        lines.append("outputs:")
        lines += [f"  {name}: {path}" for name, path in report["outputs"].items()]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | os.PathLike, report: Mapping[str, Any]) -> Path:
    """Write the run report: ``OUT/report.json`` and its summary ``OUT/report.txt``.

    Parameters
    ----------
    out_dir : str or os.PathLike
        The output folder (or its folder of parts).
    report : mapping
        What the run reports; the keys that the summary shows are ``files_processed``
        (int), ``files_failed`` (list of ``{"file": str, "reason": str}``),
        ``calls_per_class`` (class to int), ``n_detections`` (int),
        ``settings_fingerprint`` (str), ``model`` (``path``, ``architecture``,
        ``fingerprint``, ...), ``timings`` (name to seconds; ``total`` gives the speed),
        ``audio_seconds`` (float) and ``outputs`` (format to path). Any other key is kept
        in the JSON.

    Returns
    -------
    pathlib.Path
        ``OUT/report.json``: the report as strict JSON (indent 2, keys sorted; numpy
        values and paths converted, NaN as null). Both files are written atomically.
    """
    out = output_directory(out_dir)
    document = _json_ready(report)
    target = out / REPORT_JSON_NAME
    with _atomic_file(target) as fh:
        fh.write(json.dumps(document, indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False) + "\n")
    with _atomic_file(out / REPORT_TEXT_NAME) as fh:
        fh.write(report_text(document))
    return target


# --------------------------------------------------------------------------------------------
# Selections on a table of detections by the domain's names
# --------------------------------------------------------------------------------------------


@pd.api.extensions.register_dataframe_accessor("batml")
class DetectionsAccessor:
    """``calls.batml.species("Pip35", min_probability=0.8)``, ``calls.batml.recording("site01/x.wav")``
    on a table of :func:`read_detections` (registered when this module is imported, which
    :func:`pipeline.read_detections` does).

    Examples
    --------
    >>> calls = pipeline.read_detections("results/night")                       # doctest: +SKIP
    >>> calls.batml.species("Pip35", min_probability=0.8)                       # doctest: +SKIP
    >>> calls.batml.recording("site01/20260612_213015.wav")                     # doctest: +SKIP
    """

    def __init__(self, table: pd.DataFrame):
        self._table = table

    @property
    def classes(self) -> list[str]:
        """The classes of the ``prob_<class>`` columns, in order."""
        return _classes_of_columns(self._table.columns)

    def species(self, species: str | Iterable[str], min_probability: float = 0.5) -> pd.DataFrame:
        """The calls of which the probability of one of ``species`` reaches ``min_probability``.

        Multi-label, like the seed's CSV: a call where Pip35 reaches 0.8 is kept even when
        another species is more probable there (``read_detections(species=...)`` filters on
        the most probable class instead).
        """
        names = _species_list(species, self.classes)
        columns = [probability_column(name) for name in names]
        reached = self._table[columns].to_numpy(np.float64) >= float(min_probability)
        return self._table[reached.any(axis=1)]

    def recording(self, key: str, channel: int | None = None) -> pd.DataFrame:
        """The calls of one file: its path as stored, or the end of it (``"site01/x.wav"``,
        whole folder names); ``channel`` keeps one channel of a multichannel file."""
        files = self._table["file"].astype(str)
        key = str(key)
        tail = "/" + key.lstrip("/")
        names = [name for name in files.unique() if name == key or name.endswith(tail)]
        if not names:
            raise KeyError(f"no detections of a file {key!r}")
        if len(names) > 1:
            raise KeyError(f"{key!r} names {len(names)} files; give more of the path")
        keep = files == names[0]
        if channel is not None:
            keep &= self._table["channel"] == int(channel)
        return self._table[keep]
