"""load_checkpoint takes the checkpoints users bring without flags, and says what it could not take."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.cli import main
from edgekit.errors import ModelFileError
from edgekit.models.loading import load_checkpoint
from tests.models.test_yolox_official import _recorded, _run, _training_checkpoint, oracle  # noqa: F401 - fixture


def test_a_yolox_training_checkpoint_loads_without_flags(oracle, tmp_path):  # noqa: F811 - the fixture
    weights, recorded = _recorded(oracle, "yolox_nano")
    path = tmp_path / "yolox_nano.pth"
    torch.save(_training_checkpoint(weights), path)
    model = load_checkpoint(path)
    assert model.spec.family == "yolox" and model.spec.resize.align == "top_left"
    assert model.input_size_from_checkpoint is False  # a .pth does not record it: a target profile may set it
    outputs = _run(model, recorded["input"])
    np.testing.assert_allclose(outputs[0], recorded["raw_0"], rtol=1e-4, atol=1e-4)

    renamed = load_checkpoint(path, class_names=[f"thing{i}" for i in range(model.spec.num_classes)])
    assert renamed.spec.class_names[0] == "thing0"
    with pytest.raises(ModelFileError, match="--names lists 3 classes"):
        load_checkpoint(path, class_names=["a", "b", "c"])


def test_an_onnx_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07")
    with pytest.raises(ModelFileError, match="is an ONNX file"):
        load_checkpoint(path)


def test_a_module_pickle_without_a_model_is_refused_in_one_line(tmp_path, capsys):
    # torch.save of a dict holding a plain nn.Module (importable, but not an Ultralytics/YOLOv5 model object)
    path = tmp_path / "odd.pt"
    torch.save({"something": nn.Conv2d(3, 4, 3)}, path)
    with pytest.raises(ModelFileError, match="no model under 'model' or 'ema'"):
        load_checkpoint(path)
    assert main(["export", str(path), "-o", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no model" in err[0]
    assert not (tmp_path / "out").exists()


def test_validate_scores_a_real_checkpoint_as_edgekit_imports_it(tmp_path, capsys):
    """`edgekit validate best.pt --data …`: the user's first check that the import scores what their trainer did."""
    import json

    from tests.conftest import SHARED_DIR

    checkpoint = SHARED_DIR / "models" / "ultralytics" / "yolov5n.pt"
    dataset = SHARED_DIR / "datasets" / "coco8"
    if not checkpoint.is_file() or not dataset.is_dir():
        pytest.skip("../shared is not present")
    out = tmp_path / "v.json"
    assert main(["validate", str(checkpoint), "--data", str(dataset), "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [run["name"] for run in runs] == ["torch/fp32"]
    # a real COCO yolov5n finds most of coco8's objects; a wrong import (class order, anchors, letterbox) scores ~0
    assert runs[0]["map_50"] > 0.6
    assert main(["validate", str(checkpoint), "--data", str(dataset), "--report", str(tmp_path / "r")]) != 0
    assert "--report needs an artifact" in capsys.readouterr().err


@pytest.mark.parametrize("args, fragment", [
    (["--backend", "openvino"], "--backend openvino runs a converted model"),
    (["--precision", "int8"], "a checkpoint runs in fp32"),
    (["--family", "yolov8"], "describes itself: drop --family yolov8"),
    (["--trust-upstream", "no_such_package_xyz"], "no such package is installed"),
    (["--trust-upstream", "../evil"], "no such package is installed"),
    (["--end2end"], "has no one-to-one branch"),
])
def test_flags_that_do_not_apply_to_a_real_checkpoint_are_refused_not_ignored(args, fragment, capsys):
    """Found by a hostile pass: each of these ran (rc 0) and silently ignored the flag, or gave a false alarm."""
    from tests.conftest import SHARED_DIR

    checkpoint = SHARED_DIR / "models" / "ultralytics" / "yolov5n.pt"
    if not checkpoint.is_file():
        pytest.skip("../shared is not present")
    image = sorted((SHARED_DIR / "datasets" / "coco8" / "images" / "val").glob("*.jpg"))[0]
    assert main(["detect", str(checkpoint), str(image), *args]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err


def test_flags_that_only_describe_a_checkpoint_are_refused_for_an_onnx_file(tmp_path, capsys):
    from tests.conftest import SHARED_DIR

    onnx_file = SHARED_DIR / "models" / "ultralytics" / "yolov8n-coco8.onnx"
    if not onnx_file.is_file():
        pytest.skip("../shared is not present")
    image = sorted((SHARED_DIR / "datasets" / "coco8" / "images" / "val").glob("*.jpg"))[0]
    for args, fragment in ((["--end2end"], "apply when loading a PyTorch checkpoint"),
                           (["--precision", "int8"], "runs as it is (fp32)")):
        assert main(["detect", str(onnx_file), str(image), *args]) == 2
        assert fragment in capsys.readouterr().err


def test_validate_refuses_a_reference_that_is_another_model(tmp_path, capsys):
    """A reference checkpoint of another model (or head mode) made up 'drift' with rc 0; now it is refused."""
    from edgekit.errors import EdgekitError
    from edgekit.validate.run import reference_detector
    from tests.conftest import SHARED_DIR

    folder = SHARED_DIR / "models" / "ultralytics"
    if not folder.is_dir():
        pytest.skip("../shared is not present")
    v8 = load_checkpoint(folder / "yolov8n-coco8.pt")
    v26 = load_checkpoint(folder / "yolo26n-coco8.pt")
    v26_e2e = load_checkpoint(folder / "yolo26n-coco8.pt", end2end=True)
    with pytest.raises(EdgekitError, match="not the same model"):
        reference_detector(v26, v8.spec)
    with pytest.raises(EdgekitError, match="--end2end"):
        reference_detector(v26, v26_e2e.spec)
    reference_detector(v26_e2e, v26_e2e.spec)  # the same model and head: accepted
    reference_detector(v8, v8.spec)


def test_the_reference_of_an_upstream_onnx_export_is_its_own_checkpoint(capsys):
    """`validate yolov8n.onnx --reference yolov8n.pt`: the graph decodes in ONNX, the checkpoint's raw head is decoded
    by edgekit; both must give the same detections (this combination used to fail on the head's output count)."""
    from edgekit.runtime.detector import Detector
    from edgekit.runtime.onnx_import import spec_from_third_party_onnx
    from edgekit.validate.run import map_postprocess, reference_detector
    from tests.conftest import SHARED_DIR

    folder = SHARED_DIR / "models" / "ultralytics"
    if not folder.is_dir():
        pytest.skip("../shared is not present")
    spec = spec_from_third_party_onnx(folder / "yolov8n-coco8.onnx")
    image = SHARED_DIR / "datasets" / "coco8" / "images" / "val" / "000000000049.jpg"
    expected = reference_detector(load_checkpoint(folder / "yolov8n-coco8.pt"), spec).detect(image)
    with Detector.from_third_party_onnx(folder / "yolov8n-coco8.onnx", spec) as detector:
        detector.postprocess_spec = map_postprocess(spec)
        actual = detector.detect(image)
    assert len(expected) == len(actual) > 5
    np.testing.assert_allclose(actual.boxes, expected.boxes, atol=1e-3)
    np.testing.assert_allclose(actual.scores, expected.scores, atol=1e-5)
    np.testing.assert_array_equal(actual.labels, expected.labels)


@pytest.mark.parametrize("name", ["best.onnx", "best", "best.pth.tar"])
def test_a_renamed_checkpoint_is_read_by_its_content_not_its_suffix(tmp_path, name, capsys):
    import shutil

    from tests.conftest import SHARED_DIR

    source = SHARED_DIR / "models" / "ultralytics" / "yolov8n-coco8.pt"
    if not source.is_file():
        pytest.skip("../shared is not present")
    renamed = tmp_path / name
    shutil.copy(source, renamed)
    image = SHARED_DIR / "datasets" / "coco8" / "images" / "val" / "000000000049.jpg"
    assert main(["detect", str(renamed), str(image)]) == 0
    assert "6 detections: person 0.47" in capsys.readouterr().out
