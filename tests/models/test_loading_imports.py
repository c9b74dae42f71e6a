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
