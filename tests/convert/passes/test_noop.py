"""noop: eval-mode Dropout and nn.Identity removed (module pass)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from edgekit.convert.passes.module.noop import RemoveNoOps
from edgekit.convert.passes.module.tree import module_count
from tests.convert.pass_contract import (
    ModulePassContract,
    apply_pass,
    count,
    images,
    max_rel_error,
)

torch.set_num_threads(1)


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


class TestNoopContract(ModulePassContract):
    pass_ = RemoveNoOps()

    def with_pattern(self) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.5), nn.Identity(), nn.ReLU()).eval()

    def without_pattern(self) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
