"""Annotated datasets as training and evaluation read them: two splits of annotated recordings.

:func:`read_dataset` reads the reference system's ``.npz`` or batml's CSV of calls into its
train and test splits (:class:`Annotations`) and its class names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import SEED_SPECIES
from pipeline.io.annotations import AnnotationError, RecordingCalls, read_calls_csv, read_seed_npz


@dataclass
class Annotations:
    """Annotated recordings of both splits, and the class names (class k is ``classes[k-1]``)."""

    train: list
    test: list
    classes: list[str]
    has_classes: bool


def read_dataset(path: str | os.PathLike, *, trust_npz: bool = False) -> Annotations:
    """Read the seed's ``.npz`` or a CSV of calls (``file, position, class[, split, duration]``)."""
    path = Path(path)
    if path.suffix.lower() == ".npz":
        data = read_seed_npz(path, trust=trust_npz)
        return Annotations(data.train, data.test, list(SEED_SPECIES), data.has_classes)
    table = read_calls_csv(path)
    if "duration" not in table.columns:
        raise AnnotationError(f"{path}: a CSV of calls needs a 'duration' column (recording length, s)")
    split = table["split"] if "split" in table.columns else pd.Series("train", index=table.index)
    out = {"train": [], "test": []}
    for (name, part), rows in table.groupby([table["file"], split], sort=True):
        out["test" if part == "test" else "train"].append(
            RecordingCalls(
                file=str(name),
                duration=float(rows["duration"].iloc[0]),
                positions=rows["position"].to_numpy(np.float64),
                classes=rows["class"].to_numpy(np.int64),
            )
        )
    return Annotations(out["train"], out["test"], list(SEED_SPECIES), True)
