"""Where calibration's time per image goes, and what an NNCF-style observation would cost (issue 15).

For one fp32 ONNX graph (the artifact's ``model.onnx``), per image, medians of interleaved runs:

1. today's observation run (``edgekit.quant.collect``: ONNX Runtime with graph optimisation off and every observed
   tensor as an extra output) plus the numpy min/max over each returned tensor;
2. the same tensors reduced inside the graph (ReduceMin / ReduceMax appended, scalar outputs), ORT optimisation on;
3. plain ONNX Runtime (the model alone, optimisation on);
4. OpenVINO with the same in-graph ReduceMin / ReduceMax of every observed tensor (what NNCF does);
5. plain OpenVINO.

A measurement, not an implementation: edgekit calibrates through (1). Each round runs every case as a block
(warm-up, then the images): image-by-image interleaving across the two runtimes measures the other runtime's
spinning worker threads instead (seen: OpenVINO's in-graph case at 2x plain OpenVINO).

    python benchmarks/calibration_observation.py ARTIFACT/model.onnx [--runs 4]

The yolov8 fixture at 640 px is what ``benchmarks/bench_ncnn_int8.py`` converts (its fp32 artifact's model.onnx).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from edgekit.quant.collect import _observation_session, find_layers, observed_tensors


def _ort_reduced(model: onnx.ModelProto, names: list[str]) -> tuple[ort.InferenceSession, list[str]]:
    reduced = onnx.ModelProto()
    reduced.CopyFrom(model)
    outputs = []
    for index, name in enumerate(names):
        for op in ("ReduceMin", "ReduceMax"):
            output = f"observe_{op}_{index}"
            reduced.graph.node.append(helper.make_node(op, [name], [output], keepdims=0))
            reduced.graph.output.append(helper.make_tensor_value_info(output, TensorProto.FLOAT, []))
            outputs.append(output)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(reduced.SerializeToString(), options, providers=["CPUExecutionProvider"]), outputs


def _openvino(path: Path, names: list[str]):
    import openvino as ov
    import openvino.opset13 as ops

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    model = core.read_model(str(path))
    ports = {name: port for op in model.get_ops() for port in op.outputs() for name in port.get_names()}
    results = []
    for name in names:
        port = ports[name]
        axes = ops.constant(np.arange(len(port.get_partial_shape()), dtype=np.int64))
        results += [ops.result(ops.reduce_min(port, axes, keep_dims=False)),
                    ops.result(ops.reduce_max(port, axes, keep_dims=False))]
    model.add_results(results)
    reduced = core.compile_model(model, "CPU", config)
    plain = core.compile_model(core.read_model(str(path)), "CPU", config)
    return reduced.create_infer_request(), len(reduced.outputs), plain.create_infer_request()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx", type=Path)
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args()
    model = onnx.load(str(args.onnx))
    names = observed_tensors(model, find_layers(model))
    input_name = model.graph.input[0].name
    shape = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    tensors = [np.random.default_rng(seed).random(shape, dtype=np.float32) for seed in range(4)]
    observation = _observation_session(model, names)
    reduced, reduced_outputs = _ort_reduced(model, names)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    plain = ort.InferenceSession(str(args.onnx), options, providers=["CPUExecutionProvider"])
    ov_reduced, ov_outputs, ov_plain = _openvino(args.onnx, names)

    def timed(case, tensor: np.ndarray) -> float:
        started = time.perf_counter()
        case(tensor)
        return time.perf_counter() - started

    cases = {
        "edgekit today: ORT, optimisation off, tensors out + numpy min/max":
            lambda x: [(v.min(), v.max()) for v in observation.run(names, {input_name: x})],
        "ORT, in-graph ReduceMin/ReduceMax, optimisation on": lambda x: reduced.run(reduced_outputs, {input_name: x}),
        "ORT, the model alone": lambda x: plain.run(None, {input_name: x}),
        "OpenVINO, in-graph ReduceMin/ReduceMax (NNCF's way)":
            lambda x: (ov_reduced.infer({0: x}), [ov_reduced.get_output_tensor(i).data for i in range(ov_outputs)]),
        "OpenVINO, the model alone": lambda x: ov_plain.infer({0: x}),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.runs):
        for name, case in cases.items():
            # interleaved by round, a block per case: ONNX Runtime's and OpenVINO's worker threads spin for a
            # while after a run, and a case run right after the other runtime's measures that spinning
            case(tensors[0])  # warm-up
            times[name] += [timed(case, tensor) for tensor in tensors]
    print(f"{args.onnx} ({len(names)} observed tensors, input {shape}); load {os.getloadavg()}\n")
    print("| observation | ms per image (median) |\n|---|---|")
    for name, values in times.items():
        print(f"| {name} | {np.median(values) * 1000:.1f} |")


if __name__ == "__main__":
    main()
