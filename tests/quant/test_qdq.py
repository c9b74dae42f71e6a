"""Calibration result -> Q/DQ ONNX (qdq.py): structure per placement, numbers against a numpy/torch
simulation of the same quantisation, ONNX Runtime's QLinearConv fusion and OpenVINO's u8/i8 convolutions."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from edgekit.errors import CalibrationError
from edgekit.quant.collect import find_layers
from edgekit.quant.qdq import get_placement, write_qdq
from edgekit.quant.result import CalibrationResult, file_sha256
from tests.quant.quant_graphs import (
    conv_graph,
    ort_session,
    save,
    small_net,
    small_net_reference,
)

PLACEMENT_NAMES = ("onnxruntime", "openvino", "tensorrt")


def hand_result(onnx_path, ranges: dict[str, tuple[float, float]]) -> CalibrationResult:
    """A CalibrationResult with the given ranges and the graph's layers (per-channel weight scales)."""
    layers = tuple(find_layers(onnx.load(str(onnx_path))))
    return CalibrationResult(model_sha256=file_sha256(onnx_path), method="minmax", num_images=1, images_sha256="",
                             activation_ranges=dict(ranges), layers=layers)


def probe(shape, seed=0, scale=1.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(0, scale, shape)).astype(np.float32)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """small_net on disk with minmax ranges of every conv input/output measured (in float64) on one probe."""
    folder = tmp_path_factory.mktemp("qdq")
    path = save(small_net(), folder / "model.onnx")
    reference = small_net_reference(probe((1, 3, 16, 16)))
    ranges = {name: (float(reference[name].min()), float(reference[name].max()))
              for name in ("images", "y1", "r1", "y2", "r2", "y3", "y4")}
    return path, hand_result(path, ranges)


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))


def producers(model):
    return {out: node for node in model.graph.node for out in node.output}


# ------------------------------------------------------------------------------- structure per placement

#: (QuantizeLinear, DequantizeLinear) in small_net: activations Q/DQ on images, r1 (shared by conv2 and
#: conv3), r2 -> 3 Q + 3 DQ; one weight DQ per conv -> 4; onnxruntime quantises the non-head convs' outputs
#: after the Relu that alone reads each (r1, r2: the same tensors, ORT folds the Relu into the Q) and the
#: 4 biases (+4 DQ)
EXPECTED_COUNTS = {"onnxruntime": (3, 3 + 4 + 4), "openvino": (3, 3 + 4), "tensorrt": (3, 3 + 4)}


@pytest.mark.parametrize("placement", PLACEMENT_NAMES)
def test_placement_inserts_the_expected_qdq_and_keeps_the_interface(net, placement, tmp_path):
    path, result = net
    original = onnx.load(str(path))
    out = tmp_path / f"{placement}.onnx"
    written = write_qdq(path, result, placement, out)
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert model == written
    counts = Counter(node.op_type for node in model.graph.node)
    assert (counts["QuantizeLinear"], counts["DequantizeLinear"]) == EXPECTED_COUNTS[placement]
    assert counts["Conv"] == 4 and counts["Relu"] == 2 and counts["Add"] == 1
    # the interface is unchanged: inputs, outputs (names, types, shapes) and the embedded ModelSpec
    assert list(model.graph.input) == list(original.graph.input)
    assert list(model.graph.output) == list(original.graph.output)
    assert list(model.metadata_props) == list(original.metadata_props)

    made_by = producers(model)
    initializers = {i.name for i in model.graph.initializer}
    activation_type = {"onnxruntime": np.uint8, "openvino": np.uint8, "tensorrt": np.int8}[placement]
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        x_dq, w_dq = made_by[conv.input[0]], made_by[conv.input[1]]
        # the activation arrives dequantised (directly, or through ORT's requantised conv output)
        assert x_dq.op_type == "DequantizeLinear"
        assert initializer(model, x_dq.input[2]).dtype == activation_type
        # one per-channel int8 weight DQ per conv, on the output-channel axis
        assert w_dq.op_type == "DequantizeLinear" and w_dq.input[0] in initializers
        assert [a.i for a in w_dq.attribute if a.name == "axis"] == [0]
        q_weight = initializer(model, w_dq.input[0])
        assert q_weight.dtype == np.int8 and q_weight.ndim == 4
        assert not initializer(model, w_dq.input[2]).any()
        # bias: int32 through DQ for ONNX Runtime, the untouched float initializer otherwise
        if placement == "onnxruntime":
            assert made_by[conv.input[2]].op_type == "DequantizeLinear"
            assert initializer(model, made_by[conv.input[2]].input[0]).dtype == np.int32
        else:
            assert conv.input[2] in {"b1", "b2", "b3", "b4"}
    # the float weights are gone (replaced by their int8 copies)
    assert not initializers & {"w1", "w2", "w3", "w4"}
    # conv outputs keep their names; ONNX Runtime's Relu reads the conv directly (the Q after it clips at 0)
    conv_output = {n.name: n.output[0] for n in model.graph.node if n.op_type == "Conv"}
    assert conv_output == {"conv1": "y1", "conv2": "y2", "conv3": "y3", "conv4": "y4"}
    if placement == "onnxruntime":
        assert made_by["r1"].op_type == made_by["r2"].op_type == "Relu"
        assert made_by["r1"].input[0] == "y1" and made_by["r2"].input[0] == "y2"


def test_tensorrt_placement_is_symmetric_int8(net, tmp_path):
    path, result = net
    model = write_qdq(path, result, "tensorrt", tmp_path / "trt.onnx")
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert sorted(n.input[0] for n in quantize) == ["images", "r1", "r2"]
    for node in quantize:
        zero_point = initializer(model, node.input[2])
        assert zero_point.dtype == np.int8 and zero_point == 0
        lo, hi = result.activation_ranges[node.input[0]]
        assert initializer(model, node.input[1]) == np.float32(max(abs(lo), abs(hi)) / 127)
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            assert not initializer(model, node.input[2]).any()  # every zero point 0, weights included


def test_unknown_placement_and_a_result_of_another_model_are_refused(net, tmp_path):
    path, result = net
    with pytest.raises(CalibrationError, match="no Q/DQ placement for 'tflite'"):
        get_placement("tflite")
    other = save(small_net(seed=1), tmp_path / "other.onnx")
    with pytest.raises(CalibrationError, match="calibration cache belongs to another model.*other.onnx"):
        write_qdq(other, result, "onnxruntime", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    assert {get_placement(name).name for name in PLACEMENT_NAMES} == set(PLACEMENT_NAMES)


# ------------------------------------------------------------------------- numbers: one conv, simulated


def quantize_dequantize(x, scale, zero_point, qmin, qmax):
    """ONNX QuantizeLinear then DequantizeLinear: x / scale in float32, round half to even, saturate."""
    q = np.clip(np.round(np.float32(x) / np.float32(scale)).astype(np.float64) + zero_point, qmin, qmax)
    return (q - zero_point) * np.float64(np.float32(scale))


def activation_encoding(lo, hi, placement):
    """(scale, zero point, qmin, qmax), computed here from the definitions (not with edgekit's helpers)."""
    if placement == "tensorrt":
        return np.float32(max(abs(lo), abs(hi)) / 127), 0, -128, 127
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    return np.float32((hi - lo) / 255), int(round(-lo / ((hi - lo) / 255))), 0, 255


def simulated_weight(weight, axis=0):
    """Per-channel symmetric int8: scale max|W_c| / 127, codes clip(round(W / s), -127, 127)."""
    shape = [1] * weight.ndim
    shape[axis] = -1
    other = tuple(a for a in range(weight.ndim) if a != axis)
    scales = (np.abs(weight).max(axis=other) / 127).astype(np.float32).reshape(shape)
    codes = np.clip(np.round(weight / scales), -127, 127)
    return codes, scales


def simulate_conv(x, weight, bias, x_range, placement, padding):
    """The conv the Q/DQ graph describes, in float64: quantised input, int8 weights, (int32) bias."""
    s_x, zp_x, qmin, qmax = activation_encoding(*x_range, placement)
    x_sim = quantize_dequantize(x, s_x, zp_x, qmin, qmax)
    codes, s_w = simulated_weight(weight)
    w_sim = codes * s_w.astype(np.float64)
    if bias is None:
        b_sim = None
    elif placement == "onnxruntime":   # int32 bias with scale s_x * s_w[c]
        bias_scale = np.float64(s_x) * s_w.reshape(-1).astype(np.float64)
        b_sim = torch.from_numpy(np.round(bias / bias_scale) * np.float32(bias_scale).astype(np.float64))
    else:
        b_sim = torch.from_numpy(bias.astype(np.float64))
    return F.conv2d(torch.from_numpy(x_sim), torch.from_numpy(w_sim), b_sim, padding=padding).numpy()


@pytest.mark.parametrize("placement", PLACEMENT_NAMES)
def test_one_conv_in_onnxruntime_equals_a_numpy_simulation(placement, tmp_path):
    rng = np.random.default_rng(7)
    weight = rng.normal(0, 0.4, (4, 3, 3, 3)).astype(np.float32)
    weight[2] *= 30.0  # channels of very different magnitude: per-channel scales matter
    bias = rng.normal(0, 0.3, 4).astype(np.float32)
    path = save(conv_graph(weight, bias, size=8), tmp_path / "conv.onnx")
    x = rng.normal(0.2, 1.1, (1, 3, 8, 8)).astype(np.float32)
    lo, hi = -1.5, 2.0          # a calibrated range that clips some of x (saturation is simulated too)
    assert x.min() < lo and x.max() > hi
    result = hand_result(path, {"images": (lo, hi), "output": (-50.0, 50.0)})
    qdq = write_qdq(path, result, placement, tmp_path / "qdq.onnx")

    expected = simulate_conv(x, weight, bias, (lo, hi), placement, padding=1)
    s_x, zp_x, _, _ = activation_encoding(lo, hi, placement)
    codes, s_w = simulated_weight(weight)

    # the graph holds exactly these parameters
    x_q = next(n for n in qdq.graph.node if n.op_type == "QuantizeLinear")
    assert initializer(qdq, x_q.input[1]) == s_x and initializer(qdq, x_q.input[2]) == zp_x
    np.testing.assert_array_equal(initializer(qdq, "w_quantized"), codes.astype(np.int8))
    np.testing.assert_array_equal(initializer(qdq, "w_scale"), s_w.reshape(-1))
    if placement == "onnxruntime":
        bias_codes = np.round(bias / (np.float64(s_x) * s_w.reshape(-1).astype(np.float64)))
        np.testing.assert_array_equal(initializer(qdq, "b_quantized"), bias_codes.astype(np.int32))
    else:
        np.testing.assert_array_equal(initializer(qdq, "b"), bias)

    actual = ort_session(tmp_path / "qdq.onnx").run(None, {"images": x})[0]
    magnitude = np.abs(expected).max(axis=(0, 2, 3))   # per output channel (channel 2 is 30x the others)
    assert np.all(np.abs(actual - expected).max(axis=(0, 2, 3)) <= 1e-4 * magnitude)
    # and the simulation is far from the float conv: the test sees the quantisation, not a no-op
    fp32 = ort_session(path).run(None, {"images": x})[0]
    assert np.all(np.abs(fp32 - expected).max(axis=(0, 2, 3)) > 1e-2 * magnitude)


def test_conv_transpose_weights_are_quantised_per_output_channel_on_axis_1(tmp_path):
    rng = np.random.default_rng(3)
    weight = rng.normal(0, 0.5, (3, 5, 2, 2)).astype(np.float32)   # [in, out, kh, kw]
    weight[:, 1] *= 20.0
    path = save(conv_graph(weight, None, size=4, pads=0, transpose=True), tmp_path / "up.onnx")
    x = rng.uniform(0.0, 1.0, (1, 3, 4, 4)).astype(np.float32)
    result = hand_result(path, {"images": (0.0, 1.0), "output": (-1.0, 1.0)})
    assert result.layers[0].op_type == "ConvTranspose" and len(result.layers[0].weight_scales) == 5
    qdq = write_qdq(path, result, "openvino", tmp_path / "qdq.onnx")
    w_dq = next(n for n in qdq.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "w_quantized")
    assert [a.i for a in w_dq.attribute if a.name == "axis"] == [1]
    s_x, zp_x, qmin, qmax = activation_encoding(0.0, 1.0, "openvino")
    codes, s_w = simulated_weight(weight, axis=1)
    expected = F.conv_transpose2d(torch.from_numpy(quantize_dequantize(x, s_x, zp_x, qmin, qmax)),
                                  torch.from_numpy(codes * s_w.astype(np.float64))).numpy()
    actual = ort_session(tmp_path / "qdq.onnx").run(None, {"images": x})[0]
    assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()


def test_onnxruntime_placement_requantises_a_non_head_conv_output(tmp_path):
    """conv1 -> y1 -> conv2: y1 is re-encoded with y1's own uint8 range before conv2 reads it."""
    rng = np.random.default_rng(11)
    w1, b1 = rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), rng.normal(0, 0.2, 4).astype(np.float32)
    w2 = rng.normal(0, 0.5, (2, 4, 1, 1)).astype(np.float32)
    path = save(two_conv_graph(w1, b1, w2), tmp_path / "two.onnx")
    x = rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)
    x_range = (float(x.min()), float(x.max()))
    y1_float = simulate_conv(x, w1, b1, x_range, "onnxruntime", padding=1)   # conv1 before requantisation
    y1_range = (-2.0, 3.0)          # clips y1 on both sides
    assert y1_float.min() < -2.0 and y1_float.max() > 3.0
    result = hand_result(path, {"images": x_range, "y1": y1_range, "output": (-9.0, 9.0)})
    qdq = write_qdq(path, result, "onnxruntime", tmp_path / "qdq.onnx")
    # y1 is quantised where conv1 produces it: conv2 reads the DequantizeLinear after it
    y1_dq = producers(qdq)[next(n for n in qdq.graph.node if n.name == "conv2").input[0]]
    assert y1_dq.op_type == "DequantizeLinear" and producers(qdq)[y1_dq.input[0]].input[0] == "y1"
    qdq.graph.output.append(onnx.helper.make_tensor_value_info(y1_dq.output[0], onnx.TensorProto.FLOAT, None))
    y1_ort, out_ort = ort_session(qdq.SerializeToString(), optimize=False).run([y1_dq.output[0], "output"],
                                                                                 {"images": x})
    s, zp, _, _ = activation_encoding(*y1_range, "onnxruntime")
    codes = y1_ort / np.float64(s) + zp
    # y1 is on the uint8 grid of its range, within half a step of the clipped float value
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
    assert codes.min() > -0.5 and codes.max() < 255.5
    assert np.abs(y1_ort - np.clip(y1_float, -zp * s, (255 - zp) * s)).max() <= s * (0.5 + 1e-3)
    assert np.abs(y1_ort - y1_float).max() > 0.5  # the clipping happened
    # conv2 computes on that requantised y1 (int8 weights, no bias)
    c2, s2 = simulated_weight(w2)
    expected = F.conv2d(torch.from_numpy(y1_ort.astype(np.float64)), torch.from_numpy(c2 * s2.astype(np.float64))).numpy()
    assert np.abs(out_ort - expected).max() <= 1e-4 * np.abs(expected).max()


def two_conv_graph(w1, b1, w2, size=8):
    """images -> conv1 (w1, b1, pad 1) -> y1 -> conv2 (w2, 1x1, no bias) -> output; conv1 is not a head conv."""
    graph = conv_graph(w1, b1, size=size)
    graph.graph.node[0].output[0] = "y1"
    graph.graph.node.append(onnx.helper.make_node("Conv", ["y1", "w2"], ["output"], name="conv2"))
    graph.graph.initializer.append(numpy_helper.from_array(w2, "w2"))
    del graph.graph.output[0].type.tensor_type.shape.dim[1:2]
    graph.graph.output[0].type.tensor_type.shape.dim.insert(1, onnx.TensorShapeProto.Dimension(dim_value=w2.shape[0]))
    onnx.checker.check_model(graph)
    return graph


def test_a_bias_that_overflows_int32_widens_the_weight_scale_instead_of_saturating(tmp_path):
    """A near-constant conv input (range ±1e-6) makes s_x · s_w ~1e-10: bias 5.0 would need a code of ~5e10.

    Saturated to 2^31 - 1 it decodes to ~0.2 instead of 5.0: a wrong bias, silently (a real yolov8 head
    with dead activations lost its class-logit bias this way). A float bias is no way out, ONNX Runtime's
    optimizer quantises it to int32 itself. The weight scale of such a channel is widened so that the
    bias code fits in 2^30, as ONNX Runtime's own quantiser does."""
    rng = np.random.default_rng(5)
    w1 = rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)
    b1 = np.float32([5.0, -3.0, 1e-9, 0.0])   # channels 0 and 1 overflow, 2 and 3 do not
    w2 = rng.normal(0, 0.5, (2, 4, 1, 1)).astype(np.float32)
    path = save(two_conv_graph(w1, b1, w2), tmp_path / "two.onnx")
    x = np.clip(rng.normal(0, 5e-7, (1, 3, 8, 8)), -1e-6, 1e-6).astype(np.float32)
    x_range, y1_range = (-1e-6, 1e-6), (-4.0, 6.0)
    result = hand_result(path, {"images": x_range, "y1": y1_range, "output": (-20.0, 20.0)})
    s_x, _, _, _ = activation_encoding(*x_range, "onnxruntime")
    _, s_w = simulated_weight(w1)
    s_w = s_w.reshape(-1).astype(np.float64)
    assert np.abs(b1[:2] / (np.float64(s_x) * s_w[:2])).min() > 2**31  # the premise: int32 cannot hold them

    qdq = write_qdq(path, result, "onnxruntime", tmp_path / "qdq.onnx")
    widened = np.abs(b1.astype(np.float64)) / (np.float64(s_x) * 2**30)
    expected_scales = np.where(widened > s_w, widened, s_w).astype(np.float32)
    np.testing.assert_allclose(initializer(qdq, "w_scale"), expected_scales, rtol=1e-7)
    np.testing.assert_array_equal(initializer(qdq, "w_scale")[2:], np.float32(s_w[2:]))  # untouched channels
    bias_codes = initializer(qdq, "b_quantized").astype(np.float64)
    assert np.abs(bias_codes).max() <= 2**30 * (1 + 2**-23)  # 2^30, up to the float32 rounding of the scale
    bias_scale = initializer(qdq, "b_scale").astype(np.float64)
    # every bias decodes within half a step (plus the float32 rounding of the stored scale, 2^-24 relative)
    assert np.all(np.abs(bias_codes * bias_scale - b1) <= bias_scale * 0.5 + np.abs(b1) * 2**-23)

    # against the float model: the bias survives (y1 ≈ b1), only quantisation error remains
    fp32 = {"y1": F.conv2d(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(w1.astype(np.float64)),
                           torch.from_numpy(b1.astype(np.float64)), padding=1).numpy()}
    fp32["output"] = F.conv2d(torch.from_numpy(fp32["y1"]), torch.from_numpy(w2.astype(np.float64))).numpy()
    s_y, _, _, _ = activation_encoding(*y1_range, "onnxruntime")
    qdq.graph.output.append(onnx.helper.make_tensor_value_info("y1", onnx.TensorProto.FLOAT, None))
    y1_ort = ort_session(qdq.SerializeToString(), optimize=False).run(["y1"], {"images": x})[0]
    # half a y1 step, plus the widened weights' loss: 27 products of at most 255 |b| / 2^31 each
    assert np.all(np.abs(y1_ort - fp32["y1"]).max(axis=(0, 2, 3)) <= s_y * 0.5 + 27 * 255 * np.abs(b1) / 2**31 + 1e-6)
    # ONNX Runtime fused (integer QLinearConv for conv1): every y1 within one step, so each output within
    # s_y · Σ|w2| plus conv2's own int8 weight rounding (|y1| <= 6, half a weight step per channel)
    fused = ort_session(tmp_path / "qdq.onnx").run(None, {"images": x})[0]
    _, s_w2 = simulated_weight(w2)
    bound = s_y * np.abs(w2).sum(axis=(1, 2, 3)) + 6.0 * 4 * s_w2.reshape(-1) / 2
    assert np.all(np.abs(fused - fp32["output"]).max(axis=(0, 2, 3)) <= bound), (np.abs(fused - fp32["output"]).max(), bound)
    assert np.abs(fp32["output"]).max() > 2.0  # the bias carries the output: losing it would fail the bound


# ------------------------------------------------------------------------------ backends really use int8


def test_onnxruntime_fuses_the_qdq_units_into_qlinearconv(net, tmp_path):
    path, result = net
    write_qdq(path, result, "onnxruntime", tmp_path / "qdq.onnx")
    x = probe((1, 3, 16, 16), seed=5)
    fused = ort_session(tmp_path / "qdq.onnx", optimized_path=tmp_path / "optimized.onnx")
    fused_out = fused.run(None, {"images": x})[0]
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    ops = Counter(n.op_type for n in optimized.graph.node)
    # conv1 and conv2 have the full DQ(x), DQ(w), DQ(b) -> Conv -> Q unit: integer QLinearConv.
    # The head convs (no output Q) stay float convs on dequantised inputs.
    assert ops["QLinearConv"] == 2, ops
    assert ops["Conv"] + ops["FusedConv"] == 2, ops
    # the same session options on the fp32 graph fuse nothing into QLinearConv
    ort_session(path, optimized_path=tmp_path / "fp32_optimized.onnx")
    assert "QLinearConv" not in {n.op_type for n in onnx.load(str(tmp_path / "fp32_optimized.onnx")).graph.node}
    # integer arithmetic vs the Q/DQ float simulation: at most a rounding step apart, far from fp32's error
    simulated = ort_session(tmp_path / "qdq.onnx", optimize=False).run(None, {"images": x})[0]
    fp32 = small_net_reference(x)["output"]
    relative = np.linalg.norm(fused_out - simulated) / np.linalg.norm(simulated)
    assert relative < 1e-2
    assert 0 < np.linalg.norm(simulated - fp32) / np.linalg.norm(fp32) < 0.1


def openvino_conv_precisions(onnx_path) -> tuple[list[str], Counter]:
    ov = pytest.importorskip("openvino")
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    conv_precisions, const_types = [], Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        layer_type = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
        if layer_type == "Convolution":
            conv_precisions.append(precision)
        if layer_type == "Const":
            const_types[precision] += 1
    return conv_precisions, const_types


def test_openvino_placement_compiles_to_u8_i8_convolutions(net, tmp_path):
    path, result = net
    fp32_convs, _ = openvino_conv_precisions(path)
    assert fp32_convs == ["f32"] * 4  # the contrast: the float graph runs f32 convolutions
    write_qdq(path, result, "openvino", tmp_path / "ov.onnx")
    int8_convs, consts = openvino_conv_precisions(tmp_path / "ov.onnx")
    assert len(int8_convs) == 4 and set(int8_convs) <= {"u8", "i8"}, int8_convs
    assert consts["i8"] == 4  # the four int8 weight tensors stay int8 in the compiled model


# --------------------------------------------------------------------------------- float layers, opset


@pytest.mark.parametrize("placement", PLACEMENT_NAMES)
def test_float_layers_are_left_untouched(net, placement, tmp_path):
    path, result = net
    original = onnx.load(str(path))
    partial = result.with_float_layers({"conv2": "test"})
    model = write_qdq(path, partial, placement, tmp_path / "partial.onnx")
    conv2 = next(n for n in model.graph.node if n.name == "conv2")
    if placement == "onnxruntime":
        # the very same node but for its input: every reader of r1 takes the DequantizeLinear after it, else ORT
        # could not fuse conv1 into QLinearConv (its output would have a float reader)
        assert producers(model)[conv2.input[0]].op_type == "DequantizeLinear"
        conv2 = onnx.NodeProto()
        conv2.CopyFrom(next(n for n in model.graph.node if n.name == "conv2"))
        conv2.input[0] = "r1"
    assert conv2 == next(n for n in original.graph.node if n.name == "conv2")  # the very same node
    np.testing.assert_array_equal(initializer(model, "w2"), initializer(original, "w2"))
    assert initializer(model, "w2").dtype == np.float32
    initializers = {i.name for i in model.graph.initializer}
    weight_dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in initializers
                  and initializer(model, n.input[0]).ndim == 4]
    assert sorted(n.input[0] for n in weight_dqs) == ["w1_quantized", "w3_quantized", "w4_quantized"]
    assert "w2_quantized" not in {i.name for i in model.graph.initializer}
    # conv2's output is not requantised, so conv4 quantises r2 itself
    assert "y2" in conv2.output and any(n.op_type == "QuantizeLinear" and n.input[0] == "r2" for n in model.graph.node)
    out = ort_session(tmp_path / "partial.onnx", optimize=False).run(None, {"images": probe((1, 3, 16, 16))})[0]
    assert np.isfinite(out).all()


def test_an_opset_11_graph_is_upgraded_for_per_channel_dq(net, tmp_path):
    path17, result17 = net
    path11 = save(small_net(opset=11), tmp_path / "model11.onnx")
    assert onnx.load(str(path11)).opset_import[0].version == 11
    # the same ranges, for the opset-11 file (its own sha256)
    result11 = hand_result(path11, result17.activation_ranges)
    model = write_qdq(path11, result11, "onnxruntime", tmp_path / "qdq11.onnx")
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {13}
    onnx.checker.check_model(onnx.load(str(tmp_path / "qdq11.onnx")), full_check=True)
    assert any(a.name == "axis" for n in model.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute)
    write_qdq(path17, result17, "onnxruntime", tmp_path / "qdq17.onnx")
    x = probe((1, 3, 16, 16), seed=9)
    out11 = ort_session(tmp_path / "qdq11.onnx", optimize=False).run(None, {"images": x})[0]
    out17 = ort_session(tmp_path / "qdq17.onnx", optimize=False).run(None, {"images": x})[0]
    np.testing.assert_array_equal(out11, out17)  # the upgrade changed nothing numeric


# ------------------------------------------------------------------------- producer-side (openvino)


@pytest.fixture(scope="module")
def tiny_yolov8(tiny_yolov8_calibrated):
    """A width-0.125 yolov8 at 64x64 (C2f: Split -> conv, SPPF: MaxPool -> Concat -> conv), minmax-calibrated."""
    path, result, _ = tiny_yolov8_calibrated
    return path, result


def test_openvino_placement_quantises_producers_not_conv_inputs(tiny_yolov8, tmp_path):
    path, result = tiny_yolov8
    model = write_qdq(path, result, "openvino", tmp_path / "ov.onnx")
    producer = {o: n for n in model.graph.node for o in n.output}
    activation_q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    # one Q/DQ per source tensor, never on the output of a Split / Concat / MaxPool / Resize
    assert activation_q
    assert all(producer.get(q.input[0]) is None or producer[q.input[0]].op_type not in ("Split", "Concat", "MaxPool", "Resize")
               for q in activation_q)
    # fewer activation Q/DQ than quantised convs: C2f's Split feeds several convs through one Q/DQ
    assert len(activation_q) < len(result.quantized_layers)
    # every quantised conv still reads a dequantised activation (directly or through Split/Concat/...)
    for node in model.graph.node:
        if node.op_type == "Conv":
            tensor = node.input[0]
            while producer.get(tensor) is not None and producer[tensor].op_type in ("Split", "Concat", "MaxPool", "Resize"):
                tensor = producer[tensor].input[0]
            assert producer[tensor].op_type == "DequantizeLinear", node.name


def test_openvino_placement_runs_split_and_pooling_on_u8(tiny_yolov8, tmp_path):
    ov = pytest.importorskip("openvino")
    path, result = tiny_yolov8
    write_qdq(path, result, "openvino", tmp_path / "ov.onnx")
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(tmp_path / "ov.onnx")), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    kinds = Counter((op.get_rt_info()["layerType"].astype(str), op.get_rt_info()["runtimePrecision"].astype(str))
                    for op in compiled.get_runtime_model().get_ops())
    assert kinds[("Split", "f32")] == 0 and kinds[("Split", "u8")] > 0, kinds
    assert kinds[("Pooling", "f32")] == 0 and kinds[("Pooling", "u8")] > 0, kinds
    assert kinds[("Convolution", "f32")] == 0
    # and the numbers: OpenVINO's int8 agrees with ONNX Runtime running the same Q/DQ graph
    import onnxruntime as ort

    x = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)
    expected = ort.InferenceSession(str(tmp_path / "ov.onnx"), providers=["CPUExecutionProvider"]).run(None, {"images": x})
    got = list(compiled({"images": x}).values())
    for want, have in zip(expected, got):
        assert np.abs(have - want).max() <= 0.05 * np.abs(want).max()
