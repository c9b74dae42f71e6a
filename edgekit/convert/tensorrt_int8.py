"""TensorRT int8 from edgekit's one calibration result: the Q/DQ ONNX per parser, and a calibration cache.

Two ways TensorRT builds int8, both from the same :class:`~edgekit.quant.result.CalibrationResult`:

- **explicit** (every version; the only one on 11.x): the Q/DQ ONNX ``quant.qdq.write_qdq(…, "tensorrt")``
  writes (symmetric int8, zero point 0). Weights go in the form each parser reads: TensorRT >= 10 takes
  int8 initializers -> DequantizeLinear (the writer's form); TensorRT 8.x wants float weights ->
  QuantizeLinear -> DequantizeLinear, which :func:`float_weight_qdq` rewrites the graph to (the float
  weight is ``q * s`` exactly, so Q gives back ``q`` and both graphs compute the same numbers).
- **implicit** (a calibration cache, ``--calib``; DLA's int8 path on <= 10.x): TensorRT's own text format,
  one line per tensor TensorRT asks a scale for::

      TRT-8601-EntropyCalibration2
      images: 3c010204
      /model.0/conv/Conv_output_0: 3d8f1a2b

  the hex being the IEEE-754 bits of the float32 scale ``amax / 127`` printed as an 8-digit hex number
  (``struct.pack(">f", scale).hex()``), as TensorRT's calibrators write it and ONNX Runtime's TensorRT EP
  reads it back (``ReadDynamicRange``). TensorRT asks for every tensor of the parsed network: the graph
  input, every float node output, and every float initializer that becomes a constant *tensor* (not a
  Conv weight or bias, which TensorRT takes as weights). :func:`tensor_ranges` gives each one a range:
  the calibrated range where calibration observed it (every quantised layer's input and output), else the
  range interval arithmetic derives from its inputs (a superset of what the data can reach: Sigmoid of
  [lo, hi] is [σ(lo), σ(hi)], Concat the union, …), or a constant's own min/max.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.errors import ConversionError
from edgekit.quant.result import INT8_MAX, CalibrationResult

Range = tuple[float, float]
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
#: inputs TensorRT's ONNX parser takes as weights (not tensors): no cache line for them
_WEIGHT_INPUTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "BatchNormalization": (1, 2, 3, 4)}


# --- explicit: Q/DQ weights per parser ---------------------------------------------------------

def float_weight_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """TensorRT 8.x form of a Q/DQ graph: each int8 initializer -> DequantizeLinear becomes float -> Q -> DQ.

    The float initializer holds ``q * scale`` (per channel along the DQ's ``axis``): QuantizeLinear
    rounds it back to ``q`` exactly (|q| <= 127), so the graph computes what the int8 form computes.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    used = {n for node in graph.node for n in (*node.input, *node.output)} | set(inits)
    new_nodes, replaced = [], set()
    for node in graph.node:
        weight = node.input[0] if node.op_type == "DequantizeLinear" else None
        init = inits.get(weight) if weight else None
        if init is None or init.data_type != TensorProto.INT8:
            new_nodes.append(node)
            continue
        q = numpy_helper.to_array(init).astype(np.float32)
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:
            shape = [1] * q.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
        float_name = _fresh(f"{weight}_float", used)
        graph.initializer.append(numpy_helper.from_array((q * scale).astype(np.float32), float_name))
        q_out = _fresh(f"{weight}_requantized", used)
        quantize = helper.make_node("QuantizeLinear", [float_name, *node.input[1:]], [q_out],
                                    name=_fresh(f"{weight}_Q", used))
        if any(a.name == "axis" for a in node.attribute):
            quantize.attribute.append(helper.make_attribute("axis", axis))
        new_nodes.append(quantize)
        dq = onnx.NodeProto()
        dq.CopyFrom(node)
        dq.input[0] = q_out
        new_nodes.append(dq)
        replaced.add(weight)
    del graph.node[:]
    graph.node.extend(new_nodes)
    still_used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name not in replaced or i.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.checker.check_model(out)
    return out


def _fresh(base: str, used: set[str]) -> str:
    name, k = base, 1
    while name in used:
        name, k = f"{base}_{k}", k + 1
    used.add(name)
    return name


# --- implicit: the calibration cache -----------------------------------------------------------

def cache_tensors(model: onnx.ModelProto) -> list[str]:
    """The tensors TensorRT asks a scale for, in graph order: float graph inputs, float node outputs, and
    float initializers read as tensors (not Conv/ConvTranspose/BatchNormalization weights)."""
    types = _elem_types(model)
    inits = {i.name for i in model.graph.initializer}
    names: list[str] = []
    seen: set[str] = set()

    def add(name: str) -> None:
        if name and name not in seen and types.get(name) in FLOAT_TYPES:
            seen.add(name)
            names.append(name)

    for graph_input in model.graph.input:
        if graph_input.name not in inits:
            add(graph_input.name)
    for node in model.graph.node:
        weights = _WEIGHT_INPUTS.get(node.op_type, ())
        for k, name in enumerate(node.input):
            if name in inits and k not in weights:
                add(name)
        for name in node.output:
            add(name)
    return names


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # a graph ONNX cannot type has no cache either
        raise ConversionError(f"tensorrt calibration cache: ONNX shape inference failed ({str(exc)[:200]})") from None
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.input, *inferred.graph.output,
                                                            *inferred.graph.value_info)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    for node in model.graph.node:  # Constant nodes: their value's type
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    types[node.output[0]] = a.t.data_type
    return types


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x > -700 else 0.0


def _monotone(f: Callable[[float], float]) -> Callable[[list[Range], onnx.NodeProto], Range]:
    return lambda r, node: (f(r[0][0]), f(r[0][1]))


def _mul(a: Range, b: Range) -> Range:
    products = [a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1]]
    return min(products), max(products)


def _div(a: Range, b: Range) -> Range | None:
    if b[0] <= 0 <= b[1]:
        return None
    return _mul(a, (1.0 / b[1], 1.0 / b[0]))


def _union(ranges: list[Range]) -> Range:
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


def _attr(node: onnx.NodeProto, name: str, default: float) -> float:
    return next((a.f for a in node.attribute if a.name == name), default)


#: op -> how its output range follows from its float inputs' ranges (None = cannot say)
RANGE_RULES: dict[str, Callable[[list[Range], onnx.NodeProto], Range | None]] = {
    **{op: (lambda r, node: r[0]) for op in (
        "Identity", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split", "MaxPool",
        "Resize", "Upsample", "Gather", "GatherElements", "Expand", "Tile", "DepthToSpace", "SpaceToDepth",
        "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "ReduceMin", "Dropout",
        "TopK", "Cast")},
    "Concat": lambda r, node: _union(r),
    "Max": lambda r, node: (max(x[0] for x in r), max(x[1] for x in r)),
    "Min": lambda r, node: (min(x[0] for x in r), min(x[1] for x in r)),
    "Pad": lambda r, node: _union([r[0], (0.0, 0.0)]),
    "Relu": lambda r, node: (max(r[0][0], 0.0), max(r[0][1], 0.0)),
    "LeakyRelu": lambda r, node: (min(r[0][0], r[0][0] * _attr(node, "alpha", 0.01)), r[0][1]),
    "Sigmoid": _monotone(_sigmoid),
    "Tanh": _monotone(math.tanh),
    "Exp": _monotone(lambda x: math.exp(min(x, 80.0))),
    "Softmax": lambda r, node: (0.0, 1.0),
    "HardSigmoid": lambda r, node: (0.0, 1.0),
    "HardSwish": lambda r, node: (-0.375, max(r[0][1], 0.0)),
    "Clip": lambda r, node: (max(r[0][0], r[1][0] if len(r) > 1 and r[1] else _attr(node, "min", -math.inf)),
                             min(r[0][1], r[2][1] if len(r) > 2 and r[2] else _attr(node, "max", math.inf))),
    "Add": lambda r, node: (r[0][0] + r[1][0], r[0][1] + r[1][1]),
    "Sub": lambda r, node: (r[0][0] - r[1][1], r[0][1] - r[1][0]),
    "Mul": lambda r, node: _mul(r[0], r[1]),
    "Div": lambda r, node: _div(r[0], r[1]),
    "Neg": lambda r, node: (-r[0][1], -r[0][0]),
    "Abs": lambda r, node: (0.0 if r[0][0] <= 0 <= r[0][1] else min(abs(r[0][0]), abs(r[0][1])),
                            max(abs(r[0][0]), abs(r[0][1]))),
}


def tensor_ranges(model: onnx.ModelProto, result: CalibrationResult,
                  input_ranges: Mapping[str, Range] | None = None) -> tuple[dict[str, Range], list[str]]:
    """A range for every tensor of :func:`cache_tensors`: (ranges, tensors no range could be given for).

    Calibrated ranges come first; then ``input_ranges`` for graph inputs calibration did not observe (a
    graph input read only by Slice, as a Focus layer does: :func:`normalized_input_range`); constants get
    their own min/max; the rest follow :data:`RANGE_RULES` (and BatchNormalization's per-channel affine map)
    in graph order (a node's inputs are ranged before it).
    """
    wanted = cache_tensors(model)
    ranges: dict[str, Range] = {k: (float(lo), float(hi)) for k, (lo, hi) in (input_ranges or {}).items()}
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    constants[node.output[0]] = numpy_helper.to_array(a.t)
        elif node.op_type == "Identity" and node.input[0] in constants:  # torch's export shares equal constants so
            constants[node.output[0]] = constants[node.input[0]]
    for name, value in constants.items():
        if value.size and np.issubdtype(value.dtype, np.floating):
            ranges[name] = (float(value.min()), float(value.max()))
    ranges.update({k: (float(lo), float(hi)) for k, (lo, hi) in result.activation_ranges.items()})
    for node in model.graph.node:
        if all(o in ranges for o in node.output if o):
            continue
        if node.op_type in ("Conv", "ConvTranspose"):  # a layer kept out of calibration (grouped ConvTranspose)
            derived_conv = _conv_range(node, ranges.get(node.input[0]), constants)
            if derived_conv is not None:
                ranges[node.output[0]] = derived_conv
            continue
        if node.op_type == "BatchNormalization":
            derived_bn = _batch_norm_range(node, ranges.get(node.input[0]), constants)
            if derived_bn is not None:
                ranges[node.output[0]] = derived_bn
            continue
        rule = RANGE_RULES.get(node.op_type)
        inputs = [ranges.get(i) for i in node.input if i]
        if rule is None or not inputs or inputs[0] is None:
            continue
        float_inputs = [r for r in inputs if r is not None]
        try:
            derived = rule(float_inputs if node.op_type not in ("Clip",) else inputs, node)  # type: ignore[arg-type]
        except (IndexError, TypeError, OverflowError, ValueError):
            derived = None
        if derived is None or not all(math.isfinite(v) for v in derived):
            continue
        for output in node.output:
            if output and output not in ranges:
                ranges[output] = (float(derived[0]), float(derived[1]))
    missing = [name for name in wanted if name not in ranges]
    return {name: ranges[name] for name in wanted if name in ranges}, missing


def _batch_norm_range(node: onnx.NodeProto, x: Range | None, constants: Mapping[str, np.ndarray]) -> Range | None:
    """y_c = a_c x + b_c with a_c = gamma_c / sqrt(var_c + eps), b_c = beta_c - a_c mean_c: the union over channels."""
    if x is None or len(node.input) < 5 or not all(n in constants for n in node.input[1:5]):
        return None
    gamma, beta, mean, var = (constants[n].astype(np.float64).reshape(-1) for n in node.input[1:5])
    a = gamma / np.sqrt(var + _attr(node, "epsilon", 1e-5))
    b = beta - a * mean
    ends = np.stack([a * x[0] + b, a * x[1] + b])
    return float(ends.min()), float(ends.max())


def _conv_range(node: onnx.NodeProto, x: Range | None, constants: Mapping[str, np.ndarray]) -> Range | None:
    """|y_c| <= sum |W_c| * max|x| + |b_c| (every product of an output's sum, bounded): loose, but it holds."""
    if x is None or len(node.input) < 2 or node.input[1] not in constants:
        return None
    weight = np.abs(constants[node.input[1]].astype(np.float64))
    axis = 1 if node.op_type == "ConvTranspose" else 0
    per_channel = weight.sum(axis=tuple(a for a in range(weight.ndim) if a != axis))
    bias = np.abs(constants[node.input[2]].astype(np.float64)) if len(node.input) > 2 and node.input[2] in constants \
        else np.zeros(1)
    bound = float((per_channel.max() if per_channel.size else 0.0) * max(abs(x[0]), abs(x[1])) + bias.max())
    return -bound, bound


def normalized_input_range(scale: float, mean: tuple[float, ...], std: tuple[float, ...]) -> Range:
    """The range of a network input ``(pixel * scale - mean) / std`` over pixels 0..255, all channels."""
    ends = [(p * scale - m) / s for m, s in zip(mean, std) for p in (0.0, 255.0)]
    return float(min(ends)), float(max(ends))


def cache_scale(lo: float, hi: float) -> float:
    """TensorRT's symmetric scale ``amax / 127`` as float32 (a zero range gets the smallest normal float)."""
    amax = max(abs(lo), abs(hi))
    return float(np.float32(amax / INT8_MAX)) if amax > 0 else float(np.finfo(np.float32).tiny)


def write_calibration_cache(ranges: Mapping[str, Range], header: str) -> str:
    """The cache text: ``header`` then ``name: <8 hex digits of the float32 scale's bits>`` per tensor."""
    lines = [header]
    for name, (lo, hi) in ranges.items():
        if "\n" in name:
            raise ConversionError(f"tensorrt calibration cache: tensor name {name!r} cannot be written")
        lines.append(f"{name}: {struct.pack('>f', cache_scale(lo, hi)).hex()}")
    return "\n".join(lines) + "\n"


def read_calibration_cache(text: str) -> tuple[str, dict[str, float]]:
    """(header, tensor -> scale) of a cache; ConversionError naming the line when it is not that format.

    The name is everything before the last ``": "`` (ONNX names may hold colons)."""
    lines = text.splitlines()
    if not lines or not re.fullmatch(r"TRT-\d+-\w+", lines[0]):
        raise ConversionError("tensorrt calibration cache: first line is not a TRT-<version>-<algorithm> header")
    scales = {}
    for number, line in enumerate(lines[1:], start=2):
        name, sep, value = line.rpartition(": ")
        if not sep or len(value) != 8:
            raise ConversionError(f"tensorrt calibration cache line {number}: expected '<tensor>: <8 hex digits>'")
        try:
            scales[name] = struct.unpack(">f", bytes.fromhex(value))[0]
        except ValueError:
            raise ConversionError(f"tensorrt calibration cache line {number}: {value!r} is not hex") from None
    return lines[0], scales
