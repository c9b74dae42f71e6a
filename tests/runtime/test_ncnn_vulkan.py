"""A target profile's ``use_vulkan`` reaches the NCNN runner: Vulkan compute where ncnn finds a GPU; where it does
not, one ``note:`` line and the CPU (the converter host, which checks every build by running it, has no Vulkan)."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_use_vulkan_without_a_vulkan_gpu_notes_it_and_runs_on_the_cpu(tmp_path, capsys):
    if gpu_count() > 0:
        pytest.skip("ncnn finds a Vulkan GPU here")
    param, weights = tmp_path / "model.ncnn.param", tmp_path / "model.ncnn.bin"
    param.write_text("7767517\n1 1\nInput in0 0 1 in0 0=4 1=4 2=3\n")  # the network is its input
    weights.write_bytes(b"")
    runner = NcnnRunner.from_artifact(param, {"input_name": "images", "input_blob": "in0",
                                              "input_shape": [1, 3, 4, 4], "output_blobs": {"out": "in0"},
                                              "use_vulkan": True})
    image = np.arange(48, dtype=np.float32).reshape(1, 3, 4, 4)
    with runner:
        out = runner.infer({"images": image})["out"]
        assert runner.use_vulkan and not runner.vulkan_active
    np.testing.assert_array_equal(out.reshape(image.shape), image)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == ["note: model.ncnn.param: the artifact asks for ncnn on a Vulkan GPU (its target's use_vulkan = "
                     "true), but ncnn finds no Vulkan GPU here; running on the CPU"]
