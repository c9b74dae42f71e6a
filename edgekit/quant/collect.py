"""Calibration: run the fp32 ONNX graph on the calibration images and observe every quantisable layer.

The graph is the one the artifact ships (``model.onnx``: passes applied, BN folded), so the ranges
and weight scales are measured on exactly the tensors every emitter quantises. The graph runs with a summary of
every observed tensor (``observed_tensors``) computed inside it (``quant.observation``: OpenVINO when installed, else
ONNX Runtime), in ONE pass over the images for every method: each tensor's exact min/max and, when the observer
needs it, a histogram of a subsample of ``|x|`` that grows with the range (``observers.OnePassStats``).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.errors import CalibrationError
from edgekit.quant.observation import ObservationRun, observation_graph, split
from edgekit.quant.observers import DEFAULT_PERCENTILE, OnePassStats, make_observer, needs_histogram
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


def _graph_order(model: onnx.ModelProto, names: Iterable[str]) -> dict[str, int]:
    """Each tensor's position in the graph: graph inputs first, then by producing node (ONNX's node list is
    topologically sorted), so the first non-finite tensor in this order is where a NaN or infinity arose."""
    position = {value.name: -1 for value in model.graph.input}
    for index, node in enumerate(model.graph.node):
        position.update((output, index) for output in node.output)
    return {name: position.get(name, len(model.graph.node)) for name in names}


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
              progress: Callable[[Iterable, str], Iterable] | None = None) -> CalibrationResult:
    """Calibrate the fp32 ONNX graph at ``onnx_path``.

    tensors: returns a fresh iterable of float32 [1,3,H,W] inputs (the preprocessed calibration
    images); called once: every method observes in one pass (the exact range of every tensor and, for the
    clipping methods, a growing histogram of a subsample, ``OnePassStats``).
    Returns the backend-neutral CalibrationResult (nothing kept in float yet).
    """
    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path))
    layers = find_layers(model)
    if not layers:
        raise CalibrationError(f"{onnx_path.name}: no Conv layer with constant weights to quantise")
    observe = make_observer(method, percentile)
    input_name = model.graph.input[0].name
    names = observed_tensors(model, layers)
    order = _graph_order(model, names)  # a NaN or an infinity is reported where it first appears
    started = time.perf_counter()
    iterator = iter(tensors())
    first = next(iterator, None)
    if first is None:
        raise CalibrationError("calibration: the calibration source yielded no images")
    # bias correction needs each layer input's per-channel mean over the images
    observation = observation_graph(model, names, {layer.input for layer in layers}, needs_histogram(method),
                                    np.shape(first))
    run = ObservationRun(observation)
    one_pass = OnePassStats(len(names), observation.histogram)
    channel_sums, channel_counts = np.zeros(0, np.float64), np.zeros(0, np.int64)
    count = 0
    images: Iterable[np.ndarray] = itertools.chain([first], iterator)
    inputs = (np.ascontiguousarray(tensor, np.float32) for tensor in images)
    with closing(run.summaries(inputs)) as summaries:  # an error below stops the engine's requests at once
        # the bar counts the images observed, not the ones handed to the engine's ring of requests (up to its
        # length ahead of them)
        for summary in (progress(summaries, f"calibrate ({method})") if progress else summaries):
            samples = (split(summary.samples, summary.sample_sizes)
                       if summary.samples is not None and summary.sample_sizes is not None else None)
            bad = one_pass.observe(summary.minimum, summary.maximum, samples)
            # the tensors ReduceMin / ReduceMax may have hidden a NaN in: their means or sums carry it
            non_finite = {name for name, means in zip(observation.mean_names, split(summary.channel_means,
                                                                                    summary.channel_counts))
                          if not np.isfinite(means).all()}
            non_finite |= {name for name, check in zip(observation.check_names, summary.finite_checks)
                           if not np.isfinite(check)}
            non_finite |= {names[k] for k in np.flatnonzero(bad)}
            if non_finite:
                name = min(non_finite, key=order.__getitem__)
                raise CalibrationError(f"calibration: tensor {name!r} is not finite on calibration image {count}")
            if not np.isfinite(summary.output_sums).all():
                output = observation.output_names[int(np.flatnonzero(~np.isfinite(summary.output_sums))[0])]
                raise CalibrationError(f"calibration: model output {output!r} is not finite on calibration image "
                                       f"{count}")
            channel_sums = channel_sums + summary.channel_means if count else summary.channel_means.astype(np.float64)
            channel_counts = summary.channel_counts
            count += 1
    stats = dict(zip(names, one_pass.finish()))
    ranges = {}
    for name, tensor_stats in stats.items():
        # The network input (normalised pixels) has an exactly known range: never clip it.
        ranges[name] = (tensor_stats.lo, tensor_stats.hi) if name == input_name else observe(tensor_stats)
    ranges.update(derived_ranges(model, ranges))
    input_means = dict(zip(observation.mean_names, split(channel_sums / count, channel_counts)))
    layers = [replace(layer, input_mean=tuple(float(m) for m in input_means[layer.input]))
              if layer.input in input_means else layer for layer in layers]
    return CalibrationResult(model_sha256=file_sha256(onnx_path), method=method, num_images=num_images or count,
                             images_sha256=images_sha256, activation_ranges=ranges, layers=tuple(layers),
                             notes={"seconds": round(time.perf_counter() - started, 2), "observed_with": run.engine,
                                    **({"observation_fallback": run.fallback} if run.fallback else {}),
                                    **({"percentile": percentile} if method == "percentile" else {}),
                                    "observed_ranges": {n: [s.lo, s.hi] for n, s in sorted(stats.items())}})
