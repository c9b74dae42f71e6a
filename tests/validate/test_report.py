"""The drift report folder: numbers equal the ValidationReport's, Δ per class is right, the markdown
names every run, plots and samples are real images, and a failed write leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit.errors import EdgekitError
from edgekit.runtime.artifact import Manifest
from edgekit.runtime.detections import Detections
from edgekit.spec import PostprocessSpec
from edgekit.validate import report as report_module
from edgekit.validate.agreement import AgreementResult
from edgekit.validate.coco_eval import MapResult
from edgekit.validate.datasets import Annotation, Dataset
from edgekit.validate.report import write_drift_report
from edgekit.validate.run import ModelRun, ValidationReport
from tests.onnx_graphs import fastestdet_like_spec

CLASSES = ("cat", "dog", "bird")
CONF = 0.25

# Ground truth: image id -> (xyxy boxes, labels). Image 5 carries the below-threshold junk.
GROUND_TRUTH = {
    1: ([[10, 10, 50, 40], [60, 20, 110, 70]], [0, 1]),
    2: ([[20, 30, 70, 80]], [2]),
    3: ([[5, 5, 40, 40], [50, 10, 90, 50], [15, 50, 60, 85]], [0, 1, 2]),
    4: ([[30, 20, 80, 60]], [1]),
    5: ([[40, 30, 100, 80]], [0]),
}

FLOAT_LAYERS = {"/head/conv_cls/Conv": "sensitivity: +0.8 mAP points when kept in float",
                "/backbone/stem/Conv": "first layer (user choice)"}
INT8_INFO = {"method": "entropy", "float_layers": FLOAT_LAYERS, "calibration_images": 300, "drift_budget": 1.0}


def make_dataset(folder: Path) -> Dataset:
    """Five 120x90 images on disk (the samples are drawn on them) with GROUND_TRUTH."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    items = []
    for image_id, (boxes, labels) in GROUND_TRUTH.items():
        name = f"img_{image_id:03d}.jpg"
        Image.fromarray(rng.integers(60, 200, (90, 120, 3), dtype=np.uint8)).save(folder / name)
        items.append(Annotation(image_id=image_id, file_name=name, width=120, height=90,
                                boxes=np.array(boxes, np.float32), labels=np.array(labels, np.int64)))
    return Dataset(root=folder, image_dir=folder, class_names=CLASSES, items=tuple(items), category_ids=(1, 2, 3))


def detections(boxes, scores, labels) -> Detections:
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32), np.array(labels))


def gt_detections(score: float = 0.9, drop: dict[int, list[int]] | None = None,
                  extra: dict[int, tuple[list, list, list]] | None = None) -> dict[int, Detections]:
    """The ground truth as detections, minus ``drop[image]`` box indices, plus ``extra[image]`` boxes."""
    drop, extra = drop or {}, extra or {}
    out = {}
    for image_id, (boxes, labels) in GROUND_TRUTH.items():
        keep = [i for i in range(len(boxes)) if i not in drop.get(image_id, [])]
        b = [boxes[i] for i in keep]
        s = [score] * len(keep)
        lab = [labels[i] for i in keep]
        if image_id in extra:
            b += extra[image_id][0]
            s += extra[image_id][1]
            lab += extra[image_id][2]
        order = np.argsort(-np.array(s, np.float32), kind="stable")
        out[image_id] = detections(np.array(b, np.float32).reshape(-1, 4)[order], np.array(s)[order],
                                   np.array(lab)[order])
    return out


def agreement_result(precision: float, recall: float, mean_iou: float, score_delta: float,
                     flips: dict[tuple[int, int], int] | None = None) -> AgreementResult:
    flips = flips or {}
    return AgreementResult(precision=precision, recall=recall, mean_iou=mean_iou, mean_abs_score_delta=score_delta,
                           class_flips=sum(flips.values()), map_50_95=0.9, map_50=0.95, num_candidate=10,
                           num_reference=8, num_matched=7, flip_counts=flips)


def metrics(per_class: dict[str, float], map_50: float) -> MapResult:
    return MapResult(float(np.mean(list(per_class.values()))), map_50, dict(per_class),
                     {k: min(1.0, v + 0.3) for k, v in per_class.items()})


# Per-class AP with known differences from the reference: openvino/int8 loses 5 points on cat and
# 9 on bird; ncnn/int8 gains 2 on dog and loses 20 on cat.
REF_AP = {"cat": 0.60, "dog": 0.50, "bird": 0.40}
OV_AP = {"cat": 0.55, "dog": 0.50, "bird": 0.31}
NCNN_AP = {"cat": 0.40, "dog": 0.52, "bird": 0.40}
EXPECTED_DELTA = {"openvino/int8": {"cat": -0.05, "dog": 0.0, "bird": -0.09},
                  "ncnn/int8": {"cat": -0.20, "dog": 0.02, "bird": 0.0},
                  "onnxruntime/fp32": {"cat": 0.0, "dog": 0.0, "bird": 0.0}}

# Below-threshold junk on image 5 in every int8 run: 6 wrong boxes at score 0.1. Counted, image 5
# would disagree most; the samples must only see boxes above CONF.
JUNK = ([[0, 0, 10, 10]] * 6, [0.1] * 6, [2] * 6)


def make_report(int8: bool = True) -> ValidationReport:
    reference = ModelRun("torch/fp32", gt_detections(), latency_ms=20.0, inference_ms=float("nan"), size_bytes=0,
                         metrics=metrics(REF_AP, 0.80), agreement=agreement_result(1.0, 1.0, 1.0, 0.0))
    ort = ModelRun("onnxruntime/fp32", gt_detections(), latency_ms=12.5, inference_ms=10.0, size_bytes=4_500_000,
                   metrics=metrics(REF_AP, 0.80), agreement=agreement_result(1.0, 1.0, 0.9999, 0.0001))
    runs = [reference, ort]
    if int8:
        # openvino/int8: image 3 loses its cat and dog and puts a cat on the dog (a class flip), image 1
        # loses its dog.
        ov = ModelRun("openvino/int8", gt_detections(drop={3: [0, 1], 1: [1]},
                                                     extra={3: ([[50, 10, 90, 50]], [0.6], [0]), 5: JUNK}),
                      latency_ms=6.0, inference_ms=4.0, size_bytes=1_200_000,
                      metrics=metrics(OV_AP, 0.70), agreement=agreement_result(0.85, 0.8, 0.91, 0.03, {(1, 0): 1}))
        # ncnn/int8: image 4's box flips class, image 3 loses its bird.
        ncnn = ModelRun("ncnn/int8", gt_detections(drop={4: [0], 3: [2]},
                                                   extra={4: ([[30, 20, 80, 60]], [0.7], [0]), 5: JUNK}),
                        latency_ms=8.0, inference_ms=7.0, size_bytes=1_300_000,
                        metrics=metrics(NCNN_AP, 0.75), agreement=agreement_result(0.9, 0.88, 0.95, 0.02, {(1, 0): 1}))
        runs += [ov, ncnn]
    else:
        # Without int8 runs the worst-agreeing run is the one compared: this fp16 one.
        fp16 = ModelRun("openvino/fp16", gt_detections(drop={2: [0]}), latency_ms=9.0, inference_ms=8.0,
                        size_bytes=2_300_000, metrics=metrics(OV_AP, 0.7),
                        agreement=agreement_result(0.9, 0.8, 0.97, 0.01))
        runs += [fp16]
    return ValidationReport(dataset="/data/pets", reference="torch/fp32", runs=runs,
                            skipped=[("tensorrt/int8", "backend not installed here")])


# Unmatched boxes above CONF per image and int8 run = its boxes + the reference's - 2 x matched:
# image 3: openvino 2 + 3 - 2 (bird only) = 3, ncnn 2 + 3 - 4 = 1 -> 4 in all; image 4: the ncnn flip,
# 1 + 1 - 0 = 2; image 1: openvino 1 + 2 - 2 = 1; images 2 and 5: 0.
EXPECTED_UNMATCHED = {3: {"openvino/int8": 3, "ncnn/int8": 1}, 4: {"openvino/int8": 0, "ncnn/int8": 2},
                      1: {"openvino/int8": 1, "ncnn/int8": 0}, 2: {"openvino/int8": 0, "ncnn/int8": 0}}


def make_manifest(int8_info: dict | None = INT8_INFO) -> Manifest:
    spec = fastestdet_like_spec(num_classes=3)
    spec = replace(spec, class_names=CLASSES, postprocess=PostprocessSpec(conf_threshold=CONF))
    info = {"producer": "test", **({"int8": int8_info} if int8_info else {})}
    return Manifest(spec=spec, models=(), files={}, info=info)


def strict_json(path: Path):
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}: not strict JSON")
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


@pytest.fixture()
def dataset(tmp_path) -> Dataset:
    return make_dataset(tmp_path / "data")


@pytest.fixture()
def written(dataset, tmp_path):
    out = tmp_path / "reports" / "drift"
    return out, write_drift_report(make_report(), dataset, out, manifest=make_manifest(), sample_images=3)


def test_files_exist_and_are_what_they_claim(written):
    out, files = written
    assert {"report.json", "report.md", "map_vs_latency.png", "per_class_delta.png"} <= set(files)
    samples = sorted(k for k in files if k.startswith("samples/"))
    assert len(samples) == 3
    for name, path in files.items():
        assert path == out / name and path.is_file() and path.stat().st_size > 0, name
    for name in ("map_vs_latency.png", "per_class_delta.png"):
        assert files[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(files[name]) as image:
            assert image.width >= 500 and image.height >= 400
    for name in samples:
        assert files[name].read_bytes()[:2] == b"\xff\xd8"
    strict_json(files["report.json"])
    # nothing else in the folder, no staging folder left next to it
    assert sorted(p.name for p in out.iterdir()) == sorted(["report.json", "report.md", "map_vs_latency.png",
                                                            "per_class_delta.png", "samples"])
    assert [p.name for p in out.parent.iterdir()] == ["drift"]


def test_json_numbers_equal_the_report_and_deltas_are_right(written):
    out, files = written
    data = strict_json(files["report.json"])
    report = make_report()
    assert data["reference"] == "torch/fp32" and data["dataset"] == "/data/pets"
    assert data["conf_threshold"] == CONF and data["class_names"] == list(CLASSES) and data["num_images"] == 5
    assert [row["name"] for row in data["runs"]] == [run.name for run in report.runs]
    ref = report.run("torch/fp32").metrics
    for row, run in zip(data["runs"], report.runs):
        assert [row["backend"], row["precision"]] == run.name.split("/")
        assert row["is_reference"] == (run.name == "torch/fp32")
        assert row["map_50_95"] == pytest.approx(run.metrics.map_50_95)
        assert row["map_50"] == pytest.approx(run.metrics.map_50)
        assert row["per_class_ap"] == pytest.approx(run.metrics.per_class_ap)
        assert row["per_class_ap_50"] == pytest.approx(run.metrics.per_class_ap_50)
        assert row["delta_map_50_95"] == pytest.approx(run.metrics.map_50_95 - ref.map_50_95)
        assert row["delta_map_50"] == pytest.approx(run.metrics.map_50 - ref.map_50)
        assert row["latency_ms"] == run.latency_ms and row["size_bytes"] == run.size_bytes
        a = run.agreement
        assert row["agreement"]["precision"] == a.precision and row["agreement"]["recall"] == a.recall
        assert row["agreement"]["mean_iou"] == a.mean_iou and row["agreement"]["class_flips"] == a.class_flips
        assert row["agreement"]["mean_abs_score_delta"] == a.mean_abs_score_delta
        expected = EXPECTED_DELTA.get(run.name, {"cat": 0.0, "dog": 0.0, "bird": 0.0})
        assert set(row["delta_per_class_ap"]) == set(CLASSES)
        for name in CLASSES:
            assert row["delta_per_class_ap"][name] == pytest.approx(expected[name], abs=1e-12), (run.name, name)
    by_name = {row["name"]: row for row in data["runs"]}
    assert by_name["torch/fp32"]["inference_ms"] is None  # NaN -> null
    assert by_name["openvino/int8"]["delta_map_50"] == pytest.approx(-0.10)
    assert by_name["openvino/int8"]["delta_map_50_95"] == pytest.approx((-0.05 - 0.09) / 3)
    assert by_name["ncnn/int8"]["agreement"]["flips"] == [{"reference": "dog", "candidate": "cat", "count": 1}]
    assert data["skipped"] == [{"name": "tensorrt/int8", "reason": "backend not installed here"}]
    assert data["int8"] == INT8_INFO
    assert data["float_layers"] == [{"name": n, "reason": why} for n, why in FLOAT_LAYERS.items()]


def test_markdown_has_every_row_layer_and_link(written):
    out, files = written
    md = files["report.md"].read_text(encoding="utf-8")
    for backend, precision in (("torch", "fp32 (reference)"), ("onnxruntime", "fp32"), ("openvino", "int8"),
                               ("ncnn", "int8")):
        assert re.search(rf"^\| {backend} \| {re.escape(precision)} \| 0\.\d{{4}} \|", md, re.M), (backend, md)
    ov_row = next(line for line in md.splitlines() if line.startswith("| openvino | int8 |"))
    cells = [c.strip() for c in ov_row.strip("|").split("|")]
    assert cells[2] == f"{np.mean(list(OV_AP.values())):.4f}" and cells[3] == "0.7000"
    assert cells[4] == f"{(np.mean(list(OV_AP.values())) - 0.5) * 100:+.2f}" and cells[5] == "-10.00"
    assert cells[6:] == ["0.850", "0.800", "0.9100", "0.0300", "1", "1.20", "6.00"]
    assert "| tensorrt | int8 | not run: backend not installed here |" in md
    assert "- tensorrt/int8: backend not installed here" in md
    # per-class table: classes x runs, in points
    bird = next(line for line in md.splitlines() if line.startswith("| bird |"))
    assert [c.strip() for c in bird.strip("|").split("|")] == ["bird", "0.4000", "+0.00", "-9.00", "+0.00"]
    for name, why in FLOAT_LAYERS.items():
        assert f"- `{name}`: {why}" in md
    assert "calibration method: entropy" in md and "calibration images: 300" in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert "map_vs_latency.png" in links and "per_class_delta.png" in links
    assert sum(link.startswith("samples/") for link in links) == 3
    for link in links:
        assert not os.path.isabs(link) and (out / link).is_file(), link


def test_samples_are_the_most_disagreeing_images_above_the_threshold(written, dataset):
    out, files = written
    data = strict_json(files["report.json"])
    # the junk at score 0.1 on image 5 is below CONF, so image 5 does not count as disagreeing
    assert [s["image_id"] for s in data["samples"]] == [3, 4, 1]
    for sample in data["samples"]:
        assert sample["unmatched"] == EXPECTED_UNMATCHED[sample["image_id"]]
        assert (out / sample["file"]).is_file()
    with Image.open(out / data["samples"][0]["file"]) as image:
        # reference | openvino/int8 | ncnn/int8, each scaled to 480 px on the long side (120x90 -> 480x360)
        assert image.width == 3 * 480 + 2 * report_module.PANEL_GAP
        assert image.height == 360 + 2 * report_module.TITLE_HEIGHT


def test_samples_are_deterministic(dataset, tmp_path):
    a = write_drift_report(make_report(), dataset, tmp_path / "a", manifest=make_manifest())
    b = write_drift_report(make_report(), dataset, tmp_path / "b", manifest=make_manifest())
    names = sorted(k for k in a if k.startswith("samples/"))
    # only the three images with some disagreement, though four were asked for
    assert names == sorted(k for k in b if k.startswith("samples/")) and len(names) == 3
    assert all(a[k].read_bytes() == b[k].read_bytes() for k in names)
    assert a["report.md"].read_text() == b["report.md"].read_text()


def test_without_int8_runs_the_worst_agreeing_run_is_shown(dataset, tmp_path):
    files = write_drift_report(make_report(int8=False), dataset, tmp_path / "r", manifest=make_manifest(None),
                               sample_images=2)
    data = strict_json(files["report.json"])
    assert data["int8"] is None and data["float_layers"] is None
    assert data["samples"][0]["image_id"] == 2 and data["samples"][0]["unmatched"] == {"openvino/fp16": 1}
    with Image.open(tmp_path / "r" / data["samples"][0]["file"]) as image:
        assert image.width == 2 * 480 + report_module.PANEL_GAP  # reference | openvino/fp16
    md = files["report.md"].read_text()
    assert "records no INT8 calibration" in md


def test_int8_info_with_no_float_layers_and_no_manifest(dataset, tmp_path):
    files = write_drift_report(make_report(), dataset, tmp_path / "r",
                               manifest=make_manifest({"method": "minmax", "float_layers": {}}))
    assert "None: every quantisable layer runs in int8." in files["report.md"].read_text()
    assert strict_json(files["report.json"])["float_layers"] == []
    # no manifest: the default deployment threshold, and the report says the INT8 details are unknown
    files = write_drift_report(make_report(), dataset, tmp_path / "r2", sample_images=0)
    assert "INT8 details are unknown" in files["report.md"].read_text()
    assert strict_json(files["report.json"])["conf_threshold"] == PostprocessSpec().conf_threshold
    assert not any(k.startswith("samples/") for k in files)


def test_full_agreement_shows_one_sample(dataset, tmp_path):
    report = make_report()
    report.runs = report.runs[:2]  # torch/fp32 and the identical onnxruntime/fp32
    files = write_drift_report(report, dataset, tmp_path / "r", manifest=make_manifest())
    data = strict_json(files["report.json"])
    assert [(s["image_id"], s["unmatched"]) for s in data["samples"]] == [(1, {"onnxruntime/fp32": 0})]


def test_only_the_reference_still_gives_a_report(dataset, tmp_path):
    report = make_report()
    report.runs = report.runs[:1]
    files = write_drift_report(report, dataset, tmp_path / "r", manifest=make_manifest())
    assert files["per_class_delta.png"].read_bytes()[:4] == b"\x89PNG"
    assert "Only the reference ran" in files["report.md"].read_text()


def test_an_earlier_report_is_replaced_and_a_foreign_folder_refused(dataset, tmp_path, written):
    out, _ = written
    (out / "samples" / "99_stale.jpg").write_bytes(b"stale")
    files = write_drift_report(make_report(), dataset, out, manifest=make_manifest(), sample_images=1)
    assert not (out / "samples" / "99_stale.jpg").exists() and len(list((out / "samples").iterdir())) == 1
    assert sorted(p.name for p in out.parent.iterdir()) == ["drift"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    with pytest.raises(EdgekitError, match=r"mine: holds files a drift report does not write \(thesis.tex\)"):
        write_drift_report(make_report(), dataset, foreign, manifest=make_manifest())
    assert [p.name for p in foreign.iterdir()] == ["thesis.tex"]
    assert files["report.md"].is_file()


def test_unwritable_folder_is_one_clear_error_and_leaves_nothing(dataset, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    out = blocker / "reports" / "drift"
    with pytest.raises(EdgekitError) as info:
        write_drift_report(make_report(), dataset, out, manifest=make_manifest())
    message = str(info.value)
    assert str(out) in message and "cannot write the report" in message and "\n" not in message
    assert f"{blocker} is a file, not a folder" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "not_a_folder"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_parent_is_one_clear_error(dataset, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        with pytest.raises(EdgekitError, match="cannot write the report"):
            write_drift_report(make_report(), dataset, parent / "drift", manifest=make_manifest())
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o700)


def test_a_failure_midway_leaves_no_half_report(dataset, tmp_path, written, monkeypatch):
    out, files = written
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_module, "plot_per_class_delta", disk_full)
    with pytest.raises(EdgekitError, match=r"drift: cannot write the report there \(No space left on device\)"):
        write_drift_report(make_report(), dataset, out, manifest=make_manifest())
    # the earlier report is untouched and no staging folder is left beside it
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in out.parent.iterdir()] == ["drift"]
    # a new folder (with new parents) that fails is not created at all
    fresh = tmp_path / "new" / "deeper" / "drift"
    with pytest.raises(EdgekitError):
        write_drift_report(make_report(), dataset, fresh, manifest=make_manifest())
    assert not (tmp_path / "new").exists()


# --- the CLI --------------------------------------------------------------------------------------


@pytest.fixture()
def cli_artifact(tmp_path):
    """An artifact with an onnxruntime fp32 model and a different one posing as its int8 version."""
    from edgekit.convert.artifact import ArtifactWriter
    from edgekit.runtime.artifact import ModelEntry
    from edgekit.validate.synth import CLASS_NAMES
    from tests.onnx_graphs import fastestdet_like_graph, save

    spec = replace(fastestdet_like_spec(num_classes=len(CLASS_NAMES)), class_names=CLASS_NAMES)
    with ArtifactWriter(tmp_path / "art") as writer:
        save(fastestdet_like_graph(spec), writer.path("model.onnx"))
        save(fastestdet_like_graph(spec, seed=1), writer.path("model_int8.onnx"))
        writer.commit(spec, [ModelEntry("onnxruntime", "fp32", "model.onnx"),
                             ModelEntry("onnxruntime", "int8", "model_int8.onnx")],
                      {"producer": "test", "int8": {"method": "entropy", "float_layers": {"/conv": "too sensitive"}}})
    return tmp_path / "art"


def test_cli_validate_writes_the_report(cli_artifact, tmp_path, capsys):
    from edgekit.cli import main
    from edgekit.validate import synth

    data = synth.generate(tmp_path / "val", "val", seed=3, num_images=3, image_size=64, progress=False)
    out = tmp_path / "report"
    code = main(["validate", str(cli_artifact), "--data", str(data), "--report", str(out)])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "| onnxruntime/fp32 |" in stdout and "| onnxruntime/int8 |" in stdout
    assert stdout.strip().splitlines()[-1] == f"report written to {out / 'report.md'}"
    md = (out / "report.md").read_text()
    assert "| onnxruntime | int8 |" in md and "- `/conv`: too sensitive" in md
    data_json = strict_json(out / "report.json")
    assert [r["name"] for r in data_json["runs"]] == ["onnxruntime/fp32", "onnxruntime/int8"]
    assert data_json["conf_threshold"] == 0.05  # the artifact spec's deployment threshold
    assert len(list((out / "samples").glob("*.jpg"))) == 3
    for name in ("map_vs_latency.png", "per_class_delta.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_cli_validate_unwritable_report_folder(cli_artifact, tmp_path, capsys):
    from edgekit.cli import main
    from edgekit.validate import synth

    data = synth.generate(tmp_path / "val", "val", seed=3, num_images=2, image_size=64, progress=False)
    (tmp_path / "file").write_text("x")
    code = main(["validate", str(cli_artifact), "--data", str(data), "--report", str(tmp_path / "file" / "r")])
    _, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert str(tmp_path / "file" / "r") in lines[0] and "cannot write the report" in lines[0]
    # checked before the validation ran (no progress bars on stderr) and nothing was created
    assert "img/s" not in err and (tmp_path / "file").read_text() == "x"


def test_raw_tensor_section_names_the_output_that_drifted(dataset, tmp_path):
    """The build's per-output statistics (tensor_error against the reference) reach report.json and report.md,
    and the report says which head level drifted; an artifact from before them gives one row per run."""
    from edgekit.validate.compare import tensor_error

    rng = np.random.default_rng(0)
    reference = [rng.normal(0, 1, (1, 6, 8, 8)), rng.normal(0, 5, (1, 6, 4, 4))]
    candidate = [reference[0] + 1e-6, reference[1] + rng.normal(0, 0.05, (1, 6, 4, 4))]  # the stride-32 level drifted
    error = tensor_error(reference, candidate, ["p3", "p5"]).to_dict()
    manifest = make_manifest()
    manifest = replace(manifest, info={**manifest.info, "parity": {
        "openvino/fp16": {"checked": True, **error, "tolerance": 1e-2},
        "ncnn/fp32": {"checked": True, "max_abs": 2e-6, "max_rel": 1e-6, "tolerance": 1e-4},  # before per-output
        "tensorrt/fp16": {"checked": False}}})
    out = tmp_path / "drift"
    write_drift_report(make_report(), dataset, out, manifest=manifest, sample_images=0)
    rows = strict_json(out / "report.json")["tensor_errors"]
    assert [(r["run"], r["output"]) for r in rows] == [("openvino/fp16", "p3"), ("openvino/fp16", "p5"),
                                                       ("ncnn/fp32", None)]
    assert rows[1]["max_rel"] == error["outputs"]["p5"]["max_rel"] and rows[1]["p99_abs"] > rows[0]["p99_abs"]
    md = (out / "report.md").read_text()
    assert "## Raw tensors at build time (per output)" in md and "| ncnn/fp32 | all outputs |" in md
    assert f"openvino/fp16 `p5` {error['outputs']['p5']['max_rel']:.2e}" in md


def test_unscored_report_is_an_edgekit_error_in_the_table_and_the_json() -> None:
    """A run without mAP / agreement (a report not from validate_*) used to fail with AttributeError on None."""
    from edgekit.validate.run import format_table

    report = make_report(int8=False)
    unscored = replace(report, runs=[replace(report.runs[0], agreement=None), *report.runs[1:]])
    with pytest.raises(EdgekitError, match="torch/fp32: the run has no mAP / agreement yet"):
        format_table(unscored)
    no_reference_map = replace(report, runs=[replace(report.runs[0], metrics=None), *report.runs[1:]])
    with pytest.raises(EdgekitError, match="torch/fp32: the reference run has no mAP yet"):
        no_reference_map.to_dict()
    assert format_table(report).count("\n| ") == len(report.runs) + len(report.skipped) + 1  # header row too


def test_cli_validate_json_into_a_new_folder_is_strict_json(cli_artifact, tmp_path, capsys):
    """`--json runs/x/r.json` where runs/x does not exist yet: the whole validation ran and then failed with
    'unexpected FileNotFoundError ... this is a bug'; now the folder is made, as `-o` makes its own. And the file is
    strict JSON: a torch reference's inference_ms (NaN) was written as a bare NaN other readers refuse."""
    from edgekit.cli import main
    from edgekit.filetypes import strict_json as dumps
    from edgekit.validate import synth

    data = synth.generate(tmp_path / "val", "val", seed=3, num_images=2, image_size=64, progress=False)
    target = tmp_path / "runs" / "exp" / "r.json"
    code = main(["validate", str(cli_artifact), "--data", str(data), "--json", str(target)])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert [r["name"] for r in strict_json(target)["runs"]] == ["onnxruntime/fp32", "onnxruntime/int8"]
    assert list(target.parent.iterdir()) == [target]  # no temporary file left beside it
    text = dumps({"inference_ms": float("nan"), "n": np.int64(3), "rows": [np.float32(0.5), float("inf")]})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {"inference_ms": None, "n": 3,
                                                                          "rows": [0.5, None]}


def test_cli_validate_refuses_options_it_would_ignore(cli_artifact, tmp_path, capsys):
    """Each was accepted and silently dropped (a hostile review): `--backends openvino` on a bare ONNX file ran ONNX
    Runtime; --reference / --backends beside a checkpoint were ignored under a table saying "reference: torch/fp32";
    --family / --end2end beside an artifact; `--backends ncnn` for an artifact without ncnn said "no model could run
    here ()"; a dataset without boxes was refused after every model had run, naming no dataset."""
    from edgekit.validate import synth
    from tests.helpers import one_error_line, run_cli

    data = synth.generate(tmp_path / "val", "val", seed=3, num_images=2, image_size=64, progress=False)
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"PK\x03\x04")  # refused by its options before it is read
    cases = [
        ([checkpoint, "--reference", checkpoint], "--reference applies to an artifact or ONNX file"),
        ([checkpoint, "--backends", "openvino"], "--backends applies to an artifact or ONNX file"),
        ([cli_artifact / "model.onnx", "--backends", "openvino"], "a bare ONNX file is validated on ONNX Runtime"),
        ([cli_artifact, "--family", "yolox"], "--family/--names describe a checkpoint"),
        ([cli_artifact, "--end2end"], "--end2end/--no-end2end apply when loading a PyTorch checkpoint"),
        ([cli_artifact, "--backends", "ncnn"], "--backends ncnn:", "has no such model (it has onnxruntime)"),
    ]
    for args, *fragments in cases:
        code, stdout, err = run_cli(["validate", *args, "--data", data], capsys)
        one_error_line(code, err, *fragments)
        assert "| model |" not in stdout
    empty = tmp_path / "empty"
    shutil.copytree(data, empty, ignore=shutil.ignore_patterns("annotations"))
    for label in (empty / "labels").rglob("*.txt"):
        label.write_text("")
    code, stdout, err = run_cli(["validate", cli_artifact, "--data", empty], capsys)
    one_error_line(code, err, f"{empty}: no ground-truth box in any of its 2 images")
    assert "img/s" not in err  # before any model ran


def test_cli_validate_says_how_many_images_and_boxes_it_scored(cli_artifact, tmp_path, capsys):
    from edgekit.validate import synth
    from edgekit.validate.datasets import load_dataset
    from tests.helpers import run_cli

    data = synth.generate(tmp_path / "val", "val", seed=3, num_images=3, image_size=64, progress=False)
    boxes = load_dataset(data).num_objects
    code, stdout, err = run_cli(["validate", cli_artifact, "--data", data, "--json", tmp_path / "v.json"], capsys)
    assert code == 0, err
    assert f"dataset: {data} (3 images, {boxes} boxes)" in stdout
    saved = strict_json(tmp_path / "v.json")
    assert (saved["num_images"], saved["num_objects"]) == (3, boxes)


def test_cli_validate_split(cli_artifact, tmp_path, capsys):
    """Without --split a dataset whose data.yaml names splits is scored whole, and a warning says so."""
    from edgekit.validate import synth
    from tests.helpers import run_cli

    data = synth.generate(tmp_path / "val", "val", seed=3, num_images=3, image_size=64, progress=False)
    shutil.rmtree(data / "annotations")
    for kind in ("images", "labels"):
        (data / kind / "val").mkdir()
        for file in sorted(p for p in (data / kind).iterdir() if p.is_file() and p.name != "classes.txt")[:2]:
            file.rename(data / kind / "val" / file.name)
    (data / "data.yaml").write_text("val: images/val\n")
    code, stdout, err = run_cli(["validate", cli_artifact, "--data", data], capsys)
    assert code == 0, err
    assert "data.yaml names splits (val); all 3 images under images/ are scored (--split val" in err
    assert "(3 images," in stdout
    code, stdout, err = run_cli(["validate", cli_artifact, "--data", data, "--split", "val"], capsys)
    assert code == 0, err
    assert "(2 images," in stdout and "split val)" in stdout and "warning" not in err
