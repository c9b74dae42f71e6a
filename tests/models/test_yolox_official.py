"""Official YOLOX checkpoints: the upstream layout loads strictly and reproduces the upstream code's outputs.

Oracle: ``tools/make_yolox_oracle.py`` ran the official ``yolox`` 0.3.0 package (PyPI) and recorded, in
``tests/assets/yolox_official/``, every scale's state_dict keys and shapes, and for yolox_nano and yolox_s the
raw head tensors, the head's own flattened output and its decoded boxes on a fixed input with deterministic
weights (rebuilt here from the key list by the script's own recipe, so no weights are stored).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.errors import ModelFileError, SpecError
from edgekit.models.checkpoint import safe_torch_load
from edgekit.models.imports.yolox_official import (
    KNOWN_SCALES,
    build_yolox_official,
    infer_layout,
    is_yolox_state_dict,
)
from edgekit.spec import ModelSpec
from tests.helpers import REPO_ROOT, load_tool, skip_unless_backends

ASSETS = REPO_ROOT / "tests" / "assets" / "yolox_official"
SCALES = [name for name, *_ in KNOWN_SCALES]
RECORDED_OUTPUTS = ["yolox_nano", "yolox_s"]
# Same float32 ops in the same order as upstream: the recorded outputs are reproduced to the last bit
# on this machine; the tolerance only allows for another CPU's kernel choices.
RAW_ATOL = 1e-5
RAW_RTOL = 1e-5


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def oracle():
    """tools/make_yolox_oracle.py as a module (its weight recipe); imported without the yolox package."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield load_tool("make_yolox_oracle", monkeypatch)


def _shapes(name: str) -> dict[str, list[int]]:
    layout = json.loads((ASSETS / f"{name}_keys.json").read_text())
    return {key: entry["shape"] for key, entry in layout.items()}


def _pattern_tensors(oracle, name: str) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.asarray(v)) for k, v in oracle.pattern_state_dict(_shapes(name)).items()}


def _recorded(oracle, name: str) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    with np.load(ASSETS / f"{name}_outputs.npz", allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    weights = oracle.oracle_state_dict(_shapes(name), arrays)
    return {k: torch.as_tensor(np.asarray(v)) for k, v in weights.items()}, arrays


def _run(model, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        return [o.numpy() for o in model(torch.from_numpy(x))]


# --- layout: keys, shapes and what is read from them ----------------------------------------------------


@pytest.mark.parametrize("name", SCALES)
def test_module_has_exactly_the_upstream_keys_and_shapes(oracle, name: str) -> None:
    shapes = _shapes(name)
    model = build_yolox_official({"model": _pattern_tensors(oracle, name)}, name, None, None)
    ours = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert list(ours) == list(shapes)  # same keys, same order as upstream's state_dict()
    assert ours == shapes


@pytest.mark.parametrize("name, base, depth, depthwise", KNOWN_SCALES)
def test_scale_is_recovered_from_the_tensors(oracle, name: str, base: int, depth: int, depthwise: bool) -> None:
    layout = infer_layout(_pattern_tensors(oracle, name), name)
    assert layout.scale_name == name
    assert (layout.base_channels, layout.depthwise, layout.num_classes) == (base, depthwise, 80)
    assert layout.width == {"yolox_nano": 0.25, "yolox_tiny": 0.375, "yolox_s": 0.5, "yolox_m": 0.75,
                            "yolox_l": 1.0, "yolox_x": 1.25}[name]
    # exps: depth 0.33 / 0.67 / 1.0 / 1.33 -> backbone dark2..dark5 n, 3n, 3n, n; neck round(3 * depth) = n.
    assert layout.csp_depths == (depth, 3 * depth, 3 * depth, depth, depth, depth, depth, depth)
    expected_size = (416, 416) if name in ("yolox_nano", "yolox_tiny") else (640, 640)
    assert layout.default_input_size == expected_size


def test_non_standard_depths_and_class_count_are_read_not_assumed(oracle) -> None:
    """A custom exp (2 classes, one neck CSPLayer with 2 Bottlenecks) loads with exactly its own layout."""
    shapes = _shapes("yolox_s")
    tensors = _pattern_tensors(oracle, "yolox_s")
    for level in range(3):
        for kind in ("weight", "bias"):
            key = f"head.cls_preds.{level}.{kind}"
            tensors[key] = tensors[key][:2].clone()
    extra = {key.replace("C3_p3.m.0.", "C3_p3.m.1."): value.clone()
             for key, value in tensors.items() if key.startswith("backbone.C3_p3.m.0.")}
    tensors.update(extra)
    model = build_yolox_official(tensors, "custom.pth", ["cat", "dog"], None)
    assert model.layout.csp_depths == (1, 3, 3, 1, 1, 2, 1, 1)
    assert model.layout.scale_name is None and model.spec.input_size == (640, 640)
    assert model.spec.class_names == ("cat", "dog")
    assert len(model.state_dict()) == len(shapes) + len(extra)
    outputs = _run(model, np.zeros((1, 3, 64, 64), np.float32))
    assert [o.shape for o in outputs] == [(1, 7, 8, 8), (1, 7, 4, 4), (1, 7, 2, 2)]


# --- parity with the upstream code -------------------------------------------------------------------


@pytest.mark.parametrize("name", RECORDED_OUTPUTS)
def test_raw_outputs_match_the_official_code(oracle, name: str) -> None:
    weights, recorded = _recorded(oracle, name)
    model = build_yolox_official(weights, name, None, None)
    outputs = _run(model, recorded["input"])
    for level, output in enumerate(outputs):
        np.testing.assert_allclose(output, recorded[f"raw_{level}"], rtol=RAW_RTOL, atol=RAW_ATOL)
    # The recorded outputs depend on the things a port gets wrong: channel order, BN eps.
    flipped = _run(model, np.ascontiguousarray(recorded["input"][:, ::-1]))
    assert np.abs(flipped[0] - recorded["raw_0"]).max() > 100 * RAW_ATOL


@pytest.mark.parametrize("name", RECORDED_OUTPUTS)
def test_channel_order_is_the_official_heads_own_concat(oracle, name: str) -> None:
    """Flattened like YOLOXHead's eval output (levels, then cells row-major) with sigmoid on obj and cls, our
    raw output equals the head's own ``cat([reg, obj.sigmoid(), cls.sigmoid()])`` — not just our hooks' concat."""
    weights, recorded = _recorded(oracle, name)
    outputs = _run(build_yolox_official(weights, name, None, None), recorded["input"])
    flat = np.concatenate([o.reshape(o.shape[0], o.shape[1], -1) for o in outputs], axis=2).transpose(0, 2, 1)
    flat = flat.astype(np.float64)
    flat[..., 4:] = 1.0 / (1.0 + np.exp(-flat[..., 4:]))
    np.testing.assert_allclose(flat, recorded["head_flat"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", RECORDED_OUTPUTS)
def test_edgekit_decoder_reproduces_the_official_decoding(oracle, name: str) -> None:
    from edgekit.runtime.decode import decode

    weights, recorded = _recorded(oracle, name)
    model = build_yolox_official(weights, name, None, None)
    input_hw = recorded["input"].shape[2:]
    candidates = decode(_run(model, recorded["input"]), model.spec.with_input_size(input_hw))
    official = recorded["decoded"][0].astype(np.float64)  # cx, cy, w, h, obj, cls...
    xyxy = np.stack([official[:, 0] - official[:, 2] / 2, official[:, 1] - official[:, 3] / 2,
                     official[:, 0] + official[:, 2] / 2, official[:, 1] + official[:, 3] / 2], axis=1)
    np.testing.assert_allclose(candidates.boxes[0], xyxy, rtol=1e-5, atol=1e-3)
    # YOLOX's postprocess scores a box obj * max(cls) with the argmax class.
    np.testing.assert_allclose(candidates.scores[0], official[:, 4] * official[:, 5:].max(axis=1), rtol=1e-5, atol=1e-6)
    # Where float32 sigmoids saturate to 1.0 several classes tie; the label must be one of the best.
    chosen = official[np.arange(len(official)), 5 + candidates.labels[0]]
    np.testing.assert_array_equal(chosen, official[:, 5:].max(axis=1))


# --- the checkpoint file ------------------------------------------------------------------------------


def _training_checkpoint(model_tensors: dict[str, torch.Tensor]) -> dict:
    """The dict YOLOX's Trainer saves: model, SGD optimizer state (momentum buffers), epoch, APs."""
    params = [torch.nn.Parameter(value.clone()) for key, value in model_tensors.items()
              if value.is_floating_point() and "running" not in key][:5]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    return {"start_epoch": 300, "model": model_tensors, "optimizer": optimizer.state_dict(),
            "best_ap": 40.5, "curr_ap": 40.1}


def test_training_checkpoint_file_round_trips(oracle, tmp_path: Path) -> None:
    weights, recorded = _recorded(oracle, "yolox_nano")
    path = tmp_path / "yolox_nano.pth"
    torch.save(_training_checkpoint(weights), path)
    loaded = safe_torch_load(path)
    assert is_yolox_state_dict(loaded)
    model = build_yolox_official(loaded, path.name, None, None)
    assert not model.training and model.config is None
    for level, output in enumerate(_run(model, recorded["input"])):
        np.testing.assert_allclose(output, recorded[f"raw_{level}"], rtol=RAW_RTOL, atol=RAW_ATOL)


def test_data_parallel_prefix_is_stripped(oracle) -> None:
    tensors = {f"module.{key}": value for key, value in _pattern_tensors(oracle, "yolox_tiny").items()}
    assert is_yolox_state_dict(tensors)
    assert build_yolox_official(tensors, "ddp.pth", None, None).layout.scale_name == "yolox_tiny"


def test_float16_state_dict_loads_as_float32(oracle, tmp_path: Path) -> None:
    weights, recorded = _recorded(oracle, "yolox_s")
    half = {key: value.half() if value.is_floating_point() else value for key, value in weights.items()}
    torch.save({"model": half}, tmp_path / "half.pth")
    model = build_yolox_official(safe_torch_load(tmp_path / "half.pth"), "half.pth", None, None)
    assert all(p.dtype == torch.float32 for p in model.state_dict().values() if p.is_floating_point())
    rounded = build_yolox_official({k: v.float() if v.is_floating_point() else v for k, v in half.items()},
                                   "rounded", None, None)
    x = recorded["input"]
    for ours, expected in zip(_run(model, x), _run(rounded, x)):
        np.testing.assert_array_equal(ours, expected)


# --- spec ----------------------------------------------------------------------------------------------


def test_spec_describes_yolox_preprocessing_and_postprocessing(oracle) -> None:
    model = build_yolox_official(_pattern_tensors(oracle, "yolox_nano"), "nano.pth", None, None)
    spec = model.spec
    assert spec.family == "yolox" and spec.head.kind == "yolox" and spec.head.params == {"strides": [8, 16, 32]}
    assert spec.input_size == (416, 416)
    assert spec.class_names == tuple(f"class{i}" for i in range(80))
    assert spec.color_order == "BGR"
    assert (spec.normalization.scale, spec.normalization.mean, spec.normalization.std) == (1.0, (0, 0, 0), (1, 1, 1))
    assert (spec.resize.mode, spec.resize.pad_value, spec.resize.align) == ("letterbox", 114, "top_left")
    pp = spec.postprocess
    assert (pp.conf_threshold, pp.iou_threshold, pp.class_agnostic) == (0.3, 0.3, True)  # tools/demo.py defaults
    assert ModelSpec.from_json(spec.to_json()) == spec


def test_save_checkpoint_refuses_an_imported_model(oracle, tmp_path: Path) -> None:
    """An imported model has ``.config = None``: save_checkpoint used to die with AttributeError
    ('NoneType' object has no attribute 'to_dict'); now an edgekit error, and no file is written."""
    from edgekit.models.loading import save_checkpoint

    model = build_yolox_official(_pattern_tensors(oracle, "yolox_nano"), "nano.pth", None, None)
    with pytest.raises(SpecError, match=r"imported checkpoint \(yolox\) has no edgekit ModelConfig"):
        save_checkpoint(model, tmp_path / "nano_edgekit.pt")
    assert list(tmp_path.iterdir()) == []


def test_input_size_and_class_names_can_be_given(oracle) -> None:
    names = [f"n{i}" for i in range(80)]
    model = build_yolox_official(_pattern_tensors(oracle, "yolox_s"), "s.pth", names, (320, 480))
    assert model.spec.input_size == (320, 480) and model.spec.class_names == tuple(names)


@pytest.mark.parametrize("names, size, message", [
    (["a", "b"], None, "2 class names for a YOLOX checkpoint with 80 classes"),
    ("person", None, "not a single string"),
    (None, (416, 400), "multiples of 32"),
    (None, (0, 32), "multiples of 32"),
])
def test_bad_class_names_or_input_size_are_spec_errors(oracle, names, size, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        build_yolox_official(_pattern_tensors(oracle, "yolox_nano"), "nano.pth", names, size)


# --- bad files -------------------------------------------------------------------------------------------


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_shape_mismatch_names_the_key_and_both_shapes(oracle) -> None:
    tensors = _pattern_tensors(oracle, "yolox_s")
    key = "backbone.C3_n3.conv2.conv.weight"
    tensors[key] = torch.zeros(64, 200, 1, 1)
    with pytest.raises(ModelFileError) as error:
        build_yolox_official(tensors, "broken.pth", None, None)
    message = _one_line(error)
    assert message.startswith("broken.pth: ")
    assert key in message and "(64, 200, 1, 1)" in message and "(128, 256, 1, 1)" in message


def test_head_wider_than_the_backbone_implies_is_reported(oracle) -> None:
    """Stem says yolox_s (32 channels) but the head comes from yolox_m: the first disagreeing key is named."""
    tensors = _pattern_tensors(oracle, "yolox_s")
    tensors.update({k: v for k, v in _pattern_tensors(oracle, "yolox_m").items() if k.startswith("head.")})
    with pytest.raises(ModelFileError, match=r"key 'head\.\S+' has shape \(\d+, \d+, \d+, \d+\) in the checkpoint "
                                             r"but \(\d+, \d+, \d+, \d+\) in the model") as error:
        build_yolox_official(tensors, "mixed.pth", None, None)
    _one_line(error)


def test_partly_depthwise_state_dict_is_reported(oracle) -> None:
    tensors = _pattern_tensors(oracle, "yolox_nano")
    for key in [k for k in tensors if k.startswith("backbone.bu_conv1.")]:
        del tensors[key]
    with pytest.raises(ModelFileError, match="lacks key 'backbone.bu_conv1.dconv.conv.weight'") as error:
        build_yolox_official(tensors, "nano.pth", None, None)
    _one_line(error)


def test_non_finite_weights_are_reported(oracle) -> None:
    tensors = _pattern_tensors(oracle, "yolox_nano")
    tensors["head.obj_preds.2.bias"] = torch.tensor([float("nan")])
    with pytest.raises(ModelFileError, match=r"nan.pth: tensor 'head\.obj_preds\.2\.bias' holds 1 NaN"):
        build_yolox_official(tensors, "nan.pth", None, None)


def test_stem_with_wrong_input_channels_is_reported(oracle) -> None:
    tensors = _pattern_tensors(oracle, "yolox_s")
    tensors["backbone.backbone.stem.conv.conv.weight"] = torch.zeros(32, 4, 3, 3)
    with pytest.raises(ModelFileError, match=r"stem\.conv\.conv\.weight' has shape \(32, 4, 3, 3\); expected \(C, 12"):
        build_yolox_official(tensors, "gray.pth", None, None)


def test_other_state_dicts_are_not_yolox() -> None:
    from edgekit.models import ModelConfig, build_model

    own = build_model(ModelConfig("yolox", num_classes=3)).state_dict()  # edgekit's own YOLOX: different names
    assert not is_yolox_state_dict(own)
    assert not is_yolox_state_dict({"model": own})
    assert not is_yolox_state_dict([torch.zeros(1)])
    assert not is_yolox_state_dict({"epoch": 3})
    with pytest.raises(ModelFileError, match="own.pth: not an official YOLOX state_dict") as error:
        build_yolox_official(own, "own.pth", None, None)
    _one_line(error)


# --- export ----------------------------------------------------------------------------------------------


def test_exports_to_onnx_and_onnxruntime_matches_pytorch(oracle, tmp_path: Path) -> None:
    """Through edgekit's export chain (Focus -> conv, SPP -> SPPF, BN folding, ONNX passes) at 128x160."""
    skip_unless_backends("onnxruntime")
    import onnxruntime as ort

    from edgekit.convert.chain import export_artifact

    weights, _ = _recorded(oracle, "yolox_nano")
    model = build_yolox_official(weights, "nano.pth", None, (128, 160))
    manifest = export_artifact(model, tmp_path / "art")
    assert manifest is not None
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(1, 3, 128, 160)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "art" / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_outputs = session.run(list(model.spec.head.output_names), {model.spec.input_name: x})
    for ours, theirs in zip(_run(model, x), onnx_outputs):
        assert theirs.shape == ours.shape
        np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4 * float(np.abs(ours).max()))


def test_exported_artifact_detects_like_the_pytorch_reference(oracle, tmp_path: Path) -> None:
    """Runtime path (top-left letterbox, BGR, no /255, decode, class-agnostic NMS) on the ONNX model vs the
    torch reference detector, on images of several aspect ratios."""
    skip_unless_backends("onnxruntime")
    from edgekit.convert.chain import export_artifact
    from edgekit.reference.detector import ReferenceDetector
    from edgekit.runtime.detector import Detector
    from edgekit.validate.compare import compare_detections

    weights, _ = _recorded(oracle, "yolox_s")
    for key in [k for k in weights if k.startswith(("head.cls_preds.", "head.obj_preds.", "head.reg_preds."))]:
        # Tempered predictions: on noise images the recorded weights saturate sigmoid to 1.0 and throw boxes
        # far off the image (clipped to zero area), which would test tie-breaking rather than the conversion.
        weights[key] = weights[key] * 0.1
    model = build_yolox_official(weights, "s.pth", None, (160, 192))
    export_artifact(model, tmp_path / "art")
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, size=shape, dtype=np.uint8) for shape in ((120, 200, 3), (300, 150, 3), (160, 192, 3))]
    reference = ReferenceDetector(model, model.spec).detect_batch(images)
    with Detector.load(tmp_path / "art") as detector:
        candidate = [detector.detect(image) for image in images]
    assert [len(d) for d in candidate] == [len(d) for d in reference]
    # Random weights also place boxes wholly in the padding or off the image; clipped to zero area they have
    # no IoU with anything, so only boxes with some area are matched.
    reference, candidate = [[_with_area(d) for d in side] for side in (reference, candidate)]
    stats = compare_detections(reference, candidate, iou_threshold=0.999)
    assert stats.reference_count >= 30, "the tempered weights give detections above the demo threshold"
    assert stats.matched == stats.reference_count == stats.candidate_count, stats
    assert stats.max_score_delta <= 1e-4, stats


def _with_area(detections):
    from edgekit.runtime.detections import Detections

    keep = np.prod(detections.boxes[:, 2:] - detections.boxes[:, :2], axis=1) >= 1.0
    return Detections(detections.boxes[keep], detections.scores[keep], detections.labels[keep])
