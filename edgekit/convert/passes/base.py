"""The pass contract shared by the module (torch) and ONNX stages.

A pass is a named object whose ``apply(model)`` returns a :class:`PassResult`: the rewritten model
and how many rewrites it made. Passes may mutate the model they are given: the pipeline
(:mod:`edgekit.convert.passes.pipeline`) works on its own copy of the caller's model and aborts on the
first failing pass, so a failing pass never corrupts its caller's model. A pass that finds nothing to
do returns the model unchanged with ``rewrites=0``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class PassResult:
    """model: the rewritten model (nn.Module or onnx.ModelProto); rewrites: how many pattern
    instances were rewritten (0 = nothing changed); notes: one short human-readable line."""

    model: Any
    rewrites: int
    notes: str = ""


class Pass(ABC):
    """A named graph transform. Subclasses set ``name`` (what ``--skip`` takes: lower-case words
    joined by ``_``) and a one-line ``description``, and implement :meth:`apply`.

    Module passes must create new parameters in the dtype and device of the tensors they replace:
    the module stage runs in float64 (see :func:`edgekit.convert.passes.run_module_passes`).
    """

    name: ClassVar[str]
    description: ClassVar[str]

    @abstractmethod
    def apply(self, model: Any) -> PassResult:
        """Rewrite ``model`` (may be mutated in place) and return the result."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class LegalizationPass(Pass):
    """A backend-specific rewrite: makes the model expressible for ``backend``'s converter (the name of
    its Runner in ``edgekit.runtime.backends``). It runs in that backend's legalisation stage only
    (:data:`edgekit.convert.passes.pipeline.LEGALIZATION`), never on the portable ONNX."""

    backend: ClassVar[str]


@dataclass(frozen=True)
class PassRecord:
    """What one pass did, for the manifest and the one-line CLI summary.

    stage: the name of the stage that ran it: ``"module"``, ``"onnx"``, or a backend's legalisation stage
    (``"ncnn"``: torch modules). nodes_before / nodes_after: the number of torch modules
    (``len(list(model.modules()))``) for torch stages, the number of top-level graph nodes for the
    ONNX stage. max_abs / max_rel: the largest output difference between the model before and
    after the pass over the check inputs (rel = abs / max |reference output|, per output).
    skipped: the pass was named in ``skip`` and did not run (all numbers are then 0 / unchanged).
    check_dtype: the precision the before/after comparison ran in (``"float64"`` for module passes on
    float32 models — see :func:`edgekit.convert.passes.run_module_passes` — else the model's own).
    """

    name: str
    stage: str
    rewrites: int
    max_abs: float
    max_rel: float
    nodes_before: int
    nodes_after: int
    seconds: float
    skipped: bool = False
    notes: str = ""
    check_dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line, e.g. ``module fold_bn: 57 rewrites, 281 -> 224 modules, max rel err 2.1e-07 (0.04 s)``."""
        if self.skipped:
            return f"{self.stage} {self.name}: skipped"
        unit = "nodes" if self.stage == "onnx" else "modules"
        line = (f"{self.stage} {self.name}: {self.rewrites} rewrites, {self.nodes_before} -> {self.nodes_after} {unit}, "
                f"max rel err {self.max_rel:.1e} ({self.seconds:.2f} s)")
        return f"{line}; {self.notes}" if self.notes else line
