"""simplify: onnxsim (onnxslim as the fallback) as the ONNX stage's broad clean-up (ONNX pass)."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper

from edgekit.convert.passes.onnx import simplify as simplify_module
from edgekit.convert.passes.onnx.simplify import Simplify
from tests.convert.pass_contract import (
    REL_TOL,
    OnnxPassContract,
    apply,
    conv_bn_model,
    make_model,
    ops,
    rel_error,
    run_ort,
    run_reference,
    tensor,
)

torch.set_num_threads(1)


def test_simplify_falls_back_to_onnxslim_then_leaves_model(monkeypatch) -> None:
    model = conv_bn_model("Conv", 1, True, seed=8)
    x = {"x": np.random.default_rng(5).normal(size=(1, 8, 10, 10)).astype(np.float32)}

    simplified, _ = apply(Simplify(), model)
    assert ops(simplified)["BatchNormalization"] == 0  # onnxsim's own Conv+BN fusion
    assert rel_error(run_reference(model, x), run_ort(simplified, x)) <= REL_TOL

    def broken(_model):
        raise RuntimeError("simulated onnxsim failure")

    monkeypatch.setattr(simplify_module, "_run_onnxsim", broken)
    result = Simplify().apply(model)
    assert "onnxsim failed: simulated onnxsim failure" in result.notes and "onnxslim:" in result.notes
    assert rel_error(run_reference(model, x), run_ort(result.model, x)) <= REL_TOL

    monkeypatch.setattr(simplify_module, "_run_onnxslim", broken)
    result = Simplify().apply(model)
    assert result.rewrites == 0 and "left unchanged" in result.notes
    assert result.model.SerializeToString() == model.SerializeToString()


class TestSimplifyContract(OnnxPassContract):
    pass_ = Simplify()

    def with_pattern(self) -> onnx.ModelProto:
        return conv_bn_model("Conv", 1, True, seed=2)  # onnxsim fuses the BatchNormalization into the Conv

    def without_pattern(self) -> onnx.ModelProto:
        return make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", [2, 3])], [tensor("y", None)])
