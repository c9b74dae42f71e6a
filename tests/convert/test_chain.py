"""edgekit convert: one artifact per target, self-contained, checked, and never half-written."""

import os
import shutil

import numpy as np
import pytest
import torch

from edgekit.cli import main
from edgekit.convert.chain import convert
from edgekit.errors import BackendUnavailableError, ConversionError
from edgekit.models import ModelConfig, build_model
from edgekit.runtime.artifact import read_manifest
from edgekit.runtime.backends import get_runner_class
from edgekit.runtime.backends.base import Runner
from edgekit.runtime.detector import Detector
from edgekit.targets import TargetError, load_target, parse_target
from edgekit.validate.compare import compare_detections

needs = {name: pytest.mark.skipif(not get_runner_class(name).is_available(), reason=f"{name} not installed")
         for name in ("openvino", "ncnn")}


def small_model(family="yolov8"):
    torch.manual_seed(0)
    model = build_model(ModelConfig(family, 3, (96, 96)), ("a", "b", "c")).eval()
    return model


def images(count=3, size=(80, 120)):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(*size, 3), dtype=np.uint8) for _ in range(count)]


def local_target(backend, precision="fp32", **extra):
    return parse_target(f"test-{backend}", {"description": "test", "backend": backend, "precision": precision,
                                            "precisions": ["fp32", "fp16"], **extra}, "test.toml")


@pytest.mark.parametrize("backend", [pytest.param("openvino", marks=needs["openvino"]),
                                     pytest.param("ncnn", marks=needs["ncnn"])])
def test_converted_artifact_is_self_contained_and_matches_onnxruntime(backend, tmp_path):
    model = small_model()
    lines = []
    manifest = convert(model, local_target(backend), tmp_path / "art", progress=lines.append)
    assert {(m.backend, m.precision) for m in manifest.models} == {("onnxruntime", "fp32"), (backend, "fp32")}
    assert manifest.info["parity"][f"{backend}/fp32"]["checked"]
    assert manifest.info["parity"][f"{backend}/fp32"]["max_rel"] <= 1e-4
    assert any(line.startswith("pass") for line in lines) and any(line.startswith("build") for line in lines)
    # move it away from everything it was made from
    moved = shutil.move(str(tmp_path / "art"), str(tmp_path / "elsewhere"))
    del model
    with Detector.load(moved, backend="onnxruntime", conf_threshold=0.3) as baseline, \
            Detector.load(moved, backend=backend, conf_threshold=0.3) as candidate:
        expected = baseline.detect_batch(images())
        actual = candidate.detect_batch(images())
    stats = compare_detections(expected, actual, iou_threshold=0.99)
    assert stats.matched == stats.reference_count == stats.candidate_count
    assert stats.max_score_delta <= 1e-3


def test_tensorrt_target_writes_the_onnx_and_the_on_device_build_command(tmp_path, capsys):
    from edgekit.models.loading import save_checkpoint

    checkpoint = save_checkpoint(small_model(), tmp_path / "m.pt")
    assert main(["convert", str(checkpoint), "--target", "jetson-orin-nano", "-o", str(tmp_path / "jetson")]) == 0
    out = capsys.readouterr().out
    manifest = read_manifest(tmp_path / "jetson")
    entry = manifest.find("tensorrt", "fp16")
    assert entry.options["build_command"].startswith("trtexec --onnx=model.onnx --saveEngine=model_fp16.engine --fp16")
    # one trtexec command per TensorRT version the script can meet (8.5, 8.6, 10.x, 11.x), each with the workspace
    assert (tmp_path / "jetson" / "tensorrt_build.sh").read_text().count("--memPoolSize=workspace:2048") \
        == len(entry.options["builds"]) == 4
    assert "build the engine with" in out
    # the checkpoint's own size wins over the profile's 640, and the conflict is printed
    assert manifest.spec.input_size == small_model().spec.input_size != (640, 640)
    assert "suggests 640x640; keeping the checkpoint's own" in out


def test_failed_backend_build_leaves_no_artifact(tmp_path, monkeypatch):
    """A backend build that fails its check (here: the real OpenVINO model against a tolerance no output meets;
    an absent device no longer fails, it is built and not run) leaves nothing behind."""
    import edgekit.convert.chain as chain

    if not get_runner_class("openvino").is_available():
        pytest.skip("openvino not installed")
    check = chain._check_backend

    def impossible_tolerance(*args, **kwargs):  # for the backend build's check only, not the export's
        with monkeypatch.context() as patch:
            patch.setattr(chain, "TENSOR_TOLERANCE", {**chain.TENSOR_TOLERANCE, "fp32": -1.0})
            return check(*args, **kwargs)

    monkeypatch.setattr(chain, "_check_backend", impossible_tolerance)
    with pytest.raises(ConversionError, match="build openvino/fp32: output differs"):
        convert(small_model(), local_target("openvino"), tmp_path / "art")
    assert os.listdir(tmp_path) == []


def test_precision_outside_the_target_is_refused(tmp_path):
    with pytest.raises(ConversionError, match="supports fp32, fp16"):
        convert(small_model(), local_target("openvino"), tmp_path / "a", precision="bf16")
    assert os.listdir(tmp_path) == []


def test_convert_cli_bad_input(tmp_path, capsys):
    from edgekit.models.loading import save_checkpoint

    checkpoint = save_checkpoint(small_model(), tmp_path / "m.pt")
    assert main(["convert", str(checkpoint), "--target", "raspbery-pi-5"]) == 2
    assert "did you mean 'raspberry-pi-5'" in capsys.readouterr().err
    assert main(["convert", str(checkpoint), "--target", "intel-cpu", "--skip", "fold-bn"]) == 2
    assert "did you mean 'fold_bn'" in capsys.readouterr().err


def test_missing_backend_library_names_the_pip_extra():
    class FutureRunner(Runner):  # a backend whose library is not installed here
        name = "future"
        required_modules = ("edgekit_test_no_such_backend_library",)
        pip_extra = "future"

        def input_specs(self):
            return []

        def output_names(self):
            return []

        def _activate(self):
            raise AssertionError("never reached")

        def _infer(self, feeds):
            return {}

    assert not FutureRunner.is_available()
    with pytest.raises(BackendUnavailableError, match=r"pip install 'edgekit\[future\]'"):
        FutureRunner("model.bin").activate()


def test_target_error_for_unknown_name():
    with pytest.raises(TargetError):
        load_target("no-such-board")


def test_skip_of_a_pass_that_does_not_run_is_refused(tmp_path, capsys):
    """--skip ncnn_focus for an ONNX Runtime target, a module pass on an ONNX input, anything with --no-passes:
    accepted with exit 0, nothing skipped and nothing recorded (a hostile review). One error line, nothing written."""
    from edgekit.models.loading import save_checkpoint
    from tests.helpers import one_error_line, run_cli

    checkpoint = save_checkpoint(small_model(), tmp_path / "m.pt")
    assert main(["export", str(checkpoint), "-o", str(tmp_path / "exported")]) == 0
    onnx_file = tmp_path / "exported" / "model.onnx"
    cases = [
        (["convert", checkpoint, "--target", "onnxruntime-cpu", "--skip", "ncnn_focus"],
         "--skip ncnn_focus: the pass runs in the ncnn stage, which this export for onnxruntime does not run"),
        (["export", checkpoint, "--no-passes", "--skip", "fold_bn"],
         "--skip fold_bn: the pass runs in the module stage, which this export with --no-passes does not run"),
        (["convert", onnx_file, "--target", "onnxruntime-cpu", "--skip", "fold_bn"],
         "--skip fold_bn: the pass runs in the module stage, which converting an ONNX file does not run"),
    ]
    for args, fragment in cases:
        code, _, err = run_cli([*args, "-o", tmp_path / "out"], capsys)
        one_error_line(code, err, fragment)
        assert not (tmp_path / "out").exists()


def test_a_target_whose_device_is_absent_is_built_and_says_it_was_not_run(tmp_path, capsys):
    """intel-igpu on a CPU-only host: the OpenVINO IR does not depend on the device, but convert failed at its
    check ("device 'GPU' is not available") and `targets` said the target runs here (a hostile review). The build
    is written, not run, as a TensorRT engine's ONNX is; the manifest says so."""
    from edgekit.models.loading import save_checkpoint
    from edgekit.runtime.artifact import read_manifest
    from tests.helpers import run_cli, skip_unless_backends

    skip_unless_backends("openvino")
    import openvino as ov

    if any(device.startswith("GPU") for device in ov.Core().available_devices):
        pytest.skip("this machine has an OpenVINO GPU device")
    checkpoint = save_checkpoint(small_model(), tmp_path / "m.pt")
    code, stdout, err = run_cli(["convert", checkpoint, "--target", "intel-igpu", "-o", tmp_path / "igpu"], capsys)
    assert code == 0, err
    assert "build   openvino/fp16: built; not run here (openvino: device 'GPU' is not available" in stdout
    manifest = read_manifest(tmp_path / "igpu")
    assert manifest.info["parity"]["openvino/fp16"]["checked"] is False
    assert (tmp_path / "igpu" / "openvino" / "model_f16.xml").is_file()
    code, stdout, _ = run_cli(["targets"], capsys)
    assert next(line for line in stdout.splitlines() if line.startswith("intel-igpu")).split()[4] == "no"
