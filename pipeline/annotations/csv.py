"""batml's CSV of calls: one row per labelled sound event.

The format batml writes (:func:`write_calls_csv`, ``batml convert``) and reads:

- UTF-8, comma-separated, a header line; columns in any order; unknown columns are ignored.
- Required: ``file`` (the recording, relative to the audio folder) and ``position`` (start of
  the call, s, real time).
- Optional: ``class`` (any text: a species, a group; empty = a bat of unknown species, i.e.
  detection only; a file without the column is detection-only), ``end`` (s), ``low_freq``,
  ``high_freq`` (Hz), ``event`` (one of ``echolocation, buzz, social, insect, bird, noise,
  other``, or a usual synonym; empty = echolocation), ``split`` (``train``/``test``, or empty),
  ``duration`` (of the recording, s). Empty cells are missing values.
- Integer classes: when every class is an integer, they are classes 1..K, named by a names file
  (``class_names=``, or ``<name>.classes.txt`` beside the CSV) or, for 1..7 without one, the
  reference system's seven groups (Barbarg, Envsp, Myosp, Pip35, Pip50, Plesp, Rhisp); above 7 without names
  they are named by their number. The older form mixing integers 1..7 and group names reads as
  before (the integers are groups).
- Sidecar files written by :func:`write_calls_csv` for an :class:`AnnotationSet`:
  ``<name>.windows.csv`` (the annotated windows: ``file,start,end,split``) and
  ``<name>.classes.txt`` (the declared class order); :func:`read_csv` reads them back, so that a
  set converted to CSV reads back the same.
- Times are real; ``time_expansion`` is for a CSV written in the time of slowed-down audio.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.annotations.names import read_class_names, write_class_names
from pipeline.annotations.table import (
    CALL_COLUMNS,
    WINDOW_COLUMNS,
    AnnotationSet,
    class_and_event,
    class_names_from,
    event_name,
    parse_numbers,
    to_real_time,
    validate_calls,
    validate_windows,
)
from pipeline.config import REFERENCE_GROUPS
from pipeline.files import atomic_path
from pipeline.io.annotations import AnnotationError

_INTEGER = re.compile(r"^\s*\d+(\.0*)?\s*$")
WINDOWS_SUFFIX = ".windows.csv"
CLASSES_SUFFIX = ".classes.txt"


def sidecar(path: str | os.PathLike, suffix: str) -> Path:
    """The sidecar file of a CSV of calls: ``calls.csv`` -> ``calls<suffix>``."""
    path = Path(path)
    return path.with_name(path.stem + suffix)


def _read_table(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except FileNotFoundError:
        raise AnnotationError(f"{path}: file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{path}: not a readable CSV ({' '.join(str(exc).split())})") from None


def read_windows_csv(path: str | os.PathLike, *, time_expansion: float = 1.0) -> pd.DataFrame:
    """Annotated windows from a CSV with columns ``file, start, end`` (s) and optional ``split``.

    Raises
    ------
    AnnotationError
        For a missing column, a time that is not a number (naming the line), an end before its
        start.
    """
    path = Path(path)
    table = _read_table(path)
    missing = [name for name in ("file", "start", "end") if name not in table.columns]
    if missing:
        raise AnnotationError(f"{path}: missing column(s) {', '.join(missing)} (annotated windows: file,start,end)")
    where = [f"{path}, line {i + 2}" for i in range(len(table))]
    windows = pd.DataFrame(
        {
            "file": table["file"],
            "start": parse_numbers(table["start"], column="start", where=where),
            "end": parse_numbers(table["end"], column="end", where=where),
            "split": table["split"].replace("", np.nan) if "split" in table else np.nan,
        }
    )
    return validate_windows(to_real_time(windows, time_expansion), origin=str(path))


def _classes(values: pd.Series, names: list[str] | None, where: list[str]) -> tuple[list, list[str] | None]:
    given = [v for v in values if v.strip()]
    if names is not None and all(v in names for v in given):
        return list(values), names
    if given and all(_INTEGER.match(v) for v in given):
        return class_names_from(values, names, where=where, default=REFERENCE_GROUPS)
    if given and any(_INTEGER.match(v) for v in given) and all(_INTEGER.match(v) or v.strip() in REFERENCE_GROUPS for v in given):
        mapped = [str(REFERENCE_GROUPS.index(v.strip()) + 1) if v.strip() in REFERENCE_GROUPS else v for v in values]
        return class_names_from(mapped, None, where=where, default=REFERENCE_GROUPS)
    return list(values), names


def read_csv(
    path: str | os.PathLike,
    *,
    time_expansion: float = 1.0,
    class_names: str | os.PathLike | list[str] | None = None,
    windows: str | os.PathLike | None = "auto",
) -> AnnotationSet:
    """Read batml's CSV of calls (see the module's notes for the columns).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.csv``.
    time_expansion : float
        Factor by which the CSV's times are slowed down; 1 (default): real.
    class_names : path or list of str, optional
        Names of integer classes 1..K (a names file, :func:`read_class_names`); for named
        classes, their declared order. Default: ``<name>.classes.txt`` beside the CSV if there.
    windows : path, "auto" or None
        A CSV of annotated windows (``file,start,end[,split]``); ``"auto"`` (default):
        ``<name>.windows.csv`` beside the CSV if there; None: recordings annotated whole.

    Returns
    -------
    AnnotationSet
        ``source="csv"``.

    Raises
    ------
    AnnotationError
        One line naming the file, the line and the reason: a missing ``file`` or ``position``
        column, a time that is not a number, negative or before the start, an unknown event or
        split, an integer class outside the names given.
    """
    path = Path(path)
    table = _read_table(path)
    missing = [name for name in ("file", "position") if name not in table.columns]
    if missing:
        hint = " (the header has one column with ';': save the file as comma-separated)" if (
            len(table.columns) == 1 and ";" in table.columns[0]) else " (a CSV of calls needs file,position)"  # fmt: skip
        raise AnnotationError(f"{path}: missing column(s) {', '.join(missing)}{hint}")
    where = [f"{path}, line {i + 2}" for i in range(len(table))]
    if class_names is None and sidecar(path, CLASSES_SUFFIX).is_file():
        class_names = sidecar(path, CLASSES_SUFFIX)
    names = list(class_names) if isinstance(class_names, list) else (
        read_class_names(class_names) if class_names is not None else None)  # fmt: skip
    labels, classes = _classes(table["class"], names, where) if "class" in table else ([None] * len(table), names)
    events = table["event"] if "event" in table else pd.Series([""] * len(table))
    kinds, out_labels = [], []
    for i, (label, text) in enumerate(zip(labels, events)):
        kind = None
        if text.strip():
            kind = event_name(text)
            if kind is None:
                raise AnnotationError(f"{where[i]}: unknown event {text!r}; expected echolocation, buzz, social, insect, bird, noise or other")
        label, kind = class_and_event(label, kind)
        out_labels.append(label)
        kinds.append(kind)
    numbers = {
        name: parse_numbers(table[name], column=name, where=where, required=name == "position")
        if name in table else np.full(len(table), np.nan)
        for name in ("position", "end", "low_freq", "high_freq", "duration")
    }  # fmt: skip
    calls = pd.DataFrame(
        {
            "file": table["file"],
            **{name: numbers[name] for name in ("position", "end", "low_freq", "high_freq")},
            "class": pd.Series(out_labels, dtype=object),
            "event": kinds,
            "split": table["split"].replace("", np.nan) if "split" in table else np.nan,
            "duration": numbers["duration"],
        }
    )
    calls = validate_calls(to_real_time(calls, time_expansion), where=where, origin=str(path))
    if isinstance(windows, str) and windows == "auto":
        windows = sidecar(path, WINDOWS_SUFFIX) if sidecar(path, WINDOWS_SUFFIX).is_file() else None
    window_table = read_windows_csv(windows, time_expansion=time_expansion) if windows is not None else None
    return AnnotationSet(calls=calls, windows=window_table, classes=classes, source="csv")


def write_calls_csv(path: str | os.PathLike, set_or_calls: AnnotationSet | pd.DataFrame) -> Path:
    """Write calls to batml's CSV of calls, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.csv`` to write.
    set_or_calls : AnnotationSet or pandas.DataFrame
        An annotation set, or a table of calls (checked with
        :func:`pipeline.annotations.table.validate_calls`). For a set, its windows go to
        ``<name>.windows.csv`` and its class order to ``<name>.classes.txt`` beside the CSV
        (and such files left by an earlier conversion without them are removed).

    Returns
    -------
    pathlib.Path
        The CSV written: the columns of :data:`pipeline.annotations.table.CALL_COLUMNS`, missing
        values as empty cells, numbers written exactly (they read back bit for bit).
    """
    path = Path(path)
    if isinstance(set_or_calls, AnnotationSet):
        calls, windows, classes = set_or_calls.calls, set_or_calls.windows, set_or_calls.classes
    else:
        calls, windows, classes = validate_calls(set_or_calls), None, None
    with atomic_path(path) as tmp:
        calls[list(CALL_COLUMNS)].to_csv(tmp, index=False, lineterminator="\n", encoding="utf-8")
    if isinstance(set_or_calls, AnnotationSet):
        windows_path, classes_path = sidecar(path, WINDOWS_SUFFIX), sidecar(path, CLASSES_SUFFIX)
        if windows is not None:
            with atomic_path(windows_path) as tmp:
                windows[list(WINDOW_COLUMNS)].to_csv(tmp, index=False, lineterminator="\n", encoding="utf-8")
        else:
            windows_path.unlink(missing_ok=True)
        if classes is not None:
            write_class_names(classes_path, classes)
        else:
            classes_path.unlink(missing_ok=True)
    return path
