"""Top-left letterbox (``ResizeSpec.align = "top_left"``): YOLOX's ``preproc``, pixel for pixel.

The oracle is YOLOX's published recipe written out here with OpenCV: ``r = min(H / h, W / w)``,
``cv2.resize(img, (int(w * r), int(h * r)), interpolation=cv2.INTER_LINEAR)``, pasted at (0, 0) on a canvas
filled with the pad value.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgekit.errors import InputError, SpecError
from edgekit.runtime.preprocess import boxes_to_original, letterbox, preprocess, resize_to_input
from edgekit.spec import HeadSpec, ModelSpec, Normalization, ResizeSpec


def _yolox_preproc(image: np.ndarray, size_hw: tuple[int, int], pad: int) -> np.ndarray:
    canvas = np.full((size_hw[0], size_hw[1], 3), pad, dtype=np.uint8)
    r = min(size_hw[0] / image.shape[0], size_hw[1] / image.shape[1])
    resized = cv2.resize(image, (int(image.shape[1] * r), int(image.shape[0] * r)), interpolation=cv2.INTER_LINEAR)
    canvas[: int(image.shape[0] * r), : int(image.shape[1] * r)] = resized
    return canvas


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _spec(align: str, size: tuple[int, int] = (416, 416), pad: int = 114) -> ModelSpec:
    return ModelSpec(family="yolox", input_size=size, class_names=("a",),
                     head=HeadSpec("yolox", ("p3", "p4", "p5"), {"strides": [8, 16, 32]}), color_order="BGR",
                     normalization=Normalization(1.0), resize=ResizeSpec("letterbox", pad, align))


@pytest.mark.parametrize("orig_hw", [(640, 427), (480, 640), (375, 500), (1080, 1920), (100, 37), (416, 200), (33, 416)])
@pytest.mark.parametrize("size_hw", [(416, 416), (640, 640), (320, 480)])
def test_top_left_letterbox_equals_yolox_preproc(orig_hw, size_hw) -> None:
    image = _image(*orig_hw)
    out, transform = letterbox(image, size_hw, pad_value=114, align="top_left")
    np.testing.assert_array_equal(out, _yolox_preproc(image, size_hw, 114))
    assert (transform.pad_x, transform.pad_y) == (0.0, 0.0)
    r = min(size_hw[0] / orig_hw[0], size_hw[1] / orig_hw[1])
    assert transform.scale_x == int(orig_hw[1] * r) / orig_hw[1]
    assert transform.scale_y == int(orig_hw[0] * r) / orig_hw[0]


def test_top_left_truncates_where_centre_rounds() -> None:
    """427 * 0.65 = 277.55: YOLOX resizes to 277 columns, the centred letterbox (YOLOv5) to 278."""
    image = _image(640, 427)
    top_left, t_tl = letterbox(image, (416, 416), align="top_left")
    centred, t_c = letterbox(image, (416, 416), align="center")
    assert round(t_tl.scale_x * 427) == 277 and round(t_c.scale_x * 427) == 278
    assert np.all(top_left[:, 277:] == 114) and not np.all(top_left[:, 276] == 114)
    assert t_c.pad_x == (416 - 278) // 2
    assert not np.array_equal(top_left, centred)


@pytest.mark.parametrize("pad", [114, 0])
def test_padding_only_right_and_bottom(pad: int) -> None:
    image = np.full((100, 200, 3), 60 if pad != 60 else 200, dtype=np.uint8)
    out, _ = letterbox(image, (320, 320), pad_value=pad, align="top_left")
    content = ~np.all(out == pad, axis=2)
    rows, cols = np.nonzero(content)
    assert (rows.min(), cols.min(), rows.max(), cols.max()) == (0, 0, 159, 319)


def test_boxes_map_back_to_original_pixels() -> None:
    image = _image(480, 640)
    _, transform = letterbox(image, (416, 416), align="top_left")  # r = 0.65, content 416 x 312 at (0, 0)
    original = np.array([[0, 0, 640, 480], [100.0, 50.0, 300.0, 400.0], [10.5, 20.25, 11.5, 21.75]])
    network = original * np.array([transform.scale_x, transform.scale_y] * 2)
    np.testing.assert_allclose(network[0], [0, 0, 416, 312])
    np.testing.assert_allclose(boxes_to_original(network, transform), original, rtol=0, atol=1e-4)
    # Outside the content (padding) clips to the image.
    np.testing.assert_allclose(boxes_to_original(np.array([[400.0, 300.0, 416.0, 416.0]]), transform),
                               [[400 / 0.65, 300 / 0.65, 640, 480]], atol=1e-3)


def test_preprocess_and_resize_to_input_follow_spec_align() -> None:
    image = _image(300, 500)
    rgb_tensor, transforms = preprocess([image], _spec("top_left", (320, 320)))
    expected = _yolox_preproc(image, (320, 320), 114)[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)  # BGR
    np.testing.assert_array_equal(rgb_tensor[0], expected)
    assert (transforms[0].pad_x, transforms[0].pad_y) == (0.0, 0.0)
    centred, t = resize_to_input(image, _spec("center", (320, 320)))
    np.testing.assert_array_equal(centred, letterbox(image, (320, 320))[0])
    assert t.pad_y == (320 - 192) // 2


def test_image_already_at_input_size_is_unchanged() -> None:
    image = _image(416, 416)
    out, transform = letterbox(image, (416, 416), align="top_left")
    assert out is image and (transform.scale_x, transform.pad_x) == (1.0, 0.0)


def test_bad_align_is_rejected() -> None:
    with pytest.raises(InputError, match="letterbox: align must be one of"):
        letterbox(_image(10, 10), (32, 32), align="bottom")
    with pytest.raises(SpecError, match="spec.resize.align must be one of"):
        _spec("middle")


def test_spec_json_keeps_align_and_old_specs_load_centred() -> None:
    spec = _spec("top_left")
    assert ModelSpec.from_json(spec.to_json()).resize.align == "top_left"
    old = spec.to_dict()
    del old["resize"]["align"]  # a spec written before the field existed
    assert ModelSpec.from_dict(old).resize == ResizeSpec("letterbox", 114, "center")
    old["resize"]["align"] = "diagonal"
    with pytest.raises(SpecError, match="resize.align"):
        ModelSpec.from_dict(old)
