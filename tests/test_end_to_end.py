"""End to end on the real, COCO-trained FastestDet: checkpoint -> edgekit export -> ONNX Runtime.

The oracle is the PyTorch model with edgekit's torch reference decoder and NMS; the candidate
is the exported ONNX file run through the numpy runtime (Detector). Skips without ../shared.
"""

import numpy as np
import pytest

from edgekit.cli import main
from edgekit.reference.detector import ReferenceDetector
from edgekit.runtime.detector import Detector
from edgekit.validate.compare import compare_detections

PHOTOS = [f"{i}.jpg" for i in range(5)]


@pytest.fixture(scope="module")
def fastestdet_artifact(fastestdet_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fdet") / "artifact"
    code = main(["export", str(fastestdet_dir / "fastestdet_coco_352.pth"), "--family", "fastestdet",
                 "--names", str(fastestdet_dir / "coco.names"), "-o", str(out)])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def reference(fastestdet_dir):
    from edgekit.models.loading import load_checkpoint
    from edgekit.spec import load_class_names

    model = load_checkpoint(fastestdet_dir / "fastestdet_coco_352.pth", family="fastestdet",
                            class_names=load_class_names(fastestdet_dir / "coco.names"))
    return ReferenceDetector(model, model.spec)


def test_onnxruntime_detector_matches_pytorch_reference(fastestdet_dir, fastestdet_artifact, reference):
    photos = [fastestdet_dir / "images" / name for name in PHOTOS]
    expected = reference.detect_batch(photos)
    with Detector.load(fastestdet_artifact) as detector:
        actual = [detector.detect(photo) for photo in photos]
    assert sum(len(d) for d in expected) >= 10, "the real model finds objects in the real photos"
    for ref, cand in zip(expected, actual):
        assert len(ref) == len(cand)
        stats = compare_detections([ref], [cand], iou_threshold=0.999)
        assert stats.matched == len(ref), stats
        assert stats.max_score_delta <= 1e-4, stats
        np.testing.assert_array_equal(ref.labels[np.argsort(-ref.scores)], cand.labels[np.argsort(-cand.scores)])


def test_known_objects_in_the_photos(fastestdet_dir, fastestdet_artifact):
    """Facts about the photos (a bus in 1.jpg, four people in 3.jpg), at upstream's demo threshold 0.65."""
    with Detector.load(fastestdet_artifact, conf_threshold=0.65) as detector:
        names = detector.spec.class_names
        bus = detector.detect(fastestdet_dir / "images" / "1.jpg")
        people = detector.detect(fastestdet_dir / "images" / "3.jpg")
    assert [names[i] for i in bus.labels] == ["bus"]
    assert [names[i] for i in people.labels] == ["person"] * 4


def test_upstream_onnx_through_edgekit_decoder_matches_edgekit_model(fastestdet_dir, fastestdet_artifact, tmp_path, capsys):
    """The upstream authors' own ONNX file, decoded by edgekit, finds what edgekit's export finds."""
    import json

    photos = [str(fastestdet_dir / "images" / name) for name in PHOTOS]
    results = {}
    for label, model, extra in [
        ("upstream", fastestdet_dir / "FastestDet.onnx", ["--family", "fastestdet", "--names", str(fastestdet_dir / "coco.names")]),
        ("edgekit", fastestdet_artifact, []),
    ]:
        out = tmp_path / f"{label}.json"
        assert main(["detect", str(model), *photos, "--json", str(out), *extra]) == 0
        results[label] = json.loads(out.read_text())
    capsys.readouterr()
    assert len(results["upstream"]) == len(results["edgekit"]) >= 10

    def key(e):
        return e["file_name"], e["category_id"], -e["score"]

    for up, ours in zip(sorted(results["upstream"], key=key), sorted(results["edgekit"], key=key)):
        assert (up["file_name"], up["category_id"]) == (ours["file_name"], ours["category_id"])
        assert abs(up["score"] - ours["score"]) <= 1e-4
        np.testing.assert_allclose(up["bbox"], ours["bbox"], atol=0.05)
