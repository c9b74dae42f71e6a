"""NCNN INT8 vs NCNN FP32 latency, 1 and 2 threads, one interleaved run (issue 15).

Converts a checkpoint for raspberry-pi-5 at ``--imgsz`` twice with ``edgekit convert`` (fp32, and int8
calibrated with ``--calib-method``), then times both through ``NcnnRunner`` (what ``Detector`` runs) for every
thread count in one interleaved loop (``benchmarks.timing``: a random order and a settle pause per call):
medians, p90s, int8 / fp32 per thread count. It also
says what the int8 model holds for ncnn to execute: layer types, int8 convolutions, requantised ones
(``int8_scale_term > 100``: int8 output handed to the next int8 convolution) and the separate activation
layers in between, and whether ncnn's own ``ncnn2table`` / ``ncnn2int8`` tools are installed.

    python benchmarks/bench_ncnn_int8.py [--checkpoint edgekit/zoo/yolov8.pt] [--imgsz 640] [--threads 1 2]
        [--runs 20] [--work DIR]      (DIR keeps the two artifacts; an existing one is reused)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import interleaved


def load() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def build(checkpoint: Path, imgsz: int, precision: str, method: str, out: Path) -> Path:
    from edgekit.cli import main as cli

    if (out / "edgekit.json").is_file():
        return out
    command = ["convert", str(checkpoint), "--target", "raspberry-pi-5", "--precision", precision,
               "--imgsz", str(imgsz), "-o", str(out)]
    if precision == "int8":
        command += ["--calib-method", method]
    print("$ edgekit", " ".join(command), file=sys.stderr, flush=True)
    if cli(command):
        raise SystemExit(f"edgekit convert failed for {precision}")
    return out


def what_runs(param: Path) -> tuple[Counter, int, int]:
    """Layer types of the .param, int8 convolutions and requantised ones (``int8_scale_term`` 8=…)."""
    from edgekit.runtime.ncnn_format import INT8_SCALE_TERM_ID, parse_param

    _, layers = parse_param(param)
    terms = [layer.get_int(INT8_SCALE_TERM_ID, 0) for layer in layers]
    return Counter(layer.type for layer in layers), sum(term > 0 for term in terms), sum(term > 100 for term in terms)


def dequantising_copy(artifacts: dict[str, Path], models: dict, param: Path) -> tuple[Path, dict]:
    """The int8 model written again from the fp32 ncnn files and the int8 artifact's calibration, requantise off."""
    from edgekit.quant.ncnn_int8 import emit_ncnn_int8
    from edgekit.quant.result import CalibrationResult

    fp32_param, fp32_options = models["fp32"]
    result = CalibrationResult.load(artifacts["int8"] / "calibration.json")
    float_layers = models["int8"][1].get("int8", {}).get("float_layers", {})
    if float_layers:
        raise SystemExit("the int8 model keeps layers in float; the no-requantise copy would not be the same model")
    emit_ncnn_int8(fp32_param, fp32_param.with_name(fp32_options["bin_file"]), artifacts["int8"] / "model.onnx",
                   result, param, param.with_suffix(".bin"), requantize=False)
    return param, {**models["int8"][1], "bin_file": param.with_suffix(".bin").name}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("edgekit/zoo/yolov8.pt"))
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--calib-method", default="minmax")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()

    import numpy as np

    from edgekit.runtime.artifact import read_manifest
    from edgekit.runtime.backends.ncnn import NcnnRunner
    from edgekit.runtime.preprocess import probe_input

    work = args.work or Path(f"/tmp/edgekit-bench-ncnn-int8-{args.imgsz}")
    artifacts = {p: build(args.checkpoint, args.imgsz, p, args.calib_method, work / p) for p in ("fp32", "int8")}
    models = {}
    for precision, artifact in artifacts.items():
        manifest = read_manifest(artifact)
        entry = manifest.find("ncnn", precision)
        models[precision] = (artifact / entry.file, dict(entry.options))
        tensor = probe_input(manifest.spec).astype(np.float32)
    types, int8_layers, requantized = what_runs(models["int8"][0])
    if requantized:  # the same int8 model with every layer dequantising its output (no chaining), for comparison
        models["int8, no requantise"] = dequantising_copy(artifacts, models, work / "int8_no_requantise.ncnn.param")
    runners = {}
    for label, (param, options) in models.items():
        for threads in args.threads:
            runner = NcnnRunner.from_artifact(param, options, threads=threads)
            runner.activate()
            runners[(label, threads)] = runner
    feeds = {next(iter(runners.values())).input_specs()[0].name: tensor}

    before = load()
    keys = list(runners)
    # one warm-up round (first-call allocations and kernel packing); random order and a settle pause per call
    by_name = interleaved({f"{label} @{threads}": (lambda r=runners[(label, threads)]: r.infer(feeds))
                           for label, threads in keys}, args.runs, warmup=1)
    times = {(label, threads): by_name[f"{label} @{threads}"] for label, threads in keys}
    after = load()

    def p90(values: list[float]) -> float:
        return sorted(values)[max(0, int(round(0.9 * len(values))) - 1)]

    print(f"checkpoint {args.checkpoint}, {args.imgsz}x{args.imgsz}, {args.runs} interleaved runs, "
          f"int8 calibrated with {args.calib_method}; load average (1/5/15 min) {before} before, {after} after")
    print()
    print("| threads | model | median ms (p90) | vs ncnn/fp32 |")
    print("|---:|---|---:|---:|")
    for threads in args.threads:
        fp32 = statistics.median(times[("fp32", threads)])
        for label in models:
            values = times[(label, threads)]
            print(f"| {threads} | ncnn/{label} | {statistics.median(values):.1f} ({p90(values):.1f}) | "
                  f"{statistics.median(values) / fp32:.2f}× |")
    print()
    print(f"int8 model: {int8_layers} int8 layers of {types['Convolution'] + types['ConvolutionDepthWise']} "
          f"convolutions, {requantized} requantised (int8 output to the next int8 layer); "
          "layer types " + ", ".join(f"{name} {count}" for name, count in types.most_common()))
    tools = {name: shutil.which(name) for name in ("ncnn2table", "ncnn2int8")}
    print("ncnn's own quantisation tools: " + ", ".join(f"{name} {path or 'not installed'}"
                                                         for name, path in tools.items()))
    for runner in runners.values():
        runner.deactivate()


if __name__ == "__main__":
    main()
