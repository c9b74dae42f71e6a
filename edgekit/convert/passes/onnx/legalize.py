"""Target legalisation: the last ONNX stage, where a backend rewrites what *it* cannot run.

Examples of what belongs here: replacing an op a backend lacks by an equivalent sequence, splitting
a Concat with too many inputs for an accelerator, or pinning a dynamic shape a compiler needs static.
None of these are wanted in the portable ONNX, so they run only for the target that needs them.

How a backend adds one (two steps, nothing registers itself implicitly):

1. subclass :class:`LegalizationPass` (here or in the backend's build module) — set ``name``
   (unique across all passes, e.g. ``"ncnn_split_concat"``), ``description``, ``backend``, and
   implement ``apply(model) -> PassResult`` (mutating the given ``onnx.ModelProto`` is fine);
2. add an instance to that backend's tuple in :data:`BACKEND_LEGALIZATION` below.

The chain then calls ``run_onnx_passes(..., extra_passes=legalization_passes(backend))``: the passes
run after the generic ONNX passes, in tuple order, each followed by the same equivalence check
(ONNX Runtime, optimisation disabled) — so a legalisation must keep the graph runnable by ONNX
Runtime, and ``--skip NAME`` works for them like for any pass.
"""

from __future__ import annotations

from typing import ClassVar

from edgekit.convert.passes.base import Pass


class LegalizationPass(Pass):
    """A backend-specific ONNX rewrite; ``backend`` names the Runner it prepares the graph for."""

    backend: ClassVar[str]


#: Legalisation passes every backend gets (none yet).
DEFAULT_LEGALIZATION_PASSES: tuple[LegalizationPass, ...] = ()

#: backend name (as in edgekit.runtime.backends) -> its legalisation passes, in order. Empty for now.
BACKEND_LEGALIZATION: dict[str, tuple[LegalizationPass, ...]] = {}


def legalization_passes(backend: str | None = None) -> tuple[LegalizationPass, ...]:
    """The legalisation stage for ``backend``: the defaults, then the backend's own passes."""
    return DEFAULT_LEGALIZATION_PASSES + BACKEND_LEGALIZATION.get(backend or "", ())


def all_legalization_passes() -> tuple[LegalizationPass, ...]:
    """Every legalisation pass of every backend (for validating ``--skip`` names)."""
    found: list[LegalizationPass] = list(DEFAULT_LEGALIZATION_PASSES)
    for passes in BACKEND_LEGALIZATION.values():
        found.extend(p for p in passes if p not in found)
    return tuple(found)
