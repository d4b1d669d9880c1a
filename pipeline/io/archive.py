"""Finding the recordings of an archive and listing them in a manifest table.

An archive is a folder tree of WAV files, on a local disk or behind an fsspec URL.
:func:`discover` lists its recordings (recursively, sorted, case-insensitive suffix, hidden
names skipped); :func:`build_manifest` reads every header (never the samples), in batches
on a dask cluster when one is given, and gives one row per recording: what it is and
whether it can be analysed, with a one-line reason when it cannot. The manifest is kept
as Parquet.

A directory whose name ends in ``.wav`` is a folder like any other: it is searched, and
never listed as a recording.
"""

from __future__ import annotations

import os
import posixpath
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
from fsspec import AbstractFileSystem
from fsspec.core import split_protocol, url_to_fs
from tqdm import tqdm

from pipeline.config import SpectrogramSettings
from pipeline.files import atomic_path
from pipeline.io.audio import RecordingError, RecordingInfo, check_usable, file_status, read_info

if TYPE_CHECKING:
    from distributed import Client

#: Suffixes of recordings, lower case; names are matched case-insensitively.
AUDIO_SUFFIXES = (".wav",)

MANIFEST_COLUMNS = [
    "path",
    "size",
    "mtime",
    "sample_rate",
    "frames",
    "duration",
    "channels",
    "time_expansion",
    "timestamp",
    "recorder",
    "subtype",
    "status",
    "reason",
    "note",
]
_MANIFEST_DTYPES = {
    "path": "string",
    "size": "int64",
    "mtime": "float64",
    "sample_rate": "int64",
    "frames": "int64",
    "duration": "float64",
    "channels": "int64",
    "time_expansion": "float64",
    "timestamp": "string",
    "recorder": "string",
    "subtype": "string",
    "status": "string",
    "reason": "string",
    "note": "string",
}


class ArchiveError(ValueError):
    """An archive or manifest that cannot be used; its message is one line for the user."""


class ArchiveNotFoundError(ArchiveError, FileNotFoundError):
    """The root of an archive does not exist."""


def discover(root: str | os.PathLike, *, filesystem: AbstractFileSystem | None = None) -> list[str]:
    """List the recordings under a folder, recursively.

    Parameters
    ----------
    root
        Local folder, fsspec URL (``'memory://x'``, ``'file:///x'``, ``'s3://bucket/x'``),
        or a path inside ``filesystem``. A file (of any name) gives ``[root]``.
    filesystem
        fsspec filesystem holding ``root``.

    Returns
    -------
    list of str
        Sorted paths of the files whose names end in an :data:`AUDIO_SUFFIXES` suffix,
        in any case. Names starting with ``'.'`` (macOS ``._x.wav`` resource forks,
        ``.Trashes``) are skipped, files and folders alike. Paths start with ``root``
        as given; with ``filesystem`` they are that filesystem's paths. Local symbolic
        links to folders are followed, each folder being visited once (through the
        first link in name order). A folder that cannot be listed is skipped with a
        warning.

    Raises
    ------
    ArchiveNotFoundError
        ``root`` does not exist.
    """
    root = os.fspath(root)
    if filesystem is None and split_protocol(root)[0] is None:
        return _discover_local(root)
    return _discover_fsspec(root, filesystem)


def manifest_row(
    path: str | os.PathLike,
    *,
    time_expansion: float | None = None,
    settings: SpectrogramSettings | None = None,
    filesystem: AbstractFileSystem | None = None,
) -> dict[str, Any]:
    """Describe one recording for the manifest; never raises for a bad file.

    Parameters
    ----------
    path
        Local path or fsspec URL (or a path inside ``filesystem``).
    time_expansion
        Factor overriding GUANO's ``TE`` (see :func:`pipeline.io.audio.read_info`).
    settings
        Spectrogram settings deciding usability (defaults when ``None``).
    filesystem
        fsspec filesystem holding ``path``.

    Returns
    -------
    dict
        Keyed by :data:`MANIFEST_COLUMNS`. ``status`` is ``'ok'`` (``reason`` empty) or
        ``'rejected'`` with the one-line reason. A file whose header cannot be read has
        its size and mtime when the filesystem gives them (else 0), sample rate and
        channels 0, duration and time expansion NaN.
    """
    settings = SpectrogramSettings() if settings is None else settings
    try:
        info = read_info(path, time_expansion=time_expansion, filesystem=filesystem)
    except RecordingError as exc:
        return _unreadable_row(os.fspath(path), exc.reason, filesystem)
    try:
        check_usable(info, settings)
    except RecordingError as exc:
        return _recording_row(info, "rejected", exc.reason)
    return _recording_row(info, "ok", "")


def build_manifest(
    paths: Iterable[str],
    *,
    time_expansion: float | None = None,
    settings: SpectrogramSettings | None = None,
    filesystem: AbstractFileSystem | None = None,
    client: Client | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> pd.DataFrame:
    """Read the header of every recording into a manifest table.

    Parameters
    ----------
    paths
        Recordings, e.g. from :func:`discover`.
    time_expansion, settings, filesystem
        As for :func:`manifest_row`.
    client
        A ``dask.distributed.Client``: headers are then read on its workers,
        ``batch_size`` files per task, so that a million files make a few thousand
        tasks, of which only a few per worker thread are submitted at once (and each
        batch's table is fetched and released as soon as it is done), so that neither
        the scheduler nor the workers hold more as the archive grows. Without one, a
        plain loop.
    batch_size
        Files per task with a client.
    progress
        Show a progress bar (over files, or over batches with a client).

    Returns
    -------
    pandas.DataFrame
        One row per path, in the order of ``paths``, with :data:`MANIFEST_COLUMNS`.
    """
    paths = list(paths)
    options = {"time_expansion": time_expansion, "settings": settings, "filesystem": filesystem}
    if client is None:
        rows = [manifest_row(path, **options) for path in tqdm(paths, desc="manifest", unit="file", disable=not progress)]
        table = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    else:
        tables = _distributed_tables(client, paths, batch_size, progress, options)
        table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame([], columns=MANIFEST_COLUMNS)
    return table.astype(_MANIFEST_DTYPES)


def write_manifest(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a manifest as Parquet, atomically.

    The table is written to a temporary name in the destination folder and then renamed,
    so that a reader never sees a half-written manifest.
    """
    with atomic_path(os.path.abspath(os.fspath(path))) as temporary:
        df.to_parquet(temporary, engine="pyarrow", index=False)


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest written by :func:`write_manifest`, with the manifest's dtypes.

    Raises
    ------
    ArchiveError
        The table lacks some of :data:`MANIFEST_COLUMNS`.
    """
    df = pd.read_parquet(path, engine="pyarrow")
    missing = [column for column in MANIFEST_COLUMNS if column not in df.columns]
    if missing:
        raise ArchiveError(f"{os.fspath(path)}: not a manifest (no column {', '.join(missing)})")
    return df.astype(_MANIFEST_DTYPES)


def _discover_local(root: str) -> list[str]:
    if os.path.isfile(root):
        return [root]
    if not os.path.isdir(root):
        raise ArchiveNotFoundError(f"{root}: no such folder")
    return sorted(_walk_local(root))


def _walk_local(root: str) -> Iterator[str]:
    """Recordings under a local folder, following folder links but visiting each folder once.

    Folders are visited depth first in name order, so which of several links to one
    folder gives its recordings' paths does not depend on the order the disk lists them.
    """
    pending, visited = [root], set()
    while pending:
        folder = pending.pop()
        try:
            status = os.stat(folder)
            if (status.st_dev, status.st_ino) in visited:
                continue
            visited.add((status.st_dev, status.st_ino))
            with os.scandir(folder) as scan:
                entries = list(scan)
        except OSError as exc:
            _warn_unlisted(exc)
            continue
        for entry in sorted(entries, key=lambda entry: entry.name, reverse=True):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                pending.append(entry.path)
            elif entry.is_file() and _is_recording_name(entry.name):
                yield entry.path


def _discover_fsspec(root: str, filesystem: AbstractFileSystem | None) -> list[str]:
    fs, location = (filesystem, root) if filesystem is not None else url_to_fs(root)
    if fs.isfile(location):
        return [root]
    if not fs.isdir(location):
        raise ArchiveNotFoundError(f"{root}: no such folder")
    found = _walk_fsspec(fs, location)
    if filesystem is None:
        # Keep the URL as the user spelt it (protocol, chained filesystems).
        found = (root.rstrip("/") + "/" + posixpath.relpath(path, location) for path in found)
    return sorted(found)


def _walk_fsspec(fs: AbstractFileSystem, location: str) -> Iterator[str]:
    for folder, subfolders, names in fs.walk(location, on_error=_warn_unlisted):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        yield from (posixpath.join(folder, name) for name in names if _is_recording_name(name))


def _is_recording_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(AUDIO_SUFFIXES)


def _warn_unlisted(error: OSError) -> None:
    warnings.warn(f"cannot list folder, skipped: {error}", stacklevel=2)


def _recording_row(info: RecordingInfo, status: str, reason: str) -> dict[str, Any]:
    return {
        "path": info.path,
        "size": info.size,
        "mtime": info.mtime,
        "sample_rate": info.sample_rate,
        "frames": info.frames,
        "duration": info.duration,
        "channels": info.channels,
        "time_expansion": info.time_expansion,
        "timestamp": info.timestamp,
        "recorder": info.recorder,
        "subtype": info.subtype,
        "status": status,
        "reason": reason,
        "note": info.note,
    }


def _unreadable_row(path: str, reason: str, filesystem: AbstractFileSystem | None) -> dict[str, Any]:
    try:
        size, mtime = file_status(path, filesystem=filesystem)
    except RecordingError:
        size, mtime = 0, 0.0
    return {
        "path": path,
        "size": size,
        "mtime": mtime,
        "sample_rate": 0,
        "frames": 0,
        "duration": float("nan"),
        "channels": 0,
        "time_expansion": float("nan"),
        "timestamp": None,
        "recorder": None,
        "subtype": None,
        "status": "rejected",
        "reason": reason,
        "note": "",
    }


def _manifest_table(paths: Sequence[str], **options: Any) -> pd.DataFrame:
    """The manifest rows of one batch of recordings (one dask task), as a table."""
    return pd.DataFrame([manifest_row(path, **options) for path in paths], columns=MANIFEST_COLUMNS)


def _distributed_tables(
    client: Client, paths: list[str], batch_size: int, progress: bool, options: dict[str, Any]
) -> list[pd.DataFrame]:
    """The tables of the batches of ``paths``, in order; a bounded number of tasks in flight."""
    # Imported here so that using archives without a cluster does not import distributed.
    from pipeline.distributed import completed_in_turn

    starts = range(0, len(paths), max(int(batch_size), 1))

    def submit(start: int):
        return client.submit(_manifest_table, paths[start : start + batch_size], pure=False, **options)

    tables: dict[int, pd.DataFrame] = {}
    with tqdm(total=len(paths), desc="manifest", unit="file", disable=not progress) as bar:
        for start, future in completed_in_turn(client, starts, submit):
            tables[start] = future.result()
            future.release()
            bar.update(len(tables[start]))
    return [tables[start] for start in starts]
