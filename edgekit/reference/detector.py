"""The PyTorch reference detector: the oracle every backend is compared with.

It shares only image loading and resizing with the runtime (those are the same numpy code on
every path by design); the network runs in PyTorch and decoding and NMS are the reference's
own torch implementations, written independently of the numpy runtime.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from edgekit.reference.decode import decode as reference_decode
from edgekit.reference.nms import postprocess as reference_postprocess
from edgekit.runtime.detections import Detections
from edgekit.runtime.preprocess import ImageLike, boxes_to_original, load_image, preprocess
from edgekit.spec import ModelSpec, PostprocessSpec


class ReferenceDetector:
    """Same call interface as ``edgekit.runtime.Detector``, on a torch ``nn.Module``."""

    backend = "torch"

    def __init__(self, model: nn.Module, spec: ModelSpec, postprocess_spec: PostprocessSpec | None = None) -> None:
        self.model = model.eval()
        self.spec = spec
        self.postprocess_spec = postprocess_spec or spec.postprocess

    def detect(self, image: ImageLike, color_order: str = "RGB") -> Detections:
        return self.detect_batch([image], color_order=color_order)[0]

    __call__ = detect

    def detect_batch(self, images: Sequence[ImageLike], color_order: str = "RGB") -> list[Detections]:
        arrays = [load_image(image, color_order=color_order) for image in images]
        tensor, transforms = preprocess(arrays, self.spec)
        outputs = self.infer_tensor(tensor)
        return self.postprocess([torch.from_numpy(o) for o in outputs], transforms)

    def raw_outputs(self, images: Sequence[ImageLike], color_order: str = "RGB") -> list[np.ndarray]:
        arrays = [load_image(image, color_order=color_order) for image in images]
        tensor, _ = preprocess(arrays, self.spec)
        return self.infer_tensor(tensor)

    @torch.no_grad()
    def infer_tensor(self, tensor: np.ndarray) -> list[np.ndarray]:
        outputs = self.model(torch.from_numpy(np.ascontiguousarray(tensor, dtype=np.float32)))
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        return [o.float().numpy() for o in outputs]

    def postprocess(self, outputs: Sequence[torch.Tensor], transforms: Sequence) -> list[Detections]:
        boxes, scores, labels = reference_decode(list(outputs), self.spec)
        pp = self.postprocess_spec
        kept = reference_postprocess(boxes, scores, labels, conf_threshold=pp.conf_threshold,
                                     iou_threshold=pp.iou_threshold, class_agnostic=pp.class_agnostic,
                                     pre_nms_topk=pp.pre_nms_topk, max_detections=pp.max_detections,
                                     apply_nms=pp.nms)
        return [Detections(boxes_to_original(b.numpy().astype(np.float32), t), s.numpy(), lab.numpy())
                for (b, s, lab), t in zip(kept, transforms)]
