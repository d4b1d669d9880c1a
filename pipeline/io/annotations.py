"""The reference system's ``.npz`` annotation format: reading it safely, writing it reproducibly.

The reference system's format (see ``SEED.md``) is a ``.npz`` with, for each split ``train`` and ``test``:

``<split>_files``
    recording names without extension (``str`` or ``bytes``);
``<split>_durations``
    duration of each recording in real seconds;
``<split>_pos``
    per recording, the start times (real seconds) of its calls, shape ``(n,)`` or ``(n, 1)``;
``<split>_class``
    per recording, the classes (1..K, index into :data:`pipeline.config.REFERENCE_GROUPS` plus one)
    of those calls; absent from a detection-only dataset.

Two calls of different classes at the same moment are two entries with the same position. The
per-recording arrays are ragged, so they are stored as object arrays, whose loading needs pickle.
:func:`read_reference_npz` unpickles them with an allow-list of the few numpy callables that rebuild
plain arrays, so that an untrusted file cannot run code. :func:`write_reference_npz` writes the same
format byte for byte reproducibly (fixed zip timestamps), loadable by the reference system's
``np.load(path, allow_pickle=True)``. Every other annotation format, and this one as a table of
calls, is read by :mod:`pipeline.annotations`.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from pipeline.config import REFERENCE_GROUPS
from pipeline.files import atomic_path
from pipeline.io.restricted_pickle import read_npy_bytes

SPLITS = ("train", "test")

#: Fixed timestamp of every zip entry, so that the same content gives the same bytes.
_ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)

class AnnotationError(ValueError):
    """An annotation file that cannot be used; its message is one line naming the file."""


@dataclass(frozen=True, eq=False)
class RecordingCalls:
    """The annotated calls of one recording.

    Parameters
    ----------
    file
        Recording name without extension, relative to the archive root, POSIX separators.
    duration
        Duration of the recording in real seconds.
    positions
        Start time of each call in real seconds, float64, shape ``(n,)``.
    classes
        Class of each call (1..K, or 0 for a bat call of unknown species), int64, shape
        ``(n,)``; ``None`` for detection-only data.
    negatives
        Positions (real s) of labelled sounds that are not calls to detect (insects, noise, and
        buzzes or social calls when learned as negatives), float64; ``None``: none labelled.
    windows
        The annotated parts of the recording, ``(m, 2)`` float64 ``[start, end)`` in real s;
        outside them nothing is known (no negative is drawn there, no detection counted).
        ``None``: the whole recording was annotated.
    """

    file: str
    duration: float
    positions: np.ndarray
    classes: np.ndarray | None
    negatives: np.ndarray | None = None
    windows: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class ReferenceDataset:
    """A dataset in the reference system's format: annotated recordings of the train and test splits."""

    train: list[RecordingCalls]
    test: list[RecordingCalls]
    has_classes: bool


# ---------------------------------------------------------------------------------------------
# Writing


def _ragged(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """A 1-D object array holding ``arrays`` as they are (never merged into a 2-D array)."""
    out = np.empty(len(arrays), dtype=object)
    for i, array in enumerate(arrays):
        out[i] = array
    return out


def _split_fields(split: str, recordings: Sequence[RecordingCalls], with_classes: bool) -> dict:
    fields = {
        f"{split}_files": np.array([r.file for r in recordings], dtype=str),
        f"{split}_durations": np.array([r.duration for r in recordings], dtype=np.float64),
        f"{split}_pos": _ragged([np.asarray(r.positions, dtype=np.float64) for r in recordings]),
    }
    if with_classes:
        fields[f"{split}_class"] = _ragged([np.asarray(r.classes, dtype=np.int64) for r in recordings])
    return fields


def write_reference_npz(path: str | os.PathLike, train: Sequence[RecordingCalls],
                   test: Sequence[RecordingCalls]) -> Path:
    """Write annotated recordings in the reference system's ``.npz`` format, reproducibly and atomically.

    Parameters
    ----------
    path
        Destination ``.npz``; replaced atomically (written next to it, then renamed).
    train, test
        Recordings of each split, in the order to store them. Either every recording has
        ``classes`` (a classification dataset) or none has (detection-only).

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    ValueError
        If some recordings have classes and others do not.

    Notes
    -----
    The same content always gives the same bytes: the zip entries carry a fixed timestamp and the
    arrays are written with :func:`numpy.lib.format.write_array`. The file loads with the reference system's
    ``np.load(path, allow_pickle=True)``.
    """
    recordings = [*train, *test]
    with_classes = {r.classes is not None for r in recordings}
    if len(with_classes) > 1:
        raise ValueError("either every recording has classes or none has")
    has_classes = with_classes != {False}
    fields = {**_split_fields("train", train, has_classes), **_split_fields("test", test, has_classes)}
    path = Path(path)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in fields.items():
            buffer = io.BytesIO()
            npy_format.write_array(buffer, array, allow_pickle=True)
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE_TIME)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o644 << 16
            archive.writestr(entry, buffer.getvalue())
    return path


# ---------------------------------------------------------------------------------------------
# Reading


def _refusal(source: Path):
    """The AnnotationError for a pickle in ``source`` naming a global outside the allow-list."""

    def refuse(module: str, name: str) -> AnnotationError:
        return AnnotationError(
            f"{source}: holds a pickled {module}.{name}, and unpickling it could run code; "
            "only plain numpy arrays are read. If you made this file yourself, pass --trust-npz "
            f"(trust=True in Python), or convert it once: batml convert {source} --trust-npz -o calls.csv"
        )

    return refuse


def _load_member(archive: zipfile.ZipFile, member: str, source: Path, trust: bool) -> np.ndarray:
    """Read one ``.npy`` member; object arrays go through the allow-list unless ``trust``
    (:mod:`pipeline.io.restricted_pickle`)."""
    try:
        return read_npy_bytes(archive.read(member), _refusal(source), trust=trust)
    except ValueError as exc:
        if isinstance(exc, AnnotationError):
            raise
        raise ValueError(f"{member}: {exc}") from None


def _load_fields(path: Path, trust: bool) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as archive:
            return {
                member.removesuffix(".npy"): _load_member(archive, member, path, trust)
                for member in archive.namelist()
                if member.endswith(".npy")
            }
    except AnnotationError:
        raise
    except FileNotFoundError:
        raise AnnotationError(f"{path}: file not found") from None
    except zipfile.BadZipFile:
        raise AnnotationError(f"{path}: not an .npz (zip) file") from None
    except (ValueError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise AnnotationError(f"{path}: unreadable array ({exc})") from None


def _names(array: np.ndarray) -> list[str]:
    """Recording names from an array of ``str`` or ``bytes`` (UTF-8)."""
    return [name.decode("utf-8") if isinstance(name, bytes) else str(name) for name in array.reshape(-1)]


def _per_recording(array: np.ndarray) -> list[np.ndarray]:
    """The ragged per-recording arrays, whether stored as an object array or as a 2-D array."""
    if array.ndim >= 2:
        return list(array)
    if array.dtype.hasobject:
        return [np.asarray(item) for item in array]
    raise ValueError(f"expected one array per recording, got a {array.ndim}-D {array.dtype} array")


def _column(values: np.ndarray) -> np.ndarray:
    """One recording's values as shape ``(n,)``; accepts ``(n,)`` and ``(n, 1)``."""
    if values.ndim <= 1 or (values.ndim == 2 and values.shape[1] == 1):
        return values.reshape(-1)
    raise ValueError(f"per-recording array of shape {values.shape}, expected (n,) or (n, 1)")


def _recordings(fields: Mapping[str, np.ndarray], split: str, n_classes: int | None) -> list[RecordingCalls]:
    """Validate and assemble one split; raises ValueError with the reason."""
    names = _names(fields[f"{split}_files"])
    durations = np.asarray(fields[f"{split}_durations"], dtype=np.float64).reshape(-1)
    positions = _per_recording(fields[f"{split}_pos"])
    classes = None if n_classes is None else _per_recording(fields[f"{split}_class"])
    lengths = {len(names), len(durations), len(positions), len(classes if classes is not None else positions)}
    if len(lengths) > 1:
        raise ValueError(f"{split}_* fields have different lengths {sorted(lengths)}")
    if not np.all(np.isfinite(durations) & (durations >= 0)):
        raise ValueError(f"{split}_durations holds negative or non-finite values")
    recordings = []
    for i, name in enumerate(names):
        pos = _column(positions[i]).astype(np.float64)
        if not np.all(np.isfinite(pos)):
            raise ValueError(f"{split}_pos[{i}] ({name}) holds non-finite positions")
        cls = None
        if classes is not None:
            raw = _column(classes[i]).astype(np.float64)
            if raw.shape != pos.shape:
                raise ValueError(f"{split}_class[{i}] ({name}) has {raw.size} classes for {pos.size} positions")
            if not np.all((raw == np.round(raw)) & (raw >= 1) & (raw <= n_classes)):
                raise ValueError(f"{split}_class[{i}] ({name}) holds a class outside 1..{n_classes}")
            cls = raw.astype(np.int64)
        recordings.append(RecordingCalls(name, float(durations[i]), pos, cls))
    return recordings


def read_reference_npz(path: str | os.PathLike, *, trust: bool = False,
                  n_classes: int = len(REFERENCE_GROUPS)) -> ReferenceDataset:
    """Read a dataset in the reference system's ``.npz`` format, without running code from the file.

    Parameters
    ----------
    path
        The ``.npz`` file.
    trust
        If False (default), object arrays are unpickled with an allow-list of the numpy callables
        that rebuild plain arrays, and anything else in the pickle is refused. If True, they are
        unpickled normally (only for files you made yourself: pickle can run arbitrary code).
    n_classes
        Number of bat classes K; classes must lie in 1..K.

    Returns
    -------
    ReferenceDataset
        Both splits; ``has_classes`` is False for a detection-only dataset (no ``*_class``).

    Raises
    ------
    AnnotationError
        If the file is missing, not a zip, lacks a field, has fields of different lengths, a
        position that is not finite, a class outside 1..K, or a pickle naming anything but numpy's
        array rebuilders. The message is one line starting with the path.
    """
    path = Path(path)
    fields = _load_fields(path, trust)
    required = [f"{split}_{name}" for split in SPLITS for name in ("files", "durations", "pos")]
    missing = [name for name in required if name not in fields]
    if missing:
        raise AnnotationError(f"{path}: missing field(s) {', '.join(missing)}")
    class_fields = [f"{split}_class" for split in SPLITS if f"{split}_class" in fields]
    if len(class_fields) == 1:
        raise AnnotationError(f"{path}: {class_fields[0]} present but not its counterpart")
    has_classes = bool(class_fields)
    try:
        splits = {split: _recordings(fields, split, n_classes if has_classes else None) for split in SPLITS}
    except (ValueError, TypeError) as exc:  # TypeError: an object array holding something not a number
        raise AnnotationError(f"{path}: {exc}") from None
    return ReferenceDataset(train=splits["train"], test=splits["test"], has_classes=has_classes)


# ---------------------------------------------------------------------------------------------
# CSV of calls


# ---------------------------------------------------------------------------------------------
# Converting other annotation formats to the CSV of calls


