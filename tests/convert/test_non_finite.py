"""NaN / Inf never pass for "no error".

``NaN > tolerance`` is False and ``max(0.0, nan)`` is 0.0, so a comparison that does not look for
non-finite values reports a NaN model as a perfect one. Three guards, each fed the bad input here:
the checkpoint loader refuses non-finite weights (naming the first such tensor), the pass pipeline
refuses a model whose outputs are not finite before any pass, and a pass whose outputs become NaN
aborts naming the pass; the comparison helper itself calls any non-finite value an infinite error.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from edgekit.cli import main
from edgekit.convert.passes import (
    MODULE_PASSES,
    LegalizationPass,
    Pass,
    PassResult,
    output_error,
    run_module_passes,
    run_onnx_passes,
)
from edgekit.errors import ConversionError, ModelFileError
from edgekit.models import ModelConfig, build_model
from edgekit.models.loading import load_checkpoint, save_checkpoint
from tests.convert.test_pass_pipeline import example_input, small_convnet, small_onnx

NAMES = ("a", "b", "c")


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig("yolov8", 3, (64, 64)), NAMES).eval()


def poisoned(value: float, keys: tuple[str, ...]) -> nn.Module:
    model = small_model()
    state = model.state_dict()
    with torch.no_grad():
        for key in keys:
            state[key].view(-1)[:3] = value
    return model


def later_and_earlier_keys(model: nn.Module) -> tuple[str, str]:
    """Two floating tensors: one late in the model's order, one early (the one the error must name)."""
    keys = [k for k, v in model.state_dict().items() if v.is_floating_point()]
    return keys[len(keys) // 2], keys[5]


# --- (a) the checkpoint loader ------------------------------------------------------------------

@pytest.mark.parametrize("value, word", [(math.nan, "NaN"), (math.inf, "Inf"), (-math.inf, "Inf")])
def test_edgekit_checkpoint_with_non_finite_weights_is_refused(value, word, tmp_path):
    late, early = later_and_earlier_keys(small_model())
    path = save_checkpoint(poisoned(value, (late, early)), tmp_path / "bad.pt")
    with pytest.raises(ModelFileError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: tensor {early!r} holds 3 {word} values"), message


def test_plain_state_dict_with_nan_is_refused(tmp_path):
    model = small_model()
    late, early = later_and_earlier_keys(model)
    path = tmp_path / "weights.pt"
    torch.save(poisoned(math.nan, (early,)).state_dict(), path)
    with pytest.raises(ModelFileError, match=rf"tensor {early!r} holds 3 NaN values"):
        load_checkpoint(path, family="yolov8", class_names=NAMES, input_size=(64, 64))


def test_finite_checkpoint_still_loads(tmp_path):
    path = save_checkpoint(small_model(), tmp_path / "good.pt")
    assert load_checkpoint(path).spec.class_names == NAMES


def test_export_cli_refuses_a_nan_checkpoint(tmp_path, capsys):
    late, early = later_and_earlier_keys(small_model())
    path = save_checkpoint(poisoned(math.nan, (early,)), tmp_path / "bad.pt")
    code = main(["export", str(path), "-o", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code != 0
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "NaN" in lines[0] and early in lines[0], captured.err
    assert "Traceback" not in captured.err
    assert not (tmp_path / "out").exists()


# --- (b) the comparison helper and the pass checks -------------------------------------------

def test_comparison_helper_fails_on_any_non_finite_value():
    finite = np.array([1.0, 2.0, -2.0], np.float32)
    nan = np.array([1.0, np.nan, -2.0], np.float32)
    inf = np.array([1.0, np.inf, -2.0], np.float32)
    for reference, candidate in [(finite, nan), (nan, finite), (nan, nan.copy()), (inf, inf.copy()), (finite, inf)]:
        error = output_error([reference], [candidate])
        assert error.max_rel == math.inf and error.max_abs == math.inf, (reference, candidate, error)
        assert not error.max_rel <= 1e-5
    # finite values keep their measured error
    error = output_error([finite], [finite + np.float32(0.5)])
    assert error.max_abs == 0.5 and error.max_rel == 0.25


class ProducesNaN(Pass):
    name: ClassVar[str] = "poison"
    description: ClassVar[str] = "writes NaN into a conv weight"

    def apply(self, model):
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        with torch.no_grad():
            conv.weight[0, 0, 0, 0] = float("nan")
        return PassResult(model, 1)


def test_module_pass_whose_output_becomes_nan_aborts_naming_it():
    with pytest.raises(ConversionError, match=r"pass 'poison' broke equivalence: .*NaN"):
        run_module_passes(small_convnet(), example_input(), passes=(MODULE_PASSES[0], ProducesNaN()))


def test_module_passes_refuse_a_model_that_is_already_nan():
    """NaN before and after a pass used to compare as equal: every pass 'passed' with error 0.0."""
    model = small_convnet()
    with torch.no_grad():
        model[0].bias[1] = float("nan")
    with pytest.raises(ConversionError, match=r"module passes: the model's outputs hold \d+ NaN values .*before any pass"):
        run_module_passes(model, example_input())


class PoisonBias(LegalizationPass):
    name: ClassVar[str] = "test_poison_bias"
    description: ClassVar[str] = "writes NaN into the conv bias"
    backend: ClassVar[str] = "test"

    def apply(self, model):
        bias = next(i for i in model.graph.initializer if i.name == "b")
        values = numpy_helper.to_array(bias).copy()
        values[0] = np.nan
        bias.CopyFrom(numpy_helper.from_array(values, "b"))
        return PassResult(model, 1)


def test_onnx_pass_whose_output_becomes_nan_aborts_naming_it():
    example = np.random.default_rng(0).normal(size=(1, 3, 8, 8)).astype(np.float32)
    with pytest.raises(ConversionError, match=r"pass 'test_poison_bias' broke equivalence: .*NaN"):
        run_onnx_passes(small_onnx(), example, extra_passes=[PoisonBias()])


def test_onnx_passes_refuse_a_model_that_is_already_nan():
    model = PoisonBias().apply(small_onnx()).model
    example = np.random.default_rng(0).normal(size=(1, 3, 8, 8)).astype(np.float32)
    with pytest.raises(ConversionError, match=r"ONNX passes: the input model's outputs hold \d+ NaN values"):
        run_onnx_passes(model, example)
