"""--drift-budget ranks and judges layers on the target backend's int8 arithmetic.

Each builder names the Q/DQ placement that reproduces its int8 arithmetic in ONNX Runtime; convert ranks
and judges layers with the target backend's (ncnn: symmetric int8 inputs, as its int8 convolutions take).
yolov5n at 640 px, ranked with the ncnn placement: the two convs reading model.1's output ([-0.28, 76]: a
one-sided range that symmetric int8 covers with 7 bits) come first, then model.1 and model.0.
"""

from __future__ import annotations

import pytest

from edgekit.convert.builders import builder_names, get_builder
from edgekit.quant.placement import QdqPlacement
from edgekit.quant.qdq import get_placement


@pytest.mark.parametrize("backend", builder_names())
def test_every_builder_declares_its_int8_placement(backend):
    assert isinstance(get_builder(backend).qdq_placement, QdqPlacement)
    assert get_placement(backend) is get_builder(backend).qdq_placement


def test_ncnn_is_judged_with_symmetric_int8_inputs_and_float_outputs():
    placement = get_builder("ncnn").qdq_placement
    # ncnn's int8 Convolution: int8 input q = round(x * scale) in [-127, 127], int8 weights, float output
    assert placement.activation_type == "int8" and not placement.quantize_outputs and not placement.quantize_bias
    assert get_builder("openvino").int8_placement == "openvino"
    assert get_builder("onnxruntime").int8_placement == "onnxruntime"


def test_convert_ranks_layers_with_the_target_backends_placement(monkeypatch, tmp_path):
    import edgekit.quant.pipeline as pipeline
    from edgekit.convert.chain import convert
    from edgekit.quant.pipeline import Int8Options
    from tests.quant.test_collect_and_partial import tiny_model, write_images

    seen = []

    class Stop(Exception):
        pass

    def spy(*args, placement, **kwargs):
        seen.append(placement)
        raise Stop

    monkeypatch.setattr(pipeline, "calibrate_artifact", spy)
    calib = write_images(tmp_path / "calib", 4)
    for target in ("onnxruntime-cpu", "raspberry-pi-5"):
        with pytest.raises(Stop):
            convert(tiny_model(), target, tmp_path / target, precision="int8", input_size=(64, 64), no_passes=True,
                    int8=Int8Options(calib_dir=calib, force=True, drift_budget=1.0))
    assert [placement.name for placement in seen] == ["onnxruntime", "tensorrt"]
