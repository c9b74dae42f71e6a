"""The loss interface (:class:`DetectionLoss` -> :class:`LossResult`), the registry by head kind and the grid
helpers the losses share."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
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


def head_strides(spec: ModelSpec) -> list[float]:
    strides = spec.head.params.get("strides")
    if not strides:
        raise SpecError(f"head kind {spec.head.kind!r} needs params.strides")
    return [float(s) for s in strides]


def grid_points(outputs: Sequence[Tensor], strides: Sequence[float]) -> tuple[Tensor, Tensor]:
    """Cells of every level, level by level, row-major: (cell xy [A, 2] (column, row), stride [A])."""
    cells, stride_list = [], []
    for out, stride in zip(outputs, strides):
        h, w = out.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
        cells.append(torch.stack([xs.flatten(), ys.flatten()], dim=1))
        stride_list.append(torch.full((h * w,), float(stride)))
    return torch.cat(cells), torch.cat(stride_list)


def flatten_levels(outputs: Sequence[Tensor]) -> Tensor:
    """``[B, C, H_l, W_l]`` per level -> ``[B, A, C]``, levels concatenated, cells row-major."""
    return torch.cat([o.flatten(2).transpose(1, 2) for o in outputs], dim=1)
