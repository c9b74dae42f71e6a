"""Whether the ONNX Runtime int8 graph may requantise the head convs' outputs (issue 15).

ONNX Runtime runs a Q/DQ graph in integer kernels only where every input and output of an op is quantised. The
head convs' outputs are the raw tensors the decoder reads (class logits, box offsets or distributions); leaving them
float keeps the finest numbers where they matter, but each such conv then runs as a float Conv after a
DequantizeLinear, and the Concat / Reshape / Sigmoid after it in float: on the yolov8 body that was 5-7 % of the
int8 latency, the whole gap to ``quantize_static`` (benchmarks/RESULTS.md, "INT8 speed").

Whether the 8-bit grid over those outputs costs anything depends on the model, and it is judged on what the
decoder makes of them, not on the raw tensors: most of a raw class-logit tensor is background logits far below
any threshold, whose rounding moves no detection (real yolov8n-coco8: raw outputs 1.36x the error, decoded scores
1.04x). With ``s`` the best-class score of every decoded candidate and ``b`` its xyxy box (``runtime.decode``),
per image, against the fp32 graph:

    score error = ||s_int8 - s_fp32|| / ||s_fp32||
    box error   = ||(b_int8 - b_fp32) * s_fp32|| / ||b_fp32 * s_fp32||     (boxes weighted by their fp32 score)
    quantise    iff  both, averaged over the images, are <= MAX_ERROR_RATIO x those of the float-head graph

on the first calibration images, through ONNX Runtime (whose integer kernels are the ones this choice is for).
The choice is recorded in the calibration result (``CalibrationResult.quantize_head_outputs``) so a reused cache
builds the same graph, and the int8 agreement gate still judges the built model.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from edgekit.quant.placement import FUSED_UINT8
from edgekit.quant.qdq import head_conv_outputs, write_qdq
from edgekit.quant.result import CalibrationResult
from edgekit.quant.sensitivity import ort_session, run_outputs
from edgekit.runtime.decode import Candidates, decode
from edgekit.spec import ModelSpec

#: the head outputs are requantised when neither the decoded score error nor the box error grows by more than this
#: factor (minmax on the natural photos, 8 images: real yolov8n-coco8 1.04x / 1.00x, yolo11n-coco8 1.02x / 1.03x,
#: FastestDet 1.00x / 1.00x)
MAX_ERROR_RATIO = 1.10


@dataclass(frozen=True)
class HeadOutputChoice:
    """The measurement behind ``CalibrationResult.quantize_head_outputs``."""

    quantize: bool
    reason: str
    error_float_heads: tuple[float, float] = (0.0, 0.0)   # (score error, box error) vs fp32, heads float
    error_int8_heads: tuple[float, float] = (0.0, 0.0)    # the same with the head outputs requantised
    images: int = 0

    def summary(self) -> dict:
        return {"quantize": self.quantize, "reason": self.reason, "images": self.images,
                "score_box_error_float_heads": [round(e, 6) for e in self.error_float_heads],
                "score_box_error_int8_heads": [round(e, 6) for e in self.error_int8_heads]}


def decoded_errors(reference: Sequence[Candidates], candidate: Sequence[Candidates]) -> tuple[float, float]:
    """(score error, box error) of ``candidate`` against ``reference``, per image and averaged (module docstring).

    Each element: the decoded candidates of one image (``runtime.decode``: boxes [1,N,4] xyxy, scores [1,N])."""
    score_errors, box_errors = [], []
    for ref, got in zip(reference, candidate):
        weight = ref.scores[..., None]
        score_errors.append(np.linalg.norm(got.scores - ref.scores) / max(float(np.linalg.norm(ref.scores)), 1e-12))
        box_errors.append(np.linalg.norm((got.boxes - ref.boxes) * weight)
                          / max(float(np.linalg.norm(ref.boxes * weight)), 1e-12))
    return float(np.mean(score_errors)), float(np.mean(box_errors))


def requantisable_heads(model: onnx.ModelProto) -> set[str]:
    """Head conv outputs that are not graph outputs themselves: those the choice changes (a head conv that writes
    a graph output directly, as classic YOLOv5's Detect does, stays float either way)."""
    graph_outputs = {output.name for output in model.graph.output}
    return head_conv_outputs(model) - graph_outputs


def choose_head_outputs(onnx_path: str | Path, spec: ModelSpec, result: CalibrationResult,
                        tensors: Callable[[], Sequence[np.ndarray]]) -> HeadOutputChoice:
    """Measure both graphs (module docstring) on ``tensors()`` (float32 [1,3,H,W] network inputs, called only when
    the model has head outputs to requantise) and choose.

    onnx_path: the fp32 graph ``result`` was computed on; spec: its ModelSpec (to decode the outputs).
    ``result.float_layers`` are kept as they are."""
    onnx_path = Path(onnx_path)
    if not requantisable_heads(onnx.load(str(onnx_path), load_external_data=False)):
        return HeadOutputChoice(False, "no head conv output between the int8 body and the graph outputs")
    inputs = tensors()
    if not inputs:
        return HeadOutputChoice(False, "no calibration image to measure on")

    def decoded(path: Path) -> list[Candidates]:
        return [decode(outputs, spec) for outputs in run_outputs(ort_session(path), inputs)]

    reference = decoded(onnx_path)
    errors = {}
    with tempfile.TemporaryDirectory(prefix="edgekit-head-outputs-") as tmp:
        for quantize in (False, True):
            path = Path(tmp) / f"heads_{quantize}.onnx"
            write_qdq(onnx_path, replace(result, quantize_head_outputs=quantize), FUSED_UINT8, path)
            errors[quantize] = decoded_errors(reference, decoded(path))
    ratios = [after / max(before, 1e-12) for before, after in zip(errors[False], errors[True])]
    quantize = max(ratios) <= MAX_ERROR_RATIO
    verdict = "requantised" if quantize else "kept float"
    reason = (f"head outputs {verdict}: decoded score / box error {ratios[0]:.2f}x / {ratios[1]:.2f}x the float "
              f"heads' when requantised (limit {MAX_ERROR_RATIO:.2f}x) on {len(inputs)} calibration images")
    return HeadOutputChoice(quantize, reason, errors[False], errors[True], len(inputs))
