"""Head decoders: numpy runtime vs the torch reference, plus hand-computed cases per head kind.

Parity alone only shows the two implementations agree; the hand-computed cases check each
formula against numbers worked out here from the raw output contract in ``edgekit.spec``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.errors import OutputError, SpecError
from edgekit.reference import decode as ref
from edgekit.runtime import decode as rt
from edgekit.spec import HeadSpec, ModelSpec

torch.set_num_threads(1)

KINDS = ("yolo_anchor", "yolox", "dfl", "centernet", "ssd", "fastestdet")

YOLOV5_ANCHORS = [[[10, 13], [16, 30], [33, 23]], [[30, 61], [62, 45], [59, 119]], [[116, 90], [156, 198], [373, 326]]]


# --- builders ----------------------------------------------------------------------------------

def make_spec(kind: str, input_size: tuple[int, int], nc: int, params: dict, names: tuple[str, ...]) -> ModelSpec:
    return ModelSpec(family=f"test-{kind}", input_size=input_size,
                     class_names=tuple(f"class{i}" for i in range(nc)),
                     head=HeadSpec(kind=kind, output_names=names, params=params))


def ssd_params(input_size: tuple[int, int], clip: bool) -> dict:
    h, w = input_size
    steps = [8, 16, 32]
    return {"feature_maps": [[math.ceil(h / s), math.ceil(w / s)] for s in steps], "steps": steps,
            "min_sizes": [20, 50, 110], "max_sizes": [50, 110, 200], "aspect_ratios": [[2], [2, 3], [2]],
            "variances": [0.1, 0.2], "clip": clip}


def distinct_logits(rng: np.random.Generator, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """Class logits with a random order and a gap >= 0.075 between any two classes at a position.

    Ties between the two best classes cannot happen, so labels must agree exactly.
    """
    n = shape[axis]
    rank = rng.random(shape).argsort(axis=axis).argsort(axis=axis)  # a random permutation per position
    return ((rank - (n - 1) / 2) * 0.15 + rng.random(shape) * 0.075).astype(np.float32)


def random_case(kind: str, input_size: tuple[int, int], batch: int, nc: int, seed: int):
    """(spec, outputs) with random raw outputs shaped as the contract says."""
    rng = np.random.default_rng(seed)
    h, w = input_size
    normal = lambda shape, scale=1.0: (rng.standard_normal(shape) * scale).astype(np.float32)  # noqa: E731
    if kind == "yolo_anchor":
        strides = [8, 16, 32]
        spec = make_spec(kind, input_size, nc, {"strides": strides, "anchors": YOLOV5_ANCHORS}, ("p3", "p4", "p5"))
        outputs = []
        for s in strides:
            x = normal((batch, 3, 5 + nc, h // s, w // s), 1.5)
            x[:, :, 5:] = distinct_logits(rng, (batch, 3, nc, h // s, w // s), axis=2)
            outputs.append(x.reshape(batch, 3 * (5 + nc), h // s, w // s))
    elif kind in ("yolox", "dfl"):
        strides = [8, 16, 32]
        reg = 4 if kind == "yolox" else 4 * 16
        params = {"strides": strides} if kind == "yolox" else {"strides": strides, "reg_max": 16}
        spec = make_spec(kind, input_size, nc, params, ("p3", "p4", "p5"))
        outputs = []
        for s in strides:
            if kind == "yolox":
                head = np.concatenate([normal((batch, 4, h // s, w // s), 0.5), normal((batch, 1, h // s, w // s), 2.0)], 1)
            else:
                head = normal((batch, reg, h // s, w // s), 2.0)
            outputs.append(np.concatenate([head, distinct_logits(rng, (batch, nc, h // s, w // s), axis=1)], 1))
    elif kind == "centernet":
        spec = make_spec(kind, input_size, nc, {"stride": 4, "topk": 100}, ("heatmap", "wh", "offset"))
        gh, gw = h // 4, w // 4
        outputs = [normal((batch, nc, gh, gw), 2.0),
                   rng.uniform(0.5, 20.0, (batch, 2, gh, gw)).astype(np.float32),
                   rng.uniform(0.0, 1.0, (batch, 2, gh, gw)).astype(np.float32)]
    elif kind == "ssd":
        params = ssd_params(input_size, clip=seed % 2 == 0)
        spec = make_spec(kind, input_size, nc, params, ("loc", "conf"))
        p = len(rt.ssd_priors(params, input_size))
        outputs = [normal((batch, p, 4), 0.7), distinct_logits(rng, (batch, p, 1 + nc), axis=2)]
    elif kind == "fastestdet":
        spec = make_spec(kind, input_size, nc, {}, ("output",))
        gh, gw = h // 16, w // 16
        obj = 1.0 / (1.0 + np.exp(-normal((batch, 1, gh, gw), 2.0)))
        logits = distinct_logits(rng, (batch, nc, gh, gw), axis=1)
        cls = np.exp(logits - logits.max(1, keepdims=True))
        cls /= cls.sum(1, keepdims=True)
        outputs = [np.concatenate([obj, normal((batch, 4, gh, gw), 1.5), cls], 1).astype(np.float32)]
    else:
        raise ValueError(kind)
    return spec, [np.ascontiguousarray(o, dtype=np.float32) for o in outputs]


def run_reference(outputs, spec):
    with torch.no_grad():
        boxes, scores, labels = ref.decode([torch.from_numpy(o) for o in outputs], spec)
    return boxes.numpy(), scores.numpy(), labels.numpy()


def expected_count(kind: str, spec: ModelSpec, outputs) -> int:
    """Candidates per image, counted from the contract (not from either decoder)."""
    if kind == "yolo_anchor":
        return sum(o.shape[1] // (5 + spec.num_classes) * o.shape[2] * o.shape[3] for o in outputs)
    if kind in ("yolox", "dfl", "fastestdet"):
        return sum(o.shape[2] * o.shape[3] for o in outputs)
    if kind == "centernet":
        return min(spec.head.params["topk"], outputs[0].shape[1] * outputs[0].shape[2] * outputs[0].shape[3])
    return outputs[0].shape[1]  # ssd: one per prior


# --- parity with the torch reference -----------------------------------------------------------

PARITY_CASES = [
    # (input_size (h, w), batch, num_classes)
    ((64, 64), 1, 1),
    ((96, 160), 3, 7),
    ((256, 192), 1, 80),
    ((128, 96), 3, 20),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("input_size,batch,nc", PARITY_CASES)
def test_numpy_matches_torch_reference(kind, input_size, batch, nc):
    seed = zlib.crc32(repr((kind, input_size, batch, nc)).encode())  # stable across runs, unlike hash()
    spec, outputs = random_case(kind, input_size, batch, nc, seed=seed)
    got = rt.decode(outputs, spec)
    boxes, scores, labels = run_reference(outputs, spec)

    n = expected_count(kind, spec, outputs)
    assert got.boxes.shape == (batch, n, 4) and got.boxes.dtype == np.float32
    assert got.scores.shape == (batch, n) and got.scores.dtype == np.float32
    assert got.labels.shape == (batch, n) and got.labels.dtype == np.int64
    assert boxes.shape == (batch, n, 4)

    np.testing.assert_allclose(got.boxes, boxes, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got.scores, scores, rtol=1e-5, atol=1e-6)
    # Class logits were built without near-ties, so the best class must agree everywhere.
    np.testing.assert_array_equal(got.labels, labels)
    assert got.labels.min() >= 0 and got.labels.max() < nc


def test_centernet_parity_when_topk_exceeds_peaks():
    """Few peaks, many zero-score fillers: both decoders must order equal scores by flat index."""
    spec, outputs = random_case("centernet", (32, 24), 3, 1, seed=5)  # 8x6 grid, 48 positions < topk 100
    got = rt.decode(outputs, spec)
    boxes, scores, labels = run_reference(outputs, spec)
    assert got.scores.shape == (3, 48)
    assert (got.scores == 0).sum() > 10, "test needs suppressed (zero-score) filler entries"
    np.testing.assert_allclose(got.boxes, boxes, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got.scores, scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got.labels, labels)
    assert np.all(np.diff(got.scores, axis=1) <= 0), "centernet candidates must be sorted by score"


@pytest.mark.parametrize("kind", KINDS)
def test_batch_items_decode_independently(kind):
    spec, outputs = random_case(kind, (96, 128), 3, 5, seed=11)
    whole = rt.decode(outputs, spec)
    for i in range(3):
        single = rt.decode([o[i:i + 1] for o in outputs], spec)
        np.testing.assert_array_equal(single.boxes[0], whole.boxes[i])
        np.testing.assert_array_equal(single.scores[0], whole.scores[i])
        np.testing.assert_array_equal(single.labels[0], whole.labels[i])


# --- hand-computed cases: the formulas themselves ----------------------------------------------

def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_yolo_anchor_hand_computed():
    # One level, stride 8, input 16x24 -> grid 2x3; two anchors; two classes.
    spec = make_spec("yolo_anchor", (16, 24), 2, {"strides": [8], "anchors": [[[10, 13], [20, 30]]]}, ("p3",))
    x = np.full((1, 2, 7, 2, 3), -50.0, np.float32)  # [B, anchor, (x, y, w, h, obj, c0, c1), H, W]
    # anchor 1 at row 1, column 2
    x[0, 1, :, 1, 2] = [0.0, math.log(3), 0.0, math.log(3), 0.0, -1.0, 2.0]
    got = rt.decode([x.reshape(1, 14, 2, 3)], spec)
    # xy = (2*sig - 0.5 + cell) * stride: sig(0) = 0.5 -> (1 - 0.5 + 2) * 8 = 20; sig(ln 3) = 0.75 -> (1.5 - 0.5 + 1) * 8 = 16
    # wh = (2*sig)^2 * anchor: (1)^2 * 20 = 20; (1.5)^2 * 30 = 67.5
    index = 1 * 6 + 1 * 3 + 2  # anchor-major, then cells row-major
    assert got.boxes.shape == (1, 12, 4)
    np.testing.assert_allclose(got.boxes[0, index], [10.0, 16 - 33.75, 30.0, 16 + 33.75], atol=1e-4)
    assert got.labels[0, index] == 1
    np.testing.assert_allclose(got.scores[0, index], sig(0.0) * sig(2.0), rtol=1e-6)
    assert np.delete(got.scores[0], index).max() < 1e-20


def test_yolox_hand_computed_second_level():
    # Two levels (strides 8, 16), input 32x32 -> grids 4x4 then 2x2; the chosen cell is on level 2.
    spec = make_spec("yolox", (32, 32), 3, {"strides": [8, 16]}, ("p3", "p4"))
    l0 = np.full((1, 8, 4, 4), -20.0, np.float32)
    l1 = np.full((1, 8, 2, 2), -20.0, np.float32)
    l1[0, :, 0, 1] = [0.25, 0.5, math.log(2), 0.0, 0.0, 0.0, 3.0, 1.0]
    got = rt.decode([l0, l1], spec)
    # xy = (reg + cell) * 16 = (1.25 * 16, 0.5 * 16) = (20, 8); wh = exp(reg) * 16 = (32, 16)
    index = 16 + 0 * 2 + 1
    np.testing.assert_allclose(got.boxes[0, index], [4.0, 0.0, 36.0, 16.0], atol=1e-4)
    assert got.labels[0, index] == 1
    np.testing.assert_allclose(got.scores[0, index], sig(0.0) * sig(3.0), rtol=1e-6)


def test_dfl_hand_computed_and_numerically_stable():
    # One level, stride 8, input 16x16 -> grid 2x2; reg_max 4; two classes.
    spec = make_spec("dfl", (16, 16), 2, {"strides": [8], "reg_max": 4}, ("p3",))
    x = np.zeros((1, 18, 2, 2), np.float32)
    bins = np.array([
        [0.0, 0.0, 50.0, 0.0],                  # left: all mass on bin 2 -> 2
        [0.0, 0.0, 0.0, 0.0],                   # top: uniform -> 1.5
        [0.0, math.log(3), -60.0, -60.0],       # right: (1/4, 3/4, 0, 0) -> 0.75
        [100.0, 100.0, 0.0, 0.0],               # bottom: exp(100) overflows float32 unless the max is subtracted -> 0.5
    ], np.float32)
    x[0, :16, 1, 0] = bins.reshape(-1)
    x[0, 16:, 1, 0] = [2.0, -1.0]
    got = rt.decode([x], spec)
    # anchor point (cell + 0.5) * 8 = (4, 12); distances * 8 = l 16, t 12, r 6, b 4
    index = 1 * 2 + 0
    np.testing.assert_allclose(got.boxes[0, index], [4 - 16, 12 - 12, 4 + 6, 12 + 4], atol=1e-4)
    assert got.labels[0, index] == 0
    np.testing.assert_allclose(got.scores[0, index], sig(2.0), rtol=1e-6)
    assert np.isfinite(got.boxes).all()


def test_centernet_hand_computed():
    # stride 4, input 16x16 -> grid 4x4; two classes; topk 3.
    spec = make_spec("centernet", (16, 16), 2, {"stride": 4, "topk": 3}, ("heatmap", "wh", "offset"))
    heat = np.full((1, 2, 4, 4), -10.0, np.float32)
    heat[0, 1, 2, 1] = 2.0   # a peak
    heat[0, 0, 0, 0] = 1.0   # not a peak: its neighbour (0, 1) is higher
    heat[0, 0, 0, 1] = 1.5   # a peak, suppresses the cells around it in class 0
    wh = np.ones((1, 2, 4, 4), np.float32)
    offset = np.zeros((1, 2, 4, 4), np.float32)
    wh[0, :, 2, 1] = [2.0, 3.0]
    offset[0, :, 2, 1] = [0.25, 0.5]
    got = rt.decode([heat, wh, offset], spec)
    assert got.boxes.shape == (1, 3, 4)
    # 1) class 1 at (row 2, col 1): centre ((1 + 0.25) * 4, (2 + 0.5) * 4) = (5, 10), size (8, 12)
    # 2) class 0 at (0, 1): centre (4, 0), size (4, 4)
    # 3) background-level peaks all score sig(-10); the lowest flat index wins: class 0, (0, 3)
    #    ((0, 0) and (0, 2), (1, 0..2) are suppressed by the 1.5 peak)
    np.testing.assert_allclose(got.boxes[0], [[1, 4, 9, 16], [2, -2, 6, 2], [10, -2, 14, 2]], atol=1e-4)
    np.testing.assert_array_equal(got.labels[0], [1, 0, 0])
    np.testing.assert_allclose(got.scores[0], [sig(2.0), sig(1.5), sig(-10.0)], rtol=1e-5)


def test_ssd_priors_hand_computed():
    # One level of 1x2 cells, step 100, input h=100, w=200, min 30, max 60, ratio 2.
    params = {"feature_maps": [[1, 2]], "steps": [100], "min_sizes": [30], "max_sizes": [60],
              "aspect_ratios": [[2]], "variances": [0.1, 0.2], "clip": False}
    s, r2 = math.sqrt(30 * 60), math.sqrt(2)
    expected = []
    for cx in (50 / 200, 150 / 200):  # cell centres (j + 0.5) * step / w
        expected += [[cx, 0.5, 30 / 200, 30 / 100], [cx, 0.5, s / 200, s / 100],
                     [cx, 0.5, 30 * r2 / 200, 30 / r2 / 100], [cx, 0.5, 30 / r2 / 200, 30 * r2 / 100]]
    np.testing.assert_allclose(rt.ssd_priors(params, (100, 200)), expected, rtol=1e-6)
    np.testing.assert_allclose(ref.ssd_priors(params, (100, 200)).numpy(), expected, rtol=1e-6)


def test_ssd_priors_clip_and_ssd300_count():
    params = {"feature_maps": [[1, 1]], "steps": [100], "min_sizes": [80], "max_sizes": [150],
              "aspect_ratios": [[3]], "clip": True}
    priors = rt.ssd_priors(params, (100, 100))
    assert priors.max() == 1.0 and priors.min() >= 0.0
    np.testing.assert_allclose(priors[1], [0.5, 0.5, 1.0, 1.0])  # sqrt(80*150)/100 = 1.095 -> clipped
    ssd300 = {"feature_maps": [38, 19, 10, 5, 3, 1], "steps": [8, 16, 32, 64, 100, 300],
              "min_sizes": [30, 60, 111, 162, 213, 264], "max_sizes": [60, 111, 162, 213, 264, 315],
              "aspect_ratios": [[2], [2, 3], [2, 3], [2, 3], [2], [2]], "clip": True}
    priors = rt.ssd_priors(ssd300, (300, 300))
    assert priors.shape == (8732, 4) and priors.dtype == np.float32  # the well-known SSD300 count
    np.testing.assert_allclose(priors, ref.ssd_priors(ssd300, (300, 300)).numpy(), atol=1e-7)


def test_ssd_hand_computed():
    params = {"feature_maps": [[1, 2]], "steps": [100], "min_sizes": [30], "max_sizes": [60],
              "aspect_ratios": [[2]], "variances": [0.1, 0.2], "clip": False}
    spec = make_spec("ssd", (100, 200), 2, params, ("loc", "conf"))
    loc = np.zeros((1, 8, 4), np.float32)
    conf = np.zeros((1, 8, 3), np.float32)
    loc[0, 5] = [1.0, -1.0, math.log(2) / 0.2, 0.0]   # prior 5: second cell, sqrt(min*max) square
    conf[0, 5] = [0.0, math.log(2), math.log(5)]       # softmax (1/8, 2/8, 5/8)
    got = rt.decode([loc, conf], spec)
    s = math.sqrt(30 * 60)  # prior size in pixels, centre (150, 50)
    cx, cy = 150 + 1 * 0.1 * s, 50 - 1 * 0.1 * s
    w, h = s * 2, s
    np.testing.assert_allclose(got.boxes[0, 5], [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], atol=1e-4)
    assert got.labels[0, 5] == 1  # background removed: index 1 is the second real class
    np.testing.assert_allclose(got.scores[0, 5], 5 / 8, rtol=1e-6)
    # zero loc, zero conf: the box is the prior itself; scores 1/3 each, first real class wins the tie
    np.testing.assert_allclose(got.boxes[0, 0], [50 - 15, 50 - 15, 50 + 15, 50 + 15], atol=1e-4)
    np.testing.assert_allclose(got.scores[0, 0], 1 / 3, rtol=1e-6)
    assert got.labels[0, 0] == 0


def test_fastestdet_hand_computed():
    # input h=64, w=96, grid 2x3 (rows, cols); three classes.
    spec = make_spec("fastestdet", (64, 96), 3, {}, ("output",))
    x = np.zeros((1, 8, 2, 3), np.float32)
    x[0, 5:] = 1 / 3
    x[0, :, 1, 2] = [0.64, math.atanh(0.5), 0.0, math.log(3), 0.0, 0.1, 0.81, 0.09]
    got = rt.decode([x], spec)
    # cx = (tanh + col) / W * 96 = (0.5 + 2) / 3 * 96 = 80; cy = (0 + 1) / 2 * 64 = 32
    # w = sig(ln 3) * 96 = 72; h = sig(0) * 64 = 32
    index = 1 * 3 + 2
    np.testing.assert_allclose(got.boxes[0, index], [44, 16, 116, 48], atol=1e-4)
    assert got.labels[0, index] == 1
    np.testing.assert_allclose(got.scores[0, index], 0.64 ** 0.6 * 0.81 ** 0.4, rtol=1e-6)
    assert got.scores[0, 0] == 0.0  # objectness 0 -> score 0


# --- edge cases and errors ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_all_scores_very_low(kind):
    spec, outputs = random_case(kind, (64, 96), 1, 3, seed=3)
    if kind == "fastestdet":
        outputs[0][:, 0] = 0.0  # objectness is already a probability
    elif kind == "ssd":
        outputs[1][..., 0] = 40.0  # background wins everywhere
    elif kind == "centernet":
        outputs[0][:] = -30.0
    else:
        for o in outputs:  # every logit very negative: objectness and classes -> ~0
            o[:] = -30.0
    got = rt.decode(outputs, spec)
    assert got.scores.max() < 1e-6
    assert np.isfinite(got.boxes).all()
    assert got.boxes.shape[1] == got.scores.shape[1] == expected_count(kind, spec, outputs)


@pytest.mark.parametrize("kind", KINDS)
def test_float16_outputs_are_accepted(kind):
    spec, outputs = random_case(kind, (64, 64), 1, 4, seed=7)
    half = [o.astype(np.float16) for o in outputs]
    got = rt.decode(half, spec)
    want = rt.decode([h.astype(np.float32) for h in half], spec)
    assert got.boxes.dtype == np.float32 and got.scores.dtype == np.float32 and got.labels.dtype == np.int64
    np.testing.assert_array_equal(got.boxes, want.boxes)
    np.testing.assert_array_equal(got.scores, want.scores)
    np.testing.assert_array_equal(got.labels, want.labels)


def test_unknown_kind_is_a_spec_error():
    spec = make_spec("nope", (64, 64), 2, {}, ("out",))
    with pytest.raises(SpecError, match=r"unknown head kind 'nope'; known head kinds: .*centernet.*yolox"):
        rt.get_decoder("nope")
    with pytest.raises(SpecError, match="unknown head kind 'nope'"):
        rt.decode([np.zeros((1, 7, 8, 8), np.float32)], spec)
    with pytest.raises(SpecError, match="unknown head kind 'nope'"):
        ref.get_decoder("nope")


def test_registry_lists_every_kind_in_both_implementations():
    from tests.runtime.test_decode_decoded_heads import KINDS as DECODED_KINDS
    from tests.runtime.test_graph_nms_decode import KINDS as GRAPH_NMS_KINDS

    # ==, not <=: a decoder registered without joining KINDS (which the parity tests run over) must fail here
    assert set(KINDS) | set(DECODED_KINDS) | set(GRAPH_NMS_KINDS) == set(rt.DECODERS)
    assert set(rt.DECODERS) == set(ref.DECODERS)
    assert rt.get_decoder("dfl") is rt.DECODERS["dfl"]
    with pytest.raises(ValueError, match="already registered"):
        rt.register_decoder("dfl")(lambda outputs, spec: None)


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_channel_count_is_an_output_error(kind):
    spec, outputs = random_case(kind, (64, 64), 1, 4, seed=2)
    last = len(outputs) - 1
    bad = list(outputs)
    if kind == "ssd":
        bad[last] = bad[last][..., :-1]  # conf with one class too few
    else:
        bad[last] = bad[last][:, :-1]
    with pytest.raises(OutputError) as info:
        rt.decode(bad, spec)
    message = str(info.value)
    assert repr(kind) in message and f"output {last}" in message
    assert str(tuple(bad[last].shape)) in message  # the received shape
    assert "expected shape" in message
    with pytest.raises(OutputError):
        run_reference(bad, spec)


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_number_of_outputs_is_an_output_error(kind):
    spec, outputs = random_case(kind, (64, 64), 1, 4, seed=2)
    with pytest.raises(OutputError, match=f"head '{kind}' expects {len(outputs)} output"):
        rt.decode(outputs + [outputs[0]], spec)
    with pytest.raises(OutputError, match=f"head '{kind}' expects"):
        rt.get_decoder(kind)(outputs[:-1] if len(outputs) > 1 else [], spec)


def test_levels_out_of_order_are_an_output_error():
    spec, outputs = random_case("dfl", (64, 64), 1, 4, seed=2)
    with pytest.raises(OutputError, match=r"output 0 \('p3'\): grid 2x2 does not match input 64x64 / stride 8"):
        rt.decode(outputs[::-1], spec)


def test_ssd_prior_count_mismatch_is_an_output_error():
    spec, outputs = random_case("ssd", (64, 64), 1, 4, seed=2)
    with pytest.raises(OutputError, match=r"output 0 \('loc'\): expected shape \[B, \d+, 4\]"):
        rt.decode([outputs[0][:, :-1], outputs[1][:, :-1]], spec)


def test_missing_param_is_a_spec_error():
    spec = make_spec("dfl", (64, 64), 2, {"strides": [8, 16, 32]}, ("a", "b", "c"))
    with pytest.raises(SpecError, match="'dfl' needs parameter 'reg_max'"):
        rt.decode([np.zeros((1, 66, 8, 8), np.float32)] * 3, spec)


@pytest.mark.parametrize("bad_value,word", [(np.nan, "NaN"), (np.inf, "inf")])
@pytest.mark.parametrize("kind", KINDS)
def test_nan_or_inf_is_an_output_error(kind, bad_value, word):
    spec, outputs = random_case(kind, (64, 64), 1, 2, seed=4)
    outputs[-1].reshape(-1)[3] = bad_value
    name = spec.head.output_names[-1]
    with pytest.raises(OutputError, match=f"model output '{name}' contains {word}"):
        rt.decode(outputs, spec)
    with pytest.raises(OutputError, match=f"model output '{name}' contains NaN or inf"):
        run_reference(outputs, spec)


def test_runtime_decode_does_not_import_torch():
    code = "import sys, edgekit.runtime.decode; sys.exit(1 if 'torch' in sys.modules else 0)"
    import edgekit

    root = str(Path(edgekit.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr or "edgekit.runtime.decode imported torch"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("quantile", [0.1, 0.5, 0.95])
def test_score_threshold_fast_path_keeps_every_candidate_that_passes(kind, quantile):
    """Decoders may skip box math below the threshold: scores stay complete, and every candidate
    above it has the same box and label as a full decode (the Detector passes its conf threshold)."""
    spec, outputs = random_case(kind, (64, 96), 2, 5, seed=11)
    full = rt.decode(outputs, spec)
    threshold = float(np.quantile(full.scores, quantile))  # a threshold inside this case's score range
    fast = rt.decode(outputs, spec, score_threshold=threshold)
    np.testing.assert_array_equal(fast.scores, full.scores)
    passing = full.scores > threshold
    assert passing.any() and (~passing).any()  # the case exercises both sides of the threshold
    np.testing.assert_array_equal(fast.labels[passing], full.labels[passing])
    # pixels: the subset matmul may sum in another order (measured 1.5e-5 px at box coordinates ~60 px)
    np.testing.assert_allclose(fast.boxes[passing], full.boxes[passing], rtol=1e-6, atol=1e-4)
