"""Tiny hand-built ONNX graphs (no torch) for runtime tests.

``fastestdet_like_graph`` maps an image [B,3,H,W] to a FastestDet-style head [B,5+nc,H/16,W/16]:
16x16 average pooling, a fixed 1x1 convolution, then a sigmoid so every channel is in (0, 1)
(what the fastestdet decoder expects for objectness and class probabilities).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.spec import ONNX_METADATA_KEY, HeadSpec, ModelSpec, PostprocessSpec, ResizeSpec


def fastestdet_like_spec(num_classes: int = 3, size: int = 64, output_name: str = "output") -> ModelSpec:
    return ModelSpec(family="tiny", input_size=(size, size), class_names=tuple(f"c{i}" for i in range(num_classes)),
                     head=HeadSpec("fastestdet", (output_name,)), color_order="BGR",
                     resize=ResizeSpec("resize", 0), postprocess=PostprocessSpec(conf_threshold=0.05))


def fastestdet_like_graph(spec: ModelSpec, batch: int | None = 1, seed: int = 0, nan: bool = False,
                          embed_spec: bool = True) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    channels = 5 + spec.num_classes
    weight = rng.normal(0, 2.0, size=(channels, 3, 1, 1)).astype(np.float32)
    bias = rng.normal(0, 0.5, size=(channels,)).astype(np.float32)
    h, w = spec.input_size
    batch_dim = batch if batch is not None else "batch"
    nodes = [
        helper.make_node("AveragePool", [spec.input_name], ["pooled"], kernel_shape=[16, 16], strides=[16, 16]),
        helper.make_node("Conv", ["pooled", "weight", "bias"], ["logits"]),
    ]
    if nan:  # 0/0: a model whose output is NaN, as a broken conversion would produce
        nodes += [helper.make_node("Sub", ["logits", "logits"], ["zero"]),
                  helper.make_node("Div", ["zero", "zero"], ["nan"]),
                  helper.make_node("Sigmoid", ["nan"], [spec.head.output_names[0]])]
    else:
        nodes += [helper.make_node("Sigmoid", ["logits"], [spec.head.output_names[0]])]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info(spec.input_name, TensorProto.FLOAT, [batch_dim, 3, h, w])],
        [helper.make_tensor_value_info(spec.head.output_names[0], TensorProto.FLOAT, [batch_dim, channels, h // 16, w // 16])],
        [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if embed_spec:
        entry = model.metadata_props.add()
        entry.key = ONNX_METADATA_KEY
        entry.value = spec.to_json()
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path
