"""The reference system's small CNNs (rows ``cnn_8``, ``cnn_2`` and ``cnn_7`` of ``params/networks.csv``).

One builder makes all three from a parameter row: ``conv_layers`` blocks of a ``kernel x
kernel`` convolution (``filters`` filters, same padding, ReLU) and a ``pool_size`` max-pool,
then one dropout, a flatten, ``dense_layers`` ReLU dense layers of ``dense_units`` each followed
by dropout, and the output layer. With the ``cnn_8`` row, 7 bat groups and the 130x20 patches::

    130x20x1 -> 65x10x48 -> 32x5x48 -> 16x2x48 -> flatten 1536 -> embedding 320 -> 8 sigmoid

which is 569,048 parameters. The last hidden dense layer is named ``"embedding"``: the hybrid
model's XGBoost reads its values. The model is returned uncompiled; training compiles it with
:func:`pipeline.model.registry.compile_network`.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
from keras import layers, regularizers

from pipeline.config import WINDOW_COLUMNS
from pipeline.model.params import ParamsError, check_required

#: The columns of a parameter row that :func:`build_cnn` reads (``l2`` is optional).
CNN_COLUMNS = (
    "conv_layers",
    "filters",
    "kernel",
    "pool_size",
    "dense_layers",
    "dense_units",
    "dropout_conv",
    "dropout_dense",
)

#: Output activations a head may have: independent per-class probabilities, or one choice.
HEAD_ACTIVATIONS = ("sigmoid", "softmax")

#: The model-ready patch: 130 frequency rows, 20 time columns, one channel.
PATCH_SHAPE = (130, WINDOW_COLUMNS, 1)


def check_head(n_outputs: int, activation: str) -> None:
    """Refuse an output layer that cannot be built or trained.

    Parameters
    ----------
    n_outputs : int
        Number of output units (at least 1; at least 2 for a softmax).
    activation : {"sigmoid", "softmax"}
        The output activation.

    Raises
    ------
    ValueError
        With one line saying what is wrong.
    """
    if activation not in HEAD_ACTIVATIONS:
        raise ValueError(f"output activation {activation!r} is not one of {HEAD_ACTIVATIONS}")
    if isinstance(n_outputs, bool) or not isinstance(n_outputs, int) or n_outputs < 1:
        raise ValueError(f"n_outputs must be a positive integer, not {n_outputs!r}")
    if activation == "softmax" and n_outputs < 2:
        raise ValueError("a softmax head needs at least 2 outputs")


def build_cnn(
    n_outputs: int,
    params: Mapping[str, int | float],
    *,
    activation: str = "sigmoid",
    input_shape: tuple[int, int, int] = PATCH_SHAPE,
    name: str = "cnn",
) -> keras.Model:
    """A small CNN scoring spectrogram patches.

    Parameters
    ----------
    n_outputs : int
        Output units: ``n_classes + 1`` ("not call" and the classes) for a one-stage network,
        ``n_classes`` for a two-stage classifier, 2 for a two-stage detector.
    params : Mapping
        A ``networks.csv`` row as :func:`pipeline.model.params.load_params` returns it; reads
        :data:`CNN_COLUMNS` and, when present, ``l2`` (L2 weight decay on every kernel) and
        ``time_padding``/``time_kernel``: with ``time_padding = "valid"`` each block is a
        ``pad_i`` zero padding along frequency only, a ``kernel x time_kernel`` convolution
        without padding along time and a pool that pools time only while at least
        ``pool_size`` columns remain (:func:`pipeline.model.dense_scoring.valid_time_blocks`),
        so that the network can score every window of a strip in one pass.
    activation : {"sigmoid", "softmax"}, default "sigmoid"
        The output activation: "softmax" for the two-stage detector.
    input_shape : tuple of int, default (130, 20, 1)
        One patch: frequency rows, time columns, channels.
    name : str, default "cnn"
        The model's name (the parameter row's, e.g. ``"cnn_8"``).

    Returns
    -------
    keras.Model
        Uncompiled, with layers ``conv_i``, ``pool_i``, ``dropout_conv``, ``flatten``,
        ``dense_i`` (all hidden dense layers but the last), ``embedding`` (the last),
        ``dropout_dense_i`` and ``output``.

    Raises
    ------
    ParamsError
        When ``params`` lacks a column, or when the convolution blocks pool the patch away.
    ValueError
        When the head is impossible (see :func:`check_head`).
    """
    check_head(n_outputs, activation)
    check_required(params, CNN_COLUMNS, needed_by=f"build_cnn ({name})")
    conv_layers, pool_size = int(params["conv_layers"]), int(params["pool_size"])
    valid_time = params.get("time_padding", "same") == "valid"
    if valid_time:
        from pipeline.model.dense_scoring import valid_time_blocks

        blocks = valid_time_blocks(params, input_shape, name=name)
    else:
        blocks = None
        rows, columns = input_shape[0], input_shape[1]
        for _ in range(conv_layers):
            rows, columns = rows // pool_size, columns // pool_size
        if rows < 1 or columns < 1:
            raise ParamsError(
                f"build_cnn ({name}): {conv_layers} conv blocks with pool_size {pool_size} leave "
                f"nothing of a {input_shape[0]}x{input_shape[1]} patch"
            )
    l2 = params.get("l2")

    def decay():
        return regularizers.L2(float(l2)) if l2 else None

    inputs = keras.Input(shape=tuple(input_shape), name="spectrogram")
    x = inputs
    for block in range(1, conv_layers + 1):
        if valid_time:  # same along frequency, valid along time: see pipeline.model.dense_scoring
            spec = blocks[block - 1]
            x = layers.ZeroPadding2D((spec.frequency_padding, (0, 0)), name=f"pad_{block}")(x)
            x = layers.Conv2D(
                int(params["filters"]),
                spec.kernel,
                padding="valid",
                activation="relu",
                kernel_regularizer=decay(),
                name=f"conv_{block}",
            )(x)
            x = layers.MaxPooling2D(spec.pool, name=f"pool_{block}")(x)
            continue
        x = layers.Conv2D(
            int(params["filters"]),
            int(params["kernel"]),
            padding="same",
            activation="relu",
            kernel_regularizer=decay(),
            name=f"conv_{block}",
        )(x)
        x = layers.MaxPooling2D(pool_size, name=f"pool_{block}")(x)
    x = layers.Dropout(float(params["dropout_conv"]), name="dropout_conv")(x)
    x = layers.Flatten(name="flatten")(x)
    dense_layers = int(params["dense_layers"])
    for dense in range(1, dense_layers + 1):
        x = layers.Dense(
            int(params["dense_units"]),
            activation="relu",
            kernel_regularizer=decay(),
            name="embedding" if dense == dense_layers else f"dense_{dense}",
        )(x)
        x = layers.Dropout(float(params["dropout_dense"]), name=f"dropout_dense_{dense}")(x)
    outputs = layers.Dense(
        n_outputs, activation=activation, kernel_regularizer=decay(), name="output"
    )(x)
    return keras.Model(inputs, outputs, name=name)
