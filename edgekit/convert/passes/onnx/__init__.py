"""ONNX passes: rewrites of an exported ``onnx.ModelProto``, one pass per module.

The order they run in is ``edgekit.convert.passes.ONNX_PASSES``; the target legalisation stage
(:mod:`.legalize`) is appended per backend.
"""

from __future__ import annotations

from edgekit.convert.passes.onnx.bn_fold import FoldBatchNormOnnx
from edgekit.convert.passes.onnx.constant_fold import ConstantFold
from edgekit.convert.passes.onnx.dead_nodes import RemoveDeadNodes
from edgekit.convert.passes.onnx.legalize import (
    BACKEND_LEGALIZATION,
    DEFAULT_LEGALIZATION_PASSES,
    LegalizationPass,
    legalization_passes,
)
from edgekit.convert.passes.onnx.simplify import Simplify

__all__ = ["BACKEND_LEGALIZATION", "DEFAULT_LEGALIZATION_PASSES", "ConstantFold", "FoldBatchNormOnnx",
           "LegalizationPass", "RemoveDeadNodes", "Simplify", "legalization_passes"]
