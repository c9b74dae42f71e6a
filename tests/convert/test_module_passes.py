"""Module passes (torch, before export): each on minimal synthetic modules and on every built-in family.

Every test checks two things: the rewritten model computes the same outputs as the original (the
oracle is the original module's own forward, in eval mode: max |diff| / max |reference| <= 1e-5 in
fp32) AND the structure changed in the specific way the pass promises (no BatchNorm left, no
RepVGG branches, no Focus slicing, no parallel SPP pools ...). Negative cases check that patterns a
pass must not touch are left alone (and stay equivalent).
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

from edgekit.convert.passes import MODULE_PASSES, run_module_passes
from edgekit.convert.passes.module import (
    FocusToConv,
    FoldBatchNorm,
    RemoveNoOps,
    ReparameterizeRepVGG,
    RepConvDeploy,
    SppToSppf,
    module_count,
)
from edgekit.convert.passes.module.focus import focus_pattern, space_to_depth_conv
from edgekit.convert.passes.module.repvgg import is_repvgg_like
from edgekit.convert.passes.module.tree import trace_calls
from edgekit.models import ModelConfig, build_model, family_names
from edgekit.models.common import SPP, SPPF, ConvBNAct, Focus, RepVGGBlock

torch.set_num_threads(1)

REL_TOL = 1e-5
SIZE = 64


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


def count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def images(seed: int, shape=(2, 3, SIZE, SIZE)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# fold_bn


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


def init_conv(conv: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.3)
        if conv.bias is not None:
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator))
    return conv


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


# --------------------------------------------------------------------------------------------
# repvgg


class ConvBNSeq(nn.Sequential):
    """YOLOv6's ``conv_bn``: a Sequential with named children ``conv`` and ``bn``."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, padding: int, groups: int = 1) -> None:
        super().__init__(OrderedDict(conv=nn.Conv2d(c_in, c_out, k, stride, padding, groups=groups, bias=False),
                                     bn=nn.BatchNorm2d(c_out)))


class YOLOv6RepVGG(nn.Module):
    """Upstream YOLOv6 RepVGGBlock layout: nonlinearity, se, rbr_identity, rbr_dense, rbr_1x1."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.nonlinearity = nn.ReLU()
        self.se = nn.Identity()
        self.rbr_identity = nn.BatchNorm2d(c_in) if c_out == c_in and stride == 1 else None
        self.rbr_dense = ConvBNSeq(c_in, c_out, 3, stride, 1, groups)
        self.rbr_1x1 = ConvBNSeq(c_in, c_out, 1, stride, 0, groups)

    def forward(self, x):
        id_out = 0 if self.rbr_identity is None else self.rbr_identity(x)
        return self.nonlinearity(self.se(self.rbr_dense(x) + self.rbr_1x1(x) + id_out))


class YOLOv7RepConv(nn.Module):
    """Upstream YOLOv7 RepConv layout: act, rbr_identity, rbr_dense / rbr_1x1 as Sequential(conv, bn)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.act = nn.SiLU()
        self.rbr_identity = nn.BatchNorm2d(c_in) if c_out == c_in and stride == 1 else None
        self.rbr_dense = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(c_out))
        self.rbr_1x1 = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, 0, groups=groups, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        id_out = 0 if self.rbr_identity is None else self.rbr_identity(x)
        return self.act(self.rbr_dense(x) + self.rbr_1x1(x) + id_out)


REPVGG_CASES = {
    "edgekit identity": lambda: RepVGGBlock(8, 8),
    "edgekit stride2": lambda: RepVGGBlock(8, 16, stride=2),
    "edgekit widen": lambda: RepVGGBlock(8, 16),
    "yolov6 identity": lambda: YOLOv6RepVGG(8, 8),
    "yolov6 grouped identity": lambda: YOLOv6RepVGG(8, 8, groups=4),
    "yolov7 repconv": lambda: YOLOv7RepConv(8, 8),
    "yolov7 repconv grouped stride2": lambda: YOLOv7RepConv(8, 16, stride=2, groups=2),
}


@pytest.mark.parametrize("case", sorted(REPVGG_CASES))
@pytest.mark.parametrize("fold_first", [False, True])
def test_repvgg_synthetic(case: str, fold_first: bool) -> None:
    block = randomize_batchnorm(REPVGG_CASES[case](), seed=len(case)).eval()
    model = nn.Sequential(block, nn.Identity())
    start = model
    if fold_first:  # branches already BN-folded: the pass must accept conv-with-bias branches too
        start, _ = apply_pass(FoldBatchNorm(), model)
    rewritten, rewrites = apply_pass(ReparameterizeRepVGG(), start)
    assert rewrites == 1
    assert isinstance(rewritten[0], RepConvDeploy)
    assert not any(is_repvgg_like(m) for m in rewritten.modules())
    assert count(rewritten, nn.BatchNorm2d) == 0
    assert count(rewritten, nn.Conv2d) == 1  # three branches -> one conv
    assert rewritten[0].conv.kernel_size == (3, 3)
    assert max_rel_error(model, rewritten, images(3, (2, 8, 16, 16))) <= REL_TOL


def test_repvgg_leaves_nonconforming_blocks_alone() -> None:
    class Odd(nn.Module):  # rbr_* attributes but the "1x1" branch is a 3x3: not the contract
        def __init__(self) -> None:
            super().__init__()
            self.rbr_dense = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
            self.rbr_1x1 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(self.rbr_dense(x) + self.rbr_1x1(x))

    result = ReparameterizeRepVGG().apply(nn.Sequential(Odd()).eval())
    assert result.rewrites == 0 and "RepVGG-like" in result.notes


# --------------------------------------------------------------------------------------------
# focus


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


# --------------------------------------------------------------------------------------------
# spp -> sppf


class DarknetSPP(nn.Module):
    """YOLOv4-style SPP without convs, pools in reverse order and the input last."""

    def __init__(self, kernels=(5, 9, 13)) -> None:
        super().__init__()
        self.maxpools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in kernels)

    def forward(self, x):
        return torch.cat([pool(x) for pool in reversed(self.maxpools)] + [x], dim=1)


def pool_kernels(model: nn.Module) -> list[int]:
    return sorted(m.kernel_size for m in model.modules() if isinstance(m, nn.MaxPool2d))


SPP_CASES = {
    "edgekit 5/9/13": (lambda: SPP(16, 16, (5, 9, 13)), 5),
    "darknet 5/9/13": (lambda: DarknetSPP((5, 9, 13)), 5),
    "darknet 3/5/7": (lambda: DarknetSPP((3, 5, 7)), 3),
    "darknet 13/5/9 unsorted": (lambda: DarknetSPP((13, 5, 9)), 5),
}


@pytest.mark.parametrize("case", sorted(SPP_CASES))
def test_spp_to_sppf_synthetic(case: str) -> None:
    factory, base = SPP_CASES[case]
    spp = randomize_batchnorm(factory(), seed=2).eval()
    model = nn.Sequential(nn.Conv2d(16, 16, 1), spp)
    rewritten, rewrites = apply_pass(SppToSppf(), model)
    assert rewrites == 1
    assert pool_kernels(rewritten) == [base]  # one pool module left, the smallest
    # the pool calls now form a chain: each reads the previous pool's output
    graph = trace_calls(rewritten[1])
    pools = [n for n in graph.nodes if n.op == "call_module" and isinstance(rewritten[1].get_submodule(n.target), nn.MaxPool2d)]
    assert len(pools) == 3
    assert pools[1].args[0] is pools[0] and pools[2].args[0] is pools[1]
    x = images(6, (2, 16, 20, 24))  # negative values near the borders exercise the -inf padding
    assert max_rel_error(model, rewritten, x) == 0.0  # max-pool composition is exact


def test_spp_matches_edgekit_sppf() -> None:
    """The rewritten SPP computes what edgekit's SPPF computes with the same conv weights."""
    spp = randomize_batchnorm(SPP(16, 8, (5, 9, 13)), seed=4).eval()
    sppf = SPPF(16, 8, 5).eval()
    sppf.cv1.load_state_dict(spp.cv1.state_dict())
    sppf.cv2.load_state_dict(spp.cv2.state_dict())
    rewritten, _ = apply_pass(SppToSppf(), nn.Sequential(spp))
    x = images(8, (1, 16, 12, 12))
    assert max_rel_error(sppf, rewritten, x) == 0.0


def test_spp_leaves_non_chaining_pools_alone() -> None:
    model = nn.Sequential(DarknetSPP((5, 7, 13))).eval()  # 7 != 5 + 5 - 1: no chain of 5x5 pools
    rewritten, rewrites = apply_pass(SppToSppf(), model)
    assert rewrites == 0 and pool_kernels(rewritten) == [5, 7, 13]


# --------------------------------------------------------------------------------------------
# noop


def test_remove_noops_synthetic() -> None:
    class WithDropout(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)
            self.drop = nn.Dropout2d(0.3)

        def forward(self, x):
            return self.drop(self.conv(x))

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.5), nn.Identity(), nn.ReLU(),
                          nn.Sequential(nn.Identity(), WithDropout(), nn.AlphaDropout(0.1))).eval()
    before_keys = set(model.state_dict())
    rewritten, rewrites = apply_pass(RemoveNoOps(), model)
    assert rewrites == 5  # Dropout, Identity, inner Identity, AlphaDropout removed; Dropout2d -> Identity
    assert count(rewritten, nn.modules.dropout._DropoutNd) == 0
    assert module_count(rewritten) == module_count(model) - 4
    assert set(rewritten.state_dict()) == before_keys  # remaining children keep their names
    assert max_rel_error(model, rewritten, images(9, (2, 3, 16, 16))) == 0.0


def test_remove_noops_keeps_training_dropout() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.5)).train()
    result = RemoveNoOps().apply(copy.deepcopy(model))
    assert count(result.model, nn.Dropout) == 1


# --------------------------------------------------------------------------------------------
# every built-in family through the module stage


@pytest.fixture(scope="module", params=family_names())
def family_run(request):
    family = request.param
    torch.manual_seed(0)
    model = calibrate_batchnorm(build_model(ModelConfig(family, 3, (SIZE, SIZE))), SIZE, seed=1)
    example = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    rewritten, records = run_module_passes(model, example)
    return family, model, rewritten, {r.name: r for r in records}


# float32 rounding differences (re-associated sums, folded weights) amplified through these random
# BN-calibrated networks: measured up to ~6e-5 of the output magnitude for exact rewrites (see the
# edgekit.convert.passes docstring). The exactness itself is asserted in float64 below.
FP32_NOISE_TOL = 1e-4
FP64_EXACT_TOL = 1e-9


def test_family_module_passes_equivalent_and_restructured(family_run) -> None:
    family, original, rewritten, records = family_run
    assert list(records) == [p.name for p in MODULE_PASSES]
    assert signal_reaches_outputs(original, SIZE) > 0.05  # the checks below can see a broken rewrite
    for record in records.values():
        assert record.check_dtype == "float64" and record.max_rel <= REL_TOL, record
    fresh = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    # independent of the pipeline's own check: each pass applied here in float64, against the original
    # module's own float64 forward on a fresh input — exact up to float64 rounding
    original64 = copy.deepcopy(original).double()
    step = copy.deepcopy(original64)
    for p in MODULE_PASSES:
        step = p.apply(step).model.eval()
        assert max_rel_error(original64, step, fresh.double()) <= FP64_EXACT_TOL, (family, p.name)
    # the deployed float32 result against the float32 original: equal up to float32 rounding
    assert {t.dtype for t in rewritten.parameters()} == {torch.float32}
    assert max_rel_error(original, rewritten, fresh) <= FP32_NOISE_TOL
    # the patterns are gone
    assert count(rewritten, nn.BatchNorm2d) == 0
    assert not any(is_repvgg_like(m) for m in rewritten.modules())
    assert not any(focus_pattern(m) for m in rewritten.modules())
    assert max(pool_kernels(rewritten), default=0) <= 5
    assert module_count(rewritten) <= module_count(original)
    assert records["fold_bn"].rewrites > 0  # every family has conv -> BN pairs


EXPECTED_REWRITES = {  # family -> pass -> rewrites the family's layout implies
    "yolov5": {"focus": 1, "sppf": 1, "repvgg": 0},
    "yolox": {"focus": 1, "sppf": 1, "repvgg": 0},
    "yolov6": {"focus": 0, "sppf": 0},
    "yolov8": {"focus": 0, "sppf": 0, "repvgg": 0},
    "centernet": {"focus": 0, "sppf": 0, "repvgg": 0},
    "ssd": {"focus": 0, "sppf": 0, "repvgg": 0},
    "fastestdet": {"focus": 0, "sppf": 0, "repvgg": 0},
}


def test_family_expected_rewrites(family_run) -> None:
    family, original, rewritten, records = family_run
    for name, rewrites in EXPECTED_REWRITES.get(family, {}).items():
        assert records[name].rewrites == rewrites, (family, name)
    if family == "yolov6":
        blocks = sum(is_repvgg_like(m) for m in original.modules())
        assert records["repvgg"].rewrites == blocks > 0
        assert records["repvgg"].nodes_after < records["repvgg"].nodes_before
        assert count(rewritten, RepConvDeploy) == blocks
    if family in ("yolov5", "yolox"):
        assert count(original, Focus) == 1 and count(rewritten, Focus) == 0
        assert count(original, SPP) == 1 and count(rewritten, SPP) == 0
        assert any(isinstance(m, nn.Conv2d) and m.kernel_size == (6, 6) and m.stride == (2, 2) for m in rewritten.modules())
    if family == "centernet":  # BN folded into the transposed convs
        deconvs = [m for m in rewritten.modules() if isinstance(m, nn.ConvTranspose2d)]
        assert deconvs and all(m.bias is not None for m in deconvs)
    if family == "fastestdet":  # folded BNs in Sequentials become Identity, then vanish
        assert records["noop"].rewrites == records["fold_bn"].rewrites
        assert records["noop"].nodes_after < records["noop"].nodes_before


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
