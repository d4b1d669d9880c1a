"""Training the network(s) of a model on windows streamed from the cube (Keras)."""

from __future__ import annotations

import numpy as np


def network_targets(arch, row: str, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which samples a network learns from, and its targets.

    A one-stage network learns (not call, classes) from every window; a detector the one-hot
    (not call, call) from every window; a classifier the classes of the call windows only.
    """
    if arch.two_stage and row == arch.detector_row:
        not_call = targets[:, :1]
        return np.ones(len(targets), bool), np.hstack([not_call, 1 - not_call]).astype(np.float32)
    if arch.two_stage:
        return targets[:, 0] < 0.5, targets[:, 1:]
    return np.ones(len(targets), bool), targets


def fit_networks(arch, networks, params_by_row, cube_path, train, validation, settings, progress):
    """Train each network of the model, streaming windows from the cube; their histories."""
    import keras

    from pipeline.model.registry import compile_network
    from pipeline.windows import WindowSequence

    histories = {}
    for row, network in networks.items():
        params = params_by_row[row]
        compile_network(network, params)
        use, y = network_targets(arch, row, train.targets)
        val_use, val_y = network_targets(arch, row, validation.targets)
        batch = int(params.get("batch_size", 320))
        data = WindowSequence(cube_path, (train.columns[use], y[use]), batch_size=batch, shuffle=True, seed=settings.seed)
        val = WindowSequence(cube_path, (validation.columns[val_use], val_y[val_use]), batch_size=batch, shuffle=False)
        stop = keras.callbacks.EarlyStopping(
            monitor="val_loss",
            patience=int(params.get("patience", 20)),
            min_delta=float(params.get("min_delta", 0.0)),
            restore_best_weights=True,
        )
        epochs = int(params.get("epochs", 200)) if settings.epochs is None else settings.epochs
        history = network.fit(
            data, validation_data=val if len(val) else None, epochs=epochs, callbacks=[stop] if len(val) else [],
            verbose=1 if progress else 0,
        )  # fmt: skip
        histories[row] = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    return histories
