"""The reference system's ``.npz`` of annotations, as an :class:`AnnotationSet`.

The format is described in :mod:`pipeline.io.annotations` (and ``SEED.md``): per split
``train``/``test``, recording names, their durations (s, real), per recording the call positions
(s, real) and, unless detection-only, their classes as integers 1..K. This module wraps
:func:`pipeline.io.annotations.read_reference_npz` (which reads the pickled arrays without running
code) and names the classes: by a names file (line k names class k), or, without one, by the
reference system's seven groups (Barbarg, Envsp, Myosp, Pip35, Pip50, Plesp, Rhisp) for classes 1..7, and by
their number above 7. Every recording is an annotated window, whole (0 to its duration), so
recordings without calls are kept.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

from pipeline.annotations.names import read_class_names
from pipeline.annotations.table import AnnotationSet, class_names_from, empty_calls, to_real_time, validate_calls
from pipeline.config import REFERENCE_GROUPS
from pipeline.io.annotations import read_reference_npz


def read_npz(
    path: str | os.PathLike,
    *,
    time_expansion: float = 1.0,
    class_names: str | os.PathLike | list[str] | None = None,
    trust: bool = False,
) -> AnnotationSet:
    """Read the reference system's ``.npz``.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz``.
    time_expansion : float
        Factor by which its times are slowed down; 1 (default): real, as the reference system's are.
    class_names : path or list of str, optional
        Names of classes 1..K (a names file). Default: the reference system's seven groups for 1..7.
    trust : bool
        Unpickle without the allow-list (only for files you made; see
        :func:`pipeline.io.annotations.read_reference_npz`).

    Returns
    -------
    AnnotationSet
        ``source="npz"``; ``split`` from the arrays' prefix; ``class`` missing for a
        detection-only dataset; ``windows`` every recording whole, with its split; ``classes`` the
        class order (None for a detection-only dataset).

    Raises
    ------
    AnnotationError
        As :func:`pipeline.io.annotations.read_reference_npz`, and for a class above the names given.
    """
    path = Path(path)
    names = list(class_names) if isinstance(class_names, list) else (
        read_class_names(class_names) if class_names is not None else None)  # fmt: skip
    dataset = read_reference_npz(path, trust=trust, n_classes=len(names) if names else sys.maxsize)
    rows, windows, where = [], [], []
    for split, recordings in (("train", dataset.train), ("test", dataset.test)):
        for i, rec in enumerate(recordings):
            windows.append({"file": rec.file, "start": 0.0, "end": rec.duration, "split": split})
            for j, position in enumerate(rec.positions):
                rows.append(
                    {
                        "file": rec.file, "position": float(position), "split": split, "duration": rec.duration,
                        "class": None if rec.classes is None else int(rec.classes[j]),
                    }
                )  # fmt: skip
                where.append(f"{path}: {split}_pos[{i}][{j}] ({rec.file})")
    classes = None
    if rows and dataset.has_classes:
        labels, classes = class_names_from([r["class"] for r in rows], names, where=where, default=REFERENCE_GROUPS)
        for row, label in zip(rows, labels):
            row["class"] = label
    elif dataset.has_classes:
        classes = names or list(REFERENCE_GROUPS)
    calls = pd.DataFrame(rows) if rows else empty_calls()
    calls = validate_calls(to_real_time(calls, time_expansion), where=where, origin=str(path))
    window_table = to_real_time(pd.DataFrame(windows, columns=["file", "start", "end", "split"]), time_expansion)
    return AnnotationSet(calls=calls, windows=window_table, classes=classes, source="npz")
