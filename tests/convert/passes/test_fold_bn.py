"""fold_bn: eval-mode BatchNorm folded into the conv / transposed conv before it (module pass)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgekit.convert.passes.module.fold_bn import FoldBatchNorm
from tests.convert.pass_contract import (
    REL_TOL,
    ModulePassContract,
    apply_pass,
    count,
    images,
    init_conv,
    max_rel_error,
    randomize_batchnorm,
)

torch.set_num_threads(1)


class ProjNorm(nn.Module):
    """A conv -> BN block whose attributes are *not* called conv / bn: found by tracing its forward."""

    def __init__(self, conv: nn.Module, channels: int) -> None:
        super().__init__()
        self.proj = conv
        self.norm = nn.BatchNorm2d(channels)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.norm(self.proj(x)))


class UntraceableConvBN(nn.Module):
    """Has conv / bn attributes but a data-dependent forward fx cannot trace: folded by convention."""

    def __init__(self, conv: nn.Module, channels: int) -> None:
        super().__init__()
        self.conv = conv
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        if x.sum() > 1e30:  # data-dependent branch: fx raises on it
            return x
        return self.bn(self.conv(x))


class ConvOutputReused(nn.Module):
    """The conv output is read by the BN *and* by an add: folding would change the add's input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def make_conv(kind: str, bias: bool, c_in: int = 8, c_out: int = 8) -> nn.Module:
    if kind == "plain":
        return nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)
    if kind == "grouped":
        return nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, groups=2, bias=bias)
    if kind == "depthwise":
        return nn.Conv2d(c_in, c_in, 5, padding=2, groups=c_in, bias=bias)
    if kind == "pointwise":
        return nn.Conv2d(c_in, c_out * 2, 1, bias=bias)
    if kind == "transpose":
        return nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=bias)
    if kind == "transpose_grouped":
        return nn.ConvTranspose2d(c_in, c_out * 2, 3, stride=2, padding=1, output_padding=1, groups=4, bias=bias)
    raise ValueError(kind)


CONV_KINDS = ("plain", "grouped", "depthwise", "pointwise", "transpose", "transpose_grouped")


@pytest.mark.parametrize("kind", CONV_KINDS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("form", ["sequential", "traced", "convention"])
def test_fold_bn_synthetic(kind: str, bias: bool, form: str) -> None:
    conv = init_conv(make_conv(kind, bias), seed=len(kind))
    channels = conv.out_channels
    if form == "sequential":
        model = nn.Sequential(conv, nn.BatchNorm2d(channels), nn.ReLU())
    elif form == "traced":
        model = nn.Sequential(ProjNorm(conv, channels))
    else:
        model = UntraceableConvBN(conv, channels)
    randomize_batchnorm(model, seed=3).eval()
    x = images(1, (2, 8, 16, 16))
    folded, rewrites = apply_pass(FoldBatchNorm(), model)
    assert rewrites == 1
    assert count(folded, nn.BatchNorm2d) == 0
    new_conv = next(m for m in folded.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))
    assert new_conv.bias is not None  # the BN shift lives in the conv bias now
    assert max_rel_error(model, folded, x) <= REL_TOL


def test_fold_bn_weights_match_hand_formula() -> None:
    """W' = W * gamma / sqrt(var + eps) per output channel, b' = (b - mean) * gamma / sqrt(var + eps) + beta,
    computed here independently for a grouped ConvTranspose (output channel axis = dim 1 within each group)."""
    conv = init_conv(nn.ConvTranspose2d(4, 6, 3, groups=2, bias=True), seed=5)
    bn = nn.BatchNorm2d(6, eps=1e-3)
    model = randomize_batchnorm(nn.Sequential(conv, bn), seed=9).eval()
    folded, _ = apply_pass(FoldBatchNorm(), model)
    s = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    expected_w = conv.weight.detach().double().clone()
    for i in range(4):                  # input channel i belongs to group i // 2
        group = i // 2
        for j in range(3):              # out / groups = 3 columns per group
            expected_w[i, j] *= s[group * 3 + j]
    expected_b = (conv.bias.detach().double() - bn.running_mean.double()) * s + bn.bias.detach().double()
    torch.testing.assert_close(folded[0].weight.double(), expected_w, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(folded[0].bias.double(), expected_b, rtol=1e-6, atol=1e-7)


def test_fold_bn_leaves_reused_conv_output_and_shared_convs_alone() -> None:
    reused = randomize_batchnorm(ConvOutputReused()).eval()
    folded, rewrites = apply_pass(FoldBatchNorm(), reused)
    assert rewrites == 0 and count(folded, nn.BatchNorm2d) == 1
    assert max_rel_error(reused, folded, images(2, (1, 4, 8, 8))) == 0.0

    shared_conv = nn.Conv2d(4, 4, 3, padding=1)
    tied = randomize_batchnorm(nn.ModuleDict({"a": nn.Sequential(shared_conv, nn.BatchNorm2d(4)),
                                              "b": nn.Sequential(shared_conv, nn.BatchNorm2d(4))}))
    folded_tied, rewrites = apply_pass(FoldBatchNorm(), tied)
    assert rewrites == 0 and count(folded_tied, nn.BatchNorm2d) == 2


def test_fold_bn_skips_training_mode_batchnorm() -> None:
    model = randomize_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))).train()
    result = FoldBatchNorm().apply(copy.deepcopy(model))
    assert result.rewrites == 0 and count(result.model, nn.BatchNorm2d) == 1
    assert "training mode" in result.notes


def test_tracing_does_not_leave_proxies_on_modules() -> None:
    """A forward that caches on self (like YOLO heads caching grids) is traced with proxies; the
    cache must be what it was before the pass looked at the module."""

    class Caching(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.bn = nn.BatchNorm2d(4)
            self.grids = [torch.zeros(1)]
            self.last = None

        def forward(self, x):
            y = self.bn(self.conv(x))
            self.grids[0] = y
            self.last = y
            return y

    model = nn.Sequential(randomize_batchnorm(Caching())).eval()
    folded, rewrites = apply_pass(FoldBatchNorm(), model)
    assert rewrites == 1
    cached = folded[0]
    assert cached.last is None and isinstance(cached.grids[0], torch.Tensor) and cached.grids[0].shape == (1,)
    assert max_rel_error(model, folded, images(10, (1, 3, 8, 8))) <= REL_TOL


class TestFoldBnContract(ModulePassContract):
    pass_ = FoldBatchNorm()

    def with_pattern(self) -> nn.Module:
        torch.manual_seed(0)
        return randomize_batchnorm(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                                 nn.Conv2d(8, 4, 1)), seed=1).eval()

    def without_pattern(self) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
