"""Detect the bat calls of a whole archive with Dask: ``batml detect AUDIO_DIR|CUBE --out OUT``.

Steps, each one line in :func:`detect_archive`:

1. load the model bundle (the bundled default model when none is given);
2. build or resume the spectrogram cube, with the model's spectrogram settings
   (:func:`pipeline.ingestion.ingest`), or open the cube given;
3. open or start the run's journal in ``OUT/_journal/run.json``: everything that changes
   the detections (model, cube, thresholds, fast-path settings); a run started with other
   ones is refused, never mixed;
4. register the model on every worker (:class:`ModelPlugin`: loaded once per worker process,
   never shipped in tasks), then detect every unfinished chunk of the cube (one task per
   chunk, a bounded number in flight); each task writes its chunk's events as one part of
   ``OUT/detections.parquet/``, atomically: a part that exists is a finished chunk;
5. write the derived outputs from the parts (the reference system's CSV, Raven selection tables) and the
   run report.

Running the same command again resumes: only the chunks without a part are detected, and
the outputs are those of an uninterrupted run. The detection of one chunk reads its columns
plus a halo on each side (:func:`pipeline.detection.recording.detect_block`), so a call on a chunk
border is found once, by the chunk that owns its column.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from distributed.diagnostics.plugin import WorkerPlugin

from pipeline.config import WINDOW_COLUMNS, Settings
from pipeline.detection.recording import default_halo_columns, detect_block
from pipeline.detection.schema import events_table
from pipeline.detection.scoring import Scan
from pipeline.detection.settings import DetectError, DetectSettings, resolve_thresholds
from pipeline.distributed import connect, run_chunks
from pipeline.files import write_json
from pipeline.io import cube as cube_io
from pipeline.model.bundle import DEFAULT_BUNDLE as DEFAULT_MODEL
from pipeline.outputs.folder import parts_directory, remove_stale_temporaries
from pipeline.outputs.parts import finished_parts, iter_parts, write_part
from pipeline.outputs.raven import write_raven
from pipeline.outputs.reference_csv import write_reference_csv
from pipeline.outputs.report import calls_per_class, report_text, write_report

#: The run's journal folder inside OUT_DIR.
JOURNAL = "_journal"

#: ``cluster`` value (``batml detect``'s default) that runs small inputs in this process and the
#: others on a local cluster (:func:`choose_cluster`).
AUTO_CLUSTER = "auto"

#: Files whose headers :func:`choose_cluster` reads at most before deciding on a cluster.
SMALL_INPUT_FILES = 200


@dataclass
class DetectReport:
    """What a detection run did; ``ok`` is False when some file could not be used."""

    out: Path
    model: dict = field(default_factory=dict)
    cube: str = ""
    settings_fingerprint: str = ""
    n_files: int = 0
    n_recordings: int = 0
    audio_seconds: float = 0.0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    errors: list[str] = field(default_factory=list)  # chunks not detected this run
    n_chunks: int = 0
    chunks_detected: int = 0
    chunks_skipped: int = 0
    n_detections: int = 0
    calls_per_class: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    cluster: str | None = None

    @property
    def ok(self) -> bool:
        return not (self.failed or self.errors)

    @property
    def complete(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        """The report as :func:`pipeline.outputs.report.write_report` writes it."""
        return {
            "out": str(self.out),
            "complete": self.complete,
            "cube": self.cube,
            "model": self.model,
            "settings_fingerprint": self.settings_fingerprint,
            "files_processed": self.n_files - len({f for f, _ in self.failed}),
            "n_files": self.n_files,
            "n_recordings": self.n_recordings,
            "audio_seconds": self.audio_seconds,
            "files_failed": [{"file": f, "reason": r} for f, r in self.failed],
            "errors": list(self.errors),
            "chunks": {"total": self.n_chunks, "detected_now": self.chunks_detected, "already_done": self.chunks_skipped},
            "n_detections": self.n_detections,
            "calls_per_class": self.calls_per_class,
            "outputs": self.outputs,
            "timings": self.timings,
            **({"cluster": self.cluster} if self.cluster else {}),
        }

    def summary(self) -> str:
        return report_text(self.to_dict())


# --- the model on the workers ----------------------------------------------------------------


PLUGIN_NAME = "batml-model"


class ModelPlugin(WorkerPlugin):
    """A Dask worker plugin that loads the model once per worker process.

    Only the bundle's path, the detection's settings and the description of the network's ONNX
    graphs (:class:`pipeline.model.inference.RuntimeGraphs`: paths and checksums) travel to the
    workers; each loads and checks the bundle in ``setup`` and builds its scorer
    (:func:`pipeline.detection.scorers.model_scorer`): the network on ONNX Runtime with one
    thread per worker thread, without importing TensorFlow, or, for models without graphs (and
    ``engine="keras"``), in Keras with TensorFlow's thread pools sized to the worker's threads.
    Tasks find the scorer with :func:`worker_model`.
    """

    name = PLUGIN_NAME

    def __init__(self, model_path: str, expect_fingerprint: str, settings: DetectSettings, graphs=None):
        self.model_path = str(model_path)
        self.expect_fingerprint = expect_fingerprint
        self.settings = settings
        self.graphs = graphs
        self.bundle = None
        self.scorer = None

    def setup(self, worker=None):
        from pipeline.detection.scorers import model_scorer
        from pipeline.model.bundle import load_bundle

        threads = getattr(getattr(worker, "state", None), "nthreads", None) or 1
        if self.graphs is None or self.settings.engine == "keras":
            _set_tensorflow_threads(threads)
        self.bundle = load_bundle(self.model_path, expect_fingerprint=self.expect_fingerprint)
        self.scorer = model_scorer(
            self.bundle, graphs=self.graphs, booster_gate=self.settings.booster_gate,
            booster_margin=self.settings.booster_margin, engine=self.settings.engine, threads=threads,
        )  # fmt: skip

    def teardown(self, worker=None):
        self.bundle = self.scorer = None


def _set_tensorflow_threads(threads: int) -> None:
    """TensorFlow's pools sized to the worker (only possible before TensorFlow's first op)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised in this process: keep its pools
        pass


def worker_model() -> ModelPlugin:
    """The model plugin of the worker running the current task."""
    from distributed import get_worker

    return get_worker().plugins[PLUGIN_NAME]


# --- one chunk (runs on a worker) ------------------------------------------------------------


_ARRAYS: dict = {}


def _cube_arrays(cube_path: str):
    """The cube's spectrogram and offset arrays, opened once per worker process."""
    if cube_path not in _ARRAYS:
        import zarr

        _ARRAYS.clear()
        _ARRAYS[cube_path] = (
            zarr.open_array(f"{cube_path}/spectrogram", mode="r"),
            zarr.open_array(f"{cube_path}/offset", mode="r"),
        )
    return _ARRAYS[cube_path]


@dataclass(frozen=True)
class Piece:
    """The columns of one recording that a chunk owns (recording columns ``[first, stop)``)."""

    recording: int
    path: str
    channel: int
    cube_start: int  # cube column of the recording's column 0
    n_columns: int
    first: int
    stop: int


def chunk_pieces(recordings: pd.DataFrame, start: int, stop: int, usable: np.ndarray) -> list[Piece]:
    """The usable recordings' columns within the cube columns ``[start, stop)``."""
    begins = recordings["start"].to_numpy()
    ends = begins + recordings["n_columns"].to_numpy()
    inside = np.flatnonzero((begins < stop) & (ends > start) & usable)
    return [
        Piece(
            recording=int(r),
            path=str(recordings["path"].iat[r]),
            channel=int(recordings["channel"].iat[r]),
            cube_start=int(begins[r]),
            n_columns=int(recordings["n_columns"].iat[r]),
            first=int(max(start, begins[r]) - begins[r]),
            stop=int(min(stop, ends[r]) - begins[r]),
        )
        for r in inside
    ]


def detect_chunk(
    cube_path: str, out_dir: str, chunk: int, pieces: list[Piece], thresholds: dict, scan: Scan
) -> int:
    """Detect the calls of one cube chunk and write them as its part; the number of events."""
    model = worker_model()
    spectrogram, offset = _cube_arrays(cube_path)
    classes = model.bundle.classes
    halo = default_halo_columns(scan=scan, extra=getattr(model.scorer, "extra_reach", 0))
    tables = []
    if pieces:
        # One read of the chunk and its halo serves every recording in it.
        n_time = spectrogram.shape[0]
        lo = max(min(p.cube_start + p.first for p in pieces) - halo, 0)
        hi = min(max(p.cube_start + p.stop for p in pieces) + halo + WINDOW_COLUMNS - 1, n_time)
        block = np.asarray(spectrogram[lo:hi], dtype=np.float32)
        times = np.asarray(offset[lo:hi])
    for p in pieces:
        a = max(p.first - halo, 0)
        b = min(p.stop + halo + WINDOW_COLUMNS - 1, p.n_columns)
        columns = slice(p.cube_start + a - lo, p.cube_start + b - lo)
        events = detect_block(
            model.scorer, block[columns], a, p.n_columns, times[columns], (p.first, p.stop), classes, thresholds,
            scan=scan, halo_columns=halo, calibration=model.bundle.calibration,
        )  # fmt: skip
        tables.append(events_table(p.path, p.channel, events, classes))
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    write_part(out_dir, chunk, table, classes=classes)
    return len(table)


# --- the driver --------------------------------------------------------------------------------


def choose_cluster(source, ingest_settings: Settings | None = None, n_workers: int | None = None) -> str:
    """Where ``cluster="auto"`` runs a detection: ``"in-process"`` for an input of at most one
    cube chunk (about 76 s of audio), else ``"local"``.

    One chunk is one Dask task for ingest and for detection, so worker processes would only add
    their start-up (importing the libraries, loading the model: a few CPU-seconds each) to a
    job that one thread does as fast. The audio is measured from the headers of at most
    :data:`SMALL_INPUT_FILES` local files, stopping as soon as it exceeds one chunk; an fsspec
    URL, an unreadable input or ``n_workers`` asked for gives ``"local"``.
    """
    from pipeline.distributed import IN_PROCESS

    if n_workers:
        return "local"
    settings = ingest_settings or Settings()
    spec = settings.spectrogram
    limit_s = settings.ingest.chunk_columns * spec.zoom * spec.window_s * (1.0 - spec.overlap)
    try:
        if is_cube(source):
            cube = cube_io.open_cube(source)
            return IN_PROCESS if int(cube.sizes["time"]) <= int(cube.attrs["chunk_columns"]) else "local"
        if "://" in str(source):  # an fsspec URL: not measured here
            return "local"
        seconds = _audio_seconds_within(Path(source), limit_s, settings)
    except (OSError, ValueError, KeyError):
        return "local"
    return IN_PROCESS if seconds is not None else "local"


def _audio_seconds_within(root: Path, limit_s: float, settings: Settings) -> float | None:
    """Seconds of audio (every channel counted) under a local folder or file, or None when they
    exceed ``limit_s`` or the files :data:`SMALL_INPUT_FILES`."""
    from pipeline.io.archive import AUDIO_SUFFIXES
    from pipeline.io.audio import RecordingError, read_info

    if not root.exists():
        return None
    if root.is_file():
        files = iter([root])
    else:
        files = (
            Path(folder) / name
            for folder, dirs, names in os.walk(root)
            for name in sorted(names)
            if not name.startswith(".") and name.lower().endswith(AUDIO_SUFFIXES)
            and not any(part.startswith(".") for part in Path(folder).relative_to(root).parts)
        )  # fmt: skip
    total = 0.0
    channels = settings.ingest.channels
    for count, path in enumerate(files):
        if count >= SMALL_INPUT_FILES:
            return None
        try:
            info = read_info(path, time_expansion=settings.ingest.time_expansion)
        except RecordingError:
            continue  # rejected by ingest too: no columns
        total += info.duration * (info.channels if channels == "each" else 1)
        if total > limit_s:
            return None
    return total


def model_identity(model_path: Path) -> str:
    """A hash of the bundle's manifest, which lists the checksum of every model file."""
    return hashlib.sha256((Path(model_path) / "manifest.json").read_bytes()).hexdigest()[:16]


def is_cube(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a batml cube (rather than a folder of recordings)."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        return False
    try:
        return json.loads((path / "zarr.json").read_text()).get("attributes", {}).get("title") == "batml spectrogram cube"
    except (OSError, ValueError):
        return False


def _run_record(bundle, model_path: Path, cube, thresholds: dict, settings: DetectSettings) -> dict:
    return {
        "format": "batml-detect-run",
        "model": model_identity(model_path),
        "classes": list(bundle.classes),
        "cube_fingerprint": cube.attrs.get("fingerprint"),
        "cube_run_id": cube.attrs.get("run_id"),
        "thresholds": thresholds,
        "settings": settings.result_dict(),
    }


def _open_journal(out: Path, record: dict) -> None:
    """Start the run's journal, or check that the one there is the same run."""
    journal = out / JOURNAL / "run.json"
    if journal.is_file():
        try:
            before = json.loads(journal.read_text())
        except ValueError:
            raise DetectError(f"{journal}: unreadable journal; delete {out} to start again") from None
        changed = sorted(k for k in record if before.get(k) != record[k])
        if changed:
            raise DetectError(
                f"{out}: holds a run with another {', '.join(changed)}; use another --out or delete it"
            )
        return
    if out.exists() and any(out.iterdir()):
        parts = parts_directory(out)
        if parts.exists():
            raise DetectError(f"{out}: holds detections without a journal; use another --out or delete it")
    write_json(journal, record, sort_keys=True)


def detect_archive(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    cube: str | os.PathLike | None = None,
    settings: DetectSettings | None = None,
    ingest_settings: Settings | None = None,
    cluster: str | None = None,
    client=None,
    n_workers: int | None = None,
    progress: bool = True,
) -> DetectReport:
    """Detect every bat call of an archive (or of a cube) and write the outputs to ``out``.

    Parameters
    ----------
    source : a folder of recordings (searched recursively), an fsspec URL, or a batml cube
    out : output folder (created; the same folder resumes the same run)
    model : a model bundle (default: the bundled default model, :data:`DEFAULT_MODEL`)
    cube : where to build the cube of ``source`` recordings (default ``OUT/cube.zarr``)
    settings : thresholds, fast path and formats (:class:`DetectSettings`)
    ingest_settings : channel policy and time expansion for building the cube; its
        spectrogram settings are replaced by the model's
    cluster, client, n_workers : where to run (see :func:`pipeline.distributed.connect`);
        ``cluster="auto"`` (``batml detect``'s default): in this process for an input of at most
        one cube chunk, else a local cluster (:func:`choose_cluster`)
    progress : show progress bars and the dashboard address

    Returns
    -------
    DetectReport
    """
    from pipeline.ingestion import ingest
    from pipeline.model.bundle import load_bundle
    from pipeline.model.inference import runtime_graphs

    settings = settings or DetectSettings()
    out = Path(out)
    model_path = Path(model) if model is not None else DEFAULT_MODEL
    t0 = time.perf_counter()
    report = DetectReport(out=out)
    bundle = load_bundle(model_path)
    thresholds = resolve_thresholds(bundle, settings.thresholds)
    graphs = runtime_graphs(bundle, settings.precision) if settings.engine == "onnxruntime" else None
    report.model = {
        "path": str(model_path),
        "architecture": bundle.architecture,
        "fingerprint": model_identity(model_path),
        "classes": list(bundle.classes),
        "thresholds": thresholds,
        **({"licence": bundle.licence} if bundle.licence else {}),
        "runtime": graphs.describe() if graphs is not None else {"engine": "keras"},
    }
    if client is None and cluster == AUTO_CLUSTER:
        cluster = choose_cluster(source, ingest_settings, n_workers)
    report.cluster = cluster if client is None else "the running client"
    with connect(cluster, client=client, n_workers=n_workers, quiet=not progress) as client:
        if is_cube(source):
            cube_path = Path(source)
        else:
            cube_path = Path(cube) if cube is not None else out / "cube.zarr"
            base = ingest_settings or Settings()
            cube_path.parent.mkdir(parents=True, exist_ok=True)
            ingested = ingest(
                source, cube_path, settings=type(base)(spectrogram=bundle.spectrogram, ingest=base.ingest),
                client=client, progress=progress,
            )  # fmt: skip
            report.timings["ingest"] = ingested.seconds
            if not ingested.complete:
                report.errors = [f"cube: {e}" for e in ingested.errors]
                report.seconds = time.perf_counter() - t0
                return report
        ds = cube_io.open_cube(cube_path)
        if ds.attrs.get("fingerprint") != bundle.fingerprint:
            raise DetectError(
                f"{cube_path}: built with spectrogram settings {ds.attrs.get('fingerprint')}, the model "
                f"{model_path} expects {bundle.fingerprint}; give the recordings instead of the cube"
            )
        if not int(ds.attrs.get("complete", 0)):
            raise DetectError(f"{cube_path}: an unfinished cube; run 'batml ingest' on it again first")
        report.cube = str(cube_path)
        report.settings_fingerprint = str(ds.attrs.get("fingerprint"))
        _open_journal(out, _run_record(bundle, model_path, ds, thresholds, settings))
        remove_stale_temporaries(out)

        recordings = ds.batml.recordings
        manifest = ds.batml.manifest
        usable = (recordings["status"] == "ok").to_numpy()
        report.n_files, report.n_recordings = len(manifest), len(recordings)
        report.audio_seconds = float(recordings["duration"][usable].sum())
        report.failed = [(p, r) for p, s, r in zip(manifest["path"], manifest["status"], manifest["reason"]) if s != "ok"]
        report.failed += [(p, s) for p, s in zip(recordings["path"][~usable], recordings["status"][~usable])]

        chunk_columns = int(ds.attrs["chunk_columns"])
        n_time = int(ds.sizes["time"])
        n_chunks = -(-n_time // chunk_columns)
        done = finished_parts(out)
        todo = [k for k in range(n_chunks) if k not in done]
        report.n_chunks, report.chunks_skipped = n_chunks, n_chunks - len(todo)
        t1 = time.perf_counter()
        if todo:
            client.register_plugin(
                ModelPlugin(str(model_path.resolve()), bundle.fingerprint, settings, graphs), name=PLUGIN_NAME
            )
            report.errors = _run_chunks(
                client, str(cube_path.resolve()), str(out.resolve()), recordings, usable, chunk_columns, n_time, todo,
                thresholds, settings.scan, progress,
            )  # fmt: skip
        report.chunks_detected = len(todo) - len(report.errors)
        report.timings["detect"] = time.perf_counter() - t1
    if report.complete:
        t2 = time.perf_counter()
        _write_outputs(report, out, bundle, thresholds, settings, recordings[usable])
        report.timings["outputs"] = time.perf_counter() - t2
    report.timings["total"] = time.perf_counter() - t0
    write_report(out, report.to_dict())
    return report


def _write_outputs(report: DetectReport, out: Path, bundle, thresholds, settings: DetectSettings, recordings) -> None:
    spec = bundle.spectrogram
    report.outputs["parquet"] = str(parts_directory(out))
    if "csv" in settings.formats:
        report.outputs["csv"] = str(write_reference_csv(out, bundle.classes, thresholds))
    if "raven" in settings.formats:
        frequencies = np.asarray(spec.frequencies())
        tables = write_raven(
            out, bundle.classes, thresholds, window_seconds=window_seconds(spec),
            low_hz=float(frequencies.min()), high_hz=float(frequencies.max()),
            per_recording=settings.raven_per_recording, recordings=recordings[["path", "channel"]],
        )  # fmt: skip
        report.outputs["raven"] = str(tables[0].parent) if settings.raven_per_recording and tables else (
            str(tables[0]) if tables else ""
        )
    report.calls_per_class = calls_per_class(out, bundle.classes, thresholds)
    report.n_detections = int(sum(len(part) for _, part in iter_parts(out, columns=["time"])))


def window_seconds(spec) -> float:
    """Real time spanned by one model window (20 columns: 40 frames, about 23 ms)."""
    return WINDOW_COLUMNS * spec.zoom * spec.window_s * (1.0 - spec.overlap)


def _run_chunks(client, cube_path, out_dir, recordings, usable, chunk_columns, n_time, todo, thresholds, scan, progress):
    """Detect the chunks ``todo``, a bounded number at a time; their errors."""

    def submit(chunk: int):
        start, stop = chunk * chunk_columns, min((chunk + 1) * chunk_columns, n_time)
        pieces = chunk_pieces(recordings, start, stop, usable)
        return client.submit(detect_chunk, cube_path, out_dir, chunk, pieces, thresholds, scan, pure=False)

    return run_chunks(client, todo, submit, desc="detect", progress=progress)
