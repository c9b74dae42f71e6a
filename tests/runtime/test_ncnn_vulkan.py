"""A target profile's ``use_vulkan`` reaches the NCNN runner: Vulkan compute where ncnn finds a GPU, and one clear
error (never a silent CPU run) where it does not."""

from __future__ import annotations

import pytest

from edgekit.errors import BackendUnavailableError
from edgekit.runtime.backends.ncnn import NcnnRunner

pytestmark = pytest.mark.skipif(not NcnnRunner.is_available(), reason="ncnn not installed")
OPTIONS = {"input_name": "images", "input_blob": "in0", "output_blobs": {"out": "out0"}}


def gpu_count() -> int:
    import ncnn

    return ncnn.get_gpu_count() if hasattr(ncnn, "get_gpu_count") else 0


def test_use_vulkan_comes_from_the_manifest_options(tmp_path):
    param = tmp_path / "model.ncnn.param"
    assert NcnnRunner.from_artifact(param, {**OPTIONS, "use_vulkan": True}).use_vulkan
    assert not NcnnRunner.from_artifact(param, OPTIONS).use_vulkan


def test_use_vulkan_without_a_vulkan_gpu_is_one_clear_error(tmp_path):
    if gpu_count() > 0:
        pytest.skip("ncnn finds a Vulkan GPU here")
    param, weights = tmp_path / "model.ncnn.param", tmp_path / "model.ncnn.bin"
    param.write_text("7767517\n0 0\n")
    weights.write_bytes(b"")
    runner = NcnnRunner.from_artifact(param, {**OPTIONS, "use_vulkan": True})
    with pytest.raises(BackendUnavailableError, match="use_vulkan = true.*ncnn finds no Vulkan GPU here") as error:
        runner.activate()
    assert "\n" not in str(error.value)
