"""Backend registry: name -> Runner class, imported lazily so a board only needs its own library.

Adding a backend is one module in this package and one line in ``_RUNNERS``, or, for a backend outside
edgekit, :func:`register_runner` (with ``edgekit.convert.builders.register_builder`` for its build step).
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


_BUILTIN_RUNNERS = frozenset(_RUNNERS)


def register_runner(name: str, target: str) -> None:
    """Add a backend's Runner: ``target`` is ``"package.module:RunnerClass"``, imported when first used. The public
    registration point for a backend outside edgekit; a built-in backend cannot be replaced."""
    module_name, sep, class_name = target.partition(":")
    if not (name and module_name and sep and class_name):
        raise EdgekitError(f"register_runner({name!r}, {target!r}): expected a backend name and "
                           "'package.module:RunnerClass'")
    if _RUNNERS.get(name, target) != target:
        raise EdgekitError(f"backend {name!r} already has a runner ({_RUNNERS[name]})")
    _RUNNERS[name] = target


def unregister_runner(name: str) -> None:
    """Remove a runner added with :func:`register_runner` (built-in runners stay)."""
    if name in _BUILTIN_RUNNERS:
        raise EdgekitError(f"the built-in runner for {name!r} cannot be removed")
    _RUNNERS.pop(name, None)


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


__all__ = ["Runner", "TensorSpec", "backend_names", "get_runner_class", "register_runner", "unregister_runner"]
