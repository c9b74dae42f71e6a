"""onnx_fold_bn: BatchNormalization folded into the Conv / ConvTranspose before it (ONNX pass).

Oracles: ONNX's reference implementation (or torch.nn.functional) on the original graph, ONNX Runtime
(optimisation off) on the rewritten one: the two sides share no code."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from edgekit.convert.passes.onnx.bn_fold import FoldBatchNormOnnx
from tests.convert.pass_contract import (
    REL_TOL,
    OnnxPassContract,
    apply,
    conv_bn_model,
    init,
    make_model,
    ops,
    rel_error,
    run_ort,
    run_reference,
    tensor,
)

torch.set_num_threads(1)


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
@pytest.mark.parametrize("group", [1, 2, 8])
@pytest.mark.parametrize("bias", [False, True])
def test_onnx_fold_bn_hand_built(op: str, group: int, bias: bool) -> None:
    model = conv_bn_model(op, group, bias, seed=group + 10 * bias)
    folded, rewrites = apply(FoldBatchNormOnnx(), model)
    assert rewrites == 1
    assert ops(folded)["BatchNormalization"] == 0 and ops(folded)[op] == 1
    assert len(next(n for n in folded.graph.node if n.op_type == op).input) == 3  # a bias now
    x = {"x": np.random.default_rng(1).normal(size=(1, 8, 10, 10)).astype(np.float32)}
    expected = torch_conv_bn_relu(model, x["x"])  # the onnx reference ConvTranspose mishandles groups
    assert rel_error(expected, run_ort(folded, x)) <= REL_TOL
    assert rel_error(expected, run_ort(model, x)) <= REL_TOL  # the oracle reads the graph as ONNX Runtime does


def torch_conv_bn_relu(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    """The conv_bn_model graph computed with torch.nn.functional from its initializers."""
    values = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer}
    conv = next(n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose"))
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    bias = values.get("b")
    if conv.op_type == "Conv":
        z = torch.nn.functional.conv2d(torch.from_numpy(x), values["W"], bias, padding=1, groups=attrs["group"])
    else:
        z = torch.nn.functional.conv_transpose2d(torch.from_numpy(x), values["W"], bias, stride=2, padding=1,
                                                 output_padding=1, groups=attrs["group"])
    y = torch.nn.functional.batch_norm(z, values["mean"], values["var"], values["scale"], values["beta"],
                                       training=False, eps=1e-3)
    return [torch.relu(y).numpy()]


def test_onnx_fold_bn_through_identity_and_constant_nodes() -> None:
    model = conv_bn_model("Conv", 2, True, seed=3, weight_via_identity=True, bn_params_as_constants=True)
    folded, rewrites = apply(FoldBatchNormOnnx(), model)
    assert rewrites == 1 and ops(folded)["BatchNormalization"] == 0
    x = {"x": np.random.default_rng(2).normal(size=(1, 8, 10, 10)).astype(np.float32)}
    assert rel_error(run_reference(model, x), run_ort(folded, x)) <= REL_TOL


def test_onnx_fold_bn_requires_single_consumer() -> None:
    model = conv_bn_model("Conv", 1, True, seed=4)
    # a second reader of the conv output: folding would change what it sees
    model.graph.node.append(helper.make_node("Sigmoid", ["z"], ["side"]))
    model.graph.output.append(tensor("side", [1, 12, 10, 10]))
    folded, rewrites = apply(FoldBatchNormOnnx(), model)
    assert rewrites == 0 and ops(folded)["BatchNormalization"] == 1


def test_onnx_fold_bn_skips_training_mode() -> None:
    model = conv_bn_model("Conv", 1, False, seed=5)
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    bn.attribute.append(helper.make_attribute("training_mode", 1))
    bn.output.extend(["running_mean", "running_var"])
    result = FoldBatchNormOnnx().apply(model)
    assert result.rewrites == 0 and ops(result.model)["BatchNormalization"] == 1


def test_onnx_fold_bn_shared_weight_two_convs() -> None:
    """Two convs read one weight, each followed by its own BN: both fold, into separate new weights."""
    rng = np.random.default_rng(6)
    initializers = [init("W", rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32))]
    nodes = []
    for i in range(2):
        for name, value in (("s", rng.uniform(0.5, 1.5, 4)), ("b", rng.normal(0, 1, 4)),
                            ("m", rng.normal(0, 1, 4)), ("v", rng.uniform(0.5, 2, 4))):
            initializers.append(init(f"{name}{i}", value.astype(np.float32)))
        nodes += [helper.make_node("Conv", ["x" if i == 0 else "y0", "W"], [f"z{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("BatchNormalization", [f"z{i}", f"s{i}", f"b{i}", f"m{i}", f"v{i}"], [f"y{i}"])]
    model = make_model(nodes, [tensor("x", [1, 4, 6, 6])], [tensor("y1", None)], initializers)
    folded, rewrites = apply(FoldBatchNormOnnx(), model)
    assert rewrites == 2 and ops(folded)["BatchNormalization"] == 0
    convs = [n for n in folded.graph.node if n.op_type == "Conv"]
    assert convs[0].input[1] != convs[1].input[1]
    assert "W" not in {i.name for i in folded.graph.initializer}  # the orphaned original is gone
    x = {"x": rng.normal(size=(1, 4, 6, 6)).astype(np.float32)}
    assert rel_error(run_reference(model, x), run_ort(folded, x)) <= REL_TOL


def conv_relu_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "W", "b"], ["z"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["z"], ["y"])]
    return make_model(nodes, [tensor("x", [1, 8, 10, 10])], [tensor("y", None)],
                      [init("W", rng.normal(0, 0.3, (4, 8, 3, 3)).astype(np.float32)),
                       init("b", rng.normal(0, 1, 4).astype(np.float32))])


class TestOnnxFoldBnContract(OnnxPassContract):
    pass_ = FoldBatchNormOnnx()

    def with_pattern(self) -> onnx.ModelProto:
        return conv_bn_model("Conv", 1, True, seed=1)

    def without_pattern(self) -> onnx.ModelProto:
        return conv_relu_model()
