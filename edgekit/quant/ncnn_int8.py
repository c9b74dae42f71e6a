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

The format, as read from the ncnn sources (repository Tencent/ncnn):

- ``.param`` (text): ``7767517``, then ``layer_count blob_count``, then one line per layer
  ``type name n_bottoms n_tops bottoms… tops… key=value…``; keys ``<= -23300`` are arrays
  ``-233xx=n,v1,…,vn`` for id ``xx``; a value is a float when it contains ``.`` or ``e``
  (``src/paramdict.cpp``: ``vstr_is_float``). Convolution / ConvolutionDepthWise read
  ``int8_scale_term = pd.get(8, 0)``, ``num_output`` 0, ``bias_term`` 5, ``weight_data_size`` 6,
  ``group`` 7 (depthwise); InnerProduct reads ``num_output`` 0, ``bias_term`` 1, ``weight_data_size`` 2,
  ``int8_scale_term`` 8 (``src/layer/convolution.cpp``, ``convolutiondepthwise.cpp``,
  ``innerproduct.cpp``: ``load_param``).
- ``.bin``: no header or index; every layer, in ``.param`` order, reads its data through
  ``ModelBin::load(w, type)`` (the walk below relies on that order; its consuming exactly the
  whole file, for every model in the tests, confirms it). In
  ``src/modelbin.cpp`` (``ModelBinFromDataReader::load``): type 1 is ``w`` raw little-endian
  float32 with no flag; type 0 first reads a 4-byte flag: ``0x01306B47`` = fp16 data padded to
  4 bytes (``alignSize(w * 2, 4)``), ``0x000D4B38`` = int8 data padded to 4 bytes
  (``alignSize(w, 4)``), ``0x0002C056`` = raw float32, any other non-zero flag = a 256-float
  code book followed by ``alignSize(w, 4)`` uint8 indices, flag 0 = raw float32.
- ``Convolution::load_model`` (``src/layer/convolution.cpp``): ``weight_data = mb.load(weight_data_size, 0)``;
  if ``bias_term``: ``bias_data = mb.load(num_output, 1)``; if ``int8_scale_term``:
  ``weight_data_int8_scales = mb.load(num_output, 1)``, ``bottom_blob_int8_scales = mb.load(1, 1)``;
  if ``int8_scale_term > 100`` also ``top_blob_int8_scales = mb.load(1, 1)`` (requantised int8
  output; not written here: every int8 layer dequantises its output to float32).
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

How the layers are found in the ``.bin``: rather than re-implementing every layer type's
``load_model``, edgekit runs ncnn's own ``load_param`` + ``load_model`` for each layer (the ncnn
Python binding) against a recording ``ModelBin`` that serves the file's bytes with the
``modelbin.cpp`` rules above. That gives every layer's exact byte span and blob list, for any
layer type the installed ncnn knows; a ``.bin`` that is truncated, too long or from another
``.param`` is refused with one CalibrationError. Layers not turned into int8 are copied
byte for byte (fp16-tagged or code-book blobs included). The written pair is walked again the
same way before it is renamed into place, so ncnn's own loader has accepted its layout.

Running the result needs ``opt.use_int8_inference = True`` (the binding's default; edgekit's
NcnnRunner turns it off for float models). With it off, ncnn 1.0.20261020 loads the int8 model
without complaint and returns NaN (measured).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import CalibrationError
from edgekit.quant.result import CalibrationResult, QuantLayer, bias_correction, int8_symmetric, quantize_weight

PARAM_MAGIC = "7767517"
#: ``src/modelbin.cpp`` type-0 flags (read as a native little-endian uint32)
FP16_TAG = 0x01306B47
INT8_TAG = 0x000D4B38
RAW_SCALED_TAG = 0x0002C056
#: the ``int8_scale_term`` value ncnn2int8 writes per layer type (``tools/quantize/net_quantize.cpp``):
#: 2 = one weight scale per output channel; depthwise 1 = one weight scale per group
INT8_SCALE_TERM = {"Convolution": 2, "ConvolutionDepthWise": 1, "InnerProduct": 2}
#: param ids (num_output, bias_term, weight_data_size) per layer type (``load_param`` of each layer)
_SHAPE_IDS = {"Convolution": (0, 5, 6), "ConvolutionDepthWise": (0, 5, 6), "InnerProduct": (0, 1, 2)}
INT8_SCALE_TERM_ID = 8
GROUP_ID = 7
#: ONNX op type each ncnn layer type is matched against
ONNX_OP = {"Convolution": "Conv", "ConvolutionDepthWise": "Conv", "InnerProduct": "Gemm"}
#: weight value matching tolerances: fp32 blobs hold the ONNX values up to the BN-folding rounding
#: of two implementations; fp16 blobs are off by up to 2^-11 relative (and 2^-25 absolute when subnormal)
MATCH_TOLERANCE = {"float32": (1e-5, 1e-6), "float16": (1e-3, 1e-7)}


# --- the model: .param lines and .bin layout ---------------------------------------------------


@dataclass(frozen=True)
class ParamLayer:
    """One layer line of a ``.param`` file.

    line_index: its index in ``NcnnModel.lines``. params: key -> value text as written
    (array keys are the negative ``-233xx`` ids, values ``n,v1,…``).
    """

    line_index: int
    type: str
    name: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: dict[int, str]

    def get_int(self, key: int, default: int) -> int:
        text = self.params.get(key)
        if text is None:
            return default
        try:
            return int(float(text)) if _is_float(text) else int(text)
        except ValueError:
            raise CalibrationError(f"ncnn layer {self.name!r} ({self.type}): param {key}={text!r} is not a number") from None


@dataclass(frozen=True)
class StoredBlob:
    """One ``ModelBin::load(count, type)`` of a layer: bytes ``[offset, end)`` of the ``.bin``.

    storage: "float32" (type 1, or type 0 with flag 0), "float32-scaled" (flag 0x0002C056),
    "float16", "int8" or "codebook" (256-entry table + uint8 indices).
    values: the decoded data, float32 [count].
    """

    offset: int
    end: int
    count: int
    storage: str
    values: np.ndarray


@dataclass
class NcnnModel:
    """A parsed ``.param`` with the byte layout of its ``.bin`` (see :func:`read_ncnn_model`)."""

    param_path: Path
    bin_path: Path
    lines: list[str]
    layers: list[ParamLayer]
    blobs: dict[str, list[StoredBlob]]
    spans: dict[str, tuple[int, int]]
    data: bytes

    def layer(self, name: str) -> ParamLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise CalibrationError(f"{self.param_path.name}: no layer named {name!r} in the ncnn .param")

    def quantizable_layers(self) -> list[ParamLayer]:
        """Convolution / ConvolutionDepthWise / InnerProduct layers with stored (not dynamic) weights."""
        return [layer for layer in self.layers
                if layer.type in INT8_SCALE_TERM and layer.get_int(19, 0) == 0 and self.blobs[layer.name]]


def read_ncnn_model(param_path: str | Path, bin_path: str | Path) -> NcnnModel:
    """Parse ``param_path`` and locate every layer's data in ``bin_path`` with ncnn's own loaders.

    Raises CalibrationError naming the file (and layer) when either file is malformed, the ``.bin``
    is truncated or has bytes no layer reads, or a layer type is unknown to the installed ncnn.
    """
    param_path, bin_path = Path(param_path), Path(bin_path)
    for path, what in ((param_path, ".param"), (bin_path, ".bin")):
        if not path.is_file():
            raise CalibrationError(f"{path}: ncnn {what} file not found")
    lines, layers = _parse_param(param_path)
    data = bin_path.read_bytes()
    blobs, spans = _walk_bin(layers, data, param_path, bin_path)
    return NcnnModel(param_path, bin_path, lines, layers, blobs, spans, data)


def _is_float(text: str) -> bool:
    # src/paramdict.cpp vstr_is_float: a '.' or an 'e' makes the value a float
    return "." in text or "e" in text.lower()


def _is_string(text: str) -> bool:
    # src/paramdict.cpp vstr_is_string: starts with a letter or a quote
    return bool(text) and (text[0].isalpha() or text[0] == '"')


def _parse_param(path: Path) -> tuple[list[str], list[ParamLayer]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise CalibrationError(f"{path}: not a text ncnn .param (binary .param.bin files are not supported)") from None
    if not lines or lines[0].strip() != PARAM_MAGIC:
        raise CalibrationError(f"{path}: not an ncnn .param (expected the magic {PARAM_MAGIC} on the first line)")
    header = lines[1].split() if len(lines) > 1 else []
    if len(header) != 2 or not all(field.isdigit() for field in header):
        raise CalibrationError(f"{path}: line 2 must be 'layer_count blob_count', got {lines[1] if len(lines) > 1 else ''!r}")
    layers: list[ParamLayer] = []
    for index in range(2, len(lines)):
        fields = lines[index].split()
        if not fields:
            continue
        try:
            n_bottoms, n_tops = int(fields[2]), int(fields[3])
        except (IndexError, ValueError):
            raise CalibrationError(f"{path}: line {index + 1} is not a layer line (type name bottoms tops …)") from None
        blobs_end = 4 + n_bottoms + n_tops
        if n_bottoms < 0 or n_tops < 0 or len(fields) < blobs_end:
            raise CalibrationError(f"{path}: line {index + 1} lists fewer blobs than it declares")
        params: dict[int, str] = {}
        for token in fields[blobs_end:]:
            key, sep, value = token.partition("=")
            try:
                params[int(key)] = value
            except ValueError:
                raise CalibrationError(f"{path}: line {index + 1}: {token!r} is not a key=value parameter") from None
            if not sep:
                raise CalibrationError(f"{path}: line {index + 1}: {token!r} is not a key=value parameter")
        layers.append(ParamLayer(index, fields[0], fields[1], tuple(fields[4:4 + n_bottoms]),
                                 tuple(fields[4 + n_bottoms:blobs_end]), params))
    if len(layers) != int(header[0]):
        raise CalibrationError(f"{path}: declares {header[0]} layers but lists {len(layers)}")
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise CalibrationError(f"{path}: layer name {duplicate!r} appears twice")
    return lines, layers


def _param_dict(layer: ParamLayer, path: Path) -> Any:
    """The layer's parameters as an ``ncnn.ParamDict``, typed the way ``src/paramdict.cpp`` types them."""
    import ncnn

    pd = ncnn.ParamDict()
    for key, text in layer.params.items():
        try:
            if key <= -23300:
                count_text, *items = text.split(",")
                if int(count_text) != len(items):
                    raise ValueError("array length")
                # ints keep their bit pattern in the Mat (ncnn stores both kinds in 4-byte slots)
                words = [np.float32(float(item)).view(np.int32) if _is_float(item) else np.int32(int(item)) for item in items]
                pd.set(-key - 23300, ncnn.Mat(np.asarray(words, np.int32)).clone() if words else ncnn.Mat())
            elif _is_string(text):
                continue  # string params (shape expressions) cannot be set through the binding; they carry no weights
            elif _is_float(text):
                pd.set(key, float(text))
            else:
                pd.set(key, int(text))
        except ValueError:
            raise CalibrationError(f"{path}: layer {layer.name!r} ({layer.type}): param {key}={text!r} is malformed") from None
    return pd


def _align4(size: int) -> int:
    return (size + 3) & ~3


class _BinReader:
    """Serves ``ModelBin::load(w, type)`` from the file bytes by the ``src/modelbin.cpp`` rules, recording each blob."""

    def __init__(self, data: bytes, offset: int) -> None:
        self.data = data
        self.offset = offset
        self.blobs: list[StoredBlob] = []
        self.error: str | None = None

    def take(self, size: int, what: str) -> bytes:
        if self.offset + size > len(self.data):
            raise _Truncated(f"needs {size} bytes of {what} at offset {self.offset}, the file ends at {len(self.data)}")
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        return chunk

    def load(self, count: int, load_type: int) -> StoredBlob:
        start = self.offset
        if count < 0:
            raise _Truncated(f"asks for {count} elements")
        if load_type == 1:  # raw float32, no flag
            values, storage = np.frombuffer(self.take(4 * count, "float32 data"), "<f4"), "float32"
        elif load_type == 0:
            flag = self.take(4, "the 4-byte weight flag")
            tag = int.from_bytes(flag, "little")
            if tag == FP16_TAG:
                raw = self.take(_align4(2 * count), "fp16 data")
                values, storage = np.frombuffer(raw[:2 * count], "<f2"), "float16"
            elif tag == INT8_TAG:
                raw = self.take(_align4(count), "int8 data")
                values, storage = np.frombuffer(raw[:count], np.int8), "int8"
            elif tag == RAW_SCALED_TAG:
                values, storage = np.frombuffer(self.take(4 * count, "float32 data"), "<f4"), "float32-scaled"
            elif sum(flag) != 0:  # quantised: 256-float code book + uint8 indices
                table = np.frombuffer(self.take(256 * 4, "code book"), "<f4")
                indices = np.frombuffer(self.take(_align4(count), "code book indices")[:count], np.uint8)
                values, storage = table[indices], "codebook"
            else:
                values, storage = np.frombuffer(self.take(4 * count, "float32 data"), "<f4"), "float32"
        else:
            raise _Truncated(f"asks for ModelBin load type {load_type}, which ncnn does not implement")
        blob = StoredBlob(start, self.offset, int(count), storage, values.astype(np.float32))
        self.blobs.append(blob)
        return blob


class _Truncated(Exception):
    pass


def _recording_model_bin(reader: _BinReader) -> Any:
    import ncnn

    class RecordingModelBin(ncnn.ModelBin):
        def __init__(self) -> None:
            ncnn.ModelBin.__init__(self)

        def load(self, w: int, type: int) -> Any:  # noqa: A002 - ncnn's own argument names
            if reader.error is not None:
                return ncnn.Mat()
            try:
                blob = reader.load(int(w), int(type))
            except _Truncated as exc:
                reader.error = str(exc)
                return ncnn.Mat()  # the layer's load_model then fails with -100
            # the layer's load_model may compute with the data (BatchNorm does): give it an owned copy
            return ncnn.Mat(np.ascontiguousarray(blob.values)).clone() if blob.count else ncnn.Mat()

    return RecordingModelBin()


def _walk_bin(layers: Sequence[ParamLayer], data: bytes, param_path: Path,
              bin_path: Path) -> tuple[dict[str, list[StoredBlob]], dict[str, tuple[int, int]]]:
    """Each layer's blobs and byte span, from ncnn's own ``load_param`` + ``load_model`` of every layer."""
    from edgekit.runtime.backends.ncnn import NcnnRunner

    NcnnRunner.require()
    import ncnn

    blobs: dict[str, list[StoredBlob]] = {}
    spans: dict[str, tuple[int, int]] = {}
    offset = 0
    for layer in layers:
        op = ncnn.create_layer(layer.type)
        if op is None:
            raise CalibrationError(f"{param_path.name}: layer {layer.name!r} has type {layer.type!r}, which the "
                                   "installed ncnn does not know")
        code = op.load_param(_param_dict(layer, param_path))
        if code != 0:
            raise CalibrationError(f"{param_path.name}: ncnn rejects the parameters of layer {layer.name!r} "
                                   f"({layer.type}, load_param returned {code})")
        reader = _BinReader(data, offset)
        code = op.load_model(_recording_model_bin(reader))
        if reader.error is not None:
            raise CalibrationError(f"{bin_path.name}: truncated or not the weights of {param_path.name}: layer "
                                   f"{layer.name!r} ({layer.type}) {reader.error}")
        if code != 0:
            raise CalibrationError(f"{bin_path.name}: ncnn cannot load the weights of layer {layer.name!r} "
                                   f"({layer.type}, load_model returned {code})")
        blobs[layer.name] = reader.blobs
        spans[layer.name] = (offset, reader.offset)
        offset = reader.offset
    if offset != len(data):
        raise CalibrationError(f"{bin_path.name}: {len(data) - offset} bytes after the last layer's weights "
                               f"(the layers of {param_path.name} read {offset} of {len(data)}): the .bin belongs "
                               "to another .param")
    return blobs, spans


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
        bias_term = layer.get_int(_SHAPE_IDS[layer.type][1], 0)
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
    layer = model.layer(name)
    where = f"{model.param_path.name}: layer {name!r} ({layer.type})"
    if layer.type not in INT8_SCALE_TERM:
        raise CalibrationError(f"{where}: only {', '.join(INT8_SCALE_TERM)} layers can be written in int8")
    if layer.get_int(19, 0) != 0:
        raise CalibrationError(f"{where}: its weights are a runtime input (dynamic_weight), nothing to quantise")
    if layer.get_int(INT8_SCALE_TERM_ID, 0) != 0:
        raise CalibrationError(f"{where}: already int8 (int8_scale_term {layer.get_int(INT8_SCALE_TERM_ID, 0)}); "
                               "start from the fp32 model")
    reason = grouped_reason(layer)
    if reason:
        raise CalibrationError(f"{where}: {reason}")
    num_id, bias_id, size_id = _SHAPE_IDS[layer.type]
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


def _int8_weight_blob(weight_int8: np.ndarray) -> bytes:
    """tools/modelwriter.h fwrite_weight_tag_data: int8 flag, the int8 values, zero padding to 4 bytes."""
    payload = weight_int8.astype(np.int8).tobytes()
    return INT8_TAG.to_bytes(4, "little") + payload + bytes(_align4(len(payload)) - len(payload))


def _with_param(line: str, key: int, value: int) -> str:
    """``line`` with ``key=value`` set (replacing an existing ``key=`` token), everything else as written."""
    pieces = re.split(r"(\s+)", line)
    words = [i for i, piece in enumerate(pieces) if piece and not piece.isspace()]
    n_bottoms, n_tops = int(pieces[words[2]]), int(pieces[words[3]])
    for index in words[4 + n_bottoms + n_tops:]:
        if pieces[index].split("=", 1)[0] == str(key):
            pieces[index] = f"{key}={value}"
            return "".join(pieces)
    return line.rstrip() + f" {key}={value}"


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
        # int8_scale_term is set, the weight scales and the bottom blob scale (type 1, raw float32)
        chunks.append(_int8_weight_blob(plan.weight_int8))
        line = _with_param(model.lines[layer.line_index], INT8_SCALE_TERM_ID, plan.int8_scale_term)
        if plan.bias is not None:
            chunks.append(plan.bias.astype("<f4").tobytes())  # type 1: raw float32, no flag
            line = _with_param(line, _SHAPE_IDS[layer.type][1], 1)  # bias_term (a bias-free layer gains one)
        elif len(blobs) > 1:
            chunks.append(model.data[blobs[1].offset:blobs[1].end])  # the bias, byte-identical
        chunks.append(plan.weight_scales.astype("<f4").tobytes())
        chunks.append(np.asarray([plan.bottom_scale], "<f4").tobytes())
        lines[layer.line_index] = line
    return "\n".join(lines) + "\n", b"".join(chunks)


def write_ncnn_int8(param_in: str | Path, bin_in: str | Path, param_out: str | Path, bin_out: str | Path,
                    layer_scales: Mapping[str, tuple[Any, float]]) -> dict[str, Any]:
    """Write the fp32 ncnn model ``param_in`` / ``bin_in`` with the layers of ``layer_scales`` in int8.

    layer_scales: ncnn layer name -> (weight scales, input scale) in the ONNX convention (step sizes):
    weight scales float32 [num_output] = ``max|W_c| / 127`` per output channel, input scale
    ``absmax / 127`` of the layer's input tensor. They are written as ncnn multipliers (their
    reciprocals). Grouped (non-depthwise) convolutions are refused (see the module docstring).
    An optional third element, float [num_output], is subtracted from the layer's bias (bias
    correction, ``result.bias_correction``; a layer without a bias gets one).

    Every other layer, and each int8 layer's bias unless corrected, is copied byte for byte. Both files are written
    next to their destinations, walked again with ncnn's loaders, then renamed into place.
    Returns {"int8": [layer names in .param order], "bin_bytes_in": int, "bin_bytes_out": int}.
    """
    model = read_ncnn_model(param_in, bin_in)
    return _write(model, Path(param_out), Path(bin_out), layer_scales)


def _write(model: NcnnModel, param_out: Path, bin_out: Path,
           layer_scales: Mapping[str, tuple[Any, float]]) -> dict[str, Any]:
    plans: dict[str, _Int8Plan] = {}
    for name, scales in layer_scales.items():
        try:
            weight_scales, input_scale, *shift = scales
        except (TypeError, ValueError):
            raise CalibrationError(f"layer {name!r}: scales must be a (weight scales, input scale) pair") from None
        if len(shift) > 1:
            raise CalibrationError(f"layer {name!r}: scales must be (weight scales, input scale[, bias shift])")
        plans[name] = _plan(model, name, weight_scales, input_scale, shift[0] if shift else None)
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
            "bin_bytes_in": len(model.data), "bin_bytes_out": len(data)}


def _check_written(written: NcnnModel, plans: Mapping[str, _Int8Plan]) -> None:
    """ncnn's loaders read the written pair as intended: int8 weights, then bias, weight and bottom scales."""
    for name, plan in plans.items():
        blobs = written.blobs[name]
        if (blobs[0].storage != "int8" or not np.array_equal(blobs[0].values, plan.weight_int8)
                or blobs[-2].count != plan.weight_scales.size or blobs[-1].count != 1):
            raise CalibrationError(f"ncnn int8 writer: layer {name!r} does not read back as written (internal error)")


# --- the glue -----------------------------------------------------------------------------------


def emit_ncnn_int8(fp32_param: str | Path, fp32_bin: str | Path, onnx_path: str | Path, result: CalibrationResult,
                   out_param: str | Path, out_bin: str | Path) -> dict[str, Any]:
    """Write the int8 ncnn model for ``result`` (computed on the fp32 ONNX file ``onnx_path``).

    Every ncnn Convolution / ConvolutionDepthWise / InnerProduct matched to a layer of
    ``result.quantized_layers`` becomes int8 with that layer's weight scales and the input scale
    ``int8_symmetric(*result.activation_ranges[layer.input])``; the rest stay fp32: layers without
    an ONNX match, layers of ``result.float_layers`` and grouped (non-depthwise) convolutions.
    Returns {"int8": [ncnn names], "float": {ncnn name: reason}, "onnx_layers": {ncnn name: ONNX name},
    "onnx_unmatched": [ONNX layers with no ncnn counterpart], "bin_bytes_in", "bin_bytes_out"}.
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
    summary = _write(model, Path(out_param), Path(out_bin), scales)
    matched = set(mapping.values())
    return {"int8": summary["int8"], "float": float_reasons,
            "onnx_layers": {name: mapping[name] for name in summary["int8"]},
            "onnx_unmatched": [q.name for q in result.layers if q.name not in matched],
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
