"""The calibration result -> ncnn's own int8 model (``.param`` + ``.bin``), written by edgekit.

The ncnn / pnnx Python packages ship neither ``ncnn2table`` nor ``ncnn2int8``, so edgekit writes
ncnn's int8 format itself from the backend-neutral :class:`~edgekit.quant.result.CalibrationResult`:

    match_layers      ncnn layer name -> ONNX layer name, by weight *values* (pnnx renames everything)
    write_ncnn_int8   rewrite chosen Convolution / ConvolutionDepthWise / InnerProduct layers as int8
    emit_ncnn_int8    the glue: match, take the result's scales, write

Grouped convolutions stay float. A ConvolutionDepthWise whose groups have more than one output
channel (``group != num_output``) has one weight scale per group in the format, and ncnn's
optimised x86 path runs each group as a Convolution handed that single scale
(``src/layer/x86/convolutiondepthwise_x86.cpp``, the versions that could be read:
``weights[2] = weight_data_int8_scales.range(g, 1)``) while a Convolution reads one scale per
output channel. Measured on the installed ncnn 1.0.20261020, such a
layer's int8 output is garbage (or NaN) with the default packed layout, though exact with
packing off. True depthwise layers (one output per group) are unaffected and are quantised.

The file format itself (``.param`` lines, ``.bin`` blobs and flags, reading every layer's byte
span with ncnn's own loaders) lives in :mod:`edgekit.runtime.ncnn_format`; this module decides
what the int8 layers hold. From the ncnn sources (repository Tencent/ncnn):

- Convolution / ConvolutionDepthWise read ``int8_scale_term = pd.get(8, 0)``, ``num_output`` 0,
  ``bias_term`` 5, ``weight_data_size`` 6, ``group`` 7 (depthwise); InnerProduct reads ``num_output`` 0,
  ``bias_term`` 1, ``weight_data_size`` 2, ``int8_scale_term`` 8 (``load_param`` of each layer).
- ``Convolution::load_model`` (``src/layer/convolution.cpp``): ``weight_data = mb.load(weight_data_size, 0)``;
  if ``bias_term``: ``bias_data = mb.load(num_output, 1)``; if ``int8_scale_term``:
  ``weight_data_int8_scales = mb.load(num_output, 1)``, ``bottom_blob_int8_scales = mb.load(1, 1)``;
  if ``int8_scale_term > 100`` also ``top_blob_int8_scales = mb.load(1, 1)`` (requantised int8
  output, written where ncnn's own ``ncnn2int8`` would write it: :func:`requantize_pairs`).
  ``InnerProduct::load_model`` (``src/layer/innerproduct.cpp``) is the same.
  ``ConvolutionDepthWise::load_model`` (``src/layer/convolutiondepthwise.cpp``): with
  ``int8_scale_term == 1`` ``mb.load(group, 1)`` weight scales (one per *group*) then ``mb.load(1, 1)``;
  with ``== 2`` a single weight scale for all groups.
- The official tool (``tools/quantize/net_quantize.cpp``: ``quantize_convolution`` /
  ``quantize_innerproduct`` set ``int8_scale_term = 2``, ``quantize_convolutiondepthwise`` sets
  ``1`` and quantises group by group with ``weight_data_int8_scales.range(g, 1)``) writes through
  ``tools/modelwriter.h``: ``fwrite_weight_tag_data`` writes the int8 flag ``0x000D4B38``, the int8
  weights and zero padding to a 4-byte boundary; ``fwrite_weight_data`` writes the bias and then
  the weight scales and bottom-blob scale as raw float32 (no flag).
- Semantics (``src/layer/convolutiondepthwise.cpp``: ``float2int8``, ``forward_int8``): ncnn's
  scales are *multipliers*: ``q = clip(round(x * scale), -127, 127)`` (round half away from zero),
  and the int32 sum is dequantised as ``sum * 1 / (bottom_scale * weight_scale[c]) + bias[c]``.
  The ONNX-convention scales of the calibration result are step sizes (``x ≈ q * s``,
  ``s = absmax / 127``), so ``ncnn scale = 1 / s``.

Layers not turned into int8 are copied byte for byte (fp16-tagged or code-book blobs included).
The written pair is walked again with ncnn's loaders (``ncnn_format.read_ncnn_model``) before it is
renamed into place, so ncnn's own loader has accepted its layout.

Running the result needs ``opt.use_int8_inference = True`` (the binding's default; edgekit's
NcnnRunner turns it off for float models). With it off, ncnn 1.0.20261020 loads the int8 model
without complaint and returns NaN (measured).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import CalibrationError
from edgekit.quant.result import CalibrationResult, QuantLayer, bias_correction, int8_symmetric, quantize_weight
from edgekit.runtime.ncnn_format import (
    DYNAMIC_WEIGHT_ID,
    GROUP_ID,
    INT8_SCALE_TERM_ID,
    WEIGHT_PARAM_IDS,
    NcnnModel,
    ParamLayer,
    consumers,
    float32_blob,
    int8_weight_blob,
    read_ncnn_model,
    with_param,
)

#: the ``int8_scale_term`` value ncnn2int8 writes per layer type (``tools/quantize/net_quantize.cpp``):
#: 2 = one weight scale per output channel; depthwise 1 = one weight scale per group. ``+ 100``:
#: the layer requantises its output to int8 for the next int8 layer (see :func:`requantize_plan`)
INT8_SCALE_TERM = {"Convolution": 2, "ConvolutionDepthWise": 1, "InnerProduct": 2}
REQUANTIZE_OFFSET = 100
#: layer types whose int8 output ncnn2int8 requantises, and that read an int8 input without quantising it
REQUANTIZE_TYPES = ("Convolution", "ConvolutionDepthWise")
#: ONNX op type each ncnn layer type is matched against
ONNX_OP = {"Convolution": "Conv", "ConvolutionDepthWise": "Conv", "InnerProduct": "Gemm"}
#: weight value matching tolerances: fp32 blobs hold the ONNX values up to the BN-folding rounding
#: of two implementations; fp16 blobs are off by up to 2^-11 relative (and 2^-25 absolute when subnormal)
MATCH_TOLERANCE = {"float32": (1e-5, 1e-6), "float16": (1e-3, 1e-7)}


# --- matching ncnn layers to ONNX layers --------------------------------------------------------


def match_layers(param_path: str | Path, bin_path: str | Path, onnx_model: Any,
                 result: CalibrationResult) -> dict[str, str]:
    """ncnn layer name -> ``QuantLayer.name`` of the ONNX layer with the same weights.

    onnx_model: an ``onnx.ModelProto`` or the path of the fp32 ONNX file ``result`` was computed on.
    Every ncnn Convolution / ConvolutionDepthWise (and InnerProduct, against Gemm) is compared with
    the result's layers of the same weight size: values allclose (rtol 1e-5, atol 1e-6 for fp32
    blobs; 1e-3 / 1e-7 for fp16 blobs), in OIHW order (the same flattening in both). When several
    ONNX layers hold the same weights the biases decide, then graph order (both graphs are
    topologically sorted). ncnn layers without a match are absent from the mapping (they stay float;
    :func:`emit_ncnn_int8` reports them).
    """
    return _match(read_ncnn_model(param_path, bin_path), _load_onnx(onnx_model), result)


def _load_onnx(onnx_model: Any) -> Any:
    import onnx

    if isinstance(onnx_model, onnx.ModelProto):
        return onnx_model
    path = Path(onnx_model)
    if not path.is_file():
        raise CalibrationError(f"{path}: ONNX model not found")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf raises its own DecodeError
        raise CalibrationError(f"{path}: cannot read the ONNX model ({type(exc).__name__})") from None


@dataclass(frozen=True)
class _OnnxWeights:
    layer: QuantLayer
    weight: np.ndarray  # float32, flattened in ncnn order
    bias: np.ndarray | None


def _onnx_weights(onnx_model: Any, result: CalibrationResult) -> list[_OnnxWeights]:
    """The result's Conv / Gemm layers with their constant weights (and biases), in ONNX graph order."""
    from onnx import numpy_helper

    constants = {init.name: init for init in onnx_model.graph.initializer}
    for node in onnx_model.graph.node:
        if node.op_type == "Constant" and node.output:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                constants[node.output[0]] = value
    by_output = {node.output[0]: node for node in onnx_model.graph.node if node.output}
    order = {node.output[0]: index for index, node in enumerate(onnx_model.graph.node) if node.output}
    found = []
    for layer in sorted(result.layers, key=lambda q: order.get(q.output, len(order))):
        node = by_output.get(layer.output)
        if node is None or layer.op_type not in ("Conv", "Gemm") or node.op_type != layer.op_type:
            continue  # ConvTranspose: ncnn's Deconvolution stores its weights in another order; it stays float
        if layer.weight not in constants:
            raise CalibrationError(f"ONNX layer {layer.name!r}: its weight {layer.weight!r} is not a constant of the graph")
        weight = numpy_helper.to_array(constants[layer.weight]).astype(np.float32)
        if node.op_type == "Gemm" and next((a.i for a in node.attribute if a.name == "transB"), 0) == 0:
            weight = weight.T  # ncnn InnerProduct stores [num_output, num_input]
        bias = None
        if len(node.input) > 2 and node.input[2] in constants:
            bias = numpy_helper.to_array(constants[node.input[2]]).astype(np.float32).reshape(-1)
        found.append(_OnnxWeights(layer, np.ascontiguousarray(weight).reshape(-1), bias))
    return found


def _close(a: np.ndarray, b: np.ndarray, storage: str) -> bool:
    rtol, atol = MATCH_TOLERANCE.get(storage, MATCH_TOLERANCE["float32"])
    # a cheap look at the first values rejects almost every wrong pair before the full comparison
    return (a.shape == b.shape and np.allclose(a[:16], b[:16], rtol=rtol, atol=atol)
            and np.allclose(a, b, rtol=rtol, atol=atol))


def _match(model: NcnnModel, onnx_model: Any, result: CalibrationResult) -> dict[str, str]:
    candidates = _onnx_weights(onnx_model, result)
    taken: set[str] = set()
    mapping: dict[str, str] = {}
    for layer in model.quantizable_layers():
        blobs = model.blobs[layer.name]
        weight = blobs[0]
        if weight.storage not in MATCH_TOLERANCE:
            continue  # int8 or code-book weights: no longer the ONNX values
        bias_term = layer.get_int(WEIGHT_PARAM_IDS[layer.type][1], 0)
        bias = blobs[1].values if bias_term and len(blobs) > 1 else None
        same = [c for c in candidates if c.layer.name not in taken and c.layer.op_type == ONNX_OP[layer.type]
                and c.weight.size == weight.count and _close(weight.values, c.weight, weight.storage)]
        if len(same) > 1:
            # identical weights (e.g. two freshly initialised branches): the bias decides, then graph order
            by_bias = [c for c in same if _bias_matches(bias, c.bias)]
            same = by_bias or same
        if same:
            mapping[layer.name] = same[0].layer.name
            taken.add(same[0].layer.name)
    return mapping


def _bias_matches(ncnn_bias: np.ndarray | None, onnx_bias: np.ndarray | None) -> bool:
    if ncnn_bias is None or onnx_bias is None:
        # a missing bias on one side equals a zero bias on the other
        other = onnx_bias if ncnn_bias is None else ncnn_bias
        return other is None or not np.any(other)
    return _close(ncnn_bias, onnx_bias, "float32")


# --- writing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Int8Plan:
    """What one layer becomes: its int8 weights and ncnn-convention scales."""

    int8_scale_term: int
    weight_int8: np.ndarray      # int8 [weight_data_size], ncnn order
    weight_scales: np.ndarray    # float32 [num_output] (= [group] for depthwise), ncnn multipliers = 1 / s
    bottom_scale: np.float32     # ncnn multiplier = 1 / input_scale
    bias: np.ndarray | None = None  # float32 [num_output] written instead of the layer's bias (bias correction)
    top_scale: np.float32 | None = None  # requantised int8 output: the consumers' bottom multiplier


def grouped_reason(layer: ParamLayer) -> str | None:
    """Why ``layer`` cannot be int8 in ncnn because it is a grouped, non-depthwise convolution (else None)."""
    if layer.type != "ConvolutionDepthWise":
        return None
    group, num_output = layer.get_int(GROUP_ID, 1), layer.get_int(0, 0)
    if group == num_output:
        return None
    return (f"grouped convolution (group {group}, {num_output} outputs): ncnn keeps one int8 weight scale per "
            "group and its optimised kernels compute such layers wrongly; kept in float")


def _plan(model: NcnnModel, name: str, weight_scales: Any, input_scale: float,
          bias_shift: Any | None = None) -> _Int8Plan:
    layer = model.find(name)
    if layer is None:
        raise CalibrationError(f"{model.param_path.name}: no layer named {name!r} in the ncnn .param")
    where = f"{model.param_path.name}: layer {name!r} ({layer.type})"
    if layer.type not in INT8_SCALE_TERM:
        raise CalibrationError(f"{where}: only {', '.join(INT8_SCALE_TERM)} layers can be written in int8")
    if layer.get_int(DYNAMIC_WEIGHT_ID, 0) != 0:
        raise CalibrationError(f"{where}: its weights are a runtime input (dynamic_weight), nothing to quantise")
    if layer.get_int(INT8_SCALE_TERM_ID, 0) != 0:
        raise CalibrationError(f"{where}: already int8 (int8_scale_term {layer.get_int(INT8_SCALE_TERM_ID, 0)}); "
                               "start from the fp32 model")
    reason = grouped_reason(layer)
    if reason:
        raise CalibrationError(f"{where}: {reason}")
    num_id, bias_id, size_id = WEIGHT_PARAM_IDS[layer.type]
    num_output, bias_term, weight_size = layer.get_int(num_id, 0), layer.get_int(bias_id, 0), layer.get_int(size_id, 0)
    blobs = model.blobs[name]
    if num_output <= 0 or weight_size % num_output or len(blobs) != 1 + bool(bias_term) or blobs[0].count != weight_size:
        raise CalibrationError(f"{where}: weights do not have the layout the .param declares "
                               f"(num_output {num_output}, weight_data_size {weight_size}, {len(blobs)} blobs)")
    if blobs[0].storage == "int8":
        raise CalibrationError(f"{where}: its weights are already int8")
    scales = np.asarray(weight_scales, dtype=np.float64).reshape(-1)
    if scales.shape != (num_output,):
        raise CalibrationError(f"{where}: {scales.size} weight scales given, the layer has {num_output} output channels")
    if not np.all(np.isfinite(scales) & (scales > 0)):
        raise CalibrationError(f"{where}: weight scales must be finite and positive")
    input_scale = float(input_scale)
    if not (np.isfinite(input_scale) and input_scale > 0):
        raise CalibrationError(f"{where}: input scale {input_scale!r} must be finite and positive")
    # Convolution / InnerProduct: one scale per output channel; a depthwise layer: one per group,
    # and each group is one output channel (convolutiondepthwise.cpp: mb.load(group, 1))
    ncnn_scales = 1.0 / scales
    weights = blobs[0].values.reshape(num_output, -1)
    # the same int8 values as the other backends' Q/DQ weights: clip(round(W / s_c), -127, 127)
    weight_int8 = quantize_weight(weights, scales.astype(np.float32), axis=0).reshape(-1)
    bias = None
    if bias_shift is not None:  # the bias minus the mean shift of the rounded weights (result.bias_correction)
        shift = np.asarray(bias_shift, np.float64).reshape(-1)
        if shift.shape != (num_output,) or not np.all(np.isfinite(shift)):
            raise CalibrationError(f"{where}: bias correction needs {num_output} finite values, got {shift.size}")
        old = blobs[1].values.astype(np.float64).reshape(-1) if bias_term else np.zeros(num_output)
        bias = (old - shift).astype(np.float32)
    return _Int8Plan(INT8_SCALE_TERM[layer.type], weight_int8, ncnn_scales.astype(np.float32),
                     np.float32(1.0 / input_scale), bias)


def _render(model: NcnnModel, plans: Mapping[str, _Int8Plan]) -> tuple[str, bytes]:
    """The new .param text and .bin bytes: planned layers in int8, every other byte as it was."""
    lines = list(model.lines)
    chunks: list[bytes] = []
    for layer in model.layers:
        start, end = model.spans[layer.name]
        plan = plans.get(layer.name)
        if plan is None:
            chunks.append(model.data[start:end])
            continue
        blobs = model.blobs[layer.name]
        # Convolution::load_model order: weights (type 0), bias (type 1), then, because
        # int8_scale_term is set, the weight scales and the bottom blob scale (type 1, raw float32),
        # and with int8_scale_term > 100 the top blob scale (type 1)
        chunks.append(int8_weight_blob(plan.weight_int8))
        term = plan.int8_scale_term + (REQUANTIZE_OFFSET if plan.top_scale is not None else 0)
        line = with_param(model.lines[layer.line_index], INT8_SCALE_TERM_ID, term)
        if plan.bias is not None:
            chunks.append(float32_blob(plan.bias))
            line = with_param(line, WEIGHT_PARAM_IDS[layer.type][1], 1)  # bias_term (a bias-free layer gains one)
        elif len(blobs) > 1:
            chunks.append(model.data[blobs[1].offset:blobs[1].end])  # the bias, byte-identical
        chunks.append(float32_blob(plan.weight_scales))
        chunks.append(float32_blob([plan.bottom_scale]))
        if plan.top_scale is not None:
            chunks.append(float32_blob([plan.top_scale]))
        lines[layer.line_index] = line
    return "\n".join(lines) + "\n", b"".join(chunks)


def write_ncnn_int8(param_in: str | Path, bin_in: str | Path, param_out: str | Path, bin_out: str | Path,
                    layer_scales: Mapping[str, tuple[Any, ...]], requantize: bool = True) -> dict[str, Any]:
    """Write the fp32 ncnn model ``param_in`` / ``bin_in`` with the layers of ``layer_scales`` in int8.

    layer_scales: ncnn layer name -> (weight scales, input scale) in the ONNX convention (step sizes):
    weight scales float32 [num_output] = ``max|W_c| / 127`` per output channel, input scale
    ``absmax / 127`` of the layer's input tensor. They are written as ncnn multipliers (their
    reciprocals). Grouped (non-depthwise) convolutions are refused (see the module docstring).
    An optional third element, float [num_output], is subtracted from the layer's bias (bias
    correction, ``result.bias_correction``; a layer without a bias gets one).

    requantize: an int8 convolution whose output only int8 convolutions read (directly or through a
    Split) hands them int8 instead of float32 (:func:`requantize_pairs`).

    Every other layer, and each int8 layer's bias unless corrected, is copied byte for byte. Both files are written
    next to their destinations, walked again with ncnn's loaders, then renamed into place.
    Returns {"int8": [layer names in .param order], "requantized": {layer: [its int8 consumers]},
    "bin_bytes_in": int, "bin_bytes_out": int}.
    """
    model = read_ncnn_model(param_in, bin_in)
    return _write(model, Path(param_out), Path(bin_out), layer_scales, requantize)


def requantize_pairs(model: NcnnModel, int8_layers: Collection[str]) -> dict[str, list[str]]:
    """int8 layer -> the int8 layers reading its output, for every output ncnn can pass on in int8.

    ncnn's own rule (``tools/quantize/ncnn2int8.cpp`` ``fuse_requantize``): a Convolution /
    ConvolutionDepthWise followed by a Convolution / ConvolutionDepthWise with that single bottom,
    or by a Split all of whose tops go to such layers, gets ``int8_scale_term + 100`` and the
    consumer's bottom scale as its ``top_blob_int8_scales``. It then computes
    ``int8(activation(sum * dequant + bias) * top_scale)`` in one pass
    (``requantize_from_int32_to_int8``) and the consumer, seeing an 8-bit blob, skips its own
    quantisation. Only the activations a convolution fuses (``activation_type``: ReLU, LeakyReLU,
    Clip, Sigmoid, Mish, HardSwish) can sit in between; a separate activation layer (pnnx writes
    SiLU as a ``Swish`` layer: ncnn has no fused Swish) reads float32, so the pair is not formed.
    Here every consumer must be int8 too and, through a Split, all consumers must share one input
    scale (they read the same tensor, so a calibration gives them one).
    """
    int8 = set(int8_layers)
    readers = consumers(model.layers)
    by_name = {layer.name: layer for layer in model.layers}
    pairs: dict[str, list[str]] = {}
    for name in int8:
        layer = by_name[name]
        if layer.type not in REQUANTIZE_TYPES or len(layer.tops) != 1:
            continue
        direct = readers.get(layer.tops[0], [])
        if len(direct) != 1:
            continue
        final = [direct[0]]
        if direct[0].type == "Split":
            final = [reader for top in direct[0].tops for reader in readers.get(top, [])]
            if len(final) != len(direct[0].tops):
                continue  # a Split top nobody reads (an output) or read twice
        if final and all(c.name in int8 and c.type in REQUANTIZE_TYPES and len(c.bottoms) == 1 for c in final):
            pairs[name] = [c.name for c in final]
    return pairs


def _write(model: NcnnModel, param_out: Path, bin_out: Path,
           layer_scales: Mapping[str, tuple[Any, ...]], requantize: bool) -> dict[str, Any]:
    plans: dict[str, _Int8Plan] = {}
    for name, scales in layer_scales.items():
        try:
            weight_scales, input_scale, *shift = scales
        except (TypeError, ValueError):
            raise CalibrationError(f"layer {name!r}: scales must be a (weight scales, input scale) pair") from None
        if len(shift) > 1:
            raise CalibrationError(f"layer {name!r}: scales must be (weight scales, input scale[, bias shift])")
        plans[name] = _plan(model, name, weight_scales, input_scale, shift[0] if shift else None)
    pairs = requantize_pairs(model, plans) if requantize else {}
    for name, readers in list(pairs.items()):
        bottoms = {plans[reader].bottom_scale for reader in readers}
        if len(bottoms) != 1:
            del pairs[name]  # consumers of one tensor given different input scales: each quantises for itself
            continue
        plans[name] = replace(plans[name], top_scale=bottoms.pop())
    param_text, data = _render(model, plans)

    param_tmp = param_out.with_name(f".{param_out.name}.partial")
    bin_tmp = bin_out.with_name(f".{bin_out.name}.partial")
    try:
        param_out.parent.mkdir(parents=True, exist_ok=True)
        bin_out.parent.mkdir(parents=True, exist_ok=True)
        param_tmp.write_text(param_text, encoding="utf-8")
        bin_tmp.write_bytes(data)
        _check_written(read_ncnn_model(param_tmp, bin_tmp), plans)
        # the .bin first: a reader that finds the new .param finds its weights too
        os.replace(bin_tmp, bin_out)
        os.replace(param_tmp, param_out)
    finally:
        param_tmp.unlink(missing_ok=True)
        bin_tmp.unlink(missing_ok=True)
    return {"int8": [layer.name for layer in model.layers if layer.name in plans],
            "requantized": {name: pairs[name] for name in plans if name in pairs},
            "bin_bytes_in": len(model.data), "bin_bytes_out": len(data)}


def _check_written(written: NcnnModel, plans: Mapping[str, _Int8Plan]) -> None:
    """ncnn's loaders read the written pair as intended: int8 weights, then bias, weight and bottom (and top) scales."""
    for name, plan in plans.items():
        blobs = written.blobs[name]
        tail = 3 if plan.top_scale is not None else 2
        weight_scales, bottom = blobs[-tail], blobs[1 - tail]
        top_ok = plan.top_scale is None or (blobs[-1].count == 1 and blobs[-1].values[0] == plan.top_scale)
        if (blobs[0].storage != "int8" or not np.array_equal(blobs[0].values, plan.weight_int8)
                or weight_scales.count != plan.weight_scales.size or bottom.count != 1 or not top_ok):
            raise CalibrationError(f"ncnn int8 writer: layer {name!r} does not read back as written (internal error)")


# --- the glue -----------------------------------------------------------------------------------


def emit_ncnn_int8(fp32_param: str | Path, fp32_bin: str | Path, onnx_path: str | Path, result: CalibrationResult,
                   out_param: str | Path, out_bin: str | Path, requantize: bool = True) -> dict[str, Any]:
    """Write the int8 ncnn model for ``result`` (computed on the fp32 ONNX file ``onnx_path``).

    Every ncnn Convolution / ConvolutionDepthWise / InnerProduct matched to a layer of
    ``result.quantized_layers`` becomes int8 with that layer's weight scales and the input scale
    ``int8_symmetric(*result.activation_ranges[layer.input])``; the rest stay fp32: layers without
    an ONNX match, layers of ``result.float_layers`` and grouped (non-depthwise) convolutions.
    requantize: chain int8 outputs into int8 consumers where ncnn can (:func:`requantize_pairs`).
    Returns {"int8": [ncnn names], "float": {ncnn name: reason}, "onnx_layers": {ncnn name: ONNX name},
    "requantized": {ncnn name: [its int8 consumers]}, "onnx_unmatched": [ONNX layers with no ncnn
    counterpart], "bin_bytes_in", "bin_bytes_out"}.
    """
    onnx_path = Path(onnx_path)
    result.check_model(onnx_path)
    model = read_ncnn_model(fp32_param, fp32_bin)
    onnx_model = _load_onnx(onnx_path)
    mapping = _match(model, onnx_model, result)
    shifts = _bias_shifts(onnx_model, result)
    scales: dict[str, tuple] = {}
    float_reasons: dict[str, str] = {}
    for layer in model.quantizable_layers():
        onnx_name = mapping.get(layer.name)
        if onnx_name is None:
            float_reasons[layer.name] = "no ONNX layer of the calibration result has these weights"
            continue
        if onnx_name in result.float_layers:
            float_reasons[layer.name] = f"kept in float ({onnx_name}: {result.float_layers[onnx_name]})"
            continue
        reason = grouped_reason(layer)
        if reason:
            float_reasons[layer.name] = reason
            continue
        quant = result.layer(onnx_name)
        if quant.input not in result.activation_ranges:
            raise CalibrationError(f"calibration result has no activation range for {quant.input!r}, the input of "
                                   f"layer {onnx_name!r}")
        scales[layer.name] = (np.asarray(quant.weight_scales, np.float32),
                              int8_symmetric(*result.activation_ranges[quant.input]))
        if shifts.get(onnx_name) is not None:
            scales[layer.name] += (shifts[onnx_name],)
    summary = _write(model, Path(out_param), Path(out_bin), scales, requantize)
    matched = set(mapping.values())
    return {"int8": summary["int8"], "float": float_reasons,
            "onnx_layers": {name: mapping[name] for name in summary["int8"]},
            "requantized": summary["requantized"], "onnx_unmatched": [q.name for q in result.layers if q.name not in matched],
            "bin_bytes_in": summary["bin_bytes_in"], "bin_bytes_out": summary["bin_bytes_out"]}


def _bias_shifts(onnx_model: Any, result: CalibrationResult) -> dict[str, np.ndarray | None]:
    """ONNX layer name -> its bias correction (``result.bias_correction``; None where there is none)."""
    from onnx import numpy_helper

    from edgekit.quant.collect import layer_name

    initializers = {init.name: init for init in onnx_model.graph.initializer}
    groups = {layer_name(node, index): next((a.i for a in node.attribute if a.name == "group"), 1)
              for index, node in enumerate(onnx_model.graph.node)}
    shifts: dict[str, np.ndarray | None] = {}
    for quant in result.quantized_layers:
        if quant.weight in initializers and quant.input_mean:
            weight = numpy_helper.to_array(initializers[quant.weight])
            shifts[quant.name] = bias_correction(weight, np.asarray(quant.weight_scales, np.float32), quant.input_mean,
                                                 quant.op_type, groups.get(quant.name, 1))
    return shifts
