"""How many ground-truth boxes of a dataset can an SSD prior layout match at IoU >= 0.5?

SSD's matcher makes a prior positive only when it overlaps a box with IoU >= 0.5 (plus each box's
single best prior); a box that no prior reaches at 0.5 trains on one poorly placed prior. This
prints, for several input sizes and prior-scale sets, the fraction of boxes with at least one prior
at IoU >= 0.5 ("coverage", YOLOv5's "best possible recall" for anchors) and the mean number of
such priors per box.

    python benchmarks/ssd_prior_coverage.py --data /tmp/edgekit-synth/train-seed0 [--max-boxes 8000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgekit.models import ssd
from edgekit.runtime.decode import ssd_priors
from edgekit.runtime.nms import box_iou
from edgekit.validate.datasets import load_dataset

SCALE_SETS = ((0.1, 0.25, 0.45, 0.7, 0.95), (0.05, 0.15, 0.3, 0.5, 0.75))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="COCO or YOLO layout dataset")
    parser.add_argument("--sizes", type=int, nargs="+", default=[160, 224, 256, 320])
    parser.add_argument("--max-boxes", type=int, default=8000)
    args = parser.parse_args()
    dataset = load_dataset(args.data)
    normalised = []
    for item in dataset.items:
        if len(item.boxes):
            side = np.array([item.width, item.height, item.width, item.height], np.float32)
            normalised.append(item.boxes / side)
    boxes = np.concatenate(normalised)[:args.max_boxes]
    print(f"{len(boxes)} boxes from {args.data}")
    print("| input | prior scales | priors | coverage (IoU >= 0.5) | priors >= 0.5 per box |")
    print("|---:|---|---:|---:|---:|")
    for size in args.sizes:
        for scales in SCALE_SETS:
            params = {**ssd.prior_params((size, size)),
                      "min_sizes": [round(s * size, 2) for s in scales[:-1]],
                      "max_sizes": [round(s * size, 2) for s in scales[1:]]}
            priors = ssd_priors(params, (size, size))  # cx, cy, w, h, normalised
            corners = np.concatenate([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], 1)
            iou = box_iou(boxes, corners)  # [boxes, priors]
            print(f"| {size} | {scales} | {len(priors)} | {(iou.max(1) >= 0.5).mean():.3f} | "
                  f"{(iou >= 0.5).sum(1).mean():.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
