"""The Keras callbacks of network training: an epoch clock, and the batch-norm estimate."""

from __future__ import annotations

import time

import keras
import numpy as np

from pipeline.training.batch_norm import reestimate_batch_norm


class EpochClock(keras.callbacks.Callback):
    """Times each epoch's training steps, up to its validation pass.

    :meth:`seconds` gives ``cpu_seconds`` (CPU time of this process, all its threads) and
    ``wall_seconds``, one value per epoch.
    """

    def __init__(self):
        super().__init__()
        self.cpu: list[float] = []
        self.wall: list[float] = []
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = (time.process_time(), time.perf_counter())

    def _stop(self) -> None:
        if self._start is not None:
            self.cpu.append(time.process_time() - self._start[0])
            self.wall.append(time.perf_counter() - self._start[1])
            self._start = None

    def on_test_begin(self, logs=None):
        self._stop()

    def on_epoch_end(self, epoch, logs=None):
        self._stop()

    def seconds(self) -> dict[str, list[float]]:
        return {"cpu_seconds": list(self.cpu), "wall_seconds": list(self.wall)}


class BatchNormEstimate(keras.callbacks.Callback):
    """Re-estimates the batch-norm statistics before each validation pass, or at the end of
    training without validation (:func:`pipeline.training.batch_norm.reestimate_batch_norm`).

    Parameters
    ----------
    read : callable
        ``read(indices) -> windows`` of the training windows (float32, ``(n, 130, 20, 1)``).
    batches : list of numpy.ndarray
        The indices of each batch (:func:`pipeline.training.batch_norm.estimation_batches`).

    Notes
    -----
    The estimate runs before validation, so the weights ``EarlyStopping(restore_best_weights=True)``
    keeps at the end of an epoch carry their own statistics. Without validation, the estimate
    runs once, when training ends.
    """

    def __init__(self, read, batches: list[np.ndarray]):
        super().__init__()
        self.read = read
        self.batches = batches
        self.windows = None
        self.estimates = 0
        self.cpu_seconds: list[float] = []  # of each estimate
        self.current = False  # the statistics are those of the weights as they stand

    def _estimate(self) -> None:
        start = time.process_time()
        if self.windows is None:  # read once, kept while training (2,048 windows: 21 MB)
            self.windows = [self.read(indices) for indices in self.batches]
        if reestimate_batch_norm(self.model, self.windows):
            self.estimates += 1
            self.cpu_seconds.append(time.process_time() - start)
        self.current = True

    def on_epoch_begin(self, epoch, logs=None):
        self.current = False

    def on_test_begin(self, logs=None):
        self._estimate()

    def on_train_end(self, logs=None):
        if not self.current:
            self._estimate()
        self.windows = None
