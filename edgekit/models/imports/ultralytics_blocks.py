"""edgekit's own implementations of the layers Ultralytics 8.x and the classic YOLOv5 repository pickle.

Written from the published architecture (YOLOv5 / YOLOv8 / YOLO11 / YOLO26 model descriptions, the yaml
files and the tensor shapes in the checkpoints), not from the upstream code. Two rules shape every class:

- attribute names reproduce the upstream ``state_dict`` keys exactly (``cv1.conv.weight``, ``m.0.cv2.bn.bias``,
  ``attn.qkv.conv.weight`` …), so a pickled state_dict loads strictly into these modules;
- ``forward`` reads only child modules and the *plain attributes the upstream pickles* (``c`` of C2f,
  ``add`` of Bottleneck, ``n``/``add`` of SPPF, ``num_heads``/``key_dim``/``head_dim``/``scale`` of Attention,
  ``d`` of Concat). So a layer can also be re-created from its pickled state alone (``object.__new__`` +
  children + attributes, see :func:`edgekit.models.imports.ultralytics.module_from_pickled`) when it sits
  inside a trusted custom block.

All tensors are float32 NCHW. Conv = Conv2d (no bias) -> BatchNorm2d -> activation (SiLU unless the layer
says otherwise; the importer replaces it with the activation the file names).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from edgekit.models.base import DetectorModel
from edgekit.models.common import BN_EPS, BN_MOMENTUM, space_to_depth


def autopad(k: int, p: int | None = None, d: int = 1) -> int:
    """'Same' padding of an odd kernel ``k`` with dilation ``d`` unless ``p`` is given."""
    if p is not None:
        return p
    return (d * (k - 1) + 1) // 2


class Conv(nn.Module):
    """``act(bn(conv(x)))``: [B, c1, H, W] -> [B, c2, H/s, W/s]. ``act``: True = SiLU, False = Identity,
    or a module."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1, d: int = 1,
                 act: bool | nn.Module = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.SiLU() if act is True else act if isinstance(act, nn.Module) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DWConv(Conv):
    """Depthwise Conv: groups = gcd(c1, c2) (c1 when c1 == c2)."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, d: int = 1, act: bool | nn.Module = True) -> None:
        import math

        super().__init__(c1, c2, k, s, g=math.gcd(c1, c2), d=d, act=act)


class Focus(nn.Module):
    """YOLOv5 <= v5.0 stem: space-to-depth (offsets (0,0), (1,0), (0,1), (1,1)), then ``conv`` on 4*c1 channels."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1,
                 act: bool | nn.Module = True) -> None:
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k, s, p, g, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(space_to_depth(x))


class Concat(nn.Module):
    """Concatenate a list of tensors along dimension ``d`` (channels)."""

    def __init__(self, dimension: int = 1) -> None:
        super().__init__()
        self.d = dimension

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(xs), self.d)


class Bottleneck(nn.Module):
    """``x + cv2(cv1(x))`` (residual only when ``add``: shortcut and c1 == c2); hidden = int(c2 * e)."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, k: tuple[int, int] = (3, 3),
                 e: float = 0.5) -> None:
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, k[0], 1)
        self.cv2 = Conv(hidden, c2, k[1], 1, g=g)
        self.add = bool(shortcut and c1 == c2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with 3 convs: ``cv3(cat(m(cv1(x)), cv2(x)))``, ``n`` (1x1, 3x3) Bottlenecks of width c_."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5) -> None:
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(c1, hidden, 1, 1)
        self.cv3 = Conv(2 * hidden, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, g, k=(1, 3), e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class C3k(C3):
    """C3 whose Bottlenecks use (k, k) kernels (YOLO11's inner block of C3k2)."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5,
                 k: int = 3) -> None:
        super().__init__(c1, c2, n, shortcut, g, e)
        hidden = int(c2 * e)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, g, k=(k, k), e=1.0) for _ in range(n)))


class C2f(nn.Module):
    """YOLOv8 CSP block: split cv1(x) into two halves of ``c`` channels, chain ``n`` blocks on the second, and
    fuse every intermediate: ``cv2(cat(a, b, m0(b), m1(m0(b)), …))``."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, g: int = 1, e: float = 0.5) -> None:
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, g, k=(3, 3), e=1.0) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # split with explicit sizes: one ONNX Split (chunk traces to shape arithmetic)
        parts = list(self.cv1(x).split((self.c, self.c), 1))
        for block in self.m:
            parts.append(block(parts[-1]))
        return self.cv2(torch.cat(parts, 1))


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions of a feature map (YOLO11 / YOLO26 PSA).

    ``qkv`` (1x1 conv, no activation) gives per head ``key_dim`` query, ``key_dim`` key and ``head_dim``
    value channels, in that order inside each head's channel group; attention = softmax_j(q_i . k_j * scale);
    out = proj(v @ attn^T + pe(v)) with ``pe`` a depthwise 3x3 positional conv on the values.
    """

    def __init__(self, dim: int, num_heads: int = 8, attn_ratio: float = 0.5) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim ** -0.5
        qkv_channels = dim + 2 * self.key_dim * num_heads
        self.qkv = Conv(dim, qkv_channels, 1, act=False)
        self.proj = Conv(dim, dim, 1, act=False)
        self.pe = Conv(dim, dim, 3, 1, g=dim, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = h * w
        qkv = self.qkv(x).view(b, self.num_heads, 2 * self.key_dim + self.head_dim, n)
        q, k, v = qkv.split((self.key_dim, self.key_dim, self.head_dim), dim=2)
        attn = ((q.transpose(-2, -1) @ k) * self.scale).softmax(dim=-1)  # [B, heads, N, N]
        out = (v @ attn.transpose(-2, -1)).view(b, c, h, w) + self.pe(v.reshape(b, c, h, w))
        return self.proj(out)


class PSABlock(nn.Module):
    """``x = x + attn(x); x = x + ffn(x)`` (no residuals when ``add`` is False); ffn = 1x1 (2c, SiLU) -> 1x1."""

    def __init__(self, c: int, attn_ratio: float = 0.5, num_heads: int = 4, shortcut: bool = True) -> None:
        super().__init__()
        self.attn = Attention(c, num_heads=num_heads, attn_ratio=attn_ratio)
        self.ffn = nn.Sequential(Conv(c, c * 2, 1), Conv(c * 2, c, 1, act=False))
        self.add = bool(shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x) if self.add else self.attn(x)
        return x + self.ffn(x) if self.add else self.ffn(x)


class C2PSA(nn.Module):
    """cv1 -> split (a, b) of ``c`` channels each -> b through ``n`` PSABlocks -> cv2(cat(a, b)); c1 == c2."""

    def __init__(self, c1: int, c2: int, n: int = 1, e: float = 0.5) -> None:
        super().__init__()
        self.c = int(c1 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv(2 * self.c, c1, 1)
        self.m = nn.Sequential(*(PSABlock(self.c, attn_ratio=0.5, num_heads=max(self.c // 64, 1)) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).split((self.c, self.c), 1)
        return self.cv2(torch.cat((a, self.m(b)), 1))


class C3k2(C2f):
    """YOLO11 / YOLO26 C2f variant: each of the ``n`` blocks is a Bottleneck (hidden c/2), a C3k (``c3k``),
    or (YOLO26, ``attn``) Sequential(Bottleneck, PSABlock)."""

    def __init__(self, c1: int, c2: int, n: int = 1, c3k: bool = False, e: float = 0.5, attn: bool = False,
                 g: int = 1, shortcut: bool = True) -> None:
        super().__init__(c1, c2, n, shortcut, g, e)
        c = self.c

        def block() -> nn.Module:
            if attn:
                return nn.Sequential(Bottleneck(c, c, shortcut, g),
                                     PSABlock(c, attn_ratio=0.5, num_heads=max(c // 64, 1)))
            if c3k:
                return C3k(c, c, 2, shortcut, g)
            return Bottleneck(c, c, shortcut, g)

        self.m = nn.ModuleList(block() for _ in range(n))


class SPP(nn.Module):
    """``cv2(cat(y, pool_k1(y), pool_k2(y), …))``, y = cv1(x) with c1 // 2 channels; stride-1 max pools."""

    def __init__(self, c1: int, c2: int, k: Sequence[int] = (5, 9, 13)) -> None:
        super().__init__()
        hidden = c1 // 2
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(hidden * (len(k) + 1), c2, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=size, stride=1, padding=size // 2) for size in k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv1(x)
        return self.cv2(torch.cat([y] + [pool(y) for pool in self.m], 1))


class SPPF(nn.Module):
    """Fast SPP: y0 = cv1(x), y_i = pool(y_{i-1}) for i = 1..n (n = 3), out = cv2(cat(y0..yn)), plus x when
    ``add``. YOLO26's variant (``shortcut``) has the residual and no activation on cv1; the classic one
    (YOLOv5 / YOLOv8 / YOLO11) has neither."""

    def __init__(self, c1: int, c2: int, k: int = 5, n: int = 3, shortcut: bool = False) -> None:
        super().__init__()
        hidden = c1 // 2
        self.cv1 = Conv(c1, hidden, 1, 1, act=not shortcut)
        self.cv2 = Conv(hidden * (n + 1), c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)
        self.n = n
        self.add = bool(shortcut and c1 == c2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = [self.cv1(x)]
        for _ in range(getattr(self, "n", 3)):  # the classic YOLOv5 pickle has no ``n`` / ``add``
            ys.append(self.m(ys[-1]))
        y = self.cv2(torch.cat(ys, 1))
        return y + x if getattr(self, "add", False) else y


class DFL(nn.Module):
    """The fixed DFL projection of Ultralytics' head (a 1x1 conv with weights 0..c1-1, no bias).

    Kept only so the checkpoint loads strictly: edgekit's forward returns the raw bins and the ``dfl`` decoder
    computes the same expectation. The importer checks the loaded weights are 0..c1-1.
    """

    def __init__(self, c1: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(c1, dtype=torch.float32).view(1, c1, 1, 1))
        self.c1 = c1

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - never called by edgekit's Detect
        return x


class Detect(nn.Module):
    """Ultralytics 8.x anchor-free head. Per level i: box branch ``cv2[i]`` -> 4 * reg_max channels, class branch
    ``cv3[i]`` -> nc logits; output ``cat(box, cls)`` [B, 4 * reg_max + nc, H_i, W_i] (head kind ``dfl``).

    Box branch: Conv 3x3 (c2) -> Conv 3x3 (c2) -> Conv2d 1x1, c2 = max(16, ch[0] // 4, 4 * reg_max). Class branch,
    c3 = max(ch[0], min(nc, 100)): ``legacy`` (YOLOv8) Conv 3x3 -> Conv 3x3 -> Conv2d 1x1; otherwise (YOLO11+)
    (DWConv 3x3, Conv 1x1) -> (DWConv 3x3, Conv 1x1) -> Conv2d 1x1. reg_max == 1 (YOLO26): the 4 box channels
    are the ltrb distances in stride units and ``dfl`` is an Identity. ``end2end`` heads also carry copies of
    both branches (``one2one_cv2`` / ``one2one_cv3``, trained one-to-one for NMS-free output); ``use_one2one``
    selects which pair forward returns.
    """

    def __init__(self, nc: int, ch: Sequence[int], reg_max: int = 16, legacy: bool = True,
                 end2end: bool = False) -> None:
        super().__init__()
        self.nc = nc
        self.nl = len(ch)
        self.reg_max = reg_max
        self.no = nc + 4 * reg_max
        c2 = max(16, ch[0] // 4, 4 * reg_max)
        c3 = max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1)) for x in ch)
        if legacy:
            self.cv3 = nn.ModuleList(nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for x in ch)
        else:
            self.cv3 = nn.ModuleList(
                nn.Sequential(nn.Sequential(DWConv(x, x, 3), Conv(x, c3, 1)),
                              nn.Sequential(DWConv(c3, c3, 3), Conv(c3, c3, 1)),
                              nn.Conv2d(c3, nc, 1))
                for x in ch)
        self.dfl: nn.Module = DFL(reg_max) if reg_max > 1 else nn.Identity()
        if end2end:
            import copy

            self.one2one_cv2 = copy.deepcopy(self.cv2)
            self.one2one_cv3 = copy.deepcopy(self.cv3)
        self.use_one2one = False

    def forward(self, xs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        box, cls = (self.one2one_cv2, self.one2one_cv3) if self.use_one2one else (self.cv2, self.cv3)
        return tuple(torch.cat((box[i](x), cls[i](x)), 1) for i, x in enumerate(xs))


class AnchorDetect(nn.Module):
    """Classic YOLOv5 head: per level one 1x1 conv ``m[i]`` -> [B, na * (5 + nc), H_i, W_i] raw logits (head kind
    ``yolo_anchor``). ``anchors`` buffer [nl, na, 2]: anchor (w, h) in *grid units* of each level (pixels /
    stride), as the YOLOv5 trainer stores them."""

    anchors: torch.Tensor  # the buffer registered in __init__ (declared: nn.Module's __getattr__ says Tensor | Module)

    def __init__(self, nc: int, anchors: Sequence[Sequence[float]], ch: Sequence[int]) -> None:
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)

    def forward(self, xs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(self.m[i](x) for i, x in enumerate(xs))


class Sequencer(DetectorModel):
    """The yaml-built network: ``model`` is the Sequential of layers (state_dict keys ``model.<i>.…``).

    Each layer carries ``f`` (its input: -1 = previous layer, an index, or a list of indices) and ``i``; outputs
    of the layers in ``save`` are kept for later ``f`` references. Returns the last layer's (the head's) output.
    """

    def __init__(self, layers: Sequence[nn.Module], save: Sequence[int]) -> None:
        super().__init__()
        self.model = nn.Sequential(*layers)
        self.save = sorted({int(s) for s in save})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # ``y``: a layer's input or output, a tensor, a list of them (Concat and Detect read several) or the
        # head's tuple (the last layer's output, returned).
        outputs: list[Any] = []
        y: Any = x
        for layer in self.model:
            f: Any = layer.f  # set by the builder: -1 (the previous layer), an index or a list of indices
            if f != -1:
                y = outputs[f] if isinstance(f, int) else [y if j == -1 else outputs[j] for j in f]
            y = layer(y)
            outputs.append(y if layer.i in self.save else None)
        return y
