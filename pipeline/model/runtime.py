"""A trained network run without TensorFlow: windows or whole strips of columns -> probabilities.

:class:`NetworkRuntime` runs the ONNX graphs of :mod:`pipeline.model.export` with ONNX Runtime
(default) or OpenVINO, on a fixed number of threads (one per Dask worker thread), and, for a
hybrid model, the XGBoost boosters on the network's embedding. It has

- the :class:`pipeline.model.predictor.Predictor` contract: ``runtime(windows (b, rows, width, 1)) ->
  probabilities (b, K + 1)``, column 0 P(not call), so it drops into
  :func:`pipeline.detection.scoring.column_probabilities` and everything built on it;
- :meth:`NetworkRuntime.strip`: spectrogram columns ``(rows, T)`` -> the probabilities and
  embeddings of the ``T - width + 1`` windows of the strip, by the exact fully convolutional
  pass of a valid-time network (:mod:`pipeline.model.dense_scoring`), in pieces of bounded
  memory.

Importing this module imports neither TensorFlow nor Keras (``tests/test_inference_runtime.py``
checks it in a fresh interpreter): a detection worker that only scores pays neither their start-up
nor their memory. ``benchmarks/inference_speed.py`` measures the engines and precisions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: The inference engines a runtime can use (both read the same ONNX files).
ENGINES = ("onnxruntime", "openvino")

#: Windows per run of the window graph: bounds the memory of the first convolution's
#: activations (256 x 130 x 20 x 48 float32 = 128 MB) whatever the batch a caller gives.
BATCH_WINDOWS = 256

#: Output windows per piece of a strip pass: bounds the memory of the first convolution's
#: activations (48 filters x 130 rows x 2,048 columns x 4 bytes = 51 MB).
PIECE_WINDOWS = 2048


class RuntimeModelError(ValueError):
    """A model file the runtime cannot use; one line naming the file and the reason."""


@dataclass(frozen=True)
class StripScores:
    """Scores of the windows of a strip: row ``s`` is the window starting at strip column ``s``.

    Parameters
    ----------
    probabilities : numpy.ndarray
        float32 ``(n_windows, K + 1)``: the model's probabilities (for a hybrid, the boosters'
        where they ran, the network's head elsewhere; see :class:`NetworkRuntime`).
    embedding : numpy.ndarray
        float32 ``(n_windows, units)``: the network's layer ``embedding``.
    stride : int
        The strip graph's stride: row ``s`` is the window starting at column ``stride * s``.
    """

    probabilities: np.ndarray
    embedding: np.ndarray
    stride: int = 1


class _OnnxRuntimeSession:
    """One ONNX graph in ONNX Runtime, on ``threads`` threads."""

    def __init__(self, model: str | os.PathLike | bytes, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        source = model if isinstance(model, bytes) else str(model)
        self._session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.input_name = self._session.get_inputs()[0].name
        self.input_shape = self._session.get_inputs()[0].shape
        self._outputs = [o.name for o in self._session.get_outputs()]
        self.metadata = dict(self._session.get_modelmeta().custom_metadata_map)

    def run(self, array: np.ndarray) -> dict[str, np.ndarray]:
        values = self._session.run(self._outputs, {self.input_name: array})
        return dict(zip(self._outputs, values))


class _OpenVinoSession:
    """One ONNX graph compiled by OpenVINO for the CPU, on ``threads`` threads."""

    def __init__(self, model: str | os.PathLike | bytes, threads: int, precision: str):
        import openvino as ov

        core = ov.Core()
        if isinstance(model, bytes):
            import tempfile

            with tempfile.TemporaryDirectory(prefix="batml-openvino-") as tmp:
                path = Path(tmp) / "model.onnx"
                path.write_bytes(model)
                read = core.read_model(str(path))
        else:
            read = core.read_model(str(model))
        config = {
            "INFERENCE_NUM_THREADS": int(threads),
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": precision,
        }
        self._compiled = core.compile_model(read, "CPU", config)
        self._request = self._compiled.create_infer_request()
        self.input_name = self._compiled.inputs[0].get_any_name()
        self.input_shape = [d.get_length() if d.is_static else None for d in self._compiled.inputs[0].get_partial_shape()]
        self._outputs = [o.get_any_name() for o in self._compiled.outputs]
        self.metadata = _metadata(model)

    def run(self, array: np.ndarray) -> dict[str, np.ndarray]:
        result = self._request.infer({0: array})
        return {name: np.array(result[output]) for name, output in zip(self._outputs, self._compiled.outputs)}


def _session(model, engine: str, threads: int, precision: str):
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
    where = "<in memory>" if isinstance(model, bytes) else str(model)
    if not isinstance(model, bytes) and not Path(model).is_file():
        raise RuntimeModelError(f"{where}: no such model file")
    try:
        if engine == "onnxruntime":
            return _OnnxRuntimeSession(model, threads)
        return _OpenVinoSession(model, threads, precision)
    except Exception as exc:  # noqa: BLE001 - the engines' own exception types (not RuntimeError for ORT's)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RuntimeModelError(f"{where}: {engine} cannot load it ({first})") from None


def _model_source(model):
    """A path or the serialized bytes of an ``onnx.ModelProto``."""
    if hasattr(model, "SerializeToString"):
        return model.SerializeToString()
    return model


def _metadata(source) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX graph (path or bytes); empty when unreadable (the
    engine then says why it cannot load the graph)."""
    import onnx

    try:
        if isinstance(source, bytes):
            model = onnx.load_from_string(source)
        else:
            model = onnx.load(str(source), load_external_data=False)
    except Exception:  # noqa: BLE001 - protobuf's decode errors; reported by the engine
        return {}
    return {prop.key: prop.value for prop in model.metadata_props}


class NetworkRuntime:
    """A one-stage CNN model (``cnn8``, ``hybrid_cnn_xgboost`` and their valid-time variants)
    scoring windows and strips without TensorFlow.

    Parameters
    ----------
    window_model : path, bytes or onnx.ModelProto
        The graph of :func:`pipeline.model.export.window_graph` (or its int8 version).
    strip_model : path, bytes, onnx.ModelProto, or a mapping of such, optional
        The graph of :func:`pipeline.model.export.strip_graph`, or several (one per stride, the
        stride read from each graph's metadata); needed by :meth:`strip`.
    boosters : mapping of str to xgboost.Booster, optional
        A hybrid's boosters, one per output column in order (``output_0`` ...).
    booster_gate : float, default 0
        As :class:`pipeline.model.predictor.Predictor`: the boosters score only the windows whose
        network head gives a call score ``1 - P(not call)`` of at least ``booster_gate``; the
        others keep the head's probabilities. 0: the boosters score every window.
    engine : {"onnxruntime", "openvino"}
        The inference engine.
    threads : int, default 1
        Threads of the engine (one per Dask worker thread).
    precision : {"f32", "bf16"}, default "f32"
        OpenVINO's inference precision for float graphs (``bf16`` uses AVX512_BF16/AMX where
        the CPU has them); ONNX Runtime runs float graphs in f32 whatever this says.
    width : int, default 20
        Columns per window.

    Raises
    ------
    RuntimeModelError
        When a model file is missing or the engine cannot load it (one line).
    """

    def __init__(
        self,
        window_model,
        strip_model=None,
        *,
        boosters: Mapping | None = None,
        booster_gate: float = 0.0,
        engine: str = "onnxruntime",
        threads: int = 1,
        precision: str = "f32",
        width: int = 20,
    ):
        if precision not in ("f32", "bf16"):
            raise ValueError(f"precision {precision!r} is not f32 or bf16")
        self.engine, self.threads, self.precision = engine, int(threads), precision
        self.width = int(width)
        self.boosters = dict(boosters) if boosters else None
        self.booster_gate = float(booster_gate)
        self._windows = _session(_model_source(window_model), engine, self.threads, precision)
        self._strips: dict[int, object] = {}
        if strip_model is not None:
            models = strip_model.values() if isinstance(strip_model, Mapping) else [strip_model]
            for model in models:
                session = _session(_model_source(model), engine, self.threads, precision)
                self._strips[int(session.metadata.get("stride", 1))] = session
        #: The stride :meth:`strip` uses by default: the smallest of the strip graphs (None: no strip graph).
        self.stride = min(self._strips) if self._strips else None
        self.rows = int(self._windows.input_shape[1])
        self._n_outputs: int | None = None
        if self.boosters and int(self._windows.input_shape[2] or self.width) != self.width:
            raise RuntimeModelError(f"the window graph takes {self._windows.input_shape[2]} columns, not {self.width}")

    @classmethod
    def from_files(
        cls,
        window_model: str | os.PathLike,
        strip_model: str | os.PathLike | None = None,
        booster_files: list[str | os.PathLike] | None = None,
        **options,
    ) -> NetworkRuntime:
        """A runtime from files: ONNX graphs and, for a hybrid, one XGBoost file (``.ubj`` or
        ``.json``) per output column in order; ``options`` as the constructor's."""
        boosters = None
        if booster_files:
            import xgboost

            boosters = {}
            for path in booster_files:
                booster = xgboost.Booster()
                try:
                    booster.load_model(str(path))
                except xgboost.core.XGBoostError as exc:
                    raise RuntimeModelError(f"{path}: not an XGBoost model ({str(exc).splitlines()[0]})") from None
                booster.set_param({"nthread": int(options.get("threads", 1))})
                boosters[Path(path).stem] = booster
        return cls(window_model, strip_model, boosters=boosters, **options)

    # --- the Predictor contract ------------------------------------------------------------

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        """Probabilities ``(b, K + 1)`` of windows ``(b, rows, width, 1)``."""
        windows = np.ascontiguousarray(windows, dtype=np.float32)
        if windows.ndim != 4 or windows.shape[1:] != (self.rows, self.width, 1):
            raise ValueError(f"windows must be (b, {self.rows}, {self.width}, 1), not {windows.shape}")
        if len(windows) == 0:
            return np.zeros((0, self.n_outputs), np.float32)
        return self._final(*self.embed(windows))

    def embed(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The network's own head ``(b, n_outputs)`` and embedding ``(b, units)`` of windows,
        scored :data:`BATCH_WINDOWS` at a time."""
        windows = np.ascontiguousarray(windows, dtype=np.float32)
        heads, embeddings = [], []
        for start in range(0, max(len(windows), 1), BATCH_WINDOWS):
            out = self._windows.run(windows[start : start + BATCH_WINDOWS])
            heads.append(out["probabilities"])
            embeddings.append(out["embedding"])
        return np.concatenate(heads), np.concatenate(embeddings)

    @property
    def n_outputs(self) -> int:
        """K + 1: the columns of the probabilities."""
        if self.boosters:
            return len(self.boosters)
        if self._n_outputs is None:
            probe = self._windows.run(np.zeros((1, self.rows, self.width, 1), np.float32))
            self._n_outputs = int(probe["probabilities"].shape[1])
        return self._n_outputs

    # --- strips ---------------------------------------------------------------------------

    @property
    def strides(self) -> tuple[int, ...]:
        """The strides of the strip graphs this runtime holds (empty: none)."""
        return tuple(sorted(self._strips))

    def strip(self, columns: np.ndarray, *, piece_windows: int = PIECE_WINDOWS, stride: int | None = None) -> StripScores:
        """The scores of every window of a strip of spectrogram columns, in one pass per piece.

        Parameters
        ----------
        columns : array, shape (rows, T)
            Consecutive spectrogram columns, frequency first (the transpose of a cube slice).
        piece_windows : int
            Windows scored per run of the engine: the strip is cut into overlapping pieces of
            ``piece_windows + width - 1`` columns, which bounds the memory whatever ``T``.
        stride : int, optional
            The strip graph to run (one of :attr:`strides`; default :attr:`stride`).

        Returns
        -------
        StripScores
            ``T - width + 1`` rows (none when ``T < width``), row ``s`` equal to scoring the
            window ``columns[:, s : s + width]`` alone, to float tolerance (int8 graphs: to
            their quantization). A strip graph of stride ``k``
            (:func:`pipeline.model.export.strip_graph`) gives the windows starting at columns
            ``0, k, 2k...`` only: ``ceil((T - width + 1) / k)`` rows.

        Raises
        ------
        ValueError
            When the runtime has no strip graph, or ``columns`` is not ``(rows, T)``.
        """
        if not self._strips:
            raise ValueError("this runtime has no strip graph (the network pads along time, or none was given)")
        stride = self.stride if stride is None else int(stride)
        if stride not in self._strips:
            raise ValueError(f"no strip graph of stride {stride}; this runtime has {', '.join(map(str, self.strides))}")
        session = self._strips[stride]
        columns = np.asarray(columns, dtype=np.float32)
        if columns.ndim != 2 or columns.shape[0] != self.rows:
            raise ValueError(f"a strip is ({self.rows}, T) spectrogram columns, not of shape {columns.shape}")
        piece_windows = int(piece_windows)
        if piece_windows < 1:
            raise ValueError(f"piece_windows={piece_windows} must be at least 1")
        piece_windows = -(-piece_windows // stride) * stride  # pieces start on the grid
        n_windows = max(columns.shape[1] - self.width + 1, 0)
        heads, embeddings = [], []
        for start in range(0, n_windows, piece_windows):
            stop = min(start + piece_windows, n_windows)
            piece = np.ascontiguousarray(columns[:, start : stop + self.width - 1])
            out = session.run(piece)
            wanted = -(-(stop - start) // stride)
            heads.append(out["probabilities"][:wanted])
            embeddings.append(out["embedding"][:wanted])
        if not heads:
            units = int(session.run(np.zeros((self.rows, self.width), np.float32))["embedding"].shape[1])
            empty = np.zeros((0, self.n_outputs), np.float32)
            return StripScores(empty, np.zeros((0, units), np.float32), stride)
        head, embedding = np.concatenate(heads), np.concatenate(embeddings)
        return StripScores(self._final(head, embedding), embedding, stride)

    def column_probabilities(self, spectrogram: np.ndarray, *, piece_windows: int = PIECE_WINDOWS) -> np.ndarray:
        """What :func:`pipeline.detection.scoring.column_probabilities` gives (every window, dense), by strips.

        Parameters
        ----------
        spectrogram : array, shape (n_columns, rows)
            A recording's model-ready spectrogram, time first (as the cube holds it).
        piece_windows : int
            As :meth:`strip`.

        Returns
        -------
        numpy.ndarray
            float32 ``(n_columns, K + 1)``: row ``c`` scores the window starting at column ``c``;
            the last ``width - 1`` columns, which start no complete window, are "not call".
        """
        spectrogram = np.asarray(spectrogram, dtype=np.float32)
        if spectrogram.ndim != 2:
            raise ValueError(f"a spectrogram is (n_columns, rows), not of shape {spectrogram.shape}")
        if self._strips and 1 not in self._strips:
            raise ValueError(f"the strip graph scores every {self.stride}th window only; dense scoring needs stride 1")
        scores = self.strip(spectrogram.T, piece_windows=piece_windows, stride=1)
        n_outputs = scores.probabilities.shape[1]
        probs = np.zeros((spectrogram.shape[0], n_outputs), np.float32)
        probs[:, 0] = 1.0
        probs[: len(scores.probabilities)] = scores.probabilities
        return probs

    # --- boosters ---------------------------------------------------------------------------

    def _final(self, head: np.ndarray, embedding: np.ndarray) -> np.ndarray:
        """The model's probabilities from the network's head and embedding."""
        probs = np.array(head, dtype=np.float32)
        if not self.boosters:
            return probs
        use = np.ones(len(probs), bool) if self.booster_gate <= 0 else (1.0 - probs[:, 0]) >= self.booster_gate
        if use.all():
            return booster_probabilities(self.boosters, embedding)
        if use.any():
            probs[use] = booster_probabilities(self.boosters, embedding[use])
        return probs


def booster_probabilities(boosters: Mapping, embeddings: np.ndarray) -> np.ndarray:
    """Binary relevance: one booster per output column, in order, by XGBoost's ``inplace_predict``.

    A tl2cgen-compiled predictor of the same boosters is faster (8.0 against 13.2 us per window
    for the bundled model's 8 boosters on one thread, ``benchmarks/inference_speed.py``), but it
    is a native library built per model by a C compiler: loading one from a bundle would run
    code from the bundle, which batml's bundles never do. Scoring the boosters only near the
    head's peaks (:func:`booster_columns`) saves more.
    """
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    return np.column_stack([b.inplace_predict(embeddings) for b in boosters.values()]).astype(np.float32)


def booster_columns(
    head: np.ndarray,
    *,
    gate: float = 0.01,
    margin: int = 3,
    radius_columns: int = 10,
    sigma_columns: float = 0.5,
) -> np.ndarray:
    """The columns where a hybrid's boosters must run: near the peaks of the network's head.

    The boosters read the same embedding as the network's own head, so the peaks of their call
    score lie where the head's do; only there can they make or move an event. A peak of the
    head's smoothed call score (the NMS of :func:`pipeline.detection.events.find_detections`, same radius
    and smoothing) that reaches ``gate`` marks its column and ``margin`` columns on each side.

    Parameters
    ----------
    head : array, shape (n_columns, K + 1)
        The network head's per-column probabilities, column 0 P(not call).
    gate : float
        Smallest head call score of a peak whose neighbourhood is scored.
    margin : int
        Columns on each side of such a peak also scored (at least the smoothing's reach, 2,
        so that the smoothed booster probabilities at the peak are exact).
    radius_columns, sigma_columns : int, float
        The NMS radius and the smoothing of the detection (its defaults).

    Returns
    -------
    numpy.ndarray
        bool ``(n_columns,)``; ``benchmarks/inference_speed.py`` measures the share of windows it
        keeps on dense real passes and the AP it costs against boosters everywhere.
    """
    from pipeline.detection.scoring import call_score
    from pipeline.detection.events import smooth_probabilities
    from pipeline.nms import peaks_1d

    head = np.asarray(head, dtype=np.float32)
    mask = np.zeros(len(head), bool)
    if len(head) == 0:
        return mask
    score = call_score(smooth_probabilities(head, sigma_columns))
    peaks = peaks_1d(score, int(radius_columns), np.float32(0.0))
    peaks = peaks[score[peaks] >= np.float32(gate)]
    for offset in range(-int(margin), int(margin) + 1):
        near = peaks + offset
        mask[near[(near >= 0) & (near < len(head))]] = True
    return mask


def hybrid_probabilities(head: np.ndarray, embedding: np.ndarray, boosters: Mapping, columns: np.ndarray) -> np.ndarray:
    """A hybrid's per-column probabilities: its boosters at ``columns`` (a bool mask, e.g.
    :func:`booster_columns`), the network's head elsewhere."""
    probs = np.array(head, dtype=np.float32)
    columns = np.asarray(columns, bool)
    if columns.any():
        probs[columns] = booster_probabilities(boosters, np.asarray(embedding)[columns])
    return probs
