"""Property-based tests (hypothesis): the numpy runtime against the torch reference on generated inputs.

- NMS / postprocess: ``edgekit.runtime.nms`` vs ``edgekit.reference.nms`` (the obvious greedy loop), on
  boxes snapped to coarse grids (IoU exactly on the threshold, identical boxes, empty boxes) and
  scores with ties, including a conf threshold equal to a score.
- Decoders: every head kind of ``edgekit.runtime.decode`` vs ``edgekit.reference.decode`` on random shapes
  and values, and the runtime's ``score_threshold`` shortcut (scores on the threshold included) against its
  own full decode.
- Letterbox / plain resize: the transform says where the image's pixels actually went, and boxes mapped
  into the network input and back come out within 1e-3 px.

Deterministic for CI: ``derandomize=True`` and no example database; examples are kept few (2 cores).
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit.reference import decode as ref_decode
from edgekit.reference import nms as ref_nms
from edgekit.runtime import decode as rt_decode
from edgekit.runtime import nms as rt_nms
from edgekit.runtime.preprocess import ResizeTransform, boxes_to_original, letterbox, plain_resize
from tests.runtime.test_decode import KINDS as GRID_KINDS
from tests.runtime.test_decode import random_case as grid_case
from tests.runtime.test_decode_decoded_heads import KINDS as DECODED_KINDS
from tests.runtime.test_decode_decoded_heads import random_case as decoded_case

torch.set_num_threads(1)

PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=100,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- NMS ---------------------------------------------------------------------------------------------


@st.composite
def detections(draw):
    """(boxes float32 [N, 4] xyxy, scores float32 [N], labels int64 [N]) with the awkward cases in them."""
    n = draw(st.integers(0, 48))
    seed = draw(st.integers(0, 2**32 - 1))
    grid = draw(st.sampled_from([1.0, 4.0, 0.5]))  # coarse coordinates: exact IoU ties (0.5, 1/3, ...)
    extent = draw(st.sampled_from([16.0, 64.0, 640.0]))
    score_levels = draw(st.sampled_from([0, 2, 5]))  # 0: continuous scores, else this many distinct values
    classes = draw(st.integers(1, 4))
    rng = np.random.default_rng(seed)
    x1 = np.round(rng.uniform(-extent / 8, extent, n) / grid) * grid
    y1 = np.round(rng.uniform(-extent / 8, extent, n) / grid) * grid
    w = np.round(rng.uniform(0, extent / 2, n) / grid) * grid
    h = np.round(rng.uniform(0, extent / 2, n) / grid) * grid
    if n and draw(st.booleans()):
        w[rng.integers(0, n)] = -grid  # an inverted box: empty, never suppresses
    boxes = np.stack([x1, y1, x1 + w, y1 + h], axis=1).astype(np.float32)
    if n > 2 and draw(st.booleans()):
        boxes[1] = boxes[0]  # an exact duplicate: IoU 1
    scores = (rng.integers(1, score_levels + 1, n) / (score_levels + 1) if score_levels
              else rng.random(n)).astype(np.float32)
    labels = rng.integers(0, classes, n).astype(np.int64)
    return boxes, scores, labels


IOU_THRESHOLDS = st.one_of(st.sampled_from([0.0, 0.25, 1 / 3, 0.5, 0.6, 1.0]), st.floats(0.0, 1.0))


@PROPERTY
@given(detections(), IOU_THRESHOLDS, st.booleans())
def test_batched_nms_matches_the_reference(case, iou_threshold, agnostic):
    boxes, scores, labels = case
    got = rt_nms.batched_nms(boxes, scores, labels, iou_threshold, class_agnostic=agnostic)
    expected = ref_nms.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels),
                                   iou_threshold, class_agnostic=agnostic).numpy()
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)


@PROPERTY
@given(st.lists(detections(), min_size=1, max_size=3), IOU_THRESHOLDS, st.booleans(), st.integers(1, 60),
       st.integers(1, 60), st.booleans(), st.data())
def test_postprocess_matches_the_reference(images, iou_threshold, agnostic, topk, max_det, apply_nms, data):
    n = max(len(s) for _, s, _ in images)
    boxes = np.zeros((len(images), n, 4), np.float32)
    scores = np.zeros((len(images), n), np.float32)
    labels = np.zeros((len(images), n), np.int64)
    for i, (b, s, lb) in enumerate(images):
        boxes[i, :len(b)], scores[i, :len(s)], labels[i, :len(lb)] = b, s, lb
    present = scores[scores > 0]
    # a conf threshold equal to a score (strict '>' drops it) or any value in [0, 1]
    conf = data.draw(st.sampled_from(sorted(set(present.tolist()))) if present.size else st.just(0.0)) \
        if data.draw(st.booleans()) else data.draw(st.floats(0.0, 1.0))
    got = rt_nms.postprocess(boxes, scores, labels, conf_threshold=conf, iou_threshold=iou_threshold,
                             class_agnostic=agnostic, pre_nms_topk=topk, max_detections=max_det, apply_nms=apply_nms)
    expected = ref_nms.postprocess(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels),
                                   conf_threshold=conf, iou_threshold=iou_threshold, class_agnostic=agnostic,
                                   pre_nms_topk=topk, max_detections=max_det, apply_nms=apply_nms)
    assert len(got) == len(expected) == len(images)
    for (gb, gs, gl), (eb, es, el) in zip(got, expected):
        np.testing.assert_array_equal(gb, eb.numpy())
        np.testing.assert_array_equal(gs, es.numpy())
        np.testing.assert_array_equal(gl, el.numpy())
        assert (gs > np.float32(conf)).all()


# --- decoders ----------------------------------------------------------------------------------------


@st.composite
def decoder_cases(draw):
    kind = draw(st.sampled_from(GRID_KINDS + DECODED_KINDS))
    batch = draw(st.integers(1, 2))
    nc = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    if kind in GRID_KINDS:  # grid heads: the input is a multiple of the largest stride
        size = (32 * draw(st.integers(1, 5)), 32 * draw(st.integers(1, 5)))
        spec, outputs = grid_case(kind, size, batch, nc, seed)
    else:  # heads decoded in the graph: any input size (yolox_flat uses ceil grids)
        size = (draw(st.integers(32, 160)), draw(st.integers(32, 160)))
        spec, output = decoded_case(kind, size, batch, nc, seed)
        outputs = [output]
    return kind, spec, outputs


def reference_decode(outputs, spec):
    with torch.no_grad():
        boxes, scores, labels = ref_decode.decode([torch.from_numpy(o) for o in outputs], spec)
    return boxes.numpy(), scores.numpy(), labels.numpy()


@settings(PROPERTY, max_examples=60)
@given(decoder_cases(), st.data())
def test_every_decoder_matches_the_reference(case, data):
    kind, spec, outputs = case
    got = rt_decode.decode(outputs, spec)
    boxes, scores, labels = reference_decode(outputs, spec)
    assert got.boxes.dtype == np.float32 and got.scores.dtype == np.float32 and got.labels.dtype == np.int64
    assert got.boxes.shape == boxes.shape and got.scores.shape == scores.shape == labels.shape
    np.testing.assert_allclose(got.boxes, boxes, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got.scores, scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got.labels, labels)

    # the score_threshold shortcut: same scores and labels; every candidate above it has its full box.
    # Thresholds on a candidate's own score are included: that candidate is "<= threshold" and dropped.
    flat = np.unique(got.scores)
    threshold = float(data.draw(st.sampled_from(flat.tolist()))) if data.draw(st.booleans()) \
        else data.draw(st.floats(0.0, 1.0))
    short = rt_decode.decode(outputs, spec, threshold)
    np.testing.assert_array_equal(short.scores, got.scores)
    np.testing.assert_array_equal(short.labels, got.labels)
    above = got.scores > np.float32(threshold)
    # (the subset's box math may round differently in the last bits: a float32 ulp, not a different box)
    np.testing.assert_allclose(short.boxes[above], got.boxes[above], rtol=1e-6, atol=1e-4)


# --- letterbox / plain resize ---------------------------------------------------------------------------


@st.composite
def resize_cases(draw):
    height, width = draw(st.integers(1, 900)), draw(st.integers(1, 900))
    target = (32 * draw(st.integers(1, 20)), 32 * draw(st.integers(1, 20)))
    mode = draw(st.sampled_from(["center", "top_left", "resize"]))
    return (height, width), target, mode


def forward(boxes: np.ndarray, transform: ResizeTransform) -> np.ndarray:
    """Original-image pixels -> network-input pixels, as ResizeTransform documents it (float64)."""
    out = boxes.astype(np.float64).copy()
    out[:, 0::2] = out[:, 0::2] * transform.scale_x + transform.pad_x
    out[:, 1::2] = out[:, 1::2] * transform.scale_y + transform.pad_y
    return out


@settings(PROPERTY, max_examples=60)
@given(resize_cases(), st.integers(0, 2**31 - 1))
def test_resize_transform_places_the_pixels_and_boxes_round_trip(case, seed):
    (height, width), target, mode = case
    image = np.full((height, width, 3), 255, np.uint8)  # content 255, padding 0: the content is findable
    if mode == "resize":
        resized, transform = plain_resize(image, target)
    else:
        resized, transform = letterbox(image, target, pad_value=0, align=mode)
    assert resized.shape == (*target, 3)
    # the oracle is the image itself: the forward map of the whole image is exactly the content's pixels
    rows, cols = np.nonzero(resized[:, :, 0] == 255)
    content = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
    np.testing.assert_allclose(forward(np.array([[0, 0, width, height]]), transform)[0], content, atol=1e-6)
    assert (resized[:, :, 0] == 255).sum() == (content[2] - content[0]) * (content[3] - content[1])

    # boxes inside the image: to the network input (as float32, what a decoder produces) and back
    rng = np.random.default_rng(seed)
    corners = np.sort(rng.uniform(0, 1, (16, 2, 2)), axis=1)  # [box, (min, max), (x, y)]
    boxes = np.concatenate([corners[:, :, 0] * width, corners[:, :, 1] * height], axis=1)[:, [0, 2, 1, 3]]
    boxes[0] = [0, 0, width, height]
    back = boxes_to_original(forward(boxes, transform).astype(np.float32), transform)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, boxes, atol=1e-3, rtol=0)

