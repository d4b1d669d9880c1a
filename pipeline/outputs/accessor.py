"""Selections on a table of detections by the domain's names: ``calls.batml.species(...)``."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from pipeline.detection.schema import classes_of_columns, probability_column
from pipeline.outputs.parts import checked_species


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
        return classes_of_columns(self._table.columns)

    def species(self, species: str | Iterable[str], min_probability: float = 0.5) -> pd.DataFrame:
        """The calls of which the probability of one of ``species`` reaches ``min_probability``.

        Multi-label, like the reference system's CSV: a call where Pip35 reaches 0.8 is kept even when
        another species is more probable there (``read_detections(species=...)`` filters on
        the most probable class instead).
        """
        names = checked_species(species, self.classes)
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
