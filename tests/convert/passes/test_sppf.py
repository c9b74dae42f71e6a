"""sppf: SPP parallel max-pools rewritten into SPPF chained pools (module pass)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekit.convert.passes.module.spp import SppToSppf
from edgekit.convert.passes.module.tree import trace_calls
from edgekit.models.common import SPP, SPPF
from tests.convert.pass_contract import (
    ModulePassContract,
    apply_pass,
    images,
    max_rel_error,
    randomize_batchnorm,
)

torch.set_num_threads(1)


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


class TestSppfContract(ModulePassContract):
    pass_ = SppToSppf()
    input_shape = (2, 16, 20, 24)  # negative values near the borders exercise the -inf padding

    def with_pattern(self) -> nn.Module:
        torch.manual_seed(0)
        return randomize_batchnorm(nn.Sequential(nn.Conv2d(16, 16, 1), SPP(16, 16, (5, 9, 13))), seed=4).eval()

    def without_pattern(self) -> nn.Module:
        torch.manual_seed(0)
        return randomize_batchnorm(nn.Sequential(nn.Conv2d(16, 16, 1), SPPF(16, 16, 5)), seed=4).eval()
