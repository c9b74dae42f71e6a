"""A strongly typed fp16 ONNX for TensorRT 11 (no ``--fp16`` flag any more: the ONNX carries the types).

TensorRT 11 builds every network strongly typed: each tensor runs in the type the ONNX gives it. So the fp16
engine comes from an fp16 graph edgekit writes from the artifact's fp32 ``model.onnx``:

- every float32 initializer and ``Constant`` becomes float16, every ``Cast(to=FLOAT)`` becomes
  ``Cast(to=FLOAT16)`` (and ``ConstantOfShape`` fills in float16);
- the graph's inputs and outputs stay float32 (the runtime feeds and reads float32 on every backend): a
  ``Cast`` to float16 follows each float input, and each float output is cast back to float32;
- exceptions by operator schema: inputs the ONNX spec types as float32 only stay float32
  (:data:`FLOAT32_ONLY_INPUTS`, e.g. ``Resize``'s ``scales``).

The result is checked by ONNX's checker and type inference when written; the tests run it in ONNX Runtime
next to the fp32 graph, within the fp16 tolerance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.errors import ConversionError, first_line

#: (op, input index) the ONNX operator schemas type tensor(float) only
FLOAT32_ONLY_INPUTS = {("Resize", 2), ("Upsample", 1)}


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The fp16 graph of ``model`` with float32 graph inputs and outputs (see the module docstring)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    keep32 = {node.input[k] for node in graph.node for k in range(len(node.input))
              if (node.op_type, k) in FLOAT32_ONLY_INPUTS and node.input[k]}
    used = {n for node in graph.node for n in (*node.input, *node.output)}
    used |= {i.name for i in graph.initializer} | {i.name for i in graph.input} | {o.name for o in graph.output}

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        return name

    for index, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT and init.name not in keep32:
            graph.initializer[index].CopyFrom(_half(init))
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == TensorProto.FLOAT \
                    and not (node.op_type == "Constant" and node.output[0] in keep32):
                attribute.t.CopyFrom(_half(attribute.t))
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == TensorProto.FLOAT \
                    and node.output[0] not in keep32:
                attribute.i = TensorProto.FLOAT16
    # graph inputs stay float32: a Cast to float16 in front of every consumer
    head: list[onnx.NodeProto] = []
    renamed: dict[str, str] = {}
    for graph_input in graph.input:
        if graph_input.type.tensor_type.elem_type == TensorProto.FLOAT:
            half = fresh(f"{graph_input.name}_fp16")
            head.append(helper.make_node("Cast", [graph_input.name], [half], to=TensorProto.FLOAT16,
                                         name=fresh(f"{graph_input.name}_to_fp16")))
            renamed[graph_input.name] = half
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in renamed and (node.op_type, k) not in FLOAT32_ONLY_INPUTS:
                node.input[k] = renamed[name]
    # graph outputs stay float32: the producer writes <name>_fp16, a Cast gives <name> back in float32
    tail: list[onnx.NodeProto] = []
    for graph_output in graph.output:
        if graph_output.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = fresh(f"{graph_output.name}_fp16")
        for node in graph.node:
            for k, name in enumerate(node.output):
                if name == graph_output.name:
                    node.output[k] = half
            for k, name in enumerate(node.input):
                if name == graph_output.name:
                    node.input[k] = half
        tail.append(helper.make_node("Cast", [half], [graph_output.name], to=TensorProto.FLOAT,
                                     name=fresh(f"{graph_output.name}_to_fp32")))
    nodes = head + list(graph.node) + tail
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    try:
        onnx.checker.check_model(out)
        onnx.shape_inference.infer_shapes(out, check_type=True, strict_mode=True)
    except Exception as exc:
        raise ConversionError(f"tensorrt fp16: the fp16 graph does not type-check ({first_line(exc, 200)})") from None
    return out


def write_fp16(onnx_path: str | Path, out_path: str | Path) -> onnx.ModelProto:
    """Write :func:`to_fp16` of the ONNX file at ``onnx_path`` to ``out_path`` (metadata kept)."""
    model = to_fp16(onnx.load(str(onnx_path)))
    onnx.save(model, str(out_path))
    return model


def _half(tensor: TensorProto) -> TensorProto:
    array = numpy_helper.to_array(tensor)
    # values beyond fp16's range saturate to +-65504 rather than become inf
    half = np.clip(array, -65504.0, 65504.0).astype(np.float16)
    return numpy_helper.from_array(half, tensor.name)
