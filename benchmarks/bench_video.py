"""End-to-end frames/s on a 720p video vs the raw backend throughput (issue 17), one interleaved run.

1. writes a 1280x720 MPEG-4 video (OpenCV, ``mp4v``) from real photos (../shared/models/fastestdet/images, else the
   bundled zoo scenes), each frame shifted so consecutive frames differ;
2. converts the real Ultralytics yolov8n (coco8 fine-tune, ../shared/models/ultralytics/yolov8n-coco8.pt) for
   intel-cpu (OpenVINO + the ONNX Runtime model) and raspberry-pi-5 (NCNN), fp32, at the checkpoint's own size
   (or reuses ``--artifacts``);
3. per backend, ``edgekit.bench.bench_throughput``: ``Detector.stream(video)`` in throughput mode (decode,
   preprocess, inference, postprocess pipelined; results in frame order) vs ``Runner.infer`` alone on a
   preprocessed tensor from as many threads as the stream has requests in flight, rounds interleaved;
4. Ultralytics ``predict(source=video, stream=True)`` against edgekit on the same model file: the upstream's own
   ONNX export of that checkpoint (``yolov8n-coco8.onnx``, 320 px; Ultralytics cannot post-process edgekit's raw
   head outputs), which edgekit converts for onnxruntime-cpu as a third-party ONNX and streams in throughput mode;
   only with ``--ultralytics-python PY`` (an interpreter of a separate venv that has ultralytics): edgekit never
   imports it. Without one the comparison is skipped with a note.

    python benchmarks/bench_video.py [--frames 120] [--rounds 3] [--threads 0] [--imgsz N] [--artifacts DIR ...]
                                     [--ultralytics-python /tmp/ultra-venv/bin/python]

``--imgsz``: convert the checkpoint at N px instead of its own 320 (the share of a frame's CPU time that decode and
preprocessing take shrinks as the model grows).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CHECKPOINT = SHARED / "models" / "ultralytics" / "yolov8n-coco8.pt"
UPSTREAM_ONNX = SHARED / "models" / "ultralytics" / "yolov8n-coco8.onnx"

# run in the other venv: Ultralytics' own streaming predict on the video, frames/s over the whole video
_ULTRALYTICS_SCRIPT = """
import sys, time, json
from ultralytics import YOLO
model_path, video, imgsz = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = YOLO(model_path, task="detect")
for _ in model.predict(source=video, stream=True, imgsz=imgsz, verbose=False, max_det=300):
    break  # warm-up: the first frame loads and compiles the model
t0, n = time.perf_counter(), 0
for _ in model.predict(source=video, stream=True, imgsz=imgsz, verbose=False, max_det=300):
    n += 1
print(json.dumps({"frames": n, "fps": n / (time.perf_counter() - t0)}))
"""


def photos() -> list[Path]:
    for folder in (SHARED / "models" / "fastestdet" / "images", REPO / "edgekit" / "zoo" / "images"):
        found = sorted(folder.glob("*.jpg"))
        if found:
            return found
    raise SystemExit("no photos found")


def convert_artifacts(folder: Path, imgsz: int | None) -> list[Path]:
    from edgekit.cli import main as cli

    out = []
    size = ["--imgsz", str(imgsz)] if imgsz else []
    for target in ("intel-cpu", "raspberry-pi-5"):
        artifact = folder / f"yolov8n_{target}"
        code = cli(["convert", str(CHECKPOINT), "--target", target, "--precision", "fp32", *size, "-o", str(artifact)])
        if code != 0:
            raise SystemExit(f"conversion for {target} failed")
        out.append(artifact)
    return out


def ultralytics_fps(python: str, model: Path, video: Path, imgsz: int) -> float | None:
    result = subprocess.run([python, "-c", _ULTRALYTICS_SCRIPT, str(model), str(video), str(imgsz)],
                            capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        print(f"ultralytics run failed: {result.stderr.strip().splitlines()[-1:]}")
        return None
    return float(json.loads(result.stdout.strip().splitlines()[-1])["fps"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="backend threads (0 = backend default)")
    parser.add_argument("--imgsz", type=int, default=None, help="convert at this size (default: the checkpoint's)")
    parser.add_argument("--artifacts", nargs="*", type=Path, default=None)
    parser.add_argument("--ultralytics-python", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from edgekit.bench import bench_throughput, format_throughput, write_test_video
    from edgekit.runtime.artifact import read_manifest

    with tempfile.TemporaryDirectory(prefix="bench_video-") as tmp:
        video = write_test_video(Path(tmp) / "video_720p.mp4", photos(), args.frames)
        artifacts = args.artifacts or convert_artifacts(Path(tmp), args.imgsz)
        print(f"video: {args.frames} frames 1280x720 mp4v from {len(photos())} photos; rounds {args.rounds}; "
              f"threads {args.threads or 'default'}; cpus {os.cpu_count()}")
        print(f"load before: {os.getloadavg()}")
        results = []
        for artifact in artifacts:
            results += bench_throughput(artifact, video, rounds=args.rounds, threads=args.threads)
        print(format_throughput(results))
        print(f"load after: {os.getloadavg()}")
        comparison = []
        if args.ultralytics_python:
            from edgekit.cli import main as cli
            from edgekit.runtime.detector import Detector

            upstream = Path(tmp) / "upstream_onnx"
            if cli(["convert", str(UPSTREAM_ONNX), "--target", "onnxruntime-cpu", "-o", str(upstream)]) != 0:
                raise SystemExit(f"edgekit convert {UPSTREAM_ONNX} failed")
            imgsz = read_manifest(upstream).spec.input_size[0]
            for _ in range(args.rounds):  # interleaved: theirs, then ours, each round
                theirs = ultralytics_fps(args.ultralytics_python, UPSTREAM_ONNX, video, imgsz)
                with Detector.load(upstream, backend="onnxruntime", mode="throughput", threads=args.threads) as d:
                    next(iter(d.stream(video)))  # warm-up, as the Ultralytics script does
                    t0 = time.perf_counter()
                    ours = sum(1 for _ in d.stream(video)) / (time.perf_counter() - t0)
                comparison.append((ours, theirs))
            print(f"Same model file for both: {UPSTREAM_ONNX.name} ({imgsz} px), ONNX Runtime CPU\n")
            print("| round | edgekit frames/s (throughput mode) | Ultralytics predict(stream=True) frames/s | ratio |\n"
                  "|---|---|---|---|")
            for i, (ours, theirs) in enumerate(comparison):
                print(f"| {i} | {ours:.1f} | {theirs if theirs is None else f'{theirs:.1f}'} | "
                      f"{'n/a' if not theirs else f'{ours / theirs:.2f}'} |")
        else:
            print("Ultralytics comparison skipped: pass --ultralytics-python with the interpreter of a separate venv "
                  "that has ultralytics (edgekit never imports it)")
        if args.json:
            from dataclasses import asdict

            args.json.write_text(json.dumps({"results": [{**asdict(r), "ratio": r.ratio} for r in results],
                                             "ultralytics": comparison}, indent=1) + "\n")


if __name__ == "__main__":
    main()
