"""Heads decoded inside third-party exported graphs: numpy runtime vs the torch reference, plus
hand-computed cases and the error paths.

Kinds: ``ultralytics_decoded`` [B, 4+nc, N], ``e2e_xyxy`` [B, K, 6], ``yolo_decoded`` [B, N, 5+nc]
and ``yolox_flat`` [B, N, 5+nc] (raw reg, obj/cls probabilities) — contracts in ``edgekit.spec``.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from edgekit.errors import OutputError
from edgekit.reference import decode as ref
from edgekit.runtime import decode as rt
from edgekit.runtime.nms import postprocess
from edgekit.spec import HeadSpec, ModelSpec

torch.set_num_threads(1)

KINDS = ("ultralytics_decoded", "e2e_xyxy", "yolo_decoded", "yolox_flat")
STRIDES = [8, 16, 32]


def make_spec(kind: str, input_size: tuple[int, int], nc: int) -> ModelSpec:
    params = {"strides": STRIDES} if kind == "yolox_flat" else {}
    return ModelSpec(family=f"test-{kind}", input_size=input_size, class_names=tuple(f"c{i}" for i in range(nc)),
                     head=HeadSpec(kind=kind, output_names=("output0",), params=params))


def cells(input_size: tuple[int, int]) -> int:
    h, w = input_size
    return sum(math.ceil(h / s) * math.ceil(w / s) for s in STRIDES)


def distinct_probs(rng: np.random.Generator, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """Probabilities in (0.02, 0.98) with a random order and a gap >= 0.6/n between any two classes."""
    n = shape[axis]
    rank = rng.random(shape).argsort(axis=axis).argsort(axis=axis)
    return (0.02 + (rank + rng.random(shape) * 0.4) * (0.96 / n)).astype(np.float32)


def random_case(kind: str, input_size: tuple[int, int], batch: int, nc: int, seed: int) -> tuple[ModelSpec, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, w = input_size
    spec = make_spec(kind, input_size, nc)
    if kind == "ultralytics_decoded":
        n = cells(input_size)
        boxes = np.stack([rng.uniform(0, w, (batch, n)), rng.uniform(0, h, (batch, n)),
                          rng.uniform(1, w, (batch, n)), rng.uniform(1, h, (batch, n))], axis=1)
        out = np.concatenate([boxes, distinct_probs(rng, (batch, nc, n), axis=1)], axis=1)
    elif kind == "e2e_xyxy":
        k = 300
        x1 = rng.uniform(0, w, (batch, k))
        y1 = rng.uniform(0, h, (batch, k))
        out = np.stack([x1, y1, x1 + rng.uniform(1, 50, (batch, k)), y1 + rng.uniform(1, 50, (batch, k)),
                        rng.random((batch, k)), rng.integers(0, nc, (batch, k)).astype(np.float64)], axis=2)
    elif kind == "yolo_decoded":
        n = 3 * cells(input_size)
        boxes = np.stack([rng.uniform(0, w, (batch, n)), rng.uniform(0, h, (batch, n)),
                          rng.uniform(1, w, (batch, n)), rng.uniform(1, h, (batch, n))], axis=2)
        obj = rng.uniform(0.01, 1.0, (batch, n, 1))
        out = np.concatenate([boxes, obj, distinct_probs(rng, (batch, n, nc), axis=2)], axis=2)
    elif kind == "yolox_flat":
        n = cells(input_size)
        out = np.concatenate([rng.standard_normal((batch, n, 4)) * 0.7, rng.uniform(0.01, 1.0, (batch, n, 1)),
                              distinct_probs(rng, (batch, n, nc), axis=2)], axis=2)
    else:
        raise ValueError(kind)
    return spec, np.ascontiguousarray(out, dtype=np.float32)


def run_reference(output: np.ndarray, spec: ModelSpec):
    with torch.no_grad():
        boxes, scores, labels = ref.decode([torch.from_numpy(output)], spec)
    return boxes.numpy(), scores.numpy(), labels.numpy()


def assert_parity(output: np.ndarray, spec: ModelSpec, compare_labels=None) -> rt.Candidates:
    got = rt.decode([output], spec)
    boxes, scores, labels = run_reference(output, spec)
    assert got.boxes.dtype == np.float32 and got.scores.dtype == np.float32 and got.labels.dtype == np.int64
    assert got.boxes.shape == boxes.shape and got.scores.shape == scores.shape
    np.testing.assert_allclose(got.boxes, boxes, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got.scores, scores, rtol=1e-6, atol=1e-7)
    mask = np.ones(labels.shape, bool) if compare_labels is None else compare_labels
    np.testing.assert_array_equal(got.labels[mask], labels[mask])
    return got


# --- parity -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("input_size,batch,nc", [((64, 64), 1, 1), ((96, 160), 3, 7), ((320, 320), 1, 80),
                                                 ((100, 70), 2, 3)])
def test_numpy_matches_torch_reference(kind, input_size, batch, nc):
    seed = zlib.crc32(repr((kind, input_size, batch, nc)).encode())
    spec, output = random_case(kind, input_size, batch, nc, seed)
    got = assert_parity(output, spec)
    expected_n = {"ultralytics_decoded": cells(input_size), "e2e_xyxy": 300,
                  "yolo_decoded": 3 * cells(input_size), "yolox_flat": cells(input_size)}[kind]
    assert got.scores.shape == (batch, expected_n)
    assert got.labels.min() >= 0 and got.labels.max() < nc


@pytest.mark.parametrize("kind", KINDS)
def test_float16_outputs_decode_like_their_float32_values(kind):
    spec, output = random_case(kind, (64, 96), 2, 5, seed=4)
    half = output.astype(np.float16)
    got = rt.decode([half], spec)
    want = rt.decode([half.astype(np.float32)], spec)
    np.testing.assert_array_equal(got.boxes, want.boxes)
    np.testing.assert_array_equal(got.scores, want.scores)
    np.testing.assert_array_equal(got.labels, want.labels)


@pytest.mark.parametrize("kind", KINDS)
def test_batch_items_decode_independently(kind):
    spec, output = random_case(kind, (64, 96), 3, 4, seed=9)
    whole = rt.decode([output], spec)
    for i in range(3):
        single = rt.decode([output[i:i + 1]], spec)
        np.testing.assert_array_equal(single.boxes[0], whole.boxes[i])
        np.testing.assert_array_equal(single.scores[0], whole.scores[i])
        np.testing.assert_array_equal(single.labels[0], whole.labels[i])


# --- hand-computed cases --------------------------------------------------------------------------

def test_ultralytics_decoded_hand_computed_and_threshold_is_strict():
    spec = make_spec("ultralytics_decoded", (64, 64), 3)
    out = np.zeros((1, 7, 4), np.float32)
    out[0, :4, 2] = [20, 30, 10, 8]                 # cx, cy, w, h
    out[0, 4:, 2] = [0.1, 0.25, 0.2]                # class 1 sits exactly on a 0.25 threshold
    out[0, :4, 3] = [40, 40, 4, 4]
    out[0, 4:, 3] = [0.3, 0.30000002, 0.9]          # class 2 clearly best
    got = assert_parity(out, spec)
    np.testing.assert_allclose(got.boxes[0, 2], [15, 26, 25, 34])
    np.testing.assert_allclose(got.boxes[0, 3], [38, 38, 42, 42])
    assert got.labels[0, 2] == 1 and got.labels[0, 3] == 2
    assert got.scores[0, 2] == np.float32(0.25) and got.scores[0, 3] == np.float32(0.9)
    # score == conf threshold is dropped (strict >, as Ultralytics); all-zero candidates score 0
    kept = postprocess(got.boxes, got.scores, got.labels, conf_threshold=0.25, iou_threshold=0.7,
                       class_agnostic=False, pre_nms_topk=30000, max_detections=300)
    np.testing.assert_array_equal(kept[0][2], [2])
    assert got.scores[0, 0] == 0.0


def test_e2e_xyxy_passes_rows_through():
    spec = make_spec("e2e_xyxy", (64, 64), 4)
    out = np.zeros((2, 3, 6), np.float32)
    out[0, 0] = [1, 2, 30, 40, 0.8, 3.0]
    out[0, 1] = [5, 5, 6, 6, 0.25, 1.0000001]      # class stored as a float close to 1
    out[1, 2] = [0, 0, 64, 64, 0.5, 2.0]
    got = assert_parity(out, spec)
    np.testing.assert_array_equal(got.boxes, out[..., :4])
    np.testing.assert_array_equal(got.scores, out[..., 4])
    np.testing.assert_array_equal(got.labels, [[3, 1, 0], [0, 0, 2]])
    # no NMS: two heavily overlapping boxes of one class both survive with nms=False
    out[0, 1] = [1, 2, 30, 41, 0.7, 3.0]
    got = rt.decode([out], spec)
    kept = postprocess(got.boxes, got.scores, got.labels, conf_threshold=0.25, iou_threshold=0.5,
                       class_agnostic=False, pre_nms_topk=300, max_detections=300, apply_nms=False)
    np.testing.assert_array_equal(kept[0][1], np.float32([0.8, 0.7]))


def test_yolo_decoded_hand_computed():
    spec = make_spec("yolo_decoded", (64, 64), 2)
    out = np.zeros((1, 2, 7), np.float32)
    out[0, 0] = [10, 20, 4, 6, 0.5, 0.2, 0.6]
    out[0, 1] = [30, 30, 2, 2, 0.9, 0.7, 0.1]
    got = assert_parity(out, spec)
    np.testing.assert_allclose(got.boxes[0], [[8, 17, 12, 23], [29, 29, 31, 31]])
    np.testing.assert_allclose(got.scores[0], [0.5 * 0.6, 0.9 * 0.7], rtol=1e-6)
    np.testing.assert_array_equal(got.labels[0], [1, 0])


def test_yolo_decoded_zero_objectness_scores_zero():
    spec, out = random_case("yolo_decoded", (64, 64), 1, 3, seed=1)
    out[0, :10, 4] = 0.0
    # with obj == 0 every class product is 0: the reference's argmax of equal zeros is arbitrary
    mask = np.ones(out.shape[:2], bool)
    mask[0, :10] = False
    got = assert_parity(out, spec, compare_labels=mask)
    assert (got.scores[0, :10] == 0).all()


def test_yolox_flat_hand_computed_second_level():
    # input 32x32, strides 8/16/32 -> grids 4x4, 2x2, 1x1 = 21 candidates
    spec = make_spec("yolox_flat", (32, 32), 3)
    out = np.zeros((1, 21, 8), np.float32)
    index = 16 + 0 * 2 + 1                          # level 2 (stride 16), row 0, column 1
    out[0, index] = [0.25, 0.5, math.log(2), 0.0, 0.5, 0.1, 0.8, 0.3]
    got = assert_parity(out, spec)
    # xy = (reg + cell) * 16 = (1.25 * 16, 0.5 * 16) = (20, 8); wh = exp(reg) * 16 = (32, 16)
    np.testing.assert_allclose(got.boxes[0, index], [4.0, 0.0, 36.0, 16.0], atol=1e-5)
    np.testing.assert_allclose(got.scores[0, index], 0.5 * 0.8, rtol=1e-6)
    assert got.labels[0, index] == 1
    # the last candidate is the single stride-32 cell: zero reg -> box centred at (0, 0), size 32
    np.testing.assert_allclose(got.boxes[0, 20], [-16, -16, 16, 16])


def test_yolox_flat_non_multiple_input_uses_ceil_grids():
    spec = make_spec("yolox_flat", (40, 72), 1)    # grids 5x9, 3x5, 2x3 = 45 + 15 + 6
    out = np.zeros((1, 66, 6), np.float32)
    assert_parity(out, spec)
    with pytest.raises(OutputError, match=r"expected shape \[B, 66, 6\]"):
        rt.decode([np.zeros((1, 65, 6), np.float32)], spec)


# --- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,bad_shape", [
    ("ultralytics_decoded", (1, 8, 100)),   # nc 3 -> 7 channels expected
    ("ultralytics_decoded", (1, 100, 7)),   # transposed layout
    ("e2e_xyxy", (1, 300, 7)),
    ("yolo_decoded", (1, 100, 9)),
    ("yolo_decoded", (1, 8, 100)),
    ("yolox_flat", (1, 84, 7)),             # 64x64 -> 84 cells, but one class too many
    ("yolox_flat", (1, 85, 8)),             # one cell too many
    ("yolox_flat", (84, 8)),                # no batch axis
])
def test_wrong_shape_is_an_output_error(kind, bad_shape):
    spec = make_spec(kind, (64, 64), 3)
    bad = np.zeros(bad_shape, np.float32)
    with pytest.raises(OutputError) as info:
        rt.decode([bad], spec)
    assert repr(kind) in str(info.value) and str(tuple(bad_shape)) in str(info.value)
    with pytest.raises(OutputError):
        run_reference(bad, spec)


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_number_of_outputs_is_an_output_error(kind):
    spec, out = random_case(kind, (64, 64), 1, 3, seed=2)
    with pytest.raises(OutputError, match=f"head '{kind}' expects 1 output"):
        rt.get_decoder(kind)([out, out], spec)


@pytest.mark.parametrize("value", [1.5, -1.0, 4.0, 3.2])
def test_e2e_class_column_must_be_a_class_index(value):
    spec = make_spec("e2e_xyxy", (64, 64), 4)
    out = np.zeros((1, 5, 6), np.float32)
    out[0, 3, 5] = value
    with pytest.raises(OutputError, match=r"column 5 must be a class index in 0\.\.3, got"):
        rt.decode([out], spec)
    with pytest.raises(OutputError, match="column 5 must be a class index"):
        run_reference(out, spec)


def test_nan_in_output_is_rejected():
    spec, out = random_case("ultralytics_decoded", (64, 64), 1, 3, seed=2)
    out[0, 0, 5] = np.nan
    with pytest.raises(OutputError, match="contains NaN"):
        rt.decode([out], spec)


def test_registry_has_the_new_kinds_in_both_implementations():
    # (that no decoder is registered without a parity test: test_decode.py's registry test, over both KINDS)
    assert set(KINDS) <= set(rt.DECODERS) and set(KINDS) <= set(ref.DECODERS)
