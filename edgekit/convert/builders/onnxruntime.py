"""ONNX Runtime runs the exported ONNX file as is (fp32); fp16 converts the weights and compute."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from typing import Any

from edgekit.convert.builders import BackendBuilder, BuildSource, FileSink
from edgekit.runtime.artifact import ModelEntry


class OnnxRuntimeBuilder(BackendBuilder):
    backend = "onnxruntime"
    precisions = ("fp32",)

    def build(self, source: BuildSource, precision: str, sink: FileSink, options: Mapping[str, Any]) -> ModelEntry:
        self.check_precision(precision)
        target = sink("model.onnx")
        if target.resolve() != source.onnx_path.resolve():
            shutil.copyfile(source.onnx_path, target)
        return ModelEntry(self.backend, precision, "model.onnx")
