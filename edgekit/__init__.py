"""edgekit: deploy PyTorch object detectors to edge backends and measure what the conversion cost.

The public API (everything else is reachable through the subpackages, but may change)::

    model = load_checkpoint("best.pt")                           # nn.Module + .spec (torch, safe loading)
    manifest = convert_model(model, "intel-cpu", "out/")         # export, passes, backend build, artifact
    manifest = convert_onnx("model.onnx", spec, "raspberry-pi-5", "out/")   # the same for an ONNX file
    with Detector.load("out/", backend="openvino") as detector:  # numpy + the backend library, no torch
        detections = detector.detect("street.jpg")
    report = validate_artifact("out/", load_dataset("coco/"))    # mAP, drift and agreement per backend

``load_target`` reads a deployment profile, ``export_artifact`` writes the ONNX Runtime fp32 artifact only.

``import edgekit`` stays light and never imports torch (a device runs numpy + its backend library): the
converter-side names are imported on first use. They are ``convert_model`` / ``validate_artifact``, not
``convert`` / ``validate``, because those are the subpackages ``edgekit.convert`` / ``edgekit.validate``, and
importing a subpackage rebinds its name on this module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from edgekit.errors import EdgekitError
from edgekit.runtime.detections import Detections
from edgekit.spec import ModelSpec

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and IDEs
    from edgekit.convert.chain import convert as convert_model
    from edgekit.convert.chain import convert_onnx, export_artifact
    from edgekit.models.loading import load_checkpoint, save_checkpoint
    from edgekit.runtime.detector import Detector
    from edgekit.targets import load_target
    from edgekit.validate.datasets import load_dataset
    from edgekit.validate.run import validate_artifact

#: public name -> (module, attribute), imported on first use
_LAZY = {
    "Detector": ("edgekit.runtime.detector", "Detector"),
    "load_checkpoint": ("edgekit.models.loading", "load_checkpoint"),
    "save_checkpoint": ("edgekit.models.loading", "save_checkpoint"),
    "export_artifact": ("edgekit.convert.chain", "export_artifact"),
    "convert_model": ("edgekit.convert.chain", "convert"),
    "convert_onnx": ("edgekit.convert.chain", "convert_onnx"),
    "load_target": ("edgekit.targets", "load_target"),
    "load_dataset": ("edgekit.validate.datasets", "load_dataset"),
    "validate_artifact": ("edgekit.validate.run", "validate_artifact"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "Detections",
    "Detector",
    "EdgekitError",
    "ModelSpec",
    "__version__",
    "convert_model",
    "convert_onnx",
    "export_artifact",
    "load_checkpoint",
    "load_dataset",
    "load_target",
    "save_checkpoint",
    "validate_artifact",
]
