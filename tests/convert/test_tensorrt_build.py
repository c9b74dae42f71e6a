"""TensorRT builds per version, checked here without a GPU: nothing of TensorRT is mocked.

- every trtexec command edgekit generates is linted against the flag set of the version it is for;
- the ONNX files each version parses (fp32, strongly typed fp16 for 11.x, Q/DQ with int8 weights for >= 10
  and with float weights -> Q -> DQ for 8.x) run in ONNX Runtime against the fp32 graph, and pass the
  TensorRT ONNX parser's operator / opset / type matrix;
- the calibration cache is in TensorRT's text format, round-trips, and covers every tensor of the parsed ONNX;
- the build script picks the command of the TensorRT version trtexec reports (a stand-in ``trtexec`` that
  prints a version banner and records its arguments: the script's dispatch is shell, not TensorRT).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import struct
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgekit.convert.tensorrt_int8 import (
    cache_scale,
    cache_tensors,
    float_weight_qdq,
    read_calibration_cache,
    tensor_ranges,
    write_calibration_cache,
)
from edgekit.convert.tensorrt_onnx import legality_problems, parser_support
from edgekit.convert.tensorrt_versions import (
    REMOVED_IN_11,
    VERSIONS,
    BuildPlan,
    TensorRtVersionError,
    calibration_header,
    family_by_name,
    family_for,
    lint_command,
    parse_version,
    plan_for,
    trtexec_command,
)
from edgekit.runtime.artifact import read_manifest

SIZE = (64, 64)
FAMILY_VERSION = {"8.5": "8.5.2", "8.6": "8.6.2", "10.x": "10.3.0", "11.x": "11.4.0"}


# --- versions and the flag table (pure) ---------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("8.5.2.2", (8, 5, 2)), ("8.6.1", (8, 6, 1)), ("10.3.0.30", (10, 3, 0)), ("11.4.0.106", (11, 4, 0)),
    ("8601", (8, 6, 1)), ("v100300", (10, 3, 0)), ("110400", (11, 4, 0)),
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v8502] # trtexec --help", (8, 5, 2)),
])
def test_versions_parse_from_every_form_trtexec_and_python_give(text, expected):
    version = parse_version(text)
    assert (version.major, version.minor, version.patch) == expected
    assert parse_version(str(version.number)) == version  # the banner number round-trips


def test_calibration_header_carries_the_exact_version_number():
    assert calibration_header("8.6.1") == "TRT-8601-EntropyCalibration2"
    assert calibration_header("10.3.0") == "TRT-100300-EntropyCalibration2"


@pytest.mark.parametrize("text", ["8.4.1", "7.1.3", "12.0.0", "banana"])
def test_versions_without_a_recipe_are_refused(text):
    with pytest.raises(TensorRtVersionError):
        family_for(text)


def all_plans():
    for family in VERSIONS.values():
        for precision in ("fp32", "fp16", "int8"):
            for dla in (None, 0):
                for dynamic in (False, True):
                    yield family, plan_for(family, precision, f"model_{precision}.engine", "images", (1, 3, 64, 64),
                                           (1, 4, 8), dynamic, dla)


@pytest.mark.parametrize("family", list(VERSIONS.values()), ids=lambda f: f.name)
def test_every_generated_command_uses_only_flags_its_version_accepts(family):
    version = FAMILY_VERSION[family.name]
    for plan_family, plan in all_plans():
        if plan_family is not family:
            continue
        argv = trtexec_command(plan, version)
        assert lint_command(argv, version) == [], (plan, argv)
        if family.name == "11.x":
            assert not REMOVED_IN_11 & {a.split("=")[0] for a in argv}
        if plan.dynamic:
            assert "--minShapes=images:1x3x64x64" in argv and "--optShapes=images:4x3x64x64" in argv
            assert "--maxShapes=images:8x3x64x64" in argv
        else:
            assert not any(a.startswith(("--minShapes", "--maxShapes")) for a in argv)
        assert ("--noTF32" in argv) is True and any(a.startswith("--timingCacheFile=") for a in argv)
        assert ("--useDLACore=0" in argv) == (plan.dla_core == 0) == ("--allowGPUFallback" in argv)


def test_the_lint_catches_what_each_version_removed():
    assert lint_command(["--onnx=m.onnx", "--saveEngine=e", "--fp16"], "11.0.0") == ["--fp16 was removed in TensorRT 11"]
    assert "--workspace was removed in TensorRT 10" in lint_command(["--onnx=a", "--saveEngine=b", "--workspace=64"],
                                                                    "10.3.0")
    assert lint_command(["--onnx=a", "--saveEngine=b", "--skipInference"], "8.5.2") \
        == ["--skipInference is not a flag edgekit knows TensorRT 8.5 accepts"]
    assert lint_command(["--onnx=a", "--saveEngine=b", "--minShapes=x:1x3"], "8.6.1") \
        == ["give all of --minShapes, --optShapes and --maxShapes"]


def test_eleven_takes_fp16_and_int8_from_the_onnx_and_has_no_dla():
    eleven = family_by_name("11.x")
    fp16 = plan_for(eleven, "fp16", "e", "images", (1, 3, 64, 64), dla_core=0)
    int8 = plan_for(eleven, "int8", "e", "images", (1, 3, 64, 64), dla_core=0)
    assert fp16.onnx == "model_fp16.onnx" and fp16.dla_core is None
    assert int8.onnx == "model_int8_qdq.onnx" and int8.calib_cache is None
    with pytest.raises(TensorRtVersionError, match="cannot build for DLA"):
        trtexec_command(dataclasses.replace(fp16, dla_core=0), "11.4.0")
    with pytest.raises(TensorRtVersionError, match="no calibration-cache"):
        trtexec_command(dataclasses.replace(int8, calib_cache="c.cache"), "11.4.0")


def test_int8_weights_per_parser_and_implicit_int8_only_on_dla():
    assert plan_for(family_by_name("8.5"), "int8", "e", "x", (1, 3, 8, 8)).onnx == "model_int8_qdq_trt8.onnx"
    assert plan_for(family_by_name("10.x"), "int8", "e", "x", (1, 3, 8, 8)).onnx == "model_int8_qdq.onnx"
    dla = plan_for(family_by_name("8.5"), "int8", "e", "x", (1, 3, 8, 8), dla_core=1)
    assert (dla.onnx, dla.calib_cache, dla.dla_core) == ("model.onnx", "tensorrt_calibration.cache", 1)
    assert plan_for(family_by_name("10.x"), "fp16", "e", "x", (1, 3, 8, 8), dla_core=-1).dla_core is None
    assert plan_for(family_by_name("10.x"), "fp32", "e", "x", (1, 3, 8, 8), dla_core=0).dla_core is None  # no fp32 on DLA


# --- a real int8 artifact for the Xavier (DLA core 0) -------------------------------------------

@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    import torch

    from edgekit.convert.chain import convert
    from edgekit.models import ModelConfig, build_model
    from edgekit.quant.pipeline import Int8Options
    from edgekit.targets import load_target

    torch.manual_seed(0)
    model = build_model(ModelConfig("yolov8", num_classes=3, input_size=SIZE, width=0.125), ["a", "b", "c"]).eval()
    target = load_target("jetson-xavier-nx")
    target = dataclasses.replace(target, backend_options={**target.backend_options, "dla_core": 0})
    folder = tmp_path_factory.mktemp("trt") / "art"
    convert(model, target, folder, precision="int8", input_size=SIZE, int8=Int8Options(images=16, method="minmax"))
    return folder


def entry(artifact: Path):
    return read_manifest(artifact).find("tensorrt", None)


def run(path: Path, x: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def probe(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 3, *SIZE), dtype=np.float32)


def test_the_artifact_carries_every_version_s_build_and_its_commands_lint_clean(artifact):
    options = entry(artifact).options
    assert set(options["builds"]) == {f.name for f in VERSIONS.values()}
    files = read_manifest(artifact).files
    for name, build in options["builds"].items():
        argv = shlex.split(build["command"])
        assert argv[0] == "trtexec"
        assert lint_command(argv[1:], FAMILY_VERSION[name]) == []
        assert build["onnx"] in files and (build["calib_cache"] is None or build["calib_cache"] in files)
    # DLA + int8: implicit int8 from the cache on <= 10.x, Q/DQ on 11.x (no DLA there)
    assert options["builds"]["8.5"]["calib_cache"] == "tensorrt_calibration.cache"
    assert options["builds"]["11.x"]["onnx"] == "model_int8_qdq.onnx" and options["builds"]["11.x"]["dla_core"] is None
    script = (artifact / "tensorrt_build.sh").read_text()
    for name in options["builds"]:
        assert f"# TensorRT {name}" in script


def test_qdq_for_eight_has_float_weights_and_computes_what_the_int8_form_computes(artifact):
    int8_form = onnx.load(str(artifact / "model_int8_qdq.onnx"))
    float_form = onnx.load(str(artifact / "model_int8_qdq_trt8.onnx"))
    def int8_values(model):  # int8 initializers other than zero points
        zero_points = {n.input[2] for n in model.graph.node if len(n.input) > 2}
        return {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8} - zero_points

    dq_inputs = {n.input[0] for n in int8_form.graph.node if n.op_type == "DequantizeLinear"}
    assert int8_values(int8_form) and int8_values(int8_form) <= dq_inputs  # >= 10: int8 initializer -> DQ
    assert not int8_values(float_form)  # 8.x: float weights -> Q -> DQ
    x = probe()
    a, b = run(artifact / "model_int8_qdq.onnx", x), run(artifact / "model_int8_qdq_trt8.onnx", x)
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=0, atol=1e-5 * max(1.0, float(np.abs(u).max())))
    # and the int8 graph is close to the fp32 one (int8 judged loosely on raw tensors: the agreement gate judges boxes)
    reference = run(artifact / "model.onnx", x)
    for u, v in zip(reference, b):
        assert np.abs(u - v).max() / np.abs(u).max() < 0.25


def test_float_weight_qdq_is_exact_for_a_rounded_weight():
    from onnx import helper, numpy_helper

    q = np.array([[-127, 0, 5, 127]], np.int8).reshape(4, 1, 1, 1)
    scale = np.array([0.5, 0.25, 0.1, 2.0], np.float32)
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], axis=0),
         helper.make_node("Conv", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 2, 2])],
        [numpy_helper.from_array(q, "w_q"), numpy_helper.from_array(scale, "w_s"),
         numpy_helper.from_array(np.zeros(4, np.int8), "w_z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rewritten = float_weight_qdq(model)
    assert [n.op_type for n in rewritten.graph.node] == ["QuantizeLinear", "DequantizeLinear", "Conv"]
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    a = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    b = ort.InferenceSession(rewritten.SerializeToString()).run(None, {"x": x})[0]
    assert np.array_equal(a, b)


def test_every_onnx_a_tensorrt_build_reads_passes_the_parser_matrix(artifact):
    options = entry(artifact).options
    for name, build in options["builds"].items():
        model = onnx.load(str(artifact / build["onnx"]))
        assert legality_problems(model, name) == [], (name, build["onnx"])
    assert "source" in parser_support() and "Conv" in parser_support()["supported"]


def test_the_legality_check_finds_what_tensorrt_refuses(artifact):
    from onnx import helper

    model = onnx.load(str(artifact / "model.onnx"))
    model.graph.node.append(helper.make_node("NonZero", [model.graph.output[0].name], ["nz"], name="nz"))
    model.graph.node.append(helper.make_node("QLinearConv", ["a"], ["b"], name="qlc"))
    problems = legality_problems(model, "8.5")
    assert any("NonZero" in p for p in problems) and any("QLinearConv" in p for p in problems)
    uint8 = onnx.load(str(artifact / "model.onnx"))
    uint8.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.UINT8
    assert any("UINT8" in p for p in legality_problems(uint8, "10.x"))


def test_the_calibration_cache_is_tensorrt_s_format_and_covers_every_tensor(artifact):
    from edgekit.quant.result import CalibrationResult

    text = (artifact / "tensorrt_calibration.cache").read_text()
    header, scales = read_calibration_cache(text)
    assert header == "TRT-100300-EntropyCalibration2"  # rewritten to the device's number by the build
    model = onnx.load(str(artifact / "model.onnx"))
    wanted = cache_tensors(model)
    assert set(scales) == set(wanted) and len(wanted) > 50
    graph_outputs = {n for node in model.graph.node for n in node.output}
    assert set(wanted) >= {o for o in graph_outputs if o in scales}  # every float node output has its line
    assert model.graph.input[0].name in scales
    result = CalibrationResult.load(artifact / "calibration.json")
    for name, (lo, hi) in result.activation_ranges.items():  # calibrated tensors: exactly amax / 127
        assert scales[name] == pytest.approx(max(abs(lo), abs(hi)) / 127, rel=1e-6)
    for line in text.splitlines()[1:]:  # "<name>: <8 hex digits>", big-endian float32 bits
        name, _, value = line.rpartition(": ")
        assert len(value) == 8 and struct.unpack(">f", bytes.fromhex(value))[0] == scales[name]
    # round trip
    ranges, missing = tensor_ranges(model, result)
    assert missing == []
    assert write_calibration_cache(ranges, header) == text


def focus_graph(path: Path) -> tuple[onnx.ModelProto, str, tuple[float, float]]:
    """A Focus stem as third-party exports keep it: the image read only by four strided Slices, then Concat ->
    Conv -> SiLU (Sigmoid, Mul). Calibration never sees the image itself."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.2, (8, 12, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
             numpy_helper.from_array(np.array([2, 2], np.int64), "steps"),
             numpy_helper.from_array(np.array([64, 64], np.int64), "ends")]
    nodes = []
    for k, (dy, dx) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
        inits.append(numpy_helper.from_array(np.array([dy, dx], np.int64), f"starts{k}"))
        nodes.append(helper.make_node("Slice", ["images", f"starts{k}", "ends", "axes", "steps"], [f"s{k}"],
                                      name=f"slice{k}"))
    nodes += [helper.make_node("Concat", [f"s{k}" for k in range(4)], ["cat"], axis=1, name="cat"),
              helper.make_node("Conv", ["cat", "w", "b"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
              helper.make_node("Sigmoid", ["conv"], ["sig"], name="sig"),
              helper.make_node("Mul", ["conv", "sig"], ["out"], name="silu")]
    graph = helper.make_graph(nodes, "focus", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 32, 32])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return model, "images", (0.0, 1.0)


def centernet_graph(path: Path) -> tuple[onnx.ModelProto, str, tuple[float, float]]:
    """CenterNet exported without passes: BatchNormalization after grouped ConvTranspose (left out of calibration)."""
    import torch

    from edgekit.convert.export import export_onnx
    from edgekit.convert.tensorrt_int8 import normalized_input_range
    from edgekit.models import ModelConfig, build_model

    torch.manual_seed(0)
    net = build_model(ModelConfig("centernet", num_classes=3, input_size=SIZE, width=0.125), ["a", "b", "c"]).eval()
    export_onnx(net, net.spec, path)
    norm = net.spec.normalization
    return onnx.load(str(path)), net.spec.input_name, normalized_input_range(norm.scale, norm.mean, norm.std)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict:
    """name -> (path, input name, input range); each graph written once per module (CenterNet's export is slow)."""
    made: dict = {}

    def get(make):
        if make.__name__ not in made:
            path = tmp_path_factory.mktemp(make.__name__) / "model.onnx"
            _, input_name, input_range = make(path)
            made[make.__name__] = (path, input_name, input_range)
        return made[make.__name__]

    return {"get": get}


@pytest.mark.parametrize("make", [focus_graph, centernet_graph], ids=["focus", "centernet"])
def test_the_cache_covers_every_tensor_and_its_ranges_hold_what_the_graph_computes(make, graphs):
    """Every tensor TensorRT asks for gets a range, and each derived range holds the values ONNX Runtime computes.

    The "calibration" is one image's exact min/max of every quantised layer's input and output; interval
    arithmetic from those (Slice, Concat, BatchNormalization, an uncalibrated ConvTranspose, Relu, Sigmoid, Mul …)
    must contain every other tensor's values on the same image: a range that does not is a wrong rule.
    """
    import types

    from edgekit.quant.collect import find_layers

    path, input_name, input_range = graphs["get"](make)
    model = onnx.load(str(path))
    wanted = cache_tensors(model)
    probe_model = onnx.load(str(path))
    present = {o.name for o in probe_model.graph.output} | {input_name}
    for name in wanted:
        if name not in present:
            probe_model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(probe_model.SerializeToString(), providers=["CPUExecutionProvider"])
    lo_in, hi_in = input_range
    x = (lo_in + (hi_in - lo_in) * np.random.default_rng(5).random((1, 3, *SIZE))).astype(np.float32)
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, {input_name: x}), strict=True))
    values[input_name] = x
    values.update({i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer})
    observed = {n for layer in find_layers(model) for n in (layer.input, layer.output)}
    calibration = types.SimpleNamespace(activation_ranges={n: (float(values[n].min()), float(values[n].max()))
                                                           for n in observed})
    if make is focus_graph:  # the image is read by Slices only: without its range, it and the slices stay unranged
        assert set(tensor_ranges(model, calibration)[1]) == {"images", "s0", "s1", "s2", "s3"}  # type: ignore[arg-type]
    ranges, missing = tensor_ranges(model, calibration, {input_name: input_range})  # type: ignore[arg-type]
    assert missing == []
    for name in wanted:
        lo, hi = ranges[name]
        value = np.asarray(values[name], np.float64)
        slack = 1e-4 * max(1.0, abs(lo), abs(hi))
        assert lo - slack <= value.min() and value.max() <= hi + slack, (name, (lo, hi), (value.min(), value.max()))


def test_a_cache_that_is_not_tensorrt_s_format_is_refused():
    from edgekit.errors import ConversionError

    with pytest.raises(ConversionError, match="header"):
        read_calibration_cache("images: 3c010204\n")
    with pytest.raises(ConversionError, match="line 2"):
        read_calibration_cache("TRT-8601-EntropyCalibration2\nimages 3c010204\n")
    assert cache_scale(0.0, 0.0) > 0


def test_the_fp16_onnx_for_eleven_runs_in_onnx_runtime_within_fp16_tolerance(artifact, tmp_path):
    from edgekit.convert.tensorrt_fp16 import write_fp16

    path = tmp_path / "model_fp16.onnx"
    model = write_fp16(artifact / "model.onnx", path)
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in (*model.graph.input, *model.graph.output))
    kept32 = {n.input[2] for n in model.graph.node if n.op_type == "Resize" and len(n.input) > 2}
    assert all(i.data_type != onnx.TensorProto.FLOAT for i in model.graph.initializer if i.name not in kept32)
    assert legality_problems(model, "11.x") == []
    x = probe(1)
    for u, v in zip(run(artifact / "model.onnx", x), run(path, x)):
        assert v.dtype == np.float32 and np.abs(u - v).max() / np.abs(u).max() < 1e-2


# --- the build script's dispatch on the reported version ----------------------------------------

@pytest.mark.parametrize("number", ["8502", "8602", "100300", "110400"])
def test_the_build_script_runs_the_command_of_the_version_trtexec_reports(artifact, tmp_path, number):
    art = tmp_path / "art"
    import shutil

    shutil.copytree(artifact, art)
    calls = tmp_path / "argv.txt"
    fake = tmp_path / "trtexec"
    fake.write_text("#!/bin/sh\n"
                    f"echo '&&&& RUNNING TensorRT.trtexec [TensorRT v{number}] # trtexec'\n"
                    f"[ \"$1\" = --help ] && exit 0\necho \"$@\" > {calls}\n"
                    "for a in \"$@\"; do case $a in --saveEngine=*) echo engine > \"${a#--saveEngine=}\";; esac; done\n")
    fake.chmod(0o755)
    proc = subprocess.run(["sh", str(art / "tensorrt_build.sh")], capture_output=True, text=True,
                          env={**os.environ, "TRTEXEC": str(fake)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    version = parse_version(number)
    family = family_for(version)
    build = entry(art).options["builds"][family.name]
    argv = calls.read_text().split()
    assert lint_command(argv, version) == []
    expected = shlex.split(build["command"])[1:]
    if build["calib_cache"]:
        expected = [f"--calib=tensorrt_calibration_{number}.cache" if a.startswith("--calib=") else a for a in expected]
        header = (art / f"tensorrt_calibration_{number}.cache").read_text().splitlines()[0]
        assert header == calibration_header(version)
    assert argv == expected
    record = json.loads((art / "model_int8.engine.json").read_text())
    assert record["tensorrt_number"] == int(number) and record["onnx"] == build["onnx"]
    from edgekit.runtime.artifact import sha256_file

    assert record["onnx_sha256"] == sha256_file(art / build["onnx"])


def test_the_build_script_refuses_a_version_it_has_no_build_for(artifact, tmp_path):
    fake = tmp_path / "trtexec"
    fake.write_text("#!/bin/sh\necho '&&&& RUNNING TensorRT.trtexec [TensorRT v8401] # trtexec'\n")
    fake.chmod(0o755)
    proc = subprocess.run(["sh", str(artifact / "tensorrt_build.sh")], capture_output=True, text=True,
                          env={**os.environ, "TRTEXEC": str(fake)}, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "8401" in proc.stderr


def test_plans_are_plain_data():
    plan = BuildPlan("m.onnx", "e", "fp32", "images", (2, 3, 64, 64))
    assert plan.shapes() is None
    assert dataclasses.replace(plan, dynamic=True, opt_batch=2, max_batch=4).shapes()[2] == (4, 3, 64, 64)


# --- edgekit build-engine: what fails here, one line each ------------------------------------------

without_tensorrt = pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt") is not None,
                                      reason="tensorrt is installed here")


def test_build_engine_on_a_folder_that_is_not_an_artifact(tmp_path, capsys):
    from tests.helpers import one_error_line, run_cli

    one_error_line(*run_cli(["build-engine", tmp_path], capsys)[::2], "not an edgekit artifact")


def test_build_engine_on_an_artifact_without_a_tensorrt_model(tmp_path, capsys):
    from tests.helpers import fastestdet_like_artifact, one_error_line, run_cli

    art = fastestdet_like_artifact(tmp_path / "art")
    one_error_line(*run_cli(["build-engine", art], capsys)[::2], "no model for tensorrt")


def test_build_engine_refuses_an_artifact_from_before_per_version_builds(artifact, tmp_path, capsys):
    import shutil

    from tests.helpers import one_error_line, run_cli

    art = Path(shutil.copytree(artifact, tmp_path / "art"))
    manifest = json.loads((art / "edgekit.json").read_text())
    for model in manifest["models"]:
        model["options"].pop("builds", None)
    (art / "edgekit.json").write_text(json.dumps(manifest))
    one_error_line(*run_cli(["build-engine", art], capsys)[::2], "predates per-version TensorRT builds")


def test_build_engine_refuses_build_file_names_outside_the_artifact(artifact, tmp_path, capsys):
    import shutil

    from edgekit.errors import ModelFileError
    from edgekit.runtime.backends.tensorrt import TensorRtRunner
    from tests.helpers import one_error_line, run_cli

    art = Path(shutil.copytree(artifact, tmp_path / "art"))
    manifest = json.loads((art / "edgekit.json").read_text())
    trt_entry = next(m for m in manifest["models"] if m["backend"] == "tensorrt")
    for build in trt_entry["options"]["builds"].values():
        build["onnx"] = "../../elsewhere.onnx"
    (art / "edgekit.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match="expected a file name inside the artifact folder"):
        TensorRtRunner.from_artifact(art / trt_entry["file"], trt_entry["options"])
    one_error_line(*run_cli(["build-engine", art], capsys)[::2], "expected a file name inside the artifact folder")


@without_tensorrt
def test_build_engine_without_tensorrt_says_what_to_install(artifact, capsys):
    from tests.helpers import one_error_line, run_cli

    one_error_line(*run_cli(["build-engine", artifact, "--precision", "int8"], capsys)[::2],
                   "build-engine needs TensorRT's Python bindings", "python3-libnvinfer")
    assert not list(artifact.glob("*.engine"))


def test_a_dynamic_batch_onnx_gets_the_profile_s_batch_range_in_every_command(artifact, tmp_path):
    from edgekit.convert.builders import BuildSource
    from edgekit.convert.builders.tensorrt import TensorRtBuilder

    model = onnx.load(str(artifact / "model.onnx"))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    for output in model.graph.output:
        output.type.tensor_type.shape.dim[0].dim_param = "batch"
    folder = tmp_path / "build"
    folder.mkdir()
    onnx.save(model, str(folder / "model.onnx"))
    spec = read_manifest(artifact).spec
    entry = TensorRtBuilder().build(BuildSource(folder / "model.onnx", spec, batch_range=(1, 4, 8)), "fp16",
                                    lambda name: folder / name, {"workspace_mib": 512})
    assert entry.options["batch"] == {"dynamic": True, "static": 1, "min": 1, "opt": 4, "max": 8}
    h, w = spec.input_size
    for name, build in entry.options["builds"].items():
        argv = shlex.split(build["command"])[1:]
        assert f"--maxShapes=images:8x3x{h}x{w}" in argv and f"--optShapes=images:4x3x{h}x{w}" in argv, name
        assert "--memPoolSize=workspace:512" in argv and lint_command(argv, FAMILY_VERSION[name]) == []
    assert entry.options["builds"]["11.x"]["onnx"] == "model_fp16.onnx" and (folder / "model_fp16.onnx").is_file()
    half = onnx.load(str(folder / "model_fp16.onnx"))
    assert half.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize("make", [focus_graph, centernet_graph], ids=["focus", "centernet"])
def test_the_fp16_onnx_of_other_graphs_runs_within_fp16_tolerance(make, graphs, tmp_path):
    """Strided Slices, grouped ConvTranspose, BatchNormalization, shared constants: the fp16 graph still types and
    runs in ONNX Runtime next to its fp32 graph."""
    from edgekit.convert.tensorrt_fp16 import write_fp16

    path, input_name, (lo, hi) = graphs["get"](make)
    write_fp16(path, tmp_path / "half.onnx")
    x = (lo + (hi - lo) * np.random.default_rng(2).random((1, 3, *SIZE))).astype(np.float32)
    for u, v in zip(run(path, x), run(tmp_path / "half.onnx", x), strict=True):
        assert v.dtype == np.float32 and np.abs(u - v).max() / np.abs(u).max() < 1e-2
