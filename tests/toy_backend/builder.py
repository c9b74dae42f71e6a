"""The toy backend's build step: the pass-optimised fp32 ONNX, written as ``toy/model.toy``.

Registered with ``edgekit.convert.builders.register_builder("toy", "tests.toy_backend.builder:ToyBuilder")``.
Everything edgekit needs to know about the backend is a class attribute here: nothing else in edgekit names it.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from typing import Any

from edgekit.convert.builders import BackendBuilder, BuildSource, FileSink, ProfileOption
from edgekit.quant.placement import SYMMETRIC_INT8
from edgekit.runtime.artifact import ModelEntry


class ToyBuilder(BackendBuilder):
    backend = "toy"
    precisions = ("fp32",)
    qdq_placement = SYMMETRIC_INT8
    tools = ("onnxruntime",)
    builds_on_device = False
    profile_options = {
        "graph_optimization": ProfileOption(bool, "let ONNX Runtime rewrite the graph (false: run it as written)"),
    }

    def build(self, source: BuildSource, precision: str, sink: FileSink, options: Mapping[str, Any]) -> ModelEntry:
        self.check_precision(precision)
        shutil.copyfile(source.onnx_path, sink("toy/model.toy"))
        return ModelEntry(self.backend, precision, "toy/model.toy",
                          {"graph_optimization": bool(options.get("graph_optimization", True))},
                          build={"batch_range": list(source.batch_range)})
