"""Class names: names files (the names of integer classes 1..K, one per line) and the species -> group table."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.files import atomic_path
from pipeline.io.annotations import AnnotationError
from pipeline.annotations.tabular import read_utf8


def read_class_names(path: str | os.PathLike) -> list[str]:
    """The class names of a names file, in order: line k names class k.

    Parameters
    ----------
    path : str or os.PathLike
        A UTF-8 text file (a byte-order mark is allowed), one name per line; names keep any
        character but the spaces around them; blank lines are skipped.

    Returns
    -------
    list of str
        The names, class 1 first.

    Raises
    ------
    AnnotationError
        If the file is missing, not UTF-8, empty, or names a class twice (naming the line).
    """
    path = Path(path)
    text = read_utf8(path, hint="; save the names file as UTF-8")
    names: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if name in first_line:
            raise AnnotationError(f"{path}, line {number}: class {name!r} is already named on line {first_line[name]}")
        first_line[name] = number
        names.append(name)
    if not names:
        raise AnnotationError(f"{path}: no class name in this file")
    return names


def write_class_names(path: str | os.PathLike, names: list[str]) -> Path:
    """Write one name per line (UTF-8), atomically; the inverse of :func:`read_class_names`."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
    return path


def species_groups() -> dict[str, str]:
    """Latin species name -> the reference system's group (``species_groups.csv``, shipped as data)."""
    import pandas as pd

    table = pd.read_csv(Path(__file__).with_name("species_groups.csv"))
    return dict(zip(table["species"], table["group"]))
