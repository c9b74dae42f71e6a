"""Sensitivity ranking and partial quantisation to a drift budget.

Post-training INT8 loses most of its accuracy in a few layers (typically the first conv, whose
input is the raw image, and the head convs that produce box and class logits). To find them:

1. **Sensitivity**: quantise one layer at a time (every other layer float) and measure how far the
   raw outputs move from the fp32 graph on a few calibration images:
   ``error = mean over images and outputs of ||y_int8 - y_fp32||_2 / ||y_fp32||_2``.
   The ranking is the backend-neutral part; it runs on ONNX Runtime (Q/DQ graph).
2. **Partial quantisation**: starting from everything in int8, keep the ``k`` most sensitive layers
   in float for k = 0, 1, 2, 4, 8, … until the judged drift is within the budget (or the
   float share reaches its cap). The drift is judged by a ``DriftJudge``: mAP points lost against
   the fp32 graph on a labelled set (``MapJudge``), or, without labels, points of agreement
   mAP@0.5 lost against the fp32 graph's own detections (``AgreementJudge``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from edgekit.quant.qdq import QdqPlacement, write_qdq
from edgekit.quant.result import CalibrationResult
from edgekit.spec import ModelSpec

Progress = Callable[[str], None]


@dataclass(frozen=True)
class LayerSensitivity:
    name: str
    error: float  # mean relative L2 output error with only this layer in int8


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _run(session, tensors: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
    name = session.get_inputs()[0].name
    return [session.run(None, {name: t}) for t in tensors]


def output_error(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]) -> float:
    """Mean over images and outputs of ||candidate - reference|| / ||reference|| (L2)."""
    errors = [float(np.linalg.norm(c - r) / max(np.linalg.norm(r), 1e-12))
              for ref_outputs, cand_outputs in zip(reference, candidate) for r, c in zip(ref_outputs, cand_outputs)]
    return float(np.mean(errors))


def layer_sensitivity(onnx_path: str | Path, result: CalibrationResult, placement: QdqPlacement | str,
                      tensors: Sequence[np.ndarray], progress: Callable[[Iterable, str], Iterable] | None = None
                      ) -> list[LayerSensitivity]:
    """Each layer's output error when it alone is int8; most sensitive first.

    tensors: a few float32 [1,3,H,W] network inputs (e.g. 8 calibration images).
    """
    onnx_path = Path(onnx_path)
    reference = _run(_session(onnx_path), tensors)
    names = [layer.name for layer in result.layers]
    scores = []
    with tempfile.TemporaryDirectory(prefix="edgekit-sensitivity-") as tmp:
        path = Path(tmp) / "one_layer.onnx"
        iterator = progress(names, "sensitivity") if progress else names
        for name in iterator:
            alone = result.with_float_layers({other: "" for other in names if other != name})
            write_qdq(onnx_path, alone, placement, path)
            scores.append(LayerSensitivity(name, output_error(reference, _run(_session(path), tensors))))
    return sorted(scores, key=lambda s: -s.error)


class DriftJudge(Protocol):
    """Measures how many points a candidate ONNX graph lost against the fp32 graph."""

    description: str

    def drift(self, onnx_path: Path) -> float: ...


class MapJudge:
    """mAP@0.5:0.95 points lost on a labelled dataset (ONNX Runtime, validate's mAP protocol)."""

    def __init__(self, reference_onnx: Path, spec: ModelSpec, dataset) -> None:
        self.spec, self.dataset = spec, dataset
        self.description = f"mAP@0.5:0.95 points lost vs fp32 on {len(dataset.items)} labelled images ({dataset.root})"
        self.reference_map = self.score(reference_onnx)

    def score(self, onnx_path: Path) -> float:
        from edgekit.runtime.backends.onnxruntime import OnnxRuntimeRunner
        from edgekit.runtime.detector import Detector
        from edgekit.validate.coco_eval import evaluate_detections
        from edgekit.validate.run import map_postprocess, run_detector

        with Detector(OnnxRuntimeRunner(onnx_path), self.spec, map_postprocess(self.spec)) as detector:
            run = run_detector(detector, self.dataset, onnx_path.name)
        return evaluate_detections(self.dataset, run.detections).map_50_95

    def drift(self, onnx_path: Path) -> float:
        return (self.reference_map - self.score(onnx_path)) * 100.0


class AgreementJudge:
    """Without labels: agreement-mAP@0.5 points lost against the fp32 graph's own detections.

    The fp32 detections (at the spec's deployment threshold) are pseudo ground truth; the candidate,
    run with the mAP protocol's low threshold, is scored against them (``validate.agreement``):
    ``drift = 100 · (agreement_mAP50(fp32 vs itself) - agreement_mAP50(candidate vs fp32))``.
    mAP@0.5, not @0.5:0.95: against pseudo ground truth the high IoU thresholds measure sub-pixel box
    jitter (FastestDet int8: ~25 points @0.5:0.95 while 92 % of its boxes match at IoU 0.5).
    """

    def __init__(self, reference_onnx: Path, spec: ModelSpec, images: Sequence[Path]) -> None:
        self.spec, self.images = spec, list(images)
        self.description = f"agreement mAP@0.5 points lost vs fp32 detections on {len(self.images)} held-out images"
        self.reference = self._detect(reference_onnx)
        self.reference_score = self._score(self.reference)

    def _detect(self, onnx_path: Path):
        from edgekit.runtime.backends.onnxruntime import OnnxRuntimeRunner

        return self.detect_with(OnnxRuntimeRunner(onnx_path))

    def detect_with(self, runner) -> dict:
        """Detections of any backend's ``runner`` (closed afterwards) on the held-out images, mAP-protocol
        thresholds: {image index: Detections (xyxy, original-image pixels)}."""
        from edgekit.runtime.detector import Detector
        from edgekit.validate.run import map_postprocess

        with Detector(runner, self.spec, map_postprocess(self.spec)) as detector:
            return {index: detector.detect(path) for index, path in enumerate(self.images)}

    def deployment_agreement(self, detections):
        """``validate.agreement`` of ``detections`` (from ``detect_with``) with the fp32 detections, both cut at
        the spec's deployment threshold: precision / recall of boxes matched at IoU 0.5 (same class)."""
        from edgekit.validate.agreement import agreement
        from edgekit.validate.run import above

        threshold = self.spec.postprocess.conf_threshold
        return agreement(above(detections, threshold), above(self.reference, threshold))

    def _score(self, detections) -> float:
        from edgekit.validate.agreement import agreement
        from edgekit.validate.run import above

        pseudo_truth = above(self.reference, self.spec.postprocess.conf_threshold)
        return agreement(detections, pseudo_truth).map_50

    def drift(self, onnx_path: Path) -> float:
        return self.drift_of(self._detect(onnx_path))

    def drift_of(self, detections) -> float:
        """Agreement-mAP@0.5 points ``detections`` (from ``detect_with``) lost against the fp32 graph."""
        return (self.reference_score - self._score(detections)) * 100.0


@dataclass
class PartialQuantization:
    result: CalibrationResult          # with float_layers set
    drift: float                       # judged drift of the chosen configuration (points)
    budget: float
    met: bool
    judge: str
    steps: list[dict] = field(default_factory=list)      # {"float_layers": k, "drift": points}
    sensitivity: list[LayerSensitivity] = field(default_factory=list)

    def summary(self) -> dict:
        return {"budget": self.budget, "met": self.met, "drift": round(self.drift, 4), "judge": self.judge,
                "steps": self.steps, "float_layers": dict(self.result.float_layers),
                "sensitivity": [{"layer": s.name, "error": s.error} for s in self.sensitivity]}


def float_counts(num_layers: int, max_float_fraction: float) -> list[int]:
    """0, 1, 2, 4, 8, … up to the cap ``floor(num_layers * max_float_fraction)`` (the cap itself included)."""
    cap = max(0, int(num_layers * max_float_fraction))
    counts, k = [0], 1
    while k < cap:
        counts.append(k)
        k *= 2
    if cap > 0 and counts[-1] != cap:
        counts.append(cap)
    return counts


def partial_quantize(onnx_path: str | Path, result: CalibrationResult, placement: QdqPlacement | str,
                     judge: DriftJudge, budget: float, sensitivity: Sequence[LayerSensitivity],
                     max_float_fraction: float = 0.25, progress: Progress = lambda line: None) -> PartialQuantization:
    """Keep the most sensitive layers in float until ``judge`` measures drift <= ``budget`` points.

    Returns the first configuration within budget; if none is, the one with the least drift
    (``met`` False) — the caller reports it rather than shipping silently.
    """
    onnx_path = Path(onnx_path)
    ranked = list(sensitivity)
    total = len(ranked)
    steps = []
    best: tuple[float, CalibrationResult] | None = None
    with tempfile.TemporaryDirectory(prefix="edgekit-partial-") as tmp:
        path = Path(tmp) / "candidate.onnx"
        for k in float_counts(total, max_float_fraction):
            float_layers = {s.name: (f"sensitivity rank {rank + 1} of {total} (output error {s.error:.3g} when "
                                     f"quantised alone); kept in float to meet the {budget:g}-point drift budget")
                            for rank, s in enumerate(ranked[:k])}
            candidate = result.with_float_layers(float_layers)
            write_qdq(onnx_path, candidate, placement, path)
            drift = judge.drift(path)
            steps.append({"float_layers": k, "drift": round(drift, 4)})
            progress(f"int8    partial quantisation: {k} of {total} layers in float -> drift {drift:.2f} points "
                     f"(budget {budget:g})")
            if best is None or drift < best[0]:
                best = (drift, candidate)
            if drift <= budget:
                return PartialQuantization(candidate, drift, budget, True, judge.description, steps, ranked)
    assert best is not None  # float_counts always has k = 0
    return PartialQuantization(best[1], best[0], budget, False, judge.description, steps, ranked)
