"""The layout of a detection run's output folder ``OUT``, and its temporaries.

::

    OUT/detections.parquet/part-000000.parquet   the events of cube chunk 0 (pipeline.outputs.parts)
    OUT/detections.parquet/part-000001.parquet   ... one part per finished chunk
    OUT/detections.csv                           the reference system's CSV (pipeline.outputs.reference_csv)
    OUT/raven/<name>.Table.1.selections.txt      Raven Pro tables, one per file (pipeline.outputs.raven)
    OUT/detections.selections.txt                or one combined Raven table
    OUT/report.json, OUT/report.txt              the run report (pipeline.outputs.report)
    OUT/_journal/run.json                        what the run is (pipeline.detection.archive)

Every file is written under a temporary name and renamed (:mod:`pipeline.files`);
:func:`remove_stale_temporaries` clears what a killed run left half written.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

#: Name of the folder of parts inside the output folder.
PARTS_DIRNAME = "detections.parquet"


#: File names of the derived outputs inside the output folder.
CSV_NAME = "detections.csv"


RAVEN_DIRNAME = "raven"


RAVEN_COMBINED_NAME = "detections.selections.txt"


RAVEN_SUFFIX = ".Table.1.selections.txt"


REPORT_JSON_NAME = "report.json"


REPORT_TEXT_NAME = "report.txt"


PART_NAME = re.compile(r"^part-(\d+)\.parquet$")


_PART_TEMPORARY = re.compile(r"^\.part-\d+\.parquet\.tmp-[0-9a-f]+$")


_OUTPUT_TEMPORARY = re.compile(
    r"^\.(detections\.csv|detections\.selections\.txt|raven|report\.json|report\.txt)"
    r"\.(tmp|previous)-[0-9a-f]+$"
)


class DetectionsError(ValueError):
    """Detection outputs that cannot be read as asked; the message is one line for the user."""


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
