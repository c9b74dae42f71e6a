"""The bundled trained fixtures (edgekit/zoo/*.pt): loadable safely, their recorded mAP reproducible,
and their ONNX Runtime export detecting what the PyTorch reference detects on real validation images."""

import dataclasses

import pytest

from edgekit.convert.chain import export_artifact
from edgekit.models.loading import load_checkpoint
from edgekit.reference.detector import ReferenceDetector
from edgekit.runtime.detector import Detector
from edgekit.validate import synth
from edgekit.validate.coco_eval import evaluate_detections
from edgekit.validate.compare import compare_detections
from edgekit.validate.datasets import load_dataset
from edgekit.validate.run import map_postprocess, run_detector
from tests.conftest import ZOO_DIR

CHECKPOINTS = sorted(ZOO_DIR.glob("*.pt"))
#: issue 3's bar: every trained fixture reaches COCO mAP@0.5:0.95 >= 0.5 on `synth --split val --seed 0`
MAP_BAR = 0.5
#: fixtures bundled below the bar (trained, usable for parity and INT8 tests, not yet good enough):
#: family -> why. Their bar test is a strict xfail, so reaching the bar turns it into a failure to
#: clean up here.
BELOW_BAR: dict[str, str] = {}
#: the wheel's zoo budget (issue 3)
ZOO_BUDGET_BYTES = 20_000_000


@pytest.fixture(scope="session")
def val_split(tmp_path_factory):
    """The split every fixture's mAP is recorded on: tools/synth.py --split val --seed 0."""
    folder = synth.generate(tmp_path_factory.mktemp("synth") / "val", "val", 0, progress=False)
    return load_dataset(folder)


def test_the_zoo_is_not_empty():
    assert CHECKPOINTS, "edgekit/zoo has no trained fixture (tools/train_fixtures.py writes them)"


@pytest.mark.parametrize("checkpoint", CHECKPOINTS, ids=lambda p: p.stem)
def test_recorded_map_matches_a_fresh_evaluation(checkpoint, val_split):
    model = load_checkpoint(checkpoint)
    recorded = model.metrics
    assert recorded["split"] == "val" and recorded["val_seed"] == 0
    assert recorded["num_val_images"] == len(val_split.items)
    run = run_detector(ReferenceDetector(model, model.spec, map_postprocess(model.spec)), val_split, "torch")
    fresh = evaluate_detections(val_split, run.detections)
    assert fresh.map_50_95 == pytest.approx(recorded["map_50_95"], abs=1e-3)
    assert fresh.map_50 == pytest.approx(recorded["map_50"], abs=1e-3)


def test_training_scores_a_model_as_validate_does(val_split):
    """tools/train_fixtures.py records mAP with edgekit.models.training.evaluate (runtime decode + NMS);
    validate runs the reference detector (torch NMS). Same protocol, same numbers: on a slice of the
    val split, so the check costs seconds."""
    from edgekit.models.training import evaluate

    model = load_checkpoint(ZOO_DIR / "yolov8.pt")
    subset = dataclasses.replace(val_split, items=val_split.items[:60])
    by_training = evaluate(model, subset)
    run = run_detector(ReferenceDetector(model, model.spec, map_postprocess(model.spec)), subset, "torch")
    by_validate = evaluate_detections(subset, run.detections)
    assert by_training.map_50 > 0.3  # a trained model, not an empty comparison
    assert by_training.map_50_95 == pytest.approx(by_validate.map_50_95, abs=1e-4)
    assert by_training.map_50 == pytest.approx(by_validate.map_50, abs=1e-4)


def test_the_zoo_fits_its_size_budget():
    total = sum(p.stat().st_size for p in CHECKPOINTS)
    assert total <= ZOO_BUDGET_BYTES, f"edgekit/zoo/*.pt total {total / 1e6:.1f} MB > {ZOO_BUDGET_BYTES / 1e6:.0f} MB"


@pytest.mark.parametrize("checkpoint", CHECKPOINTS, ids=lambda p: p.stem)
def test_fixture_reaches_the_map_bar(checkpoint, request):
    """The recorded mAP is checked against a fresh evaluation above; here it must clear the bar."""
    if checkpoint.stem in BELOW_BAR:
        request.applymarker(pytest.mark.xfail(reason=BELOW_BAR[checkpoint.stem], strict=True))
    assert load_checkpoint(checkpoint).metrics["map_50_95"] >= MAP_BAR


@pytest.mark.parametrize("checkpoint", CHECKPOINTS, ids=lambda p: p.stem)
def test_onnxruntime_export_matches_pytorch_on_validation_images(checkpoint, val_split, tmp_path):
    model = load_checkpoint(checkpoint)
    export_artifact(model, tmp_path / "art")
    images = [val_split.image_path(item) for item in val_split.items[:60]]
    reference = ReferenceDetector(model, model.spec).detect_batch(images)
    with Detector.load(tmp_path / "art") as detector:
        candidate = [detector.detect(image) for image in images]
    stats = compare_detections(reference, candidate, iou_threshold=0.999)
    assert stats.reference_count >= 60, "a trained fixture finds objects"
    assert stats.matched == stats.reference_count == stats.candidate_count, stats
    assert stats.max_score_delta <= 1e-4, stats


BACKEND_TARGETS = [("openvino", "intel-cpu", ("fp32", "fp16")), ("ncnn", "raspberry-pi-5", ("fp32", "fp16"))]


@pytest.mark.parametrize("checkpoint", CHECKPOINTS, ids=lambda p: p.stem)
@pytest.mark.parametrize("backend, target, precisions", BACKEND_TARGETS, ids=[b[0] for b in BACKEND_TARGETS])
def test_backends_match_the_pytorch_reference_on_the_validation_split(checkpoint, backend, target, precisions,
                                                                      val_split, tmp_path):
    """fp32: >= 99 % of reference boxes matched at IoU >= 0.99 with |Δscore| <= 1e-3 and mAP within 0.1 point;
    fp16: mAP within 0.5 point (mmdeploy-style metric-level tolerances per precision)."""
    from edgekit.convert.chain import convert
    from edgekit.runtime.backends import get_runner_class
    from edgekit.targets import load_target
    from edgekit.validate.run import above, validate_artifacts

    if not get_runner_class(backend).is_available():
        pytest.skip(f"{backend} is not installed")
    model = load_checkpoint(checkpoint)
    artifacts = []
    for precision in precisions:
        convert(model, load_target(target), tmp_path / precision, precision=precision, input_size=model.spec.input_size)
        artifacts.append(tmp_path / precision)
    subset = dataclasses.replace(val_split, items=val_split.items[:120])
    report = validate_artifacts(artifacts, subset, reference_model=model)
    reference = report.run("torch/fp32")
    conf = model.spec.postprocess.conf_threshold
    for precision in precisions:
        run = report.run(f"{backend}/{precision}")
        delta = abs(run.metrics.map_50_95 - reference.metrics.map_50_95) * 100
        if precision == "fp32":
            ids = sorted(reference.detections)
            stats = compare_detections([above(reference.detections, conf)[i] for i in ids],
                                       [above(run.detections, conf)[i] for i in ids], iou_threshold=0.99)
            assert stats.recall >= 0.99 and stats.max_score_delta <= 1e-3, stats
            assert delta <= 0.1
        else:
            assert delta <= 0.5
