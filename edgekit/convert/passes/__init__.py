"""Graph passes: named, ordered rewrites of the model, each checked for numeric equivalence.

The stages and their passes are listed, in order and with the reason for each place, in
:mod:`edgekit.convert.passes.pipeline` (which also runs them); a pass is one module under ``module/``
(torch ``nn.Module`` rewrites) or ``onnx/`` (``onnx.ModelProto`` rewrites), see :mod:`.base`.
This package re-exports the pipeline's public names.
"""

from __future__ import annotations

from edgekit.convert.passes.base import LegalizationPass, Pass, PassRecord, PassResult
from edgekit.convert.passes.pipeline import (
    DEFAULT_TOLERANCE,
    LEGALIZATION,
    MODULE_PASSES,
    MODULE_STAGE,
    ONNX_PASSES,
    ONNX_STAGE,
    Stage,
    all_pass_names,
    check_skip_names,
    legalization_stage,
    non_finite_summary,
    output_error,
    run_module_passes,
    run_onnx_passes,
    run_stages,
)

__all__ = [
    "DEFAULT_TOLERANCE",
    "LEGALIZATION",
    "MODULE_PASSES",
    "MODULE_STAGE",
    "ONNX_PASSES",
    "ONNX_STAGE",
    "LegalizationPass",
    "Pass",
    "PassRecord",
    "PassResult",
    "Stage",
    "all_pass_names",
    "check_skip_names",
    "legalization_stage",
    "non_finite_summary",
    "output_error",
    "run_module_passes",
    "run_onnx_passes",
    "run_stages",
]
