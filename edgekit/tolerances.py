"""Every tolerance edgekit judges a conversion with, in one place (DESIGN: three levels).

1. **Raw tensors** — a backend's (or a pass's) outputs against the reference on the same input, as
   the largest per-output ``max |ref - cand| / max |ref|`` (:func:`edgekit.validate.compare.tensor_error`).
   fp32 ≈ 1e-4, fp16 ≈ 1e-2. Only fp32 is a hard gate at build time; fp16/bf16 errors are recorded and
   judged on detections, and INT8 is never judged here (its raw tensors are expected to move).
2. **Detections** — boxes paired by :mod:`edgekit.validate.matching`: "the same box" is IoU >= 0.9
   with |Δscore| <= 0.03; agreement (precision / recall, missed / extra, class flips) is judged at
   IoU 0.5, the COCO mAP@.5 rule.
3. **Dataset mAP** — the INT8 drift budget, in mAP points, given by the user (``--drift-budget``);
   the INT8 build gate's agreement floor below is its label-free stand-in.

A level that differs from these says why, with the measurement, next to its value.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

# --- 1. raw tensors (relative to each output's max |reference|) ------------------------------------

#: per precision. bf16 (not in DESIGN) keeps 8 mantissa bits to fp16's 11: ~4e-3 per rounding (2^-8),
#: accumulated over the layers, so 5x fp16's level.
TENSOR: Mapping[str, float] = MappingProxyType({"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2})
FP32 = TENSOR["fp32"]

#: module passes (fold BN, RepVGG, Focus, SPP) are checked in float64, where a correct rewrite is exact
#: to ~1e-12 of the output: 1e-5 catches a wrong rewrite long before it reaches the fp32 level.
MODULE_PASS = 1e-5
#: ONNX passes are checked in float32 (ONNX Runtime has no float64 Conv): BN folding on a deep
#: third-party graph lands at ~5e-5 of the output from rounding alone, so they get the fp32 level.
ONNX_PASS = FP32

#: NCNN build: which pnnx blob is which spec output, accepted at this error. The check is there to
#: catch a wrong layout or operator (errors of order 1), not to judge fp16: fp16 *weights* alone cost
#: the real FastestDet 2.7e-2 (its raw box regression, |x| up to 7, moves by 0.19) while its detections
#: still match, above the fp16 level of 1e-2, so the blob check accepts 5e-2 for fp16.
NCNN_BLOB_MATCH: Mapping[str, float] = MappingProxyType({"fp32": FP32, "fp16": 5e-2})

# --- 2. detections ---------------------------------------------------------------------------------

#: agreement (precision, recall, class flips) pairs boxes at this IoU: the COCO mAP@.5 rule
AGREEMENT_IOU = 0.5
#: "the same box" (parity with an upstream's own predictions, issue 12's acceptance)
SAME_BOX_IOU = 0.9
SAME_BOX_SCORE = 0.03

#: ``validate --reference``: the checkpoint must be the model the artifact was built from. On the first
#: REFERENCE_CHECK_IMAGES dataset images its detections and the artifact's fp32 model's (deployment threshold) agree
#: at least this well in precision and recall, with a mean |Δscore| of matched boxes within SAME_BOX_SCORE. The same
#: network gives 1.000 and ~1e-5 (fp32 export error; an Ultralytics import reproduces the upstream ONNX within 1e-4);
#: another one scored Δ +30 mAP points (the same family, weights perturbed 15 %) or +0.98 (yolo11n against a
#: yolov8n export) with exit 0 before the check.
REFERENCE_SAME_MODEL_AGREEMENT = 0.9
REFERENCE_CHECK_IMAGES = 8

# --- 3. dataset / INT8 -----------------------------------------------------------------------------

#: min(precision, recall) at AGREEMENT_IOU of an int8 model's boxes vs its fp32 model's, below which the
#: build fails. Measured on 24 images, every layer int8 (no --drift-budget), ORT / OpenVINO / NCNN: the six
#: zoo fixtures at their own size (bundled set, target method mse) 0.87-0.97, lowest ssd ORT 0.870;
#: FastestDet 352 (natural photos) 0.711 / 0.796 / 0.773; the real yolov5n at 640 (minmax on the natural
#: photos, its 8 held out: 9 fp32 boxes) 0.462-0.545 from calibrations whose ranges agree to 1e-5 (the
#: observation engine's float rounding), a model that agrees 0.93-0.97 with its fp32 boxes on the 13 real photos.
#: Broken caches (every range x1e-3; every range ±1e30, past the cache check) 0.000-0.001 on every model and
#: backend. 0.25 leaves >= 0.2 below the worst good build, 0.25 above the broken (0.5 refused that yolov5n).
INT8_AGREEMENT_FLOOR = 0.25


def tensor_tolerance(precision: str) -> float | None:
    """The raw-tensor level for ``precision`` ("fp32", "fp16", "bf16"); None where none applies (int8)."""
    return TENSOR.get(precision)


__all__ = [
    "AGREEMENT_IOU",
    "FP32",
    "INT8_AGREEMENT_FLOOR",
    "MODULE_PASS",
    "NCNN_BLOB_MATCH",
    "ONNX_PASS",
    "SAME_BOX_IOU",
    "SAME_BOX_SCORE",
    "TENSOR",
    "tensor_tolerance",
]
