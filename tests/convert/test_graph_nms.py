"""NMS appended to the graph (``edgekit.convert.graph_nms``, ``nms = "graph"``) keeps what edgekit's host NMS keeps.

Oracle: the host path (numpy decoder + ``runtime.nms.postprocess``) on the same raw outputs. The appended graph
runs in ONNX Runtime, whose ``NonMaxSuppression`` is the reference for the op TensorRT's parser maps to its
INMSLayer (``tests/runtime/test_tensorrt.py`` compares the two on a GPU). Every head kind that needs NMS, batch 2,
per class and class-agnostic, and a score threshold equal to a candidate's score (the strict ``>`` on both sides).
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgekit.convert.graph_nms import nms_tail
from edgekit.errors import ConversionError, InputError
from edgekit.runtime import decode as rt
from edgekit.runtime.graph_nms import BATCH_OUTPUT, DETECTIONS_OUTPUT, GraphNms, graph_nms_spec, host_postprocess
from edgekit.runtime.nms import postprocess
from tests.helpers import skip_unless_backends
from tests.runtime import test_decode as raw_heads
from tests.runtime import test_decode_decoded_heads as decoded_heads

skip_unless_backends("onnxruntime")

#: every head kind whose model needs NMS (centernet and e2e_xyxy are NMS-free by contract)
RAW_KINDS = tuple(kind for kind in raw_heads.KINDS if kind != "centernet")
DECODED_KINDS = tuple(kind for kind in decoded_heads.KINDS if kind != "e2e_xyxy")


def _case(kind: str, seed: int):
    """(spec, raw outputs) of a random batch-2 case with 5 classes."""
    if kind in RAW_KINDS:
        return raw_heads.random_case(kind, (96, 128), 2, 5, seed=seed)
    spec, output = decoded_heads.random_case(kind, (96, 128), 2, 5, seed=seed)
    return spec, [output]


def _host(spec, outputs, pp):
    candidates = rt.decode(outputs, spec)
    return postprocess(candidates.boxes, candidates.scores, candidates.labels, conf_threshold=pp.conf_threshold,
                       iou_threshold=pp.iou_threshold, class_agnostic=pp.class_agnostic,
                       pre_nms_topk=pp.pre_nms_topk, max_detections=pp.max_detections, apply_nms=pp.nms)


def _graph(spec, outputs, nms: GraphNms):
    """The tail in ONNX Runtime, then the runtime's reading of it (what a Detector does with such a model)."""
    tail = nms_tail(spec, nms, [(1, *np.shape(out)[1:]) for out in outputs], 17)
    session = ort.InferenceSession(tail.SerializeToString(), providers=["CPUExecutionProvider"])
    rows, marker = session.run([DETECTIONS_OUTPUT, BATCH_OUTPUT], dict(zip(spec.head.output_names, outputs)))
    graph_spec = graph_nms_spec(spec, nms)
    return rows, _host(graph_spec, [rows, marker], host_postprocess(nms, graph_spec.postprocess, "test"))


def _assert_same(host, graph):
    assert len(host) == len(graph)
    for (host_boxes, host_scores, host_labels), (boxes, scores, labels) in zip(host, graph):
        np.testing.assert_array_equal(labels, host_labels)
        np.testing.assert_allclose(scores, host_scores, rtol=0, atol=1e-6)
        np.testing.assert_allclose(boxes, host_boxes, rtol=0, atol=1e-3)  # torch vs numpy decode: float ulps


@pytest.mark.parametrize("kind", RAW_KINDS + DECODED_KINDS)
@pytest.mark.parametrize("class_agnostic", [False, True])
def test_graph_nms_keeps_what_host_nms_keeps(kind, class_agnostic):
    spec, outputs = _case(kind, seed=1)
    scores = np.sort(rt.decode(outputs, spec).scores.ravel())[::-1]
    # the threshold ON a candidate's score (strict > drops it on both sides), low enough to keep many boxes
    conf = float(scores[min(len(scores) - 1, 400)])
    pp = dataclasses.replace(spec.postprocess, conf_threshold=conf, iou_threshold=0.5, class_agnostic=class_agnostic,
                             pre_nms_topk=600, max_detections=60)
    host = _host(spec, outputs, pp)
    rows, graph = _graph(spec, outputs, GraphNms.from_postprocess(pp))
    assert sum(len(h[1]) for h in host) >= 10, "a case that keeps nothing tests nothing"
    assert len(rows) >= sum(len(h[1]) for h in host)  # the graph keeps up to max_detections per class
    _assert_same(host, graph)


def test_the_top_k_and_max_detections_cut_where_the_host_cuts():
    """pre_nms_topk below the number of candidates over the threshold, and max_detections below what NMS keeps."""
    spec, outputs = _case("yolox", seed=3)
    pp = dataclasses.replace(spec.postprocess, conf_threshold=0.05, iou_threshold=0.6, pre_nms_topk=50,
                             max_detections=7)
    host = _host(spec, outputs, pp)
    assert all(len(scores) == 7 for _, scores, _ in host)
    _assert_same(host, _graph(spec, outputs, GraphNms.from_postprocess(pp))[1])


def test_a_head_without_nms_is_refused():
    spec, outputs = raw_heads.random_case("centernet", (64, 64), 1, 3, seed=0)
    spec = dataclasses.replace(spec, postprocess=dataclasses.replace(spec.postprocess, nms=False))
    with pytest.raises(ConversionError, match=r"nms = \"graph\": head 'centernet' needs no NMS"):
        nms_tail(spec, GraphNms.from_postprocess(spec.postprocess), [o.shape for o in outputs], 17)


@pytest.mark.parametrize(("change", "message"), [
    ({"conf_threshold": 0.1}, r"at score threshold 0.25; a lower one \(0.1\) would need the boxes it dropped"),
    ({"iou_threshold": 0.6}, r"at IoU 0.45; IoU 0.6 would need the boxes it suppressed"),
    ({"class_agnostic": True}, r"per class; the run asks for class-agnostic NMS"),
    ({"max_detections": 301}, r"top-1000 candidates and 300 boxes per image; the run asks for top-1000 and 301"),
    ({"pre_nms_topk": 500}, r"the run asks for top-500 and 300"),
    ({"nms": False}, r"a run without NMS would need the candidates it dropped"),
])
def test_a_run_the_graph_cannot_serve_is_refused_in_one_line(change, message):
    nms = GraphNms(conf_threshold=0.25, iou_threshold=0.45, class_agnostic=False, pre_nms_topk=1000,
                   max_detections=300)
    spec = graph_nms_spec(raw_heads.make_spec("yolox", (64, 64), 3, {"strides": [8, 16, 32]}, ("a", "b", "c")), nms)
    assert host_postprocess(nms, spec.postprocess, "m").nms is False
    assert host_postprocess(nms, dataclasses.replace(spec.postprocess, conf_threshold=0.5, max_detections=10),
                            "m").conf_threshold == 0.5  # a higher threshold and fewer boxes: filtered on the host
    with pytest.raises(InputError, match=message) as exc_info:
        host_postprocess(nms, dataclasses.replace(spec.postprocess, **change), "m")
    assert "\n" not in str(exc_info.value) and str(exc_info.value).startswith("m: NMS is in the graph")


def test_graph_nms_round_trips_through_a_dict_and_refuses_a_malformed_one():
    from edgekit.errors import SpecError

    nms = GraphNms(0.3, 0.5, True, 200, 50)
    assert GraphNms.from_dict(json.loads(json.dumps(nms.to_dict())), "x") == nms
    with pytest.raises(SpecError, match=r"x: graph_nms is malformed \(KeyError"):
        GraphNms.from_dict({"conf_threshold": 0.3}, "x")
    with pytest.raises(SpecError, match=r"x: graph_nms is malformed \(TypeError: class_agnostic is 'false'\)"):
        GraphNms.from_dict({**nms.to_dict(), "class_agnostic": "false"}, "x")  # bool("false") would be True
    for bad in ({"iou_threshold": 1.5}, {"conf_threshold": float("nan")}, {"pre_nms_topk": 0}):
        with pytest.raises(SpecError, match=r"x: graph_nms \{.+\}; expected conf_threshold and iou_threshold in"):
            GraphNms.from_dict({**nms.to_dict(), **bad}, "x")


def test_a_top_k_above_tensorrt_s_limit_is_capped_and_said(tmp_path):
    """Ultralytics models ask for top-30000 candidates; TensorRT's TopK takes K <= 3840: the graph gets 3840, the
    manifest records it (the host then runs the same top-k), and the progress line says so (a hostile pass found
    an uncapped K = 25200 that every TensorRT would refuse on the device)."""
    from edgekit.convert.chain import convert
    from edgekit.models.loading import load_checkpoint
    from edgekit.targets import load_target
    from tests.conftest import SHARED_DIR

    checkpoint = SHARED_DIR / "models" / "ultralytics" / "yolov5n.pt"
    if not checkpoint.is_file():
        pytest.skip("../shared/models/ultralytics is not present")
    model = load_checkpoint(checkpoint)
    assert model.spec.postprocess.pre_nms_topk > 3840
    lines: list[str] = []
    manifest = convert(model, dataclasses.replace(load_target("jetson-orin-nano"), nms="graph"), tmp_path / "art",
                       precision="fp32", input_size=(320, 320), progress=lines.append)
    entry = manifest.find("tensorrt", "fp32")
    assert entry.graph_nms is not None and entry.graph_nms.pre_nms_topk == 3840
    assert any(f"top-k {model.spec.postprocess.pre_nms_topk} capped to 3840" in line for line in lines), lines
    graph = onnx.load(str(tmp_path / "art" / entry.file))
    constants = {init.name: onnx.numpy_helper.to_array(init) for init in graph.graph.initializer}
    constants.update({node.output[0]: onnx.numpy_helper.to_array(node.attribute[0].t) for node in graph.graph.node
                      if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value"})
    [top_k] = [node for node in graph.graph.node if node.op_type == "TopK"]
    assert int(constants[top_k.input[1]].reshape(-1)[0]) == 3840  # 6300 candidates at 320 px, 3840 kept


# --- a real model, converted for a TensorRT target with nms = "graph" ------------------------------------

@pytest.fixture(scope="module")
def nms_artifact(fastestdet_dir, tmp_path_factory):
    """The real COCO FastestDet converted for jetson-orin-nano (fp16) with NMS in the graph."""
    from edgekit.convert.chain import convert
    from edgekit.models.loading import load_checkpoint
    from edgekit.spec import load_class_names
    from edgekit.targets import load_target

    model = load_checkpoint(fastestdet_dir / "fastestdet_coco_352.pth", family="fastestdet",
                            class_names=load_class_names(fastestdet_dir / "coco.names"))
    out = tmp_path_factory.mktemp("graph-nms") / "artifact"
    target = dataclasses.replace(load_target("jetson-orin-nano"), nms="graph")
    return out, convert(model, target, out, precision="fp16")


def test_every_tensorrt_build_parses_a_graph_that_ends_in_nms(nms_artifact):
    from edgekit.convert.tensorrt_onnx import legality_problems

    out, manifest = nms_artifact
    entry = manifest.find("tensorrt", "fp16")
    assert entry.graph_nms == GraphNms.from_postprocess(manifest.spec.postprocess)
    assert entry.file == "model_nms.onnx" and "--onnx=model_nms.onnx" in entry.options["build_command"]
    builds = entry.options["builds"]
    assert {build["onnx"] for build in builds.values()} == {"model_nms.onnx", "model_fp16.onnx"}
    for family, build in builds.items():
        model = onnx.load(str(out / build["onnx"]))
        assert [o.name for o in model.graph.output] == [DETECTIONS_OUTPUT, BATCH_OUTPUT]
        assert [o.type.tensor_type.elem_type for o in model.graph.output] == [onnx.TensorProto.FLOAT] * 2
        assert sum(node.op_type == "NonMaxSuppression" for node in model.graph.node) == 1
        assert legality_problems(model, family) == []
    # the artifact's baseline stays the raw-head graph the host decodes
    baseline = onnx.load(str(out / "model.onnx"))
    assert [o.name for o in baseline.graph.output] == list(manifest.spec.head.output_names)
    assert "model_nms.onnx" in (out / "tensorrt_build.sh").read_text()


@pytest.mark.parametrize("onnx_file", ["model_nms.onnx", "model_fp16.onnx"])
def test_the_graph_nms_model_detects_what_the_host_nms_model_detects(nms_artifact, fastestdet_dir, tmp_path,
                                                                    onnx_file):
    """Detector.load on an entry whose graph ends in NMS (here ONNX Runtime stands in for the engine: the same
    ONNX file TensorRT parses) == the baseline with host NMS, on the real photos."""
    from edgekit.runtime.detector import Detector

    out, manifest = nms_artifact
    # an artifact whose ONNX Runtime entry is the TensorRT entry's graph: the real Detector.load path
    copy = tmp_path / "artifact"
    shutil.copytree(out, copy)
    data = json.loads((copy / "edgekit.json").read_text())
    graph_entry = next(m for m in data["models"] if m["backend"] == "tensorrt")
    data["models"] = [{"backend": "onnxruntime", "precision": "fp32", "file": onnx_file,
                       "options": {"graph_nms": graph_entry["options"]["graph_nms"]}}]
    (copy / "edgekit.json").write_text(json.dumps(data))
    images = sorted((fastestdet_dir / "images").iterdir())
    with Detector.load(out) as host, Detector.load(copy) as graph:
        assert graph.spec.head.kind == "nms_rows" and graph.postprocess_spec.nms is False
        for image in images:
            want, got = host.detect(image), graph.detect(image)
            if onnx_file == "model_nms.onnx":  # the same float graph: the same boxes
                np.testing.assert_array_equal(got.labels, want.labels)
                np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
                np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-3)
            else:  # fp16 body: fp16's drift, judged as the chain judges fp16 (boxes matched at IoU 0.5)
                assert abs(len(got.scores) - len(want.scores)) <= max(1, len(want.scores) // 10)
        assert sum(len(host.detect(image).scores) for image in images) >= 10
    with pytest.raises(InputError, match=r"NMS is in the graph at score threshold 0.25; a lower one \(0.1\)"):
        Detector.load(copy, conf_threshold=0.1)


def test_validate_skips_a_graph_nms_model_with_the_reason(nms_artifact, tmp_path):
    from edgekit.validate.run import validate_artifacts

    out, manifest = nms_artifact
    copy = tmp_path / "artifact"
    shutil.copytree(out, copy)
    data = json.loads((copy / "edgekit.json").read_text())
    graph_entry = next(m for m in data["models"] if m["backend"] == "tensorrt")
    data["models"].append({"backend": "onnxruntime", "precision": "fp16", "file": "model_nms.onnx",
                           "options": {"graph_nms": graph_entry["options"]["graph_nms"]}})
    (copy / "edgekit.json").write_text(json.dumps(data))
    from edgekit.validate.datasets import load_dataset
    from tests.conftest import SHARED_DIR

    coco8 = SHARED_DIR / "datasets" / "coco8"
    if not (coco8 / "data.yaml").is_file():
        pytest.skip("../shared/datasets/coco8 is not present")
    darknet_names = {"motorcycle": "motorbike", "airplane": "aeroplane", "couch": "sofa", "potted plant": "pottedplant",
                     "dining table": "diningtable", "tv": "tvmonitor"}  # FastestDet's coco.names spell these so
    report = validate_artifacts([copy], load_dataset(coco8), backends=("onnxruntime",), class_map=darknet_names)
    skipped = dict(report.skipped)
    assert "onnxruntime/fp16" in skipped
    assert skipped["onnxruntime/fp16"].startswith("NMS is in the graph at IoU 0.45; IoU 0.6 would need")
    assert "a --nms host build of the same model measures the engine's drift" in skipped["onnxruntime/fp16"]


def test_cli_nms_graph_is_refused_for_a_backend_without_it_before_any_work(fastestdet_dir, tmp_path, capsys):
    from tests.helpers import one_error_line, run_cli

    code, _, err = run_cli(["convert", fastestdet_dir / "fastestdet_coco_352.pth", "--family", "fastestdet",
                            "--names", fastestdet_dir / "coco.names", "--target", "intel-cpu", "--nms", "graph",
                            "-o", tmp_path / "out"], capsys)
    one_error_line(code, err, "--nms graph for target 'intel-cpu'", "nms \"graph\" is built for tensorrt")
    assert not (tmp_path / "out").exists()


def test_cli_nms_graph_converts_for_tensorrt(fastestdet_dir, tmp_path, capsys):
    from edgekit.runtime.artifact import read_manifest
    from tests.helpers import run_cli

    code, out, err = run_cli(["convert", fastestdet_dir / "fastestdet_coco_352.pth", "--family", "fastestdet",
                              "--names", fastestdet_dir / "coco.names", "--target", "jetson-xavier-nx", "--nms",
                              "graph", "--precision", "fp32", "-o", tmp_path / "out"], capsys)
    assert code == 0, err
    assert "nms     in the graph for tensorrt (score > 0.25, IoU 0.45, per class, top-1000, at most 300 boxes)" in out
    entry = read_manifest(tmp_path / "out").find("tensorrt", "fp32")
    assert entry.graph_nms is not None and entry.file == "model_nms.onnx"
    code, out, err = run_cli(["inspect", tmp_path / "out"], capsys)
    assert code == 0 and "model_nms.onnx  (NMS in the graph: score > 0.25, IoU 0.45, per class" in out, out + err


def test_validate_runs_a_graph_nms_model_built_at_the_map_protocol_without_a_second_nms(nms_artifact, tmp_path):
    """When the graph's thresholds are the mAP protocol's, validate runs the model, with the host's NMS off (the
    graph did it): its mAP equals the host-NMS baseline's on the same float graph."""
    from edgekit.convert.graph_nms import append_nms, default_opset, nms_tail, output_shapes
    from edgekit.runtime.artifact import sha256_file
    from edgekit.validate.datasets import load_dataset
    from edgekit.validate.run import map_postprocess, validate_artifacts
    from tests.conftest import SHARED_DIR

    coco8 = SHARED_DIR / "datasets" / "coco8"
    if not (coco8 / "data.yaml").is_file():
        pytest.skip("../shared/datasets/coco8 is not present")
    out, manifest = nms_artifact
    copy = tmp_path / "artifact"
    shutil.copytree(out, copy)
    nms = GraphNms.from_postprocess(map_postprocess(manifest.spec))
    fp32 = onnx.load(str(copy / "model.onnx"))
    tail = nms_tail(manifest.spec, nms, output_shapes(fp32, manifest.spec), default_opset(fp32))
    onnx.save(append_nms(fp32, manifest.spec, tail), str(copy / "model_map_nms.onnx"))
    data = json.loads((copy / "edgekit.json").read_text())
    data["files"]["model_map_nms.onnx"] = sha256_file(copy / "model_map_nms.onnx")
    data["models"].append({"backend": "onnxruntime", "precision": "fp16", "file": "model_map_nms.onnx",
                           "options": {"graph_nms": nms.to_dict()}})
    (copy / "edgekit.json").write_text(json.dumps(data))
    darknet_names = {"motorcycle": "motorbike", "airplane": "aeroplane", "couch": "sofa", "potted plant": "pottedplant",
                     "dining table": "diningtable", "tv": "tvmonitor"}
    report = validate_artifacts([copy], load_dataset(coco8), backends=("onnxruntime",), class_map=darknet_names)
    assert not report.skipped
    baseline, graph = report.run("onnxruntime/fp32").metrics, report.run("onnxruntime/fp16").metrics
    assert baseline is not None and graph is not None and baseline.map_50_95 > 0
    assert graph.map_50_95 == pytest.approx(baseline.map_50_95, abs=1e-6)
    assert graph.map_50 == pytest.approx(baseline.map_50, abs=1e-6)


def test_a_tail_of_another_opset_is_refused(nms_artifact):
    from edgekit.convert.graph_nms import append_nms, output_shapes

    out, manifest = nms_artifact
    fp32 = onnx.load(str(out / "model.onnx"))
    tail = nms_tail(manifest.spec, GraphNms.from_postprocess(manifest.spec.postprocess),
                    output_shapes(fp32, manifest.spec), 18)
    with pytest.raises(ConversionError, match=r"nms = \"graph\": the NMS tail is at opset 18, the model at 17"):
        append_nms(fp32, manifest.spec, tail)
