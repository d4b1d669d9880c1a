"""Batch-normalisation statistics of a trained network, estimated over training windows.

A batch-normalisation layer trains on each batch's own mean and variance, and keeps a moving
average of them (``momentum``, the reference system's ``batch_norm_decay`` of 0.99: a memory
of about 100 steps) for inference. The ResNets' rows add an L2 penalty on every convolution
kernel, in the loss (``kernel_regularizer``, as the reference system built them). Behind a
batch norm a kernel's scale changes nothing the network computes, so that penalty shrinks
every kernel, step after step, and the activations' variance with it. Early in training, and
on a budget of a few hundred steps that is all of training, the moving averages then lag
behind the batches: at inference a network whose batch-mode outputs separate calls from
noise well answers "not call" nearly everywhere (measured: ``benchmarks/models.py``,
README, Benchmarks, the ResNet rows).

:func:`reestimate_batch_norm` replaces the moving averages by the averages over whole
batches of training windows of the current weights (what the moving averages reach when the
weights stand still: "precise batch norm"). The weights themselves, and so the training
trajectory, are untouched: training steps read each batch's own statistics, never the moving
ones. :class:`pipeline.training.callbacks.BatchNormEstimate` does it before each validation pass and at the end of
training, so that early stopping, the thresholds and a hybrid's embeddings see the network
that inference will run.
"""

from __future__ import annotations

from collections.abc import Iterable

import keras
import numpy as np


def batch_norm_layers(network: keras.Model) -> list[keras.layers.BatchNormalization]:
    """The batch-normalisation layers of a network that training updates (nested models included).

    A frozen layer (``trainable`` False, fine-tuning's first phase) runs on its moving
    averages even in training mode and is left out.
    """
    found = []
    for layer in network.layers:
        if isinstance(layer, keras.Model):
            found += batch_norm_layers(layer) if layer.trainable else []
        elif isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            found.append(layer)
    return found


def reestimate_batch_norm(network: keras.Model, batches: Iterable[np.ndarray]) -> int:
    """Set the moving mean and variance of every trainable batch norm of ``network`` to the
    average, over ``batches``, of the statistics each batch gives it in training mode.

    Batch ``k`` (from 0) is run with the layers' momentum set to ``k / (k + 1)``, which
    turns Keras's moving average into the running mean of the batches; the momentum is put
    back afterwards. Nothing else of the network changes.

    Parameters
    ----------
    network : keras.Model
    batches : iterable of numpy.ndarray
        Input batches, each the size of a training batch (a batch's variance depends on its size).

    Returns
    -------
    int
        The number of batches read (0: the network has no trainable batch norm, or no batch was given).
    """
    layers = batch_norm_layers(network)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    n = 0
    try:
        for batch in batches:
            for layer in layers:
                layer.momentum = n / (n + 1)
            network(batch, training=True)
            n += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return n


def estimation_batches(n_windows: int, batch_size: int, max_windows: int, seed: int) -> list[np.ndarray]:
    """Indices of the training windows whose statistics :func:`reestimate_batch_norm` averages.

    Whole batches of ``batch_size`` windows drawn at random without replacement, at most
    ``max_windows`` in all (one batch of every window when there are fewer than ``batch_size``).

    Returns
    -------
    list of numpy.ndarray
        One array of window indices per batch.
    """
    if n_windows < 1 or batch_size < 1:
        return []
    order = np.random.default_rng(seed).permutation(n_windows)
    if n_windows < batch_size:
        return [order]
    n_batches = max(1, min(n_windows, max_windows) // batch_size)
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(n_batches)]
