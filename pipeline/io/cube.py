"""The spectrogram cube: the model-ready spectrograms of an archive in one zarr store.

Layout of a cube (an xarray Dataset, zarr format 3)::

    spectrogram   (time, frequency)  float16   model-ready columns of every recording, end to end
    recording_id  (time)             int32     coordinate: which recording a column belongs to
    offset        (time)             float64   coordinate: start of the column in its recording (s, real time)
    frequency     (frequency)        float64   nominal centre frequency of each row (Hz)
    path, channel, file_index, start, n_columns, duration, real_rate, status     (recording)
    file_path, file_size, file_mtime, file_sample_rate, file_frames, file_duration,
    file_channels, file_time_expansion, file_timestamp, file_recorder, file_subtype,
    file_status, file_reason, file_note                                          (file)

A *file* is a WAV of the archive (the manifest, one row per file, rejected ones included);
a *recording* is what the models see: one channel of a file, or its mix, by the channel
policy. Recording ``r`` occupies columns ``start[r] : start[r] + n_columns[r]``.

The attributes hold the spectrogram settings, their fingerprint, the ingest settings, the
package version, a digest of the source manifest, and ``complete`` once every chunk is
written. A chunk of ``time`` is the unit of work: it is written by one task only (region
writes never overlap) and, once written, recorded by an atomically renamed marker in the
journal folder ``_journal/`` inside the store, which zarr ignores.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from pipeline._version import __version__
from pipeline.config import MIX_CHANNEL, IngestSettings, SpectrogramSettings
from pipeline.files import atomic_path, write_json
from pipeline.io.audio import channel_units

CUBE_FORMAT = 1
JOURNAL = "_journal"

FILE_VARIABLES = (
    "path", "size", "mtime", "sample_rate", "frames", "duration", "channels", "time_expansion",
    "timestamp", "recorder", "subtype", "status", "reason", "note",
)  # fmt: skip


class CubeError(ValueError):
    """A cube that cannot be used as asked; the message is one line for the user."""


# --- layout: where every recording goes ------------------------------------------------


@dataclass(frozen=True)
class Piece:
    """Columns ``[first, stop)`` of one recording, placed at cube column ``cube_start``."""

    recording: int
    path: str
    channel: int
    n_samples: int
    real_rate: float
    n_columns: int
    first: int
    stop: int
    cube_start: int

    @property
    def whole(self) -> bool:
        return self.first == 0 and self.stop == self.n_columns


@dataclass(frozen=True)
class Layout:
    """Where each recording's columns lie in the cube (a pure function of the manifest)."""

    recordings: pd.DataFrame  # path, channel, file_index, start, n_columns, n_samples, duration, real_rate
    chunk_columns: int

    @property
    def n_time(self) -> int:
        return int(self.recordings["n_columns"].sum())

    @property
    def n_chunks(self) -> int:
        return -(-self.n_time // self.chunk_columns)

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_columns
        return start, min(start + self.chunk_columns, self.n_time)

    def pieces(self, chunk: int) -> list[Piece]:
        """The recording pieces that fill one chunk, in column order."""
        lo, hi = self.chunk_bounds(chunk)
        recs = self.recordings
        starts = recs["start"].to_numpy()
        ends = starts + recs["n_columns"].to_numpy()
        first = int(np.searchsorted(ends, lo, side="right"))
        out = []
        for r in range(first, len(recs)):
            if starts[r] >= hi:
                break
            if ends[r] > starts[r]:
                out.append(self.piece(r, max(lo, starts[r]) - starts[r], min(hi, ends[r]) - starts[r]))
        return out

    def piece(self, r: int, first: int = 0, stop: int | None = None) -> Piece:
        """Columns ``[first, stop)`` of recording ``r`` (all of them by default)."""
        row = self.recordings.iloc[r]
        n_columns = int(row["n_columns"])
        return Piece(
            recording=int(r),
            path=str(row["path"]),
            channel=int(row["channel"]),
            n_samples=int(row["n_samples"]),
            real_rate=float(row["real_rate"]),
            n_columns=n_columns,
            first=int(first),
            stop=n_columns if stop is None else int(stop),
            cube_start=int(row["start"] + first),
        )

    def chunks_of(self, r: int) -> range:
        """The chunks that recording ``r`` lies in."""
        start = int(self.recordings["start"].iat[r])
        last = start + max(int(self.recordings["n_columns"].iat[r]), 1) - 1
        return range(start // self.chunk_columns, last // self.chunk_columns + 1)

    def spanning_recordings(self) -> list[int]:
        """Recordings split across chunks: their denoising statistics are computed once, apart."""
        starts = self.recordings["start"].to_numpy()
        last = starts + self.recordings["n_columns"].to_numpy() - 1
        n = self.recordings["n_columns"].to_numpy() > 0
        split = (starts // self.chunk_columns) != (last // self.chunk_columns)
        return [int(r) for r in np.flatnonzero(split & n)]


def channel_code(selector: int | str) -> int:
    """Store a channel selector as an int: its index, or :data:`MIX_CHANNEL` for a mix."""
    return MIX_CHANNEL if selector == "mix" else int(selector)


def channel_selector(code: int) -> int | str:
    return "mix" if code == MIX_CHANNEL else int(code)


def plan_layout(
    manifest: pd.DataFrame,
    channel_policy: str,
    settings: SpectrogramSettings,
    chunk_columns: int,
) -> Layout:
    """Place the recordings of the usable files end to end, in manifest order.

    Parameters
    ----------
    manifest : the archive's manifest (rows with ``status == "ok"`` are used)
    channel_policy : ``"each"``, ``"first"`` or ``"mix"`` (see :func:`pipeline.io.audio.channel_units`)
    settings : spectrogram settings (how many columns each recording has)
    chunk_columns : columns per chunk
    """
    rows = []
    start = 0
    for index, file in enumerate(manifest.itertuples(index=False)):
        if file.status != "ok":
            continue
        real_rate = float(file.sample_rate) * float(file.time_expansion)
        n_samples = int(file.frames)
        n_columns = settings.n_columns(n_samples, real_rate)
        for selector in channel_units(int(file.channels), channel_policy):
            rows.append(
                dict(
                    path=file.path,
                    channel=channel_code(selector),
                    file_index=index,
                    start=start,
                    n_columns=n_columns,
                    n_samples=n_samples,
                    duration=float(file.duration),
                    real_rate=real_rate,
                )
            )
            start += n_columns
    columns = ["path", "channel", "file_index", "start", "n_columns", "n_samples", "duration", "real_rate"]
    recordings = pd.DataFrame(rows, columns=columns).astype(
        {"channel": "int32", "file_index": "int64", "start": "int64", "n_columns": "int64",
         "n_samples": "int64", "duration": "float64", "real_rate": "float64"}  # fmt: skip
    )
    return Layout(recordings=recordings, chunk_columns=chunk_columns)


def manifest_digest(manifest: pd.DataFrame) -> str:
    """A hash of what identifies the source files: path, size and modification time."""
    h = hashlib.sha256()
    for path, size, mtime in zip(manifest["path"], manifest["size"], manifest["mtime"]):
        h.update(f"{path}\0{int(size)}\0{float(mtime):.6f}\n".encode())
    return h.hexdigest()[:16]


# --- creating, writing and opening a store --------------------------------------------


def _strings(values) -> np.ndarray:
    """Object array of ``str`` (missing values become ``""``), as zarr stores text."""
    return np.array(["" if pd.isna(v) else str(v) for v in values], dtype=object)


def _skeleton(
    layout: Layout, manifest: pd.DataFrame, spectrogram: SpectrogramSettings, ingest: IngestSettings, run_id: str
) -> xr.Dataset:
    import dask.array as da

    n, chunk = layout.n_time, layout.chunk_columns
    recs = layout.recordings
    data = {
        "spectrogram": (
            ("time", "frequency"),
            da.full((n, spectrogram.n_rows), np.nan, dtype=np.float16, chunks=(chunk, spectrogram.n_rows)),
            {"long_name": "model-ready spectrogram (denoised log power, smoothed, zoomed)", "units": "1"},
        ),
        "path": ("recording", _strings(recs["path"]), {"long_name": "source file of the recording"}),
        "channel": ("recording", recs["channel"].to_numpy(), {"long_name": "channel of the file (-1: mean of all)"}),
        "file_index": ("recording", recs["file_index"].to_numpy(), {"long_name": "row of the file in the manifest"}),
        "start": ("recording", recs["start"].to_numpy(), {"long_name": "first column of the recording"}),
        "n_columns": ("recording", recs["n_columns"].to_numpy(), {"long_name": "columns of the recording"}),
        "duration": ("recording", recs["duration"].to_numpy(), {"long_name": "duration", "units": "s"}),
        "real_rate": ("recording", recs["real_rate"].to_numpy(), {"long_name": "real-time sample rate", "units": "Hz"}),
        "status": ("recording", _strings(["pending"] * len(recs)), {"long_name": "'ok' or why it failed"}),
    }
    for name in FILE_VARIABLES:
        values = manifest[name]
        values = values.to_numpy() if pd.api.types.is_numeric_dtype(values) else _strings(values)
        data[f"file_{name}"] = ("file", values)
    coords = {
        "frequency": ("frequency", np.asarray(spectrogram.frequencies()), {"units": "Hz", "long_name": "frequency"}),
        "recording_id": (
            "time",
            da.full(n, -1, dtype=np.int32, chunks=chunk),
            {"long_name": "index of the recording (dimension 'recording') of each column"},
        ),
        "offset": (
            "time",
            da.full(n, np.nan, dtype=np.float64, chunks=chunk),
            {"long_name": "start of the column in its recording", "units": "s"},
        ),
    }
    attrs = {
        "title": "batml spectrogram cube",
        "batml_version": __version__,
        "cube_format": CUBE_FORMAT,
        "fingerprint": spectrogram.fingerprint(),
        "spectrogram_settings": json.dumps(spectrogram.to_dict(), sort_keys=True),
        "ingest_settings": json.dumps(ingest.result_dict(), sort_keys=True),
        "manifest_digest": manifest_digest(manifest),
        "n_files": int(len(manifest)),
        "n_recordings": int(len(recs)),
        "chunk_columns": int(chunk),
        "column_step": "zoom * hop / real_rate seconds; see offset",
        "run_id": run_id,
        "complete": 0,
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)


def _encoding(ds: xr.Dataset) -> dict:
    from zarr.codecs import BloscCodec, BloscShuffle

    spectrogram = {"compressors": [BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.bitshuffle)]}
    return {"spectrogram": spectrogram}


def create_cube(
    path: str | os.PathLike,
    layout: Layout,
    manifest: pd.DataFrame,
    spectrogram: SpectrogramSettings,
    ingest: IngestSettings,
) -> None:
    """Create an empty cube (metadata and tables; no spectrogram yet) at ``path``.

    The store is built under a temporary name beside ``path`` and renamed, so a cube that
    exists is never half created.
    """
    ds = _skeleton(layout, manifest, spectrogram, ingest, run_id=uuid.uuid4().hex)
    with atomic_path(path) as tmp:
        ds.to_zarr(tmp, mode="w-", compute=False, zarr_format=3, consolidated=False, encoding=_encoding(ds))
        consolidate(tmp)
        (tmp / JOURNAL).mkdir()


def open_store(path: str | os.PathLike) -> zarr.Group:
    """The cube's zarr group, for writing (raises :class:`CubeError` if it is not a cube)."""
    try:
        group = zarr.open_group(str(path), mode="r+")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError) as exc:
        raise CubeError(f"{path}: not a batml cube ({exc})") from None
    if group.attrs.get("title") != "batml spectrogram cube":
        raise CubeError(f"{path}: not a batml cube (no batml attributes)")
    return group


def write_chunk(group: zarr.Group, start: int, spectrogram: np.ndarray, recording_id: np.ndarray, offset: np.ndarray):
    """Write one chunk's columns (``start`` must be chunk aligned)."""
    stop = start + len(spectrogram)
    group["spectrogram"][start:stop] = spectrogram.astype(np.float16)
    group["recording_id"][start:stop] = recording_id
    group["offset"][start:stop] = offset


def _marker(path: Path, chunk: int) -> Path:
    return path / JOURNAL / f"chunk-{chunk:08d}.json"


def mark_chunk_done(path: str | os.PathLike, chunk: int, failures: dict[int, str]) -> None:
    """Record in the journal that a chunk is written, with its failed recordings (atomic)."""
    write_json(_marker(Path(path), chunk), {"chunk": chunk, "failures": failures}, indent=None)


def finished_chunks(path: str | os.PathLike) -> dict[int, dict[int, str]]:
    """Chunks recorded as written in the journal, each with its failed recordings."""
    journal = Path(path) / JOURNAL
    done = {}
    for marker in sorted(journal.glob("chunk-*.json")):
        record = json.loads(marker.read_text())
        done[int(record["chunk"])] = {int(k): v for k, v in record["failures"].items()}
    return done


def finalize_cube(path: str | os.PathLike, failures: dict[int, str]) -> None:
    """Record the recordings that failed (and their files), mark the cube complete.

    ``failures`` maps recording index to reason; every other recording is ``"ok"``. A file
    with a failed recording gets status ``"failed"`` and that reason in the manifest.
    """
    group = open_store(path)
    n = group["status"].shape[0]
    group["status"][:] = np.array([failures.get(r, "ok") for r in range(n)], dtype=object)
    if failures:
        file_index = group["file_index"][:]
        file_status, file_reason = group["file_status"][:], group["file_reason"][:]
        for r, reason in failures.items():
            file_status[file_index[r]], file_reason[file_index[r]] = "failed", reason
        group["file_status"][:], group["file_reason"][:] = file_status, file_reason
    group.attrs["complete"] = 1
    consolidate(path)


def consolidate(path: str | os.PathLike) -> None:
    """Consolidate the store's metadata (the journal folder is not zarr's business)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not recognized as a component", category=UserWarning)
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(str(path))


# --- reading -----------------------------------------------------------------------------


def open_cube(path: str | os.PathLike) -> xr.Dataset:
    """Open a cube lazily (nothing is read but metadata).

    Examples
    --------
    >>> cube = open_cube("night.zarr")                       # doctest: +SKIP
    >>> one = cube.batml.recording("site01/20260612_213015.wav")  # doctest: +SKIP
    """
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise CubeError(f"{path}: not a zarr store (no zarr.json)")
    ds = xr.open_zarr(path, consolidated=True)
    if ds.attrs.get("title") != "batml spectrogram cube":
        raise CubeError(f"{path}: not a batml cube")
    return ds


@xr.register_dataset_accessor("batml")
class CubeAccessor:
    """Selections on a cube by the domain's names: ``cube.batml.recording(...)``."""

    def __init__(self, ds: xr.Dataset):
        self._ds = ds

    @property
    def recordings(self) -> pd.DataFrame:
        """The recording table (one row per recording; loads only the small table)."""
        names = ["path", "channel", "file_index", "start", "n_columns", "duration", "real_rate", "status"]
        return pd.DataFrame({n: self._ds[n].values for n in names})

    @property
    def manifest(self) -> pd.DataFrame:
        """The source archive's manifest, one row per file (rejected files included)."""
        return pd.DataFrame({n: self._ds[f"file_{n}"].values for n in FILE_VARIABLES})

    def recording_index(self, key: int | str, channel: int | None = None) -> int:
        if isinstance(key, (int, np.integer)):
            if not 0 <= key < self._ds.sizes["recording"]:
                raise KeyError(f"no recording {key}; the cube has {self._ds.sizes['recording']}")
            return int(key)
        key, tail = str(key), "/" + str(key).lstrip("/")
        matches = np.flatnonzero([p == key or p.endswith(tail) for p in self._ds["path"].values])
        if channel is not None:
            matches = matches[self._ds["channel"].values[matches] == channel]
        if len(matches) == 0:
            raise KeyError(f"no recording {key!r} in the cube")
        if len(matches) > 1:
            raise KeyError(f"{key!r} names {len(matches)} recordings; give channel= or the full path")
        return int(matches[0])

    def recording(self, key: int | str, channel: int | None = None) -> xr.Dataset:
        """The columns of one recording (lazy), with ``offset`` as its time axis.

        ``key`` is the recording's index, its path, or the end of its path
        (``"site01/x.wav"``); ``channel`` picks one channel of a multichannel file.
        """
        r = self.recording_index(key, channel)
        start = int(self._ds["start"].values[r])
        n = int(self._ds["n_columns"].values[r])
        cols = self._ds[["spectrogram"]].isel(time=slice(start, start + n))
        return cols.assign_attrs(recording=str(self._ds["path"].values[r]), channel=int(self._ds["channel"].values[r]))

    def time_range(self, key: int | str, begin: float, end: float, channel: int | None = None) -> xr.Dataset:
        """The columns of one recording whose start lies in ``[begin, end)`` seconds."""
        one = self.recording(key, channel)
        offset = one["offset"].values
        lo, hi = np.searchsorted(offset, [begin, end])
        return one.isel(time=slice(int(lo), int(hi)))
