"""Training helpers for the built-in fixture detectors (torch, CPU, small data).

What is here, and why it is shaped this way:

- **Data** (:class:`TrainingSet`): images of a :class:`~edgekit.validate.datasets.Dataset` held in
  memory as uint8 RGB, augmented in the original image's pixels (HSV jitter, random scale and
  translation, horizontal flip), then resized with the *runtime's own* ``letterbox`` /
  ``plain_resize`` and normalised with its ``to_tensor``: training and deployment preprocess
  identically, so nothing drifts between the two. Ground truth travels as :class:`Targets`
  (xyxy boxes in network-input pixels, padded per batch).
- **Losses** (:func:`make_loss`): one target assigner + loss per head kind of ``edgekit.spec``:

  ========== ====================================================================================
  kind       assignment and loss
  ========== ====================================================================================
  yolo_anchor YOLOv5: anchors whose w/h ratio to the box is < 4, in the box centre's cell plus the
             two nearest neighbour cells; CIoU box loss, BCE objectness (target = CIoU), BCE class.
  yolox      SimOTA: candidates in the box or within 2.5 strides of its centre, cost =
             class BCE + 3 * -log IoU, dynamic k = sum of the 10 best IoUs; GIoU loss, BCE
             objectness, BCE class with target IoU. Option ``assigner="task_aligned"``: the
             dfl head's assigner on sig(cls) * sig(obj) instead of SimOTA.
  dfl        Task-aligned assigner (YOLOv8 / v6): metric = score^0.5 * IoU^6 over anchor points
             in the box (or within one stride of its centre), top 10 per box; BCE class with the
             normalised metric as soft target, CIoU box loss and distribution focal loss (DFL).
  centernet  Gaussian heat map (CornerNet radius at IoU 0.7), penalty-reduced focal loss; L1 on
             size and sub-cell offset at the centre cell (option: GIoU of the box it decodes to).
  ssd        Priors matched by IoU >= 0.5 plus the best prior of every box; smooth-L1 on the
             variance-encoded offsets; softmax cross-entropy with 3:1 hard negative mining.
  ========== ====================================================================================

- **Loop** (:func:`train`): AdamW, linear warm-up then cosine decay, gradient clipping, an
  exponential moving average (EMA) of the weights (which is what gets evaluated and saved),
  seeded (``torch.manual_seed`` + a numpy ``Generator``), ``torch.set_num_threads`` configurable,
  a tqdm bar per epoch showing the loss parts (on a terminal only: edgekit.progress).
- **Scoring** (:func:`evaluate`): the torch model through the reference decoder + NMS
  (:class:`~edgekit.reference.detector.ReferenceDetector`), then COCO mAP with pycocotools.

Boxes are xyxy float32 everywhere; "input pixels" means network-input pixel-edge coordinates
(see ``edgekit.runtime.preprocess``).

Modules: ``data`` (Targets, augmentation, TrainingSet), ``boxes`` (IoU variants), ``losses/`` (one module per
head kind, plus ``assign`` for the shared grid assignment), ``loop`` (train, EMA), ``evaluate``.
"""

from __future__ import annotations

from edgekit.models.training.boxes import aligned_iou, box_iou
from edgekit.models.training.data import NO_AUGMENT, AugmentConfig, Batch, Targets, TrainingSet, augment_sample
from edgekit.models.training.evaluate import detect_images, evaluate
from edgekit.models.training.loop import ModelEMA, TrainConfig, TrainResult, seed_everything, train
from edgekit.models.training.losses import (
    LOSSES,
    CenterNetLoss,
    DetectionLoss,
    DflLoss,
    LossResult,
    SsdLoss,
    YoloAnchorLoss,
    YoloxLoss,
    make_loss,
)
from edgekit.models.training.losses.assign import task_aligned_assign
from edgekit.models.training.losses.centernet import gaussian_radius
from edgekit.models.training.losses.dfl import distribution_focal_loss
from edgekit.models.training.losses.ssd import ssd_encode

__all__ = [
    "LOSSES",
    "NO_AUGMENT",
    "AugmentConfig",
    "Batch",
    "CenterNetLoss",
    "DetectionLoss",
    "DflLoss",
    "LossResult",
    "ModelEMA",
    "SsdLoss",
    "Targets",
    "TrainConfig",
    "TrainResult",
    "TrainingSet",
    "YoloAnchorLoss",
    "YoloxLoss",
    "aligned_iou",
    "augment_sample",
    "box_iou",
    "detect_images",
    "distribution_focal_loss",
    "evaluate",
    "gaussian_radius",
    "make_loss",
    "seed_everything",
    "ssd_encode",
    "task_aligned_assign",
    "train",
]
