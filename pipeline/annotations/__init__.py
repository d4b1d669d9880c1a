"""Annotations from the tools people label bat recordings with, as one table.

Each format has a reader in its own module, returning an
:class:`~pipeline.annotations.table.AnnotationSet` (calls in real time, annotated windows, the
declared class order):

============== ========================================= ===========================================
format         reader                                    what it reads
============== ========================================= ===========================================
``raven``      :func:`~.raven.read_raven`                Raven Pro selection tables (one per
                                                         recording, or one with ``Begin File``; a
                                                         table or a folder of them)
``aoef``       :func:`~.aoef.read_aoef`                  soundevent / AOEF JSON (Whombat, newer
                                                         batdetect2)
``tadarida``   :func:`~.tadarida.read_tadarida`          Tadarida / Vigie-Chiro ``eti/*.eti`` +
                                                         ``txt/*.ta``
``soundclass`` :func:`~.soundclass.read_soundclass`      soundClass's SQLite ``labels`` table
``batdetect2`` :func:`~.batdetect2.read_batdetect2`      batdetect2's ``<recording>.wav.json`` files
``csv``        :func:`~.csv.read_csv`                    batml's CSV of calls
``npz``        :func:`~.npz.read_npz`                    the reference system's ``.npz``
============== ========================================= ===========================================

:func:`read_annotations` finds the format of a path (:func:`detect_format`) and calls its
reader; :func:`convert` writes any of them as batml's CSV of calls (``batml convert``).
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path

from pipeline.annotations.aoef import read_aoef
from pipeline.annotations.batdetect2 import read_batdetect2
from pipeline.annotations.csv import read_csv, read_windows_csv, write_calls_csv
from pipeline.annotations.names import read_class_names
from pipeline.annotations.npz import read_npz
from pipeline.annotations.raven import BEGIN, read_raven
from pipeline.annotations.soundclass import is_soundclass_database, read_soundclass
from pipeline.annotations.table import AnnotationSet, select_calls
from pipeline.annotations.tadarida import read_tadarida
from pipeline.io.annotations import AnnotationError

#: The formats and their readers.
FORMATS: dict[str, Callable[..., AnnotationSet]] = {
    "raven": read_raven,
    "aoef": read_aoef,
    "tadarida": read_tadarida,
    "soundclass": read_soundclass,
    "batdetect2": read_batdetect2,
    "csv": read_csv,
    "npz": read_npz,
}

#: Generic option names and what each format calls them (``batml convert``'s options).
OPTION_ALIASES: dict[str, dict[str, str]] = {
    "aoef": {"species_column": "species_key"},
    "csv": {"species_list": "class_names"},
    "npz": {"species_list": "class_names"},
}

EXPECTED = (
    "a reference-system .npz, a CSV of calls (.csv), an AOEF/Whombat .json, a batdetect2 .json or a folder of them, "
    "a Raven selection table (.txt) or a folder of them, a Tadarida folder (eti/ and txt/) or .eti file, "
    "or a soundClass SQLite database"
)

__all__ = [
    "FORMATS", "AnnotationError", "AnnotationSet", "convert", "detect_format", "read_annotations",
    "read_class_names", "read_windows_csv", "select_calls", "write_calls_csv",
    *(f"read_{name}" for name in FORMATS),
]  # fmt: skip


def _first_line(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.readline(65536)
    except OSError:
        return b""


def _json_kind(path: Path) -> str | None:
    try:
        doc = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if isinstance(doc, dict) and (isinstance(doc.get("data"), dict) or "collection_type" in doc):
        return "aoef"
    if isinstance(doc, dict) and isinstance(doc.get("annotation"), list):
        return "batdetect2"
    return None


def detect_format(path: str | os.PathLike) -> str:
    """The annotation format of a file or folder, from its suffix, contents or layout.

    Files: ``.npz``; ``.csv``; ``.json`` by its keys (``data.collection_type``: AOEF;
    ``annotation``: batdetect2); ``.eti``; a SQLite database with a ``labels`` table
    (soundClass); a text file whose header has ``Begin Time (s)`` (Raven). Folders: ``eti/*.eti``
    files (Tadarida), Raven tables (``*.selections.txt``), batdetect2 ``*.json`` files.

    Raises
    ------
    AnnotationError
        One line saying what was expected, when the format cannot be told.
    """
    path = Path(path)
    if not path.exists():
        raise AnnotationError(f"{path}: not found")
    if path.is_dir():
        if any(p.parent.name.lower() == "eti" for p in path.rglob("*.eti")):
            return "tadarida"
        if any(p.name.lower().endswith(".selections.txt") for p in path.rglob("*.txt")):
            return "raven"
        kinds = {_json_kind(p) for p in sorted(path.rglob("*.json"))[:20]}
        if "batdetect2" in kinds:
            return "batdetect2"
        if any(BEGIN.encode() in _first_line(p) for p in sorted(path.rglob("*.txt"))[:20]):
            return "raven"
        if "aoef" in kinds:
            raise AnnotationError(f"{path}: a folder of AOEF files; give one .json file at a time")
        raise AnnotationError(f"{path}: cannot tell the annotation format of this folder; expected {EXPECTED} (or give --format)")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix == ".csv":
        return "csv"
    if suffix == ".eti":
        return "tadarida"
    if suffix == ".json":
        kind = _json_kind(path)
        if kind is None:
            raise AnnotationError(
                f"{path}: a .json that is neither AOEF (data.collection_type) nor batdetect2 (annotation list), "
                "or not valid JSON"
            )
        return kind
    if is_soundclass_database(path):
        return "soundclass"
    if BEGIN.encode() in _first_line(path):
        return "raven"
    raise AnnotationError(f"{path}: cannot tell the annotation format; expected {EXPECTED} (or give --format)")


def read_annotations(path: str | os.PathLike, *, format: str = "auto", **options) -> AnnotationSet:
    """Read annotations in any supported format.

    Parameters
    ----------
    path : str or os.PathLike
        A file or folder (see :data:`FORMATS`).
    format : str
        One of :data:`FORMATS`, or ``"auto"`` (default) for :func:`detect_format`.
    **options
        Passed to the format's reader (``time_expansion``, ``species_column``,
        ``species_list``...); options that are None are left out; the generic names of
        :data:`OPTION_ALIASES` are renamed for the formats that call them otherwise.

    Returns
    -------
    AnnotationSet

    Raises
    ------
    AnnotationError
        If the format is unknown or cannot be told, an option does not apply to it, or the
        reader finds the input malformed.
    """
    name = detect_format(path) if format == "auto" else format
    if name not in FORMATS:
        raise AnnotationError(f"unknown annotation format {format!r}; expected auto or one of {', '.join(FORMATS)}")
    reader = FORMATS[name]
    aliases = OPTION_ALIASES.get(name, {})
    given = {aliases.get(key, key): value for key, value in options.items() if value is not None}
    accepted = set(inspect.signature(reader).parameters) - {"path"}
    wrong = sorted(set(given) - accepted)
    if wrong:
        raise AnnotationError(
            f"{path}: option(s) {', '.join(wrong)} do not apply to {name} annotations "
            f"(its options: {', '.join(sorted(accepted))})"
        )
    return reader(path, **given)


def convert(source: str | os.PathLike, out_csv: str | os.PathLike, *, format: str = "auto", **options) -> AnnotationSet:
    """Read annotations and write them as batml's CSV of calls (what ``batml convert`` does).

    Parameters
    ----------
    source : str or os.PathLike
        As :func:`read_annotations`.
    out_csv : str or os.PathLike
        The CSV to write (atomically), with ``<name>.windows.csv`` and ``<name>.classes.txt``
        beside it when the source has annotated windows or a class order
        (:func:`write_calls_csv`).
    format, **options
        As :func:`read_annotations`.

    Returns
    -------
    AnnotationSet
        What was read and written (its ``skipped`` lists what was left out).
    """
    annotation_set = read_annotations(source, format=format, **options)
    write_calls_csv(out_csv, annotation_set)
    return annotation_set
