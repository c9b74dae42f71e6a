import json
import os
import shutil

import numpy as np
import pytest

from edgekit.convert.artifact import ArtifactWriter
from edgekit.convert.export import embed_spec
from edgekit.errors import EdgekitError, ModelFileError, OutputError
from edgekit.runtime.artifact import (
    AWAITS_DEVICE_BUILD,
    MANIFEST_NAME,
    READY,
    ModelEntry,
    read_manifest,
    spec_from_onnx,
)
from edgekit.runtime.detector import Detector
from tests.onnx_graphs import fastestdet_like_graph, fastestdet_like_spec, save


def write_artifact(out, spec=None):
    spec = spec or fastestdet_like_spec()
    with ArtifactWriter(out) as writer:
        save(fastestdet_like_graph(spec), writer.path("model.onnx"))
        return writer.commit(spec, [ModelEntry("onnxruntime", "fp32", "model.onnx")], {"producer": "test"})


def image(seed=0, shape=(48, 80, 3)):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_artifact_round_trip_and_self_contained(tmp_path):
    manifest = write_artifact(tmp_path / "art")
    assert read_manifest(tmp_path / "art").files == manifest.files
    # copy elsewhere: nothing outside the folder is needed
    moved = shutil.copytree(tmp_path / "art", tmp_path / "elsewhere" / "copy")
    shutil.rmtree(tmp_path / "art")
    with Detector.load(moved) as detector:
        result = detector.detect(image())
    assert result.boxes.dtype == np.float32 and result.labels.dtype == np.int64
    assert len(result) > 0
    # no temporary folders left next to the artifact
    assert sorted(os.listdir(tmp_path / "elsewhere")) == ["copy"]


def test_tampered_file_is_refused(tmp_path):
    write_artifact(tmp_path / "art")
    with open(tmp_path / "art" / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelFileError, match="sha256 mismatch"):
        Detector.load(tmp_path / "art")


def test_edited_manifest_spec_is_refused(tmp_path):
    """edgekit.json is not hashed: two class names swapped in it ran the untouched model under the other names and
    validate scored it (0.347 mAP for 0.405) with exit 0. The spec embedded in the hashed model.onnx is the witness."""
    spec = fastestdet_like_spec(num_classes=3)
    spec = spec.__class__.from_dict({**spec.to_dict(), "class_names": ["cat", "dog", "bird"]})
    graph = fastestdet_like_graph(spec)
    embed_spec(graph, spec)  # as every export does
    with ArtifactWriter(tmp_path / "art") as writer:
        save(graph, writer.path("model.onnx"))
        writer.commit(spec, [ModelEntry("onnxruntime", "fp32", "model.onnx")], {"producer": "test"})
    with Detector.load(tmp_path / "art") as detector:
        assert detector.spec.class_names == ("cat", "dog", "bird")
    manifest_path = tmp_path / "art" / MANIFEST_NAME
    data = json.loads(manifest_path.read_text())
    data["spec"]["class_names"] = ["dog", "cat", "bird"]
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(ModelFileError) as info:
        Detector.load(tmp_path / "art")
    message = str(info.value)
    assert str(manifest_path) in message and "model.onnx was built with" in message
    assert "class_names: [0] manifest 'dog', model 'cat'" in message and "edited after conversion" in message
    data["spec"]["class_names"] = ["cat", "dog", "bird"]
    data["spec"]["input_size"] = [spec.input_size[0] * 2, spec.input_size[1]]
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match=rf"input_size: \[0\] manifest '{spec.input_size[0] * 2}'"):
        Detector.load(tmp_path / "art")


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), ArtifactWriter(tmp_path / "art") as writer:
        writer.path("model.onnx").write_bytes(b"partial")
        raise RuntimeError("conversion failed half-way")
    assert os.listdir(tmp_path) == []


def test_overwrite_replaces_an_old_artifact_but_not_a_foreign_folder(tmp_path):
    write_artifact(tmp_path / "art")
    write_artifact(tmp_path / "art")
    assert sorted(os.listdir(tmp_path)) == ["art"]
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(OutputError, match="not an edgekit artifact"):
        write_artifact(foreign)
    assert os.listdir(foreign) == ["holiday.jpg"]


def test_unwritable_output_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user that can write anywhere (root)")
        with pytest.raises(OutputError, match="cannot write"):
            write_artifact(locked / "art")
    finally:
        locked.chmod(0o700)


def test_output_below_a_file_cannot_be_created(tmp_path):
    # works as root too: no permission bits can make a regular file into a folder
    (tmp_path / "blocker").write_text("x")
    with pytest.raises(OutputError, match="cannot write the artifact there"):
        write_artifact(tmp_path / "blocker" / "sub" / "art")
    assert os.listdir(tmp_path) == ["blocker"]


def test_file_as_output_path(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        write_artifact(tmp_path / "file")


@pytest.mark.parametrize("mutate, fragment", [
    (lambda d: d.update(format="other"), "not an edgekit manifest"),
    (lambda d: d.update(version=7), "version 7"),
    (lambda d: d.pop("models"), "malformed"),
    (lambda d: d["files"].pop("model.onnx"), "has no sha256"),
    (lambda d: d["spec"].pop("head"), "missing required field"),
])
def test_broken_manifests(tmp_path, mutate, fragment):
    write_artifact(tmp_path / "art")
    path = tmp_path / "art" / MANIFEST_NAME
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(EdgekitError, match=fragment) as info:
        read_manifest(tmp_path / "art")
    assert str(tmp_path / "art" / MANIFEST_NAME) in str(info.value)


def test_manifest_not_json_and_missing(tmp_path):
    write_artifact(tmp_path / "art")
    (tmp_path / "art" / MANIFEST_NAME).write_text("{nope")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        read_manifest(tmp_path / "art")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="no edgekit.json"):
        Detector.load(tmp_path / "empty")
    with pytest.raises(ModelFileError, match="not found"):
        read_manifest(tmp_path / "missing")


def test_unknown_backend_or_precision_in_artifact(tmp_path):
    write_artifact(tmp_path / "art")
    with pytest.raises(ModelFileError, match="no model for onnxruntime/int8; it contains: onnxruntime/fp32"):
        Detector.load(tmp_path / "art", precision="int8")


def test_spec_from_onnx_errors(tmp_path):
    spec = fastestdet_like_spec()
    plain = save(fastestdet_like_graph(spec, embed_spec=False), tmp_path / "plain.onnx")
    with pytest.raises(ModelFileError, match="no edgekit spec"):
        spec_from_onnx(plain)
    embedded = save(fastestdet_like_graph(spec), tmp_path / "embedded.onnx")
    assert spec_from_onnx(embedded) == spec


def test_an_entry_built_on_the_device_waits_for_its_engine(tmp_path):
    plain = ModelEntry("onnxruntime", "fp32", "model.onnx")
    device = ModelEntry("tensorrt", "fp16", "model.onnx",
                        {"engine": "model_fp16.engine", "built_on_device": True, "build_script": "tensorrt_build.sh"})
    assert plain.status(tmp_path) == READY and plain.payload_files() == ["model.onnx"]
    assert device.status(tmp_path) == AWAITS_DEVICE_BUILD         # validate / bench skip it
    assert device.payload_files() == ["model_fp16.engine"] and "./tensorrt_build.sh" in device.build_hint()
    (tmp_path / "model_fp16.engine").write_bytes(b"engine")
    assert device.status(tmp_path) == READY                       # built by its script: it runs
    nameless = ModelEntry("tensorrt", "fp16", "model.onnx", {"built_on_device": True})
    assert nameless.status(tmp_path) == AWAITS_DEVICE_BUILD       # no engine named: nothing can run
