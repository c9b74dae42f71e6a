"""NCNN legalisation: a Focus stem -> ``pixel_unshuffle`` (ncnn ``Reorg``) and the same conv, channels permuted.

Why: NCNN has no strided slice, so a Focus stem's ``x[..., r::2, q::2]`` slices (YOLOv5 <= v5.0, YOLOX)
do not convert through pnnx. The generic ``focus`` pass already turns a Focus into one 6x6 conv for
every backend; this pass is the NCNN builder's safety net for the Focus stems still in the model it
traces (``--skip focus``, ``--no-passes``, or a stem whose conv the 6x6 rewrite does not take).

Recognised by structure, as the ``focus`` pass recognises it (:func:`focus.focus_stem`): any module
whose forward is ``child(cat of the four stride-2 slices of x)`` with ``child`` a conv or a module
whose forward starts with a conv — edgekit's Focus, the Ultralytics/YOLOv5 Focus and YOLOX's alike.

Math. Both gather the four pixels of every 2x2 block into channels, in different orders:

- Focus: channel ``g*C + c`` holds ``x[c, r_g::2, q_g::2]`` for its g-th (row, col) offset (r_g, q_g);
- ``pixel_unshuffle(x, 2)``: channel ``4c + 2r + q`` holds ``x[c, r::2, q::2]``.

So the conv that reads them is the same conv with its input channels permuted,
``W'[:, 4c + 2 r_g + q_g] = W[:, g*C + c]`` — exact for any kernel, stride and padding (a grouped
conv, where the permutation would cross groups, is left alone).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.convert.passes.base import LegalizationPass
from edgekit.convert.passes.module.focus import FocusStemRewrite


class PixelUnshuffleFocus(nn.Module):
    """``conv(pixel_unshuffle(x, 2))``: a Focus stem in the form ncnn expresses (``Reorg``)."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pixel_unshuffle(x, 2))


def permute_for_pixel_unshuffle(conv: nn.Conv2d, offsets: list[tuple[int, int]]) -> nn.Conv2d | None:
    """``conv`` with its input channels permuted in place from Focus order to pixel_unshuffle order (see
    the module docstring); None (conv untouched) for a grouped conv or one not on 4 * C channels."""
    if conv.groups != 1 or conv.in_channels % 4:
        return None
    channels = conv.in_channels // 4
    group_of = {offset: group for group, offset in enumerate(offsets)}
    # new channel 4c + 2r + q  <-  old channel g(r, q) * C + c
    order = [group_of[(row, col)] * channels + c for c in range(channels) for row in (0, 1) for col in (0, 1)]
    with torch.no_grad():
        conv.weight = nn.Parameter(conv.weight.detach()[:, order].clone(), requires_grad=conv.weight.requires_grad)
    return conv


class FocusToPixelUnshuffle(LegalizationPass, FocusStemRewrite):
    """The stem's conv keeps its kernel, its input channels permuted; the stem reads pixel_unshuffle(x, 2)."""

    name = "ncnn_focus"
    description = "Focus strided slices -> pixel_unshuffle + the conv with permuted input channels (ncnn has no strided slice)"
    backend = "ncnn"
    new_conv = staticmethod(permute_for_pixel_unshuffle)

    def wrap(self, stem: nn.Module) -> nn.Module:
        return PixelUnshuffleFocus(stem)
