"""Real yolov5n on NCNN INT8: agreement with its own NCNN FP32 model on the 13 real photos, per set of layers kept in float.

Why NCNN loses boxes where ONNX Runtime does not (benchmarks/RESULTS.md, "Real yolov5n INT8"): which layers, when
kept in float, bring NCNN's own int8 arithmetic to the issue-12 bar (precision and recall >= 0.95 at IoU 0.5)?

1. ``edgekit convert yolov5n.pt --target raspberry-pi-5 --imgsz 640`` at fp32 and at int8 (``--calib`` the
   bundled natural photos, ``--calib-method``, every layer int8), unless ``--work`` already holds them.
2. Sensitivity on NCNN's arithmetic (``quant.sensitivity.layer_sensitivity`` with the ncnn builder's Q/DQ
   placement: symmetric int8 inputs, per-channel weights) on ``--sensitivity-images`` calibration photos.
3. For every float set (none, the top k of that ranking, named layers), the int8 ncnn model is written by
   ``emit_ncnn_int8`` from the artifact's calibration.json and run by ``NcnnRunner`` through ``Detector``
   (deployment threshold); agreement with the fp32 ncnn model's detections is ``validate.agreement``.

    python benchmarks/ncnn_int8_float_sets.py [--work /tmp/y5-ncnn] [--top 0 1 2 3 4 6 8] [--threads 1]
        [--sets "/model.0/conv/Conv,/model.2/cv1/conv/Conv"]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.quant.test_int8_yolov5n import CHECKPOINT, COCO8, FASTESTDET_IMAGES


def build(precision: str, method: str, out: Path) -> Path:
    from edgekit.cli import main as cli
    from edgekit.quant.calibration import default_calibration_dir

    if (out / "edgekit.json").is_file():
        return out
    command = ["convert", str(CHECKPOINT), "--target", "raspberry-pi-5", "--precision", precision, "--imgsz", "640",
               "-o", str(out)]
    if precision == "int8":
        command += ["--calib", str(default_calibration_dir() / "natural"), "--calib-method", method]
    print("$ edgekit", " ".join(command), file=sys.stderr, flush=True)
    if cli(command):
        raise SystemExit(f"edgekit convert failed for {precision}")
    return out


def photos() -> list[Path]:
    return [*sorted((COCO8 / "images").glob("*/*.jpg")), *sorted(FASTESTDET_IMAGES.glob("*.jpg"))]


def detect_all(param: Path, options: dict, spec, threads: int, int8: bool) -> dict:
    from edgekit.runtime.backends.ncnn import NcnnRunner
    from edgekit.runtime.detector import Detector

    runner = NcnnRunner.from_artifact(param, {**options, "use_int8": int8, "bin_file": param.with_suffix(".bin").name},
                                      threads=threads)
    with Detector(runner, spec) as detector:
        return {index: detector.detect(path) for index, path in enumerate(photos())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgekit-y5-ncnn-float-sets"))
    parser.add_argument("--method", default="minmax")
    parser.add_argument("--top", type=int, nargs="*", default=[0, 1, 2, 3, 4, 6, 8])
    parser.add_argument("--sets", nargs="*", default=[], help="comma-separated ONNX layer names kept in float")
    parser.add_argument("--sensitivity-images", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    from edgekit.quant.calibration import default_calibration_dir
    from edgekit.quant.ncnn_int8 import emit_ncnn_int8
    from edgekit.quant.result import CalibrationResult
    from edgekit.quant.sensitivity import layer_sensitivity
    from edgekit.runtime.artifact import read_manifest
    from edgekit.runtime.preprocess import load_image, preprocess
    from edgekit.validate.agreement import agreement

    args.work.mkdir(parents=True, exist_ok=True)
    fp32_art, int8_art = build("fp32", args.method, args.work / "fp32"), build("int8", args.method, args.work / "int8")
    manifest = read_manifest(fp32_art)
    entry = manifest.find("ncnn", "fp32")
    spec = manifest.spec
    result = CalibrationResult.load(int8_art / "calibration.json")
    onnx_path = int8_art / "model.onnx"
    print(f"load average {os.getloadavg()[0]:.1f}; calibration: {result.method}, {result.num_images} images, "
          f"{len(result.layers)} layers", flush=True)

    ranking_file = args.work / "sensitivity_ncnn.json"
    if ranking_file.is_file():
        ranking = json.loads(ranking_file.read_text())
    else:
        natural = sorted((default_calibration_dir() / "natural").iterdir())
        step = max(1, len(natural) // args.sensitivity_images)
        tensors = [preprocess([load_image(path)], spec)[0] for path in natural[::step][:args.sensitivity_images]]
        started = time.perf_counter()
        ranking = [[s.name, s.error] for s in layer_sensitivity(onnx_path, result, "tensorrt", tensors)]
        ranking_file.write_text(json.dumps(ranking, indent=1))
        print(f"sensitivity on ncnn's arithmetic: {time.perf_counter() - started:.0f} s", flush=True)
    print("most sensitive: " + ", ".join(f"{name} {error:.4f}" for name, error in ranking[:8]), flush=True)

    reference = detect_all(fp32_art / entry.file, entry.options, spec, args.threads, int8=False)
    float_sets = {f"top {k}": [name for name, _ in ranking[:k]] for k in args.top}
    float_sets.update({f"set {i + 1}": names.split(",") for i, names in enumerate(args.sets)})
    print("| float layers | kept in float | precision | recall | matched / fp32 boxes | int8 boxes |")
    print("|---|---|---:|---:|---:|---:|")
    for label, names in float_sets.items():
        partial = result.with_float_layers(dict.fromkeys(names, "float-set experiment"))
        param = args.work / f"int8_{label.replace(' ', '_')}.param"
        emit_ncnn_int8(fp32_art / entry.file, fp32_art / entry.options["bin_file"], onnx_path, partial,
                       param, param.with_suffix(".bin"))
        found = agreement(detect_all(param, entry.options, spec, args.threads, int8=True), reference)
        print(f"| {label} | {', '.join(names) or '—'} | {found.precision:.3f} | {found.recall:.3f} | "
              f"{found.num_matched} / {found.num_reference} | {found.num_candidate} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
