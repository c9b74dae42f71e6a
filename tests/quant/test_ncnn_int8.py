"""The ncnn int8 writer, checked against ncnn itself.

Oracles: the ncnn Python binding running the written int8 files (``opt.use_int8_inference``), a
numpy re-implementation of ncnn's int8 convolution arithmetic, the fp32 ncnn model, and ncnn's own
``load_model`` reading the written ``.bin`` back. Nothing here mocks ncnn: the file skips without
the ncnn binding, and without pnnx / torch (every test converts a real torch model).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ncnn")
if importlib.util.find_spec("pnnx") is None or importlib.util.find_spec("torch") is None:
    pytest.skip("the ncnn int8 tests convert torch models with pnnx", allow_module_level=True)

import ncnn
import onnx
import onnx.numpy_helper
import torch
from torch import nn

from edgekit.convert.builders.ncnn import run_pnnx, trace_for_pnnx
from edgekit.errors import CalibrationError, ModelFileError
from edgekit.quant.collect import calibrate, find_layers
from edgekit.quant.ncnn_int8 import emit_ncnn_int8, match_layers, write_ncnn_int8
from edgekit.quant.result import CalibrationResult, bias_correction, file_sha256, int8_symmetric
from edgekit.runtime.ncnn_format import INT8_TAG, read_ncnn_model
from tests.helpers import varied_weights

#: a regular int8 convolution: ncnn computes exactly the simulated integer sum, then one float32
#: multiply and add: agreement to a few float32 ulps of the output magnitude
EXACT_TOLERANCE = 1e-6
#: ncnn's packed (8 channels per SIMD lane group) x86 int8 depthwise kernel dequantises with a
#: per-channel factor up to 1.6e-4 (measured) away from 1 / (in_scale * w_scale) — the signature of
#: an approximate reciprocal (_mm_rcp_ps: at most 3.7e-4). Relative to the dequantised sum.
PACKED_DEPTHWISE_RTOL = 4e-4


# --- helpers -------------------------------------------------------------------------------


def convert(model: nn.Module, shape: list[int], work: Path, fp16: bool = False) -> tuple[Path, Path]:
    """The ncnn fp32 (or fp16-weight) .param/.bin of ``model`` through pnnx, as the NcnnBuilder makes them."""
    work.mkdir(parents=True, exist_ok=True)
    return run_pnnx(trace_for_pnnx(model, shape, work / "model.pt"), shape, fp16=fp16, work_dir=work)


def export(model: nn.Module, shape: list[int], path: Path) -> Path:
    """Plain TorchScript-exporter ONNX (BN folded in eval mode, as edgekit's export does)."""
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(*shape),), str(path), dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["output"])
    return path


def run_ncnn(param: Path, weights: Path, x: np.ndarray, int8: bool, packing: bool = True,
             output: str = "out0") -> np.ndarray:
    """One CHW float32 image through ncnn (CPU, one thread); the output blob as float32."""
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.use_int8_inference = int8
    net.opt.use_packing_layout = packing
    net.opt.num_threads = 1
    assert net.load_param(str(param)) == 0 and net.load_model(str(weights)) == 0
    chw = np.ascontiguousarray(x, np.float32)
    mat = ncnn.Mat(chw)
    extractor = net.create_extractor()
    assert extractor.input("in0", mat) == 0
    code, out = extractor.extract(output)
    assert code == 0
    result = np.array(out.numpy(), np.float32)
    extractor.clear()
    net.clear()
    return result


def run_ncnn_blobs(param: Path, weights: Path, x: np.ndarray, blobs: list[str]) -> list[np.ndarray]:
    """The named blobs of one int8 run (CHW float32 arrays)."""
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.use_int8_inference = True
    net.opt.num_threads = 1
    assert net.load_param(str(param)) == 0 and net.load_model(str(weights)) == 0
    chw = np.ascontiguousarray(x, np.float32)
    mat = ncnn.Mat(chw)
    extractor = net.create_extractor()
    assert extractor.input("in0", mat) == 0
    values = []
    for blob in blobs:
        code, out = extractor.extract(blob)
        assert code == 0
        values.append(np.array(out.numpy(), np.float32))
    extractor.clear()
    net.clear()
    return values


def ncnn_round(v: np.ndarray) -> np.ndarray:
    """C ``round()`` (half away from zero), as ncnn's float2int8."""
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def simulate_int8_conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int, padding: int, groups: int,
                       weight_scales: np.ndarray, input_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """ncnn's int8 convolution of CHW ``x``, written from its source (convolutiondepthwise.cpp forward_int8).

    Scales in the ONNX convention (step sizes); ncnn multiplies by their reciprocals:
    qx = clip(round(x * in_mul), ±127); qw = clip(round(W / s_c), ±127) with s_c per output channel;
    the integer sum exactly; y = sum * (1 / (in_mul * w_mul_c)) + bias in float32.
    Returns (y [O,H,W], its bias-free part).
    """
    scales = np.asarray(weight_scales, np.float64)
    in_mul = np.float32(1.0 / input_scale)
    qx = np.clip(ncnn_round(x.astype(np.float32) * in_mul), -127, 127)
    qw = np.clip(np.round(weight.astype(np.float64) / scales[:, None, None, None]), -127, 127)
    acc = torch.nn.functional.conv2d(torch.from_numpy(qx[None]).double(), torch.from_numpy(qw).double(),
                                     stride=stride, padding=padding, groups=groups)[0].numpy()
    w_mul = (1.0 / scales).astype(np.float32)
    dequant = np.float32(1.0) / (in_mul * w_mul)
    scaled = acc.astype(np.float32) * dequant[:, None, None]
    return scaled + bias.astype(np.float32)[:, None, None], scaled


def image_batches(seed: int, count: int, shape: list[int]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(count)]


def param_lines(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()[2:]
    return {line.split()[1]: line for line in lines if line.strip()}


# --- oracle: one layer, int8 in ncnn == simulated int8 arithmetic -----------------------------

SINGLE_LAYERS = {
    # name: (in, out, kernel, stride, groups); 8 / 16 channels take ncnn's packed (pack8) kernels
    "conv3x3": (8, 16, 3, 1, 1),
    "conv3x3_stride2": (3, 16, 3, 2, 1),
    "conv1x1": (16, 8, 1, 1, 1),
    "depthwise3x3": (16, 16, 3, 1, 16),
    "depthwise3x3_stride2": (8, 8, 3, 2, 8),
}


@pytest.fixture(scope="module")
def single_layer(tmp_path_factory):
    """name -> (torch conv, fp32 param, fp32 bin), converted once."""
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            cin, cout, kernel, stride, groups = SINGLE_LAYERS[name]
            torch.manual_seed(sum(map(ord, name)))
            conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups).eval()
            with torch.no_grad():
                conv.bias.mul_(5)  # a bias of the size of the outputs: a lost or misplaced bias would show
            cache[name] = (conv, *convert(conv, [1, cin, 20, 20], tmp_path_factory.mktemp(name)))
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(SINGLE_LAYERS))
def test_int8_layer_computes_ncnns_int8_arithmetic(single_layer, name, tmp_path):
    conv, param, weights = single_layer(name)
    cin, cout, kernel, stride, groups = SINGLE_LAYERS[name]
    weight = conv.weight.detach().numpy()
    bias = conv.bias.detach().numpy()
    x = np.random.default_rng(1).standard_normal((cin, 20, 20)).astype(np.float32)
    w_scales = (np.abs(weight).reshape(cout, -1).max(axis=1) / 127).astype(np.float32)
    in_scale = float(np.abs(x).max() * 0.8 / 127)  # 20 % of the range clips: the clip is exercised too

    layer = read_ncnn_model(param, weights).quantizable_layers()
    assert [item.type for item in layer] == ["Convolution" if groups == 1 else "ConvolutionDepthWise"]
    summary = write_ncnn_int8(param, weights, tmp_path / "int8.param", tmp_path / "int8.bin",
                              {layer[0].name: (w_scales, in_scale)})
    assert summary["int8"] == [layer[0].name]

    expected, scaled = simulate_int8_conv(x, weight, bias, stride, kernel // 2, groups, w_scales, in_scale)
    fp32 = run_ncnn(param, weights, x, int8=False)
    magnitude = float(np.abs(expected).max())
    for packing in (False, True):
        got = run_ncnn(tmp_path / "int8.param", tmp_path / "int8.bin", x, int8=True, packing=packing)
        assert got.shape == expected.shape
        allowed = np.full(expected.shape, EXACT_TOLERANCE * magnitude, np.float32)
        if name.startswith("depthwise") and packing:
            allowed += PACKED_DEPTHWISE_RTOL * np.abs(scaled)
        error = np.abs(got - expected)
        assert np.all(error <= allowed), (packing, error.max())
        # not the fp32 result: int8 rounding moves the outputs 10x (and more) beyond the allowed error
        assert np.abs(got - fp32).max() > 10 * allowed.max()


class FlattenLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4 * 6 * 6, 24)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_int8_inner_product_matches_gemm_and_computes_ncnns_int8_arithmetic(tmp_path):
    """nn.Linear: pnnx's InnerProduct pairs with the ONNX Gemm (transB=1) and runs ncnn's int8 math."""
    from edgekit.quant.result import QuantLayer, weight_scales

    torch.manual_seed(2)
    model = FlattenLinear().eval()
    param, weights = convert(model, [1, 4, 6, 6], tmp_path / "ncnn")
    onnx_path = export(model, [1, 4, 6, 6], tmp_path / "model.onnx")
    onnx_model = onnx.load(str(onnx_path))
    gemm = next(node for node in onnx_model.graph.node if node.op_type == "Gemm")
    weight = model.fc.weight.detach().numpy()
    w_scales = weight_scales(weight, axis=0)
    layer = QuantLayer(gemm.name, "Gemm", gemm.input[0], gemm.output[0], gemm.input[1], tuple(map(float, w_scales)))
    result = CalibrationResult(model_sha256=file_sha256(onnx_path), method="minmax", num_images=1, images_sha256="",
                               activation_ranges={}, layers=(layer,))
    (inner,) = read_ncnn_model(param, weights).quantizable_layers()
    assert inner.type == "InnerProduct"
    assert match_layers(param, weights, onnx_model, result) == {inner.name: gemm.name}

    x = np.random.default_rng(3).standard_normal((4, 6, 6)).astype(np.float32)
    in_scale = float(np.abs(x).max() * 0.8 / 127)
    write_ncnn_int8(param, weights, tmp_path / "int8.param", tmp_path / "int8.bin", {inner.name: (w_scales, in_scale)})
    in_mul = np.float32(1 / in_scale)
    qx = np.clip(ncnn_round(x.reshape(-1) * in_mul), -127, 127)
    qw = np.clip(np.round(weight / w_scales[:, None]), -127, 127)
    dequant = np.float32(1) / (in_mul * (1 / w_scales.astype(np.float64)).astype(np.float32))
    expected = (qw.astype(np.float64) @ qx).astype(np.float32) * dequant + model.fc.bias.detach().numpy()
    got = run_ncnn(tmp_path / "int8.param", tmp_path / "int8.bin", x, int8=True).reshape(-1)
    allowed = EXACT_TOLERANCE * np.abs(expected).max()
    assert np.abs(got - expected).max() <= allowed
    assert np.abs(got - run_ncnn(param, weights, x, int8=False).reshape(-1)).max() > 10 * allowed


@pytest.mark.parametrize("name", ["conv3x3", "depthwise3x3"])
def test_int8_bin_layout(single_layer, name, tmp_path):
    """Weights stored once as int8 (flag 0x000D4B38, padded to 4 bytes): about a quarter of the fp32 bytes."""
    conv, param, weights = single_layer(name)
    cin, cout, kernel, stride, groups = SINGLE_LAYERS[name]
    count = conv.weight.numel()
    w_scales = np.abs(conv.weight.detach().numpy()).reshape(cout, -1).max(axis=1) / 127
    layer = read_ncnn_model(param, weights).quantizable_layers()[0]
    write_ncnn_int8(param, weights, tmp_path / "int8.param", tmp_path / "int8.bin", {layer.name: (w_scales, 0.02)})

    fp32_bytes, int8_bytes = weights.stat().st_size, (tmp_path / "int8.bin").stat().st_size
    assert fp32_bytes == 4 + 4 * count + 4 * cout  # flag, float32 weights, bias
    scale_count = cout  # per output channel (Convolution) / per group (depthwise: group == cout)
    assert int8_bytes == 4 + (count + 3) // 4 * 4 + 4 * cout + 4 * scale_count + 4
    assert (int8_bytes - 4 * cout - 4 * scale_count - 8) < 0.3 * (fp32_bytes - 4 * cout - 4)

    data = (tmp_path / "int8.bin").read_bytes()
    assert int.from_bytes(data[:4], "little") == INT8_TAG
    stored = np.frombuffer(data[4:4 + count], np.int8)
    expected = np.clip(np.round(conv.weight.detach().numpy().reshape(cout, -1) / w_scales[:, None]), -127, 127)
    assert np.array_equal(stored.reshape(cout, -1), expected)
    tail = np.frombuffer(data[-4 * (cout + scale_count + 1):], "<f4")
    assert np.array_equal(tail[:cout], conv.bias.detach().numpy())  # the bias, unchanged
    assert np.allclose(tail[cout:cout + scale_count], 1 / w_scales, rtol=1e-6)  # ncnn multipliers
    assert tail[-1] == np.float32(1 / 0.02)

    before, after = param_lines(param), param_lines(tmp_path / "int8.param")
    term = "2" if groups == 1 else "1"
    assert after[layer.name] == before[layer.name] + f" 8={term}"
    assert {k: v for k, v in after.items() if k != layer.name} == {k: v for k, v in before.items() if k != layer.name}


# --- a multi-layer net with real calibration ---------------------------------------------------


class SmallNet(nn.Module):
    """conv-SiLU stacks with strides, a depthwise and a grouped conv, BN to fold, ReLU fused by pnnx."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.grouped = nn.Conv2d(16, 32, 1, groups=2, bias=False)
        self.bn = nn.BatchNorm2d(32)
        self.down = nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.head = nn.Conv2d(32, 12, 1)

    def forward(self, x):
        x = nn.functional.silu(self.stem(x))
        x = torch.relu(self.dw(x))
        x = nn.functional.silu(self.bn(self.grouped(x)))
        x = nn.functional.silu(self.down(x))
        return self.head(x)


#: int8 vs fp32, max |error| / max |fp32| on held-out inputs: measured 2.7e-2 .. 6.3e-2 with minmax
#: ranges from 8 calibration images (the quantisation error of three int8 layers of this random net;
#: the same layers fake-quantised in torch land at 3.2e-2 .. 7.8e-2)
MULTI_LAYER_TOLERANCE = 0.1
@pytest.fixture(scope="module")
def small_net(tmp_path_factory):
    """(model, fp32 param, fp32 bin, onnx path, minmax calibration result) of SmallNet at 32x32."""
    work = tmp_path_factory.mktemp("small-net")
    model = varied_weights(SmallNet(), seed=3)
    shape = [1, 3, 32, 32]
    param, weights = convert(model, shape, work / "ncnn")
    onnx_path = export(model, shape, work / "model.onnx")
    calibration = image_batches(0, 8, shape)
    result = calibrate(onnx_path, lambda: iter(calibration), method="minmax")
    return model, param, weights, onnx_path, result


def test_small_net_int8_is_close_to_fp32_and_float_layers_stay_identical(small_net, tmp_path):
    model, param, weights, onnx_path, result = small_net
    ncnn_convs = [layer.name for layer in read_ncnn_model(param, weights).quantizable_layers()]
    stem, depthwise, grouped, down, head = ncnn_convs
    mapping = match_layers(param, weights, onnx_path, result)
    # pnnx keeps the module order: the i-th ncnn conv is the i-th ONNX Conv
    assert mapping == dict(zip(ncnn_convs, ["/stem/Conv", "/dw/Conv", "/grouped/Conv", "/down/Conv", "/head/Conv"]))
    partial = result.with_float_layers({mapping[stem]: "sensitive (test)"})

    summary = emit_ncnn_int8(param, weights, onnx_path, partial, tmp_path / "int8.param", tmp_path / "int8.bin")
    assert summary["int8"] == [depthwise, down, head]
    assert summary["float"][stem] == f"kept in float ({mapping[stem]}: sensitive (test))"
    assert summary["float"][grouped].startswith("grouped convolution (group 2, 32 outputs)")
    assert summary["onnx_unmatched"] == []
    assert summary["bin_bytes_out"] < 0.4 * summary["bin_bytes_in"]

    # the float layers: their .param lines and every byte of their weights as they were
    before, after = read_ncnn_model(param, weights), read_ncnn_model(tmp_path / "int8.param", tmp_path / "int8.bin")
    for name in (stem, grouped):
        assert before.data[slice(*before.spans[name])] == after.data[slice(*after.spans[name])]
        assert param_lines(param)[name] == param_lines(tmp_path / "int8.param")[name]
    for name in summary["int8"]:
        assert after.blobs[name][0].storage == "int8"

    errors = []
    for x in image_batches(99, 3, [3, 32, 32]):  # held-out inputs
        reference = run_ncnn(param, weights, x, int8=False)
        candidate = run_ncnn(tmp_path / "int8.param", tmp_path / "int8.bin", x, int8=True)
        errors.append(float(np.abs(candidate - reference).max() / np.abs(reference).max()))
    assert max(errors) <= MULTI_LAYER_TOLERANCE, errors
    assert min(errors) > 1e-2  # int8 really ran

    # Layer by layer inside the real net: each int8 layer, fed ncnn's own input blob, computes the
    # simulated int8 arithmetic with the result's scales (end to end, a 1e-4 difference upstream
    # flips a few roundings of the next quantisation, so the chain is only compared with fp32 above).
    modules = {"/dw/Conv": (model.dw, torch.relu), "/down/Conv": (model.down, None), "/head/Conv": (model.head, None)}
    x = image_batches(98, 1, [3, 32, 32])[0]
    for name in summary["int8"]:
        quant = partial.layer(summary["onnx_layers"][name])
        module, activation = modules[quant.name]
        layer = after.layer(name)
        bottom, top = run_ncnn_blobs(tmp_path / "int8.param", tmp_path / "int8.bin", x, [*layer.bottoms, *layer.tops])
        # the writer subtracts the mean shift of the rounded weights from the bias (bias correction)
        weight = module.weight.detach().numpy()
        shift = bias_correction(weight, np.asarray(quant.weight_scales, np.float32), quant.input_mean, "Conv",
                                module.groups)
        assert shift is not None and np.abs(shift).max() > 0
        expected, scaled = simulate_int8_conv(bottom, weight, module.bias.detach().numpy() - shift,
                                              module.stride[0], module.padding[0], module.groups,
                                              np.asarray(quant.weight_scales),
                                              int8_symmetric(*partial.activation_ranges[quant.input]))
        allowed = EXACT_TOLERANCE * np.abs(expected).max() + (PACKED_DEPTHWISE_RTOL * np.abs(scaled)
                                                              if module.groups > 1 else 0)
        if activation is not None:
            expected = activation(torch.from_numpy(expected)).numpy()
        assert np.all(np.abs(top - expected) <= allowed), (name, np.abs(top - expected).max())


def test_grouped_convolution_is_refused_by_the_writer(small_net, tmp_path):
    model, param, weights, onnx_path, result = small_net
    grouped = read_ncnn_model(param, weights).quantizable_layers()[2]
    with pytest.raises(CalibrationError, match=rf"'{grouped.name}'.*grouped convolution \(group 2"):
        write_ncnn_int8(param, weights, tmp_path / "o.param", tmp_path / "o.bin", {grouped.name: (np.ones(32), 0.1)})


def test_emit_uses_the_results_scales_in_ncnn_convention(small_net, tmp_path):
    """Written scales are the reciprocals of the result's: per channel for weights, of int8_symmetric for inputs."""
    model, param, weights, onnx_path, result = small_net
    summary = emit_ncnn_int8(param, weights, onnx_path, result, tmp_path / "int8.param", tmp_path / "int8.bin")
    written = read_ncnn_model(tmp_path / "int8.param", tmp_path / "int8.bin")
    assert len(summary["onnx_layers"]) == 4  # every conv but the grouped one
    for ncnn_name, onnx_name in summary["onnx_layers"].items():
        quant = result.layer(onnx_name)
        blobs = written.blobs[ncnn_name]
        assert blobs[-1].values[0] == np.float32(1 / int8_symmetric(*result.activation_ranges[quant.input]))
        assert np.allclose(blobs[-2].values, 1 / np.asarray(quant.weight_scales), rtol=1e-6)


def test_fp16_blobs_of_float_layers_are_copied_byte_for_byte(tmp_path):
    """An fp16-weight model: the int8 layer is requantised from its fp16 weights, the others keep their fp16 blobs."""
    model = varied_weights(SmallNet(), seed=4)
    param, weights = convert(model, [1, 3, 32, 32], tmp_path / "fp16", fp16=True)
    source = read_ncnn_model(param, weights)
    convs = source.quantizable_layers()
    assert {source.blobs[layer.name][0].storage for layer in convs} == {"float16"}
    target = convs[-1]
    count = target.get_int(0, 0)
    w_scales = np.abs(source.blobs[target.name][0].values.reshape(count, -1)).max(axis=1) / 127
    write_ncnn_int8(param, weights, tmp_path / "int8.param", tmp_path / "int8.bin", {target.name: (w_scales, 0.05)})
    written = read_ncnn_model(tmp_path / "int8.param", tmp_path / "int8.bin")
    for layer in source.layers:
        if layer.name != target.name:
            assert source.data[slice(*source.spans[layer.name])] == written.data[slice(*written.spans[layer.name])]
    assert written.blobs[target.name][0].storage == "int8"


# --- matching on a real edgekit model ----------------------------------------------------------

#: every conv of the yolov8 export in int8 vs fp32, max |error| / max |fp32| per raw output: measured
#: 0.7e-2 .. 1.7e-2 (two weight seeds, two inputs, minmax ranges from 4 images)
YOLOV8_TOLERANCE = 5e-2


def test_match_layers_finds_every_conv_of_a_yolov8_export(tmp_path):
    """pnnx renames every layer; matching by weight values still pairs every ncnn conv with its ONNX Conv."""
    from edgekit.convert.builders import BuildSource
    from edgekit.convert.builders.ncnn import NcnnBuilder
    from edgekit.convert.export import export_onnx
    from edgekit.models import ModelConfig, build_model

    torch.set_num_threads(1)
    model = varied_weights(build_model(ModelConfig("yolov8", num_classes=3, input_size=(64, 64), width=0.125),
                               ["a", "b", "c"]), seed=8)
    onnx_path = export_onnx(model, model.spec, tmp_path / "model.onnx")
    entry = NcnnBuilder().build(BuildSource(onnx_path, model.spec, model), "fp32", lambda name: tmp_path / name, {})
    param, weights = tmp_path / entry.file, tmp_path / entry.options["bin_file"]

    onnx_model = onnx.load(str(onnx_path))
    layers = find_layers(onnx_model)
    result = CalibrationResult(model_sha256=file_sha256(onnx_path), method="minmax", num_images=1, images_sha256="",
                               activation_ranges={}, layers=tuple(layers))
    ncnn_convs = [layer.name for layer in read_ncnn_model(param, weights).quantizable_layers()]
    mapping = match_layers(param, weights, onnx_model, result)
    assert len(ncnn_convs) == len(layers) > 20
    assert sorted(mapping) == sorted(ncnn_convs)  # every ncnn conv found its ONNX Conv
    assert sorted(mapping.values()) == sorted(layer.name for layer in layers)  # one to one
    ncnn_model = read_ncnn_model(param, weights)
    initializers = {init.name: onnx.numpy_helper.to_array(init) for init in onnx_model.graph.initializer}
    for ncnn_name, onnx_name in mapping.items():  # each pair really holds the same weights
        onnx_weight = initializers[next(layer.weight for layer in layers if layer.name == onnx_name)]
        assert np.allclose(ncnn_model.blobs[ncnn_name][0].values, onnx_weight.reshape(-1), rtol=1e-5, atol=1e-6)

    # and the whole model runs in int8 in ncnn, close to fp32
    spec = model.spec
    inputs = image_batches(5, 4, [1, 3, 64, 64])
    calibrated = calibrate(onnx_path, lambda: iter(inputs), method="minmax")
    summary = emit_ncnn_int8(param, weights, onnx_path, calibrated, tmp_path / "int8.param", tmp_path / "int8.bin")
    assert len(summary["int8"]) == len(ncnn_convs) and summary["float"] == {}
    assert summary["bin_bytes_out"] < 0.3 * summary["bin_bytes_in"]
    x = image_batches(6, 1, [3, 64, 64])[0]
    for name in spec.head.output_names:
        blob = entry.options["output_blobs"][name]
        reference = run_ncnn(param, weights, x, int8=False, output=blob)
        candidate = run_ncnn(tmp_path / "int8.param", tmp_path / "int8.bin", x, int8=True, output=blob)
        relative = float(np.abs(candidate - reference).max() / np.abs(reference).max())
        assert 1e-3 < relative < YOLOV8_TOLERANCE, (name, relative)


# --- requantise chaining: int8 from one convolution into the next ---------------------------------


class ReluChain(nn.Module):
    """conv-ReLU -> depthwise-ReLU -> conv-ReLU -> Split into two conv-ReLU -> add -> conv: pnnx fuses
    every ReLU into its convolution (activation_type 1), so each edge but the add is conv -> conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.c = nn.Conv2d(16, 32, 1)
        self.d1 = nn.Conv2d(32, 16, 3, padding=1)
        self.d2 = nn.Conv2d(32, 16, 1)
        self.e = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        x = torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x))))))
        return self.e(torch.relu(self.d1(x)) + torch.relu(self.d2(x)))


def raw_blob_bytes(param: Path, weights: Path, x: np.ndarray, blobs: list[str]) -> list[int]:
    """Bytes per element of each named blob as ncnn holds it (``extract(name, 1)``: no conversion to fp32)."""
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.use_int8_inference = True
    net.opt.num_threads = 1
    assert net.load_param(str(param)) == 0 and net.load_model(str(weights)) == 0
    mat = ncnn.Mat(np.ascontiguousarray(x, np.float32))
    extractor = net.create_extractor()
    assert extractor.input("in0", mat) == 0
    sizes = []
    for blob in blobs:
        code, out = extractor.extract(blob, 1)
        assert code == 0
        sizes.append(out.elemsize // out.elempack)
    extractor.clear()
    net.clear()
    return sizes


def test_requantize_keeps_consecutive_int8_convolutions_in_int8(tmp_path):
    model = varied_weights(ReluChain(), seed=5)
    shape = [1, 3, 32, 32]
    param, weights = convert(model, shape, tmp_path / "ncnn")
    onnx_path = export(model, shape, tmp_path / "model.onnx")
    result = calibrate(onnx_path, lambda: iter(image_batches(0, 8, shape)), method="minmax")
    chained = emit_ncnn_int8(param, weights, onnx_path, result, tmp_path / "rq.param", tmp_path / "rq.bin")
    plain = emit_ncnn_int8(param, weights, onnx_path, result, tmp_path / "dq.param", tmp_path / "dq.bin",
                           requantize=False)
    source = read_ncnn_model(param, weights)
    a, b, c, d1, d2, e = [layer.name for layer in source.quantizable_layers()]
    assert chained["int8"] == plain["int8"] == [a, b, c, d1, d2, e] and plain["requantized"] == {}
    # ncnn2int8's pairs: conv -> conv, conv -> Split -> convs; not into the add, not the output layer
    assert {k: sorted(v) for k, v in chained["requantized"].items()} == {a: [b], b: [c], c: sorted([d1, d2])}

    written = read_ncnn_model(tmp_path / "rq.param", tmp_path / "rq.bin")
    terms = {name: written.layer(name).get_int(8, 0) for name in (a, b, c, d1, d2, e)}
    assert terms == {a: 102, b: 101, c: 102, d1: 2, d2: 2, e: 2}  # + 100: the top blob scale follows
    for producer, readers in chained["requantized"].items():
        top_scale = written.blobs[producer][-1]
        for reader in readers:  # the consumer's own bottom scale (last but its top scale), as ncnn2int8 copies it
            bottom = written.blobs[reader][-2 if reader in chained["requantized"] else -1]
            assert top_scale.count == 1 and top_scale.values[0] == bottom.values[0]

    # what ncnn executes: the chained blobs are 1 byte per element (int8), the others float32
    x = image_batches(7, 1, [3, 32, 32])[0]
    blobs = [source.layer(name).tops[0] for name in (a, b, c, d1, e)]
    assert raw_blob_bytes(tmp_path / "rq.param", tmp_path / "rq.bin", x, blobs) == [1, 1, 1, 4, 4]
    assert raw_blob_bytes(tmp_path / "dq.param", tmp_path / "dq.bin", x, blobs) == [4, 4, 4, 4, 4]

    for x in image_batches(99, 3, [3, 32, 32]):
        reference = run_ncnn(param, weights, x, int8=False)
        candidate = run_ncnn(tmp_path / "rq.param", tmp_path / "rq.bin", x, int8=True)
        dequantised = run_ncnn(tmp_path / "dq.param", tmp_path / "dq.bin", x, int8=True)
        scale = np.abs(reference).max()
        # requantising in one step rounds the same float32 values the next layer would have rounded
        assert np.abs(candidate - dequantised).max() <= 1e-6 * scale
        assert 1e-3 < np.abs(candidate - reference).max() / scale <= MULTI_LAYER_TOLERANCE


def test_no_requantize_across_a_separate_activation_layer(small_net, tmp_path):
    """SiLU is a Swish layer in ncnn (no fused Swish): a conv feeding it must hand over float32."""
    model, param, weights, onnx_path, result = small_net
    summary = emit_ncnn_int8(param, weights, onnx_path, result, tmp_path / "int8.param", tmp_path / "int8.bin")
    assert summary["requantized"] == {}
    assert all(read_ncnn_model(tmp_path / "int8.param", tmp_path / "int8.bin").layer(name).get_int(8, 0) < 100
               for name in summary["int8"])


# --- bad input ---------------------------------------------------------------------------------


def test_truncated_bin_is_refused_naming_the_layer(single_layer, tmp_path):
    conv, param, weights = single_layer("conv3x3")
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(weights.read_bytes()[:-10])
    layer = read_ncnn_model(param, weights).quantizable_layers()[0].name
    with pytest.raises(ModelFileError, match=rf"truncated\.bin: truncated .*{layer}"):
        write_ncnn_int8(param, truncated, tmp_path / "o.param", tmp_path / "o.bin", {layer: (np.ones(16), 0.1)})
    assert not (tmp_path / "o.param").exists() and not (tmp_path / "o.bin").exists()


def test_bin_with_extra_bytes_is_refused(single_layer, tmp_path):
    conv, param, weights = single_layer("conv3x3")
    longer = tmp_path / "longer.bin"
    longer.write_bytes(weights.read_bytes() + bytes(8))
    with pytest.raises(ModelFileError, match=r"longer\.bin: 8 bytes after the last layer"):
        read_ncnn_model(param, longer)


def test_unknown_layer_name_and_wrong_scales_are_refused(single_layer, tmp_path):
    conv, param, weights = single_layer("conv3x3")
    layer = read_ncnn_model(param, weights).quantizable_layers()[0].name
    with pytest.raises(CalibrationError, match="no layer named 'conv_99'"):
        write_ncnn_int8(param, weights, tmp_path / "o.param", tmp_path / "o.bin", {"conv_99": (np.ones(16), 0.1)})
    with pytest.raises(CalibrationError, match=rf"'{layer}'.*3 weight scales given, the layer has 16"):
        write_ncnn_int8(param, weights, tmp_path / "o.param", tmp_path / "o.bin", {layer: (np.ones(3), 0.1)})
    with pytest.raises(CalibrationError, match="input scale"):
        write_ncnn_int8(param, weights, tmp_path / "o.param", tmp_path / "o.bin", {layer: (np.ones(16), 0.0)})
    with pytest.raises(CalibrationError, match="only Convolution"):
        write_ncnn_int8(param, weights, tmp_path / "o.param", tmp_path / "o.bin", {"in0": (np.ones(16), 0.1)})
    assert not list(tmp_path.iterdir())  # nothing written, no partial files


def test_already_int8_model_is_refused(single_layer, tmp_path):
    conv, param, weights = single_layer("conv3x3")
    layer = read_ncnn_model(param, weights).quantizable_layers()[0].name
    scales = {layer: (np.ones(16) * 0.01, 0.1)}
    write_ncnn_int8(param, weights, tmp_path / "a.param", tmp_path / "a.bin", scales)
    with pytest.raises(CalibrationError, match="already int8"):
        write_ncnn_int8(tmp_path / "a.param", tmp_path / "a.bin", tmp_path / "b.param", tmp_path / "b.bin", scales)


def test_malformed_param_is_refused(single_layer, tmp_path):
    conv, param, weights = single_layer("conv3x3")
    bad = tmp_path / "bad.param"
    bad.write_text("not a param\n")
    with pytest.raises(ModelFileError, match=r"bad\.param: not an ncnn text \.param"):
        read_ncnn_model(bad, weights)
    lines = param.read_text().splitlines()
    bad.write_text("\n".join(lines[:2] + [lines[2] + " 6", *lines[3:]]) + "\n")  # a token without '='
    with pytest.raises(ModelFileError, match=r"bad\.param: line 3"):
        read_ncnn_model(bad, weights)
    shutil.copyfile(param, bad)
    with pytest.raises(ModelFileError, match="not found"):
        read_ncnn_model(bad, tmp_path / "missing.bin")


def test_emit_refuses_a_result_of_another_model(small_net, tmp_path):
    model, param, weights, onnx_path, result = small_net
    other = CalibrationResult(model_sha256="0" * 64, method=result.method, num_images=result.num_images,
                              images_sha256="", activation_ranges=result.activation_ranges, layers=result.layers)
    with pytest.raises(CalibrationError, match="another model"):
        emit_ncnn_int8(param, weights, onnx_path, other, tmp_path / "o.param", tmp_path / "o.bin")
