"""The per-model choice to requantise the head convs' outputs in ONNX Runtime's int8 graph (quant.head_outputs):
what ORT then executes (no float conv left, as ``quantize_static``), the measurement on both sides of its limit, the
models it does not apply to, and the flag's life in a calibration cache."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.errors import CalibrationError
from edgekit.quant.head_outputs import (
    MAX_ERROR_RATIO,
    choose_head_outputs,
    decoded_errors,
    requantisable_heads,
)
from edgekit.quant.placement import FUSED_UINT8
from edgekit.quant.qdq import head_conv_outputs, write_qdq
from edgekit.quant.result import CalibrationResult
from edgekit.runtime.artifact import spec_from_onnx
from edgekit.runtime.decode import Candidates
from tests.quant.test_ort_placement import executed_ops, quantize_static_model

ort = pytest.importorskip("onnxruntime")


def test_requantised_heads_leave_no_float_conv_like_quantize_static(tiny_yolov8_calibrated, tmp_path):
    path, result, tensors = tiny_yolov8_calibrated
    heads = len(head_conv_outputs(onnx.load(str(path))))
    assert heads > 0
    write_qdq(path, result, FUSED_UINT8, tmp_path / "float_heads.onnx")
    write_qdq(path, replace(result, quantize_head_outputs=True), FUSED_UINT8, tmp_path / "int8_heads.onnx")
    before = executed_ops(tmp_path / "float_heads.onnx", tmp_path, "float_heads")
    after = executed_ops(tmp_path / "int8_heads.onnx", tmp_path, "int8_heads")
    theirs = executed_ops(quantize_static_model(path, tensors, tmp_path / "qs.onnx"), tmp_path, "qs")
    # the graph changed: the head convs joined the integer kernels, as in quantize_static's model
    assert before["Conv"] == heads and after["Conv"] == 0, (before, after)
    assert after["QLinearConv"] == before["QLinearConv"] + heads == theirs["QLinearConv"], (after, theirs)
    # the one difference left: a Concat that writes a graph output joins float tensors (edgekit keeps graph outputs
    # float; quantize_static concatenates uint8 and dequantises after): each head conv's output is dequantised once
    model = onnx.load(str(path))
    graph_outputs = {output.name for output in model.graph.output}
    output_concats = sum(node.op_type == "Concat" and node.output[0] in graph_outputs for node in model.graph.node)
    assert after["QLinearConcat"] + output_concats == theirs["QLinearConcat"], (after, theirs)
    assert after["DequantizeLinear"] == heads, after
    # ... and the numbers are still the model's: each output within a few 8-bit steps of the float-head graph's
    fused_float = ort.InferenceSession(str(tmp_path / "float_heads.onnx"), providers=["CPUExecutionProvider"])
    fused_int8 = ort.InferenceSession(str(tmp_path / "int8_heads.onnx"), providers=["CPUExecutionProvider"])
    for x in tensors:
        for want, got in zip(fused_float.run(None, {"images": x}), fused_int8.run(None, {"images": x})):
            assert np.abs(got - want).max() <= 0.1 * np.abs(want).max()


def test_the_choice_requantises_heads_whose_8_bit_grid_moves_no_detection(tiny_yolov8_calibrated):
    path, result, tensors = tiny_yolov8_calibrated
    choice = choose_head_outputs(path, spec_from_onnx(path), result, lambda: tensors)
    assert choice.images == len(tensors)
    ratios = [after / before for before, after in zip(choice.error_float_heads, choice.error_int8_heads)]
    assert choice.quantize == (max(ratios) <= MAX_ERROR_RATIO)
    assert choice.quantize, choice.reason  # minmax ranges of this model's head outputs: a fine grid
    assert "requantised" in choice.reason and f"{MAX_ERROR_RATIO:.2f}x" in choice.reason


def test_the_choice_keeps_heads_float_when_a_wide_range_wrecks_their_grid(tiny_yolov8_calibrated):
    """A head output whose range a few huge logits stretch (here: widened 1000x, an 8-bit step of several logits)
    loses its scores when requantised: the choice measures that and keeps the heads float."""
    path, result, tensors = tiny_yolov8_calibrated
    heads = requantisable_heads(onnx.load(str(path)))
    wide = {name: (lo * 1000.0, hi * 1000.0) if name in heads else (lo, hi)
            for name, (lo, hi) in result.activation_ranges.items()}
    choice = choose_head_outputs(path, spec_from_onnx(path), replace(result, activation_ranges=wide), lambda: tensors)
    assert not choice.quantize and "kept float" in choice.reason
    assert max(after / before for before, after in zip(choice.error_float_heads, choice.error_int8_heads)) \
        > MAX_ERROR_RATIO


def _conv_straight_to_output(path):
    """x -> Conv -> y (a graph output): a head conv that writes the graph output itself, as classic YOLOv5's Detect."""
    weight = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="head")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_a_head_that_writes_the_graph_output_has_nothing_to_choose(tmp_path):
    path = _conv_straight_to_output(tmp_path / "direct.onnx")
    assert head_conv_outputs(onnx.load(str(path))) == {"y"} and not requantisable_heads(onnx.load(str(path)))

    def no_images():
        raise AssertionError("no measurement is needed")

    choice = choose_head_outputs(path, None, None, no_images)  # type: ignore[arg-type]
    assert not choice.quantize and choice.images == 0 and "no head conv output" in choice.reason


def test_decoded_errors_hand_case():
    """Scores [0.5, 0] -> [0.4, 0.3]: ||(-0.1, 0.3)|| / ||(0.5, 0)|| = sqrt(0.1) / 0.5. Boxes weighted by the
    reference score: only the first box counts; it moved by 1 px on each of its 4 coordinates of (10, 10, 20, 20):
    ||0.5 * (1, 1, 1, 1)|| / ||0.5 * (10, 10, 20, 20)|| = 2 / sqrt(1000). The second, zero-score box moving far
    changes nothing."""
    def candidates(scores, boxes):
        return Candidates(np.asarray(boxes, np.float32)[None], np.asarray(scores, np.float32)[None],
                          np.zeros((1, len(scores)), np.int64))

    reference = candidates([0.5, 0.0], [[10, 10, 20, 20], [0, 0, 5, 5]])
    candidate = candidates([0.4, 0.3], [[11, 11, 21, 21], [100, 100, 300, 300]])
    score_error, box_error = decoded_errors([reference], [candidate])
    assert score_error == pytest.approx(np.sqrt(0.1) / 0.5, rel=1e-5)
    assert box_error == pytest.approx(2 / np.sqrt(1000), rel=1e-5)
    assert decoded_errors([reference], [reference]) == (0.0, 0.0)


def test_the_flag_round_trips_and_an_old_cache_keeps_heads_float(tiny_yolov8_calibrated, tmp_path):
    _, result, _ = tiny_yolov8_calibrated
    saved = replace(result, quantize_head_outputs=True).save(tmp_path / "calibration.json")
    assert CalibrationResult.load(saved).quantize_head_outputs is True
    data = json.loads(saved.read_text())
    del data["quantize_head_outputs"]  # a cache written before the choice existed
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert CalibrationResult.load(tmp_path / "old.json").quantize_head_outputs is False


@pytest.mark.parametrize("value", ["false", 0, 1, None, [True]])
def test_a_flag_that_is_not_true_or_false_is_refused(tiny_yolov8_calibrated, tmp_path, value):
    _, result, _ = tiny_yolov8_calibrated
    data = result.to_dict()
    data["quantize_head_outputs"] = value
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match=r"bad\.json: quantize_head_outputs is .*; expected true or false"):
        CalibrationResult.load(tmp_path / "bad.json")


def test_convert_records_the_choice_and_builds_what_it_chose(tmp_path):
    """End to end on the tiny yolov8 the int8 tests convert: the manifest says what was chosen and why, the cache
    carries it, and ORT's executed graph has float head convs exactly when the choice kept them float."""
    import torch

    from edgekit.convert.chain import convert
    from edgekit.models import ModelConfig, build_model
    from edgekit.quant.pipeline import Int8Options
    from tests.quant.test_collect_and_partial import write_images

    torch.manual_seed(0)
    model = build_model(ModelConfig("yolov8", num_classes=3, input_size=(64, 64), width=0.125), ["a", "b", "c"])
    write_images(tmp_path / "calib", 16)
    manifest = convert(model, "onnxruntime-cpu", tmp_path / "art", precision="int8",
                       int8=Int8Options(calib_dir=tmp_path / "calib", method="minmax"))
    chosen = manifest.info["int8"]["head_outputs"]
    assert chosen["images"] == 8 and chosen["reason"].startswith("head outputs ")
    cache = CalibrationResult.load(tmp_path / "art" / "calibration.json")
    assert cache.quantize_head_outputs is chosen["quantize"]
    ops = executed_ops(tmp_path / "art" / "model_int8.onnx", tmp_path, "built")
    heads = len(head_conv_outputs(onnx.load(str(tmp_path / "art" / "model.onnx"))))
    assert ops["Conv"] == (0 if chosen["quantize"] else heads), (chosen, Counter(ops))
