"""Grid helpers of the grid-head losses (YOLOX, DFL, anchor-based YOLO): strides, cell coordinates and the
per-level outputs flattened in the decoders' candidate order (level by level, cells row-major)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from edgekit.errors import SpecError
from edgekit.spec import ModelSpec


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
