"""Fold an eval-mode BatchNorm into the convolution (or transposed convolution) that feeds it.

In eval mode a BatchNorm is a per-channel affine map of the conv output ``z``::

    bn(z)[o] = gamma[o] * (z[o] - mean[o]) / sqrt(var[o] + eps) + beta[o] = s[o] * z[o] + t[o]
    with s = gamma / sqrt(var + eps),  t = beta - mean * s

and ``z[o] = sum W[o, ...] * x + b[o]`` is linear in the weights of output channel ``o``, so

    W'[o] = W[o] * s[o]                       (every weight of output channel o)
    b'[o] = (b[o] - mean[o]) * s[o] + beta[o]  (b = 0 for a conv without bias)

gives ``conv'(x) = bn(conv(x))`` exactly (up to fp32 rounding of W * s; the arithmetic here is done
in float64 and rounded once). For ``Conv{1,2,3}d`` the output channel is dim 0 of the weight, for
grouped and depthwise convs too (weight [out, in / groups, k...]). For ``ConvTranspose{1,2,3}d`` the
weight is [in, out / groups, k...]: output channel ``o = g * (out / groups) + j`` lives at dim 1
index ``j`` of the rows of group ``g``, so the scale is applied on the view
[groups, in / groups, out / groups, k...] with ``s`` viewed as [groups, 1, out / groups, 1...].

Which BatchNorms are folded (structure, not class names):

- an ``nn.Sequential`` with a conv child immediately followed by a BatchNorm child;
- any module whose forward, traced as a graph of submodule calls (:func:`tree.trace_calls`), calls a
  BatchNorm on the output of a conv call, where that output has no other user and each of the two
  modules is called once (edgekit's ``ConvBNAct``, YOLOv5 ``Conv``, mmdet ``ConvModule`` ...); only
  modules with a conv and a BatchNorm among their children or grandchildren are traced;
- a module that cannot be traced but has attributes ``conv`` and ``bn`` (a conv and a BatchNorm):
  by the convention of YOLO code bases its forward computes ``bn(conv(x))`` and uses the conv output
  nowhere else. The pipeline's equivalence check catches a module that breaks this convention.

Skipped: BatchNorms in training mode or without running statistics (they normalise with batch
statistics, which no fixed conv reproduces), channel-count mismatches, and modules held by more
than one parent (shared weights). The folded BatchNorm is replaced by ``nn.Identity`` (the
``remove_noops`` pass then drops those that sit in an ``nn.Sequential``).
"""

from __future__ import annotations

from itertools import pairwise
from typing import TypeGuard, cast

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from edgekit.convert.passes.base import Pass, PassResult
from edgekit.convert.passes.module.tree import (
    call_counts,
    child_reference_counts,
    get_submodule,
    iter_modules,
    join_path,
    near_descendants,
    replace_submodule,
    trace_calls,
)


def batchnorm_scale_shift(bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, t) in float64 with ``bn(z) = s * z + t`` per channel (eval mode):
    s = gamma / sqrt(var + eps), t = beta - mean * s."""
    if bn.running_var is None or bn.running_mean is None:
        raise ValueError("a BatchNorm without running statistics has no fixed scale and shift")
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale


def foldable_batchnorm(bn: nn.Module | None) -> TypeGuard[_BatchNorm]:
    """An eval-mode BatchNorm with running statistics: a fixed per-channel affine map."""
    return (isinstance(bn, _BatchNorm) and not bn.training and bn.track_running_stats
            and bn.running_mean is not None and bn.running_var is not None)


def fold_conv_bn(conv: _ConvNd, bn: _BatchNorm) -> None:
    """Rewrite ``conv``'s weight and bias in place so that ``conv(x) == bn(conv_old(x))`` (eval mode).

    Creates a bias when the conv had none.
    """
    scale, shift = batchnorm_scale_shift(bn)
    weight = conv.weight.detach().double()
    spatial = (1,) * (weight.dim() - 2)
    if conv.transposed:
        # weight [in, out / g, k...]: see the module docstring for the group-aware view.
        groups = conv.groups
        in_per_group = weight.shape[0] // groups
        out_per_group = weight.shape[1]
        grouped = weight.reshape(groups, in_per_group, out_per_group, *weight.shape[2:])
        folded = (grouped * scale.reshape(groups, 1, out_per_group, *spatial)).reshape(weight.shape)
    else:
        # weight [out, in / g, k...]: output channel is dim 0 whatever the groups.
        folded = weight * scale.reshape(-1, 1, *spatial)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(scale)
    # b' = (b - mean) * s + beta = b * s + t
    new_bias = bias * scale + shift
    dtype = conv.weight.dtype
    with torch.no_grad():
        conv.weight = nn.Parameter(folded.to(dtype), requires_grad=conv.weight.requires_grad)
        conv.bias = nn.Parameter(new_bias.to(dtype), requires_grad=conv.weight.requires_grad)


def _pair_ok(conv: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(conv, _ConvNd) and foldable_batchnorm(bn) and conv.out_channels == bn.num_features
            and not isinstance(conv.weight, nn.parameter.UninitializedParameter))


def _sequential_pairs(seq: nn.Sequential) -> list[tuple[str, str]]:
    names = list(seq._modules)
    return [(a, b) for a, b in pairwise(names) if _pair_ok(seq._modules[a], seq._modules[b])]


def _may_hold_pair(module: nn.Module) -> bool:
    """Cheap pre-filter: a conv and a foldable BatchNorm among the children / grandchildren."""
    near = near_descendants(module)
    return any(isinstance(m, _ConvNd) for m in near) and any(foldable_batchnorm(m) for m in near)


def _traced_pairs(module: nn.Module) -> list[tuple[str, str]] | None:
    """(conv path, bn path) pairs where the forward calls bn(conv(...)) and nothing else reads the
    conv output; None when the forward cannot be traced."""
    graph = trace_calls(module)
    if graph is None:
        return None
    calls = call_counts(graph)
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        source = node.args[0]
        if not isinstance(source, torch.fx.Node) or source.op != "call_module" or len(source.users) != 1:
            continue
        conv_path, bn_path = str(source.target), str(node.target)  # call_module targets are dotted paths
        if calls[conv_path] != 1 or calls[bn_path] != 1:
            continue
        if _pair_ok(module.get_submodule(conv_path), module.get_submodule(bn_path)):
            pairs.append((conv_path, bn_path))
    return pairs


class FoldBatchNorm(Pass):
    name = "fold_bn"
    description = "fold eval-mode BatchNorm into the preceding Conv / ConvTranspose (plain, grouped, depthwise)"

    def apply(self, model: nn.Module) -> PassResult:
        shared = child_reference_counts(model)
        folded = 0
        by_convention = 0
        training_bns = sum(1 for m in model.modules() if isinstance(m, _BatchNorm) and m.training)
        for path, module in iter_modules(model):
            pairs: list[tuple[str, str]] | None
            if isinstance(module, nn.Sequential):
                pairs = _sequential_pairs(module)
            elif not _may_hold_pair(module):
                continue
            else:
                pairs = _traced_pairs(module)
                if pairs is None:
                    conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
                    pairs = [("conv", "bn")] if conv is not None and bn is not None and _pair_ok(conv, bn) else []
                    by_convention += len(pairs)
            for conv_path, bn_path in pairs:
                conv = get_submodule(module, conv_path)
                bn = get_submodule(module, bn_path)
                # A module reachable from two places (tied weights) would change for the other user too.
                if shared[id(conv)] > 1 or shared[id(bn)] > 1 or not _pair_ok(conv, bn):
                    continue
                fold_conv_bn(cast(_ConvNd, conv), cast(_BatchNorm, bn))  # types checked by _pair_ok
                model = replace_submodule(model, join_path(path, bn_path), nn.Identity())
                folded += 1
        notes = []
        if by_convention:
            notes.append(f"{by_convention} by the conv/bn attribute convention (untraceable forward)")
        if training_bns:
            notes.append(f"{training_bns} BatchNorm in training mode left alone (call .eval())")
        return PassResult(model, folded, "; ".join(notes))
