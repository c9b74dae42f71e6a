"""constant_fold: constant subgraphs (Shape of static shapes included) evaluated into initializers (ONNX pass)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from edgekit.convert.passes.onnx.constant_fold import ConstantFold
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


def shape_chain_model(batch: int | str = 1) -> onnx.ModelProto:
    """y = Reshape(x, concat(shape(x)[0:1], [-1])) + 2 * 3: the Shape -> Gather -> Unsqueeze -> Concat
    chain exporters emit for ``x.view(x.size(0), -1)``, plus a Constant-only Mul."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.int64))),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(np.array([0], np.int64))),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Constant", [], ["minus_one"], value=numpy_helper.from_array(np.array([-1], np.int64))),
        helper.make_node("Concat", ["n1", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("Constant", [], ["two"], value_float=2.0),
        helper.make_node("Constant", [], ["three"], value_float=3.0),
        helper.make_node("Mul", ["two", "three"], ["six"]),
        helper.make_node("Add", ["flat", "six"], ["y"]),
    ]
    return make_model(nodes, [tensor("x", [batch, 3, 4, 4])], [tensor("y", None)])


def test_constant_fold_shape_chain() -> None:
    model = shape_chain_model()
    folded, rewrites = apply(ConstantFold(), model)
    assert rewrites == 10
    assert ops(folded) == Counter({"Reshape": 1, "Add": 1})
    target = next(i for i in folded.graph.initializer if i.name == "target")
    assert numpy_helper.to_array(target).tolist() == [1, -1]
    six = next(i for i in folded.graph.initializer if i.name == "six")
    assert list(six.dims) == [] and numpy_helper.to_array(six) == 6.0  # scalars stay scalars
    x = {"x": np.random.default_rng(0).normal(size=(1, 3, 4, 4)).astype(np.float32)}
    assert rel_error(run_reference(model, x), run_ort(folded, x)) == 0.0


def test_constant_fold_keeps_dynamic_dims() -> None:
    model = shape_chain_model(batch="N")
    folded, _ = apply(ConstantFold(), model)
    assert ops(folded)["Shape"] == 1 and ops(folded)["Gather"] == 1  # the batch size is only known at run time
    assert ops(folded)["Mul"] == 0 and ops(folded)["Constant"] == 0
    x = {"x": np.random.default_rng(1).normal(size=(3, 3, 4, 4)).astype(np.float32)}
    assert rel_error(run_reference(model, x), run_ort(folded, x)) == 0.0

    # Shape with start=1 reads only static dims: folded even with a dynamic batch
    nodes = [helper.make_node("Shape", ["x"], ["s"], start=1),
             helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
             helper.make_node("Mul", ["total", "sf"], ["y"])]
    partial = make_model(nodes, [tensor("x", ["N", 3, 4, 5])], [tensor("y", None)])
    folded, rewrites = apply(ConstantFold(), partial)
    assert rewrites == 2 and ops(folded)["Shape"] == 0 and ops(folded)["Cast"] == 0


def test_constant_fold_scalar_index_on_runtime_tensor() -> None:
    """A scalar Constant used as a Gather index on a runtime tensor must stay 0-d (a [1] index adds an axis)."""
    nodes = [helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.array(1, np.int64))),
             helper.make_node("Gather", ["x", "one"], ["y"], axis=0)]
    model = make_model(nodes, [tensor("x", [2, 3, 4])], [tensor("y", None)])
    folded, _ = apply(ConstantFold(), model)
    x = {"x": np.random.default_rng(2).normal(size=(2, 3, 4)).astype(np.float32)}
    assert run_ort(folded, x)[0].shape == (3, 4)


def test_constant_fold_aliases_identity_weights_and_skips_random() -> None:
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Identity", ["W"], ["W1"]),
             helper.make_node("Identity", ["W1"], ["W2"]),
             helper.make_node("Conv", ["x", "W2"], ["c"]),
             helper.make_node("RandomNormalLike", ["c"], ["noise"], seed=1.0),
             helper.make_node("Constant", [], ["zero"], value_float=0.0),
             helper.make_node("Mul", ["noise", "zero"], ["nothing"]),
             helper.make_node("Add", ["c", "nothing"], ["y"])]
    model = make_model(nodes, [tensor("x", [1, 2, 5, 5])], [tensor("y", None)],
                       [init("W", rng.normal(size=(3, 2, 1, 1)).astype(np.float32))])
    folded, _ = apply(ConstantFold(), model)
    assert ops(folded)["Identity"] == 0 and ops(folded)["RandomNormalLike"] == 1
    assert [i.name for i in folded.graph.initializer].count("W") == 1 and len(folded.graph.initializer) == 2
    assert next(n for n in folded.graph.node if n.op_type == "Conv").input[1] == "W"


def relu_model() -> onnx.ModelProto:
    return make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", [1, 3, 4, 4])], [tensor("y", None)])


class TestConstantFoldContract(OnnxPassContract):
    pass_ = ConstantFold()

    def with_pattern(self) -> onnx.ModelProto:
        return shape_chain_model()

    def without_pattern(self) -> onnx.ModelProto:
        return relu_model()
