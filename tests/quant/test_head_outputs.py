"""Requantising the head convs' outputs in ONNX Runtime's int8 graph (quant.head_outputs): what ORT then executes
(no float conv left, as ``quantize_static``), the choice on both sides of the drift budget, the models and searches
it does not apply to, and the flag's life in a calibration cache."""

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
    WITHOUT_BUDGET,
    HeadOutputChoice,
    cached_choice,
    choose_head_outputs,
    requantisable_heads,
)
from edgekit.quant.placement import FUSED_UINT8
from edgekit.quant.qdq import head_conv_outputs, write_qdq
from edgekit.quant.result import CalibrationResult
from edgekit.quant.sensitivity import PartialQuantization
from edgekit.runtime.artifact import spec_from_onnx
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


class HeadsJudge:
    """A drift judge that reads the graph it is given: ``requantised`` points when the head convs' outputs are
    quantised (a QuantizeLinear reads one), ``float`` points otherwise; it records what it judged."""

    description = "test judge"

    def __init__(self, heads: set[str], requantised: float, float_: float = 0.0) -> None:
        self.heads, self.requantised, self.float_ = heads, requantised, float_
        self.judged: list[bool] = []

    def drift(self, onnx_path) -> float:
        model = onnx.load(str(onnx_path))
        quantised = {node.input[0] for node in model.graph.node if node.op_type == "QuantizeLinear"}
        # a requantised conv output is renamed "<y>_float" and quantised back into "<y>" (qdq._insert_qdq)
        requantised = any(f"{head}_float" in quantised or head in quantised for head in self.heads)
        self.judged.append(requantised)
        return self.requantised if requantised else self.float_


def partial(result, budget=0.4, met=True, drift=0.2):
    return PartialQuantization(result, drift, budget, met, "test judge")


@pytest.mark.parametrize("drift, quantize", [(0.39, True), (0.4, True), (0.41, False)])
def test_heads_are_requantised_only_within_the_budget(tiny_yolov8_calibrated, drift, quantize):
    """The threshold itself: requantised at drift <= budget (0.4), float just above; the judge saw the requantised
    ONNX Runtime graph (its heads behind a QuantizeLinear), once."""
    path, result, _ = tiny_yolov8_calibrated
    judge = HeadsJudge(requantisable_heads(onnx.load(str(path)), result), requantised=drift)
    choice = choose_head_outputs(path, partial(result), judge)
    assert judge.judged == [True]
    assert choice.quantize is quantize
    assert (choice.drift, choice.budget) == (drift, 0.4)
    assert f"drifts {drift:.2f} points (budget 0.4)" in choice.reason
    assert ("requantised" if quantize else "kept float") in choice.reason


def test_an_unmet_budget_keeps_heads_float_without_judging(tiny_yolov8_calibrated):
    path, result, _ = tiny_yolov8_calibrated
    judge = HeadsJudge(requantisable_heads(onnx.load(str(path)), result), requantised=0.0)
    choice = choose_head_outputs(path, partial(result, met=False, drift=3.0), judge)
    assert not choice.quantize and judge.judged == [] and "was not met" in choice.reason


def _conv_straight_to_output(path):
    """x -> Conv -> y (a graph output): a head conv that writes the graph output itself, as classic YOLOv5's Detect."""
    weight = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="head")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_a_head_that_writes_the_graph_output_has_nothing_to_choose(tmp_path):
    from edgekit.quant.collect import calibrate

    path = _conv_straight_to_output(tmp_path / "direct.onnx")
    result = calibrate(path, lambda: [np.ones((1, 3, 4, 4), np.float32)], method="minmax")
    assert head_conv_outputs(onnx.load(str(path))) == {"y"} and not requantisable_heads(onnx.load(str(path)), result)
    judge = HeadsJudge({"y"}, requantised=0.0)
    choice = choose_head_outputs(path, partial(result), judge)
    assert not choice.quantize and judge.judged == [] and "no int8 head conv output" in choice.reason


def test_head_convs_kept_float_leave_nothing_to_choose(tiny_yolov8_calibrated):
    """A head conv the search (or a user) keeps in float is no int8 head: with all of them float there is nothing
    to requantise, and the choice must not record a judgement of the same graph as 'requantised'."""
    path, result, _ = tiny_yolov8_calibrated
    model = onnx.load(str(path))
    heads = requantisable_heads(model, result)
    head_layers = {layer.name: "test" for layer in result.layers if layer.output in heads}
    assert len(head_layers) == len(heads) > 0
    first = next(iter(head_layers))
    assert requantisable_heads(model, result.with_float_layers({first: "test"})) == heads - {result.layer(first).output}
    judge = HeadsJudge(heads, requantised=0.0)
    choice = choose_head_outputs(path, partial(result.with_float_layers(head_layers)), judge)
    assert not choice.quantize and judge.judged == [] and "no int8 head conv output" in choice.reason


def convert_zoo_yolov8(out, budget, images, progress=lambda line: None):
    from edgekit.convert.chain import convert
    from edgekit.models.loading import load_checkpoint
    from edgekit.quant.pipeline import Int8Options
    from tests.conftest import ZOO_DIR

    return convert(load_checkpoint(ZOO_DIR / "yolov8.pt"), "onnxruntime-cpu", out, precision="int8",
                   int8=Int8Options(method="minmax", images=images, drift_budget=budget), progress=progress)


def held_out_judge(art, images):
    """The agreement judge the search used: every 5th of the first ``images`` bundled calibration images."""
    from edgekit.quant.calibration import default_calibration_dir, find_calibration_images
    from edgekit.quant.pipeline import HOLDOUT_FRACTION
    from edgekit.quant.sensitivity import AgreementJudge

    found = find_calibration_images(default_calibration_dir(), limit=images, force=True, warn=lambda message: None)
    stride = round(1 / HOLDOUT_FRACTION)
    held_out = [path for index, path in enumerate(found.paths) if index % stride == stride - 1]
    return AgreementJudge(art / "model.onnx", spec_from_onnx(art / "model.onnx"), held_out)


@pytest.mark.parametrize("budget, images, quantize", [(0.4, 70, False), (2.0, 60, True)])
def test_convert_ships_the_graph_the_budget_judged(tmp_path, budget, images, quantize):
    """The trained fixture at 160 px, minmax on bundled images: from 70 images a 0.4-point budget is met with every
    layer int8 (0.20) and requantised heads drift 0.91, over it; from 60, a 2-point budget is met with every layer
    int8 (1.42) and requantised heads drift 1.42, within it (the figures are the progress lines of
    ``convert_zoo_yolov8``; they move with the calibration's float rounding, so the margins are 0.2-0.6 points).
    The shipped ONNX Runtime model's drift, judged again on the same held-out images, is within the budget either
    way, and the manifest, the cache and what ORT executes all say the same."""
    art = tmp_path / "art"
    lines: list[str] = []
    info = convert_zoo_yolov8(art, budget, images, lines.append).info["int8"]
    assert info["partial_quantization"]["met"] is True
    # what the user reads: the placement by name, and the head choice with its judged drift
    assert any(line.endswith("images (onnxruntime Q/DQ placement)") for line in lines), lines
    assert not any("QdqPlacement(" in line for line in lines)
    assert f"int8    {info['head_outputs']['reason']}" in lines
    assert info["head_outputs"]["quantize"] is quantize, info["head_outputs"]
    assert CalibrationResult.load(art / "calibration.json").quantize_head_outputs is quantize
    built = held_out_judge(art, images).drift(art / "model_int8.onnx")
    assert built <= budget
    if quantize:  # the figure that describes the shipped model is the head choice's own
        assert info["head_outputs"]["drift"] == pytest.approx(built, abs=1e-3)
    else:
        assert built == pytest.approx(info["partial_quantization"]["drift"], abs=1e-3)
    ops = executed_ops(art / "model_int8.onnx", tmp_path, "built")
    heads = len(head_conv_outputs(onnx.load(str(art / "model.onnx"))))
    float_layers = len(info["float_layers"])  # every quantisable layer of this model is a Conv
    assert ops["Conv"] == (0 if quantize else heads) + float_layers, Counter(ops)
    # reused as a cache (one calibration for several targets): the same graph, the same record
    reused = convert_from_cache(tmp_path / "reused", art / "calibration.json").info["int8"]
    assert reused["head_outputs"] == info["head_outputs"]
    assert (tmp_path / "reused" / "model_int8.onnx").read_bytes() == (art / "model_int8.onnx").read_bytes()


def convert_from_cache(out, cache):
    from edgekit.convert.chain import convert
    from edgekit.models.loading import load_checkpoint
    from edgekit.quant.pipeline import Int8Options
    from tests.conftest import ZOO_DIR

    return convert(load_checkpoint(ZOO_DIR / "yolov8.pt"), "onnxruntime-cpu", out, precision="int8",
                   int8=Int8Options(cache=cache))


def test_only_onnx_runtime_placement_reads_the_flag(tiny_yolov8_calibrated, tmp_path):
    """OpenVINO's producer-side and the symmetric (TensorRT / NCNN) placements never requantise conv outputs: the
    flag leaves their graphs byte for byte as they were, while ONNX Runtime's changes."""
    from edgekit.quant.placement import PRODUCER_SIDE_UINT8, SYMMETRIC_INT8

    path, result, _ = tiny_yolov8_calibrated
    for placement in (PRODUCER_SIDE_UINT8, SYMMETRIC_INT8, FUSED_UINT8):
        write_qdq(path, result, placement, tmp_path / "float.onnx")
        write_qdq(path, replace(result, quantize_head_outputs=True), placement, tmp_path / "requantised.onnx")
        same = (tmp_path / "float.onnx").read_bytes() == (tmp_path / "requantised.onnx").read_bytes()
        assert same is (placement is not FUSED_UINT8), placement.name


def test_without_a_budget_heads_stay_float(tmp_path):
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
    assert manifest.info["int8"]["head_outputs"] == WITHOUT_BUDGET.summary()
    assert CalibrationResult.load(tmp_path / "art" / "calibration.json").quantize_head_outputs is False


def test_the_flag_round_trips_and_an_old_cache_keeps_heads_float(tiny_yolov8_calibrated, tmp_path):
    _, result, _ = tiny_yolov8_calibrated
    chosen = HeadOutputChoice(True, "head outputs requantised: test", 0.3, 0.4)
    saved = replace(result, quantize_head_outputs=True,
                    notes={**result.notes, "head_outputs": chosen.summary()}).save(tmp_path / "calibration.json")
    reloaded = CalibrationResult.load(saved)
    assert reloaded.quantize_head_outputs is True and cached_choice(reloaded) == chosen
    data = json.loads(saved.read_text())
    del data["quantize_head_outputs"]  # a cache written before the choice existed
    del data["notes"]["head_outputs"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = CalibrationResult.load(tmp_path / "old.json")
    assert old.quantize_head_outputs is False
    assert cached_choice(old).summary().keys() == chosen.summary().keys()
    assert "predates the choice" in cached_choice(old).reason


@pytest.mark.parametrize("value", ["false", 0, 1, None, [True]])
def test_a_flag_that_is_not_true_or_false_is_refused(tiny_yolov8_calibrated, tmp_path, value):
    _, result, _ = tiny_yolov8_calibrated
    data = result.to_dict()
    data["quantize_head_outputs"] = value
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match=r"bad\.json: quantize_head_outputs is .*; expected true or false"):
        CalibrationResult.load(tmp_path / "bad.json")


REQUANTISED = HeadOutputChoice(True, "head outputs requantised: ONNX Runtime's graph with them requantised drifts "
                                     "0.30 points (budget 0.4)", 0.3, 0.4)


@pytest.mark.parametrize("choice, edit, message", [
    (WITHOUT_BUDGET, lambda data: data.update(quantize_head_outputs=True),
     "quantize_head_outputs is true but notes.head_outputs says false"),
    (WITHOUT_BUDGET, lambda data: data["notes"]["head_outputs"].update(quantize=True),
     "is false but notes.head_outputs says true"),
    (WITHOUT_BUDGET, lambda data: data["notes"]["head_outputs"].update(quantize="true"), "not the record"),
    (WITHOUT_BUDGET, lambda data: data["notes"].update(head_outputs="requantised"), "not the record"),
    (WITHOUT_BUDGET, lambda data: data["notes"]["head_outputs"].update(images=8), "not the record"),  # 4f6eb82's
    (REQUANTISED, lambda data: data["notes"].pop("head_outputs"), "true but notes.head_outputs .* is missing"),
    (REQUANTISED, lambda data: (data.update(quantize_head_outputs=False),
                                data["notes"]["head_outputs"].update(quantize=False)), "does not support"),
    (REQUANTISED, lambda data: data["notes"]["head_outputs"].update(drift=0.5), "does not support"),
    (REQUANTISED, lambda data: data["notes"]["head_outputs"].update(budget=None), "does not support"),
    (REQUANTISED, lambda data: data["notes"]["head_outputs"].update(drift=float("nan")), "not the record"),
])
def test_a_cache_edited_to_flip_the_choice_is_refused(tiny_yolov8_calibrated, tmp_path, choice, edit, message):
    _, result, _ = tiny_yolov8_calibrated
    data = replace(result, quantize_head_outputs=choice.quantize,
                   notes={**result.notes, "head_outputs": choice.summary()}).to_dict()
    CalibrationResult.from_dict(json.loads(json.dumps(data)))  # unedited: loads
    edit(data)
    (tmp_path / "edited.json").write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match=message):
        CalibrationResult.load(tmp_path / "edited.json")


@pytest.mark.parametrize("flag, value, fragment", [
    ("--drift-budget", "nan", "--drift-budget nan: expected a finite number"),
    ("--drift-budget", "inf", "--drift-budget inf: expected a finite number"),
    ("--percentile", "nan", "--percentile nan: expected a finite number"),
    ("--percentile", "inf", "'--percentile': inf is not in the range"),  # click's own range check catches this one
])
def test_a_budget_or_percentile_that_is_not_a_number_is_refused(tmp_path, capsys, flag, value, fragment):
    """click's FloatRange lets nan through; a nan budget judged nothing and wrote invalid JSON into the manifest."""
    from tests.conftest import ZOO_DIR
    from tests.helpers import one_error_line, run_cli

    out = tmp_path / "art"
    args = ["convert", ZOO_DIR / "yolov8.pt", "--target", "onnxruntime-cpu", "--precision", "int8", flag, value,
            "-o", out]
    if flag == "--percentile":
        args += ["--calib-method", "percentile"]
    code, _, err = run_cli(args, capsys)
    one_error_line(code, err, fragment)
    assert not out.exists()
