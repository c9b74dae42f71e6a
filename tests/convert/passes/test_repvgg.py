"""repvgg: RepVGG / RepConv blocks re-parameterised into one conv (module pass)."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from edgekit.convert.passes.module.fold_bn import FoldBatchNorm
from edgekit.convert.passes.module.repvgg import ReparameterizeRepVGG, RepConvDeploy, is_repvgg_like
from edgekit.models.common import RepVGGBlock
from tests.convert.pass_contract import (
    REL_TOL,
    ModulePassContract,
    apply_pass,
    count,
    images,
    max_rel_error,
    randomize_batchnorm,
)

torch.set_num_threads(1)


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


class TestRepvggContract(ModulePassContract):
    pass_ = ReparameterizeRepVGG()

    def with_pattern(self) -> nn.Module:
        torch.manual_seed(0)
        return randomize_batchnorm(nn.Sequential(nn.Conv2d(3, 8, 1), RepVGGBlock(8, 8)), seed=2).eval()

    def without_pattern(self) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()).eval()
