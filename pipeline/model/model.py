"""The model as the API: one object that says which calls are in whatever audio it is given.

::

    import pipeline
    model = pipeline.open_model()                         # the bundled model, or a bundle's path
    calls = model.detect("night/20260612_213015.wav")     # a WAV file
    calls = model.detect(["a.wav", "b.wav"])              # several, or a folder
    calls = model.detect(samples, rate=384_000)           # a numpy array of samples
    calls = model.detect(cube.batml.recording(0)["spectrogram"])   # a spectrogram (xarray)
    calls = model.detect("results/night/cube.zarr")       # a cube
    probs = model.predict(windows)                        # (b, 130, 20, 1) -> (b, K + 1)
    model.classes, model.thresholds, model.settings, model.manifest, model.calibration

:meth:`Model.detect` returns the table ``batml detect`` writes (the columns of
:func:`pipeline.detection.schema.event_schema`), computed as ``batml detect`` computes it (the
same spectrogram, stored as float16 as the cube stores it, the same fast path, smoothing,
NMS and thresholds), in memory, without writing a cube. An input longer than
``max_in_memory_s`` (a large folder, a long recording, a large cube) goes through
:func:`pipeline.detection.archive.detect_archive` on Dask instead, in a temporary folder, and
its table is returned the same way.

Recordings that cannot be used (not audio, too low a rate, ...) are left out with a
:class:`UserWarning` each, and listed in ``table.attrs["failed"]`` as ``(file, reason)``.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import WINDOW_COLUMNS, Settings
from pipeline.detection.schema import event_schema, events_table
from pipeline.detection.settings import DetectSettings, resolve_thresholds
from pipeline.model.bundle import DEFAULT_BUNDLE, ModelBundle, load_bundle

#: Seconds of audio above which :meth:`Model.detect` runs the archive job on Dask.
MAX_IN_MEMORY_S = 600.0

#: The ``file`` of the calls of an array or a spectrogram given without a name.
ARRAY_NAME = "array"


class Model:
    """A trained model bundle that detects calls and predicts windows.

    Parameters
    ----------
    bundle : ModelBundle
        A loaded, checked bundle (:func:`pipeline.model.bundle.load_bundle`).
    detect_settings : DetectSettings, optional
        Thresholds overrides and the fast path, as ``batml detect``'s options (default: its
        defaults).

    Attributes
    ----------
    bundle : ModelBundle
    path : Path
        The bundle's folder.
    architecture : str
        One of the six model names.
    classes : list of str
        The class names, in the order of the outputs after "not call".
    thresholds : dict of str to float
        ``"detection"`` (on the calibrated score) and one per class: the tuned ones with the
        overrides applied.
    calibration : ScoreCalibration
        The map of the raw call score to the reported ``score``
        (:mod:`pipeline.detection.calibration`; the identity for a bundle without one).
    settings : SpectrogramSettings
        The spectrogram settings the model was trained on (its input).
    manifest : dict
        The bundle's whole manifest (training summary, metrics, sources and licences).
    """

    def __init__(self, bundle: ModelBundle, detect_settings: DetectSettings | None = None):
        self.bundle = bundle
        self.detect_settings = detect_settings or DetectSettings()
        self.thresholds = resolve_thresholds(bundle, self.detect_settings.thresholds)
        self._predictors: dict[float, Any] = {}
        self._scorer = None
        self._graphs: Any = False  # not looked for yet

    path = property(lambda self: self.bundle.path)
    architecture = property(lambda self: self.bundle.architecture)
    classes = property(lambda self: list(self.bundle.classes))
    settings = property(lambda self: self.bundle.spectrogram)
    spectrogram = settings
    manifest = property(lambda self: self.bundle.manifest)
    fingerprint = property(lambda self: self.bundle.fingerprint)

    licence = property(lambda self: self.bundle.licence)
    calibration = property(lambda self: self.bundle.calibration)

    def __repr__(self) -> str:
        terms = f"; licence: {self.licence}" if self.licence else ""
        return f"<batml Model {self.architecture} at {self.path}: {', '.join(self.classes)}{terms}>"

    # --- windows -------------------------------------------------------------------------

    @property
    def runtime(self):
        """The network's ONNX graphs (:class:`~pipeline.model.inference.RuntimeGraphs`) at the
        detect settings' precision, or None when the model runs in Keras."""
        from pipeline.model.inference import runtime_graphs

        if self._graphs is False:
            engine = self.detect_settings.engine
            self._graphs = runtime_graphs(self.bundle, self.detect_settings.precision) if engine == "onnxruntime" else None
        return self._graphs

    def predictor(self, booster_gate: float | None = None):
        """The model as a function of windows ``(b, rows, 20, 1) -> (b, K + 1)`` (loaded once,
        kept): the network on ONNX Runtime (:class:`~pipeline.detection.scorers.WindowScorer`), a
        hybrid's boosters on the windows whose network call score reaches ``booster_gate``
        (default: the detect settings'; 0: every window); the Keras
        :class:`~pipeline.model.predictor.Predictor` for a model without graphs."""
        from pipeline.detection.scorers import model_scorer

        gate = float(self.detect_settings.booster_gate if booster_gate is None else booster_gate)
        if gate not in self._predictors:
            self._predictors[gate] = model_scorer(
                self.bundle, graphs=self.runtime, booster_gate=gate, booster_margin=None,
                engine=self.detect_settings.engine,
            )  # fmt: skip
        return self._predictors[gate]

    def scorer(self):
        """What :meth:`detect` scores with: :func:`pipeline.detection.scorers.model_scorer` with the
        detect settings (the scan, the boosters' policy), as ``batml detect``'s workers do."""
        from pipeline.detection.scorers import model_scorer

        if self._scorer is None:
            settings = self.detect_settings
            self._scorer = model_scorer(
                self.bundle, graphs=self.runtime, booster_gate=settings.booster_gate,
                booster_margin=settings.booster_margin, engine=settings.engine,
            )  # fmt: skip
        return self._scorer

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """Per-window probabilities: ``(b, rows, 20[, 1])`` -> ``(b, K + 1)`` float32.

        Column 0 is P(not call), column ``k`` the probability of ``classes[k - 1]``; every
        stage of the model runs on every window (no fast path), on the runtime as
        :meth:`predictor`.
        """
        windows = np.asarray(windows, dtype=np.float32)
        if windows.ndim == 3:
            windows = windows[..., None]
        expected = (self.settings.n_rows, WINDOW_COLUMNS, 1)
        if windows.ndim != 4 or windows.shape[1:] != expected:
            raise ValueError(f"windows of shape {windows.shape}; expected (b, {', '.join(map(str, expected))})")
        return self.predictor(booster_gate=0.0)(windows)

    # --- detection -----------------------------------------------------------------------

    def detect(
        self,
        source: Any,
        *,
        rate: float | None = None,
        name: str | None = None,
        channels: str = "each",
        time_expansion: float | None = None,
        max_in_memory_s: float = MAX_IN_MEMORY_S,
        cluster: str | None = None,
        client=None,
        progress: bool = False,
    ) -> pd.DataFrame:
        """The calls the model detects in ``source``, as ``batml detect``'s table.

        Parameters
        ----------
        source
            A WAV file (path or fsspec URL), a list of them, a folder (searched recursively),
            a batml cube (its path or the opened Dataset), a spectrogram (an xarray
            ``DataArray`` with dimensions ``time`` and ``frequency``, e.g.
            ``cube.batml.recording(0)["spectrogram"]``), or a numpy array of samples (1-D,
            or 2-D channels x samples) with ``rate``.
        rate : float
            Real-time sample rate (Hz) of an array (times the time expansion already).
        name : str
            The ``file`` of the calls of an array or a spectrogram (default ``"array"``).
        channels : ``"each"`` | ``"first"`` | ``"mix"``
            Multichannel recordings, as ``batml detect --channels``.
        time_expansion : float, optional
            Time-expansion factor of every file (default: GUANO's, else 1).
        max_in_memory_s : float
            Audio (s) above which the archive job runs on Dask in a temporary folder.
        cluster, client
            Where that job runs (default: the running Dask client, else a local cluster).
        progress : bool
            Progress bars.

        Returns
        -------
        pandas.DataFrame
            One row per detected call, the columns of
            :func:`~pipeline.detection.schema.event_schema`; ``attrs["failed"]`` lists the
            recordings left out with their reasons.
        """
        import xarray as xr

        from pipeline.detection.archive import is_cube

        if isinstance(source, np.ndarray):
            if rate is None:
                raise ValueError("an array of samples needs its sample rate: model.detect(samples, rate=...)")
            return self._finish(self._detect_samples(source, float(rate), name or ARRAY_NAME, channels), [])
        if isinstance(source, xr.DataArray):
            return self._finish(self._detect_spectrogram(source, name), [])
        if isinstance(source, xr.Dataset):
            return self._detect_cube(source)
        if isinstance(source, (str, os.PathLike)) and is_cube(source):
            from pipeline.io.cube import open_cube

            cube = open_cube(source)
            if float(cube["duration"].sum()) > max_in_memory_s:
                return self._detect_on_dask(source, None, cluster, client, progress)
            return self._detect_cube(cube)
        paths = self._recording_paths(source)
        return self._detect_files(paths, source, channels, time_expansion, max_in_memory_s, cluster, client, progress)

    # --- the kinds of source ---------------------------------------------------------------

    def _detect_samples(self, samples: np.ndarray, real_rate: float, file: str, channels: str) -> pd.DataFrame:
        from pipeline import spectrogram as sg
        from pipeline.io.audio import channel_units

        samples = np.asarray(samples)
        if samples.ndim == 1:
            samples = samples[None, :]
        if samples.ndim != 2:
            raise ValueError(f"samples of shape {samples.shape}; expected (n,) or (channels, n)")
        if np.issubdtype(samples.dtype, np.integer):  # as soundfile scales integer samples
            samples = samples / float(-np.iinfo(samples.dtype).min)
        samples = samples.astype(np.float32)
        if real_rate < self.settings.min_sample_rate:
            raise ValueError(f"rate {real_rate:.0f} Hz is below the minimum {self.settings.min_sample_rate:.0f} Hz")
        tables = []
        for selector in channel_units(samples.shape[0], channels):
            mono = samples.mean(axis=0) if selector == "mix" else samples[int(selector)]
            columns = _as_stored(sg.spectrogram(mono, real_rate, self.settings))
            times = sg.column_times(len(columns), real_rate, self.settings)
            tables.append(self._events(file, -1 if selector == "mix" else int(selector), columns, times))
        return pd.concat(tables, ignore_index=True)

    def _detect_spectrogram(self, spectrogram, name: str | None) -> pd.DataFrame:
        if set(spectrogram.dims) != {"time", "frequency"}:
            raise ValueError(f"a spectrogram has dimensions (time, frequency), not {spectrogram.dims}")
        columns = np.asarray(spectrogram.transpose("time", "frequency").values, dtype=np.float32)
        if columns.shape[1] != self.settings.n_rows:
            raise ValueError(f"{columns.shape[1]} frequency rows; the model reads {self.settings.n_rows}")
        if "offset" in spectrogram.coords:
            times = np.asarray(spectrogram["offset"].values, dtype=np.float64)
        else:
            times = np.asarray(spectrogram["time"].values, dtype=np.float64)
        file = name or str(spectrogram.attrs.get("path", ARRAY_NAME))
        return self._events(file, int(spectrogram.attrs.get("channel", 0)), columns, times)

    def _detect_cube(self, cube) -> pd.DataFrame:
        from pipeline.detection.recording import detect_columns

        if cube.attrs.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"the cube was built with spectrogram settings {cube.attrs.get('fingerprint')}; the model "
                f"expects {self.fingerprint}: give the recordings instead"
            )
        recordings = cube.batml.recordings
        array = cube["spectrogram"].variable
        offset = cube["offset"].variable
        tables, failed = [], []
        for r, row in recordings.iterrows():
            if row["status"] != "ok":
                failed.append((str(row["path"]), str(row["status"])))
                continue
            start, n = int(row["start"]), int(row["n_columns"])
            offsets = np.asarray(offset[start : start + n].values, dtype=np.float64)
            events = detect_columns(
                self.scorer(), lambda a, b, s=start: np.asarray(array[s + a : s + b].values, dtype=np.float32),
                n, offsets, self.classes, self.thresholds, scan=self.detect_settings.scan,
                calibration=self.calibration,
            )  # fmt: skip
            tables.append(events_table(str(row["path"]), int(row["channel"]), events, self.classes))
        manifest = cube.batml.manifest
        failed += [(p, r) for p, s, r in zip(manifest["path"], manifest["status"], manifest["reason"]) if s != "ok"]
        return self._finish(_concat(tables, self.classes), failed)

    def _recording_paths(self, source) -> list[str]:
        from pipeline.io.archive import discover

        if isinstance(source, (str, os.PathLike)):
            return discover(source)
        if isinstance(source, Iterable):
            return [os.fspath(path) for path in source]
        raise TypeError(f"cannot detect calls in a {type(source).__name__}")

    def _detect_files(self, paths, source, channels, time_expansion, max_in_memory_s, cluster, client, progress):
        from tqdm.auto import tqdm

        from pipeline.io import audio

        infos, failed = [], []
        for path in paths:
            try:
                info = audio.read_info(path, time_expansion=time_expansion)
                audio.check_usable(info, self.settings)
            except audio.RecordingError as exc:
                failed.append((str(path), exc.reason))
                continue
            infos.append(info)
        if sum(info.duration for info in infos) > max_in_memory_s:
            if isinstance(source, (str, os.PathLike)):
                return self._detect_on_dask(source, Settings().ingest.replace(channels=channels,
                                            time_expansion=time_expansion), cluster, client, progress)  # fmt: skip
            raise ValueError(
                f"{len(infos)} recordings hold more than {max_in_memory_s:g} s of audio: give their folder "
                "(it runs on Dask), or raise max_in_memory_s"
            )
        tables = []
        for info in tqdm(infos, desc="detect", unit="file", disable=not progress):
            try:
                for selector in audio.channel_units(info.channels, channels):
                    samples = audio.read_samples(info.path, channel=selector)
                    table = self._detect_samples(samples, info.real_rate, info.path, "first")
                    tables.append(table.assign(channel=np.int32(-1 if selector == "mix" else int(selector))))
            except audio.RecordingError as exc:
                failed.append((info.path, exc.reason))
        return self._finish(_concat(tables, self.classes), failed)

    def _detect_on_dask(self, source, ingest_settings, cluster, client, progress) -> pd.DataFrame:
        from pipeline.detection.archive import detect_archive
        from pipeline.outputs.parts import read_detections

        settings = dataclasses.replace(self.detect_settings, formats=("parquet",))
        with tempfile.TemporaryDirectory(prefix="batml-detect-") as out:
            report = detect_archive(
                source, out, model=self.path, settings=settings, ingest_settings=ingest_settings,
                cluster=cluster, client=client, progress=progress,
            )  # fmt: skip
            if not report.complete:
                raise RuntimeError(f"detection did not finish: {'; '.join(report.errors)}")
            table = read_detections(out)
        return self._finish(table, list(report.failed))

    # --- shared ------------------------------------------------------------------------------

    def _events(self, file: str, channel: int, columns: np.ndarray, times: np.ndarray) -> pd.DataFrame:
        from pipeline.detection.recording import detect_recording

        events = detect_recording(
            self.scorer(), columns, times, self.classes, self.thresholds, scan=self.detect_settings.scan,
            calibration=self.calibration,
        )
        return events_table(file, channel, events, self.classes)

    def _finish(self, table: pd.DataFrame, failed: Sequence[tuple[str, str]]) -> pd.DataFrame:
        for file, reason in failed:
            warnings.warn(f"{file}: {reason}", UserWarning, stacklevel=3)
        table = table.reset_index(drop=True)
        table.attrs["failed"] = [(str(f), str(r)) for f, r in failed]
        return table


def _as_stored(columns: np.ndarray) -> np.ndarray:
    """Spectrogram columns as a cube stores them (float16) and the model reads them (float32)."""
    return np.asarray(columns, dtype=np.float16).astype(np.float32)


def _concat(tables: list[pd.DataFrame], classes: Sequence[str]) -> pd.DataFrame:
    if tables:
        return pd.concat(tables, ignore_index=True)
    return event_schema(classes).empty_table().to_pandas()


def open_model(
    path: str | os.PathLike | None = None,
    *,
    thresholds: Mapping[str, float] | None = None,
    detect_settings: DetectSettings | None = None,
    expect_fingerprint: str | None = None,
) -> Model:
    """Open a model bundle as a :class:`Model`; the bundled default model when no path is given.

    Parameters
    ----------
    path : str or os.PathLike, optional
        A bundle folder (``batml train``'s output).
    thresholds : mapping, optional
        Overrides of the tuned thresholds (``"detection"`` and/or class names).
    detect_settings : DetectSettings, optional
        The fast path's settings (default: ``batml detect``'s).
    expect_fingerprint : str, optional
        Refuse a bundle made for other spectrogram settings.

    Examples
    --------
    >>> model = open_model()                                   # the bundled default model
    >>> model.architecture, model.classes[:2]
    ('hybrid_cnn_xgboost', ['Barbarg', 'Envsp'])
    """
    bundle = load_bundle(DEFAULT_BUNDLE if path is None else Path(path), expect_fingerprint=expect_fingerprint)
    settings = detect_settings or DetectSettings()
    if thresholds is not None:
        settings = DetectSettings(**{**settings.__dict__, "thresholds": dict(thresholds)})
    return Model(bundle, settings)
