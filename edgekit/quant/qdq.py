"""The calibration result -> a Q/DQ ONNX graph (QuantizeLinear / DequantizeLinear pairs).

Q/DQ ONNX is the interchange format for INT8: ONNX Runtime fuses ``DQ -> Conv -> Q`` into
QLinearConv, OpenVINO turns Q/DQ pairs into FakeQuantize and runs the convolution in u8/i8, and
TensorRT's explicit quantisation (the only INT8 path of TensorRT 11) reads it. Each consumer wants
a different placement, all from the same ranges and weight scales:

=============  ===========  =======================  ==========================================
placement      activations  conv outputs quantised   why
=============  ===========  =======================  ==========================================
onnxruntime    uint8        yes (bias int32), and     ORT's QDQ fusion needs the full
               (producer)   every activation between  DQ(x), DQ(w), DQ(b) -> Conv -> Q(y) unit,
                            them (integer region)     and DQ -> op -> Q around SiLU / Add / ...
openvino       uint8        no (bias float)           OpenVINO's CPU int8 convolutions take u8
                                                      activations (signed int8 activations failed
                                                      to compile in ../shared/FINDINGS.md); Q/DQ
                                                      on the *producer* side (see below)
tensorrt       int8 (sym.)  no (bias float)           TensorRT supports only symmetric int8
                                                      (zero point 0) and fuses the rest itself
=============  ===========  =======================  ==========================================

Producer-side placement (openvino). A conv input is often not a conv output but a Split (C2f), Concat,
MaxPool (SPPF) or Resize of one. Q/DQ at the conv input then leaves those ops in f32 and turns each
Q/DQ into a stand-alone f32 kernel: OpenVINO ran it at 1.06-1.09x NNCF's INT8 latency
(benchmarks/RESULTS.md). Instead each conv input is traced up through Split / Concat / MaxPool /
Resize to the tensors that produce it (an activation output, an Add, the graph input) and ONE Q/DQ
pair goes right after each such tensor, read by every consumer: it fuses into the producing conv as a
post-op and Split / Pooling / Resize / Concat run on u8, as NNCF places FakeQuantize. Tensors that
feed the same conv input share one scale (the union of the calibrated ranges of the conv inputs
they reach), so a Concat joins equally scaled inputs. Measured: 0.99-1.01x NNCF's latency.

Integer region (onnxruntime). ONNX Runtime's CPU EP turns each DQ -> op -> Q unit into an integer
kernel (its QDQ selector/action rules): Conv -> QLinearConv, Sigmoid -> QLinearSigmoid, Mul / Add ->
QLinearMul / QLinearAdd, Concat -> QLinearConcat, and it drops the DQ/Q around MaxPool / Resize / Split
when both carry the same encoding (uint8 data movement). Q/DQ only at conv inputs and outputs left each
SiLU / Add / Concat / Resize in float between a DequantizeLinear and a QuantizeLinear: 0.79-0.96x ORT's
fp32 latency while ``quantize_static`` reached 0.61x. So, as ``quantize_static`` does, every activation of
the int8 body is quantised once where it is produced, with its own calibrated range (INTEGER_OPS), the
outputs of SHARED_ENCODING_OPS reusing their input's encoding, a Relu folded into the Q after it
(FUSED_ACTIVATIONS), and every reader takes the DQ output (a float reader would block the producer's
fusion). Head conv outputs and everything after them stay float (``head_conv_outputs``) unless the
calibration result says to quantise them (``result.quantize_head_outputs``: only where a drift budget's judge
measured that within the budget, ``quant.head_outputs``): then the head convs fuse into QLinearConv as well, and
the integer region stops only at the graph outputs, which stay float (``quantize_static`` also quantises a
Concat that writes one). See
``_integer_region``; tests/quant/test_ort_placement.py checks ORT's optimised graph.

Weights are always int8, symmetric, per output channel (``DequantizeLinear`` with ``axis``: opset
>= 13; an older graph is upgraded first). Layers in ``result.float_layers`` are left untouched.
Encodings: uint8 ``x ≈ (q - zp) · s`` from ``result.uint8_affine``; int8 ``x ≈ q · s`` from
``result.int8_symmetric``; bias int32 ``b ≈ q · s_x · s_w[c]`` (``s_w[c]`` widened where the bias would not
fit in int32, see ``_fit_int32_bias``).
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.atomic_io import atomic_path
from edgekit.errors import CalibrationError, first_line
from edgekit.quant.collect import layer_name, weight_axis
from edgekit.quant.placement import QdqPlacement
from edgekit.quant.result import CalibrationResult, bias_correction, int8_symmetric, quantize_weight, uint8_affine

#: per-channel DequantizeLinear (the ``axis`` attribute) needs opset 13
MIN_QDQ_OPSET = 13
#: largest |int32 bias code| emitted (see ``_fit_int32_bias``): 2^30 leaves 2^30 of int32 accumulator
#: headroom for the products (each |(x_q - zp) * w_q| <= 255 * 127) in ORT's integer QLinearConv
BIAS_CODE_LIMIT = 2**30


def get_placement(backend: str) -> QdqPlacement:
    """The Q/DQ placement a backend's builder declares (``BackendBuilder.qdq_placement``)."""
    from edgekit.convert.builders import builder_names, get_builder_class
    from edgekit.errors import EdgekitError

    try:
        return get_builder_class(backend).qdq_placement
    except EdgekitError:
        raise CalibrationError(f"no Q/DQ placement for {backend!r}: no backend builder of that name; "
                               f"known: {', '.join(builder_names())}") from None


def write_qdq(onnx_path: str | Path, result: CalibrationResult, placement: QdqPlacement | str,
              out_path: str | Path) -> onnx.ModelProto:
    """Insert Q/DQ for every layer of ``result.quantized_layers`` into the fp32 graph; save to ``out_path``.

    The fp32 file must be the one the result was computed on (checked by sha256). Graph inputs,
    outputs, names and metadata (the embedded ModelSpec) are unchanged.
    """
    onnx_path = Path(onnx_path)
    result.check_model(onnx_path)
    placement = get_placement(placement) if isinstance(placement, str) else placement
    model = onnx.load(str(onnx_path))
    model = _ensure_opset(model, MIN_QDQ_OPSET)
    quantized = _insert_qdq(model, result, placement)
    onnx.checker.check_model(quantized)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        onnx.save(quantized, str(tmp))
    return quantized


def _ensure_opset(model: onnx.ModelProto, minimum: int) -> onnx.ModelProto:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= minimum:
        return model
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, minimum)
    except Exception as exc:
        raise CalibrationError(f"cannot upgrade the graph from opset {opset} to {minimum} for per-channel Q/DQ "
                               f"({first_line(exc, 200)})") from None


class _Builder:
    """Collects the new initializers and Q/DQ nodes while the node list is rebuilt in order."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.initializers: list[TensorProto] = []
        self.used = {n for node in model.graph.node for n in (*node.input, *node.output)}
        self.used |= {i.name for i in model.graph.initializer} | {i.name for i in model.graph.input}
        self.encodings: dict[str, tuple[str, str]] = {}  # encoding key -> (scale, zero point) initializer names

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name

    def constant(self, base: str, array: np.ndarray) -> str:
        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def activation_qdq(self, tensor: str, lo: float, hi: float, activation_type: str, out_name: str,
                       encoding: str | None = None) -> list[onnx.NodeProto]:
        """Q/DQ of ``tensor`` into ``out_name``; tensors passing the same ``encoding`` key share one scale/zero point."""
        if encoding is not None and encoding in self.encodings:
            s_name, z_name = self.encodings[encoding]
        else:
            if activation_type == "uint8":
                scale, zero_point = uint8_affine(lo, hi)
                zp = np.array(zero_point, np.uint8)
            else:
                scale, zp = int8_symmetric(lo, hi), np.array(0, np.int8)
            s_name = self.constant(f"{tensor}_scale", np.array(scale, np.float32))
            z_name = self.constant(f"{tensor}_zero_point", zp)
            if encoding is not None:
                self.encodings[encoding] = (s_name, z_name)
        q_name = self.fresh(f"{tensor}_quantized")
        return [helper.make_node("QuantizeLinear", [tensor, s_name, z_name], [q_name], name=self.fresh(f"{tensor}_Q")),
                helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [out_name], name=self.fresh(f"{tensor}_DQ"))]

    def activation_scale(self, lo: float, hi: float, activation_type: str) -> float:
        return uint8_affine(lo, hi)[0] if activation_type == "uint8" else int8_symmetric(lo, hi)


def _insert_qdq(model: onnx.ModelProto, result: CalibrationResult, placement: QdqPlacement) -> onnx.ModelProto:
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    wanted = {layer.name: layer for layer in result.quantized_layers}
    builder = _Builder(model)
    # the head convs' outputs are requantised only where a drift budget's judge measured that within the budget
    # (quant.head_outputs); only placements that requantise conv outputs (ONNX Runtime's) read this set
    head_outputs = set() if result.quantize_head_outputs else head_conv_outputs(model)
    ranges = result.activation_ranges

    def range_of(tensor: str) -> tuple[float, float]:
        if tensor not in ranges:
            raise CalibrationError(f"calibration result has no range for tensor {tensor!r}")
        return ranges[tensor]

    # Tensors already available in dequantised form: original name -> DQ output name.
    dequantized: dict[str, str] = {}
    # Conv outputs quantised in place: the conv writes "<y>_float", Q/DQ writes "<y>" again, so every
    # consumer (quantised or not) reads the quantised value, as ORT's QLinearConv would produce it.
    requantized_outputs: set[str] = set()
    weight_dq: dict[tuple[str, bytes], str] = {}  # (weight name, its scales) -> DQ output name
    new_nodes: list[onnx.NodeProto] = []
    found: set[str] = set()
    # producer-side placement: source tensor -> its DQ output (read by every consumer), and the conv
    # inputs that are covered by those (they need no Q/DQ of their own)
    sources: dict[str, tuple[float, float]] = {}
    # integer region (onnxruntime): tensor -> the tensor whose encoding it shares (itself, or the input of the
    # Split / MaxPool / Resize that passed it on)
    encoding_of: dict[str, str] = {}
    produced_dq: dict[str, str] = {}
    covered: set[str] = set()
    float_names = {layer.name for layer in result.layers} - set(wanted)
    if placement.integer_ops:
        region = _integer_region(model, result, head_outputs)
        sources = {tensor: (lo, hi) for tensor, (_, lo, hi) in region.items()}
        encoding_of = {tensor: root for tensor, (root, _, _) in region.items()}
        covered = set(region)
    elif placement.producer_side:
        sources = _producer_sources(model, result.quantized_layers, range_of)
        covered = {layer.input for layer in result.quantized_layers}
    produced_dq = {tensor: builder.fresh(f"{tensor}_dequantized") for tensor in sources}

    def quantize_sources_among(outputs) -> None:
        """Producer-side: the Q/DQ pair right after each source tensor a node just produced."""
        for output in outputs:
            if output in produced_dq:
                new_nodes.extend(builder.activation_qdq(output, *sources[output], placement.activation_type,
                                                        produced_dq[output], encoding_of.get(output)))

    quantize_sources_among([graph_input.name for graph_input in graph.input])

    for index, node in enumerate(graph.node):
        name = layer_name(node, index)
        layer = wanted.get(name)
        # a layer kept in float reads the float tensor even where its producer is quantised for others (not in the
        # integer region: ORT fuses a producer into its integer kernel only when every reader takes the DQ output)
        if produced_dq and (name not in float_names or placement.integer_ops) and any(i in produced_dq for i in node.input):
            renamed = onnx.NodeProto()
            renamed.CopyFrom(node)
            for k, tensor in enumerate(renamed.input):
                renamed.input[k] = produced_dq.get(tensor, tensor)
            node = renamed
        if layer is None:
            new_nodes.append(node)
            quantize_sources_among(node.output)
            continue
        found.add(name)
        if graph.node[index].input[0] != layer.input or node.input[1] != layer.weight:
            raise CalibrationError(f"layer {name!r}: the graph does not match the calibration result")
        x = node.input[0]
        # the range x is encoded with: its own, or (integer region) that of the tensor whose encoding it shares
        lo, hi = sources[layer.input] if placement.integer_ops and layer.input in sources else range_of(layer.input)
        # activation input
        if layer.input in covered:
            x_dq = x  # already the DQ output of its producer, or derived from such through Split/Concat/…
        elif x in requantized_outputs:
            x_dq = x
        elif x in dequantized:
            x_dq = dequantized[x]
        else:
            x_dq = builder.fresh(f"{x}_dequantized")
            new_nodes += builder.activation_qdq(x, lo, hi, placement.activation_type, x_dq)
            dequantized[x] = x_dq
        # weight: int8 per channel
        axis = weight_axis(layer.op_type)
        scales = np.asarray(layer.weight_scales, np.float32)
        input_scale = builder.activation_scale(lo, hi, placement.activation_type)
        weight = numpy_helper.to_array(initializers[layer.weight])
        # the float bias (zeros for a conv without one, None when it is not a constant)
        has_bias = len(node.input) > 2 and bool(node.input[2])
        bias = (numpy_helper.to_array(initializers[node.input[2]]).astype(np.float64).reshape(-1)
                if has_bias and node.input[2] in initializers else None if has_bias else np.zeros(len(scales)))
        if placement.quantize_bias and bias is not None:
            scales = _fit_int32_bias(scales, bias, input_scale)
        # bias correction: cancel the mean output shift of the rounded weights (result.bias_correction)
        shift = None if bias is None else bias_correction(weight, scales, layer.input_mean, layer.op_type,
                                                          _group(node))
        if bias is not None and shift is not None:  # (a shift only exists for a bias)
            if placement.quantize_bias:  # the corrected bias must fit int32 as well
                fitted = _fit_int32_bias(scales, bias - shift, input_scale)
                if not np.array_equal(fitted, scales):
                    scales = fitted
                    # not None: None depends on the layer and its input means only, and the first call gave a shift
                    shift = cast(np.ndarray, bias_correction(weight, scales, layer.input_mean, layer.op_type,
                                                             _group(node)))
            bias = bias - shift
        elif not has_bias:
            bias = None
        bias_name = node.input[2] if has_bias else f"{layer.weight}_bias"
        weight_key = (layer.weight, scales.tobytes())
        if weight_key not in weight_dq:
            q_weight = builder.constant(f"{layer.weight}_quantized", quantize_weight(weight, scales, axis))
            w_scale = builder.constant(f"{layer.weight}_scale", scales)
            w_zero = builder.constant(f"{layer.weight}_zero_point", np.zeros(len(scales), np.int8))
            w_dq = builder.fresh(f"{layer.weight}_dequantized")
            new_nodes.append(helper.make_node("DequantizeLinear", [q_weight, w_scale, w_zero], [w_dq], axis=axis,
                                              name=builder.fresh(f"{layer.weight}_DQ")))
            weight_dq[weight_key] = w_dq
        inputs = [x_dq, weight_dq[weight_key], *node.input[2:]]
        if bias is not None and placement.quantize_bias:
            # bias: int32 with scale s_x * s_w[c] (ORT's fusion requires it)
            bias_scale = input_scale * scales.astype(np.float64)
            q_bias = np.clip(np.round(bias / bias_scale), -2**31, 2**31 - 1).astype(np.int32)
            b_q = builder.constant(f"{bias_name}_quantized", q_bias)
            b_scale = builder.constant(f"{bias_name}_scale", bias_scale.astype(np.float32))
            b_zero = builder.constant(f"{bias_name}_zero_point", np.zeros(len(q_bias), np.int32))
            b_dq = builder.fresh(f"{bias_name}_dequantized")
            new_nodes.append(helper.make_node("DequantizeLinear", [b_q, b_scale, b_zero], [b_dq], axis=0,
                                              name=builder.fresh(f"{bias_name}_DQ")))
            inputs[2:3] = [b_dq]
        elif bias is not None and shift is not None:
            inputs[2:3] = [builder.constant(f"{bias_name}_corrected", bias.astype(np.float32))]
        conv = onnx.NodeProto()
        conv.CopyFrom(node)
        del conv.input[:]
        conv.input.extend(inputs)
        if placement.quantize_outputs and not placement.integer_ops and node.output[0] not in head_outputs:
            y = node.output[0]
            y_float = builder.fresh(f"{y}_float")
            conv.output[0] = y_float
            new_nodes.append(conv)
            new_nodes += builder.activation_qdq(y_float, *range_of(y), placement.activation_type, y)
            requantized_outputs.add(y)
        else:
            new_nodes.append(conv)
        quantize_sources_among(conv.output)  # a conv output another conv reads through Split/Concat/…
    missing = sorted(set(wanted) - found)
    if missing:
        raise CalibrationError(f"layers of the calibration result not in the graph: {', '.join(missing[:5])}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    # float weights of quantised layers are replaced by their int8 copies (unless a float layer shares them)
    still_used = {i for n in new_nodes for i in n.input}
    kept = [init for init in out.graph.initializer if init.name in still_used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept + builder.initializers)
    return out


def _group(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def _fit_int32_bias(weight_scales: np.ndarray, bias: np.ndarray, input_scale: float) -> np.ndarray:
    """Per-channel weight scales widened where the int32 bias code ``b / (s_x * s_w)`` would exceed BIAS_CODE_LIMIT.

    A near-constant conv input (tiny ``s_x``) with a sizeable bias needs bias codes beyond int32:
    saturating them silently replaces the bias by ``~2^31 * s_x * s_w``. Leaving the bias float does
    not help either: ONNX Runtime's optimizer then quantises it to int32 itself, saturating the same
    way. So, as ONNX Runtime's own quantiser does, the weight scale of such a channel is raised to
    ``|b| / (s_x * BIAS_CODE_LIMIT)``: the bias fits, and the weights lose only what the tiny input
    could never resolve (each product's extra error is at most ``~255 * |b| / 2^31``).
    """
    needed = np.abs(bias) / (float(input_scale) * BIAS_CODE_LIMIT)
    return np.maximum(weight_scales.astype(np.float64), needed).astype(np.float32)


def head_conv_outputs(model: onnx.ModelProto) -> set[str]:
    """Outputs of the convs that reach a graph output without passing through another conv.

    Their outputs are the raw head tensors (class logits, box distributions): re-quantising them to
    8 bits would put the coarsest rounding of the whole network on the numbers the decoder reads,
    so the output Q/DQ placement leaves them in float (the conv still takes int8 input and weights) unless
    ``CalibrationResult.quantize_head_outputs`` says otherwise.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in model.graph.output}
    heads = set()
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        frontier, seen = [node.output[0]], set()
        while frontier:
            tensor = frontier.pop()
            if tensor in seen:
                continue
            seen.add(tensor)
            if tensor in graph_outputs:
                heads.add(node.output[0])
                break
            for consumer in consumers.get(tensor, []):
                if consumer.op_type not in ("Conv", "ConvTranspose"):
                    frontier.extend(consumer.output)
    return heads


#: ops an activation passes through unchanged in value range (each output is a selection or copy of
#: input values), so a Q/DQ before them is equivalent to one after them, and OpenVINO runs them on u8
RANGE_PRESERVING_OPS = {"Split", "Concat", "MaxPool", "Resize"}


#: ops ONNX Runtime's CPU EP runs in integer arithmetic when every input comes from a DequantizeLinear and the
#: output goes into a QuantizeLinear (its QDQ selectors, qdq_selector_action_transformer.cc: QLinearSigmoid /
#: QLinearLeakyRelu / QLinearAveragePool / QLinearGlobalAveragePool, QLinearAdd / QLinearMul, QLinearConcat); each
#: output gets its own calibrated range, as ``quantize_static`` does
INTEGER_OPS = frozenset({"Sigmoid", "LeakyRelu", "AveragePool", "GlobalAveragePool", "Add", "Mul", "Concat"})
#: ops ORT runs directly on uint8 by dropping the DQ before and the Q after them (its DropQDQ / Split rules), which
#: it does only when both carry the same scale and zero point: their outputs share their input's encoding
SHARED_ENCODING_OPS = frozenset({"MaxPool", "Resize", "Split"})
#: activations ORT folds into the QuantizeLinear after them (ReluQuantFusion: a uint8 Q with zero point 0 already
#: clips at 0): a conv read only by one of them is quantised after the activation, and fuses into QLinearConv
FUSED_ACTIVATIONS = frozenset({"Relu"})


def _integer_region(model: onnx.ModelProto, result: CalibrationResult,
                    head_outputs: set[str]) -> dict[str, tuple[str, float, float]]:
    """The onnxruntime placement's activations quantised where they are produced: tensor -> (encoding, lo, hi).

    ``encoding`` names the tensor whose scale and zero point the tensor uses: itself, or for the outputs of
    SHARED_ENCODING_OPS the encoding of their data input. The region grows from the graph input and the
    outputs of quantised convs (not head convs, see ``head_conv_outputs``): an INTEGER_OPS node joins when every
    input is in it (an initializer input keeps the node in float) and its output has a calibrated range. Graph
    outputs stay float. Then only what an integer kernel reads or writes is kept: a quantised conv's input and
    output (QLinearConv needs the Q after it), and the inputs/outputs of region ops some kept tensor depends on.
    A tensor without a calibrated range (a cache written before these ranges were recorded) is left float, and
    a conv reading it quantises its own input as before.
    """
    graph = model.graph
    ranges = result.activation_ranges
    wanted = {layer.name for layer in result.quantized_layers}
    float_names = {layer.name for layer in result.layers} - wanted
    graph_outputs = {o.name for o in graph.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    region: dict[str, tuple[str, float, float]] = {}

    def own(tensor: str) -> None:
        if tensor in ranges and tensor not in graph_outputs:
            region[tensor] = (tensor, *ranges[tensor])

    initializers = {init.name for init in graph.initializer}
    for graph_input in graph.input:
        if graph_input.name not in initializers:
            own(graph_input.name)
    before_activation: set[str] = set()  # conv outputs quantised after the Relu that alone reads them
    for index, node in enumerate(graph.node):
        name = layer_name(node, index)
        if name in wanted:
            y = node.output[0]
            if y in head_outputs:
                continue
            only = readers.get(y, [])
            if len(only) == 1 and only[0].op_type in FUSED_ACTIVATIONS and y not in graph_outputs:
                before_activation.add(y)
            else:
                own(y)
        elif name in float_names or not node.input:
            continue
        elif node.op_type in SHARED_ENCODING_OPS:
            if node.input[0] in region:
                for y in node.output:
                    if y not in graph_outputs:
                        region[y] = region[node.input[0]]
        elif node.op_type in FUSED_ACTIVATIONS:
            if node.input[0] in before_activation:
                own(node.output[0])
        elif node.op_type in INTEGER_OPS:
            inputs = [i for i in node.input if i]
            if inputs and all(i in region for i in inputs):
                own(node.output[0])
    # keep what integer kernels read and write, walking back from the quantised convs
    needed: set[str] = set()
    for index in reversed(range(len(graph.node))):
        node = graph.node[index]
        outputs = [o for o in node.output if o in region]
        if layer_name(node, index) in wanted:
            needed.update({node.input[0], *outputs})
        elif node.op_type in FUSED_ACTIVATIONS and node.input[0] in before_activation:
            needed.update(outputs)
        elif outputs and any(o in needed for o in outputs):
            needed.update(i for i in node.input if i in region)
            needed.update(o for o in outputs if o in readers)
    return {tensor: value for tensor, value in region.items() if tensor in needed}


def _producer_sources(model: onnx.ModelProto, layers, range_of) -> dict[str, tuple[float, float]]:
    """Producer-side placement: the tensors to Q/DQ and the range of each (see the module docstring).

    Each quantised conv's input is traced up through RANGE_PRESERVING_OPS (all Concat inputs, the data
    input of the others) to its source tensors. Sources linked through any conv input share a group
    (union-find); a group's range is the union of the calibrated ranges of its conv inputs.
    """
    producer = {output: node for node in model.graph.node for output in node.output}
    parent: dict[str, str] = {}

    def find(tensor: str) -> str:
        parent.setdefault(tensor, tensor)
        while parent[tensor] != tensor:
            parent[tensor] = parent[parent[tensor]]
            tensor = parent[tensor]
        return tensor

    sources: set[str] = set()
    for layer in layers:
        find(layer.input)
        stack, seen = [layer.input], set()
        while stack:
            tensor = stack.pop()
            if tensor in seen:
                continue
            seen.add(tensor)
            node = producer.get(tensor)
            if node is not None and node.op_type in RANGE_PRESERVING_OPS:
                stack.extend(node.input if node.op_type == "Concat" else node.input[:1])
                continue
            sources.add(tensor)
            parent[find(tensor)] = find(layer.input)
    group_range: dict[str, tuple[float, float]] = {}
    for layer in layers:
        lo, hi = range_of(layer.input)
        root = find(layer.input)
        old_lo, old_hi = group_range.get(root, (lo, hi))
        group_range[root] = (min(old_lo, lo), max(old_hi, hi))
    return {tensor: group_range[find(tensor)] for tensor in sources}
