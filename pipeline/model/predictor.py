"""A trained model as a function of windows: ``predict(windows) -> probabilities``.

:class:`Predictor` hides the architecture: a one-stage network's sigmoid head, a two-stage
model's detector then classifier, a hybrid's boosters on its network's embedding, all give
``(b, K + 1)`` probabilities, column 0 P(not call). It imports TensorFlow only through the
networks it is given.
"""

from __future__ import annotations

import numpy as np


class Predictor:
    """A trained model as a function ``windows (b, 130, 20, 1) -> probabilities (b, K+1)``.

    Column 0 is P(not call), columns 1..K the classes, whatever the architecture: a one-stage
    network's sigmoid head; a two-stage model's detector (P(call)) and classifier; a hybrid's
    boosters on the network's embedding.

    ``booster_gate`` (hybrids only) is the fast path of the boosters: the network computes
    its embedding and its own head in one pass, and the boosters score only the windows
    whose head gives a call score ``1 - P(not call)`` of at least ``booster_gate``; the other
    windows keep the head's probabilities (all far below any detection threshold). 0 runs
    the boosters on every window (the dense reference).
    """

    def __init__(self, architecture: str, networks: dict, boosters: dict | None = None, *, booster_gate: float = 0.0):
        from pipeline.model.registry import get_architecture

        self.arch = get_architecture(architecture)
        self.networks = networks
        self.boosters = boosters
        self.booster_gate = float(booster_gate)
        if self.arch.hybrid:
            self._embed = embedding_model(networks[self.arch.network_rows[0]])
            self._embed_and_head = embedding_and_head(networks[self.arch.network_rows[0]])

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        if len(windows) == 0:
            return np.zeros((0, self.n_outputs), np.float32)
        n = len(windows)
        size = padded_batch_size(n)
        if size != n:  # a few fixed batch shapes: TensorFlow/oneDNN caches one plan per shape
            windows = np.concatenate([windows, np.zeros((size - n, *windows.shape[1:]), windows.dtype)])
        return self._probabilities(windows)[:n]

    def _probabilities(self, windows: np.ndarray) -> np.ndarray:
        if self.arch.hybrid:
            if self.booster_gate <= 0:
                return booster_probabilities(self.boosters, self._embed(windows, training=False).numpy())
            embedding, head = (x.numpy() for x in self._embed_and_head(windows, training=False))
            probs = head.astype(np.float32)
            use = (1.0 - probs[:, 0]) >= self.booster_gate
            if use.any():
                probs[use] = booster_probabilities(self.boosters, embedding[use])
            return probs
        if self.arch.two_stage:
            detector = self.networks[self.arch.detector_row](windows, training=False).numpy()
            classes = self.networks[self.arch.classifier_row](windows, training=False).numpy()
            return np.column_stack([detector[:, 0], classes]).astype(np.float32)
        return self.networks[self.arch.network_rows[0]](windows, training=False).numpy().astype(np.float32)

    @classmethod
    def from_bundle(cls, bundle, *, booster_gate: float = 0.0) -> "Predictor":
        """The predictor of a loaded :class:`~pipeline.model.bundle.ModelBundle`."""
        networks = {row: bundle.network(row) for row in bundle.spec.network_rows}
        return cls(bundle.architecture, networks, bundle.boosters() or None, booster_gate=booster_gate)

    @property
    def n_outputs(self) -> int:
        if self.arch.hybrid:
            return len(self.boosters)
        return int(self.networks[self.arch.network_rows[-1]].output_shape[-1]) + int(self.arch.two_stage)


class KerasNetwork:
    """A trained CNN in Keras with the scoring interface of
    :class:`pipeline.model.runtime.NetworkRuntime` (windows only, no strips): what detection's
    :class:`pipeline.detection.scorers.WindowScorer` reads, so that the Keras path and the
    ONNX runtime compute events the same way (``tests/test_detect_runtime.py``).
    """

    strides: tuple[int, ...] = ()

    def __init__(self, network):
        self.network = network
        self.rows, self.width = int(network.input_shape[1]), int(network.input_shape[2])
        self._embed_and_head = embedding_and_head(network)

    def embed(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The network's head ``(b, n_outputs)`` and embedding ``(b, units)`` of windows."""
        n = len(windows)
        size = padded_batch_size(n)
        if size != n:
            windows = np.concatenate([windows, np.zeros((size - n, *windows.shape[1:]), windows.dtype)])
        embedding, head = (x.numpy()[:n] for x in self._embed_and_head(windows, training=False))
        return head.astype(np.float32), embedding.astype(np.float32)


def padded_batch_size(n: int, smallest: int = 64) -> int:
    """The batch shape ``n`` windows are scored in: the next power of two, at least ``smallest``.

    TensorFlow (oneDNN) builds and caches a plan for every input shape it meets; the fast path
    scores batches of every size, and without padding a worker's memory grew past 2 GB.
    """
    return max(int(smallest), 1 << max(int(n) - 1, 0).bit_length())


def embedding_model(network):
    """The network cut at its layer ``"embedding"`` (its last hidden layer)."""
    import keras

    return keras.Model(network.input, network.get_layer("embedding").output, name=f"{network.name}_embedding")


def embedding_and_head(network):
    """The network with two outputs: its embedding and its own head, in one pass."""
    import keras

    outputs = [network.get_layer("embedding").output, network.output]
    return keras.Model(network.input, outputs, name=f"{network.name}_embedding_and_head")


def inference_network(network):
    """A copy of a trained network without its optimizer state (a third of the file size)."""
    import keras

    copy = keras.Model.from_config(network.get_config())
    copy.set_weights(network.get_weights())
    return copy


def booster_names(n_outputs: int) -> list[str]:
    return [f"output_{j}" for j in range(n_outputs)]


def booster_probabilities(boosters: dict, embeddings: np.ndarray) -> np.ndarray:
    """Binary relevance: one booster per output column, in order."""
    return np.column_stack([b.inplace_predict(embeddings) for b in boosters.values()]).astype(np.float32)
