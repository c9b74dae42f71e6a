"""Which fp32 boxes an int8 model misses or adds on the 13 real photos, with both scores, and how far the scores of
the matched boxes moved (issue 12: the real yolov5n's agreement with its fp32 detections).

    python benchmarks/int8_mismatches.py ARTIFACT [--keep-float-each]

ARTIFACT: a folder with the fp32 ``model.onnx``, ONNX Runtime's ``model_int8.onnx`` and its ``calibration.json``
(``edgekit convert yolov5n.pt --target onnxruntime-cpu --precision int8 --calib edgekit/zoo/calibration/natural
--calib-method minmax -o ARTIFACT``). Matching is validate's (IoU 0.5, same class, the deployment threshold on both
sides). ``--keep-float-each``: the same judgement with each layer in turn kept float (ONNX Runtime's placement),
to see whether one layer carries the misses.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.int8_agreement_spread import photos  # noqa: E402
from edgekit.quant.placement import FUSED_UINT8  # noqa: E402
from edgekit.quant.qdq import write_qdq  # noqa: E402
from edgekit.quant.result import CalibrationResult  # noqa: E402
from edgekit.quant.sensitivity import AgreementJudge  # noqa: E402
from edgekit.runtime.artifact import spec_from_onnx  # noqa: E402
from edgekit.runtime.backends.onnxruntime import OnnxRuntimeRunner  # noqa: E402


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with [N, 4] xyxy boxes."""
    x1, y1 = np.maximum(box[:2], boxes[:, :2]).T
    x2, y2 = np.minimum(box[2:], boxes[:, 2:]).T
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / ((box[2] - box[0]) * (box[3] - box[1]) + areas - inter)


def mismatches(judge: AgreementJudge, names: list[str], candidate: dict, threshold: float) -> np.ndarray:
    """Print every fp32 box the candidate misses and every candidate box fp32 lacks; return the score changes of
    the matched fp32 boxes (candidate - fp32)."""
    deltas = []
    for image, reference in judge.reference.items():
        found = candidate[image]
        for tag, mine, theirs in (("missed (fp32 box)", reference, found), ("extra (int8 box)", found, reference)):
            for k in np.flatnonzero(mine.scores >= threshold):
                same = theirs.labels == mine.labels[k]
                best, other = 0.0, float("nan")
                if same.any():
                    overlaps = iou(mine.boxes[k], theirs.boxes[same])
                    j = int(np.argmax(overlaps))
                    best, other = float(overlaps[j]), float(theirs.scores[same][j])
                if best >= 0.5:
                    if tag.startswith("missed"):
                        deltas.append(other - float(mine.scores[k]))
                    if other >= threshold:
                        continue
                print(f"  {names[image]:22s} {tag:18s} class {int(mine.labels[k]):3d} score {mine.scores[k]:.3f}  "
                      f"nearest same-class box: IoU {best:.2f}, score {other:.3f}")
    return np.abs(np.array(deltas))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--keep-float-each", action="store_true")
    args = parser.parse_args()
    fp32 = args.artifact / "model.onnx"
    spec = spec_from_onnx(fp32)
    found = photos()
    judge = AgreementJudge(fp32, spec, found)
    threshold = spec.postprocess.conf_threshold
    scores = np.concatenate([d.scores[d.scores >= threshold] for d in judge.reference.values()])
    print(f"{len(scores)} fp32 boxes at the threshold {threshold}; within 0.02 of it: "
          f"{int((scores - threshold < 0.02).sum())}, within 0.05: {int((scores - threshold < 0.05).sum())}")
    candidate = judge.detect_with(OnnxRuntimeRunner(args.artifact / "model_int8.onnx"))
    result = judge.deployment_agreement(candidate)
    print(f"int8 (ONNX Runtime): precision {result.precision:.3f}, recall {result.recall:.3f}, "
          f"{result.num_matched}/{result.num_reference} matched, {result.num_candidate} int8 boxes")
    deltas = mismatches(judge, [p.name for p in found], candidate, threshold)
    print(f"matched boxes' |score change|: median {np.median(deltas):.4f}, p90 {np.percentile(deltas, 90):.4f}, "
          f"max {deltas.max():.4f}")
    if not args.keep_float_each:
        return
    calibration = CalibrationResult.load(args.artifact / "calibration.json")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "one_float.onnx"
        for layer in calibration.layers:
            write_qdq(fp32, calibration.with_float_layers({layer.name: "probe"}), FUSED_UINT8, path)
            agreed = judge.deployment_agreement(judge.detect_with(OnnxRuntimeRunner(path)))
            print(f"  {layer.name:40s} float: precision {agreed.precision:.3f} recall {agreed.recall:.3f} mean "
                  f"|score change| {agreed.mean_abs_score_delta:.4f}", flush=True)


if __name__ == "__main__":
    main()
