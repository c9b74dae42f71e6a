"""Built-in detector families: output contract, size budget, ONNX parity, spec, training-form blocks.

Expected shapes are derived here from the raw-output contract in the edgekit.spec docstring (not
read back from the model), and the ONNX Runtime parity check compares the exported graph with the
PyTorch module on weights whose BatchNorm statistics are non-trivial and whose outputs demonstrably
depend on the input (so a wrong export could not pass by outputting biases).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.errors import EdgekitError, SpecError
from edgekit.models import FAMILIES, ModelConfig, build_model, family_names
from edgekit.models.common import (
    C3,
    SPP,
    SPPF,
    C2f,
    ConvBNAct,
    ConvTransposeBNAct,
    Focus,
    RepVGGBlock,
    scale_channels,
    scale_depth,
)
from edgekit.models.ssd import num_priors
from edgekit.models.yolov5 import default_anchors
from edgekit.runtime import decode as runtime_decode
from edgekit.spec import ModelSpec
from tests.helpers import skip_unless_backends

torch.set_num_threads(1)

BUILT_IN = ("yolov5", "yolox", "yolov6", "yolov8", "centernet", "ssd")
HEAD_KIND = {"yolov5": "yolo_anchor", "yolox": "yolox", "yolov6": "dfl", "yolov8": "dfl",
             "centernet": "centernet", "ssd": "ssd"}
SIZES = ((160, 160), (128, 192))
NUM_CLASSES = 6
BATCH = 2
PARITY_TOLERANCE = 1e-4  # max abs, fp32 ONNX Runtime vs PyTorch
# SSD feature maps for the two sizes, worked out by hand: strides 8, 16, 32 divide exactly; the
# stride-64 extra level is a 3x3/2 conv with padding 1 on the stride-32 map: ceil(n / 2).
SSD_FEATURE_MAPS = {(160, 160): [[20, 20], [10, 10], [5, 5], [3, 3]],
                    (128, 192): [[16, 24], [8, 12], [4, 6], [2, 3]]}
SSD_PRIORS_PER_CELL = [4, 6, 6, 4]  # 2 + 2 * len(aspect_ratios) for ratios (2,), (2, 3), (2, 3), (2,)


def make_model(family: str, size: tuple[int, int] = (160, 160), seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(family, NUM_CLASSES, input_size=size))


def images(size: tuple[int, int], seed: int, batch: int = BATCH) -> torch.Tensor:
    return torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def expected_shapes(spec: ModelSpec, batch: int) -> list[tuple[int, ...]]:
    """Output shapes straight from the raw-output contract of spec.head.kind."""
    h, w = spec.input_size
    nc = spec.num_classes
    params = spec.head.params
    kind = spec.head.kind
    if kind == "yolo_anchor":
        return [(batch, len(anchors) * (5 + nc), h // s, w // s) for s, anchors in zip(params["strides"], params["anchors"])]
    if kind == "yolox":
        return [(batch, 4 + 1 + nc, h // s, w // s) for s in params["strides"]]
    if kind == "dfl":
        return [(batch, 4 * params["reg_max"] + nc, h // s, w // s) for s in params["strides"]]
    if kind == "centernet":
        s = params["stride"]
        return [(batch, nc, h // s, w // s), (batch, 2, h // s, w // s), (batch, 2, h // s, w // s)]
    if kind == "ssd":
        priors = sum(fh * fw * k for (fh, fw), k in zip(SSD_FEATURE_MAPS[(h, w)], SSD_PRIORS_PER_CELL))
        return [(batch, priors, 4), (batch, priors, 1 + nc)]
    raise AssertionError(f"no contract for head kind {kind!r}")


def give_batchnorm_statistics(model: nn.Module, x: torch.Tensor, var_floor: float = 0.1, seed: int = 0) -> None:
    """Eval-mode BNs with random affine parameters and running statistics measured on ``x``.

    Each BN's running mean/var are set, in forward order, from its actual input on ``x`` (so that
    activations stay O(1) instead of fading out through dozens of default-initialised layers); the
    variance is floored at ``var_floor`` so that near-constant channels are not amplified into
    float32 rounding noise, which a random network would otherwise compound layer after layer.
    """
    generator = torch.Generator().manual_seed(seed)

    def measure(bn: nn.BatchNorm2d, inputs: tuple[torch.Tensor]) -> None:
        batch_input = inputs[0]
        bn.running_mean.copy_(batch_input.mean(dim=(0, 2, 3)))
        bn.running_var.copy_(batch_input.var(dim=(0, 2, 3)) + var_floor)

    hooks = []
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.weight.data = 0.8 + 0.4 * torch.rand(n, generator=generator)
            module.bias.data = 0.1 * torch.randn(n, generator=generator)
            hooks.append(module.register_forward_pre_hook(measure))
    model.eval()
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- registry and config ---------------------------------------------------------------------

def test_registry_lists_every_family_lazily():
    assert set(BUILT_IN) | {"fastestdet"} == set(FAMILIES)
    assert family_names() == sorted(FAMILIES)
    assert FAMILIES["fastestdet"] == "edgekit.models.fastestdet:build_from_config"
    for target in FAMILIES.values():
        module, _, function = target.partition(":")
        assert module.startswith("edgekit.models.") and function == "build_from_config"


@pytest.mark.parametrize("typo, suggestion", [("yolov8s", "yolov8"), ("centrenet", "centernet"), ("YOLOX", "yolox")])
def test_unknown_family_suggests_the_closest_name(typo, suggestion):
    with pytest.raises(EdgekitError, match=f"unknown model family '{typo}'; did you mean '{suggestion}'"):
        build_model(ModelConfig(typo, NUM_CLASSES))


def test_unknown_family_without_a_close_match_lists_the_known_ones():
    with pytest.raises(SpecError, match="known families: centernet, fastestdet, ssd"):
        ModelConfig("detr", NUM_CLASSES)


def test_model_config_round_trips_and_rejects_bad_fields():
    config = ModelConfig("yolov8", 3, input_size=(128, 192), width=0.5, depth=1)
    data = config.to_dict()
    assert data == {"family": "yolov8", "num_classes": 3, "input_size": [128, 192], "width": 0.5, "depth": 1.0}
    assert ModelConfig.from_dict(data) == config
    with pytest.raises(SpecError, match="unknown field 'widht'; did you mean 'width'"):
        ModelConfig.from_dict({**data, "widht": 0.5})
    with pytest.raises(SpecError, match="missing required field 'num_classes'"):
        ModelConfig.from_dict({"family": "yolov8"})
    with pytest.raises(SpecError, match="multiples of 32"):
        ModelConfig("yolov8", 3, input_size=(160, 100))
    with pytest.raises(SpecError, match="num_classes must be a positive integer"):
        ModelConfig("yolov8", 0)
    with pytest.raises(SpecError, match="width must be"):
        ModelConfig("yolov8", 3, width=0)


def test_class_names_default_and_count_check():
    model = make_model("yolox")
    assert model.spec.class_names == tuple(f"class{i}" for i in range(NUM_CLASSES))
    named = build_model(ModelConfig("yolox", 2), ["cat", "dog"])
    assert named.spec.class_names == ("cat", "dog")
    with pytest.raises(SpecError, match="got 3 class names for a model with num_classes=2"):
        build_model(ModelConfig("yolox", 2), ["a", "b", "c"])


def test_scaling_helpers():
    assert [scale_channels(c, 0.25) for c in (64, 128, 256, 100, 1)] == [16, 32, 64, 32, 8]
    assert [scale_depth(n, 0.33) for n in (1, 3, 6, 9, 18)] == [1, 1, 2, 3, 6]


def test_yolov5_anchors_scale_with_the_long_input_side():
    # canonical 640 anchors x 160/640 = x 0.25 and x 192/640 = x 0.3
    assert default_anchors((160, 160))[0] == [[2.5, 3.25], [4.0, 7.5], [8.25, 5.75]]
    assert default_anchors((128, 192))[2][2] == [pytest.approx(373 * 0.3), pytest.approx(326 * 0.3)]


# --- per family: contract, spec, size ---------------------------------------------------------

@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("family", BUILT_IN)
def test_forward_matches_the_raw_output_contract(family, size):
    model = make_model(family, size).eval()
    spec = model.spec
    assert spec.head.kind == HEAD_KIND[family]
    assert spec.input_size == size and model.config.input_size == size
    with torch.no_grad():
        outputs = model(images(size, seed=1))
    assert isinstance(outputs, tuple)
    assert len(outputs) == len(spec.head.output_names)
    assert [tuple(o.shape) for o in outputs] == expected_shapes(spec, BATCH)
    assert all(o.dtype == torch.float32 and torch.isfinite(o).all() for o in outputs)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_ssd_params_describe_the_feature_maps(size):
    params = make_model("ssd", size).spec.head.params
    assert params["feature_maps"] == SSD_FEATURE_MAPS[size]
    assert params["steps"] == [8, 16, 32, 64]
    assert len(params["min_sizes"]) == len(params["max_sizes"]) == len(params["aspect_ratios"]) == 4
    assert all(lo < hi for lo, hi in zip(params["min_sizes"], params["max_sizes"]))
    assert num_priors(params) == expected_shapes(make_model("ssd", size).spec, 1)[0][1]
    # the runtime's prior generator agrees with the model's loc/conf row count
    assert len(runtime_decode.ssd_priors(params, size)) == expected_shapes(make_model("ssd", size).spec, 1)[0][1]


@pytest.mark.parametrize("family", BUILT_IN)
def test_spec_round_trips_through_json(family):
    spec = make_model(family, (128, 192)).spec
    again = ModelSpec.from_json(spec.to_json())
    assert again == spec
    assert spec.color_order == "RGB"
    if family.startswith("yolo"):
        assert spec.resize.mode == "letterbox" and spec.resize.pad_value == 114
        assert spec.normalization.scale == pytest.approx(1 / 255) and spec.normalization.mean == (0, 0, 0)
    if family == "centernet":
        assert spec.head.params == {"stride": 4, "topk": 100} and spec.postprocess.nms is False


@pytest.mark.parametrize("family", BUILT_IN)
def test_parameter_count_fits_cpu_training(family):
    # Width 0.25 stays small enough to train on 2 CPU cores (yolox, with plain 3x3 convs in its
    # decoupled head, is the largest at 2.24 M and trains at yolov8's speed per iteration).
    assert 0.1e6 <= parameter_count(make_model(family)) <= 2.5e6


@pytest.mark.parametrize("family", BUILT_IN)
def test_compute_fits_cpu_training(family):
    """Multiply-accumulates of every conv at 160x160, a deterministic stand-in for speed (which is
    measured in benchmarks, not unit tests): under 250 M per image keeps a batch-16 forward pass
    around 0.15-0.25 s on one core."""
    model = make_model(family).eval()
    macs = []

    def count(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        weight_per_output = module.weight[0].numel()  # (c_in / groups) * k * k for Conv2d
        if isinstance(module, nn.ConvTranspose2d):  # each input pixel scatters c_out/groups * k * k
            macs.append(inputs[0][0].numel() * weight_per_output)
        else:
            macs.append(output[0].numel() * weight_per_output)

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        model(images((160, 160), seed=2, batch=1))
    for hook in hooks:
        hook.remove()
    assert 5e6 < sum(macs) < 250e6


# --- ONNX export parity ------------------------------------------------------------------------

def export_onnx(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    spec = model.spec
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript-exporter deprecation notices
        torch.onnx.export(model, (x,), str(path), opset_version=17, dynamo=False,
                          input_names=[spec.input_name], output_names=list(spec.head.output_names))


# Ops a backend-neutral detector graph may use (what OpenVINO and pnnx/ncnn convert without
# plugins); Identity/Constant are exporter bookkeeping.
PORTABLE_OPS = {"Conv", "ConvTranspose", "BatchNormalization", "Relu", "Sigmoid", "Mul", "Add", "MaxPool", "Resize",
                "Concat", "Split", "Slice", "Transpose", "Reshape", "Identity", "Constant"}


@pytest.mark.parametrize("family", BUILT_IN)
def test_onnx_export_matches_torch(family, tmp_path):
    skip_unless_backends("onnxruntime")
    import onnx
    import onnxruntime as ort

    size = (128, 192)  # non-square, so a swapped H/W anywhere in the graph shows
    model = make_model(family, size, seed=3)
    x = images(size, seed=4)
    give_batchnorm_statistics(model, x, seed=5)
    with torch.no_grad():
        expected = [o.numpy() for o in model(x)]
        other = [o.numpy() for o in model(images(size, seed=6))]
    # Guard against a vacuous comparison: the outputs must depend on the input far beyond the tolerance.
    assert max(float(np.abs(a - b).max()) for a, b in zip(expected, other)) > 100 * PARITY_TOLERANCE

    path = tmp_path / f"{family}.onnx"
    export_onnx(model, x, path)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert {n.op_type for n in graph.graph.node} <= PORTABLE_OPS
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(model.spec.head.output_names)
    actual = session.run(None, {model.spec.input_name: x.numpy()})
    for name, a, e in zip(model.spec.head.output_names, actual, expected):
        assert a.shape == e.shape, name
        assert float(np.abs(a - e).max()) <= PARITY_TOLERANCE, name


# --- training-form blocks (targets of the module passes) ---------------------------------------

def test_every_batchnorm_is_foldable_or_a_repvgg_identity_branch():
    """The BN-folding pass finds BNs as the ``bn`` sibling of a ``conv`` in one module; the only other
    BNs are RepVGG identity branches (the RepVGG pass folds those)."""
    for family in BUILT_IN:
        model = make_model(family)
        foldable = repvgg_identity = 0
        for module in model.modules():
            if isinstance(module, RepVGGBlock) and module.rbr_identity is not None:
                repvgg_identity += 1
            if isinstance(getattr(module, "bn", None), nn.BatchNorm2d):
                assert isinstance(module.conv, (nn.Conv2d, nn.ConvTranspose2d)), family
                assert module.conv.bias is None and module.conv.out_channels == module.bn.num_features, family
                foldable += 1
        total = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert foldable + repvgg_identity == total, family


def blocks(model: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


def test_yolov5_and_yolox_keep_focus_and_spp():
    for family in ("yolov5", "yolox"):
        model = make_model(family)
        (focus,) = blocks(model, Focus)
        assert focus.conv.conv.in_channels == 12 and focus.conv.conv.kernel_size == (3, 3)
        assert focus.conv.conv.stride == (1, 1) and focus.conv.conv.padding == (1, 1)
        (spp,) = blocks(model, SPP)
        assert [(p.kernel_size, p.stride, p.padding) for p in spp.m] == [(5, 1, 2), (9, 1, 4), (13, 1, 6)]
        assert not blocks(model, SPPF)
    assert blocks(make_model("yolov5"), C3)


def test_yolov6_keeps_repvgg_branches():
    model = make_model("yolov6")
    reps = blocks(model, RepVGGBlock)
    assert len(reps) >= 10
    for block in reps:
        assert block.rbr_dense.conv.kernel_size == (3, 3) and block.rbr_dense.conv.padding == (1, 1)
        assert block.rbr_1x1.conv.kernel_size == (1, 1) and block.rbr_1x1.conv.padding == (0, 0)
        assert block.rbr_1x1.conv.stride == block.rbr_dense.conv.stride
        dense = block.rbr_dense.conv
        same_shape = dense.in_channels == dense.out_channels and dense.stride == (1, 1)
        assert isinstance(block.rbr_identity, nn.BatchNorm2d) == same_shape
    assert any(b.rbr_identity is not None for b in reps) and any(b.rbr_identity is None for b in reps)
    assert blocks(model, SPPF)


def test_yolov8_uses_c2f_and_sppf_and_centernet_transposed_conv_bn():
    yolov8 = make_model("yolov8")
    assert blocks(yolov8, C2f) and blocks(yolov8, SPPF) and not blocks(yolov8, SPP)
    deconvs = blocks(make_model("centernet"), ConvTransposeBNAct)
    assert len(deconvs) == 3 and all(isinstance(d.conv, nn.ConvTranspose2d) for d in deconvs)
    depthwise = [m for m in make_model("ssd").modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels == m.out_channels for m in depthwise)


def randomise_batchnorm(module: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            n = bn.num_features
            bn.weight.data = 0.5 + torch.rand(n, generator=generator)
            bn.bias.data = torch.randn(n, generator=generator) * 0.2
            bn.running_mean.data = torch.randn(n, generator=generator) * 0.2
            bn.running_var.data = 0.5 + torch.rand(n, generator=generator)
    module.eval()


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval BN as y = a * x + b per channel: a = gamma / sqrt(var + eps), b = beta - a * mean."""
    a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return a, bn.bias - a * bn.running_mean


@pytest.mark.parametrize("seed", [0, 1])
def test_focus_equals_a_6x6_stride_2_conv(seed):
    """Focus (space-to-depth + 3x3 conv) == 6x6/2 conv with W6[o, c, 2a+dy, 2b+dx] = W3[o, g*C + c, a, b],
    g indexing the slices in the order (dy, dx) = (0,0), (1,0), (0,1), (1,1)."""
    torch.manual_seed(seed)
    focus = Focus(3, 8, kernel_size=3)
    randomise_batchnorm(focus, seed)
    w3 = focus.conv.conv.weight.detach()
    w6 = torch.zeros(8, 3, 6, 6)
    for g, (dy, dx) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
        for a in range(3):
            for b in range(3):
                w6[:, :, 2 * a + dy, 2 * b + dx] = w3[:, g * 3:(g + 1) * 3, a, b]
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(seed))
    scale, shift = bn_affine(focus.conv.bn)
    with torch.no_grad():
        expected = F.silu(F.conv2d(x, w6, stride=2, padding=2) * scale[:, None, None] + shift[:, None, None])
        torch.testing.assert_close(focus(x), expected, atol=1e-5, rtol=1e-5)


def test_spp_5_9_13_equals_sppf_5_with_the_same_weights():
    torch.manual_seed(0)
    spp = SPP(16, 24, (5, 9, 13))
    randomise_batchnorm(spp, 0)
    sppf = SPPF(16, 24, 5).eval()
    sppf.load_state_dict(spp.state_dict())  # same cv1 / cv2 names and shapes; pools have no weights
    x = torch.randn(2, 16, 10, 14)
    with torch.no_grad():
        torch.testing.assert_close(sppf(x), spp(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("c_in, c_out, stride", [(8, 8, 1), (8, 16, 1), (8, 8, 2)])
def test_repvgg_branches_sum_to_one_3x3_conv(c_in, c_out, stride):
    """relu(BN(conv3x3) + BN(conv1x1) + BN(x)) == relu(conv3x3 with the folded kernel): the 1x1 kernel
    sits at the centre tap, the identity is a centre 1 on the diagonal (in == out, stride 1 only)."""
    torch.manual_seed(c_out + stride)
    block = RepVGGBlock(c_in, c_out, stride)
    randomise_batchnorm(block, c_in + c_out + stride)
    kernel = torch.zeros(c_out, c_in, 3, 3)
    bias = torch.zeros(c_out)
    a, b = bn_affine(block.rbr_dense.bn)
    kernel += block.rbr_dense.conv.weight * a[:, None, None, None]
    bias += b
    a, b = bn_affine(block.rbr_1x1.bn)
    kernel[:, :, 1, 1] += block.rbr_1x1.conv.weight[:, :, 0, 0] * a[:, None]
    bias += b
    if block.rbr_identity is not None:
        a, b = bn_affine(block.rbr_identity)
        kernel[:, :, 1, 1] += torch.diag(a)
        bias += b
    x = torch.randn(2, c_in, 12, 10)
    with torch.no_grad():
        torch.testing.assert_close(block(x), F.relu(F.conv2d(x, kernel, bias, stride=stride, padding=1)),
                                   atol=1e-5, rtol=1e-5)


def test_conv_bn_act_is_conv_then_bn_then_activation():
    torch.manual_seed(0)
    layer = ConvBNAct(4, 6, 3, 2, act="relu")
    randomise_batchnorm(layer, 0)
    x = torch.randn(1, 4, 9, 9)
    a, b = bn_affine(layer.bn)
    with torch.no_grad():
        expected = F.relu(F.conv2d(x, layer.conv.weight, stride=2, padding=1) * a[:, None, None] + b[:, None, None])
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


# --- runtime decoding of each family's raw output ------------------------------------------------

@pytest.mark.parametrize("family", BUILT_IN)
def test_runtime_decoder_reads_each_family(family):
    size = (128, 192)
    model = make_model(family, size).eval()
    with torch.no_grad():
        outputs = [o.numpy() for o in model(images(size, seed=7))]
    candidates = runtime_decode.decode(outputs, model.spec)
    boxes = np.asarray(candidates.boxes)
    spec = model.spec
    shapes = expected_shapes(spec, BATCH)
    if spec.head.kind == "yolo_anchor":
        count = sum(s[1] // (5 + NUM_CLASSES) * s[2] * s[3] for s in shapes)
    elif spec.head.kind in ("yolox", "dfl"):
        count = sum(s[2] * s[3] for s in shapes)
    elif spec.head.kind == "centernet":
        count = min(spec.head.params["topk"], NUM_CLASSES * shapes[0][2] * shapes[0][3])
    else:
        count = shapes[0][1]
    assert boxes.shape == (BATCH, count, 4)
    assert np.isfinite(boxes).all()
    assert np.asarray(candidates.scores).shape == (BATCH, count)
