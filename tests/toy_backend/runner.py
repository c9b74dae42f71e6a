"""The toy backend's Runner: runs ``toy/model.toy`` (an ONNX graph under another name) with ONNX Runtime.

Registered with ``edgekit.runtime.backends.register_runner("toy", "tests.toy_backend.runner:ToyRunner")``; its
manifest options (written by ``tests.toy_backend.builder``): ``graph_optimization`` (bool).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgekit.errors import ModelFileError
from edgekit.runtime.backends.base import Runner, TensorSpec


class ToyRunner(Runner):
    name = "toy"
    required_modules = ("onnxruntime",)
    pip_extra = "onnxruntime"

    def __init__(self, model_path: str | Path, threads: int = 0, graph_optimization: bool = True) -> None:
        super().__init__(model_path)
        self.threads = int(threads)
        self.graph_optimization = bool(graph_optimization)
        self._session = None

    @classmethod
    def from_artifact(cls, model_path: Path, options: Mapping[str, object], threads: int = 0) -> ToyRunner:
        return cls(model_path, threads=threads, graph_optimization=bool(options.get("graph_optimization", True)))

    def _activate(self) -> None:
        import onnxruntime as ort

        if not self.model_path.is_file():
            raise ModelFileError(f"{self.model_path}: toy model file not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        if not self.graph_optimization:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self._session = ort.InferenceSession(self.model_path.read_bytes(), sess_options=options,
                                             providers=["CPUExecutionProvider"])

    def input_specs(self) -> list[TensorSpec]:
        return [TensorSpec(i.name, np.dtype(np.float32), tuple(d if isinstance(d, int) else None for d in i.shape))
                for i in self._session.get_inputs()]

    def output_names(self) -> list[str]:
        return [o.name for o in self._session.get_outputs()]

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names(), self._session.run(None, feeds)))

    def _deactivate(self) -> None:
        self._session = None
