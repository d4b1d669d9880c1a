"""A trained CNN as ONNX graphs that run without TensorFlow (:mod:`pipeline.model.runtime`).

The graphs are built directly from the Keras weights with the ``onnx`` package (no converter:
tf2onnx does not follow Keras 3), for the CNNs of :func:`pipeline.model.cnn.build_cnn`:

- :func:`window_graph`: the network as trained, ``windows (b, rows, width, 1) -> probabilities
  (b, K + 1), embedding (b, units)``; any CNN row (``same`` or ``valid`` along time);
- :func:`strip_graph`: the fully convolutional pass of a valid-time network
  (:mod:`pipeline.model.dense_scoring`), ``strip (rows, T) -> probabilities (T', K + 1),
  embedding (T', units)`` with ``T' = T - span + 1`` and row ``s`` the window starting at
  strip column ``s``;
- :func:`quantized_int8`: either graph with int8 weights and activations (ONNX Runtime's static
  quantization, QDQ, per-channel weights), calibrated on spectrogram columns the caller gives.

Both graphs are checked by ``onnx.checker`` and their outputs equal the Keras network's to float
tolerance (``tests/test_inference_runtime.py``). Files are written to a temporary name and
renamed (:func:`write_model`). This module needs the network object, not TensorFlow itself.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pipeline.model.dense_scoring import NetworkGeometry, network_geometry
from pipeline.model.reference import FLIP_LAYER, reversal

#: The ONNX opset the graphs use (MaxPool with dilations needs 10 or later).
OPSET = 17

#: Names of the graphs' inputs and outputs.
WINDOWS, STRIP, PROBABILITIES, EMBEDDING = "windows", "strip", "probabilities", "embedding"


class _Graph:
    """Nodes and initializers of one ONNX graph being built."""

    def __init__(self):
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def constant(self, stem: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(stem)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str | None = None, **attributes) -> str:
        from onnx import helper

        output = output or self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [output], name=self.name(op), **attributes))
        return output


def _conv_weights(layer) -> tuple[np.ndarray, np.ndarray]:
    """A Keras Conv2D's kernel (kh, kw, in, out) as ONNX's (out, in, kh, kw), and its bias."""
    kernel, bias = layer.get_weights()
    return kernel.transpose(3, 2, 0, 1).astype(np.float32), bias.astype(np.float32)


def _activation(graph: _Graph, x: str, activation: str, axis: int, output: str | None = None) -> str:
    if activation == "relu":
        return graph.node("Relu", [x], output)
    if activation == "sigmoid":
        return graph.node("Sigmoid", [x], output)
    if activation == "softmax":
        return graph.node("Softmax", [x], output, axis=axis)
    if activation == "linear":
        return graph.node("Identity", [x], output)
    raise ValueError(f"activation {activation!r} cannot be exported")


def _dense_head(graph: _Graph, network, plan: NetworkGeometry, x: str, first_done: bool) -> None:
    """The dense layers after the first (``x``: ``(n, units)``), naming the outputs."""
    for j, name in enumerate(plan.dense_layers):
        if j == 0 and first_done:
            continue
        layer = network.get_layer(name)
        weights, bias = (w.astype(np.float32) for w in layer.get_weights())
        x = graph.node("Gemm", [x, graph.constant(f"{name}_w", weights), graph.constant(f"{name}_b", bias)])
        output = EMBEDDING if name == "embedding" else PROBABILITIES if name == "output" else None
        x = _activation(graph, x, layer.get_config()["activation"], 1, output)


def _model(graph: _Graph, name: str, inputs: list, outputs: list, metadata: dict | None = None):
    from onnx import checker, helper

    model = helper.make_model(
        helper.make_graph(graph.nodes, name, inputs, outputs, graph.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="batml",
    )
    helper.set_model_props(model, {key: str(value) for key, value in (metadata or {}).items()})
    model.ir_version = min(model.ir_version, 9)  # what every ONNX Runtime of the last years reads
    checker.check_model(model)
    return model


def window_graph(network):
    """The network as an ONNX graph scoring windows.

    Parameters
    ----------
    network : keras.Model
        A CNN of :func:`pipeline.model.cnn.build_cnn` (any row).

    Returns
    -------
    onnx.ModelProto
        Input ``windows`` float32 ``(b, rows, width, 1)``; outputs ``probabilities``
        ``(b, n_outputs)`` (the network's head) and ``embedding`` ``(b, units)``.

    Raises
    ------
    ValueError
        When the network has layers the graph would not rebuild (:func:`export_refusal`).
    """
    from onnx import TensorProto, helper

    _refuse_unexportable(network)
    plan = network_geometry(network)
    graph = _Graph()
    x = graph.node("Transpose", [WINDOWS], perm=[0, 3, 1, 2])
    x = _frequency_flip(graph, network, plan, x, axis=2)
    for i, block in enumerate(plan.blocks, start=1):
        weights, bias = _conv_weights(network.get_layer(f"conv_{i}"))
        pads = [block.frequency_padding[0], block.time_padding[0], block.frequency_padding[1], block.time_padding[1]]
        x = graph.node("Conv", [x, graph.constant(f"conv_{i}_w", weights), graph.constant(f"conv_{i}_b", bias)],
                       kernel_shape=list(block.kernel), pads=pads)  # fmt: skip
        x = graph.node("Relu", [x])
        if block.pool != (1, 1):
            x = graph.node("MaxPool", [x], kernel_shape=list(block.pool), strides=list(block.pool))
    rows, columns, channels = plan.final_shape
    x = graph.node("Transpose", [x], perm=[0, 2, 3, 1])  # Keras flattens (rows, columns, channels)
    x = graph.node("Reshape", [x, graph.constant("flat", np.array([-1, rows * columns * channels], np.int64))])
    _dense_head(graph, network, plan, x, first_done=False)
    n_out, units = network.output_shape[-1], network.get_layer("embedding").units
    return _model(
        graph,
        f"{network.name}_windows",
        [helper.make_tensor_value_info(WINDOWS, TensorProto.FLOAT, ["batch", plan.rows, plan.width, 1])],
        [
            helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["batch", n_out]),
            helper.make_tensor_value_info(EMBEDDING, TensorProto.FLOAT, ["batch", units]),
        ],
    )


def strip_strides(network) -> tuple[int, ...]:
    """The strides :func:`strip_graph` can score a strip at: 1 and the products of the leading
    time pools (1, 2, 4 for ``cnn_8_dense``), where skipping windows saves work exactly."""
    strides, step = [1], 1
    for block in network_geometry(network).blocks:
        if block.pool[1] == 1:
            break
        step *= block.pool[1]
        strides.append(step)
    return tuple(strides)


def strip_graph(network, stride: int = 1):
    """The fully convolutional pass of a valid-time network as an ONNX graph.

    Parameters
    ----------
    network : keras.Model
        A CNN built from a ``time_padding = "valid"`` row (e.g. ``cnn_8_dense``).
    stride : int, default 1
        Score the windows starting at every ``stride``-th column only (one of
        :func:`strip_strides`): the time pools up to it keep their stride, so the layers after
        them run on ``1/stride`` of the columns (the coarse grid of
        :class:`pipeline.detection.scoring.Scan`, exactly). Stored in the graph's metadata as ``stride``.

    Returns
    -------
    onnx.ModelProto
        Input ``strip`` float32 ``(rows, T)`` (frequency, time), ``T`` at least the network's
        :attr:`~pipeline.model.dense_scoring.NetworkGeometry.span`; outputs ``probabilities``
        ``(T - span + 1, n_outputs)`` and ``embedding`` ``(T - span + 1, units)``, row ``s``
        for the window starting at strip column ``s`` (at ``stride * s`` with a stride, and
        ``ceil((T - span + 1) / stride)`` rows).

    Raises
    ------
    ValueError
        When the network pads along time, or ``stride`` is not one of :func:`strip_strides`, or
        it has layers the graph would not rebuild (:func:`export_refusal`).
    """
    from onnx import TensorProto, helper

    _refuse_unexportable(network)
    plan = network_geometry(network)
    if not plan.valid_time:
        raise ValueError(
            f"{network.name} pads its windows along time: no exact strip pass (use a row with "
            "time_padding = valid, e.g. cnn_8_dense)"
        )
    if int(stride) not in strip_strides(network):
        raise ValueError(f"{network.name}: stride {stride} is not one of {strip_strides(network)}")
    graph = _Graph()
    x = graph.node("Reshape", [STRIP, graph.constant("nchw", np.array([1, 1, plan.rows, -1], np.int64))])
    x = _frequency_flip(graph, network, plan, x, axis=2)
    # The map holds every `step`-th strip column; a window's time position j of the current layer
    # lies `spacing` = (product of the time pools so far) strip columns after position j - 1,
    # that is `spacing // step` map columns: the dilation of the next time kernel.
    step, spacing = 1, 1
    for i, block in enumerate(plan.blocks, start=1):
        weights, bias = _conv_weights(network.get_layer(f"conv_{i}"))
        pads = [block.frequency_padding[0], 0, block.frequency_padding[1], 0]
        x = graph.node("Conv", [x, graph.constant(f"conv_{i}_w", weights), graph.constant(f"conv_{i}_b", bias)],
                       kernel_shape=list(block.kernel), pads=pads, dilations=[1, spacing // step])  # fmt: skip
        x = graph.node("Relu", [x])
        time_stride = block.pool[1] if step == spacing and step * block.pool[1] <= int(stride) else 1
        if block.pool != (1, 1):
            x = graph.node("MaxPool", [x], kernel_shape=list(block.pool), strides=[block.pool[0], time_stride],
                           dilations=[1, spacing // step])  # fmt: skip
        step *= time_stride
        spacing *= block.pool[1]
    dilation = spacing // step
    rows, columns, channels = plan.final_shape
    first = network.get_layer(plan.dense_layers[0])
    weights, bias = (w.astype(np.float32) for w in first.get_weights())
    kernel = weights.reshape(rows, columns, channels, first.units).transpose(3, 2, 0, 1)
    x = graph.node("Conv", [x, graph.constant("dense_w", kernel), graph.constant("dense_b", bias)],
                   kernel_shape=[rows, columns], dilations=[1, dilation])  # fmt: skip
    x = graph.node("Reshape", [x, graph.constant("units", np.array([first.units, -1], np.int64))])
    x = graph.node("Transpose", [x], perm=[1, 0])
    output = EMBEDDING if plan.dense_layers[0] == "embedding" else None
    x = _activation(graph, x, first.get_config()["activation"], 1, output)
    _dense_head(graph, network, plan, x, first_done=True)
    n_out, units = network.output_shape[-1], network.get_layer("embedding").units
    return _model(
        graph,
        f"{network.name}_strip" + (f"_stride{stride}" if stride != 1 else ""),
        [helper.make_tensor_value_info(STRIP, TensorProto.FLOAT, [plan.rows, "columns"])],
        [
            helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["windows", n_out]),
            helper.make_tensor_value_info(EMBEDDING, TensorProto.FLOAT, ["windows", units]),
        ],
        {"stride": int(stride), "width": plan.width},
    )


#: Layer classes of :func:`pipeline.model.cnn.build_cnn` networks, the ones the graphs reproduce.
EXPORTABLE_LAYERS = ("InputLayer", "ZeroPadding2D", "Conv2D", "MaxPooling2D", "Dropout", "Flatten", "Dense")


def export_refusal(network) -> str | None:
    """Why a network cannot be exported to the graphs of this module (None: it can).

    The graphs rebuild the CNNs of :func:`pipeline.model.cnn.build_cnn` layer by layer, plus the
    frequency reversal the converted reference networks begin with (:func:`has_frequency_flip`);
    any other layer (a ResNet's batch normalisation...) or a convolution whose activation is not
    ReLU would be silently dropped: such networks are refused, and detection runs them in Keras.
    """
    if not hasattr(network, "layers") or not hasattr(network, "get_layer"):
        return f"{type(network).__name__} is not a Keras network"
    try:
        flip = has_frequency_flip(network)
    except ValueError as exc:
        return str(exc)
    layers = [layer for layer in network.layers if not (flip and layer.name in FLIP_LAYERS)]
    other = sorted({type(layer).__name__ for layer in layers} - set(EXPORTABLE_LAYERS))
    if other:
        return f"{network.name} has layers the ONNX export does not rebuild ({', '.join(other)})"
    for layer in network.layers:
        if type(layer).__name__ == "Conv2D" and layer.get_config().get("activation") != "relu":
            return f"{network.name}: {layer.name} is not followed by a ReLU"
    try:
        network_geometry(network)
        network.get_layer("embedding")
    except ValueError as exc:
        return str(exc)
    return None


#: The layers of the converted reference networks' frequency reversal
#: (:func:`pipeline.model.reference.reference_network`): a Permute, a constant Dense, a Permute.
FLIP_LAYERS = (f"{FLIP_LAYER}_in", FLIP_LAYER, f"{FLIP_LAYER}_out")


def has_frequency_flip(network) -> bool:
    """Whether the network begins by reversing its windows' frequency axis (a converted reference
    network, or one fine-tuned from it), with the flip layers exactly a reversal."""
    names = [layer.name for layer in network.layers]
    if not any(name in names for name in FLIP_LAYERS):
        return False
    flip = network.get_layer(FLIP_LAYER) if FLIP_LAYER in names else None
    if not all(name in names for name in FLIP_LAYERS) or flip.get_config().get("use_bias", True):
        raise ValueError(f"{network.name}: its frequency flip is incomplete")
    (weights,) = flip.get_weights()
    if not np.array_equal(weights, reversal(weights.shape[0])):
        raise ValueError(f"{network.name}: its {FLIP_LAYERS[1]} layer is not a reversal")
    dims = tuple(tuple(network.get_layer(name).get_config()["dims"]) for name in (FLIP_LAYERS[0], FLIP_LAYERS[2]))
    if dims != ((2, 3, 1), (3, 1, 2)):
        raise ValueError(f"{network.name}: its frequency flip does not act on the frequency axis")
    return True


def _frequency_flip(graph: _Graph, network, plan: NetworkGeometry, x: str, axis: int) -> str:
    """``x`` with its frequency axis reversed where the network does so (:func:`has_frequency_flip`)."""
    if not has_frequency_flip(network):
        return x
    order = graph.constant("frequency_reversal", np.arange(plan.rows - 1, -1, -1, dtype=np.int64))
    return graph.node("Gather", [x, order], axis=axis)


def _refuse_unexportable(network) -> None:
    """Raise :func:`export_refusal`'s reason as a ValueError, rather than build a graph that
    leaves a layer out."""
    refusal = export_refusal(network)
    if refusal:
        raise ValueError(refusal)


#: The name of a runtime graph in a bundle: ``windows`` (:func:`window_graph`) or ``strip<k>``
#: (:func:`strip_graph` at stride ``k``).
WINDOW_VARIANT = "windows"


def strip_variant(stride: int) -> str:
    """The variant name of the strip graph of a stride (``strip1``, ``strip4``...)."""
    return f"strip{int(stride)}"


def runtime_graphs(network) -> dict:
    """Every float graph detection can use for a network: ``{variant: onnx.ModelProto}``.

    ``windows`` for any exportable CNN; for a valid-time one also ``strip<k>`` for each stride
    of :func:`strip_strides` (the coarse grid of the scan, and stride 1 for its refinement).

    Raises
    ------
    ValueError
        When the network cannot be exported (:func:`export_refusal`).
    """
    _refuse_unexportable(network)
    graphs = {WINDOW_VARIANT: window_graph(network)}
    if network_geometry(network).valid_time:
        for stride in strip_strides(network):
            graphs[strip_variant(stride)] = strip_graph(network, stride)
    return graphs


def _layer_nodes(model, output: str) -> list[str]:
    """The nodes computing a graph output from the last Gemm or Conv before it (that layer, its
    reshapes and its activation)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    names, node = [], producers[output]
    while True:
        names.append(node.name)
        if node.op_type in ("Gemm", "Conv", "MatMul") or node.input[0] not in producers:
            return names
        node = producers[node.input[0]]


def quantized_int8(
    model,
    calibration: Iterable[np.ndarray],
    *,
    per_channel: bool = True,
    float_embedding: bool = False,
):
    """An ONNX graph with int8 weights and activations (static quantization, QDQ format).

    Parameters
    ----------
    model : onnx.ModelProto
        From :func:`window_graph` or :func:`strip_graph`.
    calibration : iterable of numpy.ndarray
        Inputs of the graph (windows batches or strips), all of one shape, whose activations'
        histograms set the scales: real spectrogram columns of the kind the model will see (a
        few thousand windows).
    per_channel : bool
        One weight scale per output channel (better accuracy; what VNNI kernels run).

    Returns
    -------
    onnx.ModelProto
        Activations uint8, weights int8 (the u8 x s8 products of AVX-512 VNNI). The ranges are
        the 99.999th percentiles of the calibration activations, not their extremes: the
        spectrogram is heavy-tailed (median 0.0018, 99.9th percentile 1.3, maximum 7.8 on a
        simulated archive), and min-max scales left most inputs at zero (embedding error 31 %
        against 12 %). The output layer (the last dense layer and its activation) stays float, so
        the probabilities stay continuous: quantized to 1/255 steps, equal neighbours merge the
        low peaks of the call score and the events change (a 0.026 AP loss on a small model,
        against 0.003 with a float head, ``benchmarks/inference_speed.py``). The
        ``probabilities`` and ``embedding`` outputs are float32. With ``float_embedding`` the
        layer computing the embedding stays float too (only the convolutions are int8): a
        hybrid's boosters split on embedding values, and int8 steps there move their trees'
        decisions (``pipeline.training.precision`` tries both).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    input_name = model.graph.input[0].name
    head = _layer_nodes(model, PROBABILITIES)  # the output layer stays float
    if float_embedding:
        head += _layer_nodes(model, EMBEDDING)

    class _Reader(CalibrationDataReader):
        def __init__(self, arrays):
            self._arrays = iter(arrays)

        def get_next(self):
            array = next(self._arrays, None)
            return None if array is None else {input_name: np.asarray(array, np.float32)}

    with tempfile.TemporaryDirectory(prefix="batml-quantize-") as tmp, _quiet_quantizer(), contextlib.redirect_stdout(
        io.StringIO()  # the calibrator prints its tensors and bins
    ):
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, source)
        quantize_static(
            str(source), str(target), _Reader(calibration), quant_format=QuantFormat.QDQ,
            per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=head, calibrate_method=CalibrationMethod.Percentile,
        )  # fmt: skip
        quantized = onnx.load(target)
    onnx.helper.set_model_props(quantized, {prop.key: prop.value for prop in model.metadata_props})
    return quantized


class _QuantizerAdvice(logging.Filter):
    """Drops ONNX Runtime's quantizer advice ("consider pre-processing"), logged on the root logger."""

    def filter(self, record) -> bool:
        return "onnxruntime" not in record.pathname.replace("\\", "/")


@contextlib.contextmanager
def _quiet_quantizer():
    root, advice = logging.getLogger(), _QuantizerAdvice()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def write_model(model, path: str | os.PathLike) -> Path:
    """Write an ONNX graph to ``path`` through a temporary name in the same folder (atomic)."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
