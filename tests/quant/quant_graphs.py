"""Tiny hand-built conv graphs for the INT8 tests, and a float64 oracle of what they compute.

``small_net`` (input "images" [1,3,S,S], output "output" [1,4,S,S], the ModelSpec in its metadata)::

    images -> conv1 (3->8, 3x3) -> y1 -> Relu -> r1 -> conv2 (8->8, 3x3) -> y2 -> Relu -> r2 -> conv4 (8->4, 1x1) -> y4 -+
                                                  \\-> conv3 (8->4, 1x1) -> y3 ------------------------------------------ Add -> output

conv1 and conv2 feed other convs; conv3 and conv4 are head convs (they reach the output through
Add only). r1 is read by two convs (one shared activation Q/DQ).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from edgekit.spec import ONNX_METADATA_KEY
from tests.onnx_graphs import fastestdet_like_spec

SMALL_NET_CONVS = ("conv1", "conv2", "conv3", "conv4")


def small_net_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def w(o, i, k):
        return rng.normal(0, 0.5, (o, i, k, k)).astype(np.float32)

    def b(o):
        return rng.normal(0, 0.2, (o,)).astype(np.float32)

    return {"w1": w(8, 3, 3), "b1": b(8), "w2": w(8, 8, 3), "b2": b(8), "w3": w(4, 8, 1), "b3": b(4),
            "w4": w(4, 8, 1), "b4": b(4)}


def with_spec(model: onnx.ModelProto, size: int) -> onnx.ModelProto:
    entry = model.metadata_props.add()
    entry.key = ONNX_METADATA_KEY
    entry.value = fastestdet_like_spec(size=size).to_json()
    return model


def small_net(opset: int = 17, size: int = 16, seed: int = 0) -> onnx.ModelProto:
    weights = small_net_weights(seed)
    nodes = [helper.make_node("Conv", ["images", "w1", "b1"], ["y1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["y1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["y2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["y2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r1", "w3", "b3"], ["y3"], name="conv3"),
             helper.make_node("Conv", ["r2", "w4", "b4"], ["y4"], name="conv4"),
             helper.make_node("Add", ["y3", "y4"], ["output"], name="add")]
    graph = helper.make_graph(nodes, "small_net",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, size, size])],
                              [numpy_helper.from_array(a, n) for n, a in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7 if opset < 15 else 8
    with_spec(model, size)
    onnx.checker.check_model(model)
    return model


def small_net_reference(images: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Every tensor of ``small_net`` computed in float64 with torch (not ONNX Runtime)."""
    w = {k: torch.from_numpy(v.astype(np.float64)) for k, v in small_net_weights(seed).items()}
    x = torch.from_numpy(np.asarray(images, np.float64))
    t = {"images": x}
    t["y1"] = F.conv2d(x, w["w1"], w["b1"], padding=1)
    t["r1"] = torch.relu(t["y1"])
    t["y2"] = F.conv2d(t["r1"], w["w2"], w["b2"], padding=1)
    t["r2"] = torch.relu(t["y2"])
    t["y3"] = F.conv2d(t["r1"], w["w3"], w["b3"])
    t["y4"] = F.conv2d(t["r2"], w["w4"], w["b4"])
    t["output"] = t["y3"] + t["y4"]
    return {k: v.numpy() for k, v in t.items()}


def conv_graph(weight: np.ndarray, bias: np.ndarray | None, size: int = 8, pads: int = 1, opset: int = 17,
               transpose: bool = False) -> onnx.ModelProto:
    """images [1,C,S,S] -> one Conv (or ConvTranspose) named "conv" -> "output"."""
    inputs = ["images", "w"] + (["b"] if bias is not None else [])
    op = "ConvTranspose" if transpose else "Conv"
    node = helper.make_node(op, inputs, ["output"], name="conv", pads=[pads] * 4)
    initializers = [numpy_helper.from_array(weight, "w")]
    if bias is not None:
        initializers.append(numpy_helper.from_array(bias, "b"))
    in_channels = weight.shape[0] if transpose else weight.shape[1]
    out_channels = weight.shape[1] if transpose else weight.shape[0]
    k = weight.shape[2]
    out_size = size - 1 + k - 2 * pads if transpose else size + 2 * pads - k + 1
    graph = helper.make_graph([node], "one_conv",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, in_channels, size, size])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, out_channels, out_size, out_size])],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def ort_session(path: Path | bytes, optimize: bool = True, optimized_path: Path | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    elif optimized_path is not None:
        # EXTENDED: the QDQ fusions, without the hardware-specific layout rewrites of ALL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path) if isinstance(path, Path) else path, sess_options=options,
                                providers=["CPUExecutionProvider"])
