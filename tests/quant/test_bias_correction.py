"""Bias correction: an int8 layer's bias absorbs the mean output shift that rounding its weights causes.

Oracles: torch's conv2d with the rounded weights (the shift itself), the fp32 graph run by ONNX Runtime
(the Q/DQ graph's mean output error with and without the correction).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from edgekit.errors import CalibrationError
from edgekit.quant.qdq import write_qdq
from edgekit.quant.result import CalibrationResult, bias_correction, quantize_weight, weight_scales
from tests.quant.quant_graphs import conv_graph, ort_session, save
from tests.quant.test_qdq import hand_result

PLACEMENT_NAMES = ("onnxruntime", "openvino", "tensorrt")


def coarse_weight(rng, shape) -> np.ndarray:
    """Weights whose int8 rounding is coarse: one large tap per output channel sets a big step for the rest."""
    weight = rng.normal(0, 0.05, shape).astype(np.float32)
    weight.reshape(shape[0], -1)[:, 0] = 3.0
    return weight


def rounded(weight: np.ndarray) -> np.ndarray:
    scales = weight_scales(weight)
    return quantize_weight(weight, scales).astype(np.float32) * scales.reshape(-1, 1, 1, 1)


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_shift_is_the_mean_output_change_of_the_rounded_weights(groups):
    rng = np.random.default_rng(groups)
    weight = coarse_weight(rng, (6, 6 // groups, 3, 3))
    channel_means = rng.uniform(-1.0, 2.0, 6)
    x = (channel_means.reshape(1, 6, 1, 1) + rng.normal(0, 0.1, (2, 6, 48, 48))).astype(np.float32)
    # the oracle: torch's conv with the rounded weights minus the conv with the float ones, averaged (no padding)
    change = (F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(rounded(weight)).double(), groups=groups)
              - F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(weight).double(), groups=groups))
    expected = change.mean(dim=(0, 2, 3)).numpy()
    shift = bias_correction(weight, weight_scales(weight), x.mean(axis=(0, 2, 3)), "Conv", groups)
    assert shift.shape == (6,) and np.abs(expected).max() > 1e-3  # rounding really shifts the output
    np.testing.assert_allclose(shift, expected, rtol=0.02, atol=1e-5)


def test_no_correction_without_means_for_conv_transpose_or_a_mismatched_mean():
    weight = coarse_weight(np.random.default_rng(0), (4, 3, 3, 3))
    scales = weight_scales(weight)
    assert bias_correction(weight, scales, (), "Conv") is None                 # a result from before input means
    assert bias_correction(weight, scales, (0.1,) * 3, "ConvTranspose") is None
    assert bias_correction(weight, scales, (0.1,) * 4, "Conv") is None          # 4 means, 3 input channels
    assert bias_correction(weight, scales, (0.0,) * 3, "Conv") == pytest.approx(np.zeros(4))


def corrected_conv(tmp_path, with_bias: bool = True):
    """A 3x3 conv with coarse weights, its fp32 file, a probe with non-zero channel means and two results:
    with the probe's channel means (bias correction) and without (as a result from before input means)."""
    rng = np.random.default_rng(5)
    weight = coarse_weight(rng, (4, 3, 3, 3))
    bias = rng.normal(0, 0.3, 4).astype(np.float32) if with_bias else None
    path = save(conv_graph(weight, bias, size=32, pads=0), tmp_path / "conv.onnx")
    x = (np.array([1.5, -0.5, 0.8]).reshape(1, 3, 1, 1) + rng.normal(0, 0.2, (1, 3, 32, 32))).astype(np.float32)
    fp32 = ort_session(path).run(None, {"images": x})[0]
    plain = hand_result(path, {"images": (float(x.min()), float(x.max())),
                               "output": (float(fp32.min()), float(fp32.max()))})
    means = tuple(float(m) for m in x.mean(axis=(0, 2, 3)))
    corrected = dataclasses.replace(plain, layers=tuple(dataclasses.replace(layer, input_mean=means)
                                                        for layer in plain.layers))
    return path, weight, bias, x, fp32, plain, corrected


@pytest.mark.parametrize("placement", PLACEMENT_NAMES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_qdq_graph_with_correction_has_the_fp32_mean_output(placement, with_bias, tmp_path):
    path, weight, bias, x, fp32, plain, corrected = corrected_conv(tmp_path, with_bias)
    errors = {}
    for name, result in (("plain", plain), ("corrected", corrected)):
        write_qdq(path, result, placement, tmp_path / f"{name}.onnx")
        out = ort_session(tmp_path / f"{name}.onnx").run(None, {"images": x})[0]
        errors[name] = np.abs((out - fp32).mean(axis=(0, 2, 3)))  # per output channel
    assert errors["plain"].max() > 0.05                  # the coarse weights shift the mean output
    assert errors["corrected"].max() < 0.1 * errors["plain"].max(), errors
    # the bias in the graph is the float bias minus the shift (int32 codes for ONNX Runtime's fusion)
    qdq = onnx.load(str(tmp_path / "corrected.onnx"))
    values = {init.name: numpy_helper.to_array(init) for init in qdq.graph.initializer}
    conv = next(n for n in qdq.graph.node if n.op_type == "Conv")
    assert len(conv.input) == 3  # a bias-free conv gained one
    shift = bias_correction(weight, weight_scales(weight), corrected.layers[0].input_mean)
    expected = (bias if bias is not None else 0) - shift
    if placement == "onnxruntime":
        dq = next(n for n in qdq.graph.node if n.output[0] == conv.input[2])
        got = values[dq.input[0]].astype(np.float64) * values[dq.input[1]].astype(np.float64)
        np.testing.assert_allclose(got, expected, atol=float(values[dq.input[1]].max()))
    else:
        np.testing.assert_allclose(values[conv.input[2]], expected, rtol=1e-6, atol=1e-7)


def test_a_result_without_input_means_keeps_the_bias_as_it_was(tmp_path):
    path, weight, bias, x, fp32, plain, corrected = corrected_conv(tmp_path)
    data = corrected.to_dict()
    assert data["layers"][0]["input_mean"] == list(corrected.layers[0].input_mean)
    for layer in data["layers"]:
        del layer["input_mean"]  # a calibration.json written before input means were recorded
    old = CalibrationResult.from_dict(data)
    assert old.layers[0].input_mean == ()
    qdq = write_qdq(path, old, "openvino", tmp_path / "old.onnx")
    conv = next(n for n in qdq.graph.node if n.op_type == "Conv")
    assert conv.input[2] == "b"


def test_a_non_finite_input_mean_is_refused_naming_the_layer(tmp_path):
    path, weight, bias, x, fp32, plain, corrected = corrected_conv(tmp_path)
    data = corrected.to_dict()
    data["layers"][0]["input_mean"][1] = float("nan")
    with pytest.raises(CalibrationError, match="layer 'conv' has a non-finite input mean"):
        CalibrationResult.from_dict(data, "cache.json")
