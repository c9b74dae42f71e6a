"""Drawing detections on images (PIL only), for `edgekit detect --save-dir` and reports."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from edgekit.runtime.detections import Detections
from edgekit.runtime.preprocess import ImageLike, load_image


def class_color(label: int) -> tuple[int, int, int]:
    """A stable, well-separated colour per class (golden-ratio hue steps)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: ImageLike, detections: Detections, class_names: Sequence[str],
                    color_order: str = "RGB") -> Image.Image:
    """The image (RGB) with one labelled rectangle per detection."""
    canvas = Image.fromarray(np.ascontiguousarray(load_image(image, color_order=color_order)))
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(min(canvas.size) / 200))
    for (x1, y1, x2, y2), score, label in zip(detections.boxes.tolist(), detections.scores.tolist(),
                                              detections.labels.tolist()):
        color = class_color(int(label))
        draw.rectangle([x1, y1, x2, y2], outline=color, width=width)
        name = class_names[int(label)] if 0 <= int(label) < len(class_names) else str(label)
        text = f"{name} {score:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text)
        draw.rectangle([x1, y1 - (bottom - top) - 2, x1 + (right - left) + 4, y1], fill=color)
        draw.text((x1 + 2, y1 - (bottom - top) - 2), text, fill=(0, 0, 0))
    return canvas
