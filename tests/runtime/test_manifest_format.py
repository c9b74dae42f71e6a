"""The manifest keeps what the device runs with (``runtime``, each model's ``options``) apart from how the artifact
was made (each model's ``build``, ``info``); artifacts written before that split (format version 1) still load."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.errors import ModelFileError
from edgekit.runtime.artifact import AWAITS_DEVICE_BUILD, MANIFEST_NAME, MANIFEST_VERSION, READY, read_manifest
from edgekit.runtime.backends.onnxruntime import OnnxRuntimeRunner
from edgekit.runtime.detector import Detector
from tests.helpers import fastestdet_like_artifact

ort_only = pytest.mark.skipif(not OnnxRuntimeRunner.is_available(), reason="onnxruntime not installed")


def edit_manifest(artifact, change) -> None:
    path = artifact / MANIFEST_NAME
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def version_1(data: dict) -> None:
    """What edgekit wrote before the split: no ``runtime``, provenance among the runtime options, and a TensorRT
    entry whose engine is built on the device."""
    data["version"] = 1
    del data["runtime"]
    data["models"][0]["options"] = {"parity": {"reference": "onnxruntime/fp32", "max_rel": 0.0},
                                    "converter": {"tool": "pnnx", "route": "onnx"}, "qdq_placement": "onnxruntime"}
    data["models"].append({"backend": "tensorrt", "precision": "fp16", "file": "model.onnx",
                           "options": {"engine": "model_fp16.engine", "build_script": "tensorrt_build.sh",
                                       "build_command": "trtexec --onnx=model.onnx --fp16", "built_on_device": True}})


@ort_only
def test_a_version_1_manifest_loads_with_its_provenance_out_of_the_runtime_options(tmp_path):
    artifact = fastestdet_like_artifact(tmp_path / "old")
    edit_manifest(artifact, version_1)
    manifest = read_manifest(artifact)
    ort, trt = manifest.models
    assert ort.options == {} and set(ort.build) == {"parity", "converter", "qdq_placement"}
    assert manifest.runtime == {} and manifest.threads == 0
    assert trt.builds_on_device and trt.status(artifact) == AWAITS_DEVICE_BUILD
    assert trt.payload_files() == ["model_fp16.engine"] and "trtexec --onnx=model.onnx --fp16" in trt.build_hint()
    image = np.zeros((96, 128, 3), np.uint8)
    with Detector.load(artifact) as detector:          # and it runs
        assert len(detector.detect(image).boxes) >= 0
        assert detector.runner.threads == 0


@ort_only
def test_the_current_format_writes_runtime_and_build_apart(tmp_path):
    artifact = fastestdet_like_artifact(tmp_path / "new")
    data = json.loads((artifact / MANIFEST_NAME).read_text())
    assert data["version"] == MANIFEST_VERSION and data["runtime"] == {}
    assert read_manifest(artifact).models[0].status(artifact) == READY


@ort_only
def test_the_artifacts_threads_reach_the_runner_unless_the_caller_overrides_them(tmp_path):
    artifact = fastestdet_like_artifact(tmp_path / "a")
    edit_manifest(artifact, lambda data: data["runtime"].update(threads=3))
    assert read_manifest(artifact).threads == 3
    with Detector.load(artifact) as detector:
        # the oracle: the session onnxruntime actually made
        assert detector.runner._session.get_session_options().intra_op_num_threads == 3
    with Detector.load(artifact, threads=1) as detector:
        assert detector.runner._session.get_session_options().intra_op_num_threads == 1


@pytest.mark.parametrize("runtime, fragment", [
    ({"thread": 2}, "unknown 'runtime' key 'thread'"),
    ({"threads": -1}, "runtime.threads must be a non-negative integer"),
    ({"threads": True}, "runtime.threads must be a non-negative integer"),
    ([2], "'runtime' must be an object"),
])
def test_a_bad_runtime_section_is_refused_naming_the_key(tmp_path, runtime, fragment):
    artifact = fastestdet_like_artifact(tmp_path / "a")
    edit_manifest(artifact, lambda data: data.update(runtime=runtime))
    with pytest.raises(ModelFileError, match=fragment):
        read_manifest(artifact)


@ort_only
def test_inspect_shows_the_runtime_defaults_and_what_awaits_a_device_build(tmp_path, capsys):
    from edgekit.cli import main

    artifact = fastestdet_like_artifact(tmp_path / "old")
    edit_manifest(artifact, version_1)
    edit_manifest(artifact, lambda data: data.update(runtime={"threads": 4}))
    assert main(["inspect", str(artifact)]) == 0
    out = capsys.readouterr().out
    assert "runtime: {\"threads\": 4}" in out
    assert "model.onnx  (awaits device build: ./tensorrt_build.sh (it runs: trtexec --onnx=model.onnx --fp16))" in out
