"""Whether an ONNX file is one TensorRT's ONNX parser reads: operators, opset, data types, Q/DQ zero points.

Checked against the parser's own support matrix, recorded with its source in ``data/tensorrt_onnx_ops.json``
(the oldest parser edgekit builds with, TensorRT 8.x: what it accepts, later parsers accept too).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper


@lru_cache(maxsize=1)
def parser_support() -> dict[str, Any]:
    """The recorded support matrix (see the module docstring)."""
    text = (resources.files("edgekit.convert") / "data" / "tensorrt_onnx_ops.json").read_text(encoding="utf-8")
    return dict(json.loads(text))


def legality_problems(model: onnx.ModelProto, family: str) -> list[str]:
    """What TensorRT ``family``'s parser would refuse in ``model`` (empty list: nothing)."""
    support = parser_support()
    supported = set(support["supported"])
    types = set(support["data_types"])
    problems = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset > support["max_opset"][family]:
        problems.append(f"opset {opset} is above TensorRT {family}'s {support['max_opset'][family]}")
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"node {node.name!r}: custom domain {node.domain!r} needs a plugin")
        elif node.op_type not in supported:
            problems.append(f"node {node.name!r}: {node.op_type} is not in TensorRT's ONNX parser")
    inits = {i.name: i for i in model.graph.initializer}
    for init in model.graph.initializer:
        if TensorProto.DataType.Name(init.data_type) not in types:
            problems.append(f"initializer {init.name!r}: type {TensorProto.DataType.Name(init.data_type)}")
    for value in (*model.graph.input, *model.graph.output):
        name = TensorProto.DataType.Name(value.type.tensor_type.elem_type)
        if name not in types:
            problems.append(f"graph I/O {value.name!r}: type {name}")
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zero = inits.get(node.input[2])
            if zero is None or np.any(numpy_helper.to_array(zero) != 0):
                problems.append(f"node {node.name!r}: {node.op_type} zero point must be a constant 0")
            elif zero.data_type != TensorProto.INT8:
                problems.append(f"node {node.name!r}: {node.op_type} must be int8 (zero point "
                                f"{TensorProto.DataType.Name(zero.data_type)})")
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1 and node.input[1] not in inits:
            producer = next((n for n in model.graph.node if node.input[1] in n.output), None)
            if producer is None or producer.op_type != "DequantizeLinear":
                problems.append(f"node {node.name!r}: weights must be an initializer (or DequantizeLinear of one)")
    return problems
