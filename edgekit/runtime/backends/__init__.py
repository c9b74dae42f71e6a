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


#: ``register_runner(name, "package.module:RunnerClass")``: add a backend's Runner, imported when first used. The
#: public registration point for a backend outside edgekit; a built-in backend cannot be replaced.
register_runner = _RUNNERS.register
#: ``unregister_runner(name)``: remove a runner added with :func:`register_runner` (built-in runners stay).
unregister_runner = _RUNNERS.unregister
backend_names = _RUNNERS.names
#: ``get_runner_class(name)``: the Runner class of a backend; unknown names raise EdgekitError listing the known ones.
get_runner_class = _RUNNERS.load


__all__ = ["Runner", "TensorSpec", "backend_names", "get_runner_class", "register_runner", "unregister_runner"]
