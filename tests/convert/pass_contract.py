"""The contract every graph pass keeps, as abstract test classes each pass's test file inherits
(torchvision's op-test style), plus the helpers the pass tests share.

A pass's test file (``tests/convert/passes/test_<pass name>.py``) subclasses :class:`ModulePassContract`
or :class:`OnnxPassContract`, names its pass and gives two small models: one holding the pattern,
one without it. The inherited tests then assert, directly on ``Pass.apply`` (no pipeline check):

- with the pattern: rewrites > 0, the graph changed (OnnxSlim's "the optimisation did something"),
  the output names are kept and the numbers are equal to the model before the pass (torch in
  float64 for module passes; ONNX Runtime, optimisation off, for ONNX passes);
- idempotent: a second application rewrites nothing and changes nothing;
- without the pattern: zero rewrites, the same graph, the same numbers.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any, ClassVar

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import fx, nn

from edgekit.convert.passes import Pass

SIZE = 64
REL_TOL = 1e-5


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, so folding is really tested
    (fresh BNs have mean 0 / var 1 / gamma 1 / beta 0: almost the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) * 2 + 0.2)
                if module.affine:
                    module.weight.copy_(torch.rand(n, generator=generator) * 1.5 + 0.25)
                    module.bias.copy_(torch.randn(n, generator=generator) * 0.5)
    return model


def calibrate_batchnorm(model: nn.Module, size: int, seed: int = 0, batches: int = 2) -> nn.Module:
    """Random gamma / beta, then running statistics measured on random images (cumulative average over
    ``batches`` training-mode forwards of 4 images), like a trained model's: every BN then outputs
    roughly normalised activations, so the signal reaches the outputs. With PyTorch's default init it
    fades out in most families (the outputs are then their biases), and an equivalence check at 1e-5
    of the output magnitude would be nearly blind. Returns the model in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    batchnorms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for bn in batchnorms:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average
            bn.weight.uniform_(0.5, 1.5, generator=generator)
            bn.bias.normal_(0.0, 0.2, generator=generator)
        model.train()
        for _ in range(batches):
            model(torch.rand(4, 3, size, size, generator=generator))
    for bn in batchnorms:
        bn.momentum = 0.1
    return model.eval()


def signal_reaches_outputs(model: nn.Module, size: int) -> float:
    """Max over outputs of max |f(a) - f(b)| / max |f(a)| for two random images: near 0 means the
    outputs do not depend on the input and an equivalence check would prove little."""
    a, b = (torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(s)) for s in (11, 12))
    return max(((ya - yb).abs().max() / ya.abs().max()).item()
               for ya, yb in zip(outputs_of(model, a), outputs_of(model, b), strict=True))


def outputs_of(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        y = model.eval()(x)
    return list(y) if isinstance(y, (tuple, list)) else [y]


def max_rel_error(reference: nn.Module, candidate: nn.Module, x: torch.Tensor) -> float:
    worst = 0.0
    for ref, cand in zip(outputs_of(reference, x), outputs_of(candidate, x), strict=True):
        assert ref.shape == cand.shape
        scale = ref.abs().max().item()
        worst = max(worst, (ref.double() - cand.double()).abs().max().item() / (scale if scale else 1.0))
    return worst


def apply_pass(p, model: nn.Module) -> tuple[nn.Module, int]:
    """Apply one pass directly (no pipeline check) to a copy in eval mode; returns (model, rewrites)."""
    result = p.apply(copy.deepcopy(model).eval())
    return result.model, result.rewrites


def init_conv(conv: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.3)
        if conv.bias is not None:
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator))
    return conv


def count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def images(seed: int, shape: tuple[int, ...] = (2, 3, SIZE, SIZE)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def make_model(nodes, inputs, outputs, initializers=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model)  # fills the output shapes the checker requires
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    return model


def tensor(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def run_reference(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return [np.asarray(y) for y in ReferenceEvaluator(model).run(None, feeds)]


def run_ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run([o.name for o in model.graph.output], feeds)


def rel_error(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    worst = 0.0
    for ref, cand in zip(reference, candidate, strict=True):
        assert ref.shape == cand.shape
        scale = float(np.abs(ref).max()) or 1.0
        worst = max(worst, float(np.abs(ref.astype(np.float64) - cand).max()) / scale)
    return worst


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(node.op_type for node in model.graph.node)


def apply(p, model: onnx.ModelProto):
    work = onnx.ModelProto()
    work.CopyFrom(model)
    result = p.apply(work)
    onnx.checker.check_model(result.model)
    return result.model, result.rewrites



def conv_bn_model(op: str, group: int, bias: bool, seed: int, weight_via_identity: bool = False,
                  bn_params_as_constants: bool = False) -> onnx.ModelProto:
    """x [1, 8, 10, 10] -> Conv / ConvTranspose (3x3) -> BatchNormalization -> Relu -> y."""
    rng = np.random.default_rng(seed)
    c_in = 8
    c_out = 8 if group == 8 else 12  # group 8 = depthwise
    w_shape = (c_out, c_in // group, 3, 3) if op == "Conv" else (c_in, c_out // group, 3, 3)
    initializers = [init("W", rng.normal(0, 0.3, w_shape).astype(np.float32))]
    conv_inputs = ["x", "W_used" if weight_via_identity else "W"]
    if bias:
        initializers.append(init("b", rng.normal(0, 1, c_out).astype(np.float32)))
        conv_inputs.append("b")
    attrs = {"group": group, "pads": [1, 1, 1, 1]}
    if op == "ConvTranspose":
        attrs.update(strides=[2, 2], output_padding=[1, 1])
    nodes = []
    if weight_via_identity:
        nodes.append(helper.make_node("Identity", ["W"], ["W_used"]))
    nodes.append(helper.make_node(op, conv_inputs, ["z"], **attrs))
    bn_values = {"scale": rng.uniform(0.3, 1.5, c_out), "beta": rng.normal(0, 0.5, c_out),
                 "mean": rng.normal(0, 0.5, c_out), "var": rng.uniform(0.2, 2.0, c_out)}
    for name, value in bn_values.items():
        value = value.astype(np.float32)
        if bn_params_as_constants:
            nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name)))
        else:
            initializers.append(init(name, value))
    nodes += [helper.make_node("BatchNormalization", ["z", "scale", "beta", "mean", "var"], ["bn"], epsilon=1e-3),
              helper.make_node("Relu", ["bn"], ["y"])]
    return make_model(nodes, [tensor("x", [1, c_in, 10, 10])], [tensor("y", None)], initializers)


# --------------------------------------------------------------------------------------------
# the contract


class PassContract:
    """Abstract: subclasses set ``pass_`` and implement the model factories and the kind-specific hooks."""

    pass_: ClassVar[Pass]
    #: max |before - after| / max |before| per output accepted as "equal"
    tolerance: ClassVar[float]

    def with_pattern(self) -> Any:
        """A small model holding the pass's pattern (at least once)."""
        raise NotImplementedError

    def without_pattern(self) -> Any:
        """A small model of the same kind without the pattern."""
        raise NotImplementedError

    # kind-specific hooks
    def copy(self, model: Any) -> Any:
        raise NotImplementedError

    def outputs(self, model: Any) -> list[np.ndarray]:
        raise NotImplementedError

    def output_names(self, model: Any) -> list[str]:
        raise NotImplementedError

    def structure(self, model: Any) -> Any:
        """What "the graph changed" compares: module tree and weights, or nodes and initializers."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------

    @pytest.fixture(scope="class")
    @classmethod
    def rewrite(cls) -> tuple[Any, Any, int]:
        """(model before, model after, rewrites): the pass applied once to a copy of ``with_pattern()``."""
        contract = cls()
        before = contract.with_pattern()
        result = cls.pass_.apply(contract.copy(before))
        return before, result.model, result.rewrites

    def assert_equal_numbers(self, before: Any, after: Any) -> None:
        reference, candidate = self.outputs(before), self.outputs(after)
        assert len(reference) == len(candidate)
        for ref, cand in zip(reference, candidate):
            assert ref.shape == cand.shape
            assert np.isfinite(ref).all() and np.isfinite(cand).all()
            scale = float(np.abs(ref).max()) or 1.0
            assert float(np.abs(ref.astype(np.float64) - cand).max()) / scale <= self.tolerance, self.pass_.name

    def test_rewrites_the_pattern(self, rewrite) -> None:
        before, after, rewrites = rewrite
        assert rewrites > 0
        assert self.structure(after) != self.structure(before)  # the pass really did something
        assert self.output_names(after) == self.output_names(before)
        self.assert_equal_numbers(before, after)

    def test_idempotent(self, rewrite) -> None:
        _, after, _ = rewrite
        again = self.pass_.apply(self.copy(after))
        assert again.rewrites == 0
        assert self.structure(again.model) == self.structure(after)
        self.assert_equal_numbers(after, again.model)

    def test_zero_rewrites_without_pattern(self) -> None:
        model = self.without_pattern()
        result = self.pass_.apply(self.copy(model))
        assert result.rewrites == 0
        assert self.structure(result.model) == self.structure(model)
        assert self.output_names(result.model) == self.output_names(model)
        self.assert_equal_numbers(model, result.model)


class ModulePassContract(PassContract):
    """For torch module passes: models in eval mode, compared in float64 (as the pipeline checks them),
    where the exact rewrites differ by float64 rounding only. ``input_shape``: the input of both models."""

    tolerance = 1e-10
    input_shape: ClassVar[tuple[int, ...]] = (2, 3, 32, 32)

    def copy(self, model: nn.Module) -> nn.Module:
        return copy.deepcopy(model).double().eval()

    def outputs(self, model: nn.Module) -> list[np.ndarray]:
        x = torch.randn(self.input_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        return [y.numpy() for y in outputs_of(self.copy(model), x)]

    def output_names(self, model: nn.Module) -> list[str]:
        return [f"output{i}" for i in range(len(self.outputs(model)))]  # a module's outputs are positional

    def structure(self, model: nn.Module) -> Any:
        # a GraphModule by its code: a deep copy of one loses its class name
        modules = tuple((path, m.code if isinstance(m, fx.GraphModule) else type(m).__qualname__, m.extra_repr())
                        for path, m in model.named_modules())
        weights = tuple((k, tuple(v.shape), float(v.double().sum())) for k, v in model.state_dict().items())
        return modules, weights


class OnnxPassContract(PassContract):
    """For ONNX passes: the model before runs in ONNX Runtime (optimisation off), like the model after."""

    tolerance = REL_TOL

    def copy(self, model: onnx.ModelProto) -> onnx.ModelProto:
        work = onnx.ModelProto()
        work.CopyFrom(model)
        return work

    def feeds(self, model: onnx.ModelProto) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(0)
        initializers = {i.name for i in model.graph.initializer}
        return {i.name: rng.normal(size=[d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
                for i in model.graph.input if i.name not in initializers}

    def outputs(self, model: onnx.ModelProto) -> list[np.ndarray]:
        return [np.asarray(y) for y in run_ort(model, self.feeds(model))]

    def output_names(self, model: onnx.ModelProto) -> list[str]:
        return [o.name for o in model.graph.output]

    def structure(self, model: onnx.ModelProto) -> Any:
        return ([(n.op_type, tuple(n.input), tuple(n.output)) for n in model.graph.node],
                sorted(i.name for i in model.graph.initializer))
