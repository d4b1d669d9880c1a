"""What scores the columns of a block: the network on the runtime, the coarse-to-fine scan by strips.

:func:`pipeline.detection.recording.detect_block` asks its scorer for the probabilities of the
windows starting at the columns of a block. Two kinds of scorer exist:

- a :data:`pipeline.detection.scoring.Predictor` (any model, window by window, in Keras: the
  two-stage models and ResNets, whose networks the ONNX export does not rebuild);
- a :class:`WindowScorer`, for the one-stage CNN models (``cnn8``, ``hybrid_cnn_xgboost`` and
  their valid-time variants): the network runs on ONNX Runtime
  (:class:`pipeline.model.runtime.NetworkRuntime`, no TensorFlow) or, for comparison, in Keras
  (:class:`pipeline.model.predictor.KerasNetwork`), and the scan is computed from whole strips
  of columns where the network allows it:

  1. the coarse grid of the scan (every ``stride``-th window, :class:`~pipeline.detection.scoring.Scan`)
     by one strided strip pass (:func:`pipeline.model.export.strip_graph`) when the network is
     valid along time, else window by window;
  2. the windows near the coarse ones whose call score reaches ``gamma``, in runs of consecutive
     columns, each run by one stride-1 strip pass (or window by window);
  3. a hybrid's boosters, on the embeddings the network computed: by default (``booster_margin``
     None) on every scored window whose network call score reaches ``booster_gate`` (0: every
     scored window), as :class:`pipeline.model.predictor.Predictor` does, the coarse windows
     before the scan decides where to refine; with ``booster_margin=M``, only within ``M``
     columns of the peaks of the network's own smoothed call score that reach ``booster_gate``
     (:func:`pipeline.model.runtime.booster_columns`).

Every window is scored exactly as alone (the strip passes are exact, to float tolerance), so a
float runtime gives the events of the Keras network under the same settings
(``tests/test_detect_runtime.py``). What the scan and the boosters' policy cost in detection AP
against dense float scoring (every window, boosters everywhere) ``benchmarks/detect_speed.py``
measures. Measured (``python benchmarks/detect_speed.py --sections accuracy``):
the default (stride 4, gate 0.01) stays within 0.001 of dense float on the simulated test split,
the three annotated real recordings and the Tadarida sample, for the bundled hybrid and a
valid-time one, while the boosters run on 12-25 % of the columns of those sets; the boosters
near the head's peaks (margin 2-8) run on fewer windows of dense passes but move the AP by up
to 0.06 on the real sets (the head and the boosters disagree there), so they are not the default.

Block borders stay exact: a column's probability depends on the coarse windows within
``scan.reach`` columns and, through the boosters' mask, on the head within
:attr:`WindowScorer.extra_reach` columns; :func:`pipeline.detection.recording.minimum_halo_columns`
adds both.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pipeline.config import WINDOW_COLUMNS
from pipeline.detection.events import NMS_RADIUS_COLUMNS, SMOOTHING_SIGMA_COLUMNS, smoothing_reach
from pipeline.detection.scoring import BATCH_WINDOWS, Scan, call_score, recording_windows

#: Engines :func:`model_scorer` runs a network on.
ENGINES = ("onnxruntime", "keras")

#: A ``booster_margin`` worth trying: columns on each side of a peak of the head where the boosters
#: run (at least the smoothing's reach, 2, so that the smoothed probabilities at the peak are the
#: boosters').
BOOSTER_MARGIN = 3


def _runs(columns: np.ndarray, gap: int) -> list[tuple[int, int]]:
    """Sorted columns as runs ``[first, last]``, merging runs less than ``gap`` columns apart."""
    if len(columns) == 0:
        return []
    breaks = np.flatnonzero(np.diff(columns) > gap)
    firsts = np.concatenate([[columns[0]], columns[breaks + 1]])
    lasts = np.concatenate([columns[breaks], [columns[-1]]])
    return list(zip(firsts.tolist(), lasts.tolist()))


class WindowScorer:
    """A one-stage CNN model (and a hybrid's boosters) scoring blocks of spectrogram columns.

    Parameters
    ----------
    network : NetworkRuntime or KerasNetwork
        The network without boosters: ``embed(windows) -> (head, embedding)``, ``strides`` (the
        strides of its strip graphs, empty when it has none) and ``strip(columns, stride=k)``.
    boosters : mapping of str to xgboost.Booster, optional
        A hybrid's boosters, one per output column in order.
    booster_gate : float
        See the module's docstring.
    booster_margin : int or None
        See the module's docstring.
    radius_columns, sigma_columns : int, float
        The detection's NMS radius and smoothing (for the peaks of the boosters' mask).
    batch_size : int
        Windows per run of the network when windows are scored one by one.
    """

    def __init__(
        self,
        network,
        boosters: Mapping | None = None,
        *,
        booster_gate: float = 0.0,
        booster_margin: int | None = None,
        radius_columns: int = NMS_RADIUS_COLUMNS,
        sigma_columns: float = SMOOTHING_SIGMA_COLUMNS,
        batch_size: int = BATCH_WINDOWS,
    ):
        self.network = network
        self.boosters = dict(boosters) if boosters else None
        self.booster_gate = float(booster_gate)
        self.booster_margin = None if booster_margin is None else int(booster_margin)
        if self.booster_margin is not None and self.booster_margin < 0:
            raise ValueError(f"booster_margin={booster_margin} must be at least 0 (None: gate every window)")
        self.radius_columns, self.sigma_columns = int(radius_columns), float(sigma_columns)
        self.batch_size = int(batch_size)
        self.width = int(getattr(network, "width", WINDOW_COLUMNS))
        self._n_outputs: int | None = None
        self._n_units: int | None = None

    @property
    def extra_reach(self) -> int:
        """Columns, beyond the scan's reach, on each side of a column that its probability depends
        on: the boosters' mask reads the head's peaks within this many columns."""
        if not self.boosters or self.booster_margin is None:
            return 0
        return self.radius_columns + smoothing_reach(self.sigma_columns) + self.booster_margin

    @property
    def n_outputs(self) -> int:
        """K + 1: the columns of the probabilities."""
        if self.boosters:
            return len(self.boosters)
        if self._n_outputs is None:
            blank = np.zeros((1, self.network.rows, self.width, 1), np.float32)
            self._n_outputs = int(self.network.embed(blank)[0].shape[1])
        return self._n_outputs

    # --- the Predictor contract: windows alone ----------------------------------------------

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        """Probabilities ``(b, K + 1)`` of windows ``(b, rows, width, 1)``; a hybrid's boosters on
        the windows whose call score reaches ``booster_gate`` (peaks need a whole recording)."""
        windows = np.ascontiguousarray(windows, dtype=np.float32)
        if len(windows) == 0:
            return np.zeros((0, self.n_outputs), np.float32)
        heads, embeddings = [], []
        for start in range(0, len(windows), self.batch_size):
            head, embedding = self.network.embed(windows[start : start + self.batch_size])
            heads.append(head)
            embeddings.append(embedding)
        head, embedding = np.concatenate(heads), np.concatenate(embeddings)
        probs = np.array(head, dtype=np.float32)
        if self.boosters:
            use = call_score(head) >= np.float32(self.booster_gate) if self.booster_gate > 0 else np.ones(len(head), bool)
            self._boost(probs, embedding, use)
        return probs

    # --- blocks of columns --------------------------------------------------------------------

    def score_columns(
        self, spectrogram: np.ndarray, first_column: int, stop_column: int, n_columns: int, scan: Scan | None = None
    ) -> np.ndarray:
        """Probabilities of the columns ``[first_column, stop_column)`` of a recording of
        ``n_columns`` columns, as :func:`pipeline.detection.scoring.scored_columns` (same
        arguments, same windows scored, same not-call rows) plus the boosters' policy.

        ``spectrogram`` holds the recording's columns from ``first_column`` on, at least up to
        ``min(stop_column + width - 1, n_columns)``.
        """
        width = self.width
        window_stop = max(min(stop_column, n_columns - width + 1), first_column)
        n_rows = stop_column - first_column
        head = np.zeros((n_rows, self.network_outputs()), np.float32)
        head[:, 0] = 1.0
        scored = np.zeros(n_rows, bool)
        embedding = None
        if self.boosters:
            embedding = np.zeros((n_rows, self._units()), np.float32)
        starts = np.arange(first_column, window_stop)
        stride = int(scan.stride) if scan is not None else 1
        if stride > 1:
            starts = starts[starts % stride == 0]
        gated = self.boosters is not None and self.booster_margin is None
        self._score_grid(spectrogram, first_column, starts, stride, head, embedding, scored)
        probs = head.copy()
        if gated:  # as the Predictor: the boosters' probabilities decide where to refine
            self._boost(probs, embedding, self._gate(head, starts - first_column))
        if stride > 1 and len(starts):
            refined = scan.refined(starts, call_score(probs[starts - first_column]), first_column, window_stop)
            self._score_columns(spectrogram, first_column, refined, head, embedding, scored)
            probs[refined - first_column] = head[refined - first_column]
            if gated:
                self._boost(probs, embedding, self._gate(head, refined - first_column))
        if self.boosters and not gated:
            from pipeline.model.runtime import booster_columns

            near = booster_columns(
                head, gate=self.booster_gate, margin=self.booster_margin,
                radius_columns=self.radius_columns, sigma_columns=self.sigma_columns,
            )  # fmt: skip
            self._boost(probs, embedding, scored & near)
        return probs

    # --- internals ---------------------------------------------------------------------------

    def network_outputs(self) -> int:
        """The network head's columns (a hybrid's network has as many as its boosters)."""
        if self.boosters:
            return len(self.boosters)
        return self.n_outputs

    def _units(self) -> int:
        if self._n_units is None:
            blank = np.zeros((1, self.network.rows, self.width, 1), np.float32)
            self._n_units = int(self.network.embed(blank)[1].shape[1])
        return self._n_units

    def _gate(self, head: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """A mask of ``head``'s rows: those of ``rows`` whose call score reaches the gate."""
        use = np.zeros(len(head), bool)
        use[rows] = call_score(head[rows]) >= np.float32(self.booster_gate) if self.booster_gate > 0 else True
        return use

    def _boost(self, probs: np.ndarray, embedding: np.ndarray, use: np.ndarray) -> None:
        from pipeline.model.runtime import booster_probabilities

        if use.any():
            probs[use] = booster_probabilities(self.boosters, embedding[use])

    def _store(self, rows: np.ndarray, head, embedding, out_head, out_embedding, scored) -> None:
        out_head[rows] = head
        if out_embedding is not None:
            out_embedding[rows] = embedding
        scored[rows] = True

    def _score_grid(self, spectrogram, first, starts, stride, head, embedding, scored) -> None:
        """Score the windows at ``starts`` (every ``stride``-th column, consecutive on that grid)."""
        if len(starts) == 0:
            return
        usable = [s for s in self.network.strides if stride % s == 0]
        if not usable:
            self._by_window(spectrogram, first, starts, head, embedding, scored)
            return
        step = max(usable)
        a, b = int(starts[0]) - first, int(starts[-1]) - first
        strip = self.network.strip(np.ascontiguousarray(spectrogram[a : b + self.width].T), stride=step)
        take = slice(None, None, stride // step)
        self._store(starts - first, strip.probabilities[take], strip.embedding[take], head, embedding, scored)

    def _score_columns(self, spectrogram, first, columns, head, embedding, scored) -> None:
        """Score the windows at any sorted ``columns``: runs of them by stride-1 strip passes
        (runs closer than a window are merged: scoring the gap costs less than a new strip's
        edges), or window by window."""
        if len(columns) == 0:
            return
        if 1 not in self.network.strides:
            self._by_window(spectrogram, first, columns, head, embedding, scored)
            return
        for a, b in _runs(np.asarray(columns), gap=self.width - 1):
            strip = self.network.strip(np.ascontiguousarray(spectrogram[a - first : b - first + self.width].T), stride=1)
            wanted = columns[(columns >= a) & (columns <= b)]
            self._store(wanted - first, strip.probabilities[wanted - a], strip.embedding[wanted - a], head, embedding, scored)

    def _by_window(self, spectrogram, first, columns, head, embedding, scored) -> None:
        for start in range(0, len(columns), self.batch_size):
            batch = columns[start : start + self.batch_size]
            windows = recording_windows(spectrogram, batch - first, self.width)
            out_head, out_embedding = self.network.embed(windows)
            self._store(batch - first, out_head, out_embedding, head, embedding, scored)


def model_scorer(
    bundle,
    *,
    graphs=None,
    booster_gate: float = 0.0,
    booster_margin: int | None = None,
    engine: str = "onnxruntime",
    threads: int = 1,
):
    """The scorer detection uses for a bundle.

    Parameters
    ----------
    bundle : pipeline.model.bundle.ModelBundle
    graphs : pipeline.model.inference.RuntimeGraphs, optional
        The network's ONNX graphs (:func:`pipeline.model.inference.runtime_graphs`); None: the
        model has none (it runs in Keras).
    booster_gate, booster_margin
        As :class:`WindowScorer`.
    engine : {"onnxruntime", "keras"}
        ``keras`` runs the same :class:`WindowScorer` on the Keras network (for comparisons).
    threads : int
        Threads of the runtime (one per Dask worker thread).

    Returns
    -------
    WindowScorer or pipeline.model.predictor.Predictor
        A :class:`WindowScorer` for the one-stage CNN models with graphs (or any one-stage CNN
        with ``engine="keras"``); the Keras :class:`~pipeline.model.predictor.Predictor` (its
        ``booster_gate``, every window alone) for the others. Only the Keras paths import
        TensorFlow.
    """
    boosters = (bundle.boosters() or None) if bundle.spec.hybrid else None
    if boosters:
        for booster in boosters.values():
            booster.set_param({"nthread": int(threads)})
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
    if engine == "onnxruntime" and graphs is not None:
        network = graphs.open(threads)
    elif engine == "keras" and bundle.spec.family == "cnn" and not bundle.spec.two_stage:
        from pipeline.model.predictor import KerasNetwork

        network = KerasNetwork(bundle.network(bundle.spec.network_rows[0]))
    else:
        from pipeline.model.predictor import Predictor

        return Predictor.from_bundle(bundle, booster_gate=booster_gate)
    return WindowScorer(network, boosters, booster_gate=booster_gate, booster_margin=booster_margin)
