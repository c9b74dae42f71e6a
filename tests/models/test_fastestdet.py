"""FastestDet: the upstream COCO checkpoint loads strictly and reproduces the upstream ONNX export.

The oracle for the raw output is the authors' own ``FastestDet.onnx`` run in onnxruntime, fed the
same tensor. Tests that need the shared test assets skip when ``../shared/models/fastestdet``
(relative to the repository root) is absent; the output-contract tests run on random weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.errors import InputError, SpecError
from edgekit.models.checkpoint import load_state_dict_strict, safe_torch_load
from edgekit.models.fastestdet import FastestDet, _channel_halves, build_fastestdet, fastestdet_spec
from edgekit.spec import ModelSpec
from tests.helpers import skip_unless_backends

REPO_ROOT = Path(__file__).resolve().parents[2]
FASTESTDET_DIR = (REPO_ROOT / ".." / "shared" / "models" / "fastestdet").resolve()
CHECKPOINT = FASTESTDET_DIR / "fastestdet_coco_352.pth"
UPSTREAM_ONNX = FASTESTDET_DIR / "FastestDet.onnx"
PHOTOS = [FASTESTDET_DIR / "images" / f"{index}.jpg" for index in range(5)]

UPSTREAM_PARAMETER_COUNT = 244_490  # README of the asset folder / upstream paper figure "0.24 M"
UPSTREAM_STATE_DICT_ENTRIES = 420
INPUT_SIZE = 352
# float32 agreement. Probabilities (obj, cls) must agree to 1e-4 absolute. The raw regression
# channels reach |reg| ~ 5 and pass through ~60 conv+BN layers: on images/4.jpg each float32
# implementation is ~6e-5 away from a float64 evaluation (in opposite directions), so the two
# differ by 1.0002e-4 at |reg| ~ 2. Hence the usual allclose form |a - e| <= atol + rtol * |e|
# for the raw tensor. Real defects are orders of magnitude larger (count_include_pad=False in
# the neck's avg-pool: 0.26; BN eps 1e-3: 4.9; bilinear instead of nearest upsampling: 1.9).
FP32_ATOL = 1e-4
FP32_RTOL = 1e-4

needs_assets = pytest.mark.skipif(
    not (CHECKPOINT.is_file() and UPSTREAM_ONNX.is_file()),
    reason=f"FastestDet test assets not found at {FASTESTDET_DIR}",
)


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def coco_model() -> FastestDet:
    if not CHECKPOINT.is_file():
        pytest.skip(f"FastestDet checkpoint not found at {CHECKPOINT}")
    model = build_fastestdet(num_classes=80)
    load_state_dict_strict(model, safe_torch_load(CHECKPOINT), source=CHECKPOINT.name)
    return model.eval()


@pytest.fixture(scope="module")
def upstream_session():
    skip_unless_backends("onnxruntime")
    import onnxruntime as ort

    if not UPSTREAM_ONNX.is_file():
        pytest.skip(f"upstream ONNX not found at {UPSTREAM_ONNX}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(UPSTREAM_ONNX), options, providers=["CPUExecutionProvider"])


def _photo_tensor(path: Path) -> np.ndarray:
    """Upstream pre-processing: BGR, plain bilinear resize to 352x352, /255, NCHW float32 [1,3,352,352]."""
    from PIL import Image

    rgb = np.asarray(Image.open(path).convert("RGB").resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR))
    bgr = rgb[:, :, ::-1]
    return np.ascontiguousarray(bgr.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255.0)


def _run_edgekit(model: FastestDet, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(batch)).numpy()


def _run_upstream(session, batch: np.ndarray) -> np.ndarray:
    return session.run(None, {"input.1": batch})[0]


def _assert_matches_upstream(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    probabilities = [0, *range(5, expected.shape[1])]  # objectness and class channels
    assert np.abs(actual[:, probabilities] - expected[:, probabilities]).max() <= FP32_ATOL
    np.testing.assert_allclose(actual, expected, atol=FP32_ATOL, rtol=FP32_RTOL)


# --- the real checkpoint ----------------------------------------------------------------------


@needs_assets
def test_checkpoint_loads_strictly_with_upstream_parameter_count(coco_model: FastestDet) -> None:
    state_dict = safe_torch_load(CHECKPOINT)
    assert len(state_dict) == UPSTREAM_STATE_DICT_ENTRIES
    # torch's own strict check agrees with ours: nothing missing, nothing unexpected.
    fresh = build_fastestdet(80)
    result = fresh.load_state_dict(state_dict, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert sum(parameter.numel() for parameter in coco_model.parameters()) == UPSTREAM_PARAMETER_COUNT
    loaded = coco_model.state_dict()
    for key, tensor in state_dict.items():
        assert torch.equal(loaded[key], tensor), key


@needs_assets
@pytest.mark.parametrize("photo", PHOTOS, ids=lambda path: path.name)
def test_raw_output_matches_upstream_onnx_on_photos(coco_model, upstream_session, photo: Path) -> None:
    if not photo.is_file():
        pytest.skip(f"{photo} not found")
    batch = _photo_tensor(photo)
    expected = _run_upstream(upstream_session, batch)
    actual = _run_edgekit(coco_model, batch)
    assert actual.shape == expected.shape == (1, 85, 22, 22)
    _assert_matches_upstream(actual, expected)


@needs_assets
@pytest.mark.parametrize("seed", [0, 1])
def test_raw_output_matches_upstream_onnx_on_random_input(coco_model, upstream_session, seed: int) -> None:
    batch = np.random.default_rng(seed).random((1, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    expected = _run_upstream(upstream_session, batch)
    actual = _run_edgekit(coco_model, batch)
    _assert_matches_upstream(actual, expected)


@needs_assets
def test_batched_forward_equals_single_images_with_real_weights(coco_model) -> None:
    # The upstream ONNX is fixed at batch 1, so batch > 1 is checked against per-image runs.
    batch = np.random.default_rng(7).random((3, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    together = _run_edgekit(coco_model, batch)
    for index in range(len(batch)):
        alone = _run_edgekit(coco_model, batch[index:index + 1])
        assert np.abs(together[index] - alone[0]).max() <= 1e-5


# --- architecture and output contract (random weights, no assets needed) ----------------------


@pytest.mark.parametrize("batch_size", [1, 2, 3])
@pytest.mark.parametrize("channels", [4, 48])
def test_channel_halves_are_even_and_odd_channels(batch_size: int, channels: int) -> None:
    x = torch.randn(batch_size, channels, 5, 7, generator=torch.Generator().manual_seed(channels))
    even, odd = _channel_halves(x)
    assert torch.equal(even, x[:, 0::2])
    assert torch.equal(odd, x[:, 1::2])


@pytest.mark.parametrize("num_classes", [1, 3, 80])
@pytest.mark.parametrize("height,width", [(352, 352), (320, 480), (64, 96)])
def test_output_contract(num_classes: int, height: int, width: int) -> None:
    torch.manual_seed(num_classes)
    model = build_fastestdet(num_classes)
    x = torch.rand(2, 3, height, width)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 5 + num_classes, height // 16, width // 16)
    assert out.dtype == torch.float32
    objectness, class_probs = out[:, 0], out[:, 5:]
    assert bool(((objectness > 0) & (objectness < 1)).all())
    assert torch.allclose(class_probs.sum(dim=1), torch.ones_like(objectness), atol=1e-5)
    assert bool((class_probs >= 0).all())


def test_batched_forward_equals_single_images_random_weights() -> None:
    torch.manual_seed(3)
    model = build_fastestdet(5)
    batch = torch.rand(3, 3, 128, 160)
    with torch.no_grad():
        together = model(batch)
        alone = torch.cat([model(batch[i:i + 1]) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_upstream_state_dict_key_layout() -> None:
    keys = list(build_fastestdet(80).state_dict())
    assert len(keys) == UPSTREAM_STATE_DICT_ENTRIES
    for expected in ("backbone.first_conv.0.weight", "backbone.stage2.0.branch_proj.2.weight",
                     "backbone.stage3.7.branch_main.6.running_var", "backbone.stage4.3.branch_main.5.weight",
                     "SPP.Conv1x1.conv1x1.0.weight", "SPP.S3.7.bias", "SPP.output.1.weight",
                     "detect_head.conv1x1.conv1x1.0.weight", "detect_head.cls_layers.conv5x5.3.weight"):
        assert expected in keys
    assert sum(p.numel() for p in build_fastestdet(80).parameters()) == UPSTREAM_PARAMETER_COUNT


@pytest.mark.parametrize("shape", [(1, 3, 340, 352), (1, 3, 352, 336), (1, 1, 352, 352), (3, 352, 352)])
def test_rejects_unsupported_input_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(InputError, match="FastestDet"):
        build_fastestdet(80)(torch.zeros(shape))


@pytest.mark.parametrize("num_classes", [0, -1, 2.5, True])
def test_build_rejects_bad_num_classes(num_classes) -> None:
    with pytest.raises(SpecError, match="num_classes"):
        build_fastestdet(num_classes)


# --- spec ---------------------------------------------------------------------------------------


def test_spec_describes_upstream_preprocessing_and_head() -> None:
    names = [f"class{i}" for i in range(80)]
    spec = fastestdet_spec(names)
    assert spec.family == "fastestdet"
    assert spec.input_size == (352, 352)
    assert spec.class_names == tuple(names)
    assert spec.head.kind == "fastestdet" and spec.head.output_names == ("output",)
    assert spec.color_order == "BGR"
    assert spec.resize.mode == "resize"
    assert spec.normalization.scale == pytest.approx(1 / 255)
    assert spec.normalization.mean == (0.0, 0.0, 0.0) and spec.normalization.std == (1.0, 1.0, 1.0)
    assert spec.postprocess.conf_threshold == pytest.approx(0.25)
    assert spec.postprocess.iou_threshold == pytest.approx(0.45)
    assert spec.postprocess.nms and not spec.postprocess.class_agnostic
    assert ModelSpec.from_json(spec.to_json()) == spec
    assert json.loads(spec.to_json())["head"]["kind"] == "fastestdet"


def test_spec_accepts_other_multiples_of_32() -> None:
    assert fastestdet_spec(["a"], input_size=(320, 640)).input_size == (320, 640)


@pytest.mark.parametrize("size", [(350, 352), (352, 16), (0, 352)])
def test_spec_rejects_sizes_the_network_cannot_take(size: tuple[int, int]) -> None:
    with pytest.raises(SpecError, match="multiples of 32"):
        fastestdet_spec(["a"], input_size=size)
