"""Import Ultralytics 8.x (YOLOv5u / YOLOv8 / YOLO11 / YOLO26) and classic ultralytics/yolov5 ``.pt`` checkpoints.

Neither package is imported. The file is read as inert data (:mod:`edgekit.models.imports.pickled`); the network
is rebuilt from the yaml the checkpoint embeds with edgekit's own layers
(:mod:`edgekit.models.imports.ultralytics_blocks`), and the pickled state_dict is loaded strictly into it
(float16 weights are copied into float32 parameters). What the model returns and how it is described:

- Ultralytics 8.x with a DFL head (reg_max 16: YOLOv5u, YOLOv8, YOLO11): per level ``cat(box bins, cls logits)``
  ``[B, 4*16 + nc, H, W]`` = head kind ``dfl`` (params ``strides`` from the file, ``reg_max`` 16). Ultralytics
  decodes the same way: anchor point (cell + 0.5) * stride, box = anchor -/+ expected distance * stride.
- YOLO26 (reg_max 1): ``[B, 4 + nc, H, W]`` with raw ltrb distances in stride units = head kind ``dfl`` with
  ``reg_max`` 1. Its head carries a one-to-many and a one-to-one (NMS-free) branch. The file's private
  ``_end2end`` flag of the Detect layer chooses, unless ``end2end`` is given: False -> one-to-many branch with
  NMS (what Ultralytics' predict does for such a file); True -> one-to-one branch, postprocess ``nms=False``,
  at most 300 detections (top-k by score, one best class per cell).
- classic YOLOv5 (``models.yolo.Model``): per level ``[B, na*(5+nc), H, W]`` = head kind ``yolo_anchor``; anchors
  in input pixels = the Detect layer's ``anchors`` buffer (grid units) * stride.

ModelSpec: RGB, /255, centred letterbox padded with 114 (edgekit's letterbox is pixel-identical to
Ultralytics' ``LetterBox(auto=False)``), class-aware NMS. Input size: ``train_args.imgsz`` for Ultralytics 8.x;
the classic YOLOv5 file records no training size, so 640 (the size its release models were trained at).
``.input_size_from_checkpoint`` is True only when the file records the size (``train_args.imgsz``), so a
target profile's size replaces the assumed 640 but never the recorded size.
Postprocess: 8.x conf 0.25, IoU 0.7, pre-NMS top-k 30000, max 300 detections (Ultralytics' predict defaults);
classic conf 0.25, IoU 0.45.

A pickled class or yaml module edgekit does not implement is an error naming every one of them, unless the
caller trusts an installed package (``trust_upstream``) to provide exactly those classes: such a layer is then
re-created from its pickled state (no ``__init__`` and nothing else from the file runs; only the trusted
package's own code, when the layer is called).
"""

from __future__ import annotations

import ast
import importlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from edgekit.errors import ModelFileError
from edgekit.models.base import DetectorModel
from edgekit.models.checkpoint import load_state_dict_strict
from edgekit.models.common import scale_channels, scale_depth
from edgekit.models.imports import ultralytics_blocks as blocks
from edgekit.models.imports.pickled import PickledCheckpoint, PickledObject
from edgekit.spec import HeadSpec, ModelSpec, Normalization, PostprocessSpec, ResizeSpec

# --- what edgekit implements -------------------------------------------------------------------------------

#: upstream short class name -> edgekit class (Ultralytics 8.x ``ultralytics.nn.modules.*`` and classic
#: ``models.common`` / ``models.yolo`` share these names).
UPSTREAM_BLOCKS: dict[str, type[nn.Module]] = {
    "Conv": blocks.Conv, "DWConv": blocks.DWConv, "Focus": blocks.Focus, "Concat": blocks.Concat,
    "Bottleneck": blocks.Bottleneck, "C3": blocks.C3, "C3k": blocks.C3k, "C2f": blocks.C2f, "C3k2": blocks.C3k2,
    "SPP": blocks.SPP, "SPPF": blocks.SPPF, "C2PSA": blocks.C2PSA, "PSABlock": blocks.PSABlock,
    "Attention": blocks.Attention, "DFL": blocks.DFL, "Detect": blocks.Detect,
}
_TOP_LEVEL = {"ultralytics.nn.tasks.DetectionModel", "models.yolo.Model", "models.yolo.DetectionModel"}
_UPSTREAM_ROOTS = ("ultralytics.nn.modules", "models.common", "models.yolo")

#: torch classes that may appear in the model tree, rebuilt from their pickled constructor attributes.
_TORCH_LAYERS: dict[str, Callable[[Mapping[str, Any]], nn.Module]] = {
    "torch.nn.modules.conv.Conv2d": lambda a: nn.Conv2d(
        a["in_channels"], a["out_channels"], tuple(a["kernel_size"]), tuple(a["stride"]),
        a["padding"] if isinstance(a["padding"], str) else tuple(a["padding"]), tuple(a["dilation"]),
        a["groups"], bias=a.get("_has_bias", True), padding_mode=a.get("padding_mode", "zeros")),
    "torch.nn.modules.batchnorm.BatchNorm2d": lambda a: nn.BatchNorm2d(
        a["num_features"], a["eps"], a["momentum"], a.get("affine", True), a.get("track_running_stats", True)),
    "torch.nn.modules.pooling.MaxPool2d": lambda a: nn.MaxPool2d(
        a["kernel_size"], a["stride"], a["padding"], a.get("dilation", 1), ceil_mode=a.get("ceil_mode", False)),
    "torch.nn.modules.upsampling.Upsample": lambda a: nn.Upsample(
        a.get("size"), a.get("scale_factor"), a.get("mode", "nearest"), a.get("align_corners")),
    "torch.nn.modules.container.Sequential": lambda a: nn.Sequential(),
    "torch.nn.modules.container.ModuleList": lambda a: nn.ModuleList(),
    "torch.nn.modules.linear.Identity": lambda a: nn.Identity(),
    "torch.nn.modules.activation.SiLU": lambda a: nn.SiLU(),
    "torch.nn.modules.activation.ReLU": lambda a: nn.ReLU(),
    "torch.nn.modules.activation.LeakyReLU": lambda a: nn.LeakyReLU(float(a.get("negative_slope", 0.01))),
    "torch.nn.modules.activation.Hardswish": lambda a: nn.Hardswish(),
    "torch.nn.modules.activation.Sigmoid": lambda a: nn.Sigmoid(),
    "torch.nn.modules.activation.Tanh": lambda a: nn.Tanh(),
    "torch.nn.modules.activation.Mish": lambda a: nn.Mish(),
    "torch.nn.modules.activation.GELU": lambda a: nn.GELU(approximate=str(a.get("approximate", "none"))),
}
#: yaml module names the builder implements (``nn.Upsample`` written with or without the ``nn.`` prefix).
_YAML_MODULES = {"Conv", "DWConv", "Focus", "Concat", "Bottleneck", "C3", "C3k", "C2f", "C3k2", "SPP", "SPPF",
                 "C2PSA", "Detect", "Upsample"}
_CHANNEL_MODULES = {"Conv", "DWConv", "Focus", "Bottleneck", "C3", "C3k", "C2f", "C3k2", "SPP", "SPPF", "C2PSA"}
_REPEAT_MODULES = {"C3", "C3k", "C2f", "C3k2", "C2PSA"}  # the repeat count goes inside the block (args[2])

DEFAULT_CLASSIC_INPUT = 640
END2END_MAX_DETECTIONS = 300


def _upstream_short_name(class_name: str) -> str | None:
    """``ultralytics.nn.modules.block.C2f`` -> ``C2f`` when it is an upstream block edgekit implements."""
    module, _, short = class_name.rpartition(".")
    if module.startswith(_UPSTREAM_ROOTS) and short in UPSTREAM_BLOCKS:
        return short
    return None


def _is_known_class(class_name: str) -> bool:
    return class_name in _TORCH_LAYERS or class_name in _TOP_LEVEL or _upstream_short_name(class_name) is not None


def _yaml_name(module: Any) -> str:
    name = str(module)
    for prefix in ("torch.nn.", "nn."):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


# --- module re-creation from a pickled state ---------------------------------------------------------------

_PLAIN_TYPES = (bool, int, float, str, type(None), torch.Tensor)


def _plain(value: Any) -> bool:
    if isinstance(value, _PLAIN_TYPES):
        return True
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_plain(k) and _plain(v) for k, v in value.items())
    return False


def module_from_pickled(obj: PickledObject, trusted: Mapping[str, type[nn.Module]], where: str) -> nn.Module:
    """Re-create an ``nn.Module`` from its pickled state without running anything from the file.

    torch layers are constructed from their recorded constructor attributes; an upstream block edgekit implements
    becomes edgekit's class and a class in ``trusted`` (resolved from a trusted installed package) that class —
    both as ``object.__new__(cls)`` + ``nn.Module.__init__`` + children re-created recursively + parameters /
    buffers from the file + the plain attributes (numbers, strings, tensors and containers of them) set.
    """
    name = obj.class_name
    state = obj.state if isinstance(obj.state, dict) else {}
    if name in _TORCH_LAYERS and name not in trusted:
        attrs = dict(obj.attrs)
        attrs["_has_bias"] = obj._state_dict_entry("_parameters").get("bias") is not None
        try:
            module = _TORCH_LAYERS[name](attrs)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"layer {where}: malformed {name} in the file ({exc})") from None
        if isinstance(module, (nn.Sequential, nn.ModuleList)):
            for child_name, child in obj.children.items():
                module.add_module(str(child_name), module_from_pickled(child, trusted, f"{where}.{child_name}")
                                  if isinstance(child, PickledObject) else None)
        return module
    short = _upstream_short_name(name)
    cls = trusted.get(name) or (UPSTREAM_BLOCKS[short] if short else None)
    if cls is None:
        raise ModelFileError(f"layer {where}: class {name} is not implemented by edgekit")
    module = object.__new__(cls)
    nn.Module.__init__(module)
    for child_name, child in obj.children.items():
        module.add_module(str(child_name), module_from_pickled(child, trusted, f"{where}.{child_name}")
                          if isinstance(child, PickledObject) else None)
    for pname, value in obj._state_dict_entry("_parameters").items():
        module.register_parameter(str(pname), nn.Parameter(value.float(), requires_grad=False)
                                  if isinstance(value, torch.Tensor) else None)
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for bname, value in obj._state_dict_entry("_buffers").items():
        tensor = value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value
        module.register_buffer(str(bname), tensor, persistent=bname not in non_persistent)
    for key, value in obj.attrs.items():
        if key != "training" and _plain(value) and key not in module._modules:
            setattr(module, key, value)
    return module


def _resolve_trusted(names: Sequence[str], package: str, source: str) -> dict[str, type[nn.Module]]:
    """Import exactly ``names`` from the installed ``package``: each must be an ``nn.Module`` subclass whose
    ``__module__`` lies in ``package``'s namespace."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", package or ""):
        raise ModelFileError(f"--trust-upstream expects an installed package name, got {package!r}")
    resolved: dict[str, type[nn.Module]] = {}
    for name in names:
        module_name, _, attr = name.rpartition(".")
        if not name.startswith(package + "."):
            raise ModelFileError(f"{source}: class {name} is outside the trusted package {package!r}; "
                                 "--trust-upstream only resolves classes inside that package's namespace")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # any import failure of the user's package is reported as such
            raise ModelFileError(f"{source}: --trust-upstream {package}: cannot import {module_name} "
                                 f"({type(exc).__name__}: {exc})") from None
        cls = getattr(module, attr, None)
        defined_in = str(getattr(cls, "__module__", ""))
        inside = defined_in == package or defined_in.startswith(package + ".")
        if not (isinstance(cls, type) and issubclass(cls, nn.Module) and inside):
            raise ModelFileError(f"{source}: --trust-upstream {package}: {name} is not an nn.Module class defined "
                                 f"in {package} (refused)")
        resolved[name] = cls
    return resolved


# --- the yaml-driven builder ---------------------------------------------------------------------------------

def _resolve_arg(value: Any, names: Mapping[str, Any], where: str) -> Any:
    """A yaml argument: numbers, bools, lists as they are; the strings ``nc`` / ``anchors`` (the yaml's own
    values), ``None`` / ``True`` / ``False`` and Python literals (``ast.literal_eval``, nothing is eval'ed);
    any other string stays a string."""
    if not isinstance(value, str):
        return value
    if value in names:
        return names[value]
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value  # a plain word such as an upsampling mode ('nearest') stays a string


def _classic_conv(c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1,
                  act: bool = True) -> blocks.Conv:
    return blocks.Conv(c1, c2, k, s, p, g, act=act)


def _classic_bottleneck(c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5) -> blocks.Bottleneck:
    return blocks.Bottleneck(c1, c2, shortcut, g, k=(1, 3), e=e)


def _scales(cfg: Mapping[str, Any], classic: bool, where: str, scale: str | None = None) -> tuple[float, float, float]:
    """(depth, width, max_channels): ``scales[scale]`` (8.x) or ``depth_multiple`` / ``width_multiple``."""
    scales = cfg.get("scales")
    if not classic and isinstance(scales, Mapping) and scales:
        key = scale or cfg.get("scale") or next(iter(scales))
        if key not in scales:
            raise ModelFileError(f"{where}: yaml scale {key!r} is not one of {sorted(scales)}")
        try:
            depth, width, max_channels = (float(v) for v in scales[key])
        except (TypeError, ValueError):
            raise ModelFileError(f"{where}: yaml scales[{key!r}] must be [depth, width, max_channels]") from None
        return depth, width, max_channels
    try:
        return float(cfg.get("depth_multiple", 1.0)), float(cfg.get("width_multiple", 1.0)), math.inf
    except (TypeError, ValueError):
        raise ModelFileError(f"{where}: yaml depth_multiple / width_multiple must be numbers") from None


def build_network(cfg: Mapping[str, Any], *, classic: bool, source: str,
                  replacements: Mapping[int, nn.Module] | None = None) -> blocks.Sequencer:
    """Build the network a model yaml describes (random weights, training mode).

    Rows ``[from, repeats, module, args]`` of ``backbone`` + ``head``; channels ``args[0]`` scaled by width,
    capped at max_channels and rounded up to a multiple of 8; repeats ``round(n * depth)`` (at least 1, 1 stays
    1); blocks of the C2f/C3 kind take the repeat count as their third argument; C3k2 at scales m/l/x always
    uses C3k blocks (Ultralytics' rule); ``Concat`` sums its inputs' channels; the head gets the input channels.
    ``replacements`` maps a row index to a ready module (a trusted custom layer) whose output channels are
    measured by one forward pass.
    """
    where = f"{source} yaml"
    if not isinstance(cfg, Mapping):
        raise ModelFileError(f"{source}: the model has no yaml dict to build from")
    rows = list(cfg.get("backbone") or []) + list(cfg.get("head") or [])
    if not rows:
        raise ModelFileError(f"{where}: no backbone/head rows")
    nc = cfg.get("nc")
    if isinstance(nc, bool) or not isinstance(nc, int) or nc < 1:
        raise ModelFileError(f"{where}: nc must be a positive integer, got {nc!r}")
    depth, width, max_channels = _scales(cfg, classic, where)
    scale = None if classic else cfg.get("scale")
    reg_max = int(cfg.get("reg_max", 16))
    end2end = bool(cfg.get("end2end", False))
    legacy = not any(isinstance(r, (list, tuple)) and len(r) == 4 and _yaml_name(r[2]) == "C3k2" for r in rows)
    names = {"nc": nc, "anchors": cfg.get("anchors"), "None": None, "True": True, "False": False}
    channels: list[int] = [int(cfg.get("ch", cfg.get("channels", 3)))]
    layers: list[nn.Module] = []
    save: list[int] = []
    replacements = replacements or {}
    for i, row in enumerate(rows):
        here = f"{where} row {i}"
        if not (isinstance(row, (list, tuple)) and len(row) == 4 and isinstance(row[3], (list, tuple))):
            raise ModelFileError(f"{here}: expected [from, repeats, module, args], got {str(row)[:80]}")
        f, n, module_name, raw_args = row
        name = _yaml_name(module_name)
        sources = [f] if isinstance(f, int) else list(f) if isinstance(f, (list, tuple)) else None
        if not sources or not all(isinstance(x, int) and -len(channels) <= x < max(i, 1) for x in sources):
            raise ModelFileError(f"{here}: 'from' {f!r} must be -1 or earlier layer indices")
        c_in = [channels[x] if i else channels[0] for x in sources]  # row 0 reads the image (ch[-1] = 3)
        c1 = c_in[0]
        args = [_resolve_arg(a, names, here) for a in raw_args]
        repeats = scale_depth(int(n), depth) if isinstance(n, int) and n >= 1 else None
        if repeats is None:
            raise ModelFileError(f"{here}: repeats must be a positive integer, got {n!r}")
        try:
            if i in replacements:
                module = replacements[i]
                c2 = _probe_channels(module, c_in, here)
            elif name in _CHANNEL_MODULES:
                declared = args[0] if args else None
                if isinstance(declared, bool) or not isinstance(declared, int) or declared < 1:
                    raise ModelFileError(f"{here}: {name} needs a positive output channel count, got {declared!r}")
                c2 = declared if declared == nc else scale_channels(int(min(declared, max_channels)), width)
                args = [c1, c2, *args[1:]]
                if name in _REPEAT_MODULES:
                    args.insert(2, repeats)
                    repeats = 1
                if name == "C3k2" and scale and str(scale) in "mlx" and len(args) > 3:
                    args[3] = True
                ctor: Callable[..., nn.Module] = UPSTREAM_BLOCKS[name]
                if classic and name == "Conv":
                    ctor = _classic_conv
                elif classic and name == "Bottleneck":
                    ctor = _classic_bottleneck
                made = [ctor(*args) for _ in range(repeats)]
                module = made[0] if repeats == 1 else nn.Sequential(*made)
            elif name == "Concat":
                c2 = sum(c_in)
                module = blocks.Concat(*args)
            elif name == "Upsample":
                c2 = c1
                module = nn.Upsample(*args)
            elif name == "Detect":
                c2 = 0
                det_nc = args[0] if args else nc
                if classic:
                    anchors = args[1] if len(args) > 1 else cfg.get("anchors")
                    if isinstance(anchors, int):  # "na anchors per level", values filled by the trainer
                        anchors = [list(range(anchors * 2))] * len(sources)
                    if not isinstance(anchors, (list, tuple)) or not anchors:
                        raise ModelFileError(f"{here}: a YOLOv5 Detect needs anchors (per level a list of w, h "
                                             f"values, or a count), got {anchors!r}")
                    module = blocks.AnchorDetect(det_nc, anchors, c_in)
                else:
                    module = blocks.Detect(det_nc, c_in, reg_max=reg_max, legacy=legacy, end2end=end2end)
            else:  # unknown names are reported before building; this guards direct callers
                raise ModelFileError(f"{here}: module {module_name!r} is not implemented by edgekit")
        except ModelFileError:
            raise
        except (TypeError, ValueError, IndexError, RuntimeError, ZeroDivisionError) as exc:
            raise ModelFileError(f"{here}: cannot build {module_name}{tuple(raw_args)} ({exc})") from None
        # nn.Module.__setattr__ stores any value as a plain attribute; torch types its value Tensor | Module
        module.f, module.i = f, i  # type: ignore[assignment]
        save.extend(x % i for x in sources if x != -1)
        layers.append(module)
        if i == 0:
            channels = []
        channels.append(c2)
    return blocks.Sequencer(layers, save)


def _probe_channels(module: nn.Module, c_in: Sequence[int], where: str) -> int:
    """Output channels of a trusted custom layer: one forward pass on zeros (64x64) in eval mode."""
    module.eval()
    xs = [torch.zeros(1, c, 64, 64) for c in c_in]
    try:
        with torch.no_grad():
            out = module(xs[0] if len(xs) == 1 else xs)
    except Exception as exc:  # the trusted package's code failed on a probe input
        raise ModelFileError(f"{where}: the trusted layer {type(module).__name__} failed on a "
                             f"{list(xs[0].shape)} probe input ({type(exc).__name__}: {exc})") from None
    if not (isinstance(out, torch.Tensor) and out.dim() == 4):
        raise ModelFileError(f"{where}: the trusted layer {type(module).__name__} must return one NCHW tensor")
    return int(out.shape[1])


# --- file -> model -------------------------------------------------------------------------------------------

def _unknown_classes(model: PickledObject, rows: Sequence[Any]) -> tuple[list[str], list[str]]:
    """(pickled class names in the model tree edgekit does not implement, yaml module names likewise)."""
    pickled = sorted({m.class_name for _, m in model.named_modules() if m is not model and m.is_module
                      and not _is_known_class(m.class_name)})
    short = {n.rpartition(".")[2] for n in pickled}
    yaml_names = sorted({str(r[2]) for r in rows if isinstance(r, (list, tuple)) and len(r) == 4
                         and _yaml_name(r[2]) not in _YAML_MODULES and _yaml_name(r[2]) not in short})
    return pickled, yaml_names


def _adopt_file_details(model: nn.Module, pickled: PickledObject, source: str) -> None:
    """Take from the file what the yaml does not say: each Conv's activation class and each BatchNorm's eps /
    momentum (classic YOLOv5 and Ultralytics use 1e-3 / 0.03; a fork may differ)."""
    tree = dict(pickled.named_modules())
    for path, module in list(model.named_modules()):
        theirs = tree.get(path)
        if theirs is None:
            continue
        if isinstance(module, nn.BatchNorm2d):
            attrs = theirs.attrs
            if isinstance(attrs.get("eps"), float):
                module.eps = attrs["eps"]
            if isinstance(attrs.get("momentum"), float):
                module.momentum = attrs["momentum"]
        if isinstance(module, blocks.Conv):
            act = theirs.children.get("act")
            if isinstance(act, PickledObject) and act.class_name in _TORCH_LAYERS:
                module.act = module_from_pickled(act, {}, f"{path}.act")


def _layer_list(model: PickledObject, source: str) -> list[PickledObject]:
    seq = model.children.get("model")
    if not isinstance(seq, PickledObject):
        raise ModelFileError(f"{source}: the pickled model has no 'model' layer sequence")
    return [c for c in seq.children.values() if isinstance(c, PickledObject)]


def _family(model: PickledObject, classic: bool) -> str:
    if classic:
        return "yolov5"
    cfg = model.attrs.get("yaml") or {}
    stem = str(cfg.get("yaml_file") or model.attrs.get("yaml_file") or "").rpartition("/")[2].lower()
    match = re.match(r"yolov?(\d+)[nslmx]?(u?)", stem)
    if not match:
        return "ultralytics"
    version, u = match.groups()
    if version == "5" and u:
        return "yolov5u"
    return f"yolov{version}" if int(version) < 10 else f"yolo{version}"


def _class_names(names: Any, nc: int, source: str) -> tuple[str, ...]:
    if isinstance(names, Mapping):
        try:
            ordered = [names[k] for k in sorted(names, key=int)]
            if sorted(int(k) for k in names) != list(range(len(names))):
                raise ValueError
        except (TypeError, ValueError):
            raise ModelFileError(f"{source}: 'names' must map 0..nc-1 to class names") from None
        names = ordered
    if names is None:
        return tuple(f"class{i}" for i in range(nc))
    if not isinstance(names, (list, tuple)) or len(names) != nc:
        raise ModelFileError(f"{source}: 'names' has {len(names) if isinstance(names, (list, tuple)) else '?'} "
                             f"entries but the model has nc={nc} classes")
    return tuple(str(n) for n in names)


def _input_size(payload: Mapping[str, Any], classic: bool, source: str) -> tuple[int, int]:
    if classic:
        return DEFAULT_CLASSIC_INPUT, DEFAULT_CLASSIC_INPUT
    args = payload.get("train_args")
    imgsz = args.get("imgsz") if isinstance(args, Mapping) else None
    if imgsz is None:
        return DEFAULT_CLASSIC_INPUT, DEFAULT_CLASSIC_INPUT
    if isinstance(imgsz, int) and not isinstance(imgsz, bool) and imgsz > 0:
        return imgsz, imgsz
    if isinstance(imgsz, (list, tuple)) and len(imgsz) == 2 and all(isinstance(v, int) and v > 0 for v in imgsz):
        return int(imgsz[0]), int(imgsz[1])
    raise ModelFileError(f"{source}: train_args.imgsz must be a positive integer or [h, w], got {imgsz!r}")


def build_from_pickled(ck: PickledCheckpoint, source: str, *, end2end: bool | None = None,
                       trust_upstream: str | None = None) -> DetectorModel:
    """An Ultralytics 8.x / classic YOLOv5 checkpoint (read by ``load_pickled_checkpoint``) as edgekit's module.

    Returns an ``nn.Module`` in eval mode whose forward maps a float32 ``[B, 3, H, W]`` RGB /255 letterboxed image
    to the raw head outputs of the module docstring (one tensor per level), with ``.spec`` (ModelSpec) and
    ``.config = None``. ``end2end`` overrides the file's choice for heads with a one-to-one branch (YOLO26).
    ``trust_upstream`` names an installed package allowed to provide the classes edgekit does not implement.
    Raises ModelFileError (one line) for anything else.
    """
    payload = ck.payload
    model = payload.get("model") if isinstance(payload, Mapping) else None
    if isinstance(payload, Mapping) and isinstance(payload.get("ema"), PickledObject) and not isinstance(model, PickledObject):
        model = payload["ema"]
    if not isinstance(model, PickledObject):
        raise ModelFileError(f"{source}: no pickled model under 'model' (expected an Ultralytics or YOLOv5 checkpoint)")
    if model.class_name not in _TOP_LEVEL:
        raise ModelFileError(f"{source}: the model is a {model.class_name}; edgekit imports detection models "
                             "(ultralytics.nn.tasks.DetectionModel, models.yolo.Model) only")
    classic = model.class_name.startswith("models.")
    cfg = model.attrs.get("yaml")
    if not isinstance(cfg, Mapping):
        raise ModelFileError(f"{source}: the pickled model carries no yaml description")
    rows = list(cfg.get("backbone") or []) + list(cfg.get("head") or [])
    layers = _layer_list(model, source)

    unknown_pickled, unknown_yaml = _unknown_classes(model, rows)
    replacements: dict[int, nn.Module] = {}
    if unknown_pickled or unknown_yaml:
        if trust_upstream is None or (unknown_yaml and not unknown_pickled):
            every = ", ".join(unknown_pickled + unknown_yaml)
            raise ModelFileError(
                f"{source}: edgekit does not implement {every}; the checkpoint is a fork with custom blocks; "
                "re-export it to ONNX with its own code and run `edgekit convert model.onnx`, or pass "
                "--trust-upstream PACKAGE to resolve only these classes from an installed package")
        trusted = _resolve_trusted(unknown_pickled, trust_upstream, source)
        unknown = set(unknown_pickled)
        for i, layer in enumerate(layers):
            custom = any(m.class_name in unknown for _, m in layer.named_modules())
            yaml_unknown = i < len(rows) and _yaml_name(rows[i][2]) not in _YAML_MODULES
            if custom or yaml_unknown:
                module = module_from_pickled(layer, trusted, f"model.{i}")
                replacements[i] = module
    if len(layers) != len(rows):
        raise ModelFileError(f"{source}: the yaml has {len(rows)} layers but the pickled model {len(layers)}")

    net = build_network(cfg, classic=classic, source=source, replacements=replacements)
    _adopt_file_details(net, model, source)
    load_state_dict_strict(net, model.state_dict(), source)
    head = net.model[-1]
    strides = _strides(model, head, source)
    nc = int(cfg["nc"])
    names = _class_names(model.attrs.get("names"), nc, source)
    output_names = tuple(f"p{int(round(math.log2(s)))}" if s > 0 else f"out{i}" for i, s in enumerate(strides))
    size = _input_size(payload, classic, source)
    letterbox = ResizeSpec(mode="letterbox", pad_value=114)
    if isinstance(head, blocks.AnchorDetect):
        if end2end:  # --end2end on an anchor head must not be accepted and ignored
            raise ModelFileError(f"{source}: end-to-end output requested but a YOLOv5 anchor head has no one-to-one "
                                 "branch (only YOLO26-style heads with one2one_cv2/one2one_cv3 have it)")
        anchors = (head.anchors * torch.tensor(strides, dtype=torch.float32).view(-1, 1, 1)).tolist()
        anchors = [[[round(v, 4) for v in pair] for pair in level] for level in anchors]
        spec_head = HeadSpec(kind="yolo_anchor", output_names=output_names,
                             params={"strides": strides, "anchors": anchors})
        post = PostprocessSpec(conf_threshold=0.25, iou_threshold=0.45, nms=True, class_agnostic=False,
                               pre_nms_topk=30000, max_detections=300)
    elif isinstance(head, blocks.Detect):
        _check_dfl(head, source)
        file_end2end = _detect_end2end(layers[-1])
        use_one2one = file_end2end if end2end is None else bool(end2end)
        if use_one2one and not hasattr(head, "one2one_cv2"):
            raise ModelFileError(f"{source}: end-to-end output requested but the Detect head has no one-to-one "
                                 "branch (only YOLO26-style heads with one2one_cv2/one2one_cv3 have it)")
        head.use_one2one = use_one2one
        max_det = int(layers[-1].attrs.get("max_det", 300) or 300)
        params: dict[str, Any] = {"strides": strides, "reg_max": int(head.reg_max)}
        if use_one2one:  # the end-to-end head's own selection (no NMS): see spec's ``dfl`` one2one_topk
            params["one2one_topk"] = max_det
        spec_head = HeadSpec(kind="dfl", output_names=output_names, params=params)
        post = (PostprocessSpec(conf_threshold=0.25, iou_threshold=0.7, nms=False, class_agnostic=False,
                                pre_nms_topk=30000, max_detections=max_det or END2END_MAX_DETECTIONS)
                if use_one2one else
                PostprocessSpec(conf_threshold=0.25, iou_threshold=0.7, nms=True, class_agnostic=False,
                                pre_nms_topk=30000, max_detections=max_det))
    else:
        raise ModelFileError(f"{source}: the last layer must be a Detect head, got {type(head).__name__}")
    net.spec = ModelSpec(family=_family(model, classic), input_size=size, class_names=names, head=spec_head,
                         color_order="RGB", normalization=Normalization(), resize=letterbox, postprocess=post)
    net.config = None
    # the loader and convert read this: a recorded training size wins over a target profile's size
    net.input_size_from_checkpoint = _records_input_size(payload, classic)
    return net.eval()


def _records_input_size(payload: Mapping[str, Any], classic: bool) -> bool:
    """Whether :func:`_input_size` read the size from the file (``train_args.imgsz``) rather than assuming it."""
    args = payload.get("train_args")
    return not classic and isinstance(args, Mapping) and args.get("imgsz") is not None


def _strides(model: PickledObject, head: nn.Module, source: str) -> list[int]:
    stride = model.attrs.get("stride")
    values = stride.flatten().tolist() if isinstance(stride, torch.Tensor) else stride
    if not isinstance(values, (list, tuple)) or len(values) != len(getattr(head, "cv2", getattr(head, "m", []))):
        raise ModelFileError(f"{source}: the model's 'stride' {values!r} does not give one stride per head level")
    return [int(round(float(s))) for s in values]


def _detect_end2end(detect: PickledObject) -> bool:
    state = detect.state if isinstance(detect.state, dict) else {}
    return bool(state.get("_end2end", state.get("end2end", False)))


def _check_dfl(head: blocks.Detect, source: str) -> None:
    """The ``dfl`` decoder assumes the DFL projection 0..reg_max-1 (fixed in Ultralytics); a file with other
    weights would decode differently."""
    if isinstance(head.dfl, blocks.DFL):
        weight = head.dfl.conv.weight.detach().flatten()
        if not torch.allclose(weight, torch.arange(weight.numel(), dtype=weight.dtype)):
            raise ModelFileError(f"{source}: the Detect head's dfl.conv.weight is not the projection 0..reg_max-1")


__all__ = ["UPSTREAM_BLOCKS", "build_from_pickled", "build_network", "module_from_pickled"]
