"""CLI on third-party ONNX files with no flags: detect, validate and convert read the file's own description.

Oracle: Ultralytics' own predictions for ``../shared/models/ultralytics/yolov8n-coco8.onnx``
(``yolov8n-coco8.onnx.preds.conf0.25.json``), matched with ``tests.parity_helpers.match_upstream``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgekit.runtime.backends import get_runner_class
from edgekit.runtime.detector import Detector
from edgekit.runtime.onnx_import import spec_from_third_party_onnx
from edgekit.validate.datasets import load_dataset
from edgekit.validate.run import above, validate_onnx_file
from tests.conftest import SHARED_DIR
from tests.helpers import one_error_line, run_cli
from tests.parity_helpers import load_predictions, match_upstream
from tests.runtime.test_onnx_import import (
    ULTRALYTICS_DIR,
    YOLOV8_ONNX,
    classic_output,
    constant_output_graph,
    parity_images,
)

COCO8 = SHARED_DIR / "datasets" / "coco8"
#: coco8's data.yaml uses COCO names; this coco8-trained file carries VOC-style names for six classes
CLASS_MAP = {"motorcycle": "motorbike", "airplane": "aeroplane", "couch": "sofa", "potted plant": "pottedplant",
             "dining table": "diningtable", "tv": "tvmonitor"}


@pytest.fixture(scope="module")
def yolov8_onnx() -> Path:
    if not YOLOV8_ONNX.is_file() or not COCO8.is_dir():
        pytest.skip("../shared/models/ultralytics or ../shared/datasets/coco8 is not present")
    return YOLOV8_ONNX


run = run_cli
assert_one_line_error = one_error_line


def upstream(conf: float = 0.25) -> list[dict]:
    return load_predictions(ULTRALYTICS_DIR / f"yolov8n-coco8.onnx.preds.conf{conf}.json")


def detect_json(model, tmp_path, capsys, *extra) -> list[dict]:
    out_json = tmp_path / "dets.json"
    code, out, err = run(["detect", model, *parity_images(), "--json", out_json, *extra], capsys)
    assert code == 0, err
    # file_name is the path relative to the inputs' common folder; the upstream files hold base names
    return [{**e, "file_name": Path(e["file_name"]).name} for e in json.loads(out_json.read_text())]


def assert_matches_upstream(ours: list[dict]) -> None:
    stats = match_upstream(upstream(), ours, conf_threshold=0.25)
    assert stats.upstream > 10
    assert stats.matched_fraction >= 0.98, stats.summary()
    assert stats.strict_fraction >= 0.9, stats.summary()


# --- detect ----------------------------------------------------------------------------------------

def test_detect_ultralytics_onnx_without_flags(yolov8_onnx, tmp_path, capsys):
    assert_matches_upstream(detect_json(yolov8_onnx, tmp_path, capsys))


def test_detect_ambiguous_onnx_asks_for_family(tmp_path, capsys):
    from PIL import Image

    path = constant_output_graph(tmp_path / "plain.onnx", classic_output())

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "img.png")
    code, out, err = run(["detect", path, tmp_path / "img.png"], capsys)
    assert_one_line_error(code, err, "pass --family yolov5|yolox (and --names FILE with 80 classes)")


def test_detect_with_family_and_names(tmp_path, capsys):
    from PIL import Image

    path = constant_output_graph(tmp_path / "plain.onnx", classic_output(nc=2))
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    Image.fromarray(np.full((64, 64, 3), 114, np.uint8)).save(tmp_path / "img.png")
    code, out, err = run(["detect", path, tmp_path / "img.png", "--family", "yolov5", "--names", tmp_path / "names.txt",
                          "--json", tmp_path / "d.json"], capsys)
    assert code == 0, err
    assert "1 detections: dog 0.72" in out
    entries = json.loads((tmp_path / "d.json").read_text())
    assert len(entries) == 1 and entries[0]["category_id"] == 1
    np.testing.assert_allclose(entries[0]["bbox"], [25, 17, 10, 6], atol=1e-3)


def test_detect_built_in_family_route_still_works_for_raw_heads(tmp_path, capsys):
    """--family fastestdet on a per-level raw head is the built-in family's spec, not the importer's."""
    fastestdet = SHARED_DIR / "models" / "fastestdet"
    if not (fastestdet / "FastestDet.onnx").is_file():
        pytest.skip("../shared/models/fastestdet is not present")
    code, out, err = run(["detect", fastestdet / "FastestDet.onnx", fastestdet / "images" / "0.jpg"], capsys)
    assert_one_line_error(code, err, "pass --family FAMILY --names FILE of a built-in family")
    code, out, err = run(["detect", fastestdet / "FastestDet.onnx", fastestdet / "images" / "0.jpg",
                          "--family", "fastestdet", "--names", fastestdet / "coco.names"], capsys)
    assert code == 0 and "person" in out, err


# --- validate --------------------------------------------------------------------------------------

def test_validate_onnx_file_detections_are_the_upstream_ones(yolov8_onnx):
    """validate's run of the bare file, seen above the deployment threshold, is among Ultralytics' own predictions.

    validate runs the mAP protocol (NMS IoU 0.6, not the deployment 0.7), which suppresses a few more
    overlapping boxes: every box it keeps must be an upstream box, not every upstream box is kept."""
    spec = spec_from_third_party_onnx(yolov8_onnx)
    dataset = load_dataset(COCO8)
    report = validate_onnx_file(yolov8_onnx, spec, dataset, class_map=CLASS_MAP)
    assert [r.name for r in report.runs] == ["onnxruntime/fp32"] and report.reference == "onnxruntime/fp32"
    run_ = report.runs[0]
    assert 0.0 < run_.metrics.map_50_95 <= run_.metrics.map_50 <= 1.0
    names = {item.image_id: Path(dataset.image_path(item)).name for item in dataset.items}
    ours = []
    for image_id, dets in above(run_.detections, 0.25).items():
        ours += dets.to_coco(image_id, file_name=names[image_id])
    coco8_files = set(names.values())
    stats = match_upstream([p for p in upstream() if p["file_name"] in coco8_files], ours, conf_threshold=0.25)
    assert stats.ours >= 10 and stats.matched == stats.ours and stats.extra == 0, stats.summary()


def test_validate_cli_on_onnx_file(yolov8_onnx, tmp_path, capsys):
    (tmp_path / "map.json").write_text(json.dumps(CLASS_MAP))
    code, out, err = run(["validate", yolov8_onnx, "--data", COCO8, "--class-map", tmp_path / "map.json",
                          "--json", tmp_path / "v.json", "--report", tmp_path / "report"], capsys)
    assert code == 0, err
    assert "| onnxruntime/fp32 |" in out
    data = json.loads((tmp_path / "v.json").read_text())
    assert [r["name"] for r in data["runs"]] == ["onnxruntime/fp32"] and data["runs"][0]["map_50_95"] > 0
    assert (tmp_path / "report" / "report.md").is_file()


def test_validate_ambiguous_onnx_is_one_error(tmp_path, capsys):
    path = constant_output_graph(tmp_path / "plain.onnx", classic_output())
    code, out, err = run(["validate", path, "--data", tmp_path], capsys)
    assert_one_line_error(code, err, "--family yolov5|yolox")


# --- convert ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("target,backend,precision", [("intel-cpu", "openvino", "fp32"),
                                                      ("raspberry-pi-5", "ncnn", "fp16"),
                                                      ("raspberry-pi-5", "ncnn", "fp32")])
def test_convert_third_party_onnx_then_detect(yolov8_onnx, tmp_path, capsys, target, backend, precision):
    if not get_runner_class(backend).is_available():
        pytest.skip(f"{backend} is not installed")
    out_dir = tmp_path / "art"
    code, out, err = run(["convert", yolov8_onnx, "--target", target, "--precision", precision, "-o", out_dir], capsys)
    assert code == 0, err
    assert f"build   {backend}/{precision}: max rel error vs ONNX Runtime on yolov8n-coco8.onnx" in out
    manifest = json.loads((out_dir / "edgekit.json").read_text())
    assert manifest["spec"]["head"]["kind"] == "ultralytics_decoded"
    assert manifest["info"]["parity"][f"{backend}/{precision}"]["checked"] is True
    assert_matches_upstream(detect_json(out_dir, tmp_path, capsys, "--backend", backend, "--precision", precision))


def test_convert_int8_from_third_party_onnx_runs_without_torch_model(yolov8_onnx, tmp_path, capsys):
    """INT8 calibrates the ONNX graph itself: it works from a third-party file; detections are checked loosely."""
    out_dir = tmp_path / "art"
    code, out, err = run(["convert", yolov8_onnx, "--target", "onnxruntime-cpu", "--precision", "int8",
                          "--calib-images", "16", "--force-calib", "-o", out_dir], capsys)
    assert code == 0, err
    with Detector.load(out_dir, precision="int8") as detector:
        ours = []
        for path in parity_images():
            ours += detector.detect(path).to_coco(0, file_name=path.name)
    stats = match_upstream(upstream(), ours, iou_min=0.5, score_tol=0.1, conf_threshold=0.25)
    assert stats.matched_fraction >= 0.7, stats.summary()


def test_convert_refusals(tmp_path, capsys):
    ambiguous = constant_output_graph(tmp_path / "plain.onnx", classic_output())
    code, out, err = run(["convert", ambiguous, "--target", "onnxruntime-cpu", "-o", tmp_path / "a"], capsys)
    assert_one_line_error(code, err, "--family yolov5|yolox")
    assert not (tmp_path / "a").exists()
    code, out, err = run(["convert", tmp_path / "missing.onnx", "--target", "onnxruntime-cpu"], capsys)
    assert_one_line_error(code, err, "missing.onnx: no such ONNX file")


def test_convert_small_classic_graph_with_family(tmp_path, capsys):
    path = constant_output_graph(tmp_path / "plain.onnx", classic_output(nc=2))
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    code, out, err = run(["convert", path, "--target", "onnxruntime-cpu", "--family", "yolov5", "--names",
                          tmp_path / "names.txt", "-o", tmp_path / "art"], capsys)
    assert code == 0, err
    with Detector.load(tmp_path / "art") as detector:
        assert detector.spec.head.kind == "yolo_decoded" and detector.spec.class_names == ("cat", "dog")
        found = detector.detect(np.full((64, 64, 3), 114, np.uint8))
    np.testing.assert_allclose(found.boxes, [[25, 17, 35, 23]])


def test_inspect_reads_checkpoints_and_third_party_onnx(tmp_path, yolov8_onnx, capsys):
    """inspect shows the spec edgekit reads from a file, with the same --family/--names as detect: the real
    classic yolov5n.pt (no flags), the Ultralytics export (its metadata), and that export stripped of metadata."""
    import onnx

    yolov5n = ULTRALYTICS_DIR / "yolov5n.pt"
    code, out, err = run_cli(["inspect", yolov5n], capsys)
    assert code == 0, err
    assert "family: yolov5" in out and "head: yolo_anchor" in out and "(80 in all)" in out
    assert "input size from edgekit's default" in out  # classic YOLOv5 files record no training size
    code, out, err = run_cli(["inspect", yolov8_onnx], capsys)
    assert code == 0 and "head: ultralytics_decoded -> output0" in out and "[B, 3, 320, 320]" in out, err
    model = onnx.load(str(yolov8_onnx))
    names = spec_from_third_party_onnx(yolov8_onnx).class_names
    del model.metadata_props[:]
    stripped = tmp_path / "stripped.onnx"
    onnx.save(model, str(stripped))
    code, _, err = run_cli(["inspect", stripped], capsys)
    one_error_line(code, err, "stripped.onnx", "--family ultralytics --names FILE")
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    code, out, err = run_cli(["inspect", stripped, "--family", "ultralytics", "--names", tmp_path / "names.txt"],
                             capsys)
    assert code == 0 and "head: ultralytics_decoded" in out, err
    code, _, err = run_cli(["inspect", tmp_path / "missing.pt"], capsys)
    one_error_line(code, err, "missing.pt", "no such checkpoint")


def test_convert_refuses_an_imgsz_the_onnx_file_does_not_have(fastestdet_dir, tmp_path, capsys):
    """`convert FastestDet.onnx --family fastestdet --imgsz 640` wrote a 352 px artifact with exit 0 (an ONNX graph's
    input size is its own; the Ultralytics path already refused); an edgekit-exported ONNX did the same."""
    out = tmp_path / "art"
    code, _, err = run_cli(["convert", fastestdet_dir / "FastestDet.onnx", "--family", "fastestdet", "--names",
                            fastestdet_dir / "coco.names", "--target", "onnxruntime-cpu", "--imgsz", "640", "-o", out],
                           capsys)
    one_error_line(code, err, "FastestDet.onnx: its input is 352x352; --imgsz 640 does not match it")
    assert not out.exists()
    code, _, err = run_cli(["convert", fastestdet_dir / "FastestDet.onnx", "--family", "fastestdet", "--names",
                            fastestdet_dir / "coco.names", "--target", "onnxruntime-cpu", "--imgsz", "352", "-o", out],
                           capsys)
    assert code == 0, err
    code, _, err = run_cli(["convert", out / "model.onnx", "--target", "onnxruntime-cpu", "--imgsz", "640", "-o",
                            tmp_path / "again"], capsys)
    one_error_line(code, err, "model.onnx: its input is 352x352; --imgsz 640 does not match it")
    assert not (tmp_path / "again").exists()
