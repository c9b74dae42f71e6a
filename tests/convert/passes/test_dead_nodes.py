"""dead_nodes: Identity / inference Dropout, nodes that reach no output and unused initializers removed (ONNX pass)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from edgekit.convert.passes.onnx.dead_nodes import RemoveDeadNodes
from tests.convert.pass_contract import (
    OnnxPassContract,
    apply,
    init,
    make_model,
    ops,
    rel_error,
    run_ort,
    run_reference,
    tensor,
)

torch.set_num_threads(1)


def test_dead_nodes_and_identities() -> None:
    nodes = [helper.make_node("Identity", ["x"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Dropout", ["r"], ["d"]),
             helper.make_node("Identity", ["d"], ["y"]),          # produces the graph output
             helper.make_node("Sigmoid", ["x"], ["unused"]),      # dead
             helper.make_node("Exp", ["unused"], ["unused2"])]    # dead
    model = make_model(nodes, [tensor("x", [2, 3])], [tensor("y", None)], [init("stale", np.ones(3, np.float32))])
    cleaned, rewrites = apply(RemoveDeadNodes(), model)
    assert ops(cleaned) == Counter({"Relu": 1})
    assert rewrites == 5
    assert [o.name for o in cleaned.graph.output] == ["y"] and cleaned.graph.node[0].output[0] == "y"
    assert len(cleaned.graph.initializer) == 0
    x = {"x": np.random.default_rng(4).normal(size=(2, 3)).astype(np.float32)}
    assert rel_error(run_reference(model, x), run_ort(cleaned, x)) == 0.0


def test_dead_nodes_keeps_required_identities() -> None:
    nodes = [helper.make_node("Identity", ["x"], ["y"]),                                  # input -> output
             helper.make_node("Dropout", ["x", "ratio", "train"], ["z", "mask"]),        # mask used
             helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT)]
    model = make_model(nodes, [tensor("x", [2, 3])], [tensor("y", None), tensor("z", None), tensor("m", None)],
                       [init("ratio", np.array(0.5, np.float32)), init("train", np.array(False))])
    cleaned, rewrites = apply(RemoveDeadNodes(), model)
    assert rewrites == 0 and ops(cleaned) == ops(model)


class TestDeadNodesContract(OnnxPassContract):
    pass_ = RemoveDeadNodes()

    def with_pattern(self) -> onnx.ModelProto:
        nodes = [helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["y"]),
                 helper.make_node("Sigmoid", ["x"], ["unused"])]
        return make_model(nodes, [tensor("x", [2, 3])], [tensor("y", None)])

    def without_pattern(self) -> onnx.ModelProto:
        return make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", [2, 3])], [tensor("y", None)])
