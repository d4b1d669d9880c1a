"""Writing files and folders so that nothing is ever seen half written, and JSON-ready values.

Every output of batml (cube metadata, journals, detection parts, reports, model bundles,
figures, CSV tables) is written through this module:

- :func:`atomic_file` / :func:`atomic_path`: a temporary name beside the target
  (:func:`temporary_name`, ``.<name>.tmp-<hex>``), flushed to disk, renamed onto the target,
  and the rename itself flushed (the folder's entry); on failure the temporary is removed
  and the target keeps its previous content;
- :func:`write_text`, :func:`write_json`: the same for a whole text or JSON document;
- :func:`staging_directory` / :func:`replace_directory`: a whole folder built under a
  temporary name and put in place of the target in one rename (the previous one, if any,
  kept until the new one is in place);
- :func:`check_writable`: whether a folder really takes new entries (tried, so that it
  holds for root and for read-only mounts);
- :func:`json_ready`: numpy scalars and arrays, paths, tuples, sets and dates as plain JSON
  types, NaN and infinities as ``None``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: Hex digits of the random part of a temporary name.
_TOKEN = 12


class NotWritableError(PermissionError):
    """A folder that does not take new files; the message is one line for the user."""


def temporary_name(target: str | os.PathLike) -> Path:
    """A hidden name beside ``target`` for writing it: ``.<name>.tmp-<hex>``."""
    target = Path(target)
    return target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:_TOKEN]}")


def fsync_directory(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename inside it) to disk, where the platform allows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
    """Flush a file, or every file and folder under a folder, to disk."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        for entry in path.iterdir():
            fsync_tree(entry)
        fsync_directory(path)
    elif path.is_file():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``target`` to write to; on success it replaces ``target``.

    For writers that take a path (Parquet, figures, zarr stores): what the block leaves at
    the temporary path (a file or a folder) is flushed to disk and renamed onto ``target``.
    A folder replaces only a missing or empty ``target`` (see :func:`replace_directory`
    otherwise). On failure, or when the block raises, the temporary is removed and
    ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(target)
    try:
        yield tmp
        fsync_tree(tmp)
        os.replace(tmp, target)
        fsync_directory(target.parent)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """An open temporary file beside ``target``; on success it replaces ``target``.

    Text modes write UTF-8 with no newline translation.
    """
    kwargs = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
    with atomic_path(target) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def write_text(target: str | os.PathLike, text: str) -> Path:
    """Write a whole text file atomically (UTF-8); its path."""
    with atomic_file(target) as fh:
        fh.write(text)
    return Path(target)


def write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    """Write a whole binary file atomically; its path."""
    with atomic_file(target, "wb") as fh:
        fh.write(data)
    return Path(target)


def write_json(target: str | os.PathLike, document: Any, *, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """Write ``json_ready(document)`` as a JSON file atomically; its path."""
    text = json.dumps(json_ready(document), indent=indent, sort_keys=sort_keys, allow_nan=False, ensure_ascii=False)
    return write_text(target, text + "\n")


def replace_directory(staging: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the finished folder ``staging`` in the place of ``target`` (which may exist).

    ``staging`` is flushed to disk first; an existing ``target`` is renamed aside, then
    removed once ``staging`` is in its place (restored if that rename fails).
    """
    staging, target = Path(staging), Path(target)
    fsync_tree(staging)
    aside = target.with_name(f".{target.name}.previous-{uuid.uuid4().hex[:_TOKEN]}")
    if target.exists():
        os.rename(target, aside)
    try:
        os.rename(staging, target)
    except BaseException:
        if aside.exists() and not target.exists():
            os.rename(aside, target)
        raise
    fsync_directory(target.parent)
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def staging_directory(target: str | os.PathLike, *, before_replace=None) -> Iterator[Path]:
    """A new folder beside ``target`` to build it in; on success it replaces ``target``.

    ``before_replace`` (optional, no argument) runs after the block and before the folder
    is made visible (e.g. a last check for an interruption). On failure the staging folder
    is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield staging
        if before_replace is not None:
            before_replace()
        replace_directory(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_writable(target: str | os.PathLike, what: str = "the output") -> None:
    """Refuse a path whose folder does not take new entries (read-only, no permission).

    The nearest existing folder at or above ``target``'s parent gets a probe folder,
    created and removed: that holds for root, whom file modes do not stop, and for
    read-only mounts.

    Raises
    ------
    NotWritableError
        ``"<target>: cannot write <what> there (<reason>)"``.
    """
    target = Path(target)
    existing = next((p for p in target.parents if p.exists()), Path("."))
    try:
        probe = Path(tempfile.mkdtemp(prefix=".batml-write-test-", dir=existing))
    except OSError as exc:
        raise NotWritableError(f"{target}: cannot write {what} there ({exc.strerror or exc})") from None
    probe.rmdir()


def json_ready(value: Any, *, strict: bool = False) -> Any:
    """``value`` as plain JSON types.

    Mappings (keys made strings), lists, tuples, sets (sorted) and numpy arrays become
    dicts and lists; numpy scalars Python numbers; NaN and infinities ``None``; paths
    strings; dates ISO 8601 text.

    Parameters
    ----------
    strict : bool
        What to do with anything else (and with a mapping key that is not a string or an
        integer): ``False`` writes ``str(value)``; ``True`` raises :class:`TypeError`, for
        documents that must read back exactly as written (model manifests).
    """
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if isinstance(key, np.generic):
                key = key.item()
            if strict and (isinstance(key, bool) or not isinstance(key, (str, int))):
                raise TypeError(f"key {key!r} is not a string")
            out[str(key)] = json_ready(item, strict=strict)
        return out
    if isinstance(value, (set, frozenset)):
        return [json_ready(item, strict=strict) for item in sorted(value, key=str)]
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_ready(item, strict=strict) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if strict:
        raise TypeError(f"a {type(value).__name__} cannot be stored as JSON")
    return str(value)
