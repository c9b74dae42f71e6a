"""ModelSpec from third-party ONNX files (edgekit.runtime.onnx_import) and Detector on them.

Real file: ``../shared/models/ultralytics/yolov8n-coco8.onnx`` against Ultralytics' own predictions
(same images, conf 0.25 / 0.05, IoU 0.7, square letterbox 320). Small graphs built here with
onnx.helper cover the other layouts and every refusal.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.errors import ModelFileError, SpecError
from edgekit.runtime.detector import Detector
from edgekit.runtime.onnx_import import (
    grid_cells,
    has_edgekit_spec,
    parse_imgsz,
    parse_ultralytics_names,
    read_onnx_header,
    spec_from_third_party_onnx,
)
from edgekit.spec import ONNX_METADATA_KEY, HeadSpec, ModelSpec
from tests.conftest import SHARED_DIR
from tests.parity_helpers import load_predictions, match_upstream

ULTRALYTICS_DIR = SHARED_DIR / "models" / "ultralytics"
YOLOV8_ONNX = ULTRALYTICS_DIR / "yolov8n-coco8.onnx"
COCO80 = tuple(f"name{i}" for i in range(80))


def parity_images() -> list[Path]:
    """The images the upstream prediction files cover (see ../shared/models/ultralytics/README.md)."""
    return (sorted((SHARED_DIR / "datasets" / "coco8" / "images").glob("*/*.jpg"))
            + sorted((SHARED_DIR / "models" / "fastestdet" / "images").glob("*.jpg")))


@pytest.fixture(scope="module")
def yolov8_onnx() -> Path:
    if not YOLOV8_ONNX.is_file():
        pytest.skip("../shared/models/ultralytics is not present")
    return YOLOV8_ONNX


def detect_as_coco(detector, images: list[Path]) -> list[dict]:
    entries = []
    for path in images:
        entries += detector.detect(path).to_coco(0, file_name=path.name)
    return entries


# --- small graphs -------------------------------------------------------------------------------

def constant_output_graph(path: Path, output: np.ndarray, input_hw=(64, 64), metadata: dict | None = None,
                          extra_ops: tuple[str, ...] = (), input_shape=None, outputs: int = 1) -> Path:
    """images [1,3,H,W] -> ``output`` + 0 * mean(images): a fixed head output that still reads the input.

    ``extra_ops``: "Exp" adds an Exp node on the path (as an in-graph YOLOX box decode has).
    """
    h, w = input_hw
    out = np.asarray(output, np.float32)
    nodes = [helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),        # [] over all axes
             helper.make_node("Mul", ["mean", "zero"], ["nothing"])]
    last = "nothing"
    if "Exp" in extra_ops:
        nodes += [helper.make_node("Exp", [last], ["one"]), helper.make_node("Sub", ["one", "unit"], ["zero2"])]
        last = "zero2"
    names = [f"output{i}" for i in range(outputs)]
    nodes += [helper.make_node("Add", ["head", last], [n]) for n in names]
    inits = [numpy_helper.from_array(out, "head"), numpy_helper.from_array(np.float32(0.0), "zero"),
             numpy_helper.from_array(np.float32(1.0), "unit")]
    shape = input_shape or [1, 3, h, w]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(out.shape)) for n in names],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def ultralytics_meta(**extra: str) -> dict:
    """Metadata as Ultralytics writes it (every value a string); ``extra`` replaces entries."""
    meta = {"author": "Ultralytics", "task": "detect", "stride": "32", "imgsz": "[64, 64]", "batch": "1",
            "names": "{0: 'person', 1: 'bicycle', 2: 'car'}", "end2end": "False"}
    meta.update(extra)
    return meta


def grey(h=64, w=64) -> np.ndarray:
    return np.full((h, w, 3), 114, np.uint8)


# --- the real Ultralytics export ------------------------------------------------------------------

def test_yolov8_onnx_spec_from_its_metadata(yolov8_onnx):
    spec = spec_from_third_party_onnx(yolov8_onnx)
    assert spec.head.kind == "ultralytics_decoded" and spec.head.output_names == ("output0",)
    assert spec.input_name == "images" and spec.input_size == (320, 320)
    assert spec.num_classes == 80 and spec.class_names[:3] == ("person", "bicycle", "car")
    assert spec.color_order == "RGB" and spec.normalization.scale == pytest.approx(1 / 255)
    assert spec.resize.mode == "letterbox" and spec.resize.pad_value == 114
    pp = spec.postprocess
    assert (pp.conf_threshold, pp.iou_threshold, pp.nms, pp.pre_nms_topk, pp.max_detections) == (0.25, 0.7, True, 30000, 300)
    header = read_onnx_header(yolov8_onnx)
    assert not has_edgekit_spec(header) and header.metadata["task"] == "detect"


@pytest.mark.parametrize("conf", [0.25, 0.05])
def test_yolov8_onnx_matches_ultralytics_predictions(yolov8_onnx, conf):
    upstream = load_predictions(ULTRALYTICS_DIR / f"yolov8n-coco8.onnx.preds.conf{conf}.json")
    with Detector.load(yolov8_onnx, conf_threshold=conf) as detector:
        ours = detect_as_coco(detector, parity_images())
    stats = match_upstream(upstream, ours, conf_threshold=conf)
    assert stats.upstream == len(upstream) > 10
    assert stats.matched_fraction >= 0.98, stats.summary()
    # measured: every box identical to 1e-4 px and score (ONNX Runtime on both sides)
    assert stats.strict_fraction >= 0.98, stats.summary()
    assert stats.extra <= max(1, len(upstream) // 50), stats.summary()


def test_parity_helper_flags_a_shifted_box_and_a_class_flip():
    up = [{"file_name": "a.jpg", "category_id": 1, "bbox": [10, 10, 100, 100], "score": 0.9},
          {"file_name": "a.jpg", "category_id": 2, "bbox": [200, 200, 50, 50], "score": 0.5},
          {"file_name": "b.jpg", "category_id": 0, "bbox": [0, 0, 20, 20], "score": 0.26}]
    ours = [{"file_name": "a.jpg", "category_id": 1, "bbox": [12, 10, 100, 100], "score": 0.9},   # IoU 0.96
            {"file_name": "a.jpg", "category_id": 3, "bbox": [200, 200, 50, 50], "score": 0.5}]   # class flip
    stats = match_upstream(up, ours, conf_threshold=0.25)
    assert (stats.upstream, stats.ours, stats.matched, stats.strict, stats.extra) == (3, 2, 1, 0, 1)
    assert stats.near_threshold == 1 and stats.min_iou == pytest.approx(98 * 100 / (2 * 10000 - 9800))
    assert match_upstream(up[:1], ours[:1], iou_min=0.97).matched == 0


# --- layouts from small graphs ----------------------------------------------------------------------

def test_end_to_end_output_with_ultralytics_metadata(tmp_path):
    rows = np.zeros((1, 300, 6), np.float32)
    rows[0, 0] = [10, 12, 40, 50, 0.9, 2]
    rows[0, 1] = [10, 12, 40, 51, 0.8, 2]          # overlaps row 0 heavily: kept, there is no NMS
    rows[0, 2] = [0, 0, 8, 8, 0.2, 1]              # below conf 0.25
    path = constant_output_graph(tmp_path / "e2e.onnx", rows, metadata=ultralytics_meta(end2end="True"))
    spec = spec_from_third_party_onnx(path)
    assert spec.head.kind == "e2e_xyxy" and spec.postprocess.nms is False and spec.num_classes == 3
    with Detector.load(path) as detector:
        found = detector.detect(grey())
    np.testing.assert_allclose(found.boxes, rows[0, :2, :4])
    np.testing.assert_allclose(found.scores, [0.9, 0.8])
    np.testing.assert_array_equal(found.labels, [2, 2])


def test_ultralytics_output_boxes_map_back_through_the_letterbox(tmp_path):
    out = np.zeros((1, 7, 84), np.float32)        # 3 classes, 64x64 -> 64 + 16 + 4 cells
    out[0, :, 5] = [32, 32, 20, 10, 0.1, 0.7, 0.2]
    path = constant_output_graph(tmp_path / "v8.onnx", out, metadata=ultralytics_meta())
    with Detector.load(path) as detector:
        found = detector.detect(grey(32, 64))      # 64x32 image -> scale 1, 16 px padding on top
    np.testing.assert_allclose(found.boxes, [[22, 27 - 16, 42, 37 - 16]])
    np.testing.assert_array_equal(found.labels, [1])


def classic_output(nc: int = 80, anchors: int = 3, hw=(64, 64)) -> np.ndarray:
    n = anchors * grid_cells(hw)
    out = np.zeros((1, n, 5 + nc), np.float32)
    out[0, 7, :7] = [30, 20, 10, 6, 0.8, 0.1, 0.9]  # obj 0.8 x class 1 0.9 = 0.72
    return out


def test_classic_yolov5_output_is_ambiguous_without_family(tmp_path):
    path = constant_output_graph(tmp_path / "yolov5.onnx", classic_output())
    with pytest.raises(SpecError) as info:
        spec_from_third_party_onnx(path)
    message = str(info.value)
    assert "\n" not in message and "--family yolov5|yolox" in message and "--names FILE" in message
    assert "3 anchors per cell" in message
    with pytest.raises(SpecError, match=r"--family yolov5\|yolox"):
        Detector.load(path)


def test_ultralytics_export_with_its_metadata_stripped(tmp_path, yolov8_onnx):
    """The real export without metadata: an error asking for --family ultralytics; with it (and --names), the same
    spec and the same detections as the file with its metadata."""
    model = onnx.load(str(yolov8_onnx))
    with_meta = spec_from_third_party_onnx(yolov8_onnx)
    del model.metadata_props[:]
    stripped = tmp_path / "stripped.onnx"
    onnx.save(model, str(stripped))
    with pytest.raises(SpecError) as info:
        spec_from_third_party_onnx(stripped)
    assert "--family ultralytics --names FILE (80 class names)" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(SpecError, match="needs --names FILE"):
        spec_from_third_party_onnx(stripped, family="ultralytics")
    with pytest.raises(SpecError, match="--names has 2 classes, the output"):
        spec_from_third_party_onnx(stripped, family="ultralytics", class_names=("a", "b"))
    spec = spec_from_third_party_onnx(stripped, family="ultralytics", class_names=with_meta.class_names)
    assert spec == with_meta
    image = SHARED_DIR / "datasets" / "coco8" / "images" / "train" / "000000000009.jpg"  # 7 boxes at conf 0.25
    with Detector.from_third_party_onnx(stripped, spec) as ours, Detector.load(yolov8_onnx) as reference:
        a, b = ours.detect(image), reference.detect(image)
    assert len(b) > 0
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_family_ultralytics_refuses_another_layout(tmp_path):
    path = constant_output_graph(tmp_path / "yolov5.onnx", classic_output())
    with pytest.raises(SpecError, match=r"--family ultralytics expects the decoded output \[B, 4\+nc, 84\]"):
        spec_from_third_party_onnx(path, family="ultralytics", class_names=COCO80)


def test_classic_yolov5_output_with_family(tmp_path):
    path = constant_output_graph(tmp_path / "yolov5.onnx", classic_output())
    spec = spec_from_third_party_onnx(path, family="yolov5", class_names=COCO80)
    assert spec.head.kind == "yolo_decoded" and spec.class_names == COCO80 and spec.color_order == "RGB"
    assert (spec.postprocess.iou_threshold, spec.postprocess.max_detections) == (0.45, 1000)
    default_names = spec_from_third_party_onnx(path, family="yolov5")
    assert default_names.class_names[:2] == ("class0", "class1") and default_names.num_classes == 80
    with Detector.from_third_party_onnx(path, spec) as detector:
        found = detector.detect(grey())
    np.testing.assert_allclose(found.boxes, [[25, 17, 35, 23]])
    np.testing.assert_allclose(found.scores, [0.72], rtol=1e-6)
    np.testing.assert_array_equal(found.labels, [1])


def test_yolox_raw_and_decoded_exports(tmp_path):
    raw = constant_output_graph(tmp_path / "yolox_raw.onnx", classic_output(nc=3, anchors=1))
    with pytest.raises(SpecError, match="one candidate per cell over strides 8/16/32, as YOLOX"):
        spec_from_third_party_onnx(raw)
    spec = spec_from_third_party_onnx(raw, family="yolox")
    assert spec.head.kind == "yolox_flat" and spec.head.params == {"strides": [8, 16, 32]}
    assert spec.color_order == "BGR" and spec.normalization.scale == 1.0 and spec.resize.pad_value == 114
    # YOLOX pads bottom/right; an edgekit whose ResizeSpec has no ``align`` yet can only centre
    assert getattr(spec.resize, "align", "top_left") == "top_left"
    decoded = constant_output_graph(tmp_path / "yolox_decoded.onnx", classic_output(nc=3, anchors=1),
                                    extra_ops=("Exp",))
    assert spec_from_third_party_onnx(decoded, family="yolox").head.kind == "yolo_decoded"
    with pytest.raises(SpecError, match="--family yolox expects 84 candidates"):
        spec_from_third_party_onnx(constant_output_graph(tmp_path / "v5.onnx", classic_output(nc=3)), family="yolox")


# --- refusals ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("meta,message", [
    ({"task": "segment"}, "task 'segment'; edgekit runs detection models"),
    ({"names": "__import__('os').system('true')"}, "must be a dict literal"),
    ({"names": "{0: 'a', 1: __import__('os')}"}, "is not a literal"),
    ({"names": "{0: 1, 1: 2, 2: 3}"}, "must map class indices"),
    ({"names": "{1: 'a', 2: 'b', 3: 'c'}"}, "class indices 0..2"),
    ({"names": repr({i: f"c{i}" for i in range(5)})}, "expected [B, 9, N]"),
    # [1, 7, 84] is the decoded layout of 3 classes; metadata saying end to end contradicts it
    ({"end2end": "True"}, "metadata end2end=True promises an end-to-end output [B, K, 6], but output"),
])
def test_bad_ultralytics_metadata_is_refused(tmp_path, meta, message):
    out = np.zeros((1, 7, 84), np.float32)
    path = constant_output_graph(tmp_path / "bad.onnx", out, metadata=ultralytics_meta(**meta))
    with pytest.raises(SpecError) as info:
        spec_from_third_party_onnx(path)
    assert message in str(info.value) and "\n" not in str(info.value) and "bad.onnx" in str(info.value)


def test_family_and_names_count_mismatches(tmp_path):
    ultra = constant_output_graph(tmp_path / "u.onnx", np.zeros((1, 7, 84), np.float32), metadata=ultralytics_meta())
    with pytest.raises(SpecError, match="carries Ultralytics metadata, which describes it; drop --family"):
        spec_from_third_party_onnx(ultra, family="yolov5")
    with pytest.raises(SpecError, match="--names has 2 classes, the file's metadata 3"):
        spec_from_third_party_onnx(ultra, class_names=("a", "b"))
    assert spec_from_third_party_onnx(ultra, class_names=("x", "y", "z")).class_names == ("x", "y", "z")
    plain = constant_output_graph(tmp_path / "p.onnx", classic_output(nc=3))
    with pytest.raises(SpecError, match=r"--names has 80 classes, the output \[B, N, 8\] has 3"):
        spec_from_third_party_onnx(plain, family="yolov5", class_names=COCO80)
    with pytest.raises(SpecError, match="--family 'fastestdet' does not describe"):
        spec_from_third_party_onnx(plain, family="fastestdet")


def test_unrecognised_candidate_count_names_both_expectations(tmp_path):
    path = constant_output_graph(tmp_path / "odd.onnx", np.zeros((1, 100, 8), np.float32))
    with pytest.raises(SpecError, match=r"N=100 is not the candidate count of a 64x64 YOLOv5 \(252\) or YOLOX \(84\)"):
        spec_from_third_party_onnx(path)


def test_dynamic_input_size_needs_imgsz(tmp_path):
    out = np.zeros((1, 7, 84), np.float32)
    dynamic = [1, 3, "height", "width"]
    no_meta = constant_output_graph(tmp_path / "dyn.onnx", np.zeros((1, 252, 85), np.float32), input_shape=dynamic)
    with pytest.raises(SpecError, match=r"dynamic height/width \[1, 3, height, width\] and no imgsz metadata; pass --imgsz"):
        spec_from_third_party_onnx(no_meta, family="yolov5")
    assert spec_from_third_party_onnx(no_meta, family="yolov5", input_size=(64, 64)).input_size == (64, 64)
    with_meta = constant_output_graph(tmp_path / "dyn_u.onnx", out, input_shape=dynamic,
                                      metadata=ultralytics_meta(imgsz="[64, 64]"))
    assert spec_from_third_party_onnx(with_meta).input_size == (64, 64)
    fixed = constant_output_graph(tmp_path / "fixed.onnx", out, metadata=ultralytics_meta())
    with pytest.raises(SpecError, match="the input is fixed at 64x64; --imgsz 96 does not match it"):
        spec_from_third_party_onnx(fixed, input_size=(96, 96))


def test_file_level_refusals(tmp_path):
    with pytest.raises(ModelFileError, match="ONNX model file not found"):
        spec_from_third_party_onnx(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all \x00\xff")
    with pytest.raises(ModelFileError, match="junk.onnx: not a loadable ONNX model"):
        spec_from_third_party_onnx(tmp_path / "junk.onnx")
    two = constant_output_graph(tmp_path / "two.onnx", np.zeros((1, 7, 84), np.float32), outputs=2)
    with pytest.raises(ModelFileError, match=r"outputs \['output0', 'output1'\]; edgekit reads single-output"):
        spec_from_third_party_onnx(two)
    four_d = constant_output_graph(tmp_path / "4d.onnx", np.zeros((1, 85, 4, 4), np.float32))
    with pytest.raises(ModelFileError, match=r"shape \[1, 85, 4, 4\]; expected \[B, 4\+nc, N\]"):
        spec_from_third_party_onnx(four_d)
    gray = constant_output_graph(tmp_path / "gray.onnx", np.zeros((1, 7, 84), np.float32), input_shape=[1, 1, 64, 64])
    with pytest.raises(ModelFileError, match=r"expected one image input \[B, 3, H, W\]"):
        spec_from_third_party_onnx(gray)


def test_edgekit_exported_file_keeps_its_embedded_spec(tmp_path):
    out = np.zeros((1, 7, 84), np.float32)
    spec = ModelSpec(family="mine", input_size=(64, 64), class_names=("a", "b", "c"),
                     head=HeadSpec("ultralytics_decoded", ("output0",)))
    path = constant_output_graph(tmp_path / "own.onnx", out, metadata={ONNX_METADATA_KEY: spec.to_json(),
                                                                       **ultralytics_meta()})
    assert has_edgekit_spec(read_onnx_header(path))
    with Detector.load(path) as detector:
        assert detector.spec.family == "mine"


def test_metadata_parsers():
    assert parse_ultralytics_names("{0: 'person', 1: \"traffic light\"}", "m") == ("person", "traffic light")
    assert parse_imgsz("[320, 256]", "m") == (320, 256) and parse_imgsz("640", "m") == (640, 640)
    for bad in ("[320, x]", "(1, 2, 3)", ""):
        with pytest.raises(SpecError, match="metadata 'imgsz'"):
            parse_imgsz(bad, "m")
    with pytest.raises(SpecError):
        parse_ultralytics_names("{True: 'a'}", "m")   # bool is not a class index
    assert grid_cells((320, 320)) == 2100 and grid_cells((40, 72)) == 66 == sum(
        math.ceil(40 / s) * math.ceil(72 / s) for s in (8, 16, 32))


def test_yolox_raw_export_boxes_map_back_through_a_top_left_letterbox(tmp_path):
    out = np.zeros((1, 84, 8), np.float32)          # 64x64 input, 3 classes
    out[0, 9] = [0.5, 0.5, math.log(2), 0.0, 0.9, 0.1, 0.8, 0.1]  # level 0 (stride 8), row 1, column 1
    path = constant_output_graph(tmp_path / "yolox.onnx", out)
    spec = spec_from_third_party_onnx(path, family="yolox")
    if not hasattr(spec.resize, "align"):
        pytest.skip("this edgekit's ResizeSpec has no top-left letterbox")
    with Detector.from_third_party_onnx(path, spec) as detector:
        found = detector.detect(grey(32, 64))      # 64 wide, 32 high: scale 1, padding below the image only
    # centre ((0.5 + 1) * 8, (0.5 + 1) * 8) = (12, 12), size (exp(ln 2) * 8, 8) = (16, 8); no vertical offset
    np.testing.assert_allclose(found.boxes, [[4, 8, 20, 16]], atol=1e-5)
    np.testing.assert_allclose(found.scores, [0.72], rtol=1e-6)
    np.testing.assert_array_equal(found.labels, [1])
