"""Re-score a fixture checkpoint on the current synthetic validation split and record the result in it.

`validate`'s protocol (PyTorch reference detector, score 0.001, NMS IoU 0.6, 100 detections per image,
pycocotools) on `tools/synth.py --split val --seed 0`. Use it when the generator or the evaluation
changed after a checkpoint was trained: the recorded mAP must be what a fresh evaluation gives.

    python tools/rescore_fixture.py edgekit/zoo/yolov8.pt [--half]

``--half`` first rounds the weights to float16 and stores them so (half the file size: the zoo's
budget), then scores the rounded model: the recorded mAP is the stored model's.
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--half", action="store_true", help="store float16 weights (scored after rounding)")
    args = parser.parse_args()

    from edgekit.models.loading import load_checkpoint, round_weights_to_half, save_checkpoint
    from edgekit.reference.detector import ReferenceDetector
    from edgekit.validate import synth
    from edgekit.validate.coco_eval import evaluate_detections
    from edgekit.validate.datasets import load_dataset
    from edgekit.validate.run import map_postprocess, run_detector

    with tempfile.TemporaryDirectory() as tmp:
        dataset = load_dataset(synth.generate(Path(tmp) / "val", "val", 0, progress=False))
        for path in args.checkpoints:
            model = load_checkpoint(path)
            if args.half:
                round_weights_to_half(model)
            run = run_detector(ReferenceDetector(model, model.spec, map_postprocess(model.spec)), dataset, path.stem)
            result = evaluate_detections(dataset, run.detections)
            metrics = dict(model.metrics)
            previous = metrics.get("map_50_95")
            metrics.update(map_50_95=result.map_50_95, map_50=result.map_50, per_class_ap=result.per_class_ap,
                           split="val", val_seed=0, num_val_images=len(dataset.items),
                           scored_by="python tools/rescore_fixture.py (validate protocol)")
            previous_half = metrics.get("weights") == "float16"
            metrics["weights"] = "float16" if (args.half or previous_half) else "float32"
            save_checkpoint(model, path, metrics, half_weights=metrics["weights"] == "float16")
            print(f"{path}: mAP@.5:.95 {result.map_50_95:.4f} (was {previous}), mAP@.5 {result.map_50:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
