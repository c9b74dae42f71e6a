"""ModelSpec: the single description of a detector that every stage reads.

A spec says how to turn an image into the network's input tensor (size, colour order,
normalisation, resize mode) and how to turn the network's raw outputs into boxes (head kind and
its parameters, output tensor names, class names, NMS defaults). It round-trips through JSON
and is embedded in ONNX ``metadata_props`` (key ``edgekit.spec``) and in ``edgekit.json``.

Pixel normalisation, per channel c, on the colour-ordered uint8 image ``x``::

    input[c] = (x[c] * scale - mean[c]) / std[c]

Raw output contract per head kind (what the exported network returns, in ``output_names``
order; B = batch). Decoders in ``edgekit.runtime.decode`` and ``edgekit.reference.decode``
implement exactly this:

- ``yolo_anchor`` params ``strides``, ``anchors`` (per level, list of [w, h] in input pixels):
  one tensor per level ``[B, na*(5+nc), H, W]`` of raw logits, channel layout
  ``(anchor, [x, y, w, h, obj, cls...])``. YOLOv5 box encoding: ``xy = (2*sig - 0.5 + grid) * stride``,
  ``wh = (2*sig)^2 * anchor``, score = sig(obj) * sig(cls).
- ``yolox`` params ``strides``: one tensor per level ``[B, 4+1+nc, H, W]`` = (reg raw, obj logit,
  cls logits); ``xy = (reg + grid) * stride``, ``wh = exp(reg) * stride``, score = sig(obj)*sig(cls).
- ``dfl`` params ``strides``, ``reg_max``: one tensor per level ``[B, 4*reg_max + nc, H, W]``;
  distances ltrb = sum_i softmax(bins)_i * i * stride from anchor points (grid + 0.5) * stride;
  score = sig(cls); no objectness. ``reg_max`` 1 (YOLO26) means no bins: the 4 box channels are the
  raw ltrb distances in stride units, ltrb = raw * stride. Optional ``one2one_topk`` K (YOLOv10 / YOLO26
  one-to-one heads, end to end, no NMS): the candidates are then the K anchors with the highest max-class score,
  and among their K x nc (anchor, class) pairs the K highest scores, descending (ties to the lower index) —
  one anchor may appear once per class, as the Ultralytics end-to-end export outputs them.
- ``centernet`` params ``stride``, ``topk``: three tensors ``heatmap [B, nc, H, W]`` (logits),
  ``wh [B, 2, H, W]`` and ``offset [B, 2, H, W]`` in output-grid units; peaks by 3x3 max-pool
  suppression; no NMS.
- ``ssd`` params ``feature_maps`` ([[H, W] per level]), ``steps``, ``min_sizes``, ``max_sizes``,
  ``aspect_ratios``, ``variances``, ``clip``: two tensors ``loc [B, P, 4]`` and ``conf [B, P, 1+nc]``
  (logits, class 0 = background).
- ``fastestdet``: one tensor ``[B, 5+nc, H, W]`` = (sigmoid objectness, raw reg x4, softmax classes);
  score = obj^0.6 * max(cls)^0.4.

Heads decoded inside a third-party exported graph (``edgekit.runtime.onnx_import`` recognises them):

- ``ultralytics_decoded`` (Ultralytics 8.x ONNX export): one tensor ``[B, 4+nc, N]`` = (cx, cy, w, h
  in input pixels, nc sigmoid class scores in [0, 1]); score = max class, label = argmax; no objectness.
- ``e2e_xyxy`` (Ultralytics end-to-end export, YOLOv10 / YOLO26, K = 300): one tensor ``[B, K, 6]`` =
  (x1, y1, x2, y2 in input pixels, score, class index as a float); already NMS-free (postprocess nms=False).
- ``yolo_decoded`` (classic YOLOv5 export; YOLOX export with ``decode_in_inference=True``): one tensor
  ``[B, N, 5+nc]`` = (cx, cy, w, h in input pixels, objectness probability, nc class probabilities);
  score = obj * cls.
- ``yolox_flat`` params ``strides`` (official YOLOX ``tools/export_onnx.py`` without
  ``--decode_in_inference``, its default): one tensor ``[B, N, 5+nc]``, N = sum over levels of
  ceil(H/s)*ceil(W/s), level by level, cells row-major = (raw reg x4, objectness *probability*, class
  *probabilities*: YOLOX's head applies the sigmoid before flattening in both modes, only the box
  decode is skipped); ``xy = (reg + grid) * stride``, ``wh = exp(reg) * stride``, score = obj * cls.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError, SpecError, did_you_mean

SPEC_VERSION = 1
ONNX_METADATA_KEY = "edgekit.spec"

COLOR_ORDERS = ("RGB", "BGR")
RESIZE_MODES = ("letterbox", "resize")
RESIZE_ALIGNS = ("center", "top_left")


@dataclass(frozen=True)
class Normalization:
    """input = (pixel * scale - mean) / std, per channel in the spec's colour order."""

    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class ResizeSpec:
    """``letterbox`` keeps the aspect ratio and pads with ``pad_value``; ``resize`` stretches.

    ``align`` places the letterboxed content: ``center`` (YOLOv5 / Ultralytics: padding split
    between both sides, resized size rounded) or ``top_left`` (YOLOX ``preproc``: content at
    pixel (0, 0), padding only right and bottom, resized size truncated ``int(side * r)``).
    Ignored by ``resize``. Specs written before ``align`` existed load as ``center``.
    """

    mode: str = "letterbox"
    pad_value: int = 114
    align: str = "center"


@dataclass(frozen=True)
class HeadSpec:
    """Head kind (a decoder registry name), its parameters, and the raw output names in order."""

    kind: str
    output_names: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PostprocessSpec:
    """Defaults for score threshold, NMS IoU, class-aware NMS, pre-NMS top-k and max detections."""

    conf_threshold: float = 0.25
    iou_threshold: float = 0.45
    nms: bool = True
    class_agnostic: bool = False
    pre_nms_topk: int = 1000
    max_detections: int = 300

    def with_thresholds(self, conf_threshold: float | None = None,
                        iou_threshold: float | None = None) -> PostprocessSpec:
        """A copy with the score / NMS IoU thresholds a user gave (``--conf`` / ``--iou``); None keeps the spec's."""
        return replace(self,
                       conf_threshold=self.conf_threshold if conf_threshold is None else float(conf_threshold),
                       iou_threshold=self.iou_threshold if iou_threshold is None else float(iou_threshold))


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to run a detector's exported graph on images.

    ``input_size`` is (height, width) of the network input; the input tensor is float32
    ``[B, 3, H, W]`` named ``input_name``.
    """

    family: str
    input_size: tuple[int, int]
    class_names: tuple[str, ...]
    head: HeadSpec
    color_order: str = "RGB"
    normalization: Normalization = field(default_factory=Normalization)
    resize: ResizeSpec = field(default_factory=ResizeSpec)
    postprocess: PostprocessSpec = field(default_factory=PostprocessSpec)
    input_name: str = "images"
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def validate(self) -> None:
        """Raise SpecError naming the first field that is out of range."""
        h, w = self.input_size
        if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
            raise SpecError(f"spec.input_size must be two positive integers (height, width), got {self.input_size!r}")
        if self.color_order not in COLOR_ORDERS:
            raise SpecError(f"spec.color_order must be one of {COLOR_ORDERS}, got {self.color_order!r}")
        if self.resize.mode not in RESIZE_MODES:
            raise SpecError(f"spec.resize.mode must be one of {RESIZE_MODES}, got {self.resize.mode!r}")
        if self.resize.align not in RESIZE_ALIGNS:
            raise SpecError(f"spec.resize.align must be one of {RESIZE_ALIGNS}, got {self.resize.align!r}")
        if not 0 <= int(self.resize.pad_value) <= 255:
            raise SpecError(f"spec.resize.pad_value must be in 0..255, got {self.resize.pad_value!r}")
        if len(self.normalization.mean) != 3 or len(self.normalization.std) != 3:
            raise SpecError("spec.normalization.mean and .std must have 3 values each")
        if any(s == 0 for s in self.normalization.std):
            raise SpecError(f"spec.normalization.std must be non-zero, got {self.normalization.std!r}")
        if not self.class_names:
            raise SpecError("spec.class_names is empty: a detector needs at least one class")
        check_class_names(self.class_names, "spec.class_names")
        if not self.head.kind or not isinstance(self.head.kind, str):
            raise SpecError(f"spec.head.kind must be a decoder name, got {self.head.kind!r}")
        if not self.head.output_names:
            raise SpecError(f"spec.head.output_names is empty for head kind {self.head.kind!r}")
        pp = self.postprocess
        if not 0.0 <= pp.conf_threshold <= 1.0 or not 0.0 <= pp.iou_threshold <= 1.0:
            raise SpecError("spec.postprocess thresholds must be in [0, 1]")
        if pp.max_detections < 1 or pp.pre_nms_topk < 1:
            raise SpecError("spec.postprocess.max_detections and pre_nms_topk must be >= 1")

    # --- JSON round trip -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        data["class_names"] = list(self.class_names)
        data["head"]["output_names"] = list(self.head.output_names)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, source: str = "spec") -> ModelSpec:
        """Build and validate a spec from plain JSON data; errors name ``source`` and the field."""
        if not isinstance(data, dict):
            raise SpecError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {"family", "input_size", "class_names", "head", "color_order", "normalization",
                 "resize", "postprocess", "input_name", "version"}
        _reject_unknown(source, "", data, known)
        for section, kind in (("normalization", Normalization), ("resize", ResizeSpec), ("postprocess", PostprocessSpec),
                              ("head", HeadSpec)):
            _reject_unknown(source, section, data.get(section, {}), [f.name for f in fields(kind)])
        for required in ("family", "input_size", "class_names", "head"):
            if required not in data:
                raise SpecError(f"{source}: missing required field {required!r}")
        version = data.get("version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise SpecError(f"{source}: spec version {version!r} is not supported (this edgekit reads {SPEC_VERSION})")
        try:
            head = data["head"]
            if not isinstance(head, dict) or "kind" not in head or "output_names" not in head:
                raise SpecError(f"{source}: head must be an object with 'kind' and 'output_names'")
            size = data["input_size"]
            if not isinstance(size, (list, tuple)) or len(size) != 2:
                raise SpecError(f"{source}: input_size must be [height, width], got {size!r}")
            return cls(
                family=str(data["family"]),
                input_size=(size[0], size[1]),
                class_names=tuple(str(n) for n in data["class_names"]),
                head=HeadSpec(kind=head["kind"], output_names=tuple(head["output_names"]),
                              params=dict(head.get("params", {}))),
                color_order=data.get("color_order", "RGB"),
                normalization=Normalization(**_tuple_fields(data.get("normalization", {}), ("mean", "std"))),
                resize=ResizeSpec(**data.get("resize", {})),
                postprocess=PostprocessSpec(**data.get("postprocess", {})),
                input_name=str(data.get("input_name", "images")),
            )
        except SpecError:
            raise
        except (TypeError, ValueError, KeyError) as exc:
            raise SpecError(f"{source}: malformed spec ({exc})") from None

    @classmethod
    def from_json(cls, text: str, source: str = "spec") -> ModelSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_file(cls, path: str | Path) -> ModelSpec:
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"{path}: spec file not found")
        return cls.from_json(path.read_text(encoding="utf-8", errors="replace"), source=str(path))

    def with_input_size(self, input_size: tuple[int, int]) -> ModelSpec:
        return replace(self, input_size=(int(input_size[0]), int(input_size[1])))


def _reject_unknown(source: str, section: str, data: Any, known: Sequence[str] | set[str]) -> None:
    """SpecError naming the first key of the JSON object ``data`` that is not in ``known``, with a "did you
    mean" (a typo such as ``conf_treshold`` must not silently fall back to a default)."""
    if not isinstance(data, dict):
        return  # the constructor reports the wrong type
    unknown = sorted(str(key) for key in data if key not in known)
    if unknown:
        where = f"{section}.{unknown[0]}" if section else unknown[0]
        raise SpecError(f"{source}: unknown field {where!r}{did_you_mean(unknown[0], known)} "
                        f"(expected only {sorted(known)})")


def _tuple_fields(data: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise TypeError(f"expected an object, got {type(data).__name__}")
    return {k: (tuple(v) if k in names else v) for k, v in data.items()}


def check_class_names(names: Sequence[str], source: str, locations: Sequence[str] | None = None,
                      error: type[EdgekitError] = SpecError) -> None:
    """Raise ``error`` (default SpecError) naming where the first bad class name is.

    Classes are matched BY NAME (datasets to models, class maps), so a name must be non-empty
    text without control characters (a binary file read as names, a tab that would split a class
    map line) and unique (two classes called "car" cannot both be matched by name).
    ``locations``: where each name is written (e.g. ``"coco.names:7"``); default
    ``"<source>: class <index>"``.
    """
    where_all = list(locations) if locations is not None else [f"{source}: class {i}" for i in range(len(names))]
    first: dict[str, int] = {}
    for index, name in enumerate(names):
        where = where_all[index]
        if not isinstance(name, str) or not name.strip():
            raise error(f"{where}: empty class name {name!r}; expected a non-empty name")
        bad = next((c for c in name if c == "\ufffd" or unicodedata.category(c) in ("Cc", "Cs")), None)
        if bad is not None:
            raise error(f"{where}: class name {name[:40]!r} holds the control/undecodable character {bad!r}; "
                        "expected text (is this a binary file?)")
        if name in first:
            raise error(f"{where}: class name {name!r} repeats {where_all[first[name]]}; expected unique class "
                        "names (classes are matched by name)")
        first[name] = index


def load_class_names(path: str | Path) -> tuple[str, ...]:
    """Read class names, one per line (blank lines ignored), e.g. ``coco.names``.

    The file must be UTF-8 text; names must be unique and free of control characters
    (:func:`check_class_names`). Errors name the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: class names file not found (expected one class name per line)")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise SpecError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); expected one class name "
                        "per line (is this a binary file?)") from None
    numbered = [(number, line.strip()) for number, line in enumerate(text.split("\n"), start=1) if line.strip()]
    names = tuple(name for _, name in numbered)
    if not names:
        raise SpecError(f"{path}: no class names found (expected one class name per line)")
    check_class_names(names, str(path), [f"{path}:{number}" for number, _ in numbered])
    return names
