"""Backend builders: turn the exported (and pass-optimised) ONNX file into a backend's model files.

One module per backend, registered in ``_BUILDERS`` (built-in) or with :func:`register_builder` (a
backend of your own); nothing else in edgekit branches on backend names. Everything edgekit needs to
know about a backend's build is a class attribute of its builder:

- ``precisions``: what it can build;
- ``qdq_placement``: the Q/DQ placement (:class:`edgekit.quant.qdq.QdqPlacement`) that reproduces its
  int8 arithmetic in ONNX Runtime (``--drift-budget`` ranks and judges layers with it);
- ``profile_options``: the typed ``[backend_options]`` a target profile may set (anything else is an error);
- ``tools``: the Python distributions whose versions the manifest records for its builds;
- ``builds_on_device``: True when the runnable file is made on the device itself (TensorRT engines):
  the converter host cannot run or check it.

A builder writes its files through the artifact writer (so a failed build leaves nothing behind) and
returns the manifest entries the runtime's Runner for that backend will open.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from edgekit.errors import ConversionError
from edgekit.quant.placement import FUSED_UINT8, QdqPlacement
from edgekit.registry import LazyRegistry
from edgekit.runtime.artifact import ModelEntry
from edgekit.runtime.graph_nms import GraphNms
from edgekit.spec import ModelSpec


@dataclass(frozen=True)
class BuildSource:
    """What a builder converts from.

    onnx_path: the fp32 ONNX graph (opset >= 17, spec input/output names, ModelSpec in metadata).
    torch_model: the nn.Module it was exported from, or None for a third-party ONNX input.
    calibration: the INT8 calibration result of ``onnx_path`` (edgekit.quant.result.CalibrationResult);
        required by every builder for precision "int8", None otherwise.
    """

    onnx_path: Path
    spec: ModelSpec
    torch_model: Any | None = None
    calibration: Any | None = None
    #: (min, opt, max) batch the build is for (``Target.batch_range``); min == max: a static batch
    batch_range: tuple[int, int, int] = (1, 1, 1)
    #: NMS appended to the graph (``Target.nms == "graph"``, ``edgekit.convert.graph_nms``); None: host NMS
    graph_nms: GraphNms | None = None

    def require_calibration(self, backend: str) -> Any:
        if self.calibration is None:
            raise ConversionError(f"{backend}: precision int8 needs a calibration result (convert calibrates first)")
        return self.calibration


#: where to write a file inside the artifact being built: relative name -> path to write
FileSink = Callable[[str], Path]


@dataclass(frozen=True)
class ProfileOption:
    """One ``[backend_options]`` key a builder accepts: its TOML type, what it does, and (optionally) the only
    values allowed."""

    type: type | tuple[type, ...]
    help: str
    choices: tuple[Any, ...] = ()


class BackendBuilder(ABC):
    backend: ClassVar[str] = ""
    #: precisions this builder can produce (e.g. ("fp32", "fp16", "bf16"))
    precisions: ClassVar[tuple[str, ...]] = ()
    #: the Q/DQ placement that reproduces this backend's int8 arithmetic in ONNX Runtime: what
    #: ``--drift-budget`` ranks layers and judges drift with, so the layers kept in float are the ones that
    #: hurt *this* backend (ncnn's symmetric int8 inputs lose a bit on one-sided activations)
    qdq_placement: ClassVar[QdqPlacement] = FUSED_UINT8
    #: the target profile's ``[backend_options]`` this builder reads, typed; any other key is refused
    profile_options: ClassVar[Mapping[str, ProfileOption]] = {}
    #: Python distributions whose installed versions the manifest records (``info.tools``) for this build
    tools: ClassVar[tuple[str, ...]] = ()
    #: the runnable file is built on the device (TensorRT): not run or checked on the converter host
    builds_on_device: ClassVar[bool] = False
    #: the largest pre-NMS top-k the backend's engine takes when NMS is in the graph (None: no limit)
    max_graph_topk: ClassVar[int | None] = None

    @property
    def int8_placement(self) -> str:
        """The name of :attr:`qdq_placement` (what the manifest and the progress lines show)."""
        return self.qdq_placement.name

    @classmethod
    def tool_versions(cls) -> dict[str, str]:
        """Installed versions of :attr:`tools` (a distribution that is not installed is left out)."""
        return installed_versions(cls.tools)

    @abstractmethod
    def build(self, source: BuildSource, precision: str, sink: FileSink, options: Mapping[str, Any]) -> ModelEntry:
        """Write the backend's files for ``precision`` via ``sink`` and return the manifest entry."""

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise ConversionError(f"backend '{self.backend}' cannot build precision {precision!r}; "
                                  f"it supports {', '.join(self.precisions)}")


def installed_versions(distributions: tuple[str, ...] | list[str]) -> dict[str, str]:
    """distribution name -> installed version, for those installed."""
    versions = {}
    for name in distributions:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


_BUILDERS: LazyRegistry[BackendBuilder] = LazyRegistry("builder", BackendBuilder, {
    "onnxruntime": "edgekit.convert.builders.onnxruntime:OnnxRuntimeBuilder",
    "openvino": "edgekit.convert.builders.openvino:OpenVinoBuilder",
    "tensorrt": "edgekit.convert.builders.tensorrt:TensorRtBuilder",
    "ncnn": "edgekit.convert.builders.ncnn:NcnnBuilder",
}, error=ConversionError)


#: ``register_builder(backend, "package.module:BuilderClass")``: add a backend's builder, imported when first used.
#: The public registration point for a backend outside edgekit (with ``edgekit.runtime.backends.register_runner``
#: for its Runner, and a target profile TOML naming ``backend``). A built-in backend cannot be replaced.
register_builder = _BUILDERS.register
#: ``unregister_builder(backend)``: remove a builder added with :func:`register_builder` (built-in builders stay).
unregister_builder = _BUILDERS.unregister
builder_names = _BUILDERS.names


def get_builder_class(backend: str) -> type[BackendBuilder]:
    """The builder class for ``backend`` (imports its module: a converter library missing raises ImportError)."""
    builder = _BUILDERS.load(backend)
    if builder.backend != backend:
        raise ConversionError(f"{builder.__module__}.{builder.__name__} builds backend {builder.backend!r}, "
                              f"registered for {backend!r}")
    return builder


def get_builder(backend: str) -> BackendBuilder:
    return get_builder_class(backend)()
