"""Tests for edgekit.runtime.preprocess: loading, letterbox / resize, the tensor and the inverse box mapping.

Oracles used:
- letterbox pixels: an independent re-implementation of the YOLOv5 / Ultralytics letterbox
  (cv2.copyMakeBorder with round(dw/2 -/+ 0.1)), which the output must match exactly;
- transforms: the content extent read back from the output pixels, and a white rectangle on black
  whose letterboxed extent (found by thresholding, not from the transform) maps back to the rectangle;
- to_tensor: a per-pixel Python loop and a float64 numpy formula;
- load_image: the arrays the test files were written from.
"""

from __future__ import annotations

import math
from functools import cache

import cv2
import numpy as np
import pytest
from PIL import Image

from edgekit.errors import InputError
from edgekit.runtime.preprocess import (
    ResizeTransform,
    boxes_to_original,
    letterbox,
    load_image,
    plain_resize,
    preprocess,
    to_tensor,
)
from edgekit.spec import HeadSpec, ModelSpec, Normalization, ResizeSpec

# (height, width) of original images: odd sizes, portrait / landscape, tiny, large.
ORIGINAL_SIZES = [(333, 517), (517, 333), (1, 1), (1, 7), (7, 1), (3000, 4000), (4000, 3000), (480, 640)]
# (height, width) of network inputs: square and non-square, both orientations.
INPUT_SIZES = [(640, 640), (384, 640), (416, 256)]


def _pattern_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Random-looking RGB content built cheaply by tiling a small random block (fast for 4000x3000)."""
    block = np.random.default_rng(seed).integers(0, 256, size=(37, 41, 3), dtype=np.uint8)
    reps = (math.ceil(height / 37), math.ceil(width / 41), 1)
    return np.ascontiguousarray(np.tile(block, reps)[:height, :width])


@cache
def _cached_pattern(height: int, width: int) -> np.ndarray:
    image = _pattern_image(height, width)
    image.flags.writeable = False
    return image


def _yolov5_letterbox(image: np.ndarray, new_shape: tuple[int, int], color: int = 114) -> np.ndarray:
    """The YOLOv5 / Ultralytics LetterBox(auto=False, scaleup=True) algorithm, written out independently."""
    shape = image.shape[:2]
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    new_unpad = int(round(shape[1] * r)), int(round(shape[0] * r))
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    dw /= 2
    dh /= 2
    if shape[::-1] != new_unpad:
        image = cv2.resize(image, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(color, color, color))


def _make_spec(input_size=(64, 96), color_order="RGB", normalization=None, resize=None) -> ModelSpec:
    return ModelSpec(
        family="test",
        input_size=input_size,
        class_names=("a", "b"),
        head=HeadSpec(kind="yolox", output_names=("out",), params={"strides": [8]}),
        color_order=color_order,
        normalization=normalization or Normalization(),
        resize=resize or ResizeSpec(),
    )


def _random_boxes(rng: np.random.Generator, width: int, height: int, count: int = 50) -> np.ndarray:
    xs = np.sort(rng.uniform(0, width, size=(count, 2)), axis=1)
    ys = np.sort(rng.uniform(0, height, size=(count, 2)), axis=1)
    return np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1)


def _rectangle_image(height: int, width: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Black image with a filled white rectangle; returns (image, rectangle xyxy in pixel edges)."""
    x1 = int(math.floor(0.2 * width))
    x2 = max(x1 + 1, int(math.ceil(0.7 * width)))
    y1 = int(math.floor(0.35 * height))
    y2 = max(y1 + 1, int(math.ceil(0.9 * height)))
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[y1:y2, x1:x2] = 255
    return image, (x1, y1, x2, y2)


def _bright_extent(image: np.ndarray, threshold: int = 128) -> np.ndarray:
    """xyxy (pixel edges) of the pixels brighter than threshold: where the white rectangle landed."""
    mask = image.min(axis=2) >= threshold
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    assert rows.size and cols.size, "rectangle vanished after resizing"
    return np.array([[cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]], dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# letterbox
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("input_size", INPUT_SIZES)
@pytest.mark.parametrize("orig_size", ORIGINAL_SIZES)
def test_letterbox_matches_yolov5_pixels(orig_size, input_size):
    image = _cached_pattern(*orig_size)
    out, _ = letterbox(image, input_size, pad_value=114)
    expected = _yolov5_letterbox(image, input_size, color=114)
    assert out.shape == (*input_size, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("pad_value", [114, 0, 255])
@pytest.mark.parametrize("input_size", INPUT_SIZES)
@pytest.mark.parametrize("orig_size", ORIGINAL_SIZES)
def test_letterbox_padding_centring_and_content_extent(orig_size, input_size, pad_value):
    height, width = orig_size
    # A constant image stays exactly constant under bilinear resizing, so the content region is
    # exactly the pixels of the content value; pick one different from the pad value.
    content_value = 60 if pad_value != 60 else 200
    image = np.full((height, width, 3), content_value, dtype=np.uint8)
    out, transform = letterbox(image, input_size, pad_value=pad_value)

    content = np.all(out == content_value, axis=2)
    padding = np.all(out == pad_value, axis=2)
    assert np.all(content | padding), "letterbox produced a pixel that is neither content nor padding"
    rows = np.flatnonzero(content.any(axis=1))
    cols = np.flatnonzero(content.any(axis=0))
    top, bottom = rows[0], input_size[0] - (rows[-1] + 1)
    left, right = cols[0], input_size[1] - (cols[-1] + 1)
    # The content is one solid rectangle...
    assert content[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
    # ...centred, the odd pixel of padding going right / bottom...
    assert 0 <= right - left <= 1 and 0 <= bottom - top <= 1
    # ...touching both borders along at least one axis (the aspect ratio limited the scale)...
    assert left == 0 or top == 0
    # ...with an aspect ratio within rounding of the original (half a pixel per side).
    new_h, new_w = rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0]
    ratio = min(input_size[0] / height, input_size[1] / width)
    assert abs(new_w - width * ratio) <= 0.5 + 1e-9 or new_w == 1
    assert abs(new_h - height * ratio) <= 0.5 + 1e-9 or new_h == 1

    # The transform says exactly where the original image edges landed.
    assert transform.pad_x == left and transform.pad_y == top
    assert transform.pad_x + transform.scale_x * width == pytest.approx(cols[-1] + 1, abs=1e-9)
    assert transform.pad_y + transform.scale_y * height == pytest.approx(rows[-1] + 1, abs=1e-9)
    assert (transform.orig_width, transform.orig_height) == (width, height)


@pytest.mark.parametrize("input_size", INPUT_SIZES)
@pytest.mark.parametrize("orig_size", ORIGINAL_SIZES)
@pytest.mark.parametrize("resize", [letterbox, plain_resize], ids=["letterbox", "plain_resize"])
def test_round_trip_boxes_through_transform(orig_size, input_size, resize):
    height, width = orig_size
    image = _cached_pattern(*orig_size)
    _, transform = resize(image, input_size)
    rng = np.random.default_rng(height * 7919 + width)
    boxes = _random_boxes(rng, width, height)
    forward = boxes.copy()
    forward[:, 0::2] = boxes[:, 0::2] * transform.scale_x + transform.pad_x
    forward[:, 1::2] = boxes[:, 1::2] * transform.scale_y + transform.pad_y
    # Forward-mapped boxes land inside the network input.
    assert forward[:, 0::2].min() >= -1e-6 and forward[:, 0::2].max() <= input_size[1] + 1e-6
    assert forward[:, 1::2].min() >= -1e-6 and forward[:, 1::2].max() <= input_size[0] + 1e-6
    back = boxes_to_original(forward.astype(np.float32), transform)
    assert back.dtype == np.float32 and back.shape == boxes.shape
    np.testing.assert_allclose(back, boxes, atol=0.5)
    # float32 network-space coordinates carry ~1e-7 relative error: far tighter than 0.5 px.
    np.testing.assert_allclose(back, boxes, atol=1e-3 * max(1.0, 1.0 / min(transform.scale_x, transform.scale_y)))


@pytest.mark.parametrize("input_size", INPUT_SIZES)
@pytest.mark.parametrize("orig_size", ORIGINAL_SIZES)
@pytest.mark.parametrize("resize", [letterbox, plain_resize], ids=["letterbox", "plain_resize"])
def test_rectangle_extent_maps_back_to_rectangle(orig_size, input_size, resize):
    """Independent of the transform's forward formula: find the rectangle in the output pixels."""
    height, width = orig_size
    image, rectangle = _rectangle_image(height, width)
    out, transform = resize(image, input_size)
    found_in_net = _bright_extent(out)
    mapped = boxes_to_original(found_in_net, transform)[0]
    # Bilinear blur moves a thresholded edge by up to one network pixel (1 / scale original px).
    tol_x = 1.0 + 1.0 / transform.scale_x
    tol_y = 1.0 + 1.0 / transform.scale_y
    x1, y1, x2, y2 = rectangle
    assert abs(mapped[0] - x1) <= tol_x and abs(mapped[2] - x2) <= tol_x, (mapped, rectangle)
    assert abs(mapped[1] - y1) <= tol_y and abs(mapped[3] - y2) <= tol_y, (mapped, rectangle)


def test_rectangle_check_catches_a_wrong_pad_convention():
    """The rectangle oracle is sharp enough to reject a transform whose padding is off by a few pixels."""
    image, rectangle = _rectangle_image(333, 517)
    out, transform = letterbox(image, (640, 640))
    wrong = ResizeTransform(transform.scale_x, transform.scale_y, transform.pad_x,
                            transform.pad_y * 2, transform.orig_width, transform.orig_height)
    mapped = boxes_to_original(_bright_extent(out), wrong)[0]
    assert abs(mapped[1] - rectangle[1]) > 1.0 + 1.0 / transform.scale_y


def test_letterbox_exact_size_is_returned_unchanged():
    image = _pattern_image(64, 96)
    out, transform = letterbox(image, (64, 96))
    assert out is image
    assert transform == ResizeTransform(1.0, 1.0, 0.0, 0.0, 96, 64)


def test_letterbox_same_width_pads_only_vertically():
    image = _pattern_image(30, 96)
    out, transform = letterbox(image, (64, 96), pad_value=7)
    assert (transform.scale_x, transform.scale_y, transform.pad_x, transform.pad_y) == (1.0, 1.0, 0.0, 17.0)
    np.testing.assert_array_equal(out[17:47], image)
    assert (out[:17] == 7).all() and (out[47:] == 7).all()


def test_letterbox_extreme_aspect_ratio_keeps_one_pixel():
    image = np.full((1, 5000, 3), 200, dtype=np.uint8)
    out, transform = letterbox(image, (64, 64))
    assert out.shape == (64, 64, 3)
    assert transform.scale_y == 1.0 and transform.scale_x == pytest.approx(64 / 5000)
    assert (out == 200).all(axis=2).sum() == 64


@pytest.mark.parametrize("bad_size", [(0, 64), (64, -1), (64,), (64.0, 64)])
def test_resize_rejects_bad_sizes(bad_size):
    image = _pattern_image(8, 8)
    with pytest.raises(InputError):
        letterbox(image, bad_size)
    with pytest.raises(InputError):
        plain_resize(image, bad_size)


def test_letterbox_rejects_bad_pad_value_and_images():
    with pytest.raises(InputError, match="pad_value"):
        letterbox(_pattern_image(8, 8), (16, 16), pad_value=300)
    with pytest.raises(InputError, match="uint8"):
        letterbox(np.zeros((8, 8, 3), np.float32), (16, 16))
    with pytest.raises(InputError, match="empty"):
        letterbox(np.zeros((0, 8, 3), np.uint8), (16, 16))


# ----------------------------------------------------------------------------------------------
# plain_resize
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("input_size", INPUT_SIZES)
@pytest.mark.parametrize("orig_size", [(333, 517), (1, 7), (3000, 4000)])
def test_plain_resize_stretches_without_padding(orig_size, input_size):
    height, width = orig_size
    image = _cached_pattern(*orig_size)
    out, transform = plain_resize(image, input_size)
    assert out.shape == (*input_size, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, cv2.resize(image, input_size[::-1], interpolation=cv2.INTER_LINEAR))
    assert transform == ResizeTransform(input_size[1] / width, input_size[0] / height, 0.0, 0.0, width, height)
    # A constant image fills the whole input: no padding anywhere.
    constant, _ = plain_resize(np.full((height, width, 3), 9, np.uint8), input_size)
    assert (constant == 9).all()


def test_plain_resize_exact_size_is_returned_unchanged():
    image = _pattern_image(64, 96)
    out, transform = plain_resize(image, (64, 96))
    assert out is image
    assert transform == ResizeTransform(1.0, 1.0, 0.0, 0.0, 96, 64)


# ----------------------------------------------------------------------------------------------
# boxes_to_original
# ----------------------------------------------------------------------------------------------


def test_boxes_to_original_formula_and_clipping():
    transform = ResizeTransform(scale_x=2.0, scale_y=0.5, pad_x=10.0, pad_y=3.0, orig_width=100, orig_height=50)
    boxes = np.array([
        [30.0, 8.0, 50.0, 13.0],       # inside: ((30-10)/2, (8-3)/0.5, ...) = (10, 10, 20, 20)
        [0.0, 0.0, 500.0, 500.0],      # covers the padding on every side: clipped to the image
        [-5.0, 2.0, 5.0, 2.5],         # entirely in the top-left padding: collapses onto the corner
    ])
    out = boxes_to_original(boxes, transform)
    assert out.dtype == np.float32 and out.shape == (3, 4)
    np.testing.assert_allclose(out, [[10, 10, 20, 20], [0, 0, 100, 50], [0, 0, 0, 0]])
    np.testing.assert_array_equal(transform.to_original(boxes), out)


def test_boxes_to_original_empty_and_bad_shape():
    transform = ResizeTransform(1.0, 1.0, 0.0, 0.0, 10, 10)
    out = boxes_to_original(np.zeros((0, 4), np.float32), transform)
    assert out.shape == (0, 4) and out.dtype == np.float32
    with pytest.raises(InputError, match=r"\[N, 4\]"):
        boxes_to_original(np.zeros((3, 5)), transform)
    with pytest.raises(InputError, match=r"\[N, 4\]"):
        boxes_to_original(np.zeros(4), transform)


# ----------------------------------------------------------------------------------------------
# to_tensor / preprocess
# ----------------------------------------------------------------------------------------------

NORMALIZATIONS = [
    Normalization(),  # x / 255
    Normalization(scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),  # ImageNet
    Normalization(scale=1.0, mean=(103.53, 116.28, 123.675), std=(57.375, 57.12, 58.395)),  # mmdet BGR
    Normalization(scale=0.5, mean=(-3.0, 10.0, 0.25), std=(2.0, -0.5, 7.0)),  # asymmetric, negative std
]


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("color_order", ["RGB", "BGR"])
def test_to_tensor_matches_per_pixel_formula(color_order, normalization):
    spec = _make_spec(input_size=(5, 7), color_order=color_order, normalization=normalization)
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8) for _ in range(2)]
    tensor = to_tensor(images, spec)
    assert tensor.shape == (2, 3, 5, 7) and tensor.dtype == np.float32 and tensor.flags.c_contiguous
    for b, image in enumerate(images):
        for c in range(3):
            source_channel = c if color_order == "RGB" else 2 - c
            for y in range(5):
                for x in range(7):
                    pixel = float(image[y, x, source_channel])
                    expected = (pixel * normalization.scale - normalization.mean[c]) / normalization.std[c]
                    assert tensor[b, c, y, x] == pytest.approx(expected, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("color_order", ["RGB", "BGR"])
def test_to_tensor_full_size_matches_float64_formula(color_order):
    normalization = NORMALIZATIONS[1]
    spec = _make_spec(input_size=(640, 640), color_order=color_order, normalization=normalization)
    image = _pattern_image(640, 640, seed=5)
    ordered = image if color_order == "RGB" else image[:, :, ::-1]
    chw = ordered.astype(np.float64).transpose(2, 0, 1)
    mean = np.asarray(normalization.mean)[:, None, None]
    std = np.asarray(normalization.std)[:, None, None]
    expected = ((chw * normalization.scale - mean) / std).astype(np.float32)
    # The lookup table rounds the float64 value once, so the result is the exact float32 value.
    np.testing.assert_array_equal(to_tensor([image], spec)[0], expected)


def test_to_tensor_rejects_wrong_size_and_type():
    spec = _make_spec(input_size=(8, 8))
    with pytest.raises(InputError, match="image 1: expected 8x8"):
        to_tensor([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)], spec)
    with pytest.raises(InputError, match="image 0"):
        to_tensor([np.zeros((8, 8), np.uint8)], spec)
    with pytest.raises(InputError, match="image 0"):
        to_tensor([np.zeros((8, 8, 3), np.float32)], spec)
    with pytest.raises(InputError, match="empty"):
        to_tensor([], spec)


@pytest.mark.parametrize("mode", ["letterbox", "resize"])
def test_preprocess_resizes_each_image_then_normalises(mode):
    spec = _make_spec(input_size=(48, 64), color_order="BGR", normalization=NORMALIZATIONS[1],
                      resize=ResizeSpec(mode=mode, pad_value=33))
    images = [_pattern_image(100, 37, seed=1), _pattern_image(48, 64, seed=2), _pattern_image(9, 200, seed=3)]
    tensor, transforms = preprocess(images, spec)
    assert tensor.shape == (3, 3, 48, 64) and len(transforms) == 3
    for index, image in enumerate(images):
        if mode == "letterbox":
            resized, transform = letterbox(image, (48, 64), pad_value=33)
            np.testing.assert_array_equal(resized, _yolov5_letterbox(image, (48, 64), color=33))
        else:
            resized, transform = plain_resize(image, (48, 64))
        assert transforms[index] == transform
        np.testing.assert_array_equal(tensor[index], to_tensor([resized], spec)[0])
    # A single HxWx3 array is a batch of one.
    single, single_transforms = preprocess(images[0], spec)
    np.testing.assert_array_equal(single, tensor[:1])
    assert single_transforms == transforms[:1]


def test_preprocess_rejects_non_rgb_images():
    spec = _make_spec()
    with pytest.raises(InputError, match="image 1"):
        preprocess([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 4), np.uint8)], spec)
    with pytest.raises(InputError, match="image 0"):
        preprocess(["photo.jpg"], spec)


# ----------------------------------------------------------------------------------------------
# load_image: files
# ----------------------------------------------------------------------------------------------


def _smooth_rgb(height: int = 48, width: int = 64) -> np.ndarray:
    """Smooth gradients survive JPEG almost unchanged, so decoded pixels can be compared tightly."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) * 255 // (width + height - 2)],
                    axis=2).astype(np.uint8)


def test_load_rgb_png_exact_and_pathlike(tmp_path):
    source = _pattern_image(21, 34)
    path = tmp_path / "rgb.png"
    Image.fromarray(source).save(path)
    for given in (path, str(path)):
        loaded = load_image(given)
        assert loaded.dtype == np.uint8 and loaded.flags.c_contiguous
        np.testing.assert_array_equal(loaded, source)


def test_load_rgb_jpeg(tmp_path):
    source = _smooth_rgb()
    path = tmp_path / "rgb.jpg"
    Image.fromarray(source).save(path, quality=95)
    loaded = load_image(path)
    assert loaded.shape == source.shape
    assert np.abs(loaded.astype(int) - source).mean() < 2.0


def test_load_grayscale_gives_three_equal_channels(tmp_path):
    gray = _pattern_image(20, 30)[:, :, 0]
    path = tmp_path / "gray.png"
    Image.fromarray(gray, mode="L").save(path)
    loaded = load_image(path)
    assert loaded.shape == (20, 30, 3)
    for c in range(3):
        np.testing.assert_array_equal(loaded[:, :, c], gray)


def test_load_one_bit_image(tmp_path):
    bits = (_pattern_image(16, 24)[:, :, 0] > 127)
    path = tmp_path / "bits.png"
    Image.fromarray(bits).save(path)
    assert Image.open(path).mode == "1"
    loaded = load_image(path)
    np.testing.assert_array_equal(loaded, np.repeat(bits[:, :, None] * 255, 3, axis=2).astype(np.uint8))


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_load_alpha_is_dropped_colour_kept(tmp_path, mode):
    rgba = _pattern_image(16, 24, seed=4).copy()
    alpha = np.zeros((16, 24), np.uint8)
    alpha[:, 12:] = 255  # left half fully transparent: its colour must still come through
    if mode == "RGBA":
        array = np.dstack([rgba, alpha])
        expected = rgba
    else:
        array = np.dstack([rgba[:, :, 0], alpha])
        expected = np.repeat(rgba[:, :, :1], 3, axis=2)
    path = tmp_path / f"{mode}.png"
    Image.fromarray(array, mode=mode).save(path)
    np.testing.assert_array_equal(load_image(path), expected)


def test_load_palette_png(tmp_path):
    palette_colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], np.uint8)
    indices = (np.arange(12 * 18).reshape(12, 18) % 4).astype(np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette_colours.ravel().tolist())
    path = tmp_path / "palette.png"
    image.save(path)
    assert Image.open(path).mode == "P"
    np.testing.assert_array_equal(load_image(path), palette_colours[indices])


def test_load_cmyk_jpeg(tmp_path):
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[:, :8] = (0, 255, 255, 0)    # red
    cmyk[:, 8:] = (255, 255, 0, 0)    # blue
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(cmyk, mode="CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    loaded = load_image(path)
    assert loaded.shape == (16, 16, 3)
    assert np.abs(loaded[:, :6].astype(int) - (255, 0, 0)).max() <= 8
    assert np.abs(loaded[:, 10:].astype(int) - (0, 0, 255)).max() <= 8


def test_load_honours_exif_orientation(tmp_path):
    # Six distinct flat blocks (2 rows x 3 columns) so any rotation or flip is detectable.
    colours = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
                        [[255, 255, 0], [0, 255, 255], [255, 0, 255]]], np.uint8)
    stored = np.repeat(np.repeat(colours, 16, axis=0), 16, axis=1)  # 32 x 48
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    expected_blocks = np.rot90(colours, k=-1)  # clockwise: a 3 x 2 grid of blocks when displayed
    for given in (path, Image.open(path)):
        loaded = load_image(given)
        assert loaded.shape == (48, 32, 3)
        # Compare block centres: JPEG chroma subsampling blurs the colour edges between blocks.
        centres = loaded[8::16, 8::16].astype(int)
        assert np.abs(centres - expected_blocks).max() <= 12


def test_load_pil_image_input():
    source = _pattern_image(10, 12)
    np.testing.assert_array_equal(load_image(Image.fromarray(source)), source)
    gray = Image.fromarray(source[:, :, 1], mode="L")
    np.testing.assert_array_equal(load_image(gray), np.repeat(source[:, :, 1:2], 3, axis=2))


# ----------------------------------------------------------------------------------------------
# load_image: arrays
# ----------------------------------------------------------------------------------------------


def test_load_array_rgb_is_returned_without_copy():
    source = _pattern_image(10, 12)
    loaded = load_image(source)
    assert np.shares_memory(loaded, source)
    np.testing.assert_array_equal(loaded, source)


def test_load_array_bgr_and_bgra_are_flipped():
    rgb = _pattern_image(10, 12)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    loaded = load_image(bgr, color_order="BGR")
    assert loaded.flags.c_contiguous
    np.testing.assert_array_equal(loaded, rgb)
    bgra = np.dstack([bgr, np.full((10, 12), 7, np.uint8)])
    np.testing.assert_array_equal(load_image(bgra, color_order="BGR"), rgb)
    rgba = np.dstack([rgb, np.full((10, 12), 7, np.uint8)])
    np.testing.assert_array_equal(load_image(rgba), rgb)


def test_load_array_grayscale_is_replicated():
    gray = _pattern_image(10, 12)[:, :, 0]
    for given in (gray, gray[:, :, None]):
        for order in ("RGB", "BGR"):
            loaded = load_image(given, color_order=order)
            assert loaded.shape == (10, 12, 3) and loaded.flags.c_contiguous
            for c in range(3):
                np.testing.assert_array_equal(loaded[:, :, c], gray)


def test_load_array_non_contiguous_becomes_contiguous():
    base = _pattern_image(20, 24)
    view = base[::2, ::3]
    loaded = load_image(view)
    assert loaded.flags.c_contiguous
    np.testing.assert_array_equal(loaded, view)


# ----------------------------------------------------------------------------------------------
# load_image: errors (one line, naming the file / 'array')
# ----------------------------------------------------------------------------------------------


def _write_16bit_png(path):
    Image.fromarray(np.arange(200, dtype=np.uint16).reshape(10, 20) * 300).save(path)
    assert Image.open(path).mode == "I;16"


def _write_32bit_int_tiff(path):
    Image.fromarray(np.arange(200, dtype=np.int32).reshape(10, 20) * 1000).save(path)
    assert Image.open(path).mode == "I"


def _write_float_tiff(path):
    Image.fromarray(np.linspace(0, 1, 200, dtype=np.float32).reshape(10, 20)).save(path)
    assert Image.open(path).mode == "F"


def _write_random_bytes(path):
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def _write_empty_file(path):
    path.write_bytes(b"")


def _write_truncated_jpeg(path):
    buffer = path.parent / "full.jpg"
    Image.fromarray(_pattern_image(256, 256)).save(buffer, quality=95)
    data = buffer.read_bytes()
    path.write_bytes(data[: len(data) // 2])


FILE_ERRORS = [
    ("sixteen.png", _write_16bit_png, r"expected 8-bit images; got 16-bit 'I;16'"),
    ("int32.tiff", _write_32bit_int_tiff, r"expected 8-bit images; got 32-bit integer 'I'"),
    ("float.tiff", _write_float_tiff, r"expected 8-bit images; got 32-bit float 'F'"),
    ("random.jpg", _write_random_bytes, r"not a readable image"),
    ("empty.png", _write_empty_file, r"not a readable image"),
    ("truncated.jpg", _write_truncated_jpeg, r"corrupt or truncated"),
    ("missing.jpg", None, r"not found"),
]


@pytest.mark.parametrize("name,writer,message", FILE_ERRORS, ids=[e[0] for e in FILE_ERRORS])
def test_load_file_errors_are_one_line_naming_the_file(tmp_path, name, writer, message):
    path = tmp_path / name
    if writer is not None:
        writer(path)
    with pytest.raises(InputError, match=message) as info:
        load_image(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(str(path) + ":")


def test_load_directory_is_an_error(tmp_path):
    with pytest.raises(InputError, match="is not a file") as info:
        load_image(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_load_zero_size_pil_image():
    with pytest.raises(InputError, match="empty"):
        load_image(Image.new("RGB", (0, 5)))


def test_load_pil_16bit_image_is_an_error():
    image = Image.fromarray(np.zeros((4, 4), np.uint16))
    with pytest.raises(InputError, match=r"PIL image: expected 8-bit images; got 16-bit"):
        load_image(image)


ARRAY_ERRORS = [
    (np.zeros((0, 5, 3), np.uint8), "RGB", r"empty"),
    (np.zeros((5, 0), np.uint8), "RGB", r"empty"),
    (np.zeros((1, 8, 8, 3), np.uint8), "RGB", r"expected an HxW or HxWxC image array, got shape \(1, 8, 8, 3\)"),
    (np.zeros(8, np.uint8), "RGB", r"expected an HxW or HxWxC image array, got shape \(8,\)"),
    (np.zeros((8, 8, 2), np.uint8), "RGB", r"expected 1, 3 or 4 channels.*got 2"),
    (np.zeros((8, 8, 5), np.uint8), "BGR", r"expected 1, 3 or 4 channels.*got 5"),
    (np.zeros((8, 8, 3), np.float32), "RGB", r"expected a uint8 image array.*float32"),
    (np.zeros((8, 8, 3), np.float64), "RGB", r"expected a uint8 image array.*float64"),
    (np.zeros((8, 8, 3), np.uint16), "RGB", r"expected 8-bit images; got 16-bit uint16"),
    (np.zeros((8, 8), bool), "RGB", r"expected a uint8 image array.*bool"),
    (np.zeros((8, 8, 3), np.uint8), "RGBA", r"color_order"),
]


@pytest.mark.parametrize("array,order,message", ARRAY_ERRORS)
def test_load_array_errors_are_one_line_naming_array(array, order, message):
    with pytest.raises(InputError, match=message) as info:
        load_image(array, color_order=order)
    text = str(info.value)
    assert "\n" not in text and text.startswith("array:")


def test_load_unsupported_type():
    with pytest.raises(InputError, match="expected an image file path, a numpy array or a PIL image, got int"):
        load_image(42)
