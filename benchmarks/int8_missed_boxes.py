"""Which fp32 boxes an int8 model misses, and why: lost score or moved box (issue 12).

For every photo, each box of the artifact's ONNX Runtime fp32 model (deployment threshold) that no box of the
int8 model matches (same class, IoU >= 0.5 — validate's agreement) is printed with its fp32 score and the best
IoU an int8 box of its class reaches: a best IoU just under 0.5 is a box that moved, 0.00 a box that is gone
(usually a score that fell under the threshold). Both models run with the artifact's deployment
post-processing (its NMS IoU); ``validate`` counts its agreement on the mAP protocol's detections (NMS at IoU 0.6)
cut at the same score threshold, so its box counts differ from these.

    python benchmarks/int8_missed_boxes.py ARTIFACT BACKEND [--precision int8] PHOTO [PHOTO ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from edgekit.runtime.detector import Detector
from edgekit.runtime.nms import box_iou


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("backend")
    parser.add_argument("photos", type=Path, nargs="+")
    parser.add_argument("--precision", default="int8")
    args = parser.parse_args()
    missed = total = 0
    with Detector.load(args.artifact, "onnxruntime", "fp32") as reference, \
            Detector.load(args.artifact, args.backend, args.precision) as candidate:
        for photo in args.photos:
            want, got = reference.detect(photo), candidate.detect(photo)
            total += len(want.scores)
            ious = box_iou(want.boxes, got.boxes) if len(got.scores) else np.zeros((len(want.scores), 0))
            for index in range(len(want.scores)):
                same_class = got.labels == want.labels[index]
                best = float(ious[index][same_class].max()) if same_class.any() else 0.0
                if best < 0.5:
                    missed += 1
                    print(f"{photo.name}: fp32 box class {want.labels[index]} score {want.scores[index]:.3f} "
                          f"missed; best int8 IoU of its class {best:.2f}")
    print(f"{missed} of {total} fp32 boxes have no int8 box of their class at IoU >= 0.5")


if __name__ == "__main__":
    main()
