"""Detections: the one result type every backend returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Detections for one image.

    boxes: float32 [N, 4], xyxy in original-image pixels (clipped to the image).
    scores: float32 [N], sorted descending.
    labels: int64 [N], indices into the spec's class_names.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "boxes", np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4))
        object.__setattr__(self, "scores", np.asarray(self.scores, dtype=np.float32).reshape(-1))
        object.__setattr__(self, "labels", np.asarray(self.labels, dtype=np.int64).reshape(-1))
        n = len(self.boxes)
        if len(self.scores) != n or len(self.labels) != n:
            raise ValueError(f"Detections: boxes {n}, scores {len(self.scores)}, labels {len(self.labels)} differ in length")

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64))

    def to_coco(self, image_id: int | str, file_name: str | None = None,
                category_ids: list[int] | None = None) -> list[dict]:
        """COCO results entries: bbox is [x, y, w, h]; category_id maps label -> category_ids[label]."""
        out = []
        for (x1, y1, x2, y2), score, label in zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist()):
            entry = {
                "image_id": image_id,
                "category_id": int(category_ids[label]) if category_ids is not None else int(label),
                "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                "score": round(float(score), 6),
            }
            if file_name is not None:
                entry["file_name"] = file_name
            out.append(entry)
        return out
