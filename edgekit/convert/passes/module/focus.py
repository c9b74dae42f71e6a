"""Focus (space-to-depth slicing + conv) -> one conv with a 2x larger kernel and stride (YOLOv5 v6.0).

Recognised by structure: a module whose forward (traced as a graph of submodule calls) is exactly

    y = child(cat([x[..., r0::2, q0::2], x[..., r1::2, q1::2], x[..., r2::2, q2::2], x[..., r3::2, q3::2]], 1))

with the four (row, col) offsets (r_g, q_g) a permutation of {0, 1}^2, and ``child`` a Conv2d or a
module whose forward starts with a Conv2d on its input (e.g. ``ConvBNAct``: conv -> bn -> act).
YOLOv5's order is (0,0), (1,0), (0,1), (1,1); YOLOX's top-left, bottom-left, top-right, bottom-right
is the same; any other order is read from the graph.

Derivation. The slice output has 4C channels; channel block g (channels g*C .. g*C + C - 1) is

    s[g*C + c, i, j] = x[c, 2i + r_g, 2j + q_g]

The Focus conv (kernel k, stride t, padding p, groups 1, dilation 1) then computes

    y[o, i, j] = sum_{g, c, u, v} W[o, g*C + c, u, v] * s[g*C + c, t*i + u - p, t*j + v - p]
               = sum_{g, c, u, v} W[o, g*C + c, u, v] * x[c, 2t*i + (2u + r_g) - 2p, 2t*j + (2v + q_g) - 2p]

which is a conv on x with kernel 2k, stride 2t, padding 2p and

    K[o, c, 2u + r_g, 2v + q_g] = W[o, g*C + c, u, v]

Every tap a = 2u + r of the 2k window comes from exactly one (u, r) pair, so K is fully
determined (no tap is left at zero or written twice). Zero padding agrees too: s is "outside"
(row m = t*i + u - p not in [0, H/2)) exactly when 2m + r_g is outside [0, H) for r_g in {0, 1},
given an even H (odd H cannot be Focus-sliced: the four slices would differ in size). For
YOLOv5's k=3, p=1, t=1 this is the 6x6, stride-2, padding-2 stem conv of YOLOv5 v6.0.

The Focus module is replaced by ``child`` with its conv swapped for the new one (or by the new
conv itself when ``child`` is a Conv2d); the BatchNorm after it is left to ``fold_bn``.
"""

from __future__ import annotations

import operator

import torch
from torch import fx, nn

from edgekit.convert.passes.module.tree import (
    SubmoduleRewrite,
    conv_pair,
    near_descendants,
    replace_submodule,
    trace_calls,
)

_OFFSETS = {(0, 0), (1, 0), (0, 1), (1, 1)}


def _stride2_start(s: object) -> int | None:
    """0 or 1 for a slice ``start::2`` (start None, 0 or 1, open end), else None."""
    if isinstance(s, slice) and s.step == 2 and s.stop is None and s.start in (None, 0, 1):
        return int(s.start or 0)
    return None


def _slice_offsets(index: object) -> tuple[int, int] | None:
    """(row, col) offsets of ``x[..., r::2, q::2]`` or ``x[:, :, r::2, q::2]``."""
    if not isinstance(index, tuple):
        return None
    if len(index) == 3 and index[0] is Ellipsis:
        rows, cols = index[1], index[2]
    elif len(index) == 4 and index[0] == slice(None) and index[1] == slice(None):
        rows, cols = index[2], index[3]
    else:
        return None
    row, col = _stride2_start(rows), _stride2_start(cols)
    return None if row is None or col is None else (row, col)


def focus_pattern(module: nn.Module) -> tuple[list[tuple[int, int]], str] | None:
    """(slice offsets in concatenation order, child path) when ``module`` is a Focus, else None."""
    graph = trace_calls(module)
    if graph is None:
        return None
    nodes = list(graph.nodes)
    ops = [n.op for n in nodes]
    if ops.count("placeholder") != 1 or ops.count("call_module") != 1 or len(nodes) != 8:
        return None
    x = next(n for n in nodes if n.op == "placeholder")
    cat = next((n for n in nodes if n.op == "call_function" and n.target is torch.cat), None)
    child = next(n for n in nodes if n.op == "call_module")
    output = nodes[-1]
    if cat is None or output.op != "output" or output.args[0] is not child or child.args != (cat,) or child.kwargs:
        return None
    dim = cat.kwargs.get("dim", cat.args[1] if len(cat.args) > 1 else 0)
    parts = cat.args[0]
    if dim != 1 or not isinstance(parts, (list, tuple)) or len(parts) != 4:
        return None
    offsets = []
    for part in parts:
        if not (isinstance(part, fx.Node) and part.op == "call_function" and part.target is operator.getitem
                and part.args[0] is x and len(part.users) == 1):
            return None
        offset = _slice_offsets(part.args[1])
        if offset is None:
            return None
        offsets.append(offset)
    if set(offsets) != _OFFSETS:
        return None
    return offsets, child.target


def _leading_conv_path(child: nn.Module) -> str | None:
    """Path (relative to ``child``) of the Conv2d its forward applies first, to its input only."""
    if isinstance(child, nn.Conv2d):
        return ""
    graph = trace_calls(child)
    if graph is None:
        return None
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1 or len(placeholders[0].users) != 1:
        return None
    first = next(iter(placeholders[0].users))
    if first.op != "call_module" or first.args != (placeholders[0],) or first.kwargs:
        return None
    return first.target if isinstance(child.get_submodule(first.target), nn.Conv2d) else None


def space_to_depth_conv(conv: nn.Conv2d, offsets: list[tuple[int, int]]) -> nn.Conv2d | None:
    """The conv on the un-sliced input equal to ``conv(space_to_depth(x))`` (see the module docstring),
    or None when ``conv`` has groups, dilation or non-zero / non-numeric padding."""
    if (conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str)
            or conv.in_channels % 4):
        return None
    channels = conv.in_channels // 4
    weight = conv.weight.detach()
    out_channels, _, kh, kw = weight.shape
    kernel = torch.zeros(out_channels, channels, 2 * kh, 2 * kw, dtype=weight.dtype, device=weight.device)
    for group, (row, col) in enumerate(offsets):
        # K[o, c, 2u + r, 2v + q] = W[o, g*C + c, u, v]
        kernel[:, :, row::2, col::2] = weight[:, group * channels:(group + 1) * channels]
    (sh, sw), (ph, pw) = conv_pair(conv.stride), conv_pair(conv.padding)
    new = nn.Conv2d(channels, out_channels, (2 * kh, 2 * kw), stride=(2 * sh, 2 * sw), padding=(2 * ph, 2 * pw),
                    bias=conv.bias is not None)
    new = new.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(kernel)
        if conv.bias is not None and new.bias is not None:
            new.bias.copy_(conv.bias.detach())
    return new.train(conv.training)


def may_be_focus(module: nn.Module) -> bool:
    """Cheap pre-filter before tracing: not a container or conv, one conv among the children /
    grandchildren, on a multiple of 4 channels."""
    if isinstance(module, (nn.Sequential, nn.Conv2d)):
        return False
    convs = [m for m in near_descendants(module) if isinstance(m, nn.Conv2d)]
    return len(convs) == 1 and convs[0].in_channels % 4 == 0


def focus_stem(module: nn.Module) -> tuple[list[tuple[int, int]], nn.Module, str] | None:
    """(slice offsets, ``child``, path of its leading conv relative to ``child``: "" when ``child`` is the
    conv) when ``module`` is a Focus (see the module docstring), else None."""
    pattern = focus_pattern(module)
    if pattern is None:
        return None
    offsets, child_path = pattern
    child = module.get_submodule(child_path)
    conv_path = _leading_conv_path(child)
    return None if conv_path is None else (offsets, child, conv_path)


def _swap_conv(child: nn.Module, conv_path: str, new_conv: nn.Conv2d) -> nn.Module:
    """``child`` with the conv at ``conv_path`` replaced by ``new_conv`` (``new_conv`` itself for "")."""
    return new_conv if not conv_path else replace_submodule(child, conv_path, new_conv)


class FocusStemRewrite(SubmoduleRewrite):
    """A Focus stem found by structure (:func:`focus_stem`), its conv replaced by :meth:`new_conv` and the
    result wrapped by :meth:`wrap`: what the ``focus`` pass and the ncnn legalisation share."""

    def prefilter(self, module: nn.Module) -> bool:
        return may_be_focus(module)

    def new_conv(self, conv: nn.Conv2d, offsets: list[tuple[int, int]]) -> nn.Conv2d | None:
        """The conv that replaces the stem's conv, or None to leave the stem alone."""
        raise NotImplementedError

    def wrap(self, stem: nn.Module) -> nn.Module:
        """The replacement of the whole Focus module, given its child with the new conv."""
        return stem

    def rewrite(self, module: nn.Module) -> nn.Module | None:
        stem = focus_stem(module)
        if stem is None:
            return None
        offsets, child, conv_path = stem
        conv = child.get_submodule(conv_path) if conv_path else child
        new = self.new_conv(conv, offsets) if isinstance(conv, nn.Conv2d) else None
        return None if new is None else self.wrap(_swap_conv(child, conv_path, new))


class FocusToConv(FocusStemRewrite):
    """The slices folded into the conv's kernel (see the module docstring); the stem becomes the child."""

    name = "focus"
    description = "Focus space-to-depth slicing + kxk conv -> one 2k x 2k stride-2 conv (YOLOv5 v6.0 stem)"
    new_conv = staticmethod(space_to_depth_conv)
