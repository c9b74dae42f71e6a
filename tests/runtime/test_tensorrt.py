"""TensorRT backend: registration, the engine file of a Jetson artifact, and what happens without a GPU.

Everything above the "on a GPU" line runs here (no TensorRT, no GPU) on a real jetson-orin-nano
artifact built by ``edgekit convert``: nothing is mocked. The tests below that line need TensorRT,
the CUDA runtime library, a GPU and ``trtexec``; they build the engine with the artifact's own
``tensorrt_build.sh`` and compare the engine's outputs with ONNX Runtime on the artifact's ONNX. They
skip by ``TensorRtRunner.is_available()``, never by mocking the backend.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit.errors import BackendUnavailableError, EdgekitError, ModelFileError
from edgekit.runtime.artifact import read_manifest
from edgekit.runtime.backends import backend_names, get_runner_class
from edgekit.runtime.backends.tensorrt import TensorRtRunner, check_engine_file, engine_path, resolve_engine
from edgekit.runtime.detector import Detector
from tests.conftest import REPO_ROOT

needs_tensorrt = pytest.mark.skipif(not TensorRtRunner.is_available(), reason="tensorrt / libcudart not installed")
without_tensorrt = pytest.mark.skipif(TensorRtRunner.is_available(), reason="tensorrt is installed here")

SIZE = (64, 64)


def jetson_artifact(folder: Path, precision: str | None = None) -> Path:
    """A real jetson-orin-nano artifact of a tiny YOLOv8 (the ONNX + tensorrt_build.sh, no engine)."""
    import torch

    from edgekit.convert.chain import convert
    from edgekit.models import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig("yolov8", num_classes=3, input_size=SIZE, width=0.125), ["a", "b", "c"]).eval()
    convert(model, "jetson-orin-nano", folder, precision=precision, input_size=SIZE)
    return folder


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return jetson_artifact(tmp_path_factory.mktemp("jetson") / "art")


def tensorrt_entry(artifact: Path):
    return read_manifest(artifact).find("tensorrt", None)


def a_copy(artifact: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(artifact, tmp_path / "art"))


# --- registration and availability ----------------------------------------------------------

def test_the_registry_knows_tensorrt():
    assert "tensorrt" in backend_names()
    assert get_runner_class("tensorrt") is TensorRtRunner
    assert TensorRtRunner.name == "tensorrt" and TensorRtRunner.pip_extra == "tensorrt"


def test_is_available_means_tensorrt_importable_and_the_cuda_runtime_found():
    from edgekit.runtime.backends.tensorrt import find_cudart

    expected = importlib.util.find_spec("tensorrt") is not None and find_cudart() is not None
    assert TensorRtRunner.is_available() is expected


@without_tensorrt
def test_detector_load_on_a_jetson_artifact_names_what_to_install(artifact):
    with pytest.raises(BackendUnavailableError) as caught:
        Detector.load(artifact, backend="tensorrt")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("backend 'tensorrt' needs ")
    assert "JetPack" in message and "pip install 'edgekit[tensorrt]'" in message
    # raised by edgekit before anything of TensorRT was touched: no chained exception from deep inside
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    assert "tensorrt" not in sys.modules


@without_tensorrt
def test_cli_detect_with_tensorrt_prints_one_error_line(artifact, tmp_path, capsys):
    from edgekit.cli import main

    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(image)
    assert main(["detect", str(artifact), str(image), "--backend", "tensorrt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: backend 'tensorrt' needs ")


def test_the_module_imports_without_tensorrt_and_without_torch(artifact):
    """The runtime on a board: no torch, and nothing of TensorRT/CUDA imported until a runner is activated."""
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path

        class Block:
            # torch must never be imported by the runtime; tensorrt / cuda only by an activated runner
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "torch":
                    raise ImportError("torch import attempted by the runtime: " + name)
                return None

        sys.meta_path.insert(0, Block())
        from edgekit.errors import BackendUnavailableError, ModelFileError
        from edgekit.runtime.artifact import read_manifest
        from edgekit.runtime.backends import get_runner_class
        from edgekit.runtime.backends.tensorrt import TensorRtRunner, resolve_engine
        from edgekit.runtime.detector import Detector

        art = Path(r"{artifact}")
        entry = read_manifest(art).find("tensorrt", None)
        assert get_runner_class("tensorrt") is TensorRtRunner
        available = TensorRtRunner.is_available()
        runner = TensorRtRunner.from_artifact(art / entry.file, entry.options)
        assert runner.model_path == art / entry.options["engine"]
        try:
            resolve_engine(art / entry.file, entry.options)
            raise SystemExit("a missing engine was accepted")
        except ModelFileError as exc:
            assert "engine not built yet" in str(exc)
        if not available:
            try:
                Detector.load(art, backend="tensorrt")
                raise SystemExit("Detector.load without tensorrt succeeded")
            except BackendUnavailableError:
                pass
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "tensorrt", "cuda"))
        assert not leaked, leaked
        print("ok", available)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert proc.stdout.startswith("ok")


# --- the engine file --------------------------------------------------------------------------

def test_the_artifact_names_an_engine_that_is_not_in_its_files(artifact):
    entry = tensorrt_entry(artifact)
    assert entry.file == "model.onnx" and entry.options["built_on_device"] is True
    assert engine_path(artifact / entry.file, entry.options) == artifact / "model_fp16.engine"
    assert entry.options["engine"] not in read_manifest(artifact).files
    assert engine_path(artifact / "model.onnx", {}) is None


def test_a_missing_engine_says_how_to_build_it(artifact):
    entry = tensorrt_entry(artifact)
    with pytest.raises(ModelFileError) as caught:
        resolve_engine(artifact / entry.file, entry.options)
    message = str(caught.value)
    engine = artifact / "model_fp16.engine"
    assert message.startswith(f"{engine}: engine not built yet: run ./tensorrt_build.sh on the device")
    assert "trtexec --onnx=model.onnx --saveEngine=model_fp16.engine --fp16" in message


def test_a_built_engine_is_found_next_to_the_onnx(artifact, tmp_path):
    art = a_copy(artifact, tmp_path)
    entry = tensorrt_entry(art)
    (art / "model_fp16.engine").write_bytes(b"an engine")
    assert resolve_engine(art / entry.file, entry.options) == art / "model_fp16.engine"
    runner = TensorRtRunner.from_artifact(art / entry.file, entry.options)
    assert runner.model_path == art / "model_fp16.engine" and runner.build_script == "tensorrt_build.sh"


def test_an_empty_engine_file_is_an_unfinished_build(tmp_path):
    engine = tmp_path / "model_fp16.engine"
    engine.write_bytes(b"")
    with pytest.raises(ModelFileError, match="engine file is empty"):
        check_engine_file(engine)


def test_a_bare_onnx_is_not_an_engine(artifact):
    with pytest.raises(ModelFileError, match="tensorrt runs a serialized engine .* trtexec --onnx=model.onnx"):
        TensorRtRunner.from_artifact(artifact / "model.onnx", {})
    with pytest.raises(ModelFileError, match="engine not built yet: build it on the device with trtexec"):
        resolve_engine(artifact / "absent.engine", {})


def test_int8_entries_point_at_their_own_engine(tmp_path):
    """int8 builds from the Q/DQ ONNX; the engine is model_int8.engine (checked without calibrating)."""
    from edgekit.convert.builders.tensorrt import INT8_ONNX

    options = {"engine": "model_int8.engine", "build_script": "tensorrt_build.sh"}
    assert engine_path(tmp_path / INT8_ONNX, options) == tmp_path / "model_int8.engine"


# --- validate / bench on a machine without TensorRT -------------------------------------------

def tiny_dataset(folder: Path):
    from edgekit.validate.datasets import Annotation, Dataset

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    items = []
    for image_id in (1, 2):
        name = f"img_{image_id}.png"
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(folder / name)
        items.append(Annotation(image_id=image_id, file_name=name, width=80, height=64,
                                boxes=np.array([[10, 10, 40, 40]], np.float32), labels=np.array([0])))
    return Dataset(root=folder, image_dir=folder, class_names=("a", "b", "c"), items=tuple(items), category_ids=(1, 2, 3))


@without_tensorrt
def test_validate_runs_the_baseline_and_lists_tensorrt_as_skipped(artifact, tmp_path):
    from edgekit.validate.run import validate_artifacts

    art = a_copy(artifact, tmp_path)
    (art / "model_fp16.engine").write_bytes(b"built elsewhere")  # present, but nothing here can run it
    report = validate_artifacts([art], tiny_dataset(tmp_path / "data"))
    assert [run.name for run in report.runs] == ["onnxruntime/fp32"]
    assert report.skipped == [("tensorrt/fp16", "backend not installed here")]


@without_tensorrt
def test_bench_skips_tensorrt_here(artifact):
    from edgekit.bench import bench_artifact

    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    with pytest.raises(EdgekitError, match="no model in the artifact runs on this machine"):
        bench_artifact(artifact, image, backends=["tensorrt"], runs=1, warmup=0)
    assert [r.name for r in bench_artifact(artifact, image, runs=1, warmup=0)] == ["onnxruntime/fp32"]


# --- on a GPU: a real engine built by trtexec -------------------------------------------------

#: raw tensors, relative to each output's max |value|. The build script passes --noTF32 (TF32 would give fp32
#: engines on Ampere and later a 10-bit mantissa); fp32 tactics still sum in other orders than ONNX Runtime, and
#: nothing has been measured on a Jetson yet, so fp32 keeps a margin (build-engine's test asks 1e-3).
TOLERANCE = {"fp32": 5e-3, "fp16": 2e-2}


def trtexec() -> str | None:
    found = shutil.which("trtexec")
    return found or next((p for p in ("/usr/src/tensorrt/bin/trtexec",) if os.access(p, os.X_OK)), None)


@pytest.fixture(scope="module", params=["fp32", "fp16"])
def built_artifact(request, tmp_path_factory) -> tuple[Path, str]:
    if not TensorRtRunner.is_available():
        pytest.skip("tensorrt / libcudart not installed")
    if trtexec() is None:
        pytest.skip("trtexec not found")
    precision = request.param
    art = jetson_artifact(tmp_path_factory.mktemp(f"jetson-{precision}") / "art", precision)
    proc = subprocess.run(["sh", str(art / "tensorrt_build.sh")], capture_output=True, text=True,
                          env={**os.environ, "TRTEXEC": trtexec()}, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return art, precision


@needs_tensorrt
def test_engine_outputs_match_onnxruntime(built_artifact):
    from edgekit.validate.compare import tensor_error

    art, precision = built_artifact
    tensor = np.random.default_rng(1).random((1, 3, *SIZE), dtype=np.float32)
    with Detector.load(art, backend="onnxruntime") as baseline, \
            Detector.load(art, backend="tensorrt", precision=precision) as candidate:
        assert candidate.runner.model_path == art / f"model_{precision}.engine"
        assert candidate.runner.output_names() == list(candidate.spec.head.output_names)
        expected = baseline.infer_tensor(tensor)
        actual = candidate.infer_tensor(tensor)
        again = candidate.infer_tensor(tensor)  # buffers are reused between calls
        assert all(a.shape == e.shape for a, e in zip(actual, expected))
        error = tensor_error(expected, [np.asarray(a, np.float32) for a in actual])
        assert error.max_rel <= TOLERANCE[precision], error
        assert all(np.array_equal(a, b) for a, b in zip(actual, again))
        # a batch of several images goes through (in chunks when the engine is built for batch 1)
        batch = np.random.default_rng(2).random((3, 3, *SIZE), dtype=np.float32)
        expected = baseline.infer_tensor(batch)
        actual = candidate.infer_tensor(batch)
        error = tensor_error(expected, [np.asarray(a, np.float32) for a in actual])
        assert error.max_rel <= TOLERANCE[precision], error


@needs_tensorrt
def test_validate_runs_a_built_engine(built_artifact, tmp_path):
    from edgekit.validate.run import validate_artifacts

    art, precision = built_artifact
    report = validate_artifacts([art], tiny_dataset(tmp_path / "data"))
    assert {run.name for run in report.runs} == {"onnxruntime/fp32", f"tensorrt/{precision}"}
    run = report.run(f"tensorrt/{precision}")
    assert run.size_bytes == (art / f"model_{precision}.engine").stat().st_size


@needs_tensorrt
def test_a_missing_engine_fails_at_load_with_the_build_command(artifact):
    with pytest.raises(ModelFileError, match="engine not built yet: run ./tensorrt_build.sh on the device"):
        Detector.load(artifact, backend="tensorrt")


@needs_tensorrt
def test_a_corrupt_engine_is_one_model_file_error(artifact, tmp_path):
    art = a_copy(artifact, tmp_path)
    (art / "model_fp16.engine").write_bytes(os.urandom(4096))
    with pytest.raises(ModelFileError, match="cannot load this engine") as caught:
        Detector.load(art, backend="tensorrt")
    assert "\n" not in str(caught.value)


@needs_tensorrt
def test_build_engine_through_the_python_api_matches_onnxruntime(tmp_path):
    """``edgekit build-engine``: the installed TensorRT's build from the manifest, its record, then parity."""
    from edgekit.convert.tensorrt_engine import build_engine
    from edgekit.validate.compare import tensor_error

    art = jetson_artifact(tmp_path / "art", "fp32")
    engine = build_engine(art)
    record = json.loads((art / f"{engine.name}.json").read_text())
    assert record["onnx"] == "model.onnx" and record["built_by"] == "edgekit build-engine"
    tensor = np.random.default_rng(4).random((2, 3, *SIZE), dtype=np.float32)  # batch 2 on a batch-1 engine
    with Detector.load(art, backend="onnxruntime") as baseline, \
            Detector.load(art, backend="tensorrt", precision="fp32") as candidate:
        error = tensor_error(baseline.infer_tensor(tensor), [np.asarray(a, np.float32)
                                                             for a in candidate.infer_tensor(tensor)])
    assert error.max_rel <= 1e-3, error  # --noTF32 / TF32 cleared: fp32 arithmetic


@needs_tensorrt
def test_an_engine_of_a_re_converted_model_is_refused_at_load(built_artifact, tmp_path):
    art, precision = built_artifact
    copy = a_copy(art, tmp_path)
    record_file = copy / f"model_{precision}.engine.json"
    record = json.loads(record_file.read_text())
    record["onnx_sha256"] = "0" * 64
    record_file.write_text(json.dumps(record))
    with pytest.raises(ModelFileError, match="built from another") as caught:
        Detector.load(copy, backend="tensorrt", precision=precision)
    assert "\n" not in str(caught.value)


@needs_tensorrt
def test_a_data_dependent_nms_output_matches_onnxruntime(tmp_path):
    """ONNX NonMaxSuppression -> TensorRT's INMSLayer: a [num_selected, 3] output the runner sizes after the run."""
    import onnxruntime as ort
    import tensorrt as trt
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    xy = rng.random((1, 64, 2), dtype=np.float32) * 100
    boxes = np.concatenate([xy, xy + 10 + rng.random((1, 64, 2), dtype=np.float32) * 20], axis=2)
    scores = rng.random((1, 3, 64), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("NonMaxSuppression", ["boxes", "scores", "k", "iou", "conf"], ["selected"])], "nms",
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 64, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 3, 64])],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, ["n", 3])],
        [numpy_helper.from_array(np.array([20], np.int64), "k"), numpy_helper.from_array(np.array([0.5], np.float32),
                                                                                        "iou"),
         numpy_helper.from_array(np.array([0.3], np.float32), "conf")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"boxes": boxes, "scores": scores})[0]
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    network = builder.create_network(0 if explicit is None else 1 << int(explicit))
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(model.SerializeToString())
    engine = tmp_path / "nms.engine"
    engine.write_bytes(bytes(builder.build_serialized_network(network, builder.create_builder_config())))
    with TensorRtRunner(engine) as runner:
        actual = runner.infer({"boxes": boxes, "scores": scores})["selected"]
    key = lambda rows: sorted(map(tuple, np.asarray(rows, np.int64).tolist()))  # noqa: E731
    assert key(actual) == key(expected)


@needs_tensorrt
def test_an_engine_with_nms_in_the_graph_detects_what_host_nms_detects(tmp_path):
    """``--nms graph``: the engine (decode + INMSLayer inside) keeps the boxes edgekit's host NMS keeps on the
    artifact's ONNX Runtime baseline (``tests/convert/test_graph_nms.py`` checks the same ONNX in ONNX Runtime)."""
    import dataclasses

    import torch

    from edgekit.convert.chain import convert
    from edgekit.convert.tensorrt_engine import build_engine
    from edgekit.models import ModelConfig, build_model
    from edgekit.targets import load_target

    torch.manual_seed(0)
    model = build_model(ModelConfig("yolov8", num_classes=3, input_size=SIZE, width=0.125), ["a", "b", "c"]).eval()
    art = tmp_path / "art"
    convert(model, dataclasses.replace(load_target("jetson-orin-nano"), nms="graph"), art, precision="fp32",
            input_size=SIZE)
    build_engine(art)
    images = [np.random.default_rng(seed).integers(0, 255, (*SIZE, 3), dtype=np.uint8) for seed in range(4)]
    with Detector.load(art, backend="onnxruntime", conf_threshold=0.25) as host, \
            Detector.load(art, backend="tensorrt", precision="fp32", conf_threshold=0.25) as graph:
        for image in images:
            want, got = host.detect(image), graph.detect(image)
            np.testing.assert_array_equal(got.labels, want.labels)
            np.testing.assert_allclose(got.scores, want.scores, atol=1e-4)
            np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-2)
