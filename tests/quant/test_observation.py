"""Calibration's observation graph (quant/observation.py): the per-image summaries it computes inside the graph,
on every installed engine, against the float64 torch reference of the same tensors."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.errors import CalibrationError
from edgekit.quant.collect import calibrate
from edgekit.quant.observation import (
    ENGINES,
    SAMPLE_TARGET,
    ObservationRun,
    fastest_engine,
    observation_graph,
    split,
)
from tests.quant.quant_graphs import save, small_net, small_net_reference

TENSORS = ("images", "y1", "r1", "y2", "r2", "y3", "y4")
LAYER_INPUTS = ("images", "r1", "r2")


def installed(engine: str) -> bool:
    try:
        __import__(engine)
    except ImportError:
        return False
    return True


ENGINE_PARAMS = [pytest.param(engine, marks=pytest.mark.skipif(not installed(engine), reason=f"{engine} missing"))
                 for engine in ENGINES]


def grid_sample(values: np.ndarray) -> np.ndarray:
    """The documented sample of a rank-4 tensor: every channel, every s-th row and column from 0,
    s = max(1, ceil(sqrt(size / SAMPLE_TARGET)))."""
    stride = max(1, math.ceil(math.sqrt(values.size / SAMPLE_TARGET)))
    return values[:, :, ::stride, ::stride].ravel()


def images(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1, (1, 3, size, size)).astype(np.float32) for _ in range(count)]


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
@pytest.mark.parametrize("opset", [11, 17, 18])
def test_summaries_equal_the_reference_tensors_image_by_image(engine, opset):
    """min, max, per-channel means of the layer inputs, the output's sum and the grid samples of each tensor, for
    five images of different spread (results in image order: the OpenVINO ring keeps several in flight). At 128 px
    the tensors hold 8 x 128 x 128 values: stride 3, so the sample is a real subsample. Opsets 11 / 17 / 18 write
    the reductions' axes as an attribute or as an input."""
    model = small_net(opset=opset, size=128)
    observation = observation_graph(model, TENSORS, LAYER_INPUTS, histogram=True)
    onnx.checker.check_model(observation.model)
    inputs = [x * scale for x, scale in zip(images(5, 128), (0.5, 1.0, 2.0, 4.0, 8.0))]
    summaries = list(ObservationRun(observation, engine).summaries(inputs))
    assert len(summaries) == len(inputs)
    for x, summary in zip(inputs, summaries):
        reference = small_net_reference(x)
        np.testing.assert_allclose(summary.minimum, [reference[n].min() for n in TENSORS], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(summary.maximum, [reference[n].max() for n in TENSORS], rtol=1e-5, atol=1e-5)
        assert summary.channel_counts.tolist() == [3, 8, 8]
        for name, means in zip(LAYER_INPUTS, split(summary.channel_means, summary.channel_counts)):
            np.testing.assert_allclose(means, reference[name].mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(summary.output_sums, [reference["output"].sum()], rtol=1e-4, atol=1e-3)
        samples = split(summary.samples, summary.sample_sizes)
        assert summary.sample_sizes.tolist() == [grid_sample(reference[n]).size for n in TENSORS]
        assert max(summary.sample_sizes) <= SAMPLE_TARGET and summary.sample_sizes[1] == 8 * 43 * 43  # stride 3
        for name, sample in zip(TENSORS, samples):
            np.testing.assert_allclose(sample, grid_sample(reference[name]), rtol=1e-5, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_a_graph_with_symbolic_sizes_and_a_rank_3_tensor(engine):
    """The strides are computed in the graph from each tensor's shape: symbolic batch / height / width work, and a
    tensor of another rank is sampled flat with stride ceil(size / SAMPLE_TARGET)."""
    weight = np.random.default_rng(1).normal(0, 1, (4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["y", "shape"], ["flat"], name="reshape"),
             helper.make_node("Relu", ["flat"], ["out"], name="relu")]
    graph = helper.make_graph(nodes, "symbolic",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w"),
                               numpy_helper.from_array(np.array([0, 4, -1], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    observation = observation_graph(model, ("x", "y", "flat"), ("x",), histogram=True)
    run = ObservationRun(observation, engine)
    for size in (40, 120):  # one engine, two input sizes
        x = images(1, size, seed=size)[0]
        (summary,) = run.summaries([x])
        y = _conv(x, weight)
        flat = y.reshape(1, 4, -1)
        stride = max(1, math.ceil(flat.size / SAMPLE_TARGET))
        x_sample, y_sample, flat_sample = split(summary.samples, summary.sample_sizes)
        np.testing.assert_allclose(x_sample, grid_sample(x), rtol=1e-6)
        np.testing.assert_allclose(y_sample, grid_sample(y), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(flat_sample, flat.ravel()[::stride], rtol=1e-4, atol=1e-4)
        assert (stride > 1) == (size == 120)
        np.testing.assert_allclose(summary.maximum, [x.max(), y.max(), y.max()], rtol=1e-5)


def _conv(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    return F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(weight).double(), padding=1).numpy()


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_a_run_abandoned_midway_waits_for_its_requests_and_a_new_one_starts_clean(engine):
    observation = observation_graph(small_net(size=64), TENSORS, LAYER_INPUTS, histogram=False)
    run = ObservationRun(observation, engine)
    inputs = images(6, 64, seed=3)
    summaries = run.summaries(inputs)
    first = next(summaries)
    summaries.close()  # the consumer stops after one image (an error in the caller's loop)
    again = list(run.summaries(inputs[:2]))
    np.testing.assert_array_equal(again[0].maximum, first.maximum)
    assert again[1].maximum[0] == pytest.approx(inputs[1].max())
    assert again[0].samples is None


def test_the_default_engine_is_openvino_when_installed_and_an_unknown_one_is_refused():
    assert fastest_engine() == ("openvino" if installed("openvino") else "onnxruntime")
    observation = observation_graph(small_net(), TENSORS, LAYER_INPUTS, histogram=False)
    with pytest.raises(ValueError, match="expected one of openvino, onnxruntime"):
        ObservationRun(observation, "tensorrt")


@pytest.mark.skipif(not (installed("openvino") and installed("onnxruntime")), reason="needs both engines")
def test_both_engines_calibrate_alike(tmp_path, monkeypatch):
    """The engine is an implementation detail: the ranges, means and mse thresholds of the two agree to float32
    rounding (the engines sum in different orders)."""
    import edgekit.quant.collect as collect

    path = save(small_net(size=96), tmp_path / "net.onnx")
    inputs = images(6, 96, seed=5)
    results = {}
    for engine in ENGINES:
        monkeypatch.setattr(collect, "ObservationRun", lambda observation, e=engine: ObservationRun(observation, e))
        results[engine] = calibrate(path, lambda: iter(inputs), method="mse")
        assert results[engine].notes["observed_with"] == engine
    ov, ort = results["openvino"], results["onnxruntime"]
    for name, (lo, hi) in ort.activation_ranges.items():
        assert ov.activation_ranges[name] == pytest.approx((lo, hi), rel=1e-5, abs=1e-6), name
    for a, b in zip(ov.layers, ort.layers):
        np.testing.assert_allclose(a.input_mean, b.input_mean, rtol=1e-5, atol=1e-6)


def test_a_non_finite_model_output_is_a_calibration_error_naming_it(tmp_path):
    """A NaN that no observed tensor carries (a Log of a conv output that goes negative) still stops calibration:
    the output sums propagate it."""
    weight = -np.ones((2, 3, 1, 1), np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
             helper.make_node("Log", ["y"], ["out"], name="log")]
    graph = helper.make_graph(nodes, "nan_out", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [numpy_helper.from_array(weight, "w")])
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "log.onnx")
    positive = np.ones((1, 3, 4, 4), np.float32)
    with pytest.raises(CalibrationError, match="model output 'out' is not finite on calibration image 0"):
        calibrate(path, lambda: iter([positive]), method="minmax")


def test_a_nan_is_reported_at_the_first_tensor_it_reaches(tmp_path):
    """A NaN inside the graph reaches every tensor after it; the error names the earliest in graph order, where it
    arose, not the first name in sorted order (here conv2's output ``a_late`` sorts before ``m_early``)."""
    rng = np.random.default_rng(2)
    w1, w2 = rng.normal(size=(3, 3, 1, 1)).astype(np.float32), rng.normal(size=(2, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Sqrt", ["x"], ["root"], name="sqrt"),
             helper.make_node("Conv", ["root", "w1"], ["m_early"], name="conv1"),
             helper.make_node("Conv", ["m_early", "w2"], ["a_late"], name="conv2")]
    graph = helper.make_graph(nodes, "nan_mid", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("a_late", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "mid.onnx")
    x = np.ones((1, 3, 4, 4), np.float32)
    x[0, 1, 2, 2] = -1.0  # sqrt(-1) = NaN, in the input of conv1 ("root"), not in the network input
    with pytest.raises(CalibrationError, match="tensor 'root' is not finite on calibration image 1"):
        calibrate(path, lambda: iter([np.ones_like(x), x]), method="minmax")


@pytest.mark.skipif(not (installed("openvino") and installed("onnxruntime")), reason="needs both engines")
def test_a_graph_openvino_cannot_read_is_observed_by_onnx_runtime(tmp_path):
    """com.microsoft's Inverse runs in ONNX Runtime (which checked the export) and not in OpenVINO: calibration
    falls back to ONNX Runtime and says so; asked for OpenVINO by name, the run fails instead."""
    weight = np.random.default_rng(4).normal(size=(2, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
             helper.make_node("Inverse", ["y"], ["out"], name="inverse", domain="com.microsoft")]
    graph = helper.make_graph(nodes, "inverse", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    path = save(model, tmp_path / "inverse.onnx")
    inputs = images(2, 4, seed=6)
    result = calibrate(path, lambda: iter(inputs), method="minmax")
    assert result.notes["observed_with"] == "onnxruntime"
    assert result.activation_ranges["y"][1] == pytest.approx(max(float(_conv_1x1(x, weight).max()) for x in inputs),
                                                             rel=1e-5)
    with pytest.raises(RuntimeError):
        ObservationRun(observation_graph(model, ("x", "y"), ("x",), histogram=False), "openvino")


def _conv_1x1(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return np.einsum("oi,bihw->bohw", weight[:, :, 0, 0].astype(np.float64), x.astype(np.float64))


def test_an_integer_model_output_is_left_out_of_the_output_sums(tmp_path):
    """Only float outputs are summed (an ArgMax's int64 output would not concatenate with them)."""
    weight = np.random.default_rng(8).normal(size=(4, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["scores"], name="conv"),
             helper.make_node("ArgMax", ["scores"], ["labels"], name="argmax", axis=1)]
    graph = helper.make_graph(nodes, "labels", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("labels", TensorProto.INT64, [1, 1, 4, 4]),
                               helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 4, 4, 4])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    observation = observation_graph(model, ("x",), ("x",), histogram=True)
    assert observation.output_names == ("scores",)
    x = images(1, 4, seed=9)[0]
    for engine in [e for e in ENGINES if installed(e)]:
        (summary,) = ObservationRun(observation, engine).summaries([x])
        assert summary.output_sums == pytest.approx([_conv_1x1(x, weight).sum()], rel=1e-4, abs=1e-4)
