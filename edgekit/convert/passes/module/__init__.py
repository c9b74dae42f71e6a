"""Module passes: torch ``nn.Module`` rewrites applied before export, one pass per module.

Each pass recognises its pattern by structure (what a module's forward does with its children,
or a documented attribute layout), not by edgekit class names, so third-party models with the same
pattern are rewritten too. The order they run in is ``edgekit.convert.passes.MODULE_PASSES``.
"""

from __future__ import annotations

from edgekit.convert.passes.module.focus import FocusToConv
from edgekit.convert.passes.module.fold_bn import FoldBatchNorm
from edgekit.convert.passes.module.noop import RemoveNoOps
from edgekit.convert.passes.module.repvgg import ReparameterizeRepVGG, RepConvDeploy
from edgekit.convert.passes.module.spp import SppToSppf
from edgekit.convert.passes.module.tree import module_count

__all__ = ["FocusToConv", "FoldBatchNorm", "RemoveNoOps", "RepConvDeploy", "ReparameterizeRepVGG", "SppToSppf",
           "module_count"]
