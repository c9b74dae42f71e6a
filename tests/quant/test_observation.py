"""Calibration's observation graph (quant/observation.py): the per-image summaries it computes inside the graph,
on every installed engine, against the float64 torch reference of the same tensors."""

from __future__ import annotations

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
    observation_graph,
    sample_strides,
    split,
)
from edgekit.quant.observers import OnePassStats
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


def images(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1, (1, 3, size, size)).astype(np.float32) for _ in range(count)]


#: the grid of every tensor of small_net at 128 px, by hand from sample_strides' rule: [1, 8, 128, 128] has
#: m = 16384 / 8 = 2048 values per plane, r = 16384 / 2048 = 8 pixels per value, s = ceil(sqrt 8) = 3 (odd), from
#: (3 - 1) // 2 = 1; the input [1, 3, 128, 128]: r = 3.0, s = ceil(1.73) = 2, made odd 3, from 1; the same for
#: [1, 4, 128, 128]: r = 4, s = 2, made odd 3
GRID_128 = (slice(None), slice(None), slice(1, None, 3), slice(1, None, 3))


def ring(engine: str) -> int | None:
    """OpenVINO with three requests in flight (so the order of the results is tested on any machine)."""
    return 3 if engine == "openvino" else None


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
@pytest.mark.parametrize("opset", [11, 17, 18])
def test_summaries_equal_the_reference_tensors_image_by_image(engine, opset):
    """min, max, per-channel means of the layer inputs, the other tensors' sums, the output's sum and the grid
    samples of each tensor, for five images of different spread, in image order (three OpenVINO requests in
    flight). At 128 px the tensors hold 8 x 128 x 128 values: the sample is a real subsample. Opsets 11 / 17 / 18
    write the reductions' axes as an attribute or as an input."""
    model = small_net(opset=opset, size=128)
    observation = observation_graph(model, TENSORS, LAYER_INPUTS, True, (1, 3, 128, 128))
    onnx.checker.check_model(observation.model)
    assert observation.check_names == ("y1", "y2", "y3", "y4")
    inputs = [x * scale for x, scale in zip(images(5, 128), (0.5, 1.0, 2.0, 4.0, 8.0))]
    summaries = list(ObservationRun(observation, engine, ring(engine)).summaries(inputs))
    assert len(summaries) == len(inputs)
    for x, summary in zip(inputs, summaries):
        reference = small_net_reference(x)
        np.testing.assert_allclose(summary.minimum, [reference[n].min() for n in TENSORS], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(summary.maximum, [reference[n].max() for n in TENSORS], rtol=1e-5, atol=1e-5)
        assert summary.channel_counts.tolist() == [3, 8, 8]
        for name, means in zip(LAYER_INPUTS, split(summary.channel_means, summary.channel_counts)):
            np.testing.assert_allclose(means, reference[name].mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)
        for name, total in zip(observation.check_names, summary.finite_checks):
            assert total == pytest.approx(reference[name].sum(), rel=1e-4, abs=1e-2), name
        np.testing.assert_allclose(summary.output_sums, [reference["output"].sum()], rtol=1e-4, atol=1e-2)
        samples = split(summary.samples, summary.sample_sizes)
        # rows and columns 1, 4, ..., 127 (43) of every channel: images 3, y1 r1 y2 r2 8, y3 y4 4 channels (4096
        # values per plane: r = 4, s = 2, made odd 3)
        assert summary.sample_sizes.tolist() == [3 * 43 * 43] + [8 * 43 * 43] * 4 + [4 * 43 * 43] * 2
        for name, sample in zip(TENSORS, samples):
            np.testing.assert_allclose(sample, reference[name][GRID_128].ravel(), rtol=1e-5, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("dims, strides", [
    ((1, 8, 128, 128), (3, 3)),     # r = 8: ceil(2.83) = 3
    ((1, 8, 64, 64), (3, 3)),       # r = 2: ceil(1.41) = 2, made odd
    ((1, 1024, 20, 20), (5, 5)),    # m = 16 per plane, r = 25: 5, from 2 (rows 2, 7, 12, 17)
    ((1, 16, 4, 8400), (1, 33)),    # m = 1024, r = 32.8, sqrt 5.7 > 4 rows: every row, every 33rd column
    ((1, 16, 8400, 4), (33, 1)),    # the same, transposed
    ((1, 3, 16, 16), (1, 1)),       # fewer values than the target: all of them
])
def test_sample_strides_by_hand(dims, strides):
    assert sample_strides(dims) == strides


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_a_thin_tensor_is_sampled_on_every_row(engine):
    """A DFL-like [1, 16, 4, 8400] tensor: a square grid of stride 6 would see one of the four rows; the sample takes
    all four, every 33rd column from 16 (sample_strides), at most SAMPLE_TARGET values, and holds a value planted on
    the last row (the true maximum)."""
    x = np.random.default_rng(3).random((1, 16, 4, 8400), dtype=np.float32)
    x[0, 5, 3, 16 + 33 * 100] = 6.0
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "thin",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 4, 8400])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 4, 8400])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (summary,) = ObservationRun(observation_graph(model, ("x",), (), True, x.shape), engine).summaries([x])
    np.testing.assert_array_equal(summary.samples, x[:, :, :, 16::33].ravel())
    assert summary.samples.size == 16 * 4 * 255 <= SAMPLE_TARGET and summary.samples.max() == 6.0


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_a_graph_with_symbolic_sizes_and_a_rank_3_tensor(engine):
    """The graph's input is fixed to the calibration tensors' shape, so a graph with symbolic batch / height / width
    gets grid samples; a tensor of another rank is sampled flat, stride 2·floor(k / 2) + 1 from floor(k / 2) with
    k = ceil(size / SAMPLE_TARGET) (at 120 px: 4 x 14400 values, k = 4, stride 5 from 2)."""
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
    for size, (start, stride) in ((40, (0, 1)), (120, (2, 5))):
        x = images(1, size, seed=size)[0]
        observation = observation_graph(model, ("x", "y", "flat"), ("x",), True, x.shape)
        (summary,) = ObservationRun(observation, engine).summaries([x])
        y = _conv(x, weight)
        x_sample, y_sample, flat_sample = split(summary.samples, summary.sample_sizes)
        rows, columns = sample_strides(y.shape)
        grid = (slice(None), slice(None), slice((rows - 1) // 2, None, rows), slice((columns - 1) // 2, None, columns))
        np.testing.assert_allclose(x_sample, x[grid].ravel(), rtol=1e-6)
        np.testing.assert_allclose(y_sample, y[grid].ravel(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(flat_sample, y.ravel()[start::stride], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(summary.maximum, [x.max(), y.max(), y.max()], rtol=1e-5)


def _conv(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    return F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(weight).double(), padding=1).numpy()


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_a_run_abandoned_midway_waits_for_its_requests_and_a_new_one_starts_clean(engine):
    observation = observation_graph(small_net(size=64), TENSORS, LAYER_INPUTS, False, (1, 3, 64, 64))
    run = ObservationRun(observation, engine, ring(engine))
    inputs = images(6, 64, seed=3)
    summaries = run.summaries(inputs)
    first = next(summaries)
    summaries.close()  # the consumer stops after one image (an error in the caller's loop)
    again = list(run.summaries(inputs[:2]))
    np.testing.assert_array_equal(again[0].maximum, first.maximum)
    assert again[1].maximum[0] == pytest.approx(inputs[1].max())
    assert again[0].samples is None


def test_an_unknown_engine_and_a_name_in_the_observation_namespace_are_refused():
    observation = observation_graph(small_net(), TENSORS, LAYER_INPUTS, False, (1, 3, 16, 16))
    with pytest.raises(ValueError, match="expected one of openvino, onnxruntime"):
        ObservationRun(observation, "tensorrt")
    with pytest.raises(CalibrationError, match="^calibration: tensor 'edgekit_observe_images' starts with "
                                               "'edgekit_observe_', the prefix calibration names its own nodes with; "
                                               "rename the tensor in the ONNX file$"):
        observation_graph(small_net(), ("edgekit_observe_images",), (), False, (1, 3, 16, 16))


@pytest.mark.skipif(not (installed("openvino") and installed("onnxruntime")), reason="needs both engines")
def test_both_engines_calibrate_alike(tmp_path, monkeypatch):
    """The engine is an implementation detail: the ranges, means and mse thresholds of the two agree to float32
    rounding (the engines sum in different orders)."""
    import edgekit.quant.collect as collect

    path = save(small_net(size=96), tmp_path / "net.onnx")
    inputs = images(6, 96, seed=5)
    results = {}
    for engine in ENGINES:
        monkeypatch.setattr(collect, "ObservationRun", lambda observation, e=engine: ObservationRun(observation, e, 2))
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
    assert result.notes["observation_fallback"].startswith("OpenVINO could not compile the observation graph (")
    assert result.activation_ranges["y"][1] == pytest.approx(max(float(_conv_1x1(x, weight).max()) for x in inputs),
                                                             rel=1e-5)
    with pytest.raises(RuntimeError):
        ObservationRun(observation_graph(model, ("x", "y"), ("x",), False, (1, 3, 4, 4)), "openvino")


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
    observation = observation_graph(model, ("x",), ("x",), True, (1, 3, 4, 4))
    assert observation.output_names == ("scores",)
    x = images(1, 4, seed=9)[0]
    for engine in [e for e in ENGINES if installed(e)]:
        (summary,) = ObservationRun(observation, engine).summaries([x])
        assert summary.output_sums == pytest.approx([_conv_1x1(x, weight).sum()], rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("method", ["minmax", "mse"])
def test_a_nan_that_min_and_max_skip_is_caught_by_the_sums(tmp_path, method):
    """ReduceMin / ReduceMax of both engines skip a NaN; here it arises in a Log, reaches only the Add output ``a``
    (neither a layer input nor a float model output: the graph's one output is an ArgMax's int64), and must still
    stop calibration, by ``a``'s sum (the old numpy min/max raised here too)."""
    weight = np.ones((2, 3, 1, 1), np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
             helper.make_node("Log", ["y"], ["log"], name="log"),
             helper.make_node("Add", ["log", "y"], ["a"], name="add"),
             helper.make_node("ArgMax", ["a"], ["labels"], name="argmax", axis=1)]
    graph = helper.make_graph(nodes, "nan_hidden", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("labels", TensorProto.INT64, [1, 1, 8, 8])],
                              [numpy_helper.from_array(weight, "w")])
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "hidden.onnx")
    x = np.ones((1, 3, 8, 8), np.float32)
    x[0, :, 3, 5] = -1.0  # one pixel whose conv output is negative: Log -> NaN there only
    with pytest.raises(CalibrationError, match="tensor 'a' is not finite on calibration image 1"):
        calibrate(path, lambda: iter([np.ones_like(x), x]), method=method)


def test_one_pass_stats_flag_the_tensor_whose_sample_or_range_is_not_finite():
    stats = OnePassStats(2, histogram=True)
    # a NaN in the second tensor's first sample value is the second tensor's, not the first's
    assert stats.observe([0.0, 0.0], [1.0, 1.0], [np.float32([1.0]), np.float32([np.nan, 1.0])]).tolist() == \
        [False, True]
    # an engine's min / max over a tensor of NaNs: +FLT_MAX / -FLT_MAX, an inverted range
    big = float(np.finfo(np.float32).max)
    assert stats.observe([big, 0.0], [-big, 1.0], [np.float32([1.0]), np.float32([1.0])]).tolist() == [True, False]
    assert np.isinf(stats.lo).all()  # nothing recorded from either image


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_vectors_with_nothing_to_report_are_empty_on_both_engines(engine):
    """No tensor to average and no float output: those vectors are not graph outputs and come back empty, [0] of
    their dtype (OpenVINO returned an empty constant output as a 0-d tensor)."""
    graph = helper.make_graph([helper.make_node("ArgMax", ["x"], ["labels"], name="argmax", axis=1)], "labels_only",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("labels", TensorProto.INT64, [1, 1, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    observation = observation_graph(model, ("x",), (), False, (1, 3, 4, 4))
    x = images(1, 4, seed=2)[0]
    (summary,) = ObservationRun(observation, engine).summaries([x])
    for vector, dtype in ((summary.channel_means, np.float32), (summary.channel_counts, np.int64),
                          (summary.output_sums, np.float32)):
        assert vector.shape == (0,) and vector.dtype == dtype
    assert split(summary.channel_means, summary.channel_counts) == []
    assert summary.finite_checks == pytest.approx([x.sum()], rel=1e-5)


@pytest.mark.skipif(not installed("onnxruntime"), reason="onnxruntime missing")
def test_a_tensor_of_unknown_rank_gets_its_channel_means_and_a_flat_sample():
    """Shape inference cannot see through com.microsoft's Inverse: its output's rank is unknown, so its channel means
    are taken over [B, C, rest] and its sample is flat (here every value: 2 x 16 < SAMPLE_TARGET)."""
    weight = np.random.default_rng(4).normal(size=(2, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
             helper.make_node("Inverse", ["y"], ["inv"], name="inverse", domain="com.microsoft"),
             helper.make_node("Relu", ["inv"], ["out"], name="relu")]
    graph = helper.make_graph(nodes, "unknown_rank",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    observation = observation_graph(model, ("y", "inv"), ("inv",), True, (1, 3, 4, 4))
    x = images(1, 4, seed=7)[0]
    (summary,) = ObservationRun(observation, "onnxruntime").summaries([x])
    inverse = np.linalg.inv(_conv_1x1(x, weight))
    np.testing.assert_allclose(summary.channel_means, inverse.mean(axis=(0, 2, 3)), rtol=1e-3, atol=1e-4)
    _, inv_sample = split(summary.samples, summary.sample_sizes)
    np.testing.assert_allclose(inv_sample, inverse.ravel(), rtol=1e-3, atol=1e-4)


def test_the_progress_bar_counts_observed_images(tmp_path):
    """The bar wrapped the images handed to the engine: with a ring of requests it ran up to the ring's length ahead
    of what was observed (and reached the end while the last images were still in flight). It counts the
    observed images' summaries now."""
    from edgekit.quant.observation import ImageSummary

    path = save(small_net(size=32), tmp_path / "net.onnx")
    seen: list[str] = []

    def progress(items, description):
        for item in items:
            seen.append(type(item).__name__)
            yield item

    calibrate(path, lambda: iter(images(5, 32)), method="minmax", progress=progress)
    assert seen == [ImageSummary.__name__] * 5
