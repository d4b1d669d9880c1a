"""The one place where annotated recording names meet the recordings found on disk.

Annotations name recordings as their authors wrote them (``site01/20260612_213015``, with or
without an extension, with folders or not); detections and cubes hold the paths found under
the audio folder. A name matches a recording whose path, without its extension, ends with the
name's components (whole components, case-sensitive):

- :func:`match_recordings`: each name to its recording of a cube, or the reason it cannot be
  used (refused, not found, rejected by the manifest, ambiguous, failed);
- :func:`usable_recordings` / :func:`usable_annotations`: the annotated recordings that can be
  used, links leading outside the audio folder refused;
- :func:`align_recordings`: annotated calls and detected calls (from a run's outputs) given the
  same ``recording`` names for the evaluation.

Names are never opened as paths: only recordings found under the audio folder can match.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import PurePosixPath, PureWindowsPath

import pandas as pd

from pipeline.annotations.dataset import Annotations
from pipeline.io.archive import AUDIO_SUFFIXES


def name_key(name: str) -> tuple[str, ...]:
    """The components of an annotated recording name, without an audio suffix (``.wav``, any
    case): annotations name recordings with or without their extension."""
    parts = _name_parts(name)
    if parts and parts[-1].lower().endswith(AUDIO_SUFFIXES):
        stem = parts[-1][: parts[-1].rfind(".")]
        parts = (*parts[:-1], stem) if stem else parts
    return parts


def _name_parts(path: str) -> tuple[str, ...]:
    return PurePosixPath(str(path).replace("\\", "/")).parts


def recording_lookup(cube_paths: Sequence[str]) -> dict[tuple[str, ...], list[int]]:
    """Map every tail of every cube path, without its extension, to the recordings having it.

    ``/data/night/site01/x.wav`` is found as ``("x",)``, ``("site01", "x")``,
    ``("night", "site01", "x")`` and so on; the recordings (channels) of one file are listed
    in cube order.
    """
    lookup: dict[tuple[str, ...], list[int]] = {}
    for r, path in enumerate(cube_paths):
        parts = _name_parts(str(PurePosixPath(str(path).replace("\\", "/")).with_suffix("")))
        for k in range(1, len(parts) + 1):
            lookup.setdefault(parts[-k:], []).append(r)
    return lookup


def unsafe_name(name: str) -> str | None:
    """Why an annotated recording name must not be used, or None: names are relative to the
    audio folder, so an absolute name or one with a ``..`` component is refused."""
    text = str(name)
    posix = text.replace("\\", "/")
    if posix.startswith("/") or PureWindowsPath(text).drive:
        return "refused: an absolute path (names are relative to the audio folder)"
    if ".." in PurePosixPath(posix).parts:
        return "refused: '..' would lead outside the audio folder"
    return None


def _rejected_files(cube) -> dict[tuple[str, ...], list[str]]:
    """Every tail of the paths of the files the manifest rejected, to their reasons."""
    if "file_path" not in cube.variables:
        return {}
    paths, statuses, reasons = (cube[f"file_{k}"].values for k in ("path", "status", "reason"))
    rejected = [(str(p), str(why)) for p, st, why in zip(paths, statuses, reasons) if str(st) == "rejected"]
    lookup = recording_lookup([p for p, _ in rejected])
    return {tail: [rejected[i][1] for i in found] for tail, found in lookup.items()}


def match_recordings(cube, names: Sequence[str]) -> tuple[list[int | None], list[str]]:
    """The cube recording of each annotated recording name, or None with the reason.

    Parameters
    ----------
    cube : xarray.Dataset
        An opened cube; only its small tables are read.
    names : sequence of str
        Recording names without extension, possibly with folders
        (``site01/20260612_213015``), POSIX separators.

    Returns
    -------
    indices : list of int or None
        For each name, the index (dimension ``recording``) of its recording in the cube, or
        None when it cannot be used.
    problems : list of str
        One line per name left out: ``'<name>: refused: ...'`` (an absolute name, or one
        with ``..``: it would lead outside the audio folder), ``'<name>: <reason>'`` (a file
        of the archive rejected when its header was read: empty, not audio, too short...),
        ``'<name>: not in the cube'``, ``'<name>: ambiguous, matches <n> files of the
        cube'`` or ``'<name>: <status>'`` (a recording the cube could not compute).

    Notes
    -----
    A name matches a cube recording whose path, without its extension, ends with the name's
    components (whole components, case-sensitive). The first recording of the file in the
    cube is used (its first channel, when channels are analysed apart). Names are never
    opened as paths: only recordings found under the archive's folder can match.
    """
    status = [str(v) for v in cube["status"].values]
    file_index = cube["file_index"].values
    lookup = recording_lookup([str(p) for p in cube["path"].values])
    rejected_files = _rejected_files(cube)
    indices: list[int | None] = []
    problems: list[str] = []
    for name in names:
        escape = unsafe_name(name)
        if escape is not None:
            problems.append(f"{name}: {escape}")
            indices.append(None)
            continue
        matches = lookup.get(name_key(name), [])
        n_files = len({int(file_index[r]) for r in matches})
        r = matches[0] if matches else None
        if r is None:
            reasons = rejected_files.get(name_key(name), [])
            problems.append(f"{name}: {reasons[0] if len(reasons) == 1 else 'not in the cube'}")
        elif n_files > 1:
            problems.append(f"{name}: ambiguous, matches {n_files} files of the cube")
            r = None
        elif status[r] != "ok":
            problems.append(f"{name}: {status[r]}")
            r = None
        indices.append(r)
    return indices, problems


def usable_annotations(annotations: Annotations, cube, audio_dir=None) -> tuple[Annotations, list[str]]:
    """The annotated recordings of both splits that can be used, and one line per other one
    saying why (see :func:`usable_recordings`)."""
    train, train_problems = usable_recordings(annotations.train, cube, audio_dir)
    test, test_problems = usable_recordings(annotations.test, cube, audio_dir)
    usable = annotations.with_splits(train, test)
    return usable, train_problems + test_problems


def usable_recordings(recordings: list, cube, audio_dir=None) -> tuple[list, list[str]]:
    """The annotated recordings that can be used, and one line per other one saying why.

    A recording is left out when its name is absolute or holds ``..`` (it would lead outside
    the audio folder), when no recording of the cube matches it (not found, rejected by the
    manifest with its reason, ambiguous, failed; see :func:`pipeline.annotations.matching.match_recordings`)
    or, for a local ``audio_dir``, when its file is a symbolic link to a file outside
    ``audio_dir``. Names are only ever matched against the recordings found under the audio
    folder, never opened as paths.
    """
    from pipeline.annotations.matching import match_recordings

    root = _local_root(audio_dir)
    paths = cube["path"].values
    indices, problems = match_recordings(cube, [rec.file for rec in recordings])
    kept = []
    for rec, r in zip(recordings, indices):
        if r is None:
            continue
        if root is not None and not _inside(str(paths[r]), root):
            target = os.path.realpath(str(paths[r]))
            problems.append(f"{rec.file}: refused: a link to {target}, outside the audio folder {root}")
            continue
        kept.append(rec)
    return kept, problems


def _local_root(audio_dir) -> str | None:
    """The real path of a local audio folder (or of a single file's folder); None for a URL."""
    from fsspec.core import split_protocol

    if audio_dir is None or split_protocol(os.fspath(audio_dir))[0] is not None:
        return None
    root = os.path.realpath(os.fspath(audio_dir))
    return root if os.path.isdir(root) else os.path.dirname(root)


def _inside(path: str, root: str) -> bool:
    real = os.path.realpath(path)
    return os.path.commonpath([real, root]) == root


def _without_extension(path: str) -> tuple[str, ...]:
    return PurePosixPath(str(PurePosixPath(str(path).replace("\\", "/")).with_suffix(""))).parts


def align_recordings(calls: pd.DataFrame, detections: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Give annotated calls and detected calls the same ``recording`` names.

    Parameters
    ----------
    calls : pandas.DataFrame
        Annotated calls: ``file`` (the recording's name without extension, possibly with
        folders, as in a CSV of calls), ``position``, ``class``; or already ``recording``.
    detections : pandas.DataFrame
        Detected calls: ``file`` (the path as the cube stores it) and ``channel``; or
        already ``recording``.

    Returns
    -------
    (calls, detections)
        Copies with a ``recording`` column, what :mod:`pipeline.evaluation` reads. A detected
        file takes the name of the annotated recording whose name ends its path (without
        extension, whole folder names); a file of several channels is scored on its first.
        Detections of files not annotated keep their path (they count as false positives),
        and annotated recordings without detections keep their name (their calls are misses).
    """
    calls, detections = calls.copy(), detections.copy()
    if "recording" not in calls.columns:
        calls["recording"] = calls["file"].astype(str)
    if "recording" in detections.columns:
        return calls, detections
    if "channel" in detections.columns and len(detections):
        first = detections.groupby("file")["channel"].transform("min")
        detections = detections[detections["channel"] == first]
    names = {name_key(str(n)): n for n in calls["recording"].unique()}
    longest = max((len(k) for k in names), default=0)

    def name_of(path: str) -> str:
        parts = _without_extension(path)
        for k in range(min(longest, len(parts)), 0, -1):
            if parts[-k:] in names:
                return names[parts[-k:]]
        return path

    detections["recording"] = detections["file"].astype(str).map({p: name_of(p) for p in detections["file"].unique()})
    return calls, detections
