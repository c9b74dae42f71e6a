"""ncnn_focus: NCNN legalisation of a Focus stem -> pixel_unshuffle + the conv with permuted input channels.

The oracle is the original Focus module's own forward (float64); the structural claim is that no
strided slicing is left (ncnn cannot express it) and a ``pixel_unshuffle`` reads the input instead.
Recognition is structural: edgekit's Focus, the Ultralytics/YOLOv5 Focus (a third-party layout
rebuilt by edgekit's importer) and other slice orders are all rewritten.
"""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from edgekit.convert.chain import convert
from edgekit.convert.passes import LEGALIZATION, all_pass_names, legalization_stage, run_stages
from edgekit.convert.passes.module.focus import focus_pattern
from edgekit.convert.passes.module.ncnn_focus import FocusToPixelUnshuffle, PixelUnshuffleFocus
from edgekit.models import ModelConfig, build_model
from edgekit.models.common import Focus
from edgekit.models.imports.ultralytics_blocks import Focus as UltralyticsFocus
from edgekit.runtime.backends import get_runner_class
from edgekit.targets import parse_target
from tests.convert.pass_contract import (
    ModulePassContract,
    apply_pass,
    count,
    images,
    max_rel_error,
    randomize_batchnorm,
)
from tests.convert.passes.test_focus import PermutedFocus, YOLOXFocus

torch.set_num_threads(1)

CASES = {
    "edgekit k3": lambda: Focus(3, 16, kernel_size=3),
    "edgekit k1": lambda: Focus(3, 16, kernel_size=1),
    "edgekit k3 s2": lambda: Focus(3, 16, kernel_size=3, stride=2),
    "edgekit k5": lambda: Focus(3, 16, kernel_size=5),
    "ultralytics k3": lambda: UltralyticsFocus(3, 16, k=3),
    "yolox order": lambda: YOLOXFocus(3, 16),
    "permuted order, bare conv": lambda: PermutedFocus(3, 8, 3, 1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_pixel_unshuffle_focus_equals_focus(case: str) -> None:
    focus = randomize_batchnorm(CASES[case](), seed=len(case)).eval()
    model = nn.Sequential(focus, nn.ReLU())
    rewritten, rewrites = apply_pass(FocusToPixelUnshuffle(), model)
    assert rewrites == 1 and isinstance(rewritten[0], PixelUnshuffleFocus)
    assert not any(focus_pattern(m) for m in rewritten.modules())  # no strided slicing left
    assert max_rel_error(model, rewritten, images(1, (2, 3, 32, 48))) <= 1e-5
    assert count(model, type(focus)) == 1  # the caller's model is left alone (apply_pass works on a copy)


def test_grouped_focus_conv_is_left_alone() -> None:
    class GroupedFocus(nn.Module):  # the channel permutation would cross the conv's groups
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(12, 8, 3, padding=1, groups=2)

        def forward(self, x):
            return self.conv(torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1))

    rewritten, rewrites = apply_pass(FocusToPixelUnshuffle(), nn.Sequential(GroupedFocus()))
    assert rewrites == 0 and not isinstance(rewritten[0], PixelUnshuffleFocus)


def test_is_ncnn_legalisation_stage_and_skippable() -> None:
    stage = legalization_stage("ncnn")
    assert stage is LEGALIZATION["ncnn"] and [p.name for p in stage.passes] == ["ncnn_focus"]
    assert legalization_stage("openvino") is None and "ncnn_focus" in all_pass_names()
    model = nn.Sequential(randomize_batchnorm(Focus(3, 8), seed=2), nn.ReLU()).eval()
    example = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    (legal,), records = run_stages([stage], model, example)
    assert [(r.stage, r.name, r.rewrites, r.check_dtype) for r in records] == [("ncnn", "ncnn_focus", 1, "float64")]
    assert records[0].max_rel <= 1e-12 and isinstance(legal[0], PixelUnshuffleFocus)
    assert next(legal.parameters()).dtype == torch.float32  # back in the caller's dtype
    (kept,), records = run_stages([stage], model, example, skip=["ncnn_focus"])
    assert records[0].skipped and isinstance(kept[0], Focus)


class TestNcnnFocusContract(ModulePassContract):
    pass_ = FocusToPixelUnshuffle()

    def with_pattern(self) -> nn.Module:
        torch.manual_seed(0)
        return randomize_batchnorm(nn.Sequential(UltralyticsFocus(3, 16, k=3), nn.ReLU()), seed=3).eval()

    def without_pattern(self) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 16, 6, 2, 2), nn.ReLU()).eval()


@pytest.mark.skipif(not get_runner_class("ncnn").is_available(), reason="ncnn not installed")
def test_ncnn_build_of_a_focus_model_goes_through_the_legalisation_stage(tmp_path) -> None:
    """With the generic focus rewrite skipped (``--no-passes`` takes the same route: the legalisation stage
    runs without the module stage, see chain._export_stage), the Focus stem still reaches ncnn as
    pixel_unshuffle — as a recorded pass of the ``ncnn`` stage, not a rewrite hidden in the builder — and
    the built ncnn model matches the PyTorch model."""
    torch.manual_seed(0)
    model = build_model(ModelConfig("yolov5", 3, (64, 64)), ("a", "b", "c")).eval()
    target = parse_target("test-ncnn", {"description": "test", "backend": "ncnn", "precision": "fp32",
                                        "precisions": ["fp32"]}, "test.toml")
    manifest = convert(model, target, tmp_path / "art", skip_passes=["focus"])
    legal = [r for r in manifest.info["passes"] if r["stage"] == "ncnn"]
    assert [(r["name"], r["rewrites"]) for r in legal] == [("ncnn_focus", 1)]
    assert manifest.info["parity"]["ncnn/fp32"]["checked"] and manifest.info["parity"]["ncnn/fp32"]["max_rel"] <= 1e-4
    onnx_ops = {n.op_type for n in onnx.load(str(tmp_path / "art" / "model.onnx")).graph.node}
    assert "Slice" in onnx_ops  # the portable ONNX keeps its Focus: legalisation is for ncnn only
