"""Backend registry: name -> Runner class, imported lazily so a board only needs its own library.

Adding a backend is one module in this package and one line in ``_RUNNERS``, or, for a backend outside
edgekit, :func:`register_runner` (with ``edgekit.convert.builders.register_builder`` for its build step).
"""

from __future__ import annotations

from edgekit.registry import LazyRegistry
from edgekit.runtime.backends.base import Runner, TensorSpec

_RUNNERS: LazyRegistry[Runner] = LazyRegistry("runner", Runner, {
    "onnxruntime": "edgekit.runtime.backends.onnxruntime:OnnxRuntimeRunner",
    "openvino": "edgekit.runtime.backends.openvino:OpenVinoRunner",
    "ncnn": "edgekit.runtime.backends.ncnn:NcnnRunner",
    "tensorrt": "edgekit.runtime.backends.tensorrt:TensorRtRunner",
})


def register_runner(name: str, target: str) -> None:
    """Add a backend's Runner: ``target`` is ``"package.module:RunnerClass"``, imported when first used. The public
    registration point for a backend outside edgekit; a built-in backend cannot be replaced."""
    _RUNNERS.register(name, target)


def unregister_runner(name: str) -> None:
    """Remove a runner added with :func:`register_runner` (built-in runners stay)."""
    _RUNNERS.unregister(name)


def backend_names() -> list[str]:
    return _RUNNERS.names()


def get_runner_class(name: str) -> type[Runner]:
    """The Runner class for a backend name; unknown names raise EdgekitError listing the known ones."""
    return _RUNNERS.load(name)


__all__ = ["Runner", "TensorSpec", "backend_names", "get_runner_class", "register_runner", "unregister_runner"]
