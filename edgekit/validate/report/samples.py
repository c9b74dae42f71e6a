"""``samples/``: the images where the compared runs disagree most with the reference, side by side."""


from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.runtime.detections import Detections
from edgekit.tolerances import AGREEMENT_IOU
from edgekit.validate.datasets import Dataset
from edgekit.validate.matching import match_image
from edgekit.validate.report.data import Sample, is_int8, other_runs
from edgekit.validate.run import ModelRun, ValidationReport, above

#: Samples: boxes match at this IoU (as in ``agreement``); panels are scaled to this longest side
#: so a 160 px synthetic image and a 4000 px photo both give readable boxes and labels.
SAMPLE_IOU = AGREEMENT_IOU
PANEL_SIZE = 480
TITLE_HEIGHT = 26
PANEL_GAP = 6

# --- sample images -----------------------------------------------------------------------------


def _unmatched(candidate: Detections, reference: Detections) -> int:
    """Boxes of either side without a same-class partner at IoU >= 0.5 (a class flip counts on both sides)."""
    # The one matching rule (edgekit.validate.matching), as agreement() uses it.
    matches = match_image(candidate, reference, SAMPLE_IOU).matches
    return len(candidate) + len(reference) - 2 * len(matches)


def _compared_runs(report: ValidationReport) -> list[ModelRun]:
    """The int8 runs, or else the one run that agrees least with the reference (lowest precision + recall)."""
    others = other_runs(report)
    int8 = [r for r in others if is_int8(r)]
    if int8:
        return int8
    scored = [(r.agreement.precision + r.agreement.recall, r.name, r) for r in others if r.agreement is not None]
    if not scored:
        return others[:1]
    return [min(scored, key=lambda item: item[:2])[2]]


def write_samples(folder: Path, report: ValidationReport, dataset: Dataset, conf: float,
                   count: int) -> list[Sample]:
    compared = _compared_runs(report)
    if not compared or count == 0:
        return []
    empty = Detections.empty()
    views = {run.name: above(run.detections, conf) for run in (report.run(report.reference), *compared)}
    ref_view = views[report.reference]
    scored = []
    for order, item in enumerate(dataset.items):
        ref = ref_view.get(item.image_id, empty)
        unmatched = {run.name: _unmatched(views[run.name].get(item.image_id, empty), ref) for run in compared}
        # Most disagreement first; ties keep the dataset order so the choice is deterministic.
        scored.append((-sum(unmatched.values()), order, item, unmatched))
    scored.sort(key=lambda s: (s[0], s[1]))
    # Images where everything agrees teach nothing; when no image disagrees, one still shows what
    # the boxes look like.
    chosen = [s for s in scored if s[0] < 0][:count] or scored[:1]

    (folder / "samples").mkdir()
    samples = []
    for rank, (_, _, item, unmatched) in enumerate(chosen, start=1):
        panels = [(f"reference {report.reference}", ref_view.get(item.image_id, empty))]
        panels += [(f"{run.name}: {unmatched[run.name]} unmatched", views[run.name].get(item.image_id, empty))
                   for run in compared]
        image = _side_by_side(dataset, item, panels, conf)
        relative = f"samples/{rank:02d}_{Path(item.file_name).stem}.jpg"
        image.save(folder / relative, quality=90)
        samples.append(Sample(relative, int(item.image_id), item.file_name, unmatched))
    return samples


def _side_by_side(dataset: Dataset, item: Any, panels: list[tuple[str, Detections]], conf: float):
    """One row of panels (the image with that run's boxes), each under its title, and a header line."""
    from PIL import Image, ImageDraw, ImageFont

    from edgekit.runtime.draw import draw_detections
    from edgekit.runtime.preprocess import load_image

    original = Image.fromarray(load_image(dataset.image_path(item)))
    scale = PANEL_SIZE / max(original.size)
    size = (max(1, round(original.width * scale)), max(1, round(original.height * scale)))
    resized = np.asarray(original.resize(size, Image.Resampling.BILINEAR))
    font = ImageFont.load_default(size=14)
    gap = PANEL_GAP
    width = len(panels) * size[0] + (len(panels) - 1) * gap
    canvas = Image.new("RGB", (width, size[1] + 2 * TITLE_HEIGHT), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 5), f"{item.file_name} (id {item.image_id}): boxes with score > {conf:g}", fill="black", font=font)
    for index, (title, detections) in enumerate(panels):
        scaled = Detections(detections.boxes * scale, detections.scores, detections.labels)
        left = index * (size[0] + gap)
        draw.text((left + 4, TITLE_HEIGHT + 5), f"{title} ({len(detections)} boxes)", fill="black", font=font)
        canvas.paste(draw_detections(resized, scaled, dataset.class_names), (left, 2 * TITLE_HEIGHT))
    return canvas
