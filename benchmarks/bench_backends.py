"""Detector end-to-end vs the raw backend call, per backend, for a 640x640 YOLOv8n-size model.

Converts one model (yolov8, width 0.25, depth 0.33, 80 classes, random weights) for
onnxruntime-cpu, intel-cpu (OpenVINO fp32, f32 hint) and raspberry-pi-5 (NCNN fp32), then runs
`edgekit bench` on each artifact: all numbers of one backend come from the same interleaved run.

    python benchmarks/bench_backends.py [--runs 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import torch

    from edgekit.bench import bench_artifact, format_bench
    from edgekit.convert.chain import convert
    from edgekit.models import ModelConfig, build_model
    from edgekit.targets import load_target

    torch.manual_seed(0)
    model = build_model(ModelConfig("yolov8", 80, (640, 640), 0.25, 0.33), [f"c{i}" for i in range(80)]).eval()
    image = np.clip(np.random.default_rng(0).normal(120, 40, (720, 1280, 3)), 0, 255).astype(np.uint8)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for target, precision in [("onnxruntime-cpu", "fp32"), ("intel-cpu", "fp32"), ("raspberry-pi-5", "fp32")]:
            out = Path(tmp) / target
            convert(model, load_target(target), out, precision=precision, input_size=(640, 640))
            backend = load_target(target).backend
            results += bench_artifact(out, image, backends=[backend], runs=args.runs, threads=args.threads)
    print(f"command: python benchmarks/bench_backends.py --runs {args.runs} --threads {args.threads}   "
          f"load average at end: {os.getloadavg()[0]:.1f}")
    print(format_bench(results))
    base = next(r for r in results if r.name == "onnxruntime/fp32")
    for r in results:
        print(f"{r.name}: end-to-end {r.end_to_end.median_ms:.1f} ms = {r.overhead_ratio:.3f}x its raw call; "
              f"{r.end_to_end.median_ms / base.end_to_end.median_ms:.2f}x ONNX Runtime end to end")


if __name__ == "__main__":
    main()
