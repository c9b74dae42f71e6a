"""ONNX Runtime runner: the portable baseline backend (CPU execution provider here)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekit.errors import ModelFileError, first_line
from edgekit.runtime.backends.base import Runner, TensorSpec

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

# ONNX tensor element type strings as ONNX Runtime reports them -> numpy dtypes
_ORT_DTYPES: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
}


class OnnxRuntimeRunner(Runner):
    """Runs an ``.onnx`` file with onnxruntime.

    threads: intra-op threads (0 = onnxruntime's default, one per core).
    graph_optimization: False disables every onnxruntime graph rewrite — the plain oracle
    used to check graph passes.

    Threads: one runner may serve many threads; ``InferenceSession.run`` is thread-safe (each call
    has its own inputs, outputs and intermediate buffers), so calls run concurrently without a lock.
    """

    name = "onnxruntime"
    required_modules = ("onnxruntime",)
    pip_extra = "onnxruntime"

    def __init__(self, model_path: str | Path, threads: int = 0, graph_optimization: bool = True,
                 providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> None:
        super().__init__(model_path)
        self.threads = int(threads)
        self.graph_optimization = graph_optimization
        self.providers = providers
        self._session: InferenceSession | None = None

    def _activate(self) -> None:
        import onnxruntime as ort

        if not self.model_path.is_file():
            raise ModelFileError(f"{self.model_path}: ONNX model file not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: the warnings are about our own (valid) graphs
        if not self.graph_optimization:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            self._session = ort.InferenceSession(str(self.model_path), sess_options=options, providers=list(self.providers))
        except Exception as exc:  # onnxruntime raises its own exception types with multi-line text
            raise ModelFileError(f"{self.model_path}: onnxruntime cannot load this model ({first_line(exc)})") from None

    def _deactivate(self) -> None:
        self._session = None

    def input_specs(self) -> list[TensorSpec]:
        self.activate()
        return [TensorSpec(i.name, _ORT_DTYPES.get(i.type, np.dtype(np.float32)),
                           tuple(d if isinstance(d, int) else None for d in i.shape))
                for i in self._live(self._session).get_inputs()]

    def output_names(self) -> list[str]:
        self.activate()
        return [o.name for o in self._live(self._session).get_outputs()]

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self.output_names()
        outputs = self._live(self._session).run(names, feeds)
        return dict(zip(names, outputs))
