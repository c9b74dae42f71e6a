"""focus: a Focus stem (space-to-depth slices + conv) rewritten into one 2k x 2k stride-2 conv (module pass)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekit.convert.passes.module.focus import FocusToConv, focus_pattern, space_to_depth_conv
from edgekit.models.common import ConvBNAct, Focus
from tests.convert.pass_contract import (
    REL_TOL,
    ModulePassContract,
    apply_pass,
    images,
    init_conv,
    max_rel_error,
    randomize_batchnorm,
)

torch.set_num_threads(1)


class YOLOXFocus(nn.Module):
    """YOLOX's Focus: named patches, concatenated top-left, bottom-left, top-right, bottom-right."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = ConvBNAct(4 * c_in, c_out, 3, 1)

    def forward(self, x):
        top_left = x[..., ::2, ::2]
        top_right = x[..., ::2, 1::2]
        bot_left = x[..., 1::2, ::2]
        bot_right = x[..., 1::2, 1::2]
        return self.conv(torch.cat((top_left, bot_left, top_right, bot_right), dim=1))


class PermutedFocus(nn.Module):
    """Another slice order and the 4-index form, with a bare Conv2d (bias) as the conv, stride 2."""

    def __init__(self, c_in: int, c_out: int, k: int, padding: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(4 * c_in, c_out, k, 2, padding)

    def forward(self, x):
        parts = [x[:, :, 1::2, 1::2], x[:, :, ::2, 1::2], x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2]]
        return self.proj(torch.cat(parts, 1))


FOCUS_CASES = {
    "yolov5 k3": lambda: Focus(3, 16, kernel_size=3),
    "yolov5 k1": lambda: Focus(3, 16, kernel_size=1),
    "yolox": lambda: YOLOXFocus(3, 16),
    "permuted k3 s2 bare conv": lambda: PermutedFocus(3, 8, 3, 1),
    "permuted k5 p2": lambda: PermutedFocus(2, 8, 5, 2),
}


@pytest.mark.parametrize("case", sorted(FOCUS_CASES))
@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 34, 62)])
def test_focus_synthetic(case: str, shape: tuple[int, ...]) -> None:
    focus = randomize_batchnorm(FOCUS_CASES[case](), seed=7).eval()
    model = nn.Sequential(focus, nn.ReLU())
    rewritten, rewrites = apply_pass(FocusToConv(), model)
    assert rewrites == 1
    assert not any(focus_pattern(m) for m in rewritten.modules())  # no slicing left
    conv = next(m for m in rewritten.modules() if isinstance(m, nn.Conv2d))
    old = next(m for m in focus.modules() if isinstance(m, nn.Conv2d))
    assert conv.kernel_size == tuple(2 * k for k in old.kernel_size)
    assert conv.stride == tuple(2 * s for s in old.stride) and conv.padding == tuple(2 * p for p in old.padding)
    assert conv.in_channels * 4 == old.in_channels
    x = images(4, (shape[0], old.in_channels // 4, shape[2], shape[3]))
    assert max_rel_error(model, rewritten, x) <= REL_TOL


def test_focus_kernel_mapping_tap_by_tap() -> None:
    """Each 6x6 tap (a, b) of the new kernel equals W[o, g*C + c, a // 2, b // 2] with g the slice whose
    (row, col) offset is (a % 2, b % 2) — checked index by index against the YOLOv5 slice order."""
    conv = init_conv(nn.Conv2d(12, 5, 3, padding=1, bias=False), seed=11)
    yolov5_order = [(0, 0), (1, 0), (0, 1), (1, 1)]
    new = space_to_depth_conv(conv, yolov5_order)
    assert new.kernel_size == (6, 6) and new.stride == (2, 2) and new.padding == (2, 2)
    for o in range(5):
        for c in range(3):
            for a in range(6):
                for b in range(6):
                    g = yolov5_order.index((a % 2, b % 2))
                    assert new.weight[o, c, a, b] == conv.weight[o, g * 3 + c, a // 2, b // 2]


def test_focus_ignores_other_slicing() -> None:
    class Downsample(nn.Module):  # only two slices: not space-to-depth
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(8, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(torch.cat((x[..., ::2, ::2], x[..., 1::2, 1::2]), 1))

    model = nn.Sequential(Downsample()).eval()
    rewritten, rewrites = apply_pass(FocusToConv(), model)
    assert rewrites == 0
    assert max_rel_error(model, rewritten, images(5, (1, 4, 16, 16))) == 0.0


class TestFocusContract(ModulePassContract):
    pass_ = FocusToConv()

    def with_pattern(self) -> nn.Module:
        torch.manual_seed(0)
        return randomize_batchnorm(nn.Sequential(Focus(3, 16), nn.ReLU()), seed=3).eval()

    def without_pattern(self) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 16, 6, 2, 2), nn.ReLU()).eval()  # what the pass makes of a Focus
