"""The ``nms_rows`` decoder (a model whose graph ends in NMS, ``edgekit.runtime.graph_nms``): numpy runtime vs
the torch reference, the rank order the host NMS keeps boxes in, and every malformed output refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekit.errors import OutputError
from edgekit.reference import decode as ref
from edgekit.runtime import decode as rt
from edgekit.runtime.graph_nms import GraphNms, graph_nms_spec
from edgekit.spec import HeadSpec, ModelSpec

KINDS = ("nms_rows",)
NUM_CLASSES = 4


def _spec() -> ModelSpec:
    raw = ModelSpec(family="test", input_size=(64, 64), class_names=tuple(f"c{i}" for i in range(NUM_CLASSES)),
                    head=HeadSpec(kind="yolox", output_names=("out",), params={"strides": [8, 16, 32]}))
    return graph_nms_spec(raw, GraphNms(0.25, 0.45, False, 1000, 300))


def _rows(seed: int, batch: int, count: int) -> np.ndarray:
    """Rows as NonMaxSuppression emits them: grouped by image then class, ranks distinct within an image."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, batch, count)
    rank = np.concatenate([rng.permutation(500)[:count]])
    xy = rng.uniform(0, 60, (count, 2))
    rows = np.column_stack([image, xy, xy + rng.uniform(1, 20, (count, 2)), rng.uniform(0.3, 1, count),
                            rng.integers(0, NUM_CLASSES, count), rank]).astype(np.float32)
    return rows[np.lexsort((rows[:, 6], rows[:, 0]))]


@pytest.mark.parametrize(("batch", "count"), [(1, 0), (1, 7), (3, 40), (4, 3)])
def test_numpy_matches_torch_reference(batch, count):
    spec = _spec()
    rows, marker = _rows(batch * 10 + count, batch, count), np.zeros(batch, np.float32)
    got = rt.decode([rows, marker], spec)
    boxes, scores, labels = ref.decode([torch.from_numpy(rows), torch.from_numpy(marker)], spec)
    np.testing.assert_array_equal(got.boxes, boxes.numpy())
    np.testing.assert_array_equal(got.scores, scores.numpy())
    np.testing.assert_array_equal(got.labels, labels.numpy())
    assert got.scores.shape[0] == batch  # an image without rows still has its (empty) slot


def test_rows_come_back_per_image_in_rank_order_padded_with_zero_scores():
    spec = _spec()
    rows = np.array([[1, 0, 0, 5, 5, 0.5, 2, 9], [0, 1, 1, 4, 4, 0.9, 0, 3], [1, 2, 2, 6, 6, 0.8, 1, 4],
                     [0, 3, 3, 7, 7, 0.6, 3, 5], [1, 4, 4, 8, 8, 0.7, 0, 2]], np.float32)
    got = rt.decode([rows, np.zeros(3, np.float32)], spec)
    np.testing.assert_array_equal(got.scores, np.float32([[0.9, 0.6, 0], [0.7, 0.8, 0.5], [0, 0, 0]]))
    np.testing.assert_array_equal(got.labels, [[0, 3, 0], [0, 1, 2], [0, 0, 0]])
    np.testing.assert_array_equal(got.boxes[1, 0], [4, 4, 8, 8])


@pytest.mark.parametrize(("rows", "marker", "message"), [
    (np.zeros((2, 7), np.float32), np.zeros(1, np.float32), r"expected shape \[S, 8\]"),
    (np.array([[1, 0, 0, 1, 1, 0.5, 0, 0]], np.float32), np.zeros(1, np.float32),
     r"row with image 1 and class 0; expected an image in 0..0 and a class in 0..3"),
    (np.array([[0, 0, 0, 1, 1, 0.5, 4, 0]], np.float32), np.zeros(1, np.float32), r"class 4; expected an image in"),
    (np.array([[0, 0, 0, 1, 1, 0.5, 1.5, 0]], np.float32), np.zeros(1, np.float32), r"class 1.5"),
    (np.zeros((1, 8), np.float32), np.zeros((1, 1), np.float32), r"output 1 \('nms_batch'\): expected shape \[B\]"),
])
def test_a_malformed_output_is_an_output_error(rows, marker, message):
    with pytest.raises(OutputError, match=message):
        rt.decode([rows, marker], _spec())
