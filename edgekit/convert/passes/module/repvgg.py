"""RepVGG / RepConv re-parameterisation: a multi-branch block -> one kxk conv (3x3 in practice).

Contract (the attribute layout of the original RepVGG code, YOLOv6's ``RepVGGBlock``, YOLOv7's
``RepConv`` and edgekit's :class:`edgekit.models.common.RepVGGBlock`); any module with this shape
is rewritten, whatever its class:

- ``rbr_dense``: the kxk branch (k odd, padding p = k // 2 ... or any p >= k // 2 for RepConv-style
  ``padding``), a conv followed by a BatchNorm, given as a module with ``.conv`` and ``.bn``
  attributes (and an optional identity ``.act``), an ``nn.Sequential(conv, bn)``, or a bare conv
  (already folded, with bias);
- ``rbr_1x1``: the 1x1 branch in the same forms, same stride and groups, padding ``p - k // 2``
  (so both branches sample the same output grid);
- ``rbr_identity`` (optional): ``None`` / absent (no identity branch), a BatchNorm or ``nn.Identity``
  on the input itself (needs c_in == c_out and stride 1);
- the activation in ``nonlinearity`` (RepVGG, YOLOv6) or ``act`` (YOLOv7), and optionally ``se``
  (RepVGG's squeeze-excitation, applied to the sum before the activation);
- forward: ``act(se(rbr_dense(x) + rbr_1x1(x) + rbr_identity(x)))``.

Math. After folding each branch's BN (see :mod:`fold_bn`) every branch is a conv with bias and
the three are linear in x over the same output grid, so they sum into one kxk conv:

    W = W_dense + pad(W_1x1) + W_id,     b = b_dense + b_1x1 + b_id

``pad(W_1x1)`` puts the 1x1 tap at the centre (k // 2, k // 2) of a kxk zero kernel: with padding
p vs p - k // 2, the centre tap of the kxk window reads the same input pixel as the 1x1 conv.
The identity ``x[c]`` is the kxk kernel with a single 1 at [c, c mod (c_in / groups), centre,
centre] (for groups > 1 input channel c sits at index c mod (c_in / groups) of its group's slice);
through a BN it becomes ``s[c] * x[c] + t[c]``, i.e. that kernel scaled by s with bias t.

The block is replaced by :class:`RepConvDeploy` computing ``act(se(conv(x)))``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from edgekit.convert.passes.module.fold_bn import batchnorm_scale_shift, foldable_batchnorm
from edgekit.convert.passes.module.tree import NotRewritten, SubmoduleRewrite, conv_pair

ACTIVATION_ATTRIBUTES = ("nonlinearity", "act")


class RepConvDeploy(nn.Module):
    """A re-parameterised RepVGG / RepConv block: ``act(se(conv(x)))`` with one kxk conv (bias)."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module, se: nn.Module | None = None) -> None:
        super().__init__()
        self.conv = conv
        self.se = se if se is not None else nn.Identity()
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.se(self.conv(x)))


def _branch_conv_bn(branch: nn.Module) -> tuple[nn.Conv2d, nn.Module | None]:
    """(conv, bn or None) of a conv(+BN) branch in one of the accepted forms."""
    if isinstance(branch, nn.Conv2d):
        return branch, None
    if isinstance(branch, nn.Sequential):
        children = [m for m in branch if not isinstance(m, nn.Identity)]
        if len(children) == 1 and isinstance(children[0], nn.Conv2d):
            return children[0], None
        if len(children) == 2 and isinstance(children[0], nn.Conv2d) and isinstance(children[1], _BatchNorm):
            return children[0], children[1]
        raise NotRewritten("branch Sequential is not (conv, bn)")
    conv, bn = getattr(branch, "conv", None), getattr(branch, "bn", None)
    act = getattr(branch, "act", None)
    if not isinstance(conv, nn.Conv2d) or (act is not None and not isinstance(act, nn.Identity)):
        raise NotRewritten("branch is not conv(+bn) without activation")
    if bn is None or isinstance(bn, nn.Identity):
        return conv, None
    if isinstance(bn, _BatchNorm):
        return conv, bn
    raise NotRewritten("branch .bn is not a BatchNorm")


def _fused_kernel_bias(conv: nn.Conv2d, bn: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 (W, b) of bn(conv(x)): W * s per output channel, b * s + t (see fold_bn)."""
    weight = conv.weight.detach().double()
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
    if bn is None:
        return weight, bias
    if not foldable_batchnorm(bn) or bn.num_features != weight.shape[0]:
        raise NotRewritten("branch BatchNorm is in training mode or has no running statistics")
    scale, shift = batchnorm_scale_shift(bn)
    return weight * scale.reshape(-1, 1, 1, 1), bias * scale + shift


def _conv_geometry(conv: nn.Conv2d) -> tuple:
    return (conv.in_channels, conv.out_channels, conv.stride, conv.groups, conv.dilation, conv.padding_mode)


def reparameterize(module: nn.Module) -> RepConvDeploy:
    """The single-conv equivalent of a block that meets the module contract; raises NotRewritten otherwise."""
    block = module
    dense_conv, dense_bn = _branch_conv_bn(block.get_submodule("rbr_dense"))
    small_conv, small_bn = _branch_conv_bn(block.get_submodule("rbr_1x1"))
    kh, kw = dense_conv.kernel_size
    if kh != kw or kh % 2 == 0 or small_conv.kernel_size != (1, 1):
        raise NotRewritten("dense branch must be an odd square kernel and the other 1x1")
    if _conv_geometry(dense_conv) != _conv_geometry(small_conv) or dense_conv.dilation != (1, 1):
        raise NotRewritten("branches differ in channels, stride, groups or dilation")
    if dense_conv.padding_mode != "zeros" or isinstance(dense_conv.padding, str) or isinstance(small_conv.padding, str):
        raise NotRewritten("only zero, numeric padding is supported")
    centre = kh // 2
    # the 1x1 tap must read the pixel the kxk window's centre reads
    if tuple(p - centre for p in dense_conv.padding) != tuple(small_conv.padding):
        raise NotRewritten("1x1 padding is not dense padding - k // 2")

    kernel, bias = _fused_kernel_bias(dense_conv, dense_bn)
    small_kernel, small_bias = _fused_kernel_bias(small_conv, small_bn)
    kernel = kernel.clone()
    kernel[:, :, centre, centre] += small_kernel[:, :, 0, 0]
    bias = bias + small_bias

    identity = getattr(block, "rbr_identity", None)
    if identity is not None:
        c_in, c_out = dense_conv.in_channels, dense_conv.out_channels
        if c_in != c_out or dense_conv.stride != (1, 1):
            raise NotRewritten("identity branch needs c_in == c_out and stride 1")
        per_group = c_in // dense_conv.groups
        identity_kernel = torch.zeros_like(kernel)
        channels = torch.arange(c_in)
        identity_kernel[channels, channels % per_group, centre, centre] = 1.0
        if isinstance(identity, nn.Identity):
            identity_bias = torch.zeros(c_in, dtype=torch.float64)
        elif foldable_batchnorm(identity) and identity.num_features == c_in:
            scale, identity_bias = batchnorm_scale_shift(identity)
            identity_kernel = identity_kernel * scale.reshape(-1, 1, 1, 1)
        else:
            raise NotRewritten("rbr_identity is neither a foldable BatchNorm, nn.Identity nor None")
        kernel = kernel + identity_kernel
        bias = bias + identity_bias

    act = next((getattr(block, a) for a in ACTIVATION_ATTRIBUTES if isinstance(getattr(block, a, None), nn.Module)), None)
    if act is None:
        raise NotRewritten("no activation attribute (nonlinearity / act)")
    se = getattr(block, "se", None)
    if se is not None and not isinstance(se, nn.Module):
        raise NotRewritten("se is not a module")

    conv = nn.Conv2d(dense_conv.in_channels, dense_conv.out_channels, (kh, kw), conv_pair(dense_conv.stride),
                     conv_pair(dense_conv.padding), groups=dense_conv.groups, bias=True)
    conv = conv.to(device=dense_conv.weight.device, dtype=dense_conv.weight.dtype)
    conv.weight = nn.Parameter(kernel.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
    return RepConvDeploy(conv, act, se).train(block.training)


def is_repvgg_like(module: nn.Module) -> bool:
    """Has the RepVGG attribute layout (``rbr_dense`` and ``rbr_1x1`` modules)."""
    return isinstance(getattr(module, "rbr_dense", None), nn.Module) and isinstance(getattr(module, "rbr_1x1", None), nn.Module)


class ReparameterizeRepVGG(SubmoduleRewrite):
    name = "repvgg"
    description = "RepVGG / RepConv block (kxk + 1x1 + identity, each with BN) -> one kxk conv"
    rejected = "RepVGG-like blocks"
    prefilter = staticmethod(is_repvgg_like)
    rewrite = staticmethod(reparameterize)  # raises NotRewritten (with the reason) for a block breaking the contract
