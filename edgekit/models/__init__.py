"""Built-in detector families: a registry, a small config, and one builder.

``build_model(ModelConfig("yolov8", num_classes=6))`` returns an ``nn.Module`` whose ``forward``
takes a float32 ``[B, 3, H, W]`` image tensor and returns the raw head outputs as a tuple, in
``model.spec.head.output_names`` order, exactly as the head kind's contract in :mod:`edgekit.spec`
describes. ``model.spec`` is the :class:`~edgekit.spec.ModelSpec` and ``model.config`` the
:class:`ModelConfig` it was built from.

Family modules are imported lazily (``FAMILIES`` maps a name to ``"module:function"``), so listing
the families does not build or import any of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from edgekit.errors import SpecError, did_you_mean
from edgekit.models.base import DetectorModel
from edgekit.spec import HeadSpec, ModelSpec, Normalization, PostprocessSpec, ResizeSpec

FAMILIES: dict[str, str] = {
    "yolov5": "edgekit.models.yolov5:build_from_config",
    "yolox": "edgekit.models.yolox:build_from_config",
    "yolov6": "edgekit.models.yolov6:build_from_config",
    "yolov8": "edgekit.models.yolov8:build_from_config",
    "centernet": "edgekit.models.centernet:build_from_config",
    "ssd": "edgekit.models.ssd:build_from_config",
    "fastestdet": "edgekit.models.fastestdet:build_from_config",
}

# Every family's deepest feature map has stride 32, so input sides must be multiples of it.
INPUT_MULTIPLE = 32


def family_names() -> list[str]:
    """Registered family names, sorted."""
    return sorted(FAMILIES)


def _check_family(family: Any) -> str:
    if isinstance(family, str) and family in FAMILIES:
        return family
    hint = did_you_mean(family.lower(), FAMILIES) if isinstance(family, str) else ""
    raise SpecError(f"unknown model family {family!r}{hint} (known families: {', '.join(family_names())})")


@dataclass(frozen=True)
class ModelConfig:
    """What to build: family, number of classes, input size (H, W) and width/depth multipliers.

    ``width`` scales every channel count (rounded up to a multiple of 8) and ``depth`` every block
    repeat count (rounded, at least 1), as in the YOLOv5/YOLOv8 model scales (n = 0.25 / 0.33).
    """

    family: str
    num_classes: int
    input_size: tuple[int, int] = (160, 160)
    width: float = 0.25
    depth: float = 0.33

    def __post_init__(self) -> None:
        _check_family(self.family)
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise SpecError(f"model config: num_classes must be a positive integer, got {self.num_classes!r}")
        size = self.input_size
        if (not isinstance(size, (tuple, list)) or len(size) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 and s % INPUT_MULTIPLE == 0
                           for s in size)):
            raise SpecError(f"model config: input_size must be (height, width), positive multiples of "
                            f"{INPUT_MULTIPLE}, got {size!r}")
        object.__setattr__(self, "input_size", (int(size[0]), int(size[1])))
        for name in ("width", "depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 4:
                raise SpecError(f"model config: {name} must be a number in (0, 4], got {value!r}")
            object.__setattr__(self, name, float(value))

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "num_classes": self.num_classes, "input_size": list(self.input_size),
                "width": self.width, "depth": self.depth}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Build from plain JSON data (as written by :meth:`to_dict`); unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise SpecError(f"model config: expected an object, got {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        for key in data:
            if key not in known:
                raise SpecError(f"model config: unknown field {key!r}{did_you_mean(str(key), known)} (expected {known})")
        for required in ("family", "num_classes"):
            if required not in data:
                raise SpecError(f"model config: missing required field {required!r}")
        values = dict(data)
        if "input_size" in values and isinstance(values["input_size"], list):
            values["input_size"] = tuple(values["input_size"])
        return cls(**values)


def resolve_class_names(config: ModelConfig, class_names: Sequence[str] | None) -> tuple[str, ...]:
    """``class_names`` as a tuple, or ``class0 .. class{N-1}`` when None; the count must match the config."""
    if class_names is None:
        return tuple(f"class{i}" for i in range(config.num_classes))
    if isinstance(class_names, str):
        raise SpecError("class_names must be a sequence of names, not a single string")
    names = tuple(str(name) for name in class_names)
    if len(names) != config.num_classes:
        raise SpecError(f"got {len(names)} class names for a model with num_classes={config.num_classes}")
    return names


def detector_spec(config: ModelConfig, class_names: Sequence[str] | None, head: HeadSpec, *,
                  normalization: Normalization | None = None, resize: ResizeSpec | None = None,
                  postprocess: PostprocessSpec | None = None) -> ModelSpec:
    """The ModelSpec of a built-in model: RGB input; by default YOLO-style preprocessing
    (pixel / 255, letterbox padded with 114) and postprocessing (conf 0.25, NMS IoU 0.45)."""
    return ModelSpec(
        family=config.family,
        input_size=config.input_size,
        class_names=resolve_class_names(config, class_names),
        head=head,
        color_order="RGB",
        normalization=normalization or Normalization(),
        resize=resize or ResizeSpec(mode="letterbox", pad_value=114),
        postprocess=postprocess or PostprocessSpec(),
    )


def _load_builder(family: str) -> Any:
    target = FAMILIES[family]
    module_name, _, function_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(f"model family {family!r}: cannot import {module_name} ({exc})") from None
    builder = getattr(module, function_name, None)
    if builder is None:
        raise SpecError(f"model family {family!r}: {module_name} has no function {function_name!r}")
    return builder


def build_model(config: ModelConfig, class_names: Sequence[str] | None = None) -> DetectorModel:
    """Build a randomly initialised model of ``config.family`` with ``.spec`` and ``.config`` attached.

    The returned module is in training mode (as a fresh ``nn.Module`` is); call ``.eval()`` before export.
    """
    if not isinstance(config, ModelConfig):
        raise SpecError(f"build_model expects a ModelConfig, got {type(config).__name__}")
    family = _check_family(config.family)
    names = resolve_class_names(config, class_names)
    model = _load_builder(family)(config, names)
    if not isinstance(model, DetectorModel) or not isinstance(getattr(model, "spec", None), ModelSpec):
        raise SpecError(f"model family {family!r}: its builder returned a model that is not a DetectorModel "
                        "with a ModelSpec in .spec")
    if getattr(model, "config", None) is None:
        model.config = config
    return model


__all__ = ["FAMILIES", "DetectorModel", "ModelConfig", "build_model", "detector_spec", "family_names", "resolve_class_names"]
