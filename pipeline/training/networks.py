"""Training the network(s) of a model on windows streamed from the cube (Keras)."""

from __future__ import annotations

import numpy as np

from pipeline.model.registry import compile_network
from pipeline.training.fine_tuning import fixed_layers


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


def fit_networks(arch, networks, params_by_row, cube_path, train, validation, settings, progress, *, new_layers=None):
    """Train each network of the model, streaming windows from the cube; their histories.

    ``new_layers`` (fine-tuning: network row -> names of the layers not taken from the parent)
    trains in two phases: first those layers alone, the others frozen, for at most
    ``settings.head_epochs`` epochs; then every layer at ``settings.fine_tune_rate`` times the
    row's learning rate. Early stopping on the validation windows in each phase.
    """
    histories = {}
    for row, network in networks.items():
        params = params_by_row[row]
        use, y = network_targets(arch, row, train.targets)
        val_use, val_y = network_targets(arch, row, validation.targets)
        masked = bool(np.isnan(y[use]).any() or np.isnan(val_y[val_use]).any())
        data = (train.columns[use], y[use]), (validation.columns[val_use], val_y[val_use])
        epochs = int(params.get("epochs", 200)) if settings.epochs is None else settings.epochs
        if new_layers is None:
            phases = [("all", None, 1.0, epochs)]
        else:
            head_epochs = min(int(settings.head_epochs), epochs)
            phases = [("new layers", set(new_layers[row]), 1.0, head_epochs),
                      ("all layers", None, float(settings.fine_tune_rate), epochs)]  # fmt: skip
        history: dict[str, list[float]] = {}
        fixed = fixed_layers(network)  # constants (a converted reference's frequency flip) stay constant
        for name, trained, rate_factor, phase_epochs in phases:
            for layer in network.layers:
                layer.trainable = (trained is None or layer.name in trained) and layer.name not in fixed
            compile_network(network, params, masked=masked, rate_factor=rate_factor)
            if progress and new_layers is not None:
                print(f"{row}: fine-tuning, {name}")
            for key, values in _fit(network, params, cube_path, data, phase_epochs, settings.seed, progress).items():
                history.setdefault(key, []).extend(values)
        histories[row] = history
    return histories


#: Training windows whose batch-norm statistics are averaged (:mod:`pipeline.training.batch_norm`).
BATCH_NORM_WINDOWS = 2048


def _fit(network, params, cube_path, data, epochs: int, seed: int, progress: bool) -> dict[str, list[float]]:
    """One ``network.fit`` with early stopping on the validation windows; its history.

    Besides Keras's keys, the history holds ``cpu_seconds`` and ``wall_seconds``: the time of
    each epoch's training steps (validation left out; CPU time of this process, all threads).
    A network with batch norm gets its statistics re-estimated on (at most
    :data:`BATCH_NORM_WINDOWS`) training windows before each validation pass
    (:mod:`pipeline.training.batch_norm`); ``batch_norm_cpu_seconds`` is the CPU time of
    each estimate.
    """
    import keras

    from pipeline.training.batch_norm import batch_norm_layers, estimation_batches
    from pipeline.training.callbacks import BatchNormEstimate, EpochClock
    from pipeline.windows import WindowSequence, read_windows

    (columns, targets), (val_columns, val_targets) = data
    batch = int(params.get("batch_size", 320))
    windows = WindowSequence(cube_path, (columns, targets), batch_size=batch, shuffle=True, seed=seed)
    validation = WindowSequence(cube_path, (val_columns, val_targets), batch_size=batch, shuffle=False)
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss",
        patience=int(params.get("patience", 20)),
        min_delta=float(params.get("min_delta", 0.0)),
        restore_best_weights=True,
    )
    clock = EpochClock()
    callbacks = [clock, stop] if len(validation) else [clock]
    estimate = None
    if batch_norm_layers(network):
        def read(indices):
            return read_windows(windows.spectrogram, columns[indices], windows.width)

        estimate = BatchNormEstimate(read, estimation_batches(len(columns), batch, BATCH_NORM_WINDOWS, seed))
        callbacks.append(estimate)
    history = network.fit(
        windows, validation_data=validation if len(validation) else None, epochs=epochs,
        callbacks=callbacks, verbose=1 if progress else 0,
    )  # fmt: skip
    timing = {**clock.seconds(), **({"batch_norm_cpu_seconds": estimate.cpu_seconds} if estimate else {})}
    return {**{k: [float(v) for v in vals] for k, vals in history.history.items()}, **timing}

