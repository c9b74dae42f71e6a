"""OpenVINO backend: the IR builder and the Runner, checked against ONNX Runtime and PyTorch.

The oracles: ONNX Runtime on the same exported ONNX file (raw tensors, detections), the PyTorch
reference detector (the real FastestDet), and the IR files themselves (weight element types).
Nothing here mocks OpenVINO: the whole file skips when it is not installed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekit.errors import BackendUnavailableError, ConversionError, EdgekitError, InputError, ModelFileError
from edgekit.runtime.backends.onnxruntime import OnnxRuntimeRunner
from edgekit.runtime.backends.openvino import OpenVinoRunner
from edgekit.validate.compare import compare_detections, tensor_error
from tests.helpers import varied_weights
from tests.onnx_graphs import fastestdet_like_graph, fastestdet_like_spec, save

pytestmark = pytest.mark.skipif(not OpenVinoRunner.is_available(), reason="openvino is not installed")

FP32_TOLERANCE = 1e-4   # raw tensors, relative to each output's max |value| (DESIGN.md)
FP16_TOLERANCE = 1e-2
BF16_TOLERANCE = 5e-2   # bf16 keeps 8 mantissa bits: ~4e-3 per rounding, accumulated over the layers
FAMILIES = ["yolov5", "yolox", "yolov6", "yolov8", "centernet", "ssd"]
SIZE = (128, 128)


# --- helpers -------------------------------------------------------------------------------

def cpu_capabilities() -> list[str]:
    import openvino as ov

    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def image_like_input(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Pixels in [0, 1], as the YOLO-style preprocessing produces."""
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def run(runner_class: type, path: Path, feeds: dict[str, np.ndarray], **options: object) -> dict[str, np.ndarray]:
    with runner_class(path, **options) as runner:
        return runner.infer(feeds)


def build_ir(onnx_path: Path, spec, out_dir: Path, precision: str, options: dict | None = None):
    """Run the OpenVINO builder into a plain folder; returns (entry, folder)."""
    from edgekit.convert.builders import BuildSource, get_builder

    def sink(relative: str) -> Path:
        path = out_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    entry = get_builder("openvino").build(BuildSource(onnx_path, spec), precision, sink, options or {})
    return entry, out_dir


def build_openvino_artifact(model, root: Path, precisions: tuple[str, ...] = ("fp32", "fp16", "bf16")) -> Path:
    """export_artifact (ONNX Runtime fp32), then a second artifact with the same files plus OpenVINO's.

    Stands in for chain.py wiring the OpenVINO builder in (the lead's job): the builder writes
    through the ArtifactWriter's sink exactly as the chain will.
    """
    from edgekit.convert.artifact import ArtifactWriter
    from edgekit.convert.builders import BuildSource, get_builder
    from edgekit.convert.chain import export_artifact
    from edgekit.runtime.artifact import read_manifest

    exported = root / "exported"
    export_artifact(model, exported)
    manifest = read_manifest(exported)
    baseline = manifest.find("onnxruntime", "fp32")
    out = root / "with_openvino"
    with ArtifactWriter(out) as writer:
        for relative in manifest.files:
            shutil.copyfile(exported / relative, writer.path(relative))
        source = BuildSource(writer.path(baseline.file), manifest.spec, model)
        builder = get_builder("openvino")
        entries = list(manifest.models) + [builder.build(source, p, writer.path, {}) for p in precisions]
        writer.commit(manifest.spec, entries, manifest.info)
    return out


def synth_images(count: int, size: int = 160) -> list[np.ndarray]:
    from edgekit.validate.synth import image_rng, render_image

    return [render_image(image_rng(0, "val", i), size)[0] for i in range(count)]


def assert_same_detections(reference, candidate, max_score_delta: float = 1e-3) -> None:
    """Image by image: same count, every reference box matched with IoU >= 0.99 and |Δscore| <= max_score_delta."""
    for ref, cand in zip(reference, candidate, strict=True):
        assert len(ref) == len(cand)
        stats = compare_detections([ref], [cand], iou_threshold=0.99)
        assert stats.matched == len(ref), stats
        assert stats.max_score_delta <= max_score_delta, stats


@pytest.fixture(scope="module")
def family_onnx(tmp_path_factory):
    """family -> (model, onnx path): built with spread weights and exported once per module."""
    import torch

    torch.set_num_threads(1)
    cache: dict[str, tuple] = {}

    def get(family: str):
        if family not in cache:
            from edgekit.convert.export import export_onnx
            from edgekit.models import ModelConfig, build_model

            model = build_model(ModelConfig(family, 3, SIZE))
            model = varied_weights(model, seed=0)
            path = export_onnx(model, model.spec, tmp_path_factory.mktemp(family) / "model.onnx")
            cache[family] = (model, path)
        return cache[family]

    return get


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> tuple[Path, object]:
    spec = fastestdet_like_spec()
    path = save(fastestdet_like_graph(spec, batch=None, seed=3), tmp_path_factory.mktemp("tiny") / "tiny.onnx")
    return path, spec


# --- fp32 parity with ONNX Runtime ---------------------------------------------------------

@pytest.mark.parametrize("batch,seed", [(1, 0), (2, 1), (3, 2)])
def test_tiny_graph_matches_onnxruntime(tiny_onnx, tmp_path, batch, seed):
    path, spec = tiny_onnx
    feeds = {spec.input_name: image_like_input((batch, 3, 64, 64), seed) * 255}
    expected = run(OnnxRuntimeRunner, path, feeds)["output"]
    from_onnx = run(OpenVinoRunner, path, feeds)["output"]
    entry, folder = build_ir(path, spec, tmp_path, "fp32")
    from_ir = run(OpenVinoRunner, folder / entry.file, feeds)["output"]
    for actual in (from_onnx, from_ir):
        assert actual.shape == expected.shape == (batch, 8, 4, 4)
        assert tensor_error([expected], [actual]).max_rel <= FP32_TOLERANCE


@pytest.mark.parametrize("family", FAMILIES)
def test_family_model_matches_onnxruntime_at_fp32(family_onnx, tmp_path, family):
    model, path = family_onnx(family)
    spec = model.spec
    feeds = {spec.input_name: image_like_input((1, 3, *SIZE), seed=7)}
    expected = run(OnnxRuntimeRunner, path, feeds)
    entry, folder = build_ir(path, spec, tmp_path, "fp32")
    assert entry.options["inference_precision"] == "f32"
    for model_file in (path, folder / entry.file):
        with OpenVinoRunner.from_artifact(model_file, entry.options) as runner:
            assert runner.output_names() == list(spec.head.output_names)
            actual = runner.infer(feeds)
        names = spec.head.output_names
        error = tensor_error([expected[n] for n in names], [actual[n] for n in names])
        assert error.max_rel <= FP32_TOLERANCE, (model_file.name, error)


# --- what precision really ran -------------------------------------------------------------

def test_f32_hint_runs_f32_convolutions_and_bf16_runs_bf16(family_onnx, tmp_path):
    model, path = family_onnx("yolov8")
    feeds = {model.spec.input_name: image_like_input((1, 3, *SIZE), seed=4)}
    names = model.spec.head.output_names
    with OpenVinoRunner(path, inference_precision="f32") as runner:
        convolutions = runner.runtime_precisions("Convolution")
        f32_outputs = runner.infer(feeds)
    assert sum(convolutions.values()) >= 10 and set(convolutions) == {"f32"}, convolutions

    with OpenVinoRunner(path, inference_precision="bf16") as runner:
        hint = str(runner.compiled_property("INFERENCE_PRECISION_HINT"))
        convolutions = runner.runtime_precisions("Convolution")
        bf16_outputs = runner.infer(feeds)
    if "BF16" in cpu_capabilities():
        assert "bfloat16" in hint
    if "bfloat16" not in hint:
        pytest.skip(f"this CPU / OpenVINO does not run bf16 (compiled precision {hint})")
    assert set(convolutions) == {"bf16"}, convolutions
    error = tensor_error([f32_outputs[n] for n in names], [bf16_outputs[n] for n in names])
    # bf16 compute really happened (results moved), and stayed within bf16's budget
    assert 1e-5 < error.max_rel <= BF16_TOLERANCE, error


def test_openvino_default_is_bf16_on_bf16_cpus(tiny_onnx):
    """Why edgekit's fp32 sets the f32 hint: without it such a CPU computes in bf16."""
    if "BF16" not in cpu_capabilities():
        pytest.skip("this CPU has no native bf16 (OpenVINO's default is f32 here)")
    path, _ = tiny_onnx
    with OpenVinoRunner(path, inference_precision=None) as runner:
        assert runner.runtime_precisions("Convolution").keys() == {"bf16"}


# --- fp16-compressed IR --------------------------------------------------------------------

def _convolution_weight_types(xml_path: Path) -> list[str]:
    """Element type of the Constant feeding each Convolution's weights, through a Convert if any."""
    import openvino as ov

    types = []
    for op in ov.Core().read_model(str(xml_path)).get_ops():
        if op.get_type_name() not in ("Convolution", "GroupConvolution"):
            continue
        node = op.input_value(1).get_node()
        if node.get_type_name() == "Convert":  # fp16 storage: Constant(f16) -> Convert(f32)
            node = node.input_value(0).get_node()
        assert node.get_type_name() == "Constant", node
        types.append(node.get_output_element_type(0).get_type_name())
    return types


@pytest.mark.parametrize("family", ["yolov8", "ssd"])
def test_fp16_ir_stores_f16_weights_and_stays_within_fp16_tolerance(family_onnx, tmp_path, family):
    model, path = family_onnx(family)
    spec = model.spec
    fp32_entry, _ = build_ir(path, spec, tmp_path, "fp32")
    fp16_entry, _ = build_ir(path, spec, tmp_path, "fp16")
    assert fp32_entry.file != fp16_entry.file
    fp32_xml, fp16_xml = tmp_path / fp32_entry.file, tmp_path / fp16_entry.file

    # save_model compresses by default: the fp32 IR must really keep f32 weights
    assert set(_convolution_weight_types(fp32_xml)) == {"f32"}
    assert set(_convolution_weight_types(fp16_xml)) == {"f16"}
    size_ratio = fp16_xml.with_suffix(".bin").stat().st_size / fp32_xml.with_suffix(".bin").stat().st_size
    assert 0.45 < size_ratio < 0.55

    # Oracle for "f16 storage, f32 compute": ONNX Runtime on the same graph with every float
    # initializer rounded to fp16 and back. OpenVINO's fp16 IR must match it at fp32 tolerance.
    rounded = save(_weights_rounded_to_fp16(path), tmp_path / "rounded.onnx")
    feeds = {spec.input_name: image_like_input((1, 3, *SIZE), seed=5)}
    expected = run(OnnxRuntimeRunner, path, feeds)
    expected_rounded = run(OnnxRuntimeRunner, rounded, feeds)
    with OpenVinoRunner.from_artifact(fp16_xml, fp16_entry.options) as runner:
        assert "float32" in str(runner.compiled_property("INFERENCE_PRECISION_HINT"))
        # the CPU plugin keeps the weights compressed and reports the convolutions as f16
        # (their weight input), while the arithmetic is f32: the rounded-weights oracle says so
        assert set(runner.runtime_precisions("Convolution")) == {"f16"}
        actual = runner.infer(feeds)
    names = spec.head.output_names
    assert tensor_error([expected_rounded[n] for n in names], [actual[n] for n in names]).max_rel <= FP32_TOLERANCE
    error = tensor_error([expected[n] for n in names], [actual[n] for n in names])
    assert 0 < error.max_rel <= FP16_TOLERANCE, error  # > 0: the rounded weights really are used


def _weights_rounded_to_fp16(onnx_path: Path):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    for initializer in model.graph.initializer:
        array = numpy_helper.to_array(initializer)
        if array.dtype == np.float32:
            initializer.CopyFrom(numpy_helper.from_array(array.astype(np.float16).astype(np.float32), initializer.name))
    return model


def test_builder_hints_per_precision_and_device(tiny_onnx, tmp_path):
    path, spec = tiny_onnx
    hints = {p: build_ir(path, spec, tmp_path / "cpu", p)[0].options["inference_precision"] for p in ("fp32", "bf16", "fp16")}
    assert hints == {"fp32": "f32", "bf16": "bf16", "fp16": "f32"}
    gpu_entry, _ = build_ir(path, spec, tmp_path / "gpu", "fp16", {"device": "GPU", "performance_hint": "THROUGHPUT"})
    assert gpu_entry.options["inference_precision"] == "f16"
    assert (gpu_entry.options["device"], gpu_entry.options["performance_hint"]) == ("GPU", "THROUGHPUT")
    # bf16 and fp32 share the f32 files; the .bin is a companion the Detector verifies
    fp32_entry, _ = build_ir(path, spec, tmp_path / "cpu", "fp32")
    bf16_entry, _ = build_ir(path, spec, tmp_path / "cpu", "bf16")
    assert fp32_entry.file == bf16_entry.file == "openvino/model_f32.xml"
    assert fp32_entry.options["companion_files"] == ["openvino/model_f32.bin"]
    with pytest.raises(ConversionError, match="bf16 runs only on the CPU"):
        build_ir(path, spec, tmp_path / "gpu", "bf16", {"device": "GPU"})
    with pytest.raises(ConversionError, match="int8 needs a calibration result"):
        build_ir(path, spec, tmp_path / "cpu", "int8")


# --- async batches -------------------------------------------------------------------------

def test_infer_many_matches_sequential_infer_in_order(tiny_onnx):
    path, spec = tiny_onnx
    feeds = [{spec.input_name: image_like_input((1, 3, 64, 64), seed) * 255} for seed in range(7)]
    with OpenVinoRunner(path) as runner:
        sequential = [runner.infer(f)["output"] for f in feeds]
    with OpenVinoRunner(path, performance_hint="THROUGHPUT") as runner:
        batched = runner.infer_many(feeds)
        assert runner.infer_many([]) == []
        with pytest.raises(InputError, match="expected dtype float32"):
            runner.infer_many([feeds[0], {spec.input_name: feeds[1][spec.input_name].astype(np.float64)}])
    assert len(batched) == len(feeds)
    # distinct inputs give distinct outputs, so a reordering would fail here
    for want, got in zip(sequential, batched):
        np.testing.assert_allclose(got["output"], want, rtol=1e-6, atol=1e-7)
    assert not np.allclose(batched[0]["output"], batched[1]["output"])


# --- Detector end to end -------------------------------------------------------------------

# conf thresholds that keep every image below max_detections: a cut at the cap would compare
# the order of near-equal scores, not the backend
@pytest.mark.slow
@pytest.mark.parametrize("family,conf", [("yolov8", 0.3), ("ssd", 0.48)])
def test_detector_on_openvino_matches_onnxruntime_detector(tmp_path, family, conf):
    import torch

    from edgekit.models import ModelConfig, build_model
    from edgekit.runtime.detector import Detector

    torch.set_num_threads(1)
    model = build_model(ModelConfig(family, 3, (160, 160)))
    artifact = build_openvino_artifact(varied_weights(model, seed=1), tmp_path)
    images = synth_images(4)
    with Detector.load(artifact, backend="onnxruntime", conf_threshold=conf) as detector:
        expected = detector.detect_batch(images)
        cap = detector.postprocess_spec.max_detections
    counts = [len(d) for d in expected]
    assert sum(counts) >= 20 and max(counts) < cap, counts
    with Detector.load(artifact, backend="openvino", precision="fp32", conf_threshold=conf) as detector:
        assert detector.runner.runtime_precisions("Convolution").keys() == {"f32"}
        assert_same_detections(expected, detector.detect_batch(images))
    with Detector.load(artifact, backend="openvino", precision="fp16", conf_threshold=conf) as detector:
        stats = compare_detections(expected, detector.detect_batch(images), iou_threshold=0.5)
    assert stats.recall >= 0.9 and stats.precision >= 0.9, stats


def test_detector_verifies_the_weights_file(tmp_path):
    """The .bin is a companion file: changing it after conversion is caught by its sha256."""
    from edgekit.convert.artifact import ArtifactWriter
    from edgekit.convert.builders import BuildSource, get_builder
    from edgekit.runtime.detector import Detector

    spec = fastestdet_like_spec()
    source = save(fastestdet_like_graph(spec), tmp_path / "tiny.onnx")
    with ArtifactWriter(tmp_path / "art") as writer:
        entry = get_builder("openvino").build(BuildSource(source, spec), "fp32", writer.path, {})
        writer.commit(spec, [entry], {})
    image = np.random.default_rng(0).integers(0, 256, size=(70, 50, 3), dtype=np.uint8)
    with Detector.load(tmp_path / "art", backend="openvino") as detector:
        detector.detect(image)
    weights = tmp_path / "art" / "openvino" / "model_f32.bin"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="model_f32.bin: sha256 mismatch"):
        Detector.load(tmp_path / "art", backend="openvino")


@pytest.mark.slow
def test_real_fastestdet_on_openvino_matches_pytorch_reference(fastestdet_dir, tmp_path):
    import torch

    from edgekit.models.loading import load_checkpoint
    from edgekit.reference.detector import ReferenceDetector
    from edgekit.runtime.detector import Detector
    from edgekit.spec import load_class_names

    torch.set_num_threads(1)
    model = load_checkpoint(fastestdet_dir / "fastestdet_coco_352.pth", family="fastestdet",
                            class_names=load_class_names(fastestdet_dir / "coco.names"))
    photos = [fastestdet_dir / "images" / f"{i}.jpg" for i in range(5)]
    expected = ReferenceDetector(model, model.spec).detect_batch(photos)
    artifact = build_openvino_artifact(model, tmp_path, precisions=("fp32",))
    with Detector.load(artifact, backend="openvino", precision="fp32") as detector:
        actual = [detector.detect(photo) for photo in photos]
    assert sum(len(d) for d in expected) >= 10, "the real model finds objects in the real photos"
    assert_same_detections(expected, actual)


def test_detector_on_openvino_never_imports_torch(tmp_path):
    """A board with numpy + openvino only: the OpenVINO runtime path must not touch torch."""
    import subprocess
    import sys
    import textwrap

    from edgekit.convert.artifact import ArtifactWriter
    from edgekit.convert.builders import BuildSource, get_builder
    from tests.conftest import REPO_ROOT

    spec = fastestdet_like_spec()
    source = save(fastestdet_like_graph(spec), tmp_path / "tiny.onnx")
    with ArtifactWriter(tmp_path / "art") as writer:
        writer.commit(spec, [get_builder("openvino").build(BuildSource(source, spec), "fp32", writer.path, {})], {})
    script = textwrap.dedent(f"""
        import sys
        import numpy as np

        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch import attempted by the runtime: " + name)
                return None

        sys.meta_path.insert(0, BlockTorch())
        from edgekit.runtime.detector import Detector
        with Detector.load(r"{tmp_path / 'art'}", backend="openvino") as detector:
            detector.detect(np.zeros((40, 60, 3), np.uint8))
            detector.runner.infer_many([{{"images": np.zeros((1, 3, 64, 64), np.float32)}}] * 3)
        assert "torch" not in sys.modules
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


# --- bad input -----------------------------------------------------------------------------

@pytest.fixture()
def tiny_ir(tiny_onnx, tmp_path) -> Path:
    path, spec = tiny_onnx
    entry, folder = build_ir(path, spec, tmp_path, "fp32")
    return folder / entry.file


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and len(message) < 600
    return message


def test_corrupt_xml_is_a_model_file_error(tiny_ir):
    tiny_ir.write_text(tiny_ir.read_text()[:300])
    with pytest.raises(ModelFileError, match="OpenVINO cannot read this model") as exc:
        OpenVinoRunner(tiny_ir).activate()
    assert str(tiny_ir) in _one_line(exc)


def test_missing_or_truncated_bin_is_a_model_file_error(tiny_ir):
    weights = tiny_ir.with_suffix(".bin")
    data = weights.read_bytes()
    weights.write_bytes(data[:16])
    with pytest.raises(ModelFileError, match="cannot read this model") as exc:
        OpenVinoRunner(tiny_ir).activate()
    _one_line(exc)
    weights.unlink()
    with pytest.raises(ModelFileError, match=r"weights file model_f32\.bin is missing") as exc:
        OpenVinoRunner(tiny_ir).activate()
    _one_line(exc)


def test_missing_and_non_model_files(tmp_path):
    with pytest.raises(ModelFileError, match="model file not found"):
        OpenVinoRunner(tmp_path / "absent.xml").activate()
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx file")
    with pytest.raises(ModelFileError, match="cannot read this model"):
        OpenVinoRunner(garbage).activate()
    other = tmp_path / "model.tflite"
    other.write_bytes(b"x")
    with pytest.raises(ModelFileError, match=r"expected an OpenVINO IR \(.xml"):
        OpenVinoRunner(other).activate()


def _graph_with(nodes, initializers=(), extra_opsets=(), output_shape=(1, 3, 8, 8)):
    from onnx import TensorProto, helper

    graph = helper.make_graph(list(nodes), "bad", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(output_shape))], list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), *extra_opsets])
    model.ir_version = 8
    return model


def test_unsupported_operator_names_node_and_operator(tmp_path):
    from onnx import helper

    spec = fastestdet_like_spec()
    model = _graph_with([helper.make_node("Relu", ["images"], ["r"], name="relu_0"),
                         helper.make_node("FancyOp", ["r"], ["y"], name="fancy_node", domain="com.example")],
                        extra_opsets=[helper.make_opsetid("com.example", 1)])
    path = save(model, tmp_path / "custom.onnx")
    with pytest.raises(ConversionError) as exc:
        build_ir(path, spec, tmp_path / "out", "fp32")
    message = _one_line(exc)
    assert "node 'fancy_node'" in message and "com.example.FancyOp" in message and "no conversion rule" in message
    assert not (tmp_path / "out" / "openvino" / "model_f32.xml").exists()
    # the runner opening the ONNX directly names the operator too
    with pytest.raises(ModelFileError, match="no OpenVINO conversion rule for operator.*com.example.FancyOp"):
        OpenVinoRunner(path).activate()


def test_failed_conversion_names_node_and_reason(tmp_path):
    import onnx
    from onnx import helper, numpy_helper

    spec = fastestdet_like_spec()
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    roi = numpy_helper.from_array(np.array([0, 0, 0, 0, 1, 1, 1, 1], np.float32), "roi")
    # a valid ONNX Resize whose coordinate mode OpenVINO does not implement
    model = _graph_with([helper.make_node("Resize", ["images", "roi", "scales"], ["y"], name="crop_resize",
                                          mode="linear", coordinate_transformation_mode="tf_crop_and_resize")],
                        [scales, roi], output_shape=(1, 3, 16, 16))
    onnx.checker.check_model(model)
    path = save(model, tmp_path / "resize.onnx")
    with pytest.raises(ConversionError) as exc:
        build_ir(path, spec, tmp_path / "out", "fp32")
    message = _one_line(exc)
    assert "node 'crop_resize'" in message and "Resize" in message and "tf_crop_and_resize" in message


def test_unknown_device_names_the_available_ones(tiny_onnx):
    import openvino as ov

    path, _ = tiny_onnx
    available = ov.Core().available_devices
    with pytest.raises(BackendUnavailableError, match="device 'NOSUCHDEVICE' is not available") as exc:
        OpenVinoRunner(path, device="NOSUCHDEVICE").activate()
    assert f"available devices: {', '.join(available)}" in _one_line(exc)
    if "GPU" not in available:  # a selectable device this machine lacks
        with pytest.raises(BackendUnavailableError, match="device 'GPU'"):
            OpenVinoRunner(path, device="GPU").activate()


def test_bad_options_and_inputs(tiny_onnx):
    path, spec = tiny_onnx
    with pytest.raises(EdgekitError, match="inference_precision 'int4'"):
        OpenVinoRunner(path, inference_precision="int4")
    with pytest.raises(EdgekitError, match="performance_hint 'FAST'"):
        OpenVinoRunner(path, performance_hint="FAST")
    with OpenVinoRunner(path) as runner:
        with pytest.raises(InputError, match=r"expected shape \[\?, 3, 64, 64\]"):
            runner.infer({spec.input_name: np.zeros((1, 3, 32, 32), np.float32)})
        with pytest.raises(InputError, match="missing"):
            runner.infer({})
