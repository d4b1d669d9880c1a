"""Annotated datasets as training and evaluation read them: the class list and two splits of recordings.

:func:`read_dataset` reads annotations in any format :mod:`pipeline.annotations` knows and turns
them into what a model learns from (:class:`Annotations`):

- **the class list**: the classes the source declares (a names file, the reference system's
  seven groups for its ``.npz``, a project's tags), in their order, then any other class of
  the bat calls, sorted; names are kept exactly as written (spaces, any characters).
  Detection-only data (no call has a class), or ``detection_only=True``, gives the single
  class :data:`DETECTION_ONLY_CLASS` (``"bat"``);
- **the calls of each recording**, per split: positions (real s) and classes (1..K; 0 for a
  bat call whose species is unknown, learned for detection only); a class found only in the
  test split is not a class of the model (its calls count for detection) and is reported;
- **labelled negatives**: insects, birds and noise always, buzzes and social calls as the
  user chooses (``non_echolocation``, see :func:`~pipeline.annotations.table.select_calls`);
- **annotated windows**: the parts of each recording that were annotated (AOEF clips, a
  ``--annotated-windows`` CSV, a Raven table's extent); negatives are drawn only inside them
  and the evaluation counts only inside them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from pipeline.annotations.table import AnnotationSet, select_calls, validate_windows
from pipeline.io.annotations import AnnotationError, RecordingCalls

#: The class of a model trained on detection-only data.
DETECTION_ONLY_CLASS = "bat"

#: ``--annotated-windows`` value that takes each Raven table's extent as its annotated window.
RAVEN_EXTENT = "extent"


@dataclass
class Annotations:
    """Annotated recordings of both splits, and the class names (class k is ``classes[k-1]``).

    Attributes
    ----------
    train, test : list of RecordingCalls
        One per (recording, split).
    classes : list of str
        The model's classes, in order.
    has_classes : bool
        False for detection-only data (the single class ``"bat"``).
    notes : list of str
        What the user should know about the dataset (classes without training calls, classes
        only in the test split), one line each.
    source : str
        The annotation format read.
    """

    train: list
    test: list
    classes: list[str]
    has_classes: bool
    notes: list[str] = field(default_factory=list)
    source: str = ""

    def with_splits(self, train: list, test: list) -> "Annotations":
        """The same dataset with other recordings in its splits."""
        return replace(self, train=train, test=test)

    def recoded(self, classes: list[str]) -> "Annotations":
        """The dataset with its calls' classes numbered as in ``classes`` (a model's), 0 for
        a class the model does not have (its calls then count for detection only, and a note
        says so); a detection-only dataset's calls are of class 0 unless the model is too."""
        classes = list(classes)
        code = {name: k for k, name in enumerate(classes, start=1)}
        mapping = np.array([0] + [code.get(name, 0) for name in self.classes], dtype=np.int64)
        missing = [name for name in self.classes if name not in code]
        notes = list(self.notes)
        if missing and self.has_classes:
            notes.append(f"the model has no class {', '.join(map(repr, missing))}: those calls count for detection only")

        def recode(rec):
            return rec if rec.classes is None else replace(rec, classes=mapping[rec.classes])

        return replace(self, train=[recode(r) for r in self.train], test=[recode(r) for r in self.test],
                       classes=classes, notes=notes)  # fmt: skip


def read_dataset(
    path: str | os.PathLike,
    *,
    format: str = "auto",
    trust_npz: bool = False,
    time_expansion: float | None = None,
    class_names: str | os.PathLike | None = None,
    species_column: str | None = None,
    species_list: str | os.PathLike | None = None,
    element_gap: float | None = None,
    annotated_windows: str | os.PathLike | None = None,
    non_echolocation: str = "negative",
    detection_only: bool = False,
) -> Annotations:
    """Read annotations of any supported format as a training/evaluation dataset.

    Parameters
    ----------
    path : str or os.PathLike
        Annotations: a file or folder of any format of :data:`pipeline.annotations.FORMATS`.
    format : str
        The format, or ``"auto"`` (found from the path).
    trust_npz : bool
        Allow pickle in a ``.npz`` (only for files you made yourself).
    time_expansion : float, optional
        Factor by which the annotations' times are slowed down (default: the format's own).
    class_names : path, optional
        Names of integer classes 1..K, one per line (CSV and ``.npz``).
    species_column, species_list
        Raven's species column (AOEF: the tag key); Tadarida's species list.
    element_gap : float, optional
        Tadarida: silence (s) below which the echolocation elements of one species are one call
        (default: :data:`pipeline.annotations.tadarida.ELEMENT_GAP`; 0 keeps the elements).
    annotated_windows : path or ``"extent"``, optional
        A CSV of the annotated windows (``file, start, end``, s; overrides the source's), or
        ``"extent"`` to take each Raven table's extent as its window.
    non_echolocation : {"negative", "class", "drop"}
        What buzzes and social calls are (:func:`~pipeline.annotations.table.select_calls`).
    detection_only : bool
        Learn every bat call as the single class ``"bat"``, whatever its species.

    Returns
    -------
    Annotations

    Raises
    ------
    AnnotationError
        One line naming the file (and row) and the reason, for anything that cannot be read.
    """
    from pipeline.annotations import read_annotations
    from pipeline.annotations.csv import read_windows_csv

    extent = annotated_windows is not None and str(annotated_windows) == RAVEN_EXTENT
    options = {
        "time_expansion": time_expansion, "species_column": species_column, "species_list": species_list,
        "class_names": class_names, "trust": True if trust_npz else None, "extent_as_window": True if extent else None,
        "element_gap": element_gap,
    }  # fmt: skip
    annotation_set = read_annotations(path, format=format, **options)
    windows = None
    if annotated_windows is not None and not extent:
        windows = read_windows_csv(annotated_windows)
    return dataset_from(annotation_set, windows=windows, non_echolocation=non_echolocation, detection_only=detection_only)


def dataset_from(
    annotation_set: AnnotationSet,
    *,
    windows: pd.DataFrame | None = None,
    non_echolocation: str = "negative",
    detection_only: bool = False,
) -> Annotations:
    """An :class:`Annotations` dataset from what a reader returned (see :func:`read_dataset`)."""
    if windows is not None:
        annotation_set = replace(annotation_set, windows=validate_windows(windows, origin="annotated windows"))
    selected = select_calls(annotation_set, non_echolocation)
    split = selected["split"].fillna("train")
    positive = (selected["role"] == "positive").to_numpy()
    labels = selected["class"]
    notes: list[str] = []
    has_classes = not detection_only and bool(labels[positive].notna().any())
    if not has_classes:
        classes = [DETECTION_ONLY_CLASS]
        labels = pd.Series(np.where(positive, DETECTION_ONLY_CLASS, None), index=selected.index, dtype=object)
    else:
        declared = list(annotation_set.classes or [])
        in_train = labels[positive & (split == "train").to_numpy()].dropna().unique()
        classes = declared + sorted(str(c) for c in in_train if c not in declared)
        trained = set(in_train)
        idle = [c for c in classes if c not in trained]
        if idle:
            notes.append(f"class(es) without a training call, their outputs cannot learn: {', '.join(idle)}")
        in_test = labels[positive & (split == "test").to_numpy()].dropna()
        unseen = in_test[~in_test.isin(classes)].value_counts()
        for name, n in unseen.items():
            notes.append(
                f"class {name!r} is only in the test split ({n} calls): the model has no output for it; "
                "its calls count for detection only"
            )
    code = {name: k for k, name in enumerate(classes, start=1)}
    class_codes = np.array([code.get(c, 0) if isinstance(c, str) else 0 for c in labels], dtype=np.int64)
    recordings: dict[tuple[str, str], dict] = {}

    def recording(file: str, part: str) -> dict:
        return recordings.setdefault((file, part), {"positions": [], "classes": [], "negatives": [], "duration": []})

    for (file, part), rows in selected.assign(split=split).groupby(["file", "split"], sort=True):
        index = selected.index.get_indexer(rows.index)
        entry = recording(str(file), str(part))
        is_positive = positive[index]
        entry["positions"] = rows["position"].to_numpy(np.float64)[is_positive]
        entry["classes"] = class_codes[index][is_positive]
        entry["negatives"] = rows["position"].to_numpy(np.float64)[~is_positive]
        entry["duration"] = rows["duration"].to_numpy(np.float64)
    window_table = annotation_set.windows
    spans: dict[tuple[str, str], np.ndarray] = {}
    if window_table is not None:
        window_split = window_table["split"].fillna("train") if "split" in window_table else "train"
        for (file, part), rows in window_table.assign(split=window_split).groupby(["file", "split"], sort=True):
            recording(str(file), str(part))
            spans[(str(file), str(part))] = rows[["start", "end"]].to_numpy(np.float64)
    out: dict[str, list] = {"train": [], "test": []}
    for (file, part), entry in sorted(recordings.items()):
        if part not in out:
            raise AnnotationError(f"{file}: split {part!r}; expected train or test")
        durations = np.asarray(entry["duration"], dtype=np.float64)
        window = spans.get((file, part))
        if window_table is not None and window is None:
            window = np.zeros((0, 2))  # listed in no window: nothing of it was annotated
        out[part].append(
            RecordingCalls(
                file=file,
                duration=float(np.nanmax(durations)) if len(durations) and np.isfinite(durations).any() else np.nan,
                positions=np.asarray(entry["positions"], dtype=np.float64),
                classes=np.asarray(entry["classes"], dtype=np.int64),
                negatives=np.asarray(entry["negatives"], dtype=np.float64),
                windows=window,
            )
        )
    return Annotations(out["train"], out["test"], classes, has_classes, notes, annotation_set.source)
