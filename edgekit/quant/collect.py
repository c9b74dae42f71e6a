"""Calibration: run the fp32 ONNX graph on the calibration images and observe every quantisable layer.

The graph is the one the artifact ships (``model.onnx``: passes applied, BN folded), so the ranges
and weight scales are measured on exactly the tensors every emitter quantises. ONNX Runtime runs
it with every observed tensor (``observed_tensors``) added as a graph output, in ONE pass over the
images for every method: each tensor's exact min/max and, when the observer needs it, a histogram
of a subsample of ``|x|`` that grows with the range (``observers.TensorStats.observe``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.errors import CalibrationError
from edgekit.quant.observers import DEFAULT_PERCENTILE, TensorStats, make_observer, needs_histogram
from edgekit.quant.result import CalibrationResult, QuantLayer, file_sha256, weight_scales

#: operators quantised in int8 (the layers that carry nearly all of a detector's arithmetic)
QUANTIZABLE_OPS = ("Conv", "ConvTranspose")

#: a callable returning a fresh iterator of float32 [1,3,H,W] network inputs (one pass each call)
TensorSource = Callable[[], Iterable[np.ndarray]]


def weight_axis(op_type: str) -> int:
    """The output-channel axis of a layer's weight: Conv [O, I/g, kh, kw] -> 0, ConvTranspose [I, O/g, kh, kw] -> 1."""
    return 1 if op_type == "ConvTranspose" else 0


def find_layers(model: onnx.ModelProto) -> list[QuantLayer]:
    """Every Conv / ConvTranspose whose weight is an initializer, with per-channel weight scales.

    ConvTranspose with groups > 1 is left in float (its output-channel axis is split by group).
    Layers are named by their ONNX node name (nodes without one get ``<op>_<index>``, which the
    Q/DQ writer uses the same way).
    """
    initializers = {init.name: init for init in model.graph.initializer}
    layers = []
    for index, node in enumerate(model.graph.node):
        if node.op_type not in QUANTIZABLE_OPS or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "ConvTranspose" and group != 1:
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        if weight.dtype != np.float32:
            continue
        scales = weight_scales(weight, axis=weight_axis(node.op_type))
        layers.append(QuantLayer(name=layer_name(node, index), op_type=node.op_type, input=node.input[0],
                                 output=node.output[0], weight=node.input[1],
                                 weight_scales=tuple(float(s) for s in scales)))
    return layers


#: ops whose outputs are observed besides the convs' inputs and outputs: the ones a placement may quantise
#: (ONNX Runtime's integer kernels, ``qdq.INTEGER_OPS`` and ``qdq.FUSED_ACTIVATIONS``); a Sigmoid's range follows from
#: its input's (``derived_ranges``)
OBSERVED_OPS = ("LeakyRelu", "AveragePool", "GlobalAveragePool", "Add", "Mul", "Concat", "Relu")


def observed_tensors(model: onnx.ModelProto, layers: list[QuantLayer]) -> list[str]:
    """The tensors calibration records a range for (sorted): every layer's input and output, and the output of
    each OBSERVED_OPS node whose inputs are all activations (a Mul by a constant is not quantised by any placement)
    unless it is a graph output."""
    constants = {init.name for init in model.graph.initializer}
    constants |= {o for node in model.graph.node if node.op_type == "Constant" for o in node.output}
    outputs = {o.name for o in model.graph.output}  # never quantised: the decoder reads them in float
    # a graph exported without constant folding (--no-passes) computes shapes at run time: a Concat of int64 shape
    # pieces is no activation (and an observation output declared float would not load)
    inferred = onnx.shape_inference.infer_shapes(model).graph
    elem_types = {info.name: info.type.tensor_type.elem_type for info in (*inferred.value_info, *inferred.output)}
    names = {name for layer in layers for name in (layer.input, layer.output)}
    names |= {node.output[0] for node in model.graph.node if node.op_type in OBSERVED_OPS and node.output
              and node.output[0] not in outputs and not any(i in constants for i in node.input)
              and elem_types.get(node.output[0], onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT}
    return sorted(names)


def layer_name(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


def _observation_session(model: onnx.ModelProto, tensor_names: list[str], optimize: bool = False):
    """An ONNX Runtime session returning ``tensor_names`` besides the model outputs.

    ``optimize``: ORT's basic graph optimisations (constant folding, redundant-node removal) are safe with every
    observed tensor kept as an output; the extended / layout levels fuse Conv + activation and reorder to NCHWc,
    which the extra outputs block or undo with a reorder per output (measured slower than no optimisation here).
    """
    import onnxruntime as ort

    observed = onnx.ModelProto()
    observed.CopyFrom(model)
    existing = {o.name for o in observed.graph.output}
    for name in tensor_names:
        if name not in existing:
            observed.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            existing.add(name)
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.log_severity_level = 3
    return ort.InferenceSession(observed.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def derived_ranges(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """Ranges that follow from others without observing: a Sigmoid is monotonic, so its output over an input
    range ``[lo, hi]`` is exactly ``[σ(lo), σ(hi)]`` (and an input clipped at ``T`` clips the output at ``σ(T)``)."""
    derived = {}
    for node in model.graph.node:
        if node.op_type == "Sigmoid" and node.input[0] in ranges and node.output[0] not in ranges:
            lo, hi = ranges[node.input[0]]
            derived[node.output[0]] = (_sigmoid(lo), _sigmoid(hi))
    return derived


def calibrate(onnx_path: str | Path, tensors: TensorSource, *, method: str = "entropy",
              percentile: float = DEFAULT_PERCENTILE, images_sha256: str = "", num_images: int | None = None,
              progress: Callable[[Iterable, str], Iterator] | None = None) -> CalibrationResult:
    """Calibrate the fp32 ONNX graph at ``onnx_path``.

    tensors: returns a fresh iterable of float32 [1,3,H,W] inputs (the preprocessed calibration
    images); called once: every method observes in one pass (the exact range of every tensor and, for the
    clipping methods, a growing histogram of a subsample, ``TensorStats.observe``).
    Returns the backend-neutral CalibrationResult (nothing kept in float yet).
    """
    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path))
    layers = find_layers(model)
    if not layers:
        raise CalibrationError(f"{onnx_path.name}: no Conv layer with constant weights to quantise")
    observe = make_observer(method, percentile)
    histogram = needs_histogram(method)
    input_name = model.graph.input[0].name
    names = observed_tensors(model, layers)
    session = _observation_session(model, names)
    stats = {name: TensorStats() for name in names}
    started = time.perf_counter()
    # per-channel sums of each layer input's mean over the images: for bias correction
    layer_inputs = {layer.input for layer in layers}
    channel_sums: dict[str, np.ndarray] = {}
    count = 0
    iterator: Iterable[np.ndarray] = tensors()
    if progress:
        iterator = progress(iterator, f"calibrate ({method})")
    for tensor in iterator:
        outputs = session.run(names, {input_name: np.ascontiguousarray(tensor, np.float32)})
        for name, value in zip(names, outputs):
            if not stats[name].observe(value, histogram):
                raise CalibrationError(f"calibration: tensor {name!r} is not finite on calibration image {count}")
            if name in layer_inputs and value.ndim >= 2:
                # sum over everything but the channel axis, as [C, N*H*W] rows (a contiguous reduction)
                rows = np.moveaxis(value, 1, 0).reshape(value.shape[1], -1)
                channel_sums[name] = channel_sums.get(name, 0.0) + rows.sum(axis=1, dtype=np.float64) / rows.shape[1]
        count += 1
    if count == 0:
        raise CalibrationError("calibration: the calibration source yielded no images")
    ranges = {}
    for name, tensor_stats in stats.items():
        tensor_stats.finish()
        # The network input (normalised pixels) has an exactly known range: never clip it.
        ranges[name] = (tensor_stats.lo, tensor_stats.hi) if name == input_name else observe(tensor_stats)
    ranges.update(derived_ranges(model, ranges))
    layers = [replace(layer, input_mean=tuple(float(m) for m in channel_sums[layer.input] / count))
              if layer.input in channel_sums else layer for layer in layers]
    return CalibrationResult(model_sha256=file_sha256(onnx_path), method=method, num_images=num_images or count,
                             images_sha256=images_sha256, activation_ranges=ranges, layers=tuple(layers),
                             notes={"seconds": round(time.perf_counter() - started, 2),
                                    **({"percentile": percentile} if method == "percentile" else {}),
                                    "observed_ranges": {n: [s.lo, s.hi] for n, s in sorted(stats.items())}})
