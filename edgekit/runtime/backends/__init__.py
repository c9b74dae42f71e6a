"""Backend registry: name -> Runner class, imported lazily so a board only needs its own library.

Adding a backend is one module in this package and one line in ``_RUNNERS``.
"""

from __future__ import annotations

import importlib

from edgekit.errors import EdgekitError
from edgekit.runtime.backends.base import Runner, TensorSpec

_RUNNERS: dict[str, str] = {
    "onnxruntime": "edgekit.runtime.backends.onnxruntime:OnnxRuntimeRunner",
    "openvino": "edgekit.runtime.backends.openvino:OpenVinoRunner",
    "ncnn": "edgekit.runtime.backends.ncnn:NcnnRunner",
    "tensorrt": "edgekit.runtime.backends.tensorrt:TensorRtRunner",
}


def backend_names() -> list[str]:
    return list(_RUNNERS)


def get_runner_class(name: str) -> type[Runner]:
    """The Runner class for a backend name; unknown names raise EdgekitError listing the known ones."""
    try:
        target = _RUNNERS[name]
    except KeyError:
        raise EdgekitError(f"unknown backend {name!r}; known backends: {', '.join(_RUNNERS)}") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


__all__ = ["Runner", "TensorSpec", "backend_names", "get_runner_class"]
