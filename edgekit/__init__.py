"""edgekit: deploy PyTorch object detectors to edge backends and measure what the conversion cost.

The runtime (``edgekit.runtime``) is importable without torch; the converter side imports torch
lazily through the functions below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from edgekit.errors import EdgekitError
from edgekit.runtime.detections import Detections
from edgekit.spec import ModelSpec

if TYPE_CHECKING:  # pragma: no cover
    from edgekit.runtime.detector import Detector

_LAZY = {
    "Detector": "edgekit.runtime.detector",
    "load_checkpoint": "edgekit.models.loading",
    "save_checkpoint": "edgekit.models.loading",
    "export_artifact": "edgekit.convert.chain",
    "convert_onnx": "edgekit.convert.chain",
    "load_target": "edgekit.targets",
    "validate_artifact": "edgekit.validate.run",
}


# ``convert`` and ``validate`` are also subpackage names (edgekit.convert, edgekit.validate): a lazy attribute of
# that name would be shadowed by the subpackage once imported, so the functions live at edgekit.convert.chain.convert
# and edgekit.validate.run.validate_artifact (exported here as validate_artifact).


def __getattr__(name: str) -> Any:
    # Lazy so that `import edgekit` stays light and never pulls in torch on a device.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")


__all__ = [
    "Detections",
    "Detector",
    "EdgekitError",
    "ModelSpec",
    "__version__",
    "convert_onnx",
    "export_artifact",
    "load_checkpoint",
    "load_target",
    "save_checkpoint",
    "validate_artifact",
]
