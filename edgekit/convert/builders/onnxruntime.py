"""ONNX Runtime runs the exported ONNX file as is (fp32), or its Q/DQ int8 version.

int8: the calibration result written as Q/DQ ONNX with the ``onnxruntime`` placement (uint8
activations, int8 per-channel weights, int32 bias, conv outputs requantised) so that ONNX Runtime
fuses every ``DQ -> Conv -> Q`` unit into a QLinearConv: integer arithmetic, not a float
simulation. This file is also the Q/DQ reference the other backends' int8 models are compared with.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from typing import Any

from edgekit.convert.builders import BackendBuilder, BuildSource, FileSink
from edgekit.quant.placement import FUSED_UINT8
from edgekit.runtime.artifact import ModelEntry

INT8_FILE = "model_int8.onnx"


class OnnxRuntimeBuilder(BackendBuilder):
    backend = "onnxruntime"
    precisions = ("fp32", "int8")
    qdq_placement = FUSED_UINT8
    tools = ("onnxruntime",)

    def build(self, source: BuildSource, precision: str, sink: FileSink, options: Mapping[str, Any]) -> ModelEntry:
        self.check_precision(precision)
        if precision == "int8":
            from edgekit.quant.qdq import write_qdq

            write_qdq(source.onnx_path, source.require_calibration(self.backend), self.qdq_placement, sink(INT8_FILE))
            return ModelEntry(self.backend, precision, INT8_FILE, build={"qdq_placement": self.qdq_placement.name})
        target = sink("model.onnx")
        if target.resolve() != source.onnx_path.resolve():
            shutil.copyfile(source.onnx_path, target)
        return ModelEntry(self.backend, precision, "model.onnx")
