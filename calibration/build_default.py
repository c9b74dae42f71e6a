"""Build edgekit's bundled default calibration set (``edgekit/zoo/calibration``) reproducibly.

    python calibration/build_default.py                # rewrite edgekit/zoo/calibration
    python calibration/build_default.py --out /tmp/x   # build elsewhere (the tests compare with the manifest)

Contents (154 JPEGs, quality 90, longest side <= 320 px), in two subfolders:

- ``synthetic/``: 100 synthetic shape images, ``edgekit.validate.synth`` split "train" seed 7, 160x160: the same
  distribution the fixture detectors were trained on, but not the training images (split "train"
  seed 0) and not the validation images (split "val" seed 0).
- ``natural/``: 18 natural photos from ``skimage.data`` (8 colour, 10 greyscale, kept greyscale), each three
  times: downscaled to longest side 320 px, the same mirrored left-right, and a seeded crop of
  45..70 % of each side of the full-resolution original (downscaled only if still larger than
  320 px). Real-photo models (the COCO FastestDet) need natural image statistics to calibrate on.

Deterministic: fixed seeds, Pillow only for resizing and encoding (LANCZOS, JPEG quality 90, 4:2:0
subsampling, no optimisation / progressive / EXIF), no timestamps anywhere. Re-running with the
same numpy, Pillow and scikit-image versions (recorded in manifest.json) reproduces every file byte
for byte; another version of libjpeg or of skimage's bundled data may change bytes, not content.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout: import this edgekit
    sys.path.insert(0, str(REPO_ROOT))

from edgekit.validate.synth import image_rng, render_image  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "edgekit" / "zoo" / "calibration"
MANIFEST = "manifest.json"
#: synthetic shapes (the fixtures' domain) and natural photos (real-photo models such as the COCO
#: FastestDet calibrate on ``natural/`` alone: shapes on flat backgrounds skew their ranges)
SUBFOLDERS = ("synthetic", "natural")

SYNTH_SPLIT = "train"
SYNTH_SEED = 7            # training uses seed 0, validation split "val" seed 0: no overlap
SYNTH_COUNT = 100
SYNTH_SIZE = 160

MAX_SIDE = 320
JPEG_QUALITY = 90
CROP_SEED = 7
CROP_FRACTION = (0.45, 0.70)  # of each side of the original

# skimage.data photos available offline in scikit-image 0.26 (the others need pooch + network).
# ``cat`` is the same picture as ``chelsea``; ``stereo_motorcycle`` returns (left, right, disparity)
# and only the left view is used (the right one is nearly the same picture).
COLOUR_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                 "immunohistochemistry", "retina", "stereo_motorcycle")
GREY_PHOTOS = ("camera", "coins", "moon", "grass", "gravel", "brick", "clock", "page", "text", "cell")


def _encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    # Everything that affects the bytes is explicit, so a Pillow default change cannot alter them.
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling="4:2:0",
               optimize=False, progressive=False)
    return buffer.getvalue()


def _shrink(image: Image.Image) -> Image.Image:
    """Downscale so the longest side is at most MAX_SIDE (never upscale)."""
    width, height = image.size
    scale = MAX_SIDE / max(width, height)
    if scale >= 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _photo_array(name: str) -> np.ndarray:
    from skimage import data

    array = getattr(data, name)()
    if name == "stereo_motorcycle":
        array = array[0]
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise SystemExit(f"error: skimage.data.{name} is {array.dtype}, expected uint8")
    return array


def _photo_images(name: str) -> list[tuple[str, str, Image.Image]]:
    """(file stem, manifest source, image) for one photo: scaled, mirrored, cropped."""
    original = Image.fromarray(_photo_array(name))
    source = f"skimage.data.{name}" + ("()[0] (left view)" if name == "stereo_motorcycle" else "")
    scaled = _shrink(original)
    rng = np.random.default_rng([CROP_SEED, zlib.crc32(name.encode("utf-8"))])
    width, height = original.size
    crop_w = round(width * rng.uniform(*CROP_FRACTION))
    crop_h = round(height * rng.uniform(*CROP_FRACTION))
    x0 = int(rng.integers(0, width - crop_w + 1))
    y0 = int(rng.integers(0, height - crop_h + 1))
    box = (x0, y0, x0 + crop_w, y0 + crop_h)
    return [
        (f"natural/photo_{name}", source, scaled),
        (f"natural/photo_{name}_flip", f"{source} flipped", ImageOps.mirror(scaled)),
        (f"natural/photo_{name}_crop", f"{source} crop x0={box[0]} y0={box[1]} x1={box[2]} y1={box[3]}",
         _shrink(original.crop(box))),
    ]


def build(out_dir: Path) -> dict:
    """Write the images and manifest.json into the empty folder ``out_dir``; return the manifest."""
    import PIL
    import skimage

    entries: list[tuple[str, str, Image.Image]] = []
    for index in range(SYNTH_COUNT):
        array, _ = render_image(image_rng(SYNTH_SEED, SYNTH_SPLIT, index), SYNTH_SIZE)
        entries.append((f"synthetic/synth_{SYNTH_SPLIT}{SYNTH_SEED}_{index:03d}",
                        f"synth {SYNTH_SPLIT} seed {SYNTH_SEED} #{index}", Image.fromarray(array)))
    for name in COLOUR_PHOTOS + GREY_PHOTOS:
        entries.extend(_photo_images(name))

    images = []
    for stem, source, image in sorted(entries, key=lambda e: e[0]):
        data = _encode(image)
        (out_dir / f"{stem}.jpg").parent.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{stem}.jpg").write_bytes(data)
        images.append({"file": f"{stem}.jpg", "sha256": hashlib.sha256(data).hexdigest(), "source": source,
                       "width": image.size[0], "height": image.size[1], "mode": image.mode})
    hashes = sorted(entry["sha256"] for entry in images)
    manifest = {
        "format": "edgekit-calibration-set",
        "version": 1,
        "command": "python calibration/build_default.py",
        "built_with": {"numpy": np.__version__, "pillow": PIL.__version__, "scikit-image": skimage.__version__},
        "jpeg_quality": JPEG_QUALITY,
        "max_side": MAX_SIDE,
        "synth": {"split": SYNTH_SPLIT, "seed": SYNTH_SEED, "num_images": SYNTH_COUNT, "size": SYNTH_SIZE},
        "photos": {"colour": list(COLOUR_PHOTOS), "grey": list(GREY_PHOTOS),
                   "variants": ["scaled", "flipped", "crop"], "crop_seed": CROP_SEED},
        "num_images": len(images),
        "total_bytes": sum((out_dir / e["file"]).stat().st_size for e in images),
        # Same definition as CalibrationImages.content_sha256: sha256 of the sorted hex hashes, one a line.
        "content_sha256": hashlib.sha256("".join(f"{h}\n" for h in hashes).encode("ascii")).hexdigest(),
        "images": images,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def _check_out_dir(out_dir: Path) -> None:
    """Only replace a folder that holds nothing but a previous build (JPEGs + manifest)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise SystemExit(f"error: --out {out_dir} exists and is not a folder")
    foreign = sorted(p.name for p in out_dir.rglob("*")
                     if not (p.is_dir() and p.name in SUBFOLDERS) and not (p.is_file() and (p.suffix == ".jpg" or p.name == MANIFEST)))
    if foreign:
        raise SystemExit(f"error: --out {out_dir} holds files this script does not write ({', '.join(foreign)}); "
                         f"refusing to replace it")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the bundled default INT8 calibration set reproducibly.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output folder, replaced if it holds a previous build (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    out_dir: Path = args.out
    _check_out_dir(out_dir)
    start = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temp folder and swap it in: a failure never leaves a half-written set.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the set is package data, readable by everyone
        manifest = build(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {manifest['num_images']} images ({manifest['total_bytes'] / 1e6:.2f} MB) to {out_dir} "
          f"in {time.perf_counter() - start:.1f} s; content_sha256 {manifest['content_sha256'][:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
