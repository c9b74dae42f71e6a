"""NCNN backend: the pnnx builder and the Runner, checked against ONNX Runtime and PyTorch.

The oracles: ONNX Runtime on the exported ONNX file (raw tensors of every built-in family), the
PyTorch model itself (the Focus rewrite, output shapes), the PyTorch reference detector on the
real FastestDet (detections), and the upstream authors' own NCNN files. Nothing here mocks ncnn:
the whole file skips when it is not installed, the conversion tests when pnnx is not.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekit.errors import ConversionError, InputError, ModelFileError
from edgekit.runtime.artifact import read_manifest
from edgekit.runtime.backends import get_runner_class
from edgekit.runtime.backends.ncnn import NcnnRunner, read_param_io
from edgekit.runtime.backends.onnxruntime import OnnxRuntimeRunner
from edgekit.runtime.detector import Detector
from edgekit.runtime.preprocess import probe_input
from edgekit.validate.compare import compare_detections, tensor_error
from tests.helpers import varied_weights

pytestmark = pytest.mark.skipif(not NcnnRunner.is_available(),
                                reason="ncnn is not installed (pip install 'edgekit[ncnn]')")
needs_pnnx = pytest.mark.skipif(importlib.util.find_spec("pnnx") is None or importlib.util.find_spec("torch") is None,
                                reason="the ncnn builder needs pnnx and torch")

FP32_TOLERANCE = 1e-4   # raw tensors, relative to each output's max |value| (DESIGN.md)
FP16_TOLERANCE = 1e-2
FAMILIES = ["yolov5", "yolox", "yolov6", "yolov8", "centernet", "ssd"]
SIZE = (160, 160)
PHOTOS = [f"{i}.jpg" for i in range(5)]
# fp16 weights move FastestDet's scores by up to ~7e-3 (measured); a detection can only appear or
# vanish when its score is that close to the threshold, and every other one must match.
FP16_SCORE_DELTA = 1e-2
FP16_MIN_IOU = 0.95


# --- helpers -------------------------------------------------------------------------------

def build_artifact(model, out_dir: Path, precisions=("fp32",)) -> Path:
    """export_artifact, then the NCNN builder into a second artifact that holds the ONNX model too.

    The builder gets the model after the ncnn legalisation stage, as the chain gives it (a Focus stem becomes
    ncnn-friendly there: pnnx cannot convert its stride-2 slices).
    """
    import torch

    from edgekit.convert.artifact import ArtifactWriter
    from edgekit.convert.builders import BuildSource, get_builder
    from edgekit.convert.chain import ONNX_FILE, export_artifact
    from edgekit.convert.passes import legalization_stage, run_stages

    exported = out_dir.with_name(out_dir.name + "-onnx")
    manifest = export_artifact(model, exported)
    stage = legalization_stage("ncnn")
    assert stage is not None
    example = torch.from_numpy(probe_input(manifest.spec, seed=1))
    legal_model = run_stages([stage], model, example)[0][-1]
    with ArtifactWriter(out_dir) as writer:
        for relative in manifest.files:
            shutil.copyfile(exported / relative, writer.path(relative))
        source = BuildSource(writer.path(ONNX_FILE), manifest.spec, legal_model)
        entries = list(manifest.models)
        entries += [get_builder("ncnn").build(source, precision, writer.path, {}) for precision in precisions]
        writer.commit(manifest.spec, entries, manifest.info)
    return out_dir


def onnxruntime_outputs(onnx_path: Path, spec, batch: np.ndarray) -> list[np.ndarray]:
    """ONNX Runtime on each image of the batch (the export has batch 1), stacked."""
    with OnnxRuntimeRunner(onnx_path) as runner:
        per_image = [runner.infer({spec.input_name: batch[i:i + 1]}) for i in range(len(batch))]
    return [np.concatenate([out[name] for out in per_image]) for name in spec.head.output_names]


def tiny_detector(strided_slice: bool = False, seed: int = 0):
    """A one-conv FastestDet-shaped network ([1,3,64,64] -> [1,8,4,4]); optionally through x[..., ::2, ::2]."""
    import torch
    from torch import nn

    from tests.onnx_graphs import fastestdet_like_spec

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=8 if strided_slice else 16, padding=1)

        def forward(self, x):
            if strided_slice:
                x = x[..., ::2, ::2]  # ncnn has no strided slice
            return torch.sigmoid(self.conv(x))

    torch.manual_seed(seed)
    model = Tiny().eval()
    model.spec = fastestdet_like_spec(num_classes=3, size=64)
    return model


def ncnn_build(model, out_dir: Path, precision: str = "fp32", onnx_model=None):
    """Export ``onnx_model`` (default: ``model``) to ONNX and build NCNN files from ``model`` into ``out_dir``."""
    from edgekit.convert.builders import BuildSource
    from edgekit.convert.builders.ncnn import NcnnBuilder
    from edgekit.convert.export import export_onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = export_onnx(onnx_model or model, model.spec, out_dir / "model.onnx")

    def sink(name: str) -> Path:
        return out_dir / name

    return NcnnBuilder().build(BuildSource(onnx_path, model.spec, model), precision, sink, {}), out_dir


# --- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def family_artifact(tmp_path_factory):
    """family -> (model, artifact with onnxruntime fp32 + ncnn fp32 + ncnn fp16), built once per module."""
    cache: dict[str, tuple] = {}
    root = tmp_path_factory.mktemp("ncnn-families")

    def get(family: str):
        if family not in cache:
            import torch

            from edgekit.models import ModelConfig, build_model

            torch.set_num_threads(1)
            model = build_model(ModelConfig(family, 3, SIZE))
            model = varied_weights(model, seed=sum(map(ord, family)))
            cache[family] = (model, build_artifact(model, root / family, precisions=("fp32", "fp16")))
        return cache[family]

    return get


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """(entry, folder) of the tiny network converted to NCNN fp32."""
    pytest.importorskip("pnnx")
    return ncnn_build(tiny_detector(), tmp_path_factory.mktemp("ncnn-tiny"))


# --- every family: NCNN vs ONNX Runtime ----------------------------------------------------

@needs_pnnx
@pytest.mark.parametrize("precision, tolerance", [("fp32", FP32_TOLERANCE), ("fp16", FP16_TOLERANCE)])
@pytest.mark.parametrize("family", FAMILIES)
def test_family_raw_outputs_match_onnxruntime(family_artifact, family, precision, tolerance):
    model, artifact = family_artifact(family)
    manifest = read_manifest(artifact)
    spec = manifest.spec
    entry = manifest.find("ncnn", precision)
    batch = probe_input(spec, seed=11, batch=2)  # not the builder's own check input; two images: the batch loop
    reference = onnxruntime_outputs(artifact / "model.onnx", spec, batch)
    with NcnnRunner.from_artifact(artifact / entry.file, entry.options, threads=1) as runner:
        assert runner.output_names() == list(spec.head.output_names)
        outputs = runner.infer({spec.input_name: batch})
    candidate = [outputs[name] for name in spec.head.output_names]
    assert [c.shape for c in candidate] == [r.shape for r in reference]
    error = tensor_error(reference, candidate)
    assert error.max_rel <= tolerance, (family, precision, error)
    # the two images differ, so a batch loop that repeated one image would show here
    assert not np.allclose(candidate[0][0], candidate[0][1])


@needs_pnnx
def test_recorded_blobs_follow_the_model_output_order_and_onnx_shapes(family_artifact):
    """pnnx names outputs out0, out1, … in the order the model returns them; shapes are the PyTorch ones."""
    import torch

    model, artifact = family_artifact("ssd")  # loc and conf: a [B, P, 4] pair NCNN keeps as 2-D Mats
    entry = read_manifest(artifact).find("ncnn", "fp32")
    with torch.no_grad():
        torch_shapes = [list(t.shape) for t in model(torch.zeros(1, 3, *SIZE))]
    assert entry.options["output_blobs"] == {"loc": "out0", "conf": "out1"}
    assert [entry.options["output_shapes"][n] for n in ("loc", "conf")] == torch_shapes
    assert entry.options["input_blob"] == "in0" and entry.options["input_shape"] == [1, 3, *SIZE]
    assert entry.options["companion_files"] == ["model.ncnn.bin"]
    assert entry.build["parity"]["max_rel"] <= FP32_TOLERANCE


@needs_pnnx
def test_fp16_variant_stores_half_precision_weights(family_artifact):
    """The fp16 build writes separate files with fp16 weights: about half the fp32 .bin, and not the same numbers."""
    _, artifact = family_artifact("yolov8")
    manifest = read_manifest(artifact)
    fp16 = manifest.find("ncnn", "fp16")
    assert fp16.file == "model_fp16.ncnn.param" and fp16.options["use_fp16"] is True
    fp32_size = (artifact / "model.ncnn.bin").stat().st_size
    fp16_size = (artifact / "model_fp16.ncnn.bin").stat().st_size
    assert 0.45 * fp32_size < fp16_size < 0.55 * fp32_size
    spec = manifest.spec
    batch = probe_input(spec, seed=3)
    outputs = {}
    for precision in ("fp32", "fp16"):
        entry = manifest.find("ncnn", precision)
        with NcnnRunner.from_artifact(artifact / entry.file, entry.options) as runner:
            outputs[precision] = runner.infer({spec.input_name: batch})
    assert not np.array_equal(outputs["fp32"]["p3"], outputs["fp16"]["p3"])


@needs_pnnx
def test_detector_load_runs_the_ncnn_entry_end_to_end(family_artifact):
    """Detector.load(artifact, backend="ncnn") gives ONNX Runtime's raw outputs through the same pre-processing."""
    _, artifact = family_artifact("yolov8")
    image = np.random.default_rng(5).integers(0, 256, size=(120, 200, 3), dtype=np.uint8)
    with Detector.load(artifact, backend="ncnn") as ncnn_detector, Detector.load(artifact) as onnx_detector:
        assert isinstance(ncnn_detector.runner, NcnnRunner)
        candidate = ncnn_detector.raw_outputs([image, image[::-1]])  # one call, two images: the batch loop
        reference = [np.concatenate(pair) for pair in zip(onnx_detector.raw_outputs([image]),
                                                           onnx_detector.raw_outputs([image[::-1]]))]
        detections = ncnn_detector.detect(image)
    assert tensor_error(reference, candidate).max_rel <= FP32_TOLERANCE
    assert detections.boxes.shape[1:] == (4,) and detections.boxes.dtype == np.float32


@needs_pnnx
def test_detector_load_rejects_a_modified_bin(family_artifact, tmp_path):
    """The .bin is a companion file: Detector.load checks its sha256 like the .param's."""
    _, artifact = family_artifact("centernet")
    copy = tmp_path / "artifact"
    shutil.copytree(artifact, copy)
    weights = copy / "model.ncnn.bin"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="model.ncnn.bin.*sha256 mismatch"):
        Detector.load(copy, backend="ncnn")


# --- the real FastestDet ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def fastestdet_model(fastestdet_dir):
    from edgekit.models.loading import load_checkpoint
    from edgekit.spec import load_class_names

    return load_checkpoint(fastestdet_dir / "fastestdet_coco_352.pth", family="fastestdet",
                           class_names=load_class_names(fastestdet_dir / "coco.names"))


@pytest.fixture(scope="module")
def reference_detections(fastestdet_dir, fastestdet_model):
    from edgekit.reference.detector import ReferenceDetector

    reference = ReferenceDetector(fastestdet_model, fastestdet_model.spec)
    detections = reference.detect_batch([fastestdet_dir / "images" / name for name in PHOTOS])
    assert sum(len(d) for d in detections) >= 10, "the real model finds objects in the real photos"
    return detections


@pytest.fixture(scope="module")
def fastestdet_artifact(fastestdet_model, tmp_path_factory):
    pytest.importorskip("pnnx")
    return build_artifact(fastestdet_model, tmp_path_factory.mktemp("fdet-ncnn") / "artifact", ("fp32", "fp16"))


def assert_fp32_detections_match(reference, candidate) -> None:
    for ref, cand in zip(reference, candidate):
        assert len(ref) == len(cand)
        stats = compare_detections([ref], [cand], iou_threshold=0.99)
        assert stats.matched == len(ref), stats
        assert stats.max_score_delta <= 1e-3, stats


def assert_fp16_detections_match(reference, candidate, conf_threshold: float) -> None:
    """Every detection matches within fp16 jitter, except ones whose score is within that jitter of the threshold."""
    stats = compare_detections(reference, candidate, iou_threshold=FP16_MIN_IOU)
    assert stats.max_score_delta <= FP16_SCORE_DELTA, stats
    assert stats.class_flips == 0, stats
    near_threshold = sum(int(np.sum(d.scores < conf_threshold + FP16_SCORE_DELTA)) for d in [*reference, *candidate])
    unmatched = (stats.reference_count - stats.matched) + (stats.candidate_count - stats.matched)
    assert unmatched <= near_threshold, stats


@needs_pnnx
def test_fastestdet_ncnn_fp32_matches_pytorch_reference(fastestdet_dir, fastestdet_artifact, reference_detections):
    photos = [fastestdet_dir / "images" / name for name in PHOTOS]
    with Detector.load(fastestdet_artifact, backend="ncnn", precision="fp32") as detector:
        candidate = [detector.detect(photo) for photo in photos]
    assert_fp32_detections_match(reference_detections, candidate)


@needs_pnnx
def test_fastestdet_ncnn_fp16_matches_pytorch_reference(fastestdet_dir, fastestdet_artifact, reference_detections):
    photos = [fastestdet_dir / "images" / name for name in PHOTOS]
    with Detector.load(fastestdet_artifact, backend="ncnn", precision="fp16") as detector:
        candidate = [detector.detect(photo) for photo in photos]
        threshold = detector.postprocess_spec.conf_threshold
    assert_fp16_detections_match(reference_detections, candidate, threshold)


@needs_pnnx
def test_third_party_onnx_route_matches_pytorch_reference(fastestdet_dir, reference_detections, tmp_path):
    """No PyTorch model: pnnx converts the authors' FastestDet.onnx (tensor names input.1 / 758, opset 11)."""
    from edgekit.convert.builders import BuildSource, get_builder
    from edgekit.models.fastestdet import fastestdet_spec
    from edgekit.spec import load_class_names

    spec = fastestdet_spec(load_class_names(fastestdet_dir / "coco.names"))
    entry = get_builder("ncnn").build(BuildSource(fastestdet_dir / "FastestDet.onnx", spec, None), "fp32",
                                      lambda name: tmp_path / name, {})
    assert entry.build["converter"]["route"] == "onnx"
    assert entry.options["output_shapes"] == {"output": [1, 85, 22, 22]}
    runner = NcnnRunner.from_artifact(tmp_path / entry.file, entry.options)
    with Detector(runner, spec) as detector:
        candidate = [detector.detect(fastestdet_dir / "images" / name) for name in PHOTOS]
    assert_fp32_detections_match(reference_detections, candidate)


def test_upstream_ncnn_files_through_edgekit_decoder_match_pytorch_reference(fastestdet_dir, reference_detections):
    """The authors' own FastestDet.ncnn.param/.bin (onnx2ncnn blob names, fp16 weights) run by NcnnRunner."""
    from edgekit.models.fastestdet import fastestdet_spec
    from edgekit.spec import load_class_names

    param, weights = fastestdet_dir / "FastestDet.ncnn.param", fastestdet_dir / "FastestDet.ncnn.bin"
    assert weights.read_bytes()[:4] == bytes.fromhex("476b3001")  # ncnn's fp16 weight tag 0x01306B47
    inputs, outputs = read_param_io(param)
    assert (inputs, outputs) == (["input.1"], ["758"])
    spec = fastestdet_spec(load_class_names(fastestdet_dir / "coco.names"))
    runner = NcnnRunner(param, weights, input_name=spec.input_name, input_blob=inputs[0],
                        input_shape=[1, 3, *spec.input_size], output_blobs={spec.head.output_names[0]: outputs[0]})
    with Detector(runner, spec) as detector:
        raw = detector.raw_outputs([fastestdet_dir / "images" / PHOTOS[0]])
        candidate = [detector.detect(fastestdet_dir / "images" / name) for name in PHOTOS]
    assert raw[0].shape == (1, 85, 22, 22)  # no recorded shape: the Mat [85, 22, 22] gets the batch axis back
    assert_fp16_detections_match(reference_detections, candidate, spec.postprocess.conf_threshold)


# --- bad input -------------------------------------------------------------------------------

@needs_pnnx
def test_unsupported_operator_is_a_conversion_error_naming_it(tmp_path):
    from edgekit.convert.artifact import ArtifactWriter
    from edgekit.convert.builders import BuildSource
    from edgekit.convert.builders.ncnn import NcnnBuilder
    from edgekit.convert.export import export_onnx

    model = tiny_detector(strided_slice=True)
    onnx_path = export_onnx(model, model.spec, tmp_path / "model.onnx")
    out = tmp_path / "artifact"
    for torch_model in (model, None):  # both routes: TorchScript and the ONNX file alone
        with (
            pytest.raises(ConversionError, match=r"not supported by ncnn: Tensor\.slice .*slice with step 2"),
            ArtifactWriter(out) as writer,
        ):
            NcnnBuilder().build(BuildSource(onnx_path, model.spec, torch_model), "fp32", writer.path, {})
        assert not out.exists()


@needs_pnnx
def test_conversion_fails_when_ncnn_disagrees_with_onnxruntime(tmp_path):
    """The build-time check can fail: here the ONNX file (the oracle) is another network than the one converted."""
    with pytest.raises(ConversionError, match="differs from ONNX Runtime"):
        ncnn_build(tiny_detector(seed=0), tmp_path, onnx_model=tiny_detector(seed=1))


def test_unknown_precision_is_refused():
    from edgekit.convert.builders import get_builder

    with pytest.raises(ConversionError, match="cannot build precision 'bf16'"):
        get_builder("ncnn").check_precision("bf16")


@needs_pnnx
def test_tiny_network_runs_and_checks_its_input(tiny_files):
    entry, folder = tiny_files
    runner = NcnnRunner.from_artifact(folder / entry.file, entry.options)
    x = probe_input(tiny_detector().spec, seed=4, batch=3)
    with runner:
        out = runner.infer({"images": x})["output"]
        with pytest.raises(InputError, match="expected shape"):
            runner.infer({"images": x[:, :, :32]})
        with pytest.raises(InputError, match="dtype float32"):
            runner.infer({"images": x.astype(np.float64)})
    reference = onnxruntime_outputs(folder / "model.onnx", tiny_detector().spec, x)[0]
    assert out.shape == (3, 8, 4, 4)
    assert tensor_error([reference], [out]).max_rel <= FP32_TOLERANCE


@needs_pnnx
def test_corrupt_param_is_a_model_file_error(tiny_files, tmp_path):
    entry, folder = tiny_files
    param = tmp_path / "model.ncnn.param"
    param.write_text("this is not a param file\n")
    shutil.copyfile(folder / "model.ncnn.bin", tmp_path / "model.ncnn.bin")
    with pytest.raises(ModelFileError, match=r"cannot parse this \.param file \(load_param returned -1: parse magic"):
        NcnnRunner.from_artifact(param, entry.options).activate()


@needs_pnnx
def test_param_with_a_layer_ncnn_lacks_is_a_model_file_error(tiny_files, tmp_path):
    entry, folder = tiny_files
    text = (folder / "model.ncnn.param").read_text().replace("Convolution ", "NoSuchLayer ", 1)
    (tmp_path / "model.ncnn.param").write_text(text)
    shutil.copyfile(folder / "model.ncnn.bin", tmp_path / "model.ncnn.bin")
    with pytest.raises(ModelFileError, match="NoSuchLayer not exists"):
        NcnnRunner.from_artifact(tmp_path / "model.ncnn.param", entry.options).activate()


@needs_pnnx
def test_missing_and_truncated_bin_are_model_file_errors(tiny_files, tmp_path):
    entry, folder = tiny_files
    param = tmp_path / "model.ncnn.param"
    shutil.copyfile(folder / "model.ncnn.param", param)
    with pytest.raises(ModelFileError, match=r"model\.ncnn\.bin: ncnn \.bin \(weights\) file not found"):
        NcnnRunner.from_artifact(param, entry.options).activate()
    data = (folder / "model.ncnn.bin").read_bytes()
    (tmp_path / "model.ncnn.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="load_model returned -1: ModelBin read weight_data failed") as info:
        NcnnRunner.from_artifact(param, entry.options).activate()
    assert "\n" not in str(info.value)


@needs_pnnx
def test_options_naming_missing_blobs_are_model_file_errors(tiny_files):
    entry, folder = tiny_files
    param = folder / entry.file
    options = {k: v for k, v in entry.options.items() if k != "output_blobs"}
    with pytest.raises(ModelFileError, match=r"lack \['output_blobs'\]"):
        NcnnRunner.from_artifact(param, options)
    renamed = {**entry.options, "output_blobs": {"output": "no_such_blob"}, "output_shapes": {}}
    with pytest.raises(ModelFileError, match=r"\['no_such_blob'\] not found in the network; its inputs are \['in0'\]"):
        NcnnRunner.from_artifact(param, renamed).activate()


def test_read_param_io_rejects_non_param_files(tmp_path):
    path = tmp_path / "x.param"
    path.write_text("hello\n")
    with pytest.raises(ModelFileError, match="not an ncnn text .param"):
        read_param_io(path)
    with pytest.raises(ModelFileError, match="not found"):
        read_param_io(tmp_path / "missing.param")


def test_registry_knows_the_ncnn_runner_and_builder():
    from edgekit.convert.builders import builder_names

    assert get_runner_class("ncnn") is NcnnRunner
    assert "ncnn" in builder_names()
