"""Reproducible artifacts: the same checkpoint, target and options give byte-identical model files (issue 13).

A user who re-converts to check a result, or a CI that rebuilds an artifact, must get the same files and so the
same sha256 in ``edgekit.json``; only provenance (timings) may differ. Checked for every backend built here, and
for int8, whose calibration must not depend on anything but its images.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.convert.chain import convert
from edgekit.models.loading import load_checkpoint
from edgekit.quant.pipeline import Int8Options
from edgekit.runtime.artifact import read_manifest
from edgekit.runtime.backends import get_runner_class

ZOO = Path(__file__).resolve().parents[2] / "edgekit" / "zoo"


@pytest.mark.parametrize("target, precision, backend", [
    ("intel-cpu", "fp32", "openvino"),
    ("intel-cpu", "fp16", "openvino"),
    ("raspberry-pi-5", "fp16", "ncnn"),
    ("onnxruntime-cpu", "int8", "onnxruntime"),
])
def test_converting_twice_gives_byte_identical_model_files(tmp_path, target, precision, backend):
    if not get_runner_class(backend).is_available():
        pytest.skip(f"{backend} is not installed")
    model = load_checkpoint(ZOO / "yolov8.pt")
    int8 = Int8Options(images=16) if precision == "int8" else None
    first = read_manifest(convert(model, target, tmp_path / "a", precision=precision, int8=int8) and tmp_path / "a")
    second = read_manifest(convert(model, target, tmp_path / "b", precision=precision, int8=int8) and tmp_path / "b")
    assert first.files == second.files  # relative name -> sha256, every file of the artifact
    assert any(entry.backend == backend and entry.precision == precision for entry in first.models)
    for name in first.files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
