"""COCO AP of fixture checkpoints broken down by object size and by class, on the synthetic val split.

COCO's own small/medium/large split (32² / 96² px) puts almost every synthetic object (6-90 px on a
160-px image) in "small", so this uses four bands of object area in pixels: tiny < 12², small 12²-24²,
mid 24²-48², large > 48². As in COCO, an object's area is its annotation's ``area`` (for the synthetic
set: its visible pixel coverage, which is smaller than its box for stars, rings and occluded objects).
Same post-processing as ``edgekit validate`` (``edgekit.validate.run.map_postprocess``), scored by
pycocotools.

    python benchmarks/ap_by_size.py edgekit/zoo/centernet.pt edgekit/zoo/yolov8.pt [--data DIR]

``--data`` defaults to a fresh ``tools/synth.py --split val --seed 0`` in a temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

AREA_BANDS = {"all": (0, 1e10), "tiny": (0, 12 ** 2), "small": (12 ** 2, 24 ** 2), "mid": (24 ** 2, 48 ** 2),
              "large": (48 ** 2, 1e10)}


def _mean_precision(precision: np.ndarray) -> float:
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--data", type=Path, default=None, help="COCO-layout synthetic split (default: val seed 0)")
    args = parser.parse_args()

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from edgekit.models.loading import load_checkpoint
    from edgekit.models.training import detect_images
    from edgekit.runtime.preprocess import load_image
    from edgekit.validate import synth
    from edgekit.validate.datasets import load_dataset
    from edgekit.validate.run import map_postprocess

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or synth.generate(Path(tmp) / "val", "val", seed=0, progress=False)
        dataset = load_dataset(data)
        images = [load_image(dataset.image_path(item)) for item in dataset.items]
        with contextlib.redirect_stdout(io.StringIO()):
            ground_truth = COCO(str(Path(data) / "annotations" / "instances.json"))
        image_ids = [info["id"] for info in ground_truth.dataset["images"]]
        class_names = [c["name"] for c in ground_truth.dataset["categories"]]
        bands = " | ".join(f"AP {b}" for b in AREA_BANDS if b != "all")
        print(f"| checkpoint | AP | AP50 | AP75 | {bands} | " + " | ".join(class_names) + " |")
        print("|---" * (4 + len(AREA_BANDS) - 1 + len(class_names)) + "|")
        for path in args.checkpoints:
            model = load_checkpoint(path).float().eval()
            detections = detect_images(model, images, map_postprocess(model.spec))
            results = [{"image_id": image_id, "category_id": int(label) + 1, "score": float(score),
                        "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
                       for image_id, d in zip(image_ids, detections)
                       for b, score, label in zip(d.boxes, d.scores, d.labels)]
            with contextlib.redirect_stdout(io.StringIO()):
                evaluation = COCOeval(ground_truth, ground_truth.loadRes(results), "bbox")
                evaluation.params.areaRng = [list(r) for r in AREA_BANDS.values()]
                evaluation.params.areaRngLbl = list(AREA_BANDS)
                evaluation.evaluate()
                evaluation.accumulate()
            precision = evaluation.eval["precision"]  # [IoU thresholds, recall, class, area band, max dets]
            overall = [_mean_precision(precision[:, :, :, 0, -1]), _mean_precision(precision[0, :, :, 0, -1]),
                       _mean_precision(precision[5, :, :, 0, -1])]
            by_band = [_mean_precision(precision[:, :, :, k, -1]) for k in range(1, len(AREA_BANDS))]
            by_class = [_mean_precision(precision[:, :, c, 0, -1]) for c in range(len(class_names))]
            print(f"| {path} | " + " | ".join(f"{v:.3f}" for v in overall + by_band + by_class) + " |", flush=True)


if __name__ == "__main__":
    main()
