"""Remove layers that compute nothing at inference: Dropout (identity in eval mode) and nn.Identity.

- In an ``nn.Sequential`` (whose forward just chains its children) Identity and Dropout children
  are deleted. The remaining children keep their names (keys), so ``state_dict`` keys do not move.
- Elsewhere a Dropout is replaced by ``nn.Identity`` (the parent's forward still calls it); an
  ``nn.Identity`` attribute stays, since the forward references it (it exports to no ONNX node).

Dropout in training mode is left alone: it is not a no-op there.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from edgekit.convert.passes.base import Pass, PassResult
from edgekit.convert.passes.module.tree import get_submodule, iter_modules, replace_submodule


def is_noop(module: nn.Module) -> bool:
    return isinstance(module, nn.Identity) or (isinstance(module, _DropoutNd) and not module.training)


class RemoveNoOps(Pass):
    name = "noop"
    description = "remove eval-mode Dropout and nn.Identity layers (from Sequential containers)"

    def apply(self, model: nn.Module) -> PassResult:
        removed = 0
        replaced = 0
        for path, module in iter_modules(model):
            if isinstance(module, nn.Sequential):
                for name in [n for n, child in module._modules.items() if child is not None and is_noop(child)]:
                    del module._modules[name]
                    removed += 1
            elif isinstance(module, _DropoutNd) and not module.training and path:
                parent_path, _, name = path.rpartition(".")
                if get_submodule(model, parent_path)._modules.get(name) is module:  # not already deleted above
                    model = replace_submodule(model, path, nn.Identity())
                    replaced += 1
        notes = f"{removed} removed from Sequential, {replaced} Dropout -> Identity" if removed or replaced else ""
        return PassResult(model, removed + replaced, notes)
