"""Build the spectrogram cube of an archive with Dask: ``batml ingest AUDIO_DIR --cube CUBE``.

Steps, each one line in :func:`ingest`:

1. discover the recordings and read their headers into a manifest (Dask, batches of files);
2. lay the usable recordings end to end in the cube and create the empty store;
3. compute the denoising statistics of recordings that span several chunks (one task each);
4. compute and write every chunk of columns (one task per chunk, a bounded number in flight);
5. record the recordings that failed, mark the cube complete, consolidate its metadata.

Running the same command again resumes: the cube's journal says which chunks are written,
and only the others are computed. A cube made from other settings or another set of files
is refused, never mixed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import spectrogram as sg
from pipeline.config import IngestSettings, Settings, SpectrogramSettings
from pipeline.distributed import connect, run_chunks
from pipeline.io import archive, audio
from pipeline.io import cube as cube_io

#: Columns computed at once for a long recording (about 10 s of audio; bounds a task's memory).
_COLUMNS_PER_BLOCK = 8192


@dataclass
class IngestReport:
    """What an ingest did; ``ok`` is False when some file or recording could not be used."""

    cube: Path
    n_files: int = 0
    n_recordings: int = 0
    audio_seconds: float = 0.0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    failed: list[tuple[str, int, str]] = field(default_factory=list)  # (file, channel, reason)
    errors: list[str] = field(default_factory=list)  # chunks that could not be written this run
    n_chunks: int = 0
    chunks_written: int = 0
    chunks_skipped: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.rejected or self.failed or self.errors)

    @property
    def complete(self) -> bool:
        return not self.errors

    def require_complete(self) -> "IngestReport":
        """This report, or :class:`~pipeline.io.cube.CubeError` when some chunks of the cube
        could not be written (for the jobs that cannot go on with an unfinished cube)."""
        if not self.complete:
            raise cube_io.CubeError(
                f"{self.cube}: {len(self.errors)} chunk(s) of the cube could not be written "
                f"({self.errors[0]}); run the same command again to finish it"
            )
        return self

    def summary(self) -> str:
        lines = [
            f"cube: {self.cube}",
            f"files: {self.n_files} ({len(self.rejected)} rejected), recordings: {self.n_recordings} "
            f"({len(self.failed)} failed), audio: {self.audio_seconds / 3600:.2f} h",
            f"chunks: {self.n_chunks} ({self.chunks_written} written now, {self.chunks_skipped} already done), "
            f"in {self.seconds:.1f} s",
        ]
        lines += [f"rejected: {path}: {reason}" for path, reason in self.rejected]
        lines += [
            f"failed: {path}{'' if channel < 0 else f' (channel {channel})'}: {reason}"
            for path, channel, reason in self.failed
        ]
        lines += [f"error: {e}" for e in self.errors]
        if self.errors:
            lines.append("some chunks were not written: run the same command again to finish the cube")
        return "\n".join(lines)


# --- the tasks (run on the workers; small arguments, no shared state) ---------------------


def _reader(piece: cube_io.Piece):
    selector = cube_io.channel_selector(piece.channel)
    return lambda start, stop: audio.read_samples(piece.path, start, stop, channel=selector)


def recording_statistics(piece: cube_io.Piece, settings: SpectrogramSettings) -> sg.DenoiseStatistics | str:
    """Denoising statistics of a whole recording, or the reason it cannot be read."""
    try:
        return sg.recording_statistics(_reader(piece), piece.n_samples, piece.real_rate, settings)
    except audio.RecordingError as exc:
        return exc.reason


def _piece_columns(piece: cube_io.Piece, settings: SpectrogramSettings, stats) -> np.ndarray:
    """The columns of one piece: in one pass for a short recording, else streamed in blocks."""
    read = _reader(piece)
    if piece.whole and piece.n_columns <= _COLUMNS_PER_BLOCK:
        return sg.spectrogram(read(0, piece.n_samples), piece.real_rate, settings)[: piece.n_columns]
    if stats is None:  # a long recording that fits in this chunk: its statistics first
        stats = sg.recording_statistics(read, piece.n_samples, piece.real_rate, settings)
    blocks = [
        sg.spectrogram_columns(
            read, piece.n_samples, piece.real_rate, settings, a, min(a + _COLUMNS_PER_BLOCK, piece.stop), stats
        )
        for a in range(piece.first, piece.stop, _COLUMNS_PER_BLOCK)
    ]
    return np.concatenate(blocks)


def ingest_chunk(
    cube_path: str,
    chunk: int,
    start: int,
    pieces: list[cube_io.Piece],
    statistics: dict[int, sg.DenoiseStatistics | str],
    settings: SpectrogramSettings,
) -> dict[int, str]:
    """Compute one chunk of the cube, write it, record it in the journal; its failures."""
    n = sum(p.stop - p.first for p in pieces)
    values = np.full((n, settings.n_rows), np.nan, dtype=np.float32)
    recording_id = np.empty(n, dtype=np.int32)
    offset = np.empty(n, dtype=np.float64)
    failures: dict[int, str] = {}
    for piece in pieces:
        a, b = piece.cube_start - start, piece.cube_start - start + piece.stop - piece.first
        recording_id[a:b] = piece.recording
        offset[a:b] = sg.column_times(piece.stop, piece.real_rate, settings)[piece.first :]
        stats = statistics.get(piece.recording)
        if isinstance(stats, str):
            failures[piece.recording] = stats
            continue
        try:
            values[a:b] = _piece_columns(piece, settings, stats)
        except audio.RecordingError as exc:
            failures[piece.recording] = exc.reason
    group = cube_io.open_store(cube_path)
    cube_io.write_chunk(group, start, values, recording_id, offset)
    cube_io.mark_chunk_done(cube_path, chunk, failures)
    return failures


# --- the driver ----------------------------------------------------------------------------


def _file_status(paths: list[str]) -> pd.DataFrame:
    """Size and modification time of each file now (-1 and NaN for a file that vanished)."""
    rows = []
    for p in paths:
        try:
            rows.append((p, *audio.file_status(p)))
        except audio.RecordingError:
            rows.append((p, -1, float("nan")))
    return pd.DataFrame(rows, columns=["path", "size", "mtime"])


def _check_resumable(path: Path, paths: list[str], spectrogram: SpectrogramSettings, ingest: IngestSettings):
    """The stored manifest and layout of an existing cube, if it can be resumed as asked."""
    existing = cube_io.open_cube(path)
    attrs = existing.attrs
    if attrs.get("fingerprint") != spectrogram.fingerprint():
        raise cube_io.CubeError(
            f"{path}: built with other spectrogram settings (fingerprint {attrs.get('fingerprint')}, "
            f"now {spectrogram.fingerprint()}); use another --cube or delete it"
        )
    if json.loads(attrs.get("ingest_settings", "{}")) != ingest.result_dict():
        raise cube_io.CubeError(
            f"{path}: built with {attrs.get('ingest_settings')}, now {ingest.result_dict()}; "
            "use another --cube or delete it"
        )
    manifest = existing.batml.manifest
    now = _file_status(paths)
    if manifest_changed(manifest, now):
        added = len(set(now["path"]) - set(manifest["path"]))
        gone = len(set(manifest["path"]) - set(now["path"]))
        both = manifest.merge(now, on="path", suffixes=("", "_now"))
        changed = int(((both["size"] != both["size_now"]) | ((both["mtime"] - both["mtime_now"]).abs() > 1e-3)).sum())
        raise cube_io.CubeError(
            f"{path}: the archive changed since this cube was started ({added} new, {gone} missing, "
            f"{changed} changed files); use another --cube for the new recordings or delete it"
        )
    recordings = existing.batml.recordings
    recordings["n_samples"] = manifest["frames"].to_numpy()[recordings["file_index"].to_numpy()]
    return manifest, cube_io.Layout(recordings=recordings, chunk_columns=int(attrs["chunk_columns"]))


def manifest_changed(stored: pd.DataFrame, now: pd.DataFrame) -> bool:
    """Whether the files on disk differ from those a cube was built from (path, size, mtime)."""
    if list(stored["path"]) != list(now["path"]):
        return True
    same_size = np.array_equal(stored["size"].to_numpy(np.int64), now["size"].to_numpy(np.int64))
    return not (same_size and np.allclose(stored["mtime"].to_numpy(float), now["mtime"].to_numpy(float), atol=1e-3))


def ingest(
    audio_dir: str | os.PathLike,
    cube: str | os.PathLike,
    *,
    settings: Settings | None = None,
    cluster: str | None = None,
    client=None,
    n_workers: int | None = None,
    progress: bool = True,
) -> IngestReport:
    """Build (or resume) the spectrogram cube of the recordings under ``audio_dir``.

    Parameters
    ----------
    audio_dir : folder (searched recursively), fsspec URL, or one WAV file
    cube : path of the zarr store to create or resume
    settings : spectrogram and ingest settings (the reference system's defaults when omitted)
    cluster : ``None`` (the running Dask client, else a local cluster), ``"local"``, ``"slurm"``
        or a scheduler address; ignored when ``client`` is given
    client : an existing :class:`distributed.Client` to run on
    n_workers : workers of a cluster started here
    progress : show progress bars

    Returns
    -------
    IngestReport
    """
    settings = settings or Settings()
    spec, ing = settings.spectrogram, settings.ingest
    cube = Path(cube)
    t0 = time.perf_counter()
    report = IngestReport(cube=cube)
    paths = archive.discover(str(audio_dir))
    with connect(cluster, client=client, n_workers=n_workers, quiet=not progress) as client:
        if cube.exists():
            manifest, layout = _check_resumable(cube, paths, spec, ing)
        else:
            manifest = archive.build_manifest(
                paths, time_expansion=ing.time_expansion, settings=spec, client=client, progress=progress
            )
            layout = cube_io.plan_layout(manifest, ing.channels, spec, ing.chunk_columns)
            cube_io.create_cube(cube, layout, manifest, spec, ing)
        report.n_files, report.n_recordings, report.n_chunks = len(manifest), len(layout.recordings), layout.n_chunks
        report.audio_seconds = float(layout.recordings["duration"].sum())
        report.rejected = [(p, r) for p, s, r in zip(manifest["path"], manifest["status"], manifest["reason"]) if s != "ok"]
        done = cube_io.finished_chunks(cube)
        todo = [k for k in range(layout.n_chunks) if k not in done]
        report.chunks_skipped = layout.n_chunks - len(todo)
        report.errors = _run_chunks(client, cube, layout, todo, spec, progress)
        report.chunks_written = len(todo) - len(report.errors)
        done = cube_io.finished_chunks(cube)
        failures = {r: reason for chunk_failures in done.values() for r, reason in chunk_failures.items()}
        recs = layout.recordings
        report.failed = [(recs["path"].iat[r], int(recs["channel"].iat[r]), reason) for r, reason in sorted(failures.items())]
        if len(done) == layout.n_chunks:
            cube_io.finalize_cube(cube, failures)
    report.seconds = time.perf_counter() - t0
    return report


def _run_chunks(client, cube: Path, layout: cube_io.Layout, todo: list[int], spec, progress: bool) -> list[str]:
    """Compute and write the chunks ``todo``, a bounded number at a time; their errors.

    The denoising statistics of a recording split across chunks are submitted with the
    first chunk that needs them and dropped here once its last chunk is submitted (the
    chunks' tasks hold them until they have run), so the scheduler holds a few tasks per
    worker thread, however many chunks the archive has.
    """
    statistics = {}

    def submit(chunk: int):
        start, _ = layout.chunk_bounds(chunk)
        pieces = layout.pieces(chunk)
        stats = {}
        for p in pieces:
            if p.whole:
                continue
            if p.recording not in statistics:
                statistics[p.recording] = client.submit(recording_statistics, layout.piece(p.recording), spec, pure=False)
            stats[p.recording] = statistics[p.recording]
            if p.stop == p.n_columns:  # its last chunk
                del statistics[p.recording]
        return client.submit(ingest_chunk, str(cube), chunk, start, pieces, stats, spec, pure=False)

    return run_chunks(client, todo, submit, desc="ingest", progress=progress)
