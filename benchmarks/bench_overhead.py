"""Detector pre+post-processing overhead vs the raw backend call, measured in one run.

A YOLOv8n-size model (width 0.25, depth 0.33, DFL head, 80 classes) exported at 640x640 is run
(a) as a raw ``onnxruntime.InferenceSession.run`` on an already preprocessed tensor and
(b) through ``Detector.detect`` on a 1280x720 image, which adds letterbox + normalisation,
DFL decoding and NMS. Reported: medians per stage and (pre + post) / raw as a ratio.

    python benchmarks/bench_overhead.py [--runs 50] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--imgsz", type=int, default=640)
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from edgekit.convert.chain import export_artifact
    from edgekit.models import ModelConfig, build_model
    from edgekit.runtime.detector import Detector
    from edgekit.runtime.preprocess import preprocess

    torch.manual_seed(0)
    names = [f"class{i}" for i in range(80)]
    model = build_model(ModelConfig("yolov8", 80, (args.imgsz, args.imgsz), 0.25, 0.33), names)
    # A plausible image: smooth gradients + blocks, so letterbox does real interpolation work.
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(120, 40, (720, 1280, 3)), 0, 255).astype(np.uint8)

    with tempfile.TemporaryDirectory() as tmp:
        export_artifact(model, Path(tmp) / "art")
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(Path(tmp) / "art" / "model.onnx"), options, providers=["CPUExecutionProvider"])
        detector = Detector.load(Path(tmp) / "art", threads=args.threads)
        tensor, _ = preprocess([image], detector.spec)
        output_names = [o.name for o in session.get_outputs()]

        raw, pre, infer, post, total = [], [], [], [], []
        for run in range(args.runs + 5):
            # interleave the two measurements so drift in machine load hits both alike
            t0 = time.perf_counter()
            session.run(output_names, {"images": tensor})
            t1 = time.perf_counter()
            detector.times.reset()
            detector.detect(image)
            t2 = time.perf_counter()
            if run >= 5:  # warm-up
                raw.append(t1 - t0)
                p, i, q = detector.times.per_call[0]
                pre.append(p)
                infer.append(i)
                post.append(q)
                total.append(t2 - t1)
        med = {k: statistics.median(v) * 1000 for k, v in
               {"raw": raw, "pre": pre, "infer": infer, "post": post, "total": total}.items()}
        detections = detector.detect(image)

    print(f"command: python benchmarks/bench_overhead.py --runs {args.runs} --threads {args.threads} --imgsz {args.imgsz}")
    print(f"model: yolov8 w0.25 d0.33, 80 classes, {args.imgsz}x{args.imgsz}; image 1280x720; "
          f"{len(detections)} detections after NMS (random weights)")
    print()
    print("| stage | median ms |")
    print("|---|---|")
    for key, label in [("raw", "raw session.run"), ("pre", "Detector preprocess"), ("infer", "Detector inference"),
                       ("post", "Detector decode + NMS"), ("total", "Detector end to end")]:
        print(f"| {label} | {med[key]:.2f} |")
    print()
    print(f"(pre + post) / raw = {(med['pre'] + med['post']) / med['raw']:.3f}   "
          f"end-to-end / raw = {med['total'] / med['raw']:.3f}")


if __name__ == "__main__":
    main()
