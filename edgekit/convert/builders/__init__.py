"""Backend builders: turn the exported (and pass-optimised) ONNX file into a backend's model files.

One module per backend, one line in ``_BUILDERS``; nothing else in edgekit branches on backend
names. A builder writes its files through the artifact writer (so a failed build leaves nothing
behind) and returns the manifest entries the runtime's Runner for that backend will open.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from edgekit.errors import ConversionError
from edgekit.runtime.artifact import ModelEntry
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

    def require_calibration(self, backend: str) -> Any:
        if self.calibration is None:
            raise ConversionError(f"{backend}: precision int8 needs a calibration result (convert calibrates first)")
        return self.calibration


#: where to write a file inside the artifact being built: relative name -> path to write
FileSink = Callable[[str], Path]


class BackendBuilder(ABC):
    backend: ClassVar[str] = ""
    #: precisions this builder can produce (e.g. ("fp32", "fp16", "bf16"))
    precisions: ClassVar[tuple[str, ...]] = ()
    #: the Q/DQ placement (``quant.qdq.PLACEMENTS``) that reproduces this backend's int8 arithmetic in ONNX
    #: Runtime: what ``--drift-budget`` ranks layers and judges drift with, so the layers kept in float are
    #: the ones that hurt *this* backend (ncnn's symmetric int8 inputs lose a bit on one-sided activations)
    int8_placement: ClassVar[str] = "onnxruntime"

    @abstractmethod
    def build(self, source: BuildSource, precision: str, sink: FileSink, options: Mapping[str, Any]) -> ModelEntry:
        """Write the backend's files for ``precision`` via ``sink`` and return the manifest entry."""

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise ConversionError(f"backend '{self.backend}' cannot build precision {precision!r}; "
                                  f"it supports {', '.join(self.precisions)}")


_BUILDERS: dict[str, str] = {
    "onnxruntime": "edgekit.convert.builders.onnxruntime:OnnxRuntimeBuilder",
    "openvino": "edgekit.convert.builders.openvino:OpenVinoBuilder",
    "tensorrt": "edgekit.convert.builders.tensorrt:TensorRtBuilder",
    "ncnn": "edgekit.convert.builders.ncnn:NcnnBuilder",
}


def builder_names() -> list[str]:
    return list(_BUILDERS)


def get_builder(backend: str) -> BackendBuilder:
    try:
        module_name, _, class_name = _BUILDERS[backend].partition(":")
    except KeyError:
        raise ConversionError(f"no builder for backend {backend!r}; known: {', '.join(_BUILDERS)}") from None
    return getattr(importlib.import_module(module_name), class_name)()
