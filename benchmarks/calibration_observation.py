"""Where calibration's time per image goes: the observation run, the old way and the observation graph (issue 15).

For one fp32 ONNX graph (the artifact's ``model.onnx``), ms per image over a block of images, medians of rounds:

1. the observation before session 11: ONNX Runtime with graph optimisation off and every observed tensor as an
   extra output, then numpy's min / max over each returned tensor (``quant.gate.tensors_out_session``, which the
   calibration-cache check still uses);
2. ``edgekit.quant.observation`` (what ``calibrate`` runs now): each tensor's min / max, the layer inputs'
   channel means and the other tensors' sums computed inside the graph — on ONNX Runtime (optimisation on) and on OpenVINO (throughput hint,
   a ring of its optimal number of requests); ``+ samples``: the histogram methods' graph, grid samples too;
3. the model alone, ONNX Runtime and OpenVINO (the floor).

Each round runs every case as a block (warm-up, then the images): image-by-image interleaving across the two
runtimes measures the other runtime's spinning worker threads instead.

    python benchmarks/calibration_observation.py ARTIFACT/model.onnx [--runs 4] [--images 8]

The yolov8 fixture at 640 px is what ``benchmarks/bench_ncnn_int8.py`` converts (its fp32 artifact's model.onnx).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgekit.quant.collect import find_layers, observed_tensors
from edgekit.quant.gate import tensors_out_session
from edgekit.quant.observation import ObservationRun, observation_graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx", type=Path)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args()
    import openvino as ov

    model = onnx.load(str(args.onnx))
    layers = find_layers(model)
    names = observed_tensors(model, layers)
    layer_inputs = {layer.input for layer in layers}
    input_name = model.graph.input[0].name
    shape = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    tensors = [np.random.default_rng(seed).random(shape, dtype=np.float32) for seed in range(args.images)]
    before = tensors_out_session(model, names)
    runs = {(engine, histogram): ObservationRun(observation_graph(model, names, layer_inputs, histogram, shape), engine)
            for engine in ("onnxruntime", "openvino") for histogram in (False, True)}
    options = ort.SessionOptions()
    options.log_severity_level = 3
    plain_ort = ort.InferenceSession(str(args.onnx), options, providers=["CPUExecutionProvider"])
    core = ov.Core()
    plain_ov = ov.AsyncInferQueue(core.compile_model(core.read_model(str(args.onnx)), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "THROUGHPUT"}))

    def openvino_alone(block: list[np.ndarray]) -> None:
        for x in block:
            plain_ov.start_async({0: x})
        plain_ov.wait_all()

    cases: dict[str, Callable[[list[np.ndarray]], object]] = {
        "before: ORT, optimisation off, tensors out + numpy min/max":
            lambda block: [[(v.min(), v.max()) for v in before.run(names, {input_name: x})] for x in block],
    }
    for (engine, histogram), run in runs.items():
        cases[f"observation graph, {engine}{' + samples' if histogram else ''}"] = \
            lambda block, run=run: list(run.summaries(block))
    cases["ORT, the model alone"] = lambda block: [plain_ort.run(None, {input_name: x}) for x in block]
    cases["OpenVINO, the model alone (throughput, async)"] = openvino_alone
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.runs):
        for name, case in cases.items():
            case(tensors[:2])  # warm-up
            started = time.perf_counter()
            case(tensors)
            times[name].append((time.perf_counter() - started) / len(tensors))
    print(f"{args.onnx} ({len(names)} observed tensors, input {shape}, {args.images} images per block, "
          f"{args.runs} rounds); load {os.getloadavg()}\n")
    print("| observation | ms per image (median of rounds) |\n|---|---|")
    for name, values in times.items():
        print(f"| {name} | {np.median(values) * 1000:.1f} |")


if __name__ == "__main__":
    main()
