"""Scoring a torch model: reference decoder + NMS, then COCO mAP with pycocotools."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from edgekit.errors import InputError
from edgekit.models.base import DetectorModel
from edgekit.runtime.preprocess import load_image
from edgekit.spec import ModelSpec, PostprocessSpec

# ==============================================================================================
# Evaluation
# ==============================================================================================

def detect_images(model: DetectorModel, images: Sequence[np.ndarray], postprocess_spec: PostprocessSpec,
                  batch_size: int = 32) -> list[Any]:
    """Run a torch ``model`` (with ``.spec``) on uint8 RGB images -> one ``Detections`` per image.

    Preprocessing, decoding and NMS are the runtime's numpy code (``edgekit.runtime``): the
    same path every deployed backend takes, so a fixture's recorded mAP is what the runtime
    reproduces. (The reference NMS is a deliberately plain Python loop: too slow for scoring
    untrained models, whose thousands of low-score boxes all survive a 0.001 threshold.)
    """
    from edgekit.runtime.decode import decode
    from edgekit.runtime.detections import Detections
    from edgekit.runtime.nms import postprocess
    from edgekit.runtime.preprocess import boxes_to_original, preprocess

    spec: ModelSpec = model.spec
    was_training = model.training
    model.eval()
    results = []
    try:
        for start in range(0, len(images), batch_size):
            tensor, transforms = preprocess(list(images[start:start + batch_size]), spec)
            with torch.no_grad():
                outputs = model(torch.from_numpy(tensor))
            if isinstance(outputs, Tensor):
                outputs = (outputs,)
            candidates = decode([o.float().numpy() for o in outputs], spec)
            kept = postprocess(candidates.boxes, candidates.scores, candidates.labels,
                               conf_threshold=postprocess_spec.conf_threshold,
                               iou_threshold=postprocess_spec.iou_threshold,
                               class_agnostic=postprocess_spec.class_agnostic,
                               pre_nms_topk=postprocess_spec.pre_nms_topk,
                               max_detections=postprocess_spec.max_detections,
                               apply_nms=postprocess_spec.nms)
            results += [Detections(boxes_to_original(b, t), s, lab) for (b, s, lab), t in zip(kept, transforms)]
    finally:
        model.train(was_training)
    return results


def evaluate(model: DetectorModel, dataset: Any, *, batch_size: int = 32,
             images: Sequence[np.ndarray] | None = None) -> Any:
    """COCO mAP of a torch ``model`` (with ``.spec``) on ``dataset``: returns a ``MapResult``.

    The post-processing is ``edgekit validate``'s mAP protocol (``edgekit.validate.run.map_postprocess``:
    score 0.001, NMS IoU 0.6, up to 100 detections per image, NMS on/off and class-agnostic from
    ``model.spec``), taken from there so a fixture's recorded mAP and a later validation cannot
    drift apart. ``images`` (uint8 RGB, in ``dataset.items`` order) skips reading the files again.
    See :func:`detect_images`.
    """
    from edgekit.validate.coco_eval import evaluate_detections
    from edgekit.validate.run import map_postprocess

    post = map_postprocess(model.spec)
    items = list(dataset.items)
    if images is None:
        images = [load_image(dataset.image_path(item)) for item in items]
    elif len(images) != len(items):
        raise InputError(f"evaluate: {len(images)} images given for a dataset of {len(items)}")
    detections = detect_images(model, images, post, batch_size)
    return evaluate_detections(dataset, {item.image_id: d for item, d in zip(items, detections)})
