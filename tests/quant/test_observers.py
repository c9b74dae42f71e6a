"""INT8 core, numbers only: range observers (observers.py) and the backend-neutral result (result.py).

Every expected value is either computed by hand (the arithmetic is in the comment next to it) or
by an independent oracle written here: a plain-Python KL search following TensorRT's published
algorithm, and a brute-force quantisation MSE measured on the samples themselves.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.errors import CalibrationError
from edgekit.quant import observers
from edgekit.quant.observers import (
    HISTOGRAM_BINS,
    HISTOGRAM_SAMPLES,
    OnePassStats,
    TensorStats,
    entropy_threshold,
    make_observer,
    mse_threshold,
    percentile_threshold,
)
from edgekit.quant.result import (
    VOLATILE_NOTES,
    CalibrationResult,
    QuantLayer,
    file_sha256,
    int8_symmetric,
    quantize_weight,
    uint8_affine,
    weight_scales,
)


def stats_of(*chunks: np.ndarray, histogram: bool = True) -> TensorStats:
    """Feed ``chunks`` through both collector passes, as collect.calibrate does image by image."""
    stats = TensorStats()
    for chunk in chunks:
        stats.observe_range(np.asarray(chunk, np.float32))
    if histogram:
        for chunk in chunks:
            stats.observe_histogram(np.asarray(chunk, np.float32))
    return stats


# --------------------------------------------------------------------------------------------- minmax


def test_minmax_is_the_exact_min_and_max_over_every_chunk():
    rng = np.random.default_rng(1)
    chunks = [rng.normal(0, 1, (1, 4, 5, 5)).astype(np.float32) for _ in range(3)]
    chunks[1][0, 2, 3, 1] = -7.25   # the global minimum is in the middle chunk
    chunks[2][0, 0, 0, 0] = 5.5     # the global maximum in the last
    stats = stats_of(*chunks)
    assert make_observer("minmax")(stats) == (-7.25, 5.5)
    assert stats.absmax == 7.25
    # the histogram pass counted every value exactly once
    assert int(stats.histogram.sum()) == 3 * 100


# ----------------------------------------------------------------------------------------- percentile


def percentile_data() -> np.ndarray:
    """|x| = 0..999, each ten times, signs alternating, plus one outlier at -2048 (10001 values).

    absmax = 2048 makes every histogram bin exactly 1 wide: |x| = v lands in bin v.
    """
    magnitudes = np.repeat(np.arange(1000, dtype=np.float32), 10)
    signs = np.where(np.arange(magnitudes.size) % 2 == 0, 1.0, -1.0).astype(np.float32)
    return np.concatenate([magnitudes * signs, np.float32([-2048.0])])


def test_percentile_clips_at_the_bin_where_the_cumulative_count_crosses():
    stats = stats_of(percentile_data())
    assert (stats.lo, stats.hi) == (-2048.0, 999.0)
    assert stats.histogram[:1000].tolist() == [10] * 1000 and stats.histogram[2047] == 1
    # 99 %: 0.99 * 10001 = 9900.99 values; bins 0..b hold 10 (b + 1), first >= 9900.99 at b = 990,
    # so the threshold is the upper edge of bin 990: 991 * (2048 / 2048) = 991.
    assert percentile_threshold(stats, 99.0) == 991.0
    assert make_observer("percentile", 99.0)(stats) == (-991.0, 991.0)
    # 50 %: 5000.5 values -> 10 (b + 1) >= 5000.5 first at b = 500 -> 501
    assert make_observer("percentile", 50.0)(stats) == (-501.0, 501.0)
    # 99.99 % (the default): 9999.99 -> b = 999 (10000 values) -> 1000; hi = 999 is not clipped
    assert make_observer("percentile")(stats) == (-1000.0, 999.0)
    # 100 %: every value, the outlier's bin included -> the full range
    assert make_observer("percentile", 100.0)(stats) == (-2048.0, 999.0)
    # numpy's percentile of the same values lands in the same one-wide bin
    numpy_value = np.percentile(np.abs(percentile_data()), 99.0)
    assert 990.0 <= numpy_value <= 991.0


@pytest.mark.parametrize("bad", [0.0, -5.0, 100.5, float("nan")])
def test_percentile_outside_0_100_is_refused(bad):
    with pytest.raises(CalibrationError, match="expected a value in"):
        make_observer("percentile", bad)


# -------------------------------------------------------------------------------------------- entropy


def tensorrt_kl_threshold(histogram: list[int], top: float, levels: int) -> float:
    """TensorRT's entropy calibration (Migacz, GTC 2017), written out loop by loop.

    for i in levels .. n:  P = bins[0:i] with the outliers bins[i:] added to P[i-1];
                           Q = bins[0:i] quantised to ``levels`` groups (group j = bins
                               [j*i//levels, (j+1)*i//levels)), each group's sum spread evenly
                               over its non-empty bins; KL(P/ΣP || Q/ΣQ)
    threshold = top * i_best / n (the upper edge of bin i_best - 1, edgekit's convention).
    A candidate where P has mass and Q none (diverging KL) is never chosen.
    """
    n = len(histogram)
    best_kl, best_i = math.inf, n
    for i in range(levels, n + 1):
        p = [float(v) for v in histogram[:i]]
        p[i - 1] += float(sum(histogram[i:]))
        q = [0.0] * i
        for j in range(levels):
            start, stop = j * i // levels, (j + 1) * i // levels
            nonempty = [k for k in range(start, stop) if histogram[k] > 0]
            for k in nonempty:
                q[k] = sum(histogram[start:stop]) / len(nonempty)
        p_total, q_total = sum(p), sum(q)
        if p_total == 0 or q_total == 0:
            continue
        kl, finite = 0.0, True
        for pk, qk in zip(p, q):
            if pk == 0:
                continue
            if qk == 0:
                finite = False
                break
            kl += (pk / p_total) * math.log((pk / p_total) / (qk / q_total))
        if finite and kl < best_kl:
            best_kl, best_i = kl, i
    return top * best_i / n


@pytest.mark.parametrize("seed", range(6))
def test_entropy_matches_a_plain_reimplementation_of_tensorrts_kl_on_a_small_histogram(seed, monkeypatch):
    # 96 bins, 8 levels: every candidate i = 8..96, including i not divisible by 8 (uneven groups),
    # bins that are empty inside a group, and a long sparse tail that is folded into P[i-1].
    bins, levels = 96, 8
    monkeypatch.setattr(observers, "HISTOGRAM_BINS", bins)
    monkeypatch.setattr(observers, "QUANT_LEVELS", levels)
    rng = np.random.default_rng(seed)
    body = np.round(4000 * np.exp(-0.5 * (np.arange(bins) / (8 + 4 * seed)) ** 2)).astype(np.int64)
    body[rng.choice(bins, 12, replace=False)] = 0          # empty bins scattered through
    body[60:] = rng.integers(0, 3, bins - 60)               # sparse outlier tail
    body[-1] = 1                                            # the maximum is in the last bin
    top = 3.0
    stats = TensorStats(lo=-top, hi=2.0, histogram=body.copy())
    expected = tensorrt_kl_threshold(body.tolist(), top, levels)
    assert entropy_threshold(stats) == pytest.approx(expected, rel=0, abs=1e-12)
    assert expected < top  # the search did clip something: the comparison is not the trivial i = n


def test_entropy_on_a_gaussian_with_outliers_clips_between_3_sigma_and_the_outlier():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.0, 1.0, 200_000), [20.0, -20.0, 19.5]]).astype(np.float32)
    stats = stats_of(values[:100_000], values[100_000:])
    assert stats.absmax == 20.0
    # bin width 20 / 2048 ≈ 0.0098: the smallest candidate (i = 128) is 1.25, well below 3 sigma, so
    # "above 3 sigma" is the search's choice, not a floor of the candidate grid
    lo, hi = make_observer("entropy")(stats)
    assert lo == -hi
    assert 3.0 < hi < 8.0, hi     # keeps the Gaussian body, drops the outliers at ~20 sigma
    # the threshold is a bin edge: top * i / 2048 for an integer i >= 128
    i = hi * HISTOGRAM_BINS / 20.0
    assert i == round(i) and i >= 128


# ------------------------------------------------------------------------------------------------ mse


def brute_force_mse(values: np.ndarray, threshold: float) -> float:
    """Mean squared error of symmetric int8 (step T / 127, codes -127..127) on the samples themselves."""
    step = threshold / 127.0
    quantised = np.clip(np.round(values / step), -127, 127) * step
    return float(np.mean((quantised - values) ** 2))


# Laplace: a sharp minimum, the argmin agrees within one candidate step. Gaussian: a flat minimum, where
# the sample MSE wobbles by ~1e-3 between neighbouring candidates (rounding noise is only Δ²/12 on
# average), so the claim is on the error itself: within 0.5 % of the brute-force best.
@pytest.mark.parametrize("distribution,max_steps,max_ratio", [("laplace", 1, 1.001), ("gaussian+outlier", 3, 1.005)])
def test_mse_threshold_minimises_the_brute_force_quantisation_error(distribution, max_steps, max_ratio):
    rng = np.random.default_rng(0)
    if distribution == "laplace":
        values = rng.laplace(0.0, 1.0, 200_000)
    else:
        values = np.concatenate([rng.normal(0.0, 1.0, 200_000), [12.0]])
    values = values.astype(np.float32)
    # fed as "images" of at most HISTOGRAM_SAMPLES values, so every sample is binned (no subsampling)
    stats = stats_of(*np.array_split(values, -(-values.size // HISTOGRAM_SAMPLES)))
    chosen = mse_threshold(stats)
    # the oracle: quantise the samples with each of the 256 candidate thresholds top * k / 256
    step = stats.absmax / 256
    candidates = stats.absmax * np.arange(1, 257) / 256
    errors = np.array([brute_force_mse(values.astype(np.float64), t) for t in candidates])
    best = int(np.argmin(errors))
    chosen_index = int(round(chosen / step)) - 1
    assert candidates[chosen_index] == pytest.approx(chosen, rel=1e-12)
    assert abs(chosen_index - best) <= max_steps, (chosen, candidates[best])
    assert errors[chosen_index] <= errors[best] * max_ratio
    # clipping matters here (the test would catch an observer that ignores it): no clipping costs >= 40 % more
    assert errors[-1] > 1.4 * errors[best]
    assert chosen < 0.9 * stats.absmax
    assert make_observer("mse")(stats) == (max(stats.lo, -chosen), min(stats.hi, chosen))


# ------------------------------------------------------------------------------------ degenerate input


def test_a_tensor_of_zeros_gets_the_range_0_0_from_every_method():
    stats = stats_of(np.zeros((1, 2, 4, 4), np.float32), np.zeros((1, 2, 4, 4), np.float32))
    assert stats.histogram[0] == 64 and stats.histogram[1:].sum() == 0
    for method in observers.METHODS:
        assert make_observer(method)(stats) == (0.0, 0.0), method
    # and the encodings stay finite: scale 1, zero point 0
    assert uint8_affine(0.0, 0.0) == (1.0, 0)
    assert int8_symmetric(0.0, 0.0) == 1.0


def test_unknown_method_and_a_missing_histogram_are_calibration_errors():
    with pytest.raises(CalibrationError, match="'kl'.*expected one of entropy, minmax, percentile, mse"):
        make_observer("kl")
    no_histogram = stats_of(np.float32([1.0, -2.0]), histogram=False)
    assert make_observer("minmax")(no_histogram) == (-2.0, 1.0)  # minmax needs no histogram pass
    for method in ("percentile", "entropy", "mse"):
        assert observers.needs_histogram(method)
        with pytest.raises(CalibrationError, match="needs a histogram pass"):
            make_observer(method)(no_histogram)
    assert not observers.needs_histogram("minmax")


# ------------------------------------------------------------------------------------ result: encodings


@pytest.mark.parametrize("lo,hi", [(-1.0, 3.0), (-0.37, 0.011), (0.5, 6.0), (-4.0, -1.0), (0.0, 1.0), (-2.5, 0.0),
                                   (-1e-3, 250.0)])
def test_uint8_affine_keeps_zero_exact_and_round_trips_within_half_a_step(lo, hi):
    scale, zero_point = uint8_affine(lo, hi)
    lo0, hi0 = min(lo, 0.0), max(hi, 0.0)  # the range is widened to contain 0
    assert scale == pytest.approx((hi0 - lo0) / 255.0, rel=1e-6)
    assert isinstance(zero_point, int) and 0 <= zero_point <= 255
    assert zero_point == round(-lo0 / ((hi0 - lo0) / 255.0))
    # 0 encodes to the zero point and decodes to exactly 0.0
    q0 = np.clip(np.round(np.float32(0.0) / np.float32(scale)) + zero_point, 0, 255)
    assert q0 == zero_point and (q0 - zero_point) * scale == 0.0
    # every value of [lo, hi] (ends included) decodes within scale / 2
    x = np.concatenate([np.linspace(lo, hi, 2001), [lo, hi]]).astype(np.float64)
    q = np.clip(np.round(x / scale) + zero_point, 0, 255)
    assert np.max(np.abs((q - zero_point) * scale - x)) <= scale / 2 * (1 + 1e-5)


def test_uint8_affine_refuses_a_non_finite_range():
    with pytest.raises(CalibrationError, match="not finite"):
        uint8_affine(-1.0, math.inf)
    with pytest.raises(CalibrationError, match="not finite"):
        int8_symmetric(math.nan, 1.0)


def test_int8_symmetric_scale():
    assert int8_symmetric(-2.54, 1.0) == pytest.approx(2.54 / 127, rel=1e-7)   # 0.02
    assert int8_symmetric(-0.5, 12.7) == pytest.approx(0.1, rel=1e-7)          # 12.7 / 127
    x = np.linspace(-2.54, 1.0, 1001)
    scale = int8_symmetric(-2.54, 1.0)
    q = np.clip(np.round(x / scale), -127, 127)
    assert q.min() == -127  # the larger side uses the whole int8 range
    assert np.max(np.abs(q * scale - x)) <= scale / 2 * (1 + 1e-5)


def test_weight_scales_per_channel_with_a_zero_channel():
    weight = np.zeros((3, 2, 2, 2), np.float32)
    weight[0] = 0.5
    weight[0, 1, 1, 1] = -2.54          # channel 0: max |w| = 2.54 -> 0.02
    weight[2, 0, 0, 0] = 1.27           # channel 2: 1.27 -> 0.01; channel 1 all zero -> 1.0
    np.testing.assert_allclose(weight_scales(weight), [0.02, 1.0, 0.01], rtol=1e-6)
    # axis 1 (ConvTranspose [I, O, kh, kw]): reduce over every other axis
    transposed = np.zeros((2, 3, 1, 1), np.float32)
    transposed[1, 0] = -12.7
    transposed[0, 2] = 0.127
    np.testing.assert_allclose(weight_scales(transposed, axis=1), [0.1, 1.0, 0.001], rtol=1e-6)


def test_quantize_weight_round_trip():
    rng = np.random.default_rng(3)
    weight = rng.normal(0, 1, (4, 3, 3, 3)).astype(np.float32)
    weight[1] *= 100.0
    weight[3] = 0.0
    scales = weight_scales(weight)
    q = quantize_weight(weight, scales)
    assert q.dtype == np.int8
    # each non-zero channel's largest |w| maps exactly to ±127; the zero channel to zeros
    for c in (0, 1, 2):
        assert np.abs(q[c]).max() == 127
    assert not q[3].any()
    error = np.abs(q.astype(np.float64) * scales[:, None, None, None] - weight)
    assert np.all(error <= scales[:, None, None, None] / 2 * (1 + 1e-5))
    # along axis 1 the same
    q1 = quantize_weight(np.moveaxis(weight, 0, 1), scales, axis=1)
    np.testing.assert_array_equal(q1, np.moveaxis(q, 0, 1))


# --------------------------------------------------------------------------- result: JSON and identity


def a_result(model_sha256: str = "ab" * 32) -> CalibrationResult:
    layers = (QuantLayer("conv1", "Conv", "images", "y1", "w1", (0.02, 1.0, 0.003)),
              QuantLayer("up", "ConvTranspose", "y1", "y2", "w2", (0.5,)))
    return CalibrationResult(model_sha256=model_sha256, method="entropy", num_images=17, images_sha256="cd" * 32,
                             activation_ranges={"images": (-2.1179039478302, 2.640000104904175), "y1": (0.0, 6.5),
                                                "y2": (-0.1, 1e-7)},
                             layers=layers, float_layers={"up": "kept in float for the test"},
                             notes={"seconds": 1.5, "observed_ranges": {"y1": [0.0, 9.0]}})


def test_json_round_trip_is_exact(tmp_path):
    result = a_result()
    path = result.save(tmp_path / "calibration.json")
    assert path == tmp_path / "calibration.json"
    assert not list(tmp_path.glob(".*partial"))  # written atomically, no leftover
    loaded = CalibrationResult.load(path)
    # exact but for the time the calibration took: calibration.json is an artifact file whose sha256 must not
    # change when the same calibration is run again (VOLATILE_NOTES stay in the manifest's info instead)
    assert "seconds" in result.notes and "seconds" not in json.loads(path.read_text())["notes"]
    assert loaded == dataclasses.replace(result, notes={k: v for k, v in result.notes.items()
                                                        if k not in VOLATILE_NOTES})
    assert loaded.activation_ranges["images"] == (-2.1179039478302, 2.640000104904175)  # floats bit for bit
    assert [layer.name for layer in loaded.quantized_layers] == ["conv1"]
    data = json.loads(path.read_text())
    assert data["format"] == "edgekit-calibration" and data["version"] == 1


@pytest.mark.parametrize("mutate,fragment", [
    (lambda d: d.update(format="something-else"), "not an edgekit calibration result"),
    (lambda d: d.update(version=99), "calibration result version 99 is not supported"),
    (lambda d: d.pop("activation_ranges"), "malformed calibration result (KeyError"),
    (lambda d: d["activation_ranges"].update(y1=[1.0]), "malformed calibration result (IndexError"),
    (lambda d: d["layers"][0].update(weight_scales=["x"]), "malformed calibration result (ValueError"),
    (lambda d: d["layers"][0].pop("weight"), "malformed calibration result (KeyError"),
    (lambda d: d.update(num_images=None), "malformed calibration result (TypeError"),
])
def test_from_dict_refuses_malformed_data(mutate, fragment):
    data = a_result().to_dict()
    mutate(data)
    with pytest.raises(CalibrationError, match="^cache.json: " + fragment.replace("(", r"\(")):
        CalibrationResult.from_dict(data, "cache.json")
    with pytest.raises(CalibrationError, match="not an edgekit calibration result"):
        CalibrationResult.from_dict([1, 2, 3])


def test_load_refuses_missing_and_non_json_files(tmp_path):
    with pytest.raises(CalibrationError, match="calibration result not found"):
        CalibrationResult.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CalibrationError, match="bad.json: calibration result is not valid JSON"):
        CalibrationResult.load(tmp_path / "bad.json")


def _tiny_onnx(path, weight_value: float):
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [numpy_helper.from_array(np.full((1, 1, 1, 1), weight_value, np.float32), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_check_model_refuses_another_onnx_file(tmp_path):
    mine = _tiny_onnx(tmp_path / "mine.onnx", 1.0)
    other = _tiny_onnx(tmp_path / "other_model.onnx", 2.0)   # one weight differs
    import hashlib
    assert file_sha256(mine) == hashlib.sha256(mine.read_bytes()).hexdigest()
    result = a_result(model_sha256=file_sha256(mine))
    result.check_model(mine)  # its own model: accepted
    with pytest.raises(CalibrationError, match=r"calibration cache belongs to another model.*other_model\.onnx"):
        result.check_model(other)


def test_with_float_layers_refuses_unknown_layers():
    result = a_result()
    assert result.with_float_layers({}).quantized_layers == result.layers
    with pytest.raises(CalibrationError, match="not in the model: nope"):
        result.with_float_layers({"conv1": "", "nope": ""})
    with pytest.raises(CalibrationError, match="no layer 'nope'"):
        result.layer("nope")
    assert result.layer("up").op_type == "ConvTranspose"


def test_large_tensors_are_subsampled_for_the_histogram_but_not_for_the_range():
    rng = np.random.default_rng(3)
    values = rng.laplace(0.0, 1.0, 40 * HISTOGRAM_SAMPLES).astype(np.float32)
    values[12345] = 50.0  # an extreme the stride skips: the range pass still sees it
    stats = stats_of(values)
    assert stats.hi == 50.0
    stride = (values.size // HISTOGRAM_SAMPLES) | 1
    assert stats.histogram.sum() == len(values[::stride])
    # the subsample estimates the distribution: its 99th percentile of |x| (exact: ln 100 = 4.61 for a unit
    # Laplace) has a standard error of sqrt(p(1-p)/n) / density = sqrt(0.0099 / 65536) / 0.005 = 0.078 at
    # n = 65536 samples; allow 4 standard errors plus one bin
    exact = float(np.percentile(np.abs(values), 99.0))
    assert abs(percentile_threshold(stats, 99.0) - exact) <= 4 * 0.078 + stats.absmax / HISTOGRAM_BINS


# ------------------------------------------------------------------------------ one pass (collect.calibrate)


def one_pass_stats(*chunks: np.ndarray) -> OnePassStats:
    """What collect.calibrate does image by image: range and growing histogram together (one tensor)."""
    stats = OnePassStats(1, histogram=True)
    for chunk in chunks:
        chunk = np.asarray(chunk, np.float32).ravel()
        assert not stats.observe([chunk.min()], [chunk.max()], [chunk]).any()
    return stats


def one_pass(*chunks: np.ndarray) -> TensorStats:
    """``one_pass_stats``, then ``finish``: the observers' input."""
    (tensor,) = one_pass_stats(*chunks).finish()
    return tensor


def test_one_pass_histogram_without_growth_is_the_two_pass_histogram_exactly():
    # absmax 2048 from the first chunk on: every final bin is exactly 1 wide and two growing-histogram bins wide
    values = np.concatenate([np.arange(-2048, 2048, 7), [2048.0]]).astype(np.float32)
    two, one = stats_of(values[:300], values[300:]), one_pass(values[::-1][:300], values[::-1][300:])
    assert (one.lo, one.hi) == (two.lo, two.hi) == (-2048.0, 2048.0)
    np.testing.assert_array_equal(one.histogram, two.histogram)


def test_one_pass_histogram_that_grows_keeps_every_count_and_every_threshold():
    """Images of growing spread (0.1, 1, 10 and an outlier): the histogram's range doubles as they come, merging
    bins; the thresholds land where the two-pass histogram (final range known in advance) puts them."""
    rng = np.random.default_rng(7)
    chunks = [rng.laplace(0.0, scale, 9000).astype(np.float32) for scale in (0.1, 1.0, 1.0, 10.0)]
    chunks[2][17] = 120.0
    two, growing = stats_of(*chunks), one_pass_stats(*chunks)
    (one,) = growing.finish()
    assert (one.lo, one.hi) == (two.lo, two.hi) and one.hi == 120.0
    assert one.histogram.sum() == pytest.approx(4 * 9000)  # every sample binned, nothing lost
    assert growing.wide_top[0] / 2 < one.absmax <= growing.wide_top[0]  # bins never wider than the final ones
    bin_width = one.absmax / HISTOGRAM_BINS
    assert abs(percentile_threshold(one, 99.0) - percentile_threshold(two, 99.0)) <= 2 * bin_width
    # mse picks among 256 candidates (8 bins apart): the same one or a neighbour
    assert abs(mse_threshold(one) - mse_threshold(two)) <= one.absmax / 256 + 2 * bin_width
    assert abs(entropy_threshold(one) - entropy_threshold(two)) <= 0.02 * one.absmax


def test_one_pass_bins_many_tensors_at_once_exactly_as_one_by_one():
    """collect.calibrate hands every tensor's sample of an image over together: three tensors of different spreads,
    sample sizes and growth (one all zeros at first) give exactly the histograms each gets alone."""
    rng = np.random.default_rng(11)
    images = [[rng.normal(0, 1, 500), np.zeros(40), rng.laplace(0, 5, 1200)],
              [rng.normal(0, 3, 500), rng.normal(0, 0.1, 40), rng.laplace(0, 5, 1200)],
              [rng.normal(0, 30, 500), rng.normal(0, 7, 40), rng.laplace(0, 0.5, 1200)]]
    images = [[np.asarray(chunk, np.float32) for chunk in image] for image in images]
    together = OnePassStats(3, histogram=True)
    for image in images:
        assert not together.observe([c.min() for c in image], [c.max() for c in image], image).any()
    for k, tensor in enumerate(together.finish()):
        alone = one_pass(*(image[k] for image in images))
        assert (tensor.lo, tensor.hi) == (alone.lo, alone.hi)
        np.testing.assert_array_equal(tensor.histogram, alone.histogram)
    assert together.wide_top.tolist() != [together.wide_top[0]] * 3  # the three grew differently


def test_one_pass_reports_non_finite_values_and_zeros_then_values():
    stats = OnePassStats(2, histogram=True)
    finite = [np.float32([1.0]), np.float32([2.0])]
    assert stats.observe([0.5, 1.0], [1.0, 2.0], [np.float32([1.0]), np.float32([1.0, np.nan])]).tolist() == \
        [False, True]
    assert stats.observe([-math.inf, 1.0], [1.0, 2.0], finite).tolist() == [True, False]
    assert stats.observe([0.0, 1.0], [math.nan, 2.0], finite).tolist() == [True, False]
    assert np.isinf(stats.lo).all() and np.isinf(stats.hi).all()  # an image with a non-finite value records nothing
    zeros_first = one_pass(np.zeros(64), np.float32([0.0, 1.0, -3.0]))
    assert zeros_first.histogram[0] == 65 and zeros_first.histogram.sum() == pytest.approx(67)
    assert one_pass(np.zeros(8)).histogram[0] == 8


def test_mse_threshold_equals_the_candidate_loop():
    """The vectorised search against the definition, candidate by candidate."""
    stats = one_pass(np.random.default_rng(2).standard_t(3, 50000).astype(np.float32))
    histogram, top = stats.histogram, stats.absmax
    centres = (np.arange(HISTOGRAM_BINS) + 0.5) * (top / HISTOGRAM_BINS)
    errors = []
    for threshold in top * np.arange(1, 257) / 256:
        inside = centres <= threshold
        step = threshold / 127
        errors.append(histogram[inside].sum() * step * step / 12 + (histogram[~inside] * (centres[~inside] - threshold) ** 2).sum())
    assert mse_threshold(stats) == pytest.approx(top * (int(np.argmin(errors)) + 1) / 256)
