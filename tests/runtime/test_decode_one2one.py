"""``dfl`` with ``one2one_topk``: the end-to-end selection of a one-to-one head (YOLOv10 / YOLO26), runtime (numpy)
against the reference (torch) and against a hand-worked case.

The selection, as the Ultralytics end-to-end export outputs it: the K anchors with the best max-class score, then the
K best (anchor, class) pairs among them; one anchor may appear once per class.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekit.errors import SpecError
from edgekit.reference.decode import decode as reference_decode
from edgekit.runtime.decode import decode as runtime_decode
from edgekit.spec import HeadSpec, ModelSpec


def one2one_spec(k: int, input_size=(16, 16), strides=(8,), nc: int = 3) -> ModelSpec:
    return ModelSpec(family="yolo26", input_size=input_size, class_names=tuple("abcdefgh"[:nc]),
                     head=HeadSpec("dfl", tuple(f"p{i}" for i in range(len(strides))),
                                   {"strides": list(strides), "reg_max": 1, "one2one_topk": k}))


def logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def hand_case() -> np.ndarray:
    """One level, 2x2 cells (16 px / stride 8), 3 classes; box channels 0..3 = ltrb 1 stride unit each."""
    out = np.ones((1, 4 + 3, 2, 2), np.float32)
    per_cell = {(0, 0): (0.9, 0.8, 0.1), (0, 1): (0.7, 0.1, 0.1), (1, 0): (0.95, 0.1, 0.1), (1, 1): (0.2, 0.3, 0.1)}
    for (y, x), probs in per_cell.items():
        out[0, 4:, y, x] = [logit(p) for p in probs]
    return out


def test_hand_worked_selection_keeps_one_anchor_twice():
    # k = 3. Stage 1 (max-class score): cell (1,0) 0.95, (0,0) 0.9, (0,1) 0.7; (1,1) 0.3 is out.
    # Stage 2 over their 9 pairs: (1,0)/a 0.95, (0,0)/a 0.9, (0,0)/b 0.8 -> (0,1)/a 0.7 is out, (0,0) is in twice.
    cand = runtime_decode([hand_case()], one2one_spec(3))
    np.testing.assert_allclose(cand.scores[0], [0.95, 0.9, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(cand.labels[0], [0, 0, 1])
    # cell (y=1, x=0): anchor (4, 12); cell (0, 0): anchor (4, 4); ltrb = 1 * stride 8
    np.testing.assert_allclose(cand.boxes[0], [[-4, 4, 12, 20], [-4, -4, 12, 12], [-4, -4, 12, 12]], atol=1e-5)


def test_k_larger_than_the_pairs_keeps_every_pair():
    cand = runtime_decode([hand_case()], one2one_spec(300))
    assert cand.scores.shape == (1, 4 * 3)  # min(300, min(300, 4 anchors) * 3 classes)
    assert np.all(np.diff(cand.scores[0]) <= 0)


@pytest.mark.parametrize("k", [1, 7, 50])
def test_runtime_equals_reference(k):
    torch.manual_seed(k)
    spec = one2one_spec(k, input_size=(64, 96), strides=(8, 16, 32), nc=5)
    outputs = [torch.randn(2, 4 + 5, 64 // s, 96 // s) * 3 for s in (8, 16, 32)]
    outputs[1][1, 4:, 0, 0] = outputs[0][1, 4:, 0, 0]  # equal scores on two anchors: ties go to the lower index
    rb, rs, rl = reference_decode(outputs, spec)
    cand = runtime_decode([o.numpy() for o in outputs], spec)
    assert cand.scores.shape == tuple(rs.shape) == (2, k)
    np.testing.assert_allclose(cand.boxes, rb.numpy(), atol=1e-4)
    np.testing.assert_allclose(cand.scores, rs.numpy(), atol=1e-6)
    np.testing.assert_array_equal(cand.labels, rl.numpy())


def test_one2one_topk_below_one_is_refused():
    with pytest.raises(SpecError, match="one2one_topk must be >= 1"):
        runtime_decode([hand_case()], one2one_spec(0))
