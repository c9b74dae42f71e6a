"""Training helpers: box geometry, augmentation, target assignment, losses, and a per-family
overfitting check. Hand-made cases with expected values worked out in the comments; the runtime
(numpy) decoders are the oracle for the box encodings the losses train towards."""

from __future__ import annotations

import math
from dataclasses import replace as replace_config

import numpy as np
import pytest
import torch

from edgekit.errors import SpecError
from edgekit.models import ModelConfig, build_model
from edgekit.models.training import (
    NO_AUGMENT,
    AugmentConfig,
    CenterNetLoss,
    DflLoss,
    SsdLoss,
    Targets,
    TrainConfig,
    TrainingSet,
    YoloAnchorLoss,
    YoloxLoss,
    aligned_iou,
    augment_sample,
    box_iou,
    distribution_focal_loss,
    gaussian_radius,
    make_loss,
    ssd_encode,
    train,
)
from edgekit.models.training.losses import yolox as yolox_loss_module
from edgekit.runtime.decode import decode as runtime_decode
from edgekit.runtime.decode import decode_centernet, ssd_priors
from edgekit.spec import HeadSpec, ModelSpec, ResizeSpec
from tests.helpers import load_tool

torch.set_num_threads(1)

NAMES = ("a", "b", "c")


def _spec(kind: str, params: dict, outputs: tuple[str, ...], size: tuple[int, int] = (160, 160),
          resize: str = "letterbox") -> ModelSpec:
    return ModelSpec(family="test", input_size=size, class_names=NAMES,
                     head=HeadSpec(kind=kind, output_names=outputs, params=params),
                     resize=ResizeSpec(mode=resize))


def _targets(*images: list[tuple[float, float, float, float, int]]) -> Targets:
    return Targets.from_lists([np.array([b[:4] for b in img], np.float32).reshape(-1, 4) for img in images],
                              [np.array([b[4] for b in img], np.int64) for img in images])


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------

def test_box_iou_hand_values():
    a = torch.tensor([[0.0, 0, 10, 10], [0, 0, 0, 5]])
    b = torch.tensor([[5.0, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]])
    iou = box_iou(a, b)
    # [0,10]x[0,10] vs [5,15]x[0,10]: inter 50, union 150.
    expected = torch.tensor([[50 / 150, 1.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(iou, expected, atol=1e-6, rtol=0)


def test_aligned_iou_variants_hand_values():
    a = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 2, 2]])
    b = torch.tensor([[5.0, 0, 15, 10], [0, 0, 10, 10], [4, 0, 6, 2]])
    torch.testing.assert_close(aligned_iou(a, b, "iou"), torch.tensor([1 / 3, 1.0, 0.0]), atol=1e-6, rtol=0)
    # GIoU: enclosing boxes 150, 100, 12; unions 150, 100, 8 -> penalties 0, 0, 4/12.
    torch.testing.assert_close(aligned_iou(a, b, "giou"), torch.tensor([1 / 3, 1.0, -1 / 3]), atol=1e-6, rtol=0)
    # CIoU, same aspect ratios (v = 0): IoU - rho^2 / c^2. Row 0: rho = 5, c^2 = 15^2 + 10^2.
    # Row 2: rho = 4, c^2 = 6^2 + 2^2.
    expected = torch.tensor([1 / 3 - 25 / 325, 1.0, 0.0 - 16 / 40])
    torch.testing.assert_close(aligned_iou(a, b, "ciou"), expected, atol=1e-6, rtol=0)


def test_ciou_aspect_penalty():
    # Same centre, 4x2 inside 4x4: IoU 0.5, rho 0, v = 4/pi^2 (atan(1) - atan(2))^2, alpha = v / (1 - 0.5 + v).
    a = torch.tensor([[0.0, 0, 4, 4]])
    b = torch.tensor([[0.0, 1, 4, 3]])
    v = 4 / math.pi ** 2 * (math.atan(2.0) - math.atan(1.0)) ** 2
    expected = 0.5 - v * v / (0.5 + v)
    assert float(aligned_iou(a, b, "ciou")) == pytest.approx(expected, abs=1e-6)


def test_targets_from_lists_pads_with_minus_one():
    t = _targets([(0, 0, 4, 4, 1), (1, 1, 5, 5, 2)], [])
    assert t.boxes.shape == (2, 2, 4) and t.labels.tolist() == [[1, 2], [-1, -1]]
    assert t.valid.tolist() == [[True, True], [False, False]]
    empty = _targets([], [])
    assert empty.labels.shape == (2, 1) and not empty.valid.any()


# ----------------------------------------------------------------------------------------------
# Augmentation and preprocessing: boxes must follow the pixels
# ----------------------------------------------------------------------------------------------

def _bright_extent(image: np.ndarray) -> np.ndarray:
    """xyxy pixel-edge extent of the pixels brighter than half (the oracle for a white box)."""
    ys, xs = np.nonzero(image[..., 0] > 127)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_augment_moves_boxes_with_pixels(seed):
    image = np.zeros((120, 160, 3), np.uint8)
    image[30:70, 50:90] = 255  # box [50, 30, 90, 70]
    boxes = np.array([[50, 30, 90, 70]], np.float32)
    aug = AugmentConfig(flip_prob=0.5, hsv_gains=(0, 0, 0), scale_range=(0.6, 1.6), translate=0.1, min_visible=0.0)
    out, out_boxes, labels = augment_sample(image, boxes, np.array([1]), aug, 0, np.random.default_rng(seed))
    assert out.shape == image.shape and labels.tolist() == [1]
    # Bilinear resampling blurs the edge by up to a pixel either way.
    np.testing.assert_allclose(out_boxes[0], _bright_extent(out), atol=1.0)


@pytest.mark.parametrize("mode", ["letterbox", "resize"])
def test_training_sample_boxes_match_runtime_preprocess(mode):
    class _Item:
        def __init__(self):
            self.boxes = np.array([[20, 10, 60, 40]], np.float32)
            self.labels = np.array([2])

    class _Data:
        items = [_Item()]

        @staticmethod
        def image_path(item):
            return image

    image = np.zeros((80, 120, 3), np.uint8)
    image[10:40, 20:60] = 255
    spec = _spec("ssd", {}, ("loc", "conf"), size=(64, 64), resize=mode)
    data = TrainingSet(_Data(), spec)
    resized, boxes, labels = data.sample(0, None, None)
    np.testing.assert_allclose(boxes[0], _bright_extent(resized), atol=1.0)
    batch = next(data.batches(4))
    assert batch.images.shape == (1, 3, 64, 64) and batch.targets.labels.tolist() == [[2]]


def test_no_augment_is_identity():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)
    boxes = np.array([[1, 2, 30, 20]], np.float32)
    out, out_boxes, _ = augment_sample(image, boxes, np.array([0]), NO_AUGMENT, 114, rng)
    np.testing.assert_array_equal(out, image)
    np.testing.assert_array_equal(out_boxes, boxes)


# ----------------------------------------------------------------------------------------------
# yolo_anchor: assignment by hand, encoding through the runtime decoder
# ----------------------------------------------------------------------------------------------

YOLO_ANCHOR_PARAMS = {"strides": [8, 16], "anchors": [[[8, 8], [40, 40]], [[16, 16], [64, 64]]]}


def _yolo_anchor_spec() -> ModelSpec:
    return _spec("yolo_anchor", YOLO_ANCHOR_PARAMS, ("p3", "p4"))


def test_yolo_anchor_assignment_hand_case():
    loss = YoloAnchorLoss(_yolo_anchor_spec())
    # An 8x8 box centred at (42, 30). Anchor ratios: 8 -> 1 and 16 -> 2 match; 40 -> 5, 64 -> 8 do not.
    # Stride 8 (grid 20x20): centre (5.25, 3.75) -> own cell (5, 3); x frac 0.25 < 0.5 -> left (4, 3);
    #   y frac 0.75 -> from the bottom 20 - 3.75 = 16.25, frac 0.25 -> lower neighbour (5, 4).
    # Stride 16 (grid 10x10): centre (2.625, 1.875) -> (2, 1); right (10 - 2.625 = 7.375) -> (3, 1);
    #   lower (10 - 1.875 = 8.125) -> (2, 2).
    matches = loss.assign([(20, 20), (10, 10)], _targets([(38, 26, 46, 34, 2)]))
    expected_cells = [{(5, 3), (4, 3), (5, 4)}, {(2, 1), (3, 1), (2, 2)}]
    expected_centre = [(5.25, 3.75), (2.625, 1.875)]
    expected_size = [(1.0, 1.0), (0.5, 0.5)]
    for m, cells, centre, size in zip(matches, expected_cells, expected_centre, expected_size):
        assert m.anchor.tolist() == [0, 0, 0] and m.image.tolist() == [0, 0, 0] and m.label.tolist() == [2] * 3
        assert set(zip(m.cell_x.tolist(), m.cell_y.tolist())) == cells
        # box = (centre - cell, size) in grid units.
        for cx, cy, (bx, by, bw, bh) in zip(m.cell_x.tolist(), m.cell_y.tolist(), m.box.tolist()):
            assert (bx + cx, by + cy) == pytest.approx(centre) and (bw, bh) == pytest.approx(size)


def test_yolo_anchor_assignment_at_border_has_no_outside_neighbour():
    loss = YoloAnchorLoss(_yolo_anchor_spec())
    # Centre (4, 4) at stride 8 is (0.5, 0.5): frac not < 0.5 and gxy not > 1 -> no left / top; from the far
    # side 19.5 -> frac 0.5 not < 0.5 -> no right / bottom: the centre cell only.
    matches = loss.assign([(20, 20), (10, 10)], _targets([(0, 0, 8, 8, 0)]))
    assert set(zip(matches[0].cell_x.tolist(), matches[0].cell_y.tolist())) == {(0, 0)}


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


def test_yolo_anchor_targets_decode_to_the_box_with_runtime_decoder():
    spec = _yolo_anchor_spec()
    loss = YoloAnchorLoss(spec)
    box = np.array([38.5, 21.0, 47.0, 35.0], np.float32)
    matches = loss.assign([(20, 20), (10, 10)], _targets([(*box.tolist(), 1)]))
    nc, na = len(NAMES), 2
    outputs = [np.full((1, na * (5 + nc), 20, 20), -20.0, np.float32),
               np.full((1, na * (5 + nc), 10, 10), -20.0, np.float32)]
    for level, m in enumerate(matches):
        stride = spec.head.params["strides"][level]
        view = outputs[level].reshape(1, na, 5 + nc, *outputs[level].shape[2:])
        for a, cx, cy, (bx, by, bw, bh), (aw, ah) in zip(m.anchor.tolist(), m.cell_x.tolist(), m.cell_y.tolist(),
                                                        m.box.tolist(), m.anchor_wh.tolist()):
            # Invert xy = 2 sig - 0.5 and wh = (2 sig)^2 * anchor (grid units).
            view[0, a, 0, cy, cx] = _logit(np.float64((bx + 0.5) / 2))
            view[0, a, 1, cy, cx] = _logit(np.float64((by + 0.5) / 2))
            view[0, a, 2, cy, cx] = _logit(np.float64(math.sqrt(bw / aw) / 2))
            view[0, a, 3, cy, cx] = _logit(np.float64(math.sqrt(bh / ah) / 2))
            view[0, a, 4, cy, cx] = 5.0
            view[0, a, 5 + 1, cy, cx] = 5.0
        assert len(m.anchor) > 0, f"level {level} (stride {stride}) should match"
    candidates = runtime_decode(outputs, spec)
    picked = candidates.scores[0] > 0.5
    assert picked.sum() == sum(len(m.anchor) for m in matches)
    np.testing.assert_allclose(candidates.boxes[0][picked], np.broadcast_to(box, (int(picked.sum()), 4)), atol=1e-3)
    assert set(candidates.labels[0][picked].tolist()) == {1}


# ----------------------------------------------------------------------------------------------
# yolox (SimOTA) and dfl (task-aligned)
# ----------------------------------------------------------------------------------------------

def _yolox_outputs_predicting(spec: ModelSpec, box: np.ndarray, cell: tuple[int, int]) -> list[torch.Tensor]:
    """Stride-8 grid of 20x20 plus a stride-16 grid; only ``cell`` (x, y) of level 0 predicts ``box``;
    every other point predicts a 1x1 px box at its own corner (IoU ~0 with anything)."""
    nc = len(NAMES)
    outs = [torch.zeros(1, 5 + nc, 20, 20), torch.zeros(1, 5 + nc, 10, 10)]
    for out in outs:
        out[:, 2:4] = math.log(1.0 / 8)  # 1 px at stride 8 (0.5 px at 16)
    cx, cy = float(box[0] + box[2]) / 2 / 8, float(box[1] + box[3]) / 2 / 8
    outs[0][0, 0, cell[1], cell[0]] = cx - cell[0]
    outs[0][0, 1, cell[1], cell[0]] = cy - cell[1]
    outs[0][0, 2, cell[1], cell[0]] = math.log(float(box[2] - box[0]) / 8)
    outs[0][0, 3, cell[1], cell[0]] = math.log(float(box[3] - box[1]) / 8)
    return outs


def test_yolox_simota_picks_the_one_point_that_predicts_the_box():
    spec = _spec("yolox", {"strides": [8, 16]}, ("p3", "p4"))
    loss = YoloxLoss(spec)
    box = np.array([36.0, 20.0, 60.0, 44.0], np.float32)  # centre (48, 32): cell (5, 3) at stride 8 (+0.5 -> 44, 28)
    outs = _yolox_outputs_predicting(spec, box, (5, 3))
    pred, raw, points, strides = loss.decode(outs)
    targets = _targets([(*box.tolist(), 2)])
    a = loss.assign(pred, raw[..., 5:], raw[..., 4:5], points, strides, targets)
    # The top-10 IoUs sum to ~1 (one perfect prediction) -> dynamic k = 1 -> exactly that point.
    assert a.fg.sum() == 1 and int(a.fg[0].nonzero()) == 3 * 20 + 5
    assert float(a.score[0, 3 * 20 + 5]) == pytest.approx(1.0, abs=1e-5)


def test_yolox_simota_never_assigns_outside_the_centre_region():
    spec = _spec("yolox", {"strides": [8, 16]}, ("p3", "p4"))
    loss = YoloxLoss(spec)
    torch.manual_seed(0)
    outs = [torch.randn(2, 5 + len(NAMES), 20, 20), torch.randn(2, 5 + len(NAMES), 10, 10)]
    targets = _targets([(10, 10, 40, 30, 0), (100, 100, 150, 120, 1)], [(60, 60, 70, 90, 2)])
    pred, raw, points, strides = loss.decode(outs)
    a = loss.assign(pred, raw[..., 5:], raw[..., 4:5], points, strides, targets)
    for b in range(2):
        for index in a.fg[b].nonzero().flatten().tolist():
            gt = targets.boxes[b, a.gt_index[b, index]]
            px, py = points[index].tolist()
            r = 2.5 * float(strides[index])
            inside = gt[0] < px < gt[2] and gt[1] < py < gt[3]
            near = abs(px - float(gt[0] + gt[2]) / 2) < r and abs(py - float(gt[1] + gt[3]) / 2) < r
            assert inside or near
            assert targets.labels[b, a.gt_index[b, index]] >= 0
    assert a.fg.sum() > 0


def test_yolox_task_aligned_option_assigns_the_predicting_point_with_its_iou(monkeypatch):
    spec = _spec("yolox", {"strides": [8, 16]}, ("p3", "p4"))
    simota, aligned = YoloxLoss(spec), YoloxLoss(spec, assigner="task_aligned", topk_iou=4)
    box = np.array([36.0, 20.0, 60.0, 44.0], np.float32)
    outs = _yolox_outputs_predicting(spec, box, (5, 3))
    targets = _targets([(*box.tolist(), 2)])
    # Same outputs, same targets: the loss must differ only through the assignment.
    assert float(simota(outs, targets).total) != pytest.approx(float(aligned(outs, targets).total), rel=1e-3)
    # Through the loss's own path: the predicting point is a positive whose class target is its IoU
    # (1.0: the best point of its box); at most topk positives, all in the 2.5-stride centre region.
    seen = {}
    original = yolox_loss_module.task_aligned_assign

    def spy(*args, **kwargs):
        seen["assignment"] = original(*args, **kwargs)
        return seen["assignment"]

    monkeypatch.setattr(yolox_loss_module, "task_aligned_assign", spy)
    aligned(outs, targets)
    a = seen["assignment"]
    assert bool(a.fg[0, 3 * 20 + 5]) and 1 <= int(a.fg.sum()) <= 4
    assert float(a.score[0, 3 * 20 + 5]) == pytest.approx(1.0, abs=1e-5)
    _, _, points, strides = aligned.decode(outs)
    for index in a.fg[0].nonzero().flatten().tolist():
        px, py = points[index].tolist()
        r = 2.5 * float(strides[index])
        assert abs(px - 48.0) < r and abs(py - 32.0) < r


def test_loss_options_are_checked_by_name():
    spec = _spec("yolox", {"strides": [8, 16]}, ("p3", "p4"))
    with pytest.raises(SpecError, match="assigner must be one of simota, task_aligned, got 'tal'"):
        make_loss(spec, assigner="tal")
    with pytest.raises(SpecError, match="YoloxLoss has no option 'box_gain'; options: assigner, center_radius"):
        make_loss(spec, box_gain=2.0)


def _dfl_spec() -> ModelSpec:
    return _spec("dfl", {"strides": [8, 16], "reg_max": 8}, ("p3", "p4"))


def test_task_aligned_assigner_candidates_and_normalised_scores():
    spec = _dfl_spec()
    loss = DflLoss(spec, topk=4)
    torch.manual_seed(1)
    nc = len(NAMES)
    outs = [torch.randn(1, 4 * 8 + nc, 20, 20), torch.randn(1, 4 * 8 + nc, 10, 10)]
    targets = _targets([(30, 30, 70, 62, 1), (100, 20, 108, 28, 0)])
    pred, bins, cls, points, strides = loss.decode(outs)
    a = loss.assign(pred, cls, points, strides, targets)
    iou = box_iou(targets.boxes, pred)[0]
    for g in range(2):
        mine = (a.fg[0] & (a.gt_index[0] == g)).nonzero().flatten()
        assert 1 <= len(mine) <= 4
        gt = targets.boxes[0, g]
        for index in mine.tolist():
            px, py = points[index].tolist()
            s = float(strides[index])
            assert (gt[0] < px < gt[2] and gt[1] < py < gt[3]) or \
                (abs(px - float(gt[0] + gt[2]) / 2) < s and abs(py - float(gt[1] + gt[3]) / 2) < s)
        # The best-aligned point of a box gets that box's best IoU (over its positives) as its score.
        best_iou = float(iou[g, mine].max())
        assert float(a.score[0, mine].max()) == pytest.approx(best_iou, rel=1e-4, abs=1e-6)
    assert (a.score[0][~a.fg[0]] == 0).all() and (a.score[0][a.fg[0]] > 0).all()


def test_dfl_loss_is_minimal_at_the_two_bin_distribution():
    target = torch.tensor([2.3, 0.0, 6.98])
    # The distribution with mass (r - t) on floor(t) and (t - l) on floor(t) + 1 has expectation t.
    probs = torch.zeros(3, 8)
    left = target.floor().long()
    probs[torch.arange(3), left] = (left + 1).float() - target
    probs[torch.arange(3), left + 1] = target - left.float()
    logits = torch.log(probs.clamp(min=1e-12))
    expectation = (logits.softmax(-1) * torch.arange(8.0)).sum(-1)
    torch.testing.assert_close(expectation, target, atol=1e-5, rtol=0)
    best = distribution_focal_loss(logits, target)
    for seed in range(5):
        noisy = logits + 0.1 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(seed))
        assert (distribution_focal_loss(noisy, target) >= best - 1e-6).all()


# ----------------------------------------------------------------------------------------------
# centernet
# ----------------------------------------------------------------------------------------------

def test_centernet_targets_hand_case():
    spec = _spec("centernet", {"stride": 4, "topk": 100}, ("heatmap", "wh", "offset"), size=(64, 64))
    loss = CenterNetLoss(spec)
    # Box [10, 6, 30, 22] -> /4: [2.5, 1.5, 7.5, 5.5], centre (5, 3.5) -> cell (5, 3), offset (0, 0.5), size (5, 4).
    t = loss.build_targets((16, 16), _targets([(10, 6, 30, 22, 2)]))
    assert t.mask.sum() == 1 and bool(t.mask[0, 3, 5])
    assert float(t.heatmap[0, 2, 3, 5]) == 1.0 and t.heatmap[0, :2].abs().sum() == 0
    assert t.size[0, :, 3, 5].tolist() == [5.0, 4.0]
    assert t.offset[0, :, 3, 5].tolist() == [0.0, 0.5]
    radius = max(0, int(gaussian_radius(4.0, 5.0, 0.7)))
    sigma = (2 * radius + 1) / 6
    assert radius >= 1
    assert float(t.heatmap[0, 2, 3, 6]) == pytest.approx(math.exp(-1 / (2 * sigma ** 2)), rel=1e-6)
    assert float(t.heatmap[0, 2, 3, 5 + radius + 1]) == 0.0  # outside the Gaussian's window


def test_centernet_giou_term_is_zero_for_the_exact_box_and_scale_free():
    spec = _spec("centernet", {"stride": 4, "topk": 100}, ("heatmap", "wh", "offset"), size=(64, 64))
    loss = CenterNetLoss(spec, giou_gain=2.0)
    heat = torch.full((1, 3, 16, 16), -5.0)

    def giou_part(box: tuple[float, float, float, float], scale: float) -> float:
        targets = _targets([(*box, 2)])
        t = loss.build_targets((16, 16), targets)
        size = t.size.clone()
        size[t.mask[:, None].expand(-1, 2, -1, -1)] *= scale
        return loss([heat, size, t.offset.clone()], targets).parts["giou"]

    assert giou_part((10, 6, 30, 22), 1.0) == pytest.approx(0.0, abs=1e-6)
    # Twice the size around the same centre: IoU = GIoU = 1/4 -> 2 * (1 - 1/4) = 1.5, for a small box
    # and for one 2.5x larger alike (the L1 size term grows with the box, this one does not).
    assert giou_part((10, 6, 30, 22), 2.0) == pytest.approx(1.5, rel=1e-5)
    assert giou_part((4, 4, 54, 44), 2.0) == pytest.approx(1.5, rel=1e-5)
    assert "giou" not in CenterNetLoss(spec, giou_gain=0.0)([heat, heat[:, :2], heat[:, :2]],
                                                            _targets([(10, 6, 30, 22, 2)])).parts


def test_centernet_dense_regression_every_weighted_cell_decodes_the_box():
    """Oracle: the runtime decoder. A heat peak put on any cell of a box's Gaussian window (not only
    the centre) must decode, from the dense size/offset targets, to exactly that box."""
    spec = _spec("centernet", {"stride": 4, "topk": 100}, ("heatmap", "wh", "offset"), size=(64, 64))
    box = (10.0, 6.0, 42.0, 30.0)
    t = CenterNetLoss(spec, dense_regression=True).build_targets((16, 16), _targets([(*box, 2)]))
    cells = list(zip(*np.nonzero(t.weight[0].numpy())))
    assert len(cells) > 1 and t.mask.sum() == 1  # several regression cells, one heat-map centre
    assert float(t.weight.sum()) == pytest.approx(1.0, rel=1e-6)
    for row, col in cells:
        heat = np.full((1, 3, 16, 16), -10.0, np.float32)
        heat[0, 2, row, col] = 10.0
        decoded = decode_centernet([heat, t.size.numpy(), t.offset.numpy()], spec)
        np.testing.assert_allclose(decoded.boxes[0, 0], box, atol=1e-4)
    # Exact targets cost nothing in the regression terms; without the option only the centre regresses.
    heat = torch.full((1, 3, 16, 16), -5.0)
    parts = CenterNetLoss(spec, dense_regression=True, giou_gain=1.0)([heat, t.size, t.offset],
                                                                       _targets([(*box, 2)])).parts
    assert parts["size"] == parts["offset"] == pytest.approx(0.0, abs=1e-6) and parts["giou"] < 1e-5
    sparse = CenterNetLoss(spec).build_targets((16, 16), _targets([(*box, 2)]))
    assert int((sparse.weight > 0).sum()) == 1 and torch.equal(sparse.weight > 0, sparse.mask)


def test_centernet_dense_regression_smaller_box_keeps_shared_cells():
    spec = _spec("centernet", {"stride": 4, "topk": 100}, ("heatmap", "wh", "offset"), size=(64, 64))
    large, small = (4.0, 4.0, 60.0, 60.0), (26.0, 26.0, 38.0, 38.0)  # same centre (32, 32) -> cell (8, 8)
    for order in ([large, small], [small, large]):  # input order must not matter
        t = CenterNetLoss(spec, dense_regression=True).build_targets((16, 16), _targets([(*b, 0) for b in order]))
        assert t.size[0, :, 8, 8].tolist() == [3.0, 3.0]  # the small box's size in grid units


def test_gaussian_radius_matches_centernet_formula():
    # Independent transcription of CenterNet's gaussian_radius for (h, w) = (10, 20), overlap 0.7.
    h, w, o = 10.0, 20.0, 0.7
    r1 = ((h + w) + math.sqrt((h + w) ** 2 - 4 * w * h * (1 - o) / (1 + o))) / 2
    r2 = (2 * (h + w) + math.sqrt((2 * (h + w)) ** 2 - 16 * (1 - o) * w * h)) / 2
    r3 = (-2 * o * (h + w) + math.sqrt((2 * o * (h + w)) ** 2 - 16 * o * (o - 1) * w * h)) / 2
    assert gaussian_radius(h, w, o) == pytest.approx(min(r1, r2, r3))


# ----------------------------------------------------------------------------------------------
# ssd
# ----------------------------------------------------------------------------------------------

SSD_PARAMS = {"feature_maps": [[8, 8], [4, 4]], "steps": [8, 16], "min_sizes": [12, 30], "max_sizes": [30, 60],
              "aspect_ratios": [[2], [2]], "variances": [0.1, 0.2], "clip": True}


def test_ssd_matching_and_encoding_round_trip_through_runtime_decoder():
    spec = _spec("ssd", SSD_PARAMS, ("loc", "conf"), size=(64, 64), resize="resize")
    loss = SsdLoss(spec)
    priors = ssd_priors(SSD_PARAMS, (64, 64))
    # A box exactly on prior 0 (cell (0, 0) min-size square: centre (4, 4), 12 px) and a small box that
    # overlaps no prior by 0.5 but still gets its best prior.
    boxes = [(-2.0, -2.0, 10.0, 10.0, 1), (40.0, 41.0, 45.0, 47.0, 2)]
    targets = _targets(boxes)
    m = loss.assign(targets)
    assert int(m.labels[0, 0]) == 2  # class 1 + 1 (0 is background)
    gt = np.array([b[:4] for b in boxes], np.float32)
    prior_xyxy = np.concatenate([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], 1) * 64
    small_best = int(box_iou(torch.from_numpy(gt[1:]), torch.from_numpy(prior_xyxy)).argmax())
    assert int(m.labels[0, small_best]) == 3 and int(m.gt_index[0, small_best]) == 1
    positive = m.labels[0] > 0
    assert positive.sum() >= 2
    # Encode every positive against its box, then decode with the runtime: the boxes come back.
    matched = targets.boxes[0][m.gt_index[0]] / 64
    loc = ssd_encode(matched, torch.from_numpy(priors), (0.1, 0.2))
    conf = np.zeros((1, len(priors), 1 + len(NAMES)), np.float32)
    candidates = runtime_decode([loc[None].numpy(), conf], spec)
    np.testing.assert_allclose(candidates.boxes[0][positive.numpy()], matched[positive].numpy() * 64, atol=1e-3)


def test_ssd_hard_negative_mining_ratio():
    spec = _spec("ssd", SSD_PARAMS, ("loc", "conf"), size=(64, 64), resize="resize")
    loss = SsdLoss(spec, neg_pos_ratio=3)
    p = len(ssd_priors(SSD_PARAMS, (64, 64)))
    targets = _targets([(0.0, 0.0, 20.0, 20.0, 0)])
    positive = loss.assign(targets).labels[0] > 0
    num_pos = int(positive.sum())
    assert num_pos >= 1 and not positive[-3:].any()
    # All logits 0 -> every prior's CE is log 4, except the last three (background priors far from the
    # box), whose class-1 logit 8 makes their background CE log(3 + e^8). Mining keeps 3 * num_pos
    # negatives, the hardest first: those three, then 3 * num_pos - 3 ordinary ones.
    conf = torch.zeros(1, p, 4)
    conf[0, -3:, 1] = 8.0
    result = loss([torch.zeros(1, p, 4), conf], targets)
    hard = math.log(3 + math.exp(8))
    expected = (num_pos * math.log(4) + 3 * hard + (3 * num_pos - 3) * math.log(4)) / num_pos
    assert result.parts["conf"] == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------------------------
# Every family: the loss goes down when overfitting one small batch
# ----------------------------------------------------------------------------------------------

def _toy_batch(size: int = 64) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    images, boxes, labels = [], [], []
    for _ in range(2):
        image = np.full((size, size, 3), 40, np.uint8)
        b, lab = [], []
        for k in range(3):
            w, h = rng.uniform(8, 28, 2)
            x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
            colour = (200, 60, 60) if k == 0 else (60, 200, 60) if k == 1 else (60, 60, 200)
            image[int(y):int(y + h), int(x):int(x + w)] = colour
            b.append([int(x), int(y), int(x + w), int(y + h)])
            lab.append(k % 3)
        images.append(image)
        boxes.append(np.array(b, np.float32))
        labels.append(np.array(lab, np.int64))
    return images, boxes, labels


# torch 2.13's CPU backward corrupts the heap on yolov6 in channels_last (tools/train_fixtures.py
# trains it contiguous for the same reason); the other families train channels_last.
FAMILY_CHANNELS_LAST = {"yolov6": False}


@pytest.mark.parametrize(("family", "loss_options"), [
    ("yolov8", {}), ("yolox", {}), ("yolox", {"assigner": "task_aligned"}), ("yolov5", {}), ("yolov6", {}),
    ("centernet", {}), ("ssd", {}),
], ids=["yolov8", "yolox", "yolox-task_aligned", "yolov5", "yolov6", "centernet", "ssd"])
def test_loss_decreases_when_overfitting_one_batch(family, loss_options):
    torch.manual_seed(0)
    model = build_model(ModelConfig(family, num_classes=3, input_size=(64, 64), width=0.125, depth=0.33), NAMES)
    images, boxes, labels = _toy_batch()

    class _Item:
        def __init__(self, i):
            self.index, self.boxes, self.labels = i, boxes[i], labels[i]

    class _Data:
        items = [_Item(0), _Item(1)]

        @staticmethod
        def image_path(item):
            return images[item.index]

    data = TrainingSet(_Data(), model.spec)
    batch = next(data.batches(2))
    loss_fn = make_loss(model.spec, **loss_options)
    model.train()
    with torch.no_grad():
        first = float(loss_fn(model(batch.images), batch.targets).total)
    result = train(model, data, TrainConfig(epochs=20, batch_size=2, learning_rate=1e-2, warmup_iterations=1,
                                            augment=NO_AUGMENT, num_threads=1, progress=False, ema_decay=0.0,
                                            channels_last=FAMILY_CHANNELS_LAST.get(family, True)),
                   loss_fn=loss_fn)
    last = result.history[-1]["loss"]
    # Measured last / first loss after 20 steps: yolov8 0.16, yolov6 0.27, yolov5 0.49, yolox 0.51
    # (task-aligned 0.42), centernet 0.10, ssd 0.01. A wrong sign, a detached target or a broken
    # assigner stays near 1.
    assert math.isfinite(last) and last < 0.8 * first, f"{family}: loss {first:.3f} -> {last:.3f}"
    assert result.iterations == 20


class _Interrupted(Exception):
    pass


def test_resume_continues_exactly_where_training_stopped(tmp_path):
    images, boxes, labels = _toy_batch()

    class _Item:
        def __init__(self, i):
            self.index, self.boxes, self.labels = i, boxes[i], labels[i]

    class _Data:
        items = [_Item(0), _Item(1)]

        @staticmethod
        def image_path(item):
            return images[item.index]

    config = TrainConfig(epochs=3, batch_size=1, learning_rate=3e-3, warmup_iterations=1, num_threads=1,
                         progress=False, ema_decay=0.9, ema_ramp=2.0)

    def fresh_model():
        torch.manual_seed(0)
        return build_model(ModelConfig("centernet", num_classes=3, input_size=(64, 64), width=0.125), NAMES)

    model = fresh_model()
    straight = train(model, TrainingSet(_Data(), model.spec), config)

    def stop_after_first(epoch, ema_model, losses):
        if epoch == 1:
            raise _Interrupted

    state = tmp_path / "state.pt"
    model = fresh_model()
    with pytest.raises(_Interrupted):
        train(model, TrainingSet(_Data(), model.spec), config, on_epoch_end=stop_after_first, resume_path=state)
    assert state.is_file()
    model = fresh_model()  # a new process would start from fresh weights too
    resumed = train(model, TrainingSet(_Data(), model.spec), config, resume_path=state)
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in straight.history], rel=1e-5)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    other = replace_config(config, epochs=4)
    with pytest.raises(Exception, match="different training run"):
        train(fresh_model(), TrainingSet(_Data(), model.spec), other, resume_path=state)


def test_train_fixtures_loss_option_parses_numbers_and_refuses_malformed_text(capsys, monkeypatch):
    train_fixtures = load_tool("train_fixtures", monkeypatch)
    assert train_fixtures.loss_option("giou_gain=2") == ("giou_gain", 2)
    assert train_fixtures.loss_option("obj_gain=4.0") == ("obj_gain", 4.0)
    assert train_fixtures.loss_option("assigner=task_aligned") == ("assigner", "task_aligned")
    with pytest.raises(SystemExit) as exit_info:
        train_fixtures.main(["--families", "yolox", "--loss-option", "task_aligned"])
    assert exit_info.value.code == 2
    assert "expected NAME=VALUE (e.g. assigner=task_aligned), got 'task_aligned'" in capsys.readouterr().err
