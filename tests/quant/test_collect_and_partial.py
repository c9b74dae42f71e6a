"""Calibration collection (collect.py), sensitivity and partial quantisation (sensitivity.py), and the
int8 path of ``convert`` (pipeline.py, chain.convert, the CLI's flag check)."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from edgekit.cli import main
from edgekit.convert.chain import convert
from edgekit.errors import CalibrationError
from edgekit.models import ModelConfig, build_model
from edgekit.quant.collect import calibrate, find_layers
from edgekit.quant.pipeline import Int8Options
from edgekit.quant.qdq import write_qdq
from edgekit.quant.result import CalibrationResult, file_sha256
from edgekit.quant.sensitivity import LayerSensitivity, float_counts, layer_sensitivity, output_error, partial_quantize
from edgekit.runtime.artifact import read_manifest
from tests.quant.quant_graphs import SMALL_NET_CONVS, ort_session, save, small_net, small_net_reference

CONV_TENSORS = ("images", "y1", "r1", "y2", "r2", "y3", "y4")


@pytest.fixture(scope="module")
def net_path(tmp_path_factory):
    return save(small_net(), tmp_path_factory.mktemp("collect") / "model.onnx")


def tensors(count=3, seed=0, size=16):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1, (1, 3, size, size)).astype(np.float32) for _ in range(count)]


class CountingSource:
    """A TensorSource that counts how many passes the collector asked for."""

    def __init__(self, items):
        self.items, self.calls = items, 0

    def __call__(self):
        self.calls += 1
        return iter(self.items)


# --------------------------------------------------------------------------------------------- layers


def test_find_layers_lists_every_conv_with_an_initializer_weight():
    rng = np.random.default_rng(0)
    w_conv = rng.normal(0, 1, (4, 3, 3, 3)).astype(np.float32)
    w_conv[1] = 0.0
    w_up = rng.normal(0, 1, (4, 2, 2, 2)).astype(np.float32)   # ConvTranspose [in=4, out=2]
    w_grouped_up = rng.normal(0, 1, (4, 1, 2, 2)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w_conv"], ["a"], name="named_conv", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w_runtime"], ["b"]),                        # weight is a graph input
             helper.make_node("Identity", ["w_conv2"], ["w_computed"]),
             helper.make_node("Conv", ["a", "w_computed"], ["c"], name="computed_weight"),  # weight computed
             helper.make_node("Conv", ["a", "w_conv2"], ["d"]),                           # unnamed, index 4
             helper.make_node("ConvTranspose", ["a", "w_up"], ["e"], name="up"),
             helper.make_node("ConvTranspose", ["a", "w_grouped_up"], ["f"], name="grouped_up", group=4),
             helper.make_node("Flatten", ["a"], ["g"]),
             helper.make_node("Gemm", ["g", "w_gemm"], ["h"], name="gemm", transB=1)]
    w_conv2 = rng.normal(0, 1, (2, 4, 1, 1)).astype(np.float32)
    graph = helper.make_graph(nodes, "layers", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4]),
                                                helper.make_tensor_value_info("w_runtime", TensorProto.FLOAT, [2, 4, 1, 1])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "bcdefh"],
                              [numpy_helper.from_array(a, n) for n, a in [
                                  ("w_conv", w_conv), ("w_conv2", w_conv2), ("w_up", w_up), ("w_grouped_up", w_grouped_up),
                                  ("w_gemm", rng.normal(0, 1, (5, 64)).astype(np.float32))]])
    layers = find_layers(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [(layer.name, layer.op_type, layer.input, layer.output, layer.weight) for layer in layers] == [
        ("named_conv", "Conv", "x", "a", "w_conv"),
        ("Conv_4", "Conv", "a", "d", "w_conv2"),
        ("up", "ConvTranspose", "a", "e", "w_up"),
    ]
    # per output channel: max |W_c| / 127; the all-zero channel gets 1.0
    expected_conv = np.abs(w_conv).reshape(4, -1).max(axis=1) / 127
    expected_conv[1] = 1.0
    np.testing.assert_allclose(layers[0].weight_scales, expected_conv, rtol=1e-6)
    np.testing.assert_allclose(layers[1].weight_scales, np.abs(w_conv2).reshape(2, -1).max(axis=1) / 127, rtol=1e-6)
    # ConvTranspose: output channels are axis 1
    np.testing.assert_allclose(layers[2].weight_scales, np.abs(w_up).max(axis=(0, 2, 3)) / 127, rtol=1e-6)


def test_find_layers_on_small_net_names_each_conv(net_path):
    layers = find_layers(onnx.load(str(net_path)))
    assert tuple(layer.name for layer in layers) == SMALL_NET_CONVS
    assert [(layer.input, layer.output) for layer in layers] == [("images", "y1"), ("r1", "y2"), ("r1", "y3"), ("r2", "y4")]


# ---------------------------------------------------------------------------------------- calibrate()


def test_minmax_ranges_equal_the_extremes_of_the_intermediate_tensors(net_path):
    inputs = tensors(3)
    inputs[2][0, 1, 5, 5] = 9.0   # an input extreme only in the last image
    source = CountingSource(inputs)
    result = calibrate(net_path, source, method="minmax", images_sha256="imgs")
    assert source.calls == 1  # minmax needs one pass
    # the oracle: every tensor recomputed in float64 with torch, min / max over the three images
    references = [small_net_reference(x) for x in inputs]
    assert set(result.activation_ranges) == set(CONV_TENSORS)
    for name in CONV_TENSORS:
        lo = min(float(r[name].min()) for r in references)
        hi = max(float(r[name].max()) for r in references)
        got_lo, got_hi = result.activation_ranges[name]
        assert got_lo == pytest.approx(lo, rel=1e-5, abs=1e-6) and got_hi == pytest.approx(hi, rel=1e-5, abs=1e-6), name
    assert result.activation_ranges["images"][1] == 9.0
    assert result.activation_ranges["r1"][0] == 0.0  # a ReLU output: exactly zero at the bottom
    assert result.model_sha256 == file_sha256(net_path)
    assert (result.method, result.num_images, result.images_sha256) == ("minmax", 3, "imgs")
    assert tuple(replace(layer, input_mean=()) for layer in result.layers) == tuple(find_layers(onnx.load(str(net_path))))
    # each layer's input_mean (for bias correction): the per-channel mean over pixels and images, from torch
    for layer in result.layers:
        expected = np.mean([r[layer.input].mean(axis=(0, 2, 3)) for r in references], axis=0)
        assert len(layer.input_mean) == expected.size
        np.testing.assert_allclose(layer.input_mean, expected, rtol=1e-5, atol=1e-6, err_msg=layer.name)
    assert result.float_layers == {}


def test_the_network_input_is_never_clipped_even_for_entropy(net_path):
    inputs = tensors(4, seed=1)
    inputs[1][0, 0, 3, 3] = 40.0   # an outlier pixel: the observers clip such tails, but not on the input
    source = CountingSource(inputs)
    result = calibrate(net_path, source, method="entropy")
    assert source.calls == 1  # one pass: the range and the histogram together
    observed = result.notes["observed_ranges"]
    lo = min(float(x.min()) for x in inputs)
    assert result.activation_ranges["images"] == (lo, 40.0) == tuple(observed["images"])
    # ... while the tensors it flows into are clipped by the same observer (the test is not vacuous)
    clipped = [n for n in CONV_TENSORS[1:] if result.activation_ranges[n][1] < observed[n][1] * 0.9]
    assert clipped, result.activation_ranges


def test_non_finite_activations_are_a_calibration_error(net_path):
    inputs = tensors(2)
    inputs[1][0, 0, 0, 0] = 3e38  # finite input; conv1 overflows float32 to ±inf on image 1
    with pytest.raises(CalibrationError, match=r"tensor '(r1|y1|y2|r2|y3|y4)' is not finite on calibration image 1"):
        calibrate(net_path, lambda: iter(inputs), method="minmax")
    inputs[1][0, 0, 0, 0] = np.nan
    with pytest.raises(CalibrationError, match="tensor 'images' is not finite on calibration image 1"):
        calibrate(net_path, lambda: iter(inputs), method="percentile")


def test_an_empty_source_or_a_graph_without_convs_is_a_calibration_error(net_path, tmp_path):
    with pytest.raises(CalibrationError, match="yielded no images"):
        calibrate(net_path, lambda: iter([]), method="minmax")
    with pytest.raises(CalibrationError, match="yielded no images"):
        calibrate(net_path, lambda: iter([]), method="mse")
    graph = helper.make_graph([helper.make_node("Relu", ["images"], ["output"])], "no_conv",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 4, 4])])
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "relu.onnx")
    with pytest.raises(CalibrationError, match="relu.onnx: no Conv layer"):
        calibrate(path, lambda: iter(tensors(1, size=4)), method="minmax")
    with pytest.raises(CalibrationError, match="expected one of"):
        calibrate(net_path, lambda: iter(tensors(1)), method="kl")


# ---------------------------------------------------------------------------------------- sensitivity


def fragile_net(path):
    """images -> convA -> yA -> (+ OUTLIER) -> zA -> convB -> yB -> Relu -> convC -> output.

    zA carries one value of 10000 (one pixel of channel 0); convB ignores channel 0 (zero weights), so
    in float it does not matter, but int8 on convB's input spends the 8 bits on [.., 10000]: a step of
    ~40 wipes out every ordinary value of zA. convA and convC see ordinary ranges."""
    rng = np.random.default_rng(0)
    w_a = rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)
    w_b = rng.normal(0, 0.5, (4, 4, 3, 3)).astype(np.float32)
    w_b[:, 0] = 0.0
    w_c = rng.normal(0, 0.5, (2, 4, 1, 1)).astype(np.float32)
    outlier = np.zeros((1, 4, 16, 16), np.float32)
    outlier[0, 0, 8, 8] = 10000.0
    nodes = [helper.make_node("Conv", ["images", "w_a"], ["yA"], name="convA", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["yA", "outlier"], ["zA"]),
             helper.make_node("Conv", ["zA", "w_b"], ["yB"], name="convB", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["yB"], ["rB"]),
             helper.make_node("Conv", ["rB", "w_c"], ["output"], name="convC")]
    graph = helper.make_graph(nodes, "fragile", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2, 16, 16])],
                              [numpy_helper.from_array(a, n) for n, a in
                               [("w_a", w_a), ("w_b", w_b), ("w_c", w_c), ("outlier", outlier)]])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return save(model, path)


def test_layer_sensitivity_ranks_the_fragile_layer_first(tmp_path):
    path = fragile_net(tmp_path / "fragile.onnx")
    inputs = tensors(3)
    result = calibrate(path, lambda: iter(inputs), method="minmax")
    assert result.activation_ranges["zA"][1] == pytest.approx(10000.0, rel=1e-3)
    ranking = layer_sensitivity(path, result, "onnxruntime", inputs[:2])
    assert ranking[0].name == "convB"
    assert sorted(s.name for s in ranking) == ["convA", "convB", "convC"]
    assert [s.error for s in ranking] == sorted((s.error for s in ranking), reverse=True)
    errors = {s.name: s.error for s in ranking}
    assert errors["convB"] > 0.5          # int8 at step ~40 destroys it
    assert errors["convA"] < 0.05 and errors["convC"] < 0.05
    # the oracle for convB's number: its one-layer Q/DQ graph run directly, error measured by hand
    alone = result.with_float_layers({"convA": "", "convC": ""})
    write_qdq(path, alone, "onnxruntime", tmp_path / "convB_only.onnx")
    fp32, int8 = ort_session(path), ort_session(tmp_path / "convB_only.onnx")
    by_hand = np.mean([np.linalg.norm(int8.run(None, {"images": x})[0] - fp32.run(None, {"images": x})[0])
                       / np.linalg.norm(fp32.run(None, {"images": x})[0]) for x in inputs[:2]])
    assert errors["convB"] == pytest.approx(by_hand, rel=1e-6)


def test_output_error_hand_case():
    # image 1: ||(3, 4) - (3, 9)|| / ||(3, 4)|| = 5 / 5 = 1; second output: ||(1,0)-(1,0)|| = 0
    # image 2: ||(0, 2) - (0, 1)|| / ||(0, 2)|| = 1 / 2;  mean of (1, 0, 0.5, 0) = 0.375
    reference = [[np.array([3.0, 4.0]), np.array([1.0, 0.0])], [np.array([0.0, 2.0]), np.array([1.0, 0.0])]]
    candidate = [[np.array([3.0, 9.0]), np.array([1.0, 0.0])], [np.array([0.0, 1.0]), np.array([1.0, 0.0])]]
    assert output_error(reference, candidate) == pytest.approx(0.375)


@pytest.mark.parametrize("layers,fraction,expected", [
    (10, 0.25, [0, 1, 2]),                       # cap floor(2.5) = 2
    (40, 0.25, [0, 1, 2, 4, 8, 10]),             # cap 10 is appended after the powers of two below it
    (32, 0.25, [0, 1, 2, 4, 8]),                 # cap 8 is itself a power of two: not repeated
    (4, 0.25, [0, 1]),                           # cap 1
    (3, 0.25, [0]),                              # cap floor(0.75) = 0: only "everything int8"
    (0, 0.25, [0]),
    (100, 1.0, [0, 1, 2, 4, 8, 16, 32, 64, 100]),
    (63, 0.5, [0, 1, 2, 4, 8, 16, 31]),          # cap floor(31.5) = 31
])
def test_float_counts(layers, fraction, expected):
    assert float_counts(layers, fraction) == expected


class TableJudge:
    """A DriftJudge whose drift is looked up by the number of int8 weight DQ nodes in the file."""

    description = "table judge"

    def __init__(self, table):
        self.table, self.calls = table, []

    def drift(self, onnx_path):
        model = onnx.load(str(onnx_path))
        initializers = {i.name: i for i in model.graph.initializer}
        weight_dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in initializers
                      and len(initializers[n.input[0]].dims) == 4]
        float_weights = sorted(n.input[1] for n in model.graph.node if n.op_type == "Conv" and n.input[1] in initializers)
        self.calls.append((len(weight_dqs), float_weights))
        return self.table[len(weight_dqs)]


#: small_net's four convs ranked in an order unlike the graph's, so the test sees the ranking is used
RANKING = [LayerSensitivity("conv3", 0.9), LayerSensitivity("conv1", 0.5), LayerSensitivity("conv4", 0.2),
           LayerSensitivity("conv2", 0.1)]
WEIGHT_OF = {"conv1": "w1", "conv2": "w2", "conv3": "w3", "conv4": "w4"}


@pytest.fixture(scope="module")
def net_result(net_path):
    return calibrate(net_path, lambda: iter(tensors(2)), method="minmax")


def test_partial_quantize_stops_at_the_first_count_within_budget(net_path, net_result):
    judge = TableJudge({4: 3.0, 3: 1.5, 2: 0.4, 0: 0.0})   # keyed by the weight DQs = 4 - k
    lines = []
    partial = partial_quantize(net_path, net_result, "onnxruntime", judge, budget=0.5, sensitivity=RANKING,
                               max_float_fraction=1.0, progress=lines.append)
    assert partial.met and partial.drift == 0.4 and partial.budget == 0.5
    assert partial.steps == [{"float_layers": 0, "drift": 3.0}, {"float_layers": 1, "drift": 1.5},
                             {"float_layers": 2, "drift": 0.4}]
    # it stopped there: k = 4 was never judged; each judged file kept the top-k ranked layers in float
    assert judge.calls == [(4, []), (3, ["w3"]), (2, ["w1", "w3"])]
    assert set(partial.result.float_layers) == {"conv3", "conv1"}
    assert "sensitivity rank 1 of 4" in partial.result.float_layers["conv3"]
    assert "0.5-point drift budget" in partial.result.float_layers["conv1"]
    assert len(lines) == 3 and "2 of 4 layers in float -> drift 0.40 points" in lines[-1]
    summary = partial.summary()
    assert summary["met"] and summary["steps"] == partial.steps and summary["judge"] == "table judge"
    assert [s["layer"] for s in summary["sensitivity"]] == ["conv3", "conv1", "conv4", "conv2"]


def test_partial_quantize_within_budget_at_once_keeps_everything_int8(net_path, net_result):
    judge = TableJudge({4: 0.2})
    partial = partial_quantize(net_path, net_result, "onnxruntime", judge, budget=0.5, sensitivity=RANKING,
                               max_float_fraction=1.0)
    assert partial.met and partial.result.float_layers == {} and partial.steps == [{"float_layers": 0, "drift": 0.2}]


def test_partial_quantize_reports_the_least_drift_when_nothing_meets_the_budget(net_path, net_result):
    judge = TableJudge({4: 3.0, 3: 1.2, 2: 2.0, 0: 1.6})
    partial = partial_quantize(net_path, net_result, "onnxruntime", judge, budget=1.0, sensitivity=RANKING,
                               max_float_fraction=1.0)
    assert not partial.met
    assert partial.drift == 1.2 and set(partial.result.float_layers) == {"conv3"}   # k = 1, the least drift
    assert [s["float_layers"] for s in partial.steps] == [0, 1, 2, 4]
    assert [s["drift"] for s in partial.steps] == [3.0, 1.2, 2.0, 1.6]
    assert judge.calls[-1] == (0, ["w1", "w2", "w3", "w4"])
    # with the default cap (25 % of 4 layers = 1) only k = 0 and k = 1 are tried
    capped = partial_quantize(net_path, net_result, "onnxruntime", TableJudge(judge.table), budget=1.0,
                              sensitivity=RANKING)
    assert [s["float_layers"] for s in capped.steps] == [0, 1] and not capped.met and capped.drift == 1.2


# ------------------------------------------------------------------------------- convert --precision int8


def tiny_model():
    torch.manual_seed(0)
    return build_model(ModelConfig("yolov8", num_classes=3, input_size=(64, 64), width=0.125), ["a", "b", "c"]).eval()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def write_images(folder, count, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def convert_int8(model, out, **options):
    return convert(model, "onnxruntime-cpu", out, precision="int8", input_size=(64, 64), no_passes=True,
                   int8=Int8Options(**options))


def test_an_empty_calibration_folder_fails_and_leaves_no_artifact(model, tmp_path):
    calib = tmp_path / "calib_empty"
    calib.mkdir()
    (calib / "readme.txt").write_text("no images here")
    (tmp_path / "out").mkdir()
    with pytest.raises(CalibrationError, match=f"calibration folder {calib} holds no images"):
        convert_int8(model, tmp_path / "out" / "art", calib_dir=calib, force=True)
    assert os.listdir(tmp_path / "out") == []  # neither the artifact nor its temporary folder


def test_a_folder_of_broken_images_fails_naming_it_and_leaves_no_artifact(model, tmp_path):
    calib = tmp_path / "calib_broken"
    calib.mkdir()
    (calib / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg" * 10)
    (calib / "b.png").write_bytes(b"")
    (tmp_path / "out").mkdir()
    with pytest.raises(CalibrationError, match=f"calibration folder {calib}: none of the 2 image files could be used"):
        convert_int8(model, tmp_path / "out" / "art", calib_dir=calib, force=True)
    assert os.listdir(tmp_path / "out") == []


def test_a_calibration_cache_of_another_model_is_refused(model, tmp_path):
    other = save(small_net(), tmp_path / "other.onnx")
    cache = calibrate(other, lambda: iter(tensors(1)), method="minmax").save(tmp_path / "calibration.json")
    (tmp_path / "out").mkdir()
    with pytest.raises(CalibrationError, match="calibration cache belongs to another model.*model.onnx"):
        convert_int8(model, tmp_path / "out" / "art", cache=cache)
    assert os.listdir(tmp_path / "out") == []


def test_a_tiny_int8_convert_ships_fp32_int8_and_the_calibration(model, tmp_path):
    calib = write_images(tmp_path / "calib", 4)
    lines = []
    manifest = convert(model, "onnxruntime-cpu", tmp_path / "art", precision="int8", input_size=(64, 64),
                       no_passes=True, int8=Int8Options(calib_dir=calib, force=True, method="minmax"),
                       progress=lines.append)
    art = tmp_path / "art"
    assert {(m.backend, m.precision, m.file) for m in manifest.models} == {
        ("onnxruntime", "fp32", "model.onnx"), ("onnxruntime", "int8", "model_int8.onnx")}
    assert {"model.onnx", "model_int8.onnx", "calibration.json"} <= set(manifest.files)
    assert read_manifest(art).files == manifest.files
    record = manifest.info["int8"]
    assert record["calibration_file"] == "calibration.json" and record["method"] == "minmax" and record["images"] == 4
    # the calibration shipped belongs to the fp32 graph shipped, and covers every conv of it
    result = CalibrationResult.load(art / "calibration.json")
    result.check_model(art / "model.onnx")
    graph = onnx.load(str(art / "model.onnx"))
    convs = [n for n in graph.graph.node if n.op_type == "Conv"]
    assert len(result.layers) == len(convs) == record["layers"] == record["quantized_layers"]
    assert json.loads((art / "calibration.json").read_text())["num_images"] == 4
    # the int8 model really is int8: one weight DQ per conv
    int8 = onnx.load(str(art / "model_int8.onnx"))
    ops = Counter(n.op_type for n in int8.graph.node)
    assert ops["Conv"] == len(convs) and ops["QuantizeLinear"] > 0
    weight_dqs = [n for n in int8.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("_quantized")
                  and n.input[0] in {i.name for i in int8.graph.initializer}
                  and len(next(i for i in int8.graph.initializer if i.name == n.input[0]).dims) == 4]
    assert len(weight_dqs) == len(convs)
    parity = manifest.info["parity"]["onnxruntime/int8"]
    assert parity["checked"]
    # on this random-weight model the outputs are the (int8-exact) biases of the head convs: a wrong bias
    # (int32 saturation) showed here as max_rel 1.0
    assert parity["max_rel"] < 0.05, parity
    assert any(line.startswith("int8") for line in lines)


def test_cli_calibration_flags_without_int8_are_a_usage_error(model, tmp_path, capsys):
    from edgekit.models.loading import save_checkpoint

    checkpoint = save_checkpoint(model, tmp_path / "m.pt")
    code = main(["convert", str(checkpoint), "--target", "onnxruntime-cpu", "--calib-method", "mse",
                 "-o", str(tmp_path / "art")])
    err = capsys.readouterr().err
    assert code == 2
    assert "--calib-method only apply with --precision int8" in err
    assert "Traceback" not in err
    assert not (tmp_path / "art").exists()
    # the same flag with --precision int8 passes this check (it fails later, on the missing folder)
    code = main(["convert", str(checkpoint), "--target", "onnxruntime-cpu", "--precision", "int8", "--calib-method",
                 "mse", "--calib", str(tmp_path / "nope"), "--no-passes", "--imgsz", "64", "-o", str(tmp_path / "art")])
    err = capsys.readouterr().err
    assert code == 2 and f"calibration folder {tmp_path / 'nope'} does not exist" in err
    assert not (tmp_path / "art").exists()


def test_a_concat_of_int64_shape_pieces_is_not_observed(tmp_path):
    """A graph exported without constant folding (``--no-passes``) computes a reshape target at run time: Shape ->
    Concat (int64). Observing that Concat as a float activation made the observation session fail to load
    (FastestDet int8 with --no-passes); only float tensors are observed, and calibration runs."""
    from edgekit.quant.collect import observed_tensors

    weight = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"]),
             helper.make_node("Relu", ["y"], ["r"]),
             helper.make_node("Shape", ["r"], ["shape"]),
             helper.make_node("Concat", ["shape", "shape"], ["twice"], axis=0),  # int64, inputs not constants
             helper.make_node("Concat", ["y", "r"], ["both"], axis=1),  # a float Concat: observed
             helper.make_node("ReduceSum", ["twice"], ["count"], keepdims=0),
             helper.make_node("Cast", ["count"], ["count_f"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["both", "count_f"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 4, 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    observed = observed_tensors(model, find_layers(model))
    assert "both" in observed and "twice" not in observed
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    rng = np.random.default_rng(0)
    result = calibrate(path, lambda: (rng.normal(size=(1, 3, 4, 4)).astype(np.float32) for _ in range(4)),
                       method="minmax")
    assert "both" in result.activation_ranges
