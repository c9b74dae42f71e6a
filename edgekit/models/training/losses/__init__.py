"""One loss per head kind of ``edgekit.spec`` (each module registers its class by ``kind``).

Importing this package registers every loss; :func:`make_loss` picks the one for a spec's head kind.
"""

from __future__ import annotations

from edgekit.models.training.losses.base import LOSSES, DetectionLoss, LossResult, make_loss
from edgekit.models.training.losses.centernet import CenterNetLoss
from edgekit.models.training.losses.dfl import DflLoss
from edgekit.models.training.losses.ssd import SsdLoss
from edgekit.models.training.losses.yolo_anchor import YoloAnchorLoss
from edgekit.models.training.losses.yolox import YoloxLoss

__all__ = [
    "LOSSES",
    "CenterNetLoss",
    "DetectionLoss",
    "DflLoss",
    "LossResult",
    "SsdLoss",
    "YoloAnchorLoss",
    "YoloxLoss",
    "make_loss",
]
