"""The onnxruntime Q/DQ placement judged by what ONNX Runtime executes: its optimised graph (saved through
``SessionOptions.optimized_model_filepath``) must run SiLU, Add, Concat, MaxPool, Resize and Split on uint8
between QLinearConv kernels, as ONNX Runtime's own ``quantize_static`` model of the same graph does."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import onnx
import pytest

from edgekit.quant.placement import FUSED_UINT8
from edgekit.quant.qdq import head_conv_outputs, write_qdq

ort = pytest.importorskip("onnxruntime")

#: float ops that must not survive in ORT's optimised int8 graph outside the head (QuickGelu: ORT's fp32 SiLU)
FLOAT_BODY_OPS = ("Sigmoid", "Mul", "Add", "MaxPool", "QuickGelu", "FusedConv")


@pytest.fixture(scope="module")
def tiny(tiny_yolov8_calibrated):
    """conftest's calibrated tiny yolov8 (C2f, SPPF, FPN Resize) with the number of its head convs."""
    path, result, tensors = tiny_yolov8_calibrated
    return path, result, len(head_conv_outputs(onnx.load(str(path)))), tensors


def executed_ops(path, folder, name: str) -> Counter:
    """op types of the graph ONNX Runtime really runs (all optimisations, as edgekit's runner sets them)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(folder / f"{name}.optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)


def quantize_static_model(path, tensors, out):
    """ONNX Runtime's own static quantiser: QDQ, per-channel int8 weights, uint8 activations, MinMax."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{"images": t} for t in tensors])

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    return out


def test_onnxruntime_runs_the_body_in_integer_arithmetic_like_quantize_static(tiny, tmp_path):
    path, result, heads, tensors = tiny
    write_qdq(path, result, FUSED_UINT8, tmp_path / "edgekit.onnx")
    ours = executed_ops(tmp_path / "edgekit.onnx", tmp_path, "edgekit")
    fp32 = Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    # every conv but the heads is an integer QLinearConv; the heads (float outputs, see head_conv_outputs) are not
    assert ours["QLinearConv"] == fp32["Conv"] - heads, ours
    assert ours["Conv"] == heads, ours
    # SiLU as QLinearSigmoid + QLinearMul, residual Add, C2f/SPPF Concat on uint8; MaxPool on uint8 (NHWC)
    assert ours["QLinearSigmoid"] == ours["QLinearMul"] == fp32["Sigmoid"] == fp32["Mul"] > 0, ours
    assert ours["QLinearAdd"] == fp32["Add"] > 0, ours
    assert ours["NhwcMaxPool"] == fp32["MaxPool"] > 0, ours
    assert not any(ours[op] for op in FLOAT_BODY_OPS), ours
    # Split / Resize lose their Q/DQ (same encoding on both sides): uint8 data movement, no DQ -> op -> Q left
    assert ours["Split"] == fp32["Split"] and ours["Resize"] == fp32["Resize"]
    assert ours["QuantizeLinear"] == 1, ours  # the network input, once
    # DequantizeLinear only before the head convs: activation, weight, bias
    assert ours["DequantizeLinear"] == 3 * heads, ours
    # the bar: ONNX Runtime's own quantiser on the same graph runs no more integer kernels in the body
    theirs = executed_ops(quantize_static_model(path, tensors, tmp_path / "qs.onnx"), tmp_path, "qs")
    for op in ("QLinearSigmoid", "QLinearMul", "QLinearAdd", "NhwcMaxPool"):
        assert ours[op] == theirs[op], (op, ours, theirs)
    assert ours["QLinearConv"] == theirs["QLinearConv"] - heads  # quantize_static also quantises the head outputs
    concat_after_heads = ours["Concat"]
    assert ours["QLinearConcat"] == theirs["QLinearConcat"] - concat_after_heads


def test_integer_kernels_reproduce_the_qdq_simulation(tiny, tmp_path):
    """ORT's fused integer graph against the same Q/DQ graph run unoptimised (float simulation of each rounding)."""
    path, result, _, tensors = tiny
    write_qdq(path, result, FUSED_UINT8, tmp_path / "edgekit.onnx")
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    simulated = ort.InferenceSession(str(tmp_path / "edgekit.onnx"), plain, providers=["CPUExecutionProvider"])
    fused = ort.InferenceSession(str(tmp_path / "edgekit.onnx"), providers=["CPUExecutionProvider"])
    fp32 = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for x in tensors[:2]:
        for want, got, ref in zip(simulated.run(None, {"images": x}), fused.run(None, {"images": x}),
                                  fp32.run(None, {"images": x})):
            # integer requantisation rounds where the simulation rounds, up to a step at a tie (1/255 of a range)
            assert np.abs(got - want).max() <= 0.02 * np.abs(want).max()
            assert np.abs(got - ref).max() <= 0.1 * np.abs(ref).max()


def test_a_float_layer_and_an_old_cache_still_fuse_the_rest(tiny, tmp_path):
    path, result, heads, tensors = tiny
    convs = [layer.name for layer in result.quantized_layers]
    # a middle conv kept in float: it runs float, every other conv still fuses
    partial = result.with_float_layers({convs[len(convs) // 2]: "test"})
    write_qdq(path, partial, FUSED_UINT8, tmp_path / "partial.onnx")
    ops = executed_ops(tmp_path / "partial.onnx", tmp_path, "partial")
    assert ops["QLinearConv"] == len(convs) - heads - 1, ops
    # a cache from before the Sigmoid / Mul / Add / Concat ranges were recorded: convs quantise their own inputs
    conv_tensors = {t for layer in result.layers for t in (layer.input, layer.output)}
    old = replace(result, activation_ranges={k: v for k, v in result.activation_ranges.items() if k in conv_tensors})
    write_qdq(path, old, FUSED_UINT8, tmp_path / "old.onnx")
    ops = executed_ops(tmp_path / "old.onnx", tmp_path, "old")
    assert ops["QLinearConv"] == len(convs) - heads, ops
    out = ort.InferenceSession(str(tmp_path / "old.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"images": tensors[0]})
    assert all(np.isfinite(o).all() for o in out)
