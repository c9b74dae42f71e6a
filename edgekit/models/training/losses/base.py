"""The loss interface (:class:`DetectionLoss` -> :class:`LossResult`) and the registry by head kind (the grid
helpers the grid-head losses share are in :mod:`edgekit.models.training.losses.grid`)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from edgekit.errors import SpecError
from edgekit.models.training.data import Targets
from edgekit.spec import ModelSpec

# ==============================================================================================
# Losses
# ==============================================================================================

@dataclass(frozen=True)
class LossResult:
    """total: scalar tensor to back-propagate; parts: the weighted components, as floats."""

    total: Tensor
    parts: dict[str, float]


def loss_value(loss: Tensor) -> float:
    """A loss component as a plain float for logging (detached: no autograd warning)."""
    return float(loss.detach())


class DetectionLoss:
    """Base of the per-head-kind losses: ``loss(outputs, targets) -> LossResult``.

    ``outputs`` are the raw head tensors in ``spec.head.output_names`` order (the
    ``edgekit.spec`` contract), ``targets`` the batch's :class:`Targets` in input pixels.
    """

    kind = ""

    def __init__(self, spec: ModelSpec) -> None:
        if spec.head.kind != self.kind:
            raise SpecError(f"{type(self).__name__} is for head kind {self.kind!r}, got {spec.head.kind!r}")
        self.spec = spec
        self.num_classes = spec.num_classes

    def __call__(self, outputs: Sequence[Tensor], targets: Targets) -> LossResult:
        raise NotImplementedError

    def _check_outputs(self, outputs: Sequence[Tensor], count: int) -> None:
        if len(outputs) != count:
            raise SpecError(f"head {self.kind!r}: the model returned {len(outputs)} output(s), expected {count}")


LOSSES: dict[str, type[DetectionLoss]] = {}


def register_loss(cls: type[DetectionLoss]) -> type[DetectionLoss]:
    LOSSES[cls.kind] = cls
    return cls


def make_loss(spec: ModelSpec, **options: Any) -> DetectionLoss:
    """The loss for ``spec.head.kind`` (options are that loss's keyword arguments)."""
    if spec.head.kind not in LOSSES:
        raise SpecError(f"no training loss for head kind {spec.head.kind!r}; "
                        f"trainable kinds: {', '.join(sorted(LOSSES))}")
    loss_class = LOSSES[spec.head.kind]
    accepted = set(inspect.signature(loss_class.__init__).parameters) - {"self", "spec"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise SpecError(f"{loss_class.__name__} has no option {unknown[0]!r}; options: {', '.join(sorted(accepted))}")
    return loss_class(spec, **options)
