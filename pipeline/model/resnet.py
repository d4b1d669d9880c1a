"""ResNet50 for spectrogram patches (rows ``resnet_8``, ``resnet_2``, ``resnet_7``).

The standard ResNet50 (He et al., 2016): a 7x7 stride-2 convolution of 64 filters and a 3x3
stride-2 max-pool, then four stages of 3, 4, 6 and 3 bottleneck blocks of widths 64, 128, 256
and 512 (1x1 reduce, 3x3, 1x1 expand by 4; the stride of a stage sits on its first block's 3x3
convolution), batch normalisation after every convolution, a projection shortcut (1x1
convolution and batch norm) on the first block of each stage, and identity shortcuts
elsewhere. Randomly initialised (He normal), one input channel. Every convolution and pool
uses 'same' padding, so the small 130x20 patch survives the five halvings::

    130x20 -> 65x10 -> 33x5 -> 33x5 -> 17x3 -> 9x2 -> 5x1 (x 2048 channels)

A global average pool over what is left is the layer named ``"embedding"`` (2048 values,
the hybrid model's XGBoost features), followed by the dense output layer. L2 weight decay
(``l2``) applies to every kernel and to the output's bias. The model is returned uncompiled.

This is the network the reference system built (``resnet_helper.py`` of luciledierckx/batML),
from the same rows (its ``resnet_params.csv``: ``l2`` is its ``L2_weight_decay``,
``batch_norm_momentum`` its ``batch_norm_decay``): the same blocks and widths, He-normal
kernels without bias, the L2 penalty a ``kernel_regularizer`` of every convolution and of the
output's kernel and bias (a term of the loss, ``l2 * sum(w**2)`` per layer, not a decoupled
weight decay of the optimizer), batch norm with the row's momentum and epsilon. Where the
reference padded by hand (three rows and columns of zeros before a valid 7x7 stem, one
before a valid max-pool), 'same' padding gives the same shapes, the stem's grid offset by one
row and column. The two-stage detector's head is a softmax under categorical cross-entropy
(the reference put a sigmoid under a sparse categorical cross-entropy). What batml adds is
in training: the batch-norm statistics are re-estimated on training windows before each
validation pass and after training (:mod:`pipeline.training.batch_norm`), as the moving
averages lag far behind on a short training.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
from keras import layers, regularizers

from pipeline.model.cnn import PATCH_SHAPE, check_head
from pipeline.model.params import check_required

#: The columns of a parameter row that :func:`build_resnet` reads.
RESNET_COLUMNS = ("l2", "batch_norm_momentum", "batch_norm_epsilon")

#: ResNet50's stages: (bottleneck width, number of blocks, stride of the first block).
RESNET50_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))

#: Output channels of a bottleneck block per unit of its width.
EXPANSION = 4


class _Layers:
    """Makes the convolutions and batch norms of one network with its shared settings."""

    def __init__(self, params: Mapping[str, int | float]):
        self.l2 = float(params["l2"])
        self.momentum = float(params["batch_norm_momentum"])
        self.epsilon = float(params["batch_norm_epsilon"])

    def conv(self, filters: int, kernel: int, strides: int, name: str) -> layers.Conv2D:
        return layers.Conv2D(
            filters,
            kernel,
            strides=strides,
            padding="same",
            use_bias=False,  # the batch norm that follows has its own offset
            kernel_initializer="he_normal",
            kernel_regularizer=regularizers.L2(self.l2) if self.l2 else None,
            name=f"{name}_conv",
        )

    def norm(self, name: str) -> layers.BatchNormalization:
        return layers.BatchNormalization(
            momentum=self.momentum, epsilon=self.epsilon, name=f"{name}_bn"
        )


def _bottleneck(x, width: int, strides: int, project: bool, make: _Layers, name: str):
    """One bottleneck block; ``project`` gives it a 1x1 convolution on the shortcut."""
    shortcut = x
    if project:
        shortcut = make.conv(EXPANSION * width, 1, strides, f"{name}_shortcut")(x)
        shortcut = make.norm(f"{name}_shortcut")(shortcut)
    y = make.conv(width, 1, 1, f"{name}_reduce")(x)
    y = make.norm(f"{name}_reduce")(y)
    y = layers.ReLU(name=f"{name}_reduce_relu")(y)
    y = make.conv(width, 3, strides, f"{name}_spatial")(y)
    y = make.norm(f"{name}_spatial")(y)
    y = layers.ReLU(name=f"{name}_spatial_relu")(y)
    y = make.conv(EXPANSION * width, 1, 1, f"{name}_expand")(y)
    y = make.norm(f"{name}_expand")(y)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def build_resnet(
    n_outputs: int,
    params: Mapping[str, int | float],
    *,
    activation: str = "sigmoid",
    input_shape: tuple[int, int, int] = PATCH_SHAPE,
    name: str = "resnet50",
) -> keras.Model:
    """A ResNet50 scoring spectrogram patches.

    Parameters
    ----------
    n_outputs : int
        Output units: ``n_classes + 1`` ("not call" and the classes) for a one-stage network,
        ``n_classes`` for a two-stage classifier, 2 for a two-stage detector.
    params : Mapping
        A ``networks.csv`` row as :func:`pipeline.model.params.load_params` returns it; reads
        :data:`RESNET_COLUMNS`.
    activation : {"sigmoid", "softmax"}, default "sigmoid"
        The output activation: "softmax" for the two-stage detector.
    input_shape : tuple of int, default (130, 20, 1)
        One patch: frequency rows, time columns, channels.
    name : str, default "resnet50"
        The model's name (the parameter row's, e.g. ``"resnet_8"``).

    Returns
    -------
    keras.Model
        Uncompiled; its layer ``embedding`` is the 2048-value global average pool and
        ``output`` the head.

    Raises
    ------
    ParamsError
        When ``params`` lacks a column.
    ValueError
        When the head is impossible (see :func:`pipeline.model.cnn.check_head`).
    """
    check_head(n_outputs, activation)
    check_required(params, RESNET_COLUMNS, needed_by=f"build_resnet ({name})")
    make = _Layers(params)
    inputs = keras.Input(shape=tuple(input_shape), name="spectrogram")
    x = make.conv(64, 7, 2, "stem")(inputs)
    x = make.norm("stem")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, (width, blocks, strides) in enumerate(RESNET50_STAGES, start=2):
        for block in range(1, blocks + 1):
            first = block == 1
            x = _bottleneck(
                x,
                width,
                strides if first else 1,
                project=first,
                make=make,
                name=f"stage{stage}_block{block}",
            )
    x = layers.GlobalAveragePooling2D(name="embedding")(x)
    outputs = layers.Dense(
        n_outputs,
        activation=activation,
        kernel_regularizer=regularizers.L2(make.l2) if make.l2 else None,
        bias_regularizer=regularizers.L2(make.l2) if make.l2 else None,
        name="output",
    )(x)
    return keras.Model(inputs, outputs, name=name)
