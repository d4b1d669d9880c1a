"""Exact dense scoring: every window of a strip of columns in one fully convolutional pass.

A CNN row with ``time_padding = "valid"`` (e.g. ``cnn_8_dense`` of ``params/networks.csv``)
pads its convolutions along frequency only (as Keras's ``same`` does) and not along time, so a
window's output depends on its own columns and never on zero padding at its time edges. Then
the outputs of all the windows of a strip of ``T`` columns are one convolutional pass over the
strip (*shift-and-stitch* made exact by dilation):

- a time pool of size ``p`` (stride ``p``) in the window becomes a pool of size ``p`` with
  stride 1 over the strip, and every later time operation is dilated by the product ``D`` of
  the time pools before it: a window starting at strip column ``s`` finds its value at
  (window-relative) time position ``j`` of any layer at strip position ``s + j * D``;
- the flatten and the first dense layer become one convolution whose kernel spans the last
  feature map (frequency x time x channels), dilated by ``D`` along time; the later dense layers
  are matrix products per column.

Each layer then costs per strip column what one stride-1 pass costs, instead of once per
window for every column: for ``cnn_8_dense`` 3.0 M multiply-adds per column against 15 M per
window (32 M for the reference system's ``cnn_8``); ``benchmarks/inference_speed.py`` measures them. The
pools' floors (a pool of 7 columns by 2 uses 6) need no care: positions the window drops are
never read. (Splitting the strip into phases at each time pool instead of dilating, an exact
alternative, measured slower in ONNX Runtime: 42 against 31 us per column.)

:func:`valid_time_blocks` is the geometry shared by the Keras builder
(:func:`pipeline.model.cnn.build_cnn`), the ONNX export (:mod:`pipeline.model.export`) and
:func:`strip_network` (the same pass in Keras, for measurements and tests). This module
imports Keras only inside :func:`strip_network`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pipeline.model.params import ParamsError


@dataclass(frozen=True)
class ConvBlock:
    """One convolution block of a CNN, as the window network computes it.

    Parameters
    ----------
    kernel : (int, int)
        Kernel size (frequency, time).
    frequency_padding, time_padding : (int, int)
        Zeros added before and after, along frequency and along time (``(0, 0)`` along time
        for a valid-time network).
    pool : (int, int)
        Max-pool size, equal to its stride (frequency, time).
    """

    kernel: tuple[int, int]
    frequency_padding: tuple[int, int]
    time_padding: tuple[int, int]
    pool: tuple[int, int]


def same_padding(kernel: int) -> tuple[int, int]:
    """Zeros before and after that Keras's ``same`` padding adds for a stride-1 kernel
    (the extra one after, for an even kernel)."""
    before = (int(kernel) - 1) // 2
    return before, int(kernel) - 1 - before


def valid_time_blocks(
    params: Mapping[str, object], input_shape: tuple[int, ...] = (130, 20, 1), *, name: str = "cnn"
) -> tuple[ConvBlock, ...]:
    """The convolution blocks of a valid-time CNN row.

    Each block is a ``kernel x time_kernel`` convolution, padded along frequency as Keras's
    ``same`` and not at all along time, then a max-pool of ``pool_size`` along frequency and,
    while at least ``pool_size`` columns remain, along time (else 1 along time).

    Parameters
    ----------
    params : Mapping
        A ``networks.csv`` row: ``conv_layers``, ``kernel``, ``pool_size`` and optionally
        ``time_kernel`` (default ``kernel``).
    input_shape : tuple of int
        One window: frequency rows, time columns (channels ignored).
    name : str
        The row, for messages.

    Returns
    -------
    tuple of ConvBlock

    Raises
    ------
    ParamsError
        When a convolution no longer fits in the columns left, or the pools leave no row.
    """
    kernel, pool = int(params["kernel"]), int(params["pool_size"])
    time_kernel = int(params.get("time_kernel", kernel))
    rows, columns = int(input_shape[0]), int(input_shape[1])
    blocks = []
    for block in range(1, int(params["conv_layers"]) + 1):
        if columns < time_kernel:
            raise ParamsError(
                f"build_cnn ({name}): block {block} has {columns} column(s) left for a time kernel "
                f"of {time_kernel} (time_padding = valid): use a smaller time_kernel or fewer conv_layers"
            )
        columns -= time_kernel - 1
        time_pool = pool if columns >= pool else 1
        rows, columns = rows // pool, columns // time_pool
        if rows < 1:
            raise ParamsError(
                f"build_cnn ({name}): {block} conv blocks with pool_size {pool} leave no frequency row "
                f"of a {input_shape[0]}-row window"
            )
        blocks.append(ConvBlock((kernel, time_kernel), same_padding(kernel), (0, 0), (pool, time_pool)))
    return tuple(blocks)


def strip_outputs(n_columns: int, width: int = 20) -> int:
    """Windows of ``width`` columns in a strip of ``n_columns``: what a strip pass scores."""
    return max(int(n_columns) - int(width) + 1, 0)


def strip_network(network, *, outputs: tuple[str, ...] = ("output", "embedding")):
    """The fully convolutional twin of a trained valid-time CNN, in Keras.

    Parameters
    ----------
    network : keras.Model
        Built by :func:`pipeline.model.cnn.build_cnn` from a ``time_padding = "valid"`` row.
    outputs : tuple of str
        Layers whose per-window values the twin returns, among ``"output"``, ``"embedding"``
        and ``dense_i``.

    Returns
    -------
    keras.Model
        Input ``(1, rows, T, 1)`` (a strip of ``T >= width`` columns); one output per name in
        ``outputs``, shape ``(1, T - span + 1, units)`` where ``span`` (at most the window
        width) is the columns a window's output reads: row ``s`` is the value for the window
        starting at strip column ``s``. The weights are the network's own (shared, not copied).

    Raises
    ------
    ValueError
        When the network pads along time (its windows cannot be scored exactly in one pass).
    """
    import keras
    from keras import layers

    plan = network_geometry(network)
    if not plan.valid_time:
        raise ValueError(
            f"{network.name} pads its windows along time: a strip pass would not equal scoring each "
            "window (use a row with time_padding = valid, e.g. cnn_8_dense)"
        )
    x = inputs = keras.Input(shape=(plan.rows, None, 1), name="strip")
    dilation = 1
    for i, block in enumerate(plan.blocks, start=1):
        conv = network.get_layer(f"conv_{i}")
        x = layers.ZeroPadding2D((block.frequency_padding, (0, 0)))(x)
        twin = layers.Conv2D(
            conv.filters, block.kernel, padding="valid", dilation_rate=(1, dilation), activation="relu"
        )
        x = twin(x)
        twin.set_weights(conv.get_weights())
        if block.pool[0] > 1:
            x = layers.MaxPooling2D((block.pool[0], 1))(x)
        if block.pool[1] > 1:
            shifted = [
                layers.Cropping2D(((0, 0), (k * dilation, (block.pool[1] - 1 - k) * dilation)))(x)
                for k in range(block.pool[1])
            ]
            x = layers.Maximum()(shifted)
            dilation *= block.pool[1]
    values = {}
    for j, dense_name in enumerate(plan.dense_layers):
        dense = network.get_layer(dense_name)
        weights, bias = dense.get_weights()
        activation = dense.get_config()["activation"]
        if j == 0:
            rows, columns, channels = plan.final_shape
            twin = layers.Conv2D(
                dense.units, (rows, columns), dilation_rate=(1, dilation), activation=activation
            )
            x = twin(x)
            twin.set_weights([weights.reshape(rows, columns, channels, dense.units), bias])
            x = layers.Reshape((-1, dense.units))(x)
        else:
            twin = layers.Dense(dense.units, activation=activation)
            x = twin(x)
            twin.set_weights([weights, bias])
        values[dense_name] = x
    missing = [name for name in outputs if name not in values]
    if missing:
        raise ValueError(f"{network.name} has no dense layer {', '.join(missing)}; it has {', '.join(values)}")
    return keras.Model(inputs, [values[name] for name in outputs], name=f"{network.name}_strip")


@dataclass(frozen=True)
class NetworkGeometry:
    """What a trained CNN computes, read from its layers (no weights).

    Parameters
    ----------
    rows, width : int
        A window's frequency rows and time columns.
    blocks : tuple of ConvBlock
    final_shape : (int, int, int)
        The last convolution block's output in one window: rows, columns, channels.
    dense_layers : tuple of str
        The dense layers in order: ``dense_i``..., ``embedding``, ``output``.
    valid_time : bool
        True when no block pads along time (the strip pass is exact).
    """

    rows: int
    width: int
    blocks: tuple[ConvBlock, ...]
    final_shape: tuple[int, int, int]
    dense_layers: tuple[str, ...]
    valid_time: bool

    @property
    def span(self) -> int:
        """Columns of a window that its output reads (the receptive field along time)."""
        span, dilation = 1, 1
        for block in self.blocks:
            span += (block.kernel[1] - 1) * dilation
            span += (block.pool[1] - 1) * dilation
            dilation *= block.pool[1]
        return span + (self.final_shape[1] - 1) * dilation

    @property
    def time_dilation(self) -> int:
        """The product of the time pools: the dilation of the first dense layer's kernel."""
        dilation = 1
        for block in self.blocks:
            dilation *= block.pool[1]
        return dilation


def network_geometry(network) -> NetworkGeometry:
    """The :class:`NetworkGeometry` of a network built by :func:`pipeline.model.cnn.build_cnn`.

    Raises
    ------
    ValueError
        When the network is not such a CNN (no ``conv_1``, a stride, a dilation).
    """
    names = [layer.name for layer in network.layers]
    if "conv_1" not in names:
        raise ValueError(f"{network.name} is not a CNN of pipeline.model.cnn (no layer conv_1)")
    _, rows, width, _ = network.input_shape
    blocks = []
    i = 1
    while f"conv_{i}" in names:
        conv = network.get_layer(f"conv_{i}").get_config()
        if tuple(conv["strides"]) != (1, 1) or tuple(conv["dilation_rate"]) != (1, 1):
            raise ValueError(f"{network.name}: conv_{i} has strides or dilation; cannot export it")
        kernel = tuple(int(k) for k in conv["kernel_size"])
        if conv["padding"] == "same":
            frequency_padding, time_padding = same_padding(kernel[0]), same_padding(kernel[1])
        else:
            frequency_padding, time_padding = (0, 0), (0, 0)
        if f"pad_{i}" in names:
            (top, bottom), (left, right) = network.get_layer(f"pad_{i}").get_config()["padding"]
            frequency_padding = (frequency_padding[0] + top, frequency_padding[1] + bottom)
            time_padding = (time_padding[0] + left, time_padding[1] + right)
        pool = network.get_layer(f"pool_{i}").get_config()
        if tuple(pool["strides"]) != tuple(pool["pool_size"]) or pool["padding"] != "valid":
            raise ValueError(f"{network.name}: pool_{i} is not a plain max-pool; cannot export it")
        blocks.append(ConvBlock(kernel, frequency_padding, time_padding, tuple(int(p) for p in pool["pool_size"])))
        i += 1
    final = network.get_layer(f"pool_{i - 1}").output.shape
    dense = [name for name in names if name.startswith("dense_") and not name.startswith("dense_dropout")]
    dense = [name for name in dense if network.get_layer(name).__class__.__name__ == "Dense"]
    return NetworkGeometry(
        rows=int(rows),
        width=int(width),
        blocks=tuple(blocks),
        final_shape=(int(final[1]), int(final[2]), int(final[3])),
        dense_layers=(*dense, "embedding", "output"),
        valid_time=all(block.time_padding == (0, 0) for block in blocks),
    )
