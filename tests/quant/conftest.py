"""Fixtures shared by the quant tests (exporting a model is the slow part: once per session)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_yolov8_calibrated(tmp_path_factory):
    """A width-0.125 yolov8 at 64x64 (C2f: Split -> Add -> Concat, SPPF: MaxPool -> Concat, FPN: Resize), exported
    and minmax-calibrated on 4 random images: (fp32 model.onnx path, CalibrationResult, the 4 [1,3,64,64] tensors)."""
    import torch

    from edgekit.convert.chain import export_artifact
    from edgekit.models import ModelConfig, build_model
    from edgekit.quant.collect import calibrate

    torch.manual_seed(0)
    model = build_model(ModelConfig("yolov8", num_classes=3, input_size=(64, 64), width=0.125), ["a", "b", "c"])
    out = tmp_path_factory.mktemp("tiny-yolov8")
    export_artifact(model, out)
    rng = np.random.default_rng(0)
    tensors = [rng.random((1, 3, 64, 64), dtype=np.float32) for _ in range(4)]
    return out / "model.onnx", calibrate(out / "model.onnx", lambda: tensors, method="minmax"), tensors
