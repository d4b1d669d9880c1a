"""The reference system's CSV of detections: ``OUT/detections.csv``.

``file_name,predicted_time,predicted_species,predicted_prob``: one row per (detected call,
species reaching its threshold) (:func:`pipeline.detection.schema.species_rows`); two species
at one moment are two rows. ``file_name`` is the path as the cube stores it, with ``#ch<n>``
added for a channel ``n >= 1`` of a multichannel file (:func:`recording_label`). Written by
streaming over the parts, atomically; it can be rewritten with other thresholds without
running the detection again (as long as the detection threshold is not below the run's).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from pipeline.config import MIX_CHANNEL
from pipeline.detection.schema import SPECIES_COLUMNS, species_rows, threshold_values
from pipeline.files import atomic_file
from pipeline.outputs.folder import CSV_NAME, output_directory
from pipeline.outputs.parts import iter_parts


def recording_label(path: str, channel: int) -> str:
    """The ``file_name`` of a recording in the reference system's CSV.

    The path as the cube stores it for channel 0 or a mix (-1), so that a mono archive
    gives exactly the reference system's names; ``"<path>#ch<channel>"`` for a later channel of a
    multichannel file (``"a.wav#ch1"``: the second channel).
    """
    channel = int(channel)
    return str(path) if channel in (MIX_CHANNEL, 0) else f"{path}#ch{channel}"


def reference_rows(events: pd.DataFrame, classes: Sequence[str], thresholds: Mapping[str, float] | None) -> pd.DataFrame:
    """The reference system CSV's rows of some events (:func:`pipeline.detection.schema.species_rows`).

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
        :data:`pipeline.detection.schema.SPECIES_COLUMNS`, ``file_name`` by :func:`recording_label`:
        one row per (event whose score reaches the detection threshold, class whose
        probability reaches its threshold), in event then class order.
    """
    labels = [recording_label(f, c) for f, c in zip(events["file"], events["channel"])]
    with_names = events.assign(recording=pd.Series(labels, index=events.index, dtype=object))
    return species_rows(with_names, classes, thresholds)


def write_reference_csv(
    out_dir: str | os.PathLike,
    classes: Sequence[str],
    thresholds: Mapping[str, float] | None,
    dest: str | os.PathLike | None = None,
) -> Path:
    """Write the reference system's CSV of detections, streaming over the parts.

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
        the rows of :func:`reference_rows` part after part (archive order). Two species reaching
        their thresholds at one event give two rows with the same time; a detected call of
        no species reaching its threshold gives none. ``file_name`` is the recording's path,
        ``"<path>#ch<n>"`` for a channel ``n >= 1`` of a multichannel file
        (:func:`recording_label`).
    """
    classes = [str(name) for name in classes]
    threshold_values(thresholds, classes)  # fail early on unknown or invalid thresholds
    target = Path(dest) if dest is not None else output_directory(out_dir) / CSV_NAME
    parts = iter_parts(out_dir)
    with atomic_file(target) as fh:
        fh.write(",".join(SPECIES_COLUMNS) + "\n")
        for _, events in parts:
            reference_rows(events, classes, thresholds).to_csv(
                fh, header=False, index=False, lineterminator="\n"
            )
    return target
