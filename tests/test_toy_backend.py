"""A backend is three files: a Runner, a BackendBuilder and a target profile (tests/toy_backend/), registered
through the public registration points and nothing else in edgekit edited. It converts and detects like a
built-in backend: checked against PyTorch at conversion, its tools and the profile's threads and batch range in
the artifact, its typed profile options enforced."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.convert.builders import register_builder, unregister_builder
from edgekit.convert.chain import convert
from edgekit.models import ModelConfig, build_model
from edgekit.runtime.artifact import READY, read_manifest
from edgekit.runtime.backends import register_runner, unregister_runner
from edgekit.runtime.backends.onnxruntime import OnnxRuntimeRunner
from edgekit.runtime.detector import Detector
from edgekit.targets import TargetError, load_target

PROFILE = Path(__file__).parent / "toy_backend" / "toy-cpu.toml"
pytestmark = pytest.mark.skipif(not OnnxRuntimeRunner.is_available(), reason="onnxruntime not installed")


@pytest.fixture
def toy():
    register_runner("toy", "tests.toy_backend.runner:ToyRunner")
    register_builder("toy", "tests.toy_backend.builder:ToyBuilder")
    yield
    unregister_builder("toy")
    unregister_runner("toy")


def test_a_toy_backend_converts_and_detects(toy, tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig("yolov8", 3, (96, 96)), ("a", "b", "c")).eval()
    lines: list[str] = []
    # no module/ONNX passes: they are not what is shown here (and cost most of the time)
    manifest = convert(model, load_target(PROFILE), tmp_path / "toy", no_passes=True, progress=lines.append)
    entry = manifest.find("toy", "fp32")
    assert entry.file == "toy/model.toy" and entry.options == {"graph_optimization": False}
    assert entry.status(tmp_path / "toy") == READY and entry.build == {"batch_range": [1, 2, 4]}
    assert manifest.info["parity"]["toy/fp32"]["checked"] and manifest.info["parity"]["toy/fp32"]["max_rel"] < 1e-4
    assert "onnxruntime" in manifest.info["tools"] and any(line.startswith("build   toy/fp32") for line in lines)
    assert read_manifest(tmp_path / "toy").runtime == {"threads": 2}
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, size=(80, 120, 3), dtype=np.uint8) for _ in range(3)]
    with Detector.load(tmp_path / "toy", backend="toy", conf_threshold=0.01) as toy_detector, \
            Detector.load(tmp_path / "toy", backend="onnxruntime", conf_threshold=0.01) as reference:
        assert toy_detector.runner.threads == 2                     # the profile's threads reached the runner
        assert toy_detector.runner.input_specs()[0].shape[0] is None  # max_batch 4: a dynamic batch axis
        found = toy_detector.detect_batch(frames)
        expected = reference.detect_batch(frames)
    assert sum(len(d.boxes) for d in expected) > 0
    for got, want in zip(found, expected):  # the same graph: the same detections
        np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-3)
        np.testing.assert_array_equal(got.labels, want.labels)


def test_the_toy_builders_profile_options_are_typed(toy, tmp_path):
    text = PROFILE.read_text()
    for edit, fragment in ((("graph_optimization = false", "graph_optimisation = false"),
                            "unknown key 'backend_options.graph_optimisation'; did you mean "
                            "'backend_options.graph_optimization'"),
                           (("graph_optimization = false", 'graph_optimization = "no"'),
                            "backend_options.graph_optimization must be true or false")):
        bad = tmp_path / "toy-bad.toml"
        bad.write_text(text.replace(*edit))
        with pytest.raises(TargetError, match=fragment):
            load_target(bad)


def test_without_registration_the_profile_names_an_unknown_backend():
    with pytest.raises(TargetError, match="backend 'toy' is not one of"):
        load_target(PROFILE)
