"""Seeded synthetic detection dataset: coloured shapes on cluttered backgrounds.

Used to train and validate the small fixture detectors (2-core CPU, so images are small:
160x160 by default) and to exercise the COCO / YOLO dataset readers and the mAP code.

    python tools/synth.py --out data/synth/val --split val --seed 0 [--num-images N] [--size 160]

Writes, in one folder, both layouts of the same annotations:

    DIR/images/<split>_000001.jpg          JPEG, quality 95
    DIR/annotations/instances.json         COCO: images, annotations (bbox [x, y, w, h]), categories 1..6
    DIR/labels/<split>_000001.txt          YOLO: "class cx cy w h", class 0..5, normalised to [0, 1]
    DIR/classes.txt                        the class names, one a line, in class-index order

Six classes, in this order: circle, square, triangle, star, ring, cross. What makes it not trivial:
object sizes from ~6 px to ~90 px (log-uniform, so most objects are small); look-alike pairs
(circle vs ring, square vs a thick cross) that only differ in a few pixels when tiny; random
colour (HSV) with solid, striped or noisy texture; rectangles of random aspect; rotated
triangles, stars and crosses; backgrounds that are gradients, smooth colour noise or flat, with
distractors that are not objects (lines, soft irregular blobs, ring-like arcs); overlapping
objects. The ground-truth box is the full (amodal) extent of the object even where a later
object covers part of it; an object is never placed so that an earlier one ends up more than
60 % covered (it is moved or left out instead), so every labelled object is at least 40 % visible
and nothing unlabelled but the distractors is drawn.

Determinism: image ``i`` of split ``s`` with seed ``S`` is drawn from
``numpy.random.default_rng([S, crc32(s), i])`` alone, so the output is a pure function of
(seed, split, image size) and the first N images do not depend on how many are asked for.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from edgekit.atomic_io import make_staging_dir, swap_into_place
from edgekit.errors import EdgekitError

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross")
CIRCLE, SQUARE, TRIANGLE, STAR, RING, CROSS = range(len(CLASS_NAMES))

DEFAULT_NUM_IMAGES = {"train": 1500, "val": 300}
DEFAULT_IMAGE_SIZE = 160

MIN_OBJECT_SIZE = 6.0          # px, the object's longest side / diameter
MAX_OBJECT_SIZE = 90.0         # px, capped at 0.6 * image size for small images
MAX_OBJECTS = 12
MIN_VISIBLE_FRACTION = 0.4     # drop rule: an object may be at most 60 % covered
SUPERSAMPLE = 4                # shapes are rasterised at 4x and averaged -> anti-aliased edges
MIN_COLOUR_CONTRAST = 70.0     # Euclidean RGB distance between an object and what lies under it
PLACEMENT_TRIES = 8
JPEG_QUALITY = 95


class SynthError(EdgekitError):
    """Bad arguments or output folder for the synthetic dataset generator."""


# --------------------------------------------------------------------------------------------
# Geometry: every shape is either a polygon (vertices relative to its centre) or an annulus.
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Polygon:
    vertices: np.ndarray  # float64 [V, 2], (x, y) relative to the object centre


@dataclass(frozen=True)
class _Annulus:
    outer_radius: float
    inner_radius: float   # 0 for a filled disc


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _shape_geometry(label: int, size: float, rng: np.random.Generator) -> _Polygon | _Annulus:
    """The outline of one object whose longest extent is about ``size`` pixels."""
    radius = size / 2.0
    angle = rng.uniform(0.0, 2.0 * math.pi)
    if label == CIRCLE:
        return _Annulus(radius, 0.0)
    if label == RING:
        # Keep the wall at least ~1.2 px thick so a tiny ring is still a ring, not noise;
        # the hole of a 6 px ring is then only ~3 px across: close to a circle, on purpose.
        inner = min(radius * rng.uniform(0.4, 0.75), radius - 1.2)
        return _Annulus(radius, max(inner, 0.5))
    if label == SQUARE:
        # Rectangles of aspect 1:2 .. 2:1 (log-uniform), axis-aligned, longest side = size.
        aspect = math.exp(rng.uniform(-math.log(2.0), math.log(2.0)))
        half_w, half_h = (radius, radius / aspect) if aspect >= 1 else (radius * aspect, radius)
        return _Polygon(np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]]))
    if label == TRIANGLE:
        # A jittered equilateral triangle: vertex angles +-15 deg, radii 80..100 %.
        base = angle + np.array([0.0, 2.0, 4.0]) * math.pi / 3.0 + rng.uniform(-0.26, 0.26, 3)
        radii = radius * rng.uniform(0.8, 1.0, 3)
        return _Polygon(np.stack([radii * np.cos(base), radii * np.sin(base)], axis=1))
    if label == STAR:
        points = int(rng.choice([5, 5, 6]))
        inner = radius * rng.uniform(0.38, 0.55)
        theta = angle + np.arange(2 * points) * math.pi / points
        radii = np.where(np.arange(2 * points) % 2 == 0, radius, inner)
        return _Polygon(np.stack([radii * np.cos(theta), radii * np.sin(theta)], axis=1))
    if label == CROSS:
        # A plus sign: arm half-length a (= radius), half-thickness t; thick crosses look square-ish.
        a = radius
        t = radius * rng.uniform(0.2, 0.38)
        b = a * rng.uniform(0.75, 1.0)  # the other arm pair may be a little shorter
        outline = np.array([[t, -b], [t, -t], [a, -t], [a, t], [t, t], [t, b],
                            [-t, b], [-t, t], [-a, t], [-a, -t], [-t, -t], [-t, -b]])
        return _Polygon(_rotate(outline, angle))
    raise ValueError(f"unknown class index {label}")


def _extent(geometry: _Polygon | _Annulus) -> tuple[float, float, float, float]:
    """Axis-aligned extent relative to the centre: (min_x, min_y, max_x, max_y)."""
    if isinstance(geometry, _Annulus):
        r = geometry.outer_radius
        return -r, -r, r, r
    v = geometry.vertices
    return float(v[:, 0].min()), float(v[:, 1].min()), float(v[:, 0].max()), float(v[:, 1].max())


def _rasterize(geometry: _Polygon | _Annulus, cx: float, cy: float) -> tuple[np.ndarray, int, int]:
    """Coverage patch of the shape centred at (cx, cy).

    Continuous image coordinates: pixel (i, j) covers [i, i+1) x [j, j+1). Returns
    (alpha float32 [h, w] in [0, 1], x0, y0) where the patch's top-left pixel is (x0, y0).
    """
    min_x, min_y, max_x, max_y = _extent(geometry)
    x0, y0 = math.floor(cx + min_x) - 1, math.floor(cy + min_y) - 1
    w, h = math.ceil(cx + max_x) + 1 - x0, math.ceil(cy + max_y) + 1 - y0
    s = SUPERSAMPLE
    # Sample at s x s sub-pixel centres per pixel and average: an exact inside test per sample.
    xs = x0 + (np.arange(w * s) + 0.5) / s - cx   # [w*s], relative to the centre
    ys = y0 + (np.arange(h * s) + 0.5) / s - cy   # [h*s]
    if isinstance(geometry, _Annulus):
        dist2 = xs[None, :] ** 2 + ys[:, None] ** 2
        inside = (dist2 <= geometry.outer_radius ** 2) & (dist2 >= geometry.inner_radius ** 2)
    else:
        # Even-odd rule: a sample is inside when a ray towards +x crosses the outline an odd
        # number of times. Edge (a -> b) is crossed by the ray at height y when y lies between
        # a_y and b_y, at x = a_x + (y - a_y) * (b_x - a_x) / (b_y - a_y).
        inside = np.zeros((h * s, w * s), bool)
        vertices = geometry.vertices
        for (ax, ay), (bx, by) in zip(vertices, np.roll(vertices, -1, axis=0)):
            if ay == by:
                continue  # a horizontal edge is never crossed by a horizontal ray
            spans = (ys > min(ay, by)) & (ys <= max(ay, by))
            crossing_x = ax + (ys - ay) * (bx - ax) / (by - ay)
            inside ^= spans[:, None] & (xs[None, :] < crossing_x[:, None])
    fine = inside.astype(np.float32)
    alpha = fine.reshape(h, s, w, s).mean(axis=(1, 3))
    return alpha, x0, y0


# --------------------------------------------------------------------------------------------
# Colour, texture, background
# --------------------------------------------------------------------------------------------

def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """RGB float in 0..255 from a random HSV colour (saturation and value not too low)."""
    h, s, v = rng.uniform(0, 1), rng.uniform(0.25, 1.0), rng.uniform(0.3, 1.0)
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb) * 255.0


def _texture(rng: np.random.Generator, colour: np.ndarray, h: int, w: int, x0: int, y0: int) -> np.ndarray:
    """Fill of one object: float32 [h, w, 3]; solid, stripes or per-pixel noise."""
    kind = rng.choice(["solid", "solid", "stripes", "noise"])
    if kind == "solid":
        return np.broadcast_to(colour.astype(np.float32), (h, w, 3))
    if kind == "stripes":
        other = colour * rng.uniform(0.3, 0.7) if rng.uniform() < 0.5 else _random_colour(rng)
        period, phi = rng.uniform(3.0, 10.0), rng.uniform(0, math.pi)
        ys, xs = np.mgrid[y0:y0 + h, x0:x0 + w]
        phase = (xs * math.cos(phi) + ys * math.sin(phi)) / period
        stripe = ((phase - np.floor(phase)) < 0.5)[..., None]
        return np.where(stripe, colour, other).astype(np.float32)
    sigma = rng.uniform(15.0, 40.0)
    return (colour + rng.normal(0.0, sigma, (h, w, 3))).astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Gradient / smooth colour noise / flat, then distractors (lines, soft blobs, arcs)."""
    kind = rng.choice(["gradient", "noise", "flat"])
    if kind == "gradient":
        c0, c1 = _random_colour(rng), _random_colour(rng)
        phi = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:size, 0:size] / max(size - 1, 1)
        t = xs * math.cos(phi) + ys * math.sin(phi)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        rgb = c0 * (1 - t[..., None]) + c1 * t[..., None]
    elif kind == "noise":
        cells = int(rng.integers(2, 10))
        coarse = np.stack([_random_colour(rng) for _ in range(cells * cells)]).reshape(cells, cells, 3)
        coarse_img = Image.fromarray(coarse.astype(np.uint8))
        rgb = np.asarray(coarse_img.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)
    else:
        rgb = np.broadcast_to(_random_colour(rng), (size, size, 3))
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))

    draw = ImageDraw.Draw(image)
    colour = lambda: tuple(int(c) for c in _random_colour(rng))  # noqa: E731
    for _ in range(int(rng.integers(0, 7))):  # straight lines and short polylines
        pts = rng.uniform(-0.1 * size, 1.1 * size, (int(rng.integers(2, 4)), 2))
        draw.line([tuple(p) for p in pts.tolist()], fill=colour(), width=int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(0, 5))):  # irregular blobs: radius wobbles with angle
        cx, cy = rng.uniform(0, size, 2)
        r0 = rng.uniform(4, 0.25 * size)
        theta = np.linspace(0, 2 * math.pi, 18, endpoint=False)
        wobble = 1 + 0.45 * np.sin(2 * theta + rng.uniform(0, 6)) * rng.uniform(0.3, 1) \
            + 0.25 * np.sin(3 * theta + rng.uniform(0, 6))
        pts = np.stack([cx + r0 * wobble * np.cos(theta), cy + r0 * wobble * np.sin(theta)], axis=1)
        draw.polygon([tuple(p) for p in pts.tolist()], fill=colour())
    for _ in range(int(rng.integers(0, 3))):  # open arcs: look like bits of rings, are not
        cx, cy, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(3, 0.2 * size)
        start = rng.uniform(0, 360)
        draw.arc([cx - r, cy - r, cx + r, cy + r], start, start + rng.uniform(60, 250),
                 fill=colour(), width=int(rng.integers(1, 3)))
    radius = float(rng.choice([0.0, 0.8, 1.5, 2.5]))
    return image.filter(ImageFilter.GaussianBlur(radius)) if radius > 0 else image


# --------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------

@dataclass
class _Placed:
    label: int
    box: tuple[float, float, float, float]  # xyxy, full (amodal) extent
    alpha: np.ndarray                          # float32 [h, w] coverage of the full shape
    visible: np.ndarray                        # float32 [h, w] coverage not hidden by later objects
    x0: int
    y0: int


def _overlap(a: _Placed, x0: int, y0: int, h: int, w: int) -> tuple[slice, slice, slice, slice] | None:
    """Slices (into a's patch rows, cols; into the other patch rows, cols) of the overlap, or None."""
    ax1, ay1 = max(a.x0, x0), max(a.y0, y0)
    ax2, ay2 = min(a.x0 + a.alpha.shape[1], x0 + w), min(a.y0 + a.alpha.shape[0], y0 + h)
    if ax1 >= ax2 or ay1 >= ay2:
        return None
    return (slice(ay1 - a.y0, ay2 - a.y0), slice(ax1 - a.x0, ax2 - a.x0),
            slice(ay1 - y0, ay2 - y0), slice(ax1 - x0, ax2 - x0))


def render_image(rng: np.random.Generator, size: int = DEFAULT_IMAGE_SIZE) -> tuple[np.ndarray, list[dict]]:
    """Draw one image.

    Returns (image uint8 [size, size, 3] RGB, objects) where each object is a dict with
    ``label`` (0-based class index), ``box`` (xyxy float pixels, full extent, inside the image),
    ``visible_fraction`` and ``area`` (visible pixel coverage).
    """
    canvas = np.asarray(_background(rng, size), dtype=np.float32).copy()
    max_size = min(MAX_OBJECT_SIZE, 0.6 * size)
    placed: list[_Placed] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        label = int(rng.integers(len(CLASS_NAMES)))
        for _attempt in range(PLACEMENT_TRIES):
            # Log-uniform size: as many objects in 6..12 px as in 45..90 px.
            obj_size = math.exp(rng.uniform(math.log(MIN_OBJECT_SIZE), math.log(max_size)))
            geometry = _shape_geometry(label, obj_size, rng)
            min_x, min_y, max_x, max_y = _extent(geometry)
            # Keep the whole shape inside the frame so the full extent is also the clipped box.
            cx = rng.uniform(-min_x, size - max_x)
            cy = rng.uniform(-min_y, size - max_y)
            alpha, x0, y0 = _rasterize(geometry, cx, cy)
            # The patch has a 1 px margin that may hang over the border; the shape itself is
            # inside, so the part outside the image has zero coverage and is cut off.
            alpha = alpha[max(0, -y0):size - y0, max(0, -x0):size - x0]
            x0, y0 = max(x0, 0), max(y0, 0)
            h, w = alpha.shape
            # Would this object leave any earlier one more than 60 % covered?
            updates = []
            for other in placed:
                sl = _overlap(other, x0, y0, h, w)
                if sl is None:
                    continue
                oy, ox, ny, nx = sl
                covered = other.visible[oy, ox] * alpha[ny, nx]
                remaining = other.visible.sum() - covered.sum()
                if remaining < MIN_VISIBLE_FRACTION * other.alpha.sum():
                    break
                updates.append((other, sl))
            else:
                break  # placement accepted
        else:
            continue  # no placement worked: leave this object out
        for other, (oy, ox, ny, nx) in updates:
            other.visible[oy, ox] *= 1.0 - alpha[ny, nx]

        # Colour: resample until it stands out from what is under it (mean under the shape).
        region = canvas[y0:y0 + h, x0:x0 + w]
        under = (region * alpha[..., None]).sum((0, 1)) / max(float(alpha.sum()), 1e-6)
        colour = _random_colour(rng)
        for _ in range(6):
            if np.linalg.norm(colour - under) >= MIN_COLOUR_CONTRAST:
                break
            colour = _random_colour(rng)
        fill = _texture(rng, colour, h, w, x0, y0)
        region[...] = region * (1.0 - alpha[..., None]) + fill * alpha[..., None]

        box = (cx + min_x, cy + min_y, cx + max_x, cy + max_y)
        placed.append(_Placed(label, box, alpha, alpha.copy(), x0, y0))

    # Sensor noise and a small global brightness / contrast change.
    gain, bias = rng.uniform(0.85, 1.15), rng.uniform(-15, 15)
    noise_sigma = rng.uniform(0.0, 6.0)
    canvas = canvas * gain + bias + rng.normal(0.0, noise_sigma, canvas.shape)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)

    objects = []
    for p in placed:
        x1, y1, x2, y2 = (min(max(v, 0.0), float(size)) for v in p.box)
        objects.append({
            "label": p.label,
            "box": (round(x1, 2), round(y1, 2), round(x2, 2), round(y2, 2)),
            "visible_fraction": round(float(p.visible.sum() / max(p.alpha.sum(), 1e-6)), 3),
            "area": round(float(p.visible.sum()), 1),
        })
    return image, objects


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator for image ``index`` (0-based) of ``split``: independent of every other image."""
    return np.random.default_rng([int(seed), zlib.crc32(split.encode("utf-8")), int(index)])


# --------------------------------------------------------------------------------------------
# Writing both layouts
# --------------------------------------------------------------------------------------------

_OUTPUT_ENTRIES = {"images", "labels", "annotations", "classes.txt"}


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise SynthError(f"output {out_dir} exists and is not a folder; expected a new or empty folder")
    entries = {p.name for p in out_dir.iterdir()}
    if not entries:
        return
    if not overwrite:
        raise SynthError(f"output folder {out_dir} is not empty; pass --overwrite to replace a synthetic dataset there")
    if not entries <= _OUTPUT_ENTRIES:
        raise SynthError(f"output folder {out_dir} holds files a synthetic dataset does not write "
                         f"({', '.join(sorted(entries - _OUTPUT_ENTRIES))}); refusing to overwrite it")


def _coco_bbox(box: tuple[float, float, float, float]) -> list[float]:
    """xyxy pixels -> COCO [x, y, w, h] as written to instances.json (sizes rounded to 0.01 px)."""
    x1, y1, x2, y2 = box
    return [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)]


def generate(out_dir: str | Path, split: str, seed: int, num_images: int | None = None,
             image_size: int = DEFAULT_IMAGE_SIZE, *, overwrite: bool = False,
             progress: bool = True) -> Path:
    """Generate ``num_images`` images of ``split`` into ``out_dir`` (COCO + YOLO layouts).

    ``num_images`` defaults to 1500 for train and 300 for other splits. The folder is written
    in a temporary sibling and renamed into place, so a failure leaves nothing half-written.
    Returns the output folder.
    """
    out_dir = Path(out_dir)
    if not split or not split.isidentifier():
        raise SynthError(f"split {split!r}: expected a short name such as 'train' or 'val'")
    if num_images is None:
        num_images = DEFAULT_NUM_IMAGES.get(split, DEFAULT_NUM_IMAGES["val"])
    if num_images < 1:
        raise SynthError(f"--num-images {num_images}: expected at least 1")
    if image_size < 32:
        raise SynthError(f"--size {image_size}: expected at least 32 pixels")
    _check_out_dir(out_dir, overwrite)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_staging_dir(out_dir)
    try:
        for sub in ("images", "labels", "annotations"):
            (tmp / sub).mkdir()
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        indices = range(num_images)
        if progress:
            from edgekit.progress import progress_bar

            indices = progress_bar(indices, f"synth {split}")
        for index in indices:
            image, objects = render_image(image_rng(seed, split, index), image_size)
            image_id = index + 1
            stem = f"{split}_{image_id:06d}"
            Image.fromarray(image).save(tmp / "images" / f"{stem}.jpg", quality=JPEG_QUALITY)
            images.append({"id": image_id, "file_name": f"{stem}.jpg", "width": image_size, "height": image_size})
            lines = []
            for obj in objects:
                x1, y1, x2, y2 = obj["box"]
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": obj["label"] + 1,
                    "bbox": _coco_bbox(obj["box"]),
                    "area": obj["area"], "iscrowd": 0, "visible_fraction": obj["visible_fraction"],
                })
                cx, cy = (x1 + x2) / 2 / image_size, (y1 + y2) / 2 / image_size
                w, h = (x2 - x1) / image_size, (y2 - y1) / image_size
                lines.append(f"{obj['label']} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
            (tmp / "labels" / f"{stem}.txt").write_text("".join(lines))
        coco = {
            "info": {"description": "edgekit synthetic shapes", "split": split, "seed": int(seed),
                     "image_size": image_size, "version": 1},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASS_NAMES)],
        }
        (tmp / "annotations" / "instances.json").write_text(json.dumps(coco, separators=(",", ":")))
        (tmp / "classes.txt").write_text("".join(f"{name}\n" for name in CLASS_NAMES))
        swap_into_place(tmp, out_dir)  # checked above: empty, or only our own outputs with --overwrite
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def is_current(folder: str | Path, split: str, seed: int, probes: int = 3) -> bool:
    """True when ``folder`` holds ``split``/``seed`` as this generator draws it today.

    A folder written by an earlier revision of the generator keeps its ``info`` (split, seed) but
    not its contents, and reusing it trains or scores on other data without a word. This re-draws
    the annotations of ``probes`` images spread over the folder (first, last and between) and
    compares labels and boxes with the ones on disk; annotations, not JPEG bytes, so a different
    Pillow build does not count as a different dataset. Any unreadable or missing file -> False.
    """
    path = Path(folder) / "annotations" / "instances.json"
    try:
        coco = json.loads(path.read_text())
        info, images = coco["info"], coco["images"]
        if info.get("split") != split or info.get("seed") != int(seed) or not images:
            return False
        image_size = int(info["image_size"])
        by_image: dict[int, list[tuple[int, list[float]]]] = {}
        for ann in coco["annotations"]:
            by_image.setdefault(ann["image_id"], []).append((ann["category_id"] - 1, ann["bbox"]))
        count = len(images)
        for index in sorted({round(k * (count - 1) / max(probes - 1, 1)) for k in range(probes)}):
            _, objects = render_image(image_rng(seed, split, index), image_size)
            expected = [(obj["label"], _coco_bbox(obj["box"])) for obj in objects]
            on_disk = by_image.get(images[index]["id"], [])
            if len(on_disk) != len(expected) or any(
                    a[0] != b[0] or not np.allclose(a[1], b[1], atol=1e-6) for a, b in zip(on_disk, expected)):
                return False
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the seeded synthetic shapes detection dataset "
                                                 "(COCO + YOLO layouts in one folder).")
    parser.add_argument("--out", required=True, type=Path, help="output folder (new or empty)")
    parser.add_argument("--split", required=True, choices=["train", "val"])
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--num-images", type=int, default=None,
                        help="default: 1500 for train, 300 for val")
    parser.add_argument("--size", type=int, default=DEFAULT_IMAGE_SIZE, help="square image side in pixels")
    parser.add_argument("--overwrite", action="store_true", help="replace a synthetic dataset already in --out")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        out = generate(args.out, args.split, args.seed, args.num_images, args.size,
                       overwrite=args.overwrite, progress=not args.no_progress)
    except EdgekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    coco = json.loads((out / "annotations" / "instances.json").read_text())
    counts = np.bincount([a["category_id"] - 1 for a in coco["annotations"]], minlength=len(CLASS_NAMES))
    per_class = ", ".join(f"{name} {n}" for name, n in zip(CLASS_NAMES, counts.tolist()))
    print(f"wrote {len(coco['images'])} images, {len(coco['annotations'])} objects ({per_class}) "
          f"to {out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
