"""INT8 on the bundled trained fixtures, end to end: one calibration, three backends, mAP drift.

For every fixture in edgekit/zoo: convert for intel-cpu at int8 (ONNX Runtime Q/DQ + OpenVINO int8)
with the default method and partial quantisation on (drift budget 1.0 mAP point, judged on a
labelled tuning split that is *not* the validation split: synth val seed 1), then for
raspberry-pi-5 at int8 (NCNN) reusing that calibration.json. Judged on the validation split
(synth val seed 0, the split the fixture's mAP is recorded on) against the fp32 model:
mAP drop <= 1.0 point per backend (issue 6). Also: each int8 model really computes in int8, and its
outputs agree with ONNX Runtime running the same Q/DQ quantisation.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import ZOO_DIR
from tests.helpers import skip_unless_backends

skip_unless_backends("onnxruntime")

CHECKPOINTS = sorted(ZOO_DIR.glob("*.pt"))
DRIFT_BUDGET = 1.0  # mAP points (issue 6)
TUNING_IMAGES = 100
#: |int8 backend - ORT running the same Q/DQ placement| / max|ORT| per output. Measured on the yolov8
#: fixture: OpenVINO vs the openvino placement 0.015, NCNN vs the symmetric (tensorrt) placement 0.012;
#: on the yolox fixture NCNN 0.037 (p3) with all 83 convs int8 in both (none left float); both backends
#: round and accumulate differently from ORT's float simulation (fused requantisation, ncnn's
#: round-half-away), so this is a few quantisation steps, not float noise. A wrong scale or a layer
#: quantised on one side only gives several times more. With bias correction (both sides subtract the same
#: shift; mean output changes agree to 1e-3) the ssd fixture's NCNN loc measured 0.061 (0.056 without it on
#: another calibration of the same model): which values land on a rounding edge moves, not the agreement.
QDQ_AGREEMENT = 0.07


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    from edgekit.validate import synth
    from edgekit.validate.datasets import load_dataset

    root = tmp_path_factory.mktemp("int8-data")
    val = load_dataset(synth.generate(root / "val", "val", 0, progress=False))
    tuning = synth.generate(root / "tuning", "val", 1, num_images=TUNING_IMAGES, progress=False)
    return val, tuning


@pytest.fixture(scope="module", params=CHECKPOINTS, ids=lambda p: p.stem)
def int8_artifacts(request, splits, tmp_path_factory):
    from edgekit.convert.chain import convert
    from edgekit.models.loading import load_checkpoint
    from edgekit.quant.pipeline import Int8Options
    from edgekit.runtime.artifact import CALIBRATION_FILE

    skip_unless_backends("openvino", "ncnn")
    model = load_checkpoint(request.param)
    out = tmp_path_factory.mktemp(f"int8-{request.param.stem}")
    _, tuning = splits
    intel = convert(model, "intel-cpu", out / "intel", precision="int8", input_size=model.spec.input_size,
                    int8=Int8Options(drift_budget=DRIFT_BUDGET, drift_data=tuning))
    arm = convert(model, "raspberry-pi-5", out / "arm", precision="int8", input_size=model.spec.input_size,
                  int8=Int8Options(cache=out / "intel" / CALIBRATION_FILE))
    return model, out / "intel", out / "arm", intel, arm


def test_int8_map_drop_within_one_point_on_every_backend(int8_artifacts, splits):
    from edgekit.validate.run import validate_artifacts

    model, intel, arm, manifest, _ = int8_artifacts
    val, _ = splits
    # The reference is the artifact's ONNX Runtime fp32 model: tests/models/test_zoo.py proves it equals
    # the PyTorch model on this split (same mAP within 0.1 point), and it runs ~20x faster than torch here.
    report = validate_artifacts([intel, arm], val)
    assert report.reference == "onnxruntime/fp32"
    reference = report.run("onnxruntime/fp32").metrics.map_50_95
    drops = {run.name: (reference - run.metrics.map_50_95) * 100 for run in report.runs if run.name.endswith("/int8")}
    assert set(drops) == {"onnxruntime/int8", "openvino/int8", "ncnn/int8"}, report.skipped
    partial = manifest.info["int8"]["partial_quantization"]
    print(f"{model.spec.family}: int8 mAP drop (points) {drops}; layers kept in float "
          f"{len(partial['float_layers'])}, steps {partial['steps']}")
    assert all(drop <= DRIFT_BUDGET for drop in drops.values()), drops


def test_the_onnxruntime_model_is_judged_against_the_budget_too(int8_artifacts, splits):
    """The search judges the target's placement (OpenVINO's here); the ONNX Runtime int8 model every int8 artifact
    also ships was not judged, and "met" stood beside a model over the budget (a hostile review). Its drift is now
    recorded; oracle: the same judge re-run on the model_int8.onnx the artifact holds."""
    from edgekit.quant.sensitivity import MapJudge
    from edgekit.validate.datasets import load_dataset, map_to_model_classes

    _, intel, _, manifest, _ = int8_artifacts
    _, tuning = splits
    recorded = manifest.info["int8"]["partial_quantization"]["onnxruntime"]
    judge = MapJudge(intel / "model.onnx", manifest.spec,
                     map_to_model_classes(load_dataset(tuning), manifest.spec.class_names))
    assert judge.drift(intel / "model_int8.onnx") == pytest.approx(recorded["drift"], abs=1e-3)
    assert recorded["within_budget"] == (recorded["drift"] <= DRIFT_BUDGET)


def test_one_calibration_serves_every_backend(int8_artifacts):
    _, intel, arm, manifest, arm_manifest = int8_artifacts
    first = json.loads((intel / "calibration.json").read_text())
    second = json.loads((arm / "calibration.json").read_text())
    assert first == second
    assert arm_manifest.info["int8"]["cache"].endswith("calibration.json")
    assert manifest.info["int8"]["float_layers"] == arm_manifest.info["int8"]["float_layers"]


def _runtime_precisions(xml_path):
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(xml_path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    found: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) == "Convolution":
            precision = info["runtimePrecision"].astype(str)
            found[precision] = found.get(precision, 0) + 1
    return found


def test_int8_models_really_compute_in_int8(int8_artifacts, tmp_path):
    import onnx
    import onnxruntime as ort

    from edgekit.quant.result import CalibrationResult
    from edgekit.runtime.artifact import read_manifest

    _, intel, arm, manifest, arm_manifest = int8_artifacts
    # Convolutions; ConvTranspose layers (centernet's upsampling) are quantised in the Q/DQ graphs but
    # no backend here has an int8 kernel counted below for them, and NCNN keeps them float (ncnn_int8).
    layers = CalibrationResult.load(intel / "calibration.json").quantized_layers
    quantized = [layer for layer in layers if layer.op_type == "Conv"]
    transposed_weights = {layer.weight for layer in layers if layer.op_type == "ConvTranspose"}
    # ONNX Runtime fuses the Q/DQ units into integer QLinearConv kernels
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(intel / "model_int8.onnx"), options, providers=["CPUExecutionProvider"])
    ops = [node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ops.count("QLinearConv") >= len(quantized) - ops.count("Conv")
    assert ops.count("QLinearConv") > 0.5 * len(quantized)
    # OpenVINO: the compiled model's convolutions run in u8 (activations) x i8 (weights)
    entry = manifest.find("openvino", "int8")
    precisions = _runtime_precisions(intel / entry.file)
    assert precisions.get("u8", 0) + precisions.get("i8", 0) >= len(quantized), precisions
    # NCNN: int8 weights (int8_scale_term set) and a .bin about a quarter of the fp32 weights
    entry = read_manifest(arm).find("ncnn", "int8")
    param_lines = (arm / entry.file).read_text().splitlines()
    int8_convs = [line for line in param_lines if line.startswith("Convolution") and " 8=" in line]
    assert len(int8_convs) >= 0.9 * len(quantized)
    sizes = {init.name: int(np.prod(init.dims)) for init in onnx.load(str(intel / "model.onnx")).graph.initializer}
    float_weights = sum(sizes[name] for name in transposed_weights)
    # fp32 would be 4 bytes per weight; the float ConvTranspose weights keep their 4 bytes
    budget = 0.4 * 4 * (sum(sizes.values()) - float_weights) + 4 * float_weights
    assert (arm / entry.options["bin_file"]).stat().st_size < budget


def test_int8_backends_agree_with_onnxruntime_running_the_same_qdq(int8_artifacts, splits, tmp_path):
    import onnxruntime as ort

    from edgekit.quant.qdq import write_qdq
    from edgekit.quant.result import CalibrationResult
    from edgekit.runtime.artifact import read_manifest
    from edgekit.runtime.backends import get_runner_class
    from edgekit.runtime.preprocess import load_image, preprocess

    _, intel, arm, _, _ = int8_artifacts
    val, _ = splits
    spec = read_manifest(intel).spec
    result = CalibrationResult.load(intel / "calibration.json")
    tensor = preprocess([load_image(val.image_path(val.items[3]))], spec)[0]
    # OpenVINO's int8 vs the openvino placement; NCNN's symmetric int8 vs the symmetric (tensorrt) placement
    for artifact, backend, placement in ((intel, "openvino", "openvino"), (arm, "ncnn", "tensorrt")):
        path = tmp_path / f"{placement}.onnx"
        write_qdq(intel / "model.onnx", result, placement, path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        expected = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(
            spec.head.output_names, {spec.input_name: tensor})
        entry = read_manifest(artifact).find(backend, "int8")
        with get_runner_class(backend).from_artifact(artifact / entry.file, entry.options) as runner:
            outputs = runner.infer({spec.input_name: tensor})
        fp32 = ort.InferenceSession(str(intel / "model.onnx"), providers=["CPUExecutionProvider"]).run(
            spec.head.output_names, {spec.input_name: tensor})
        for name, want, base in zip(spec.head.output_names, expected, fp32):
            got = np.asarray(outputs[name], np.float32).reshape(want.shape)
            error = np.abs(got - want).max() / np.abs(want).max()
            assert error <= QDQ_AGREEMENT, f"{backend} {name}: {error:.4f}"
            # and it is really quantised: farther from fp32 than float noise
            assert np.abs(got - base).max() / np.abs(base).max() > 1e-3
