"""Checkpoint -> artifact, as explicit ordered stages.

    load -> module passes -> export (ONNX) -> ONNX passes -> backend builds -> artifact

Every stage that changes numbers is measured against the PyTorch model on the same input and
the error lands in the manifest; an fp32 stage beyond tolerance aborts, naming the stage, and
(because the artifact is written atomically) leaves nothing behind.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from edgekit import __version__, tolerances
from edgekit.convert.artifact import ArtifactWriter
from edgekit.convert.builders import BackendBuilder, BuildSource, get_builder, installed_versions
from edgekit.convert.export import DEFAULT_OPSET, embed_spec, export_onnx
from edgekit.errors import BackendUnavailableError, ConversionError, EdgekitError
from edgekit.models.base import DetectorModel
from edgekit.quant.pipeline import Int8Options
from edgekit.runtime.artifact import AWAITS_DEVICE_BUILD, CALIBRATION_FILE, Manifest, ModelEntry
from edgekit.runtime.backends import get_runner_class
from edgekit.runtime.preprocess import probe_input
from edgekit.spec import ModelSpec
from edgekit.targets import Target, load_target
from edgekit.validate.compare import tensor_error

ONNX_FILE = "model.onnx"
#: raw-tensor tolerance (max error relative to each output's magnitude) per precision. fp32 stages
#: beyond it abort the conversion; fp16/bf16 are recorded and judged on detections (validate).
TENSOR_TOLERANCE = tolerances.TENSOR
#: the ONNX Runtime fp32 model every artifact carries: the portable baseline validate compares with
BASELINE = ("onnxruntime", "fp32")
#: ONNX passes are checked in float32: the fp32 level (why: edgekit.tolerances.ONNX_PASS)
ONNX_PASS_TOLERANCE = tolerances.ONNX_PASS
#: largest side of the input used to check each pass (the final graph is checked at full size)
PASS_CHECK_SIZE = 160

Progress = Callable[[str], None]
#: the reference a conversion is checked against: input tensor [1, 3, H, W] -> outputs in spec order
Reference = Callable[[np.ndarray], "list[np.ndarray]"]


#: what every conversion runs (export, ONNX passes); each backend's own tools are its builder's ``tools``
CONVERTER_TOOLS = ("torch", "onnx", "onnxsim", "onnxslim")


def tool_versions(*builders: BackendBuilder) -> dict[str, str]:
    """edgekit, Python, the converter's tools and each of ``builders``' declared tools, as installed."""
    versions = {"edgekit": __version__, "python": platform.python_version(), **installed_versions(CONVERTER_TOOLS)}
    for builder in builders:
        versions.update(builder.tool_versions())
    return versions


def torch_outputs(model: nn.Module, tensor: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        outputs = model.eval()(torch.from_numpy(tensor))
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    return [o.float().numpy() for o in outputs]


def runner_outputs(backend: str, path: Path, entry_options: dict[str, Any], spec: ModelSpec,
                   tensor: np.ndarray) -> list[np.ndarray]:
    with get_runner_class(backend).from_artifact(path, entry_options) as runner:
        outputs = runner.infer({spec.input_name: tensor})
    return [np.asarray(outputs[name], dtype=np.float32) for name in spec.head.output_names]


def check_onnx_parity(model: nn.Module, spec: ModelSpec, onnx_path: Path, seed: int = 0) -> dict[str, Any]:
    """PyTorch vs ONNX Runtime (graph optimisation off: the plain oracle) on the same input."""
    from edgekit.runtime.backends.onnxruntime import OnnxRuntimeRunner

    tensor = probe_input(spec, seed)
    with OnnxRuntimeRunner(onnx_path, graph_optimization=False) as runner:
        outputs = runner.infer({spec.input_name: tensor})
    names = spec.head.output_names
    return tensor_error(torch_outputs(model, tensor), [outputs[n] for n in names], names).to_dict()


def _export_stage(model: nn.Module, spec: ModelSpec, onnx_path: Path, opset: int, dynamic_batch: bool,
                  skip_passes: Sequence[str], no_passes: bool, dump_dir: Path | None,
                  progress: Progress, backend: str | None = None) -> dict[str, Any]:
    """Module passes, export, ONNX passes, then ``backend``'s legalisation stage on the model its builder gets
    (it runs with ``no_passes`` too: the exported graph stays untouched, the backend still needs it; ``--skip``
    names its passes). Returns the manifest's record of them and that model."""
    from edgekit.convert.passes import MODULE_STAGE, check_skip_names, legalization_stage, run_onnx_passes, run_stages
    from edgekit.convert.passes.pipeline import ONNX_STAGE, check_skips_apply

    check_skip_names(skip_passes)
    legal = legalization_stage(backend)
    check_skips_apply(skip_passes, ([] if no_passes else [MODULE_STAGE, ONNX_STAGE]) + ([legal] if legal else []),
                      f"this export{' with --no-passes' if no_passes else ''}{f' for {backend}' if backend else ''}")
    reference = model.eval()
    records: list[dict[str, Any]] = []
    # Pass checks run at a reduced size: the rewrites are resolution-independent, and module passes are
    # checked in float64, where PyTorch's depthwise convolutions are ~50x slower than in float32.
    check_h, check_w = (min(side, PASS_CHECK_SIZE) // 32 * 32 or 32 for side in spec.input_size)
    example = torch.from_numpy(probe_input(spec.with_input_size((check_h, check_w)), seed=1))
    stages = [] if no_passes else [MODULE_STAGE]
    stages += [legal] if legal is not None and legal.kind is MODULE_STAGE.kind else []
    builder_model, legal_records = model, []
    if stages:  # one run: the legalisation stage continues from the module stage's checked outputs
        models, module_records = run_stages(stages, reference, example, skip=skip_passes, dump_dir=dump_dir)
        model = model if no_passes else models[0]
        builder_model = models[-1]
        legal_records = [r for r in module_records if r.stage != MODULE_STAGE.name]
        records += [r.to_dict() for r in module_records if r.stage == MODULE_STAGE.name]
        for r in module_records:
            if r.stage == MODULE_STAGE.name:
                progress("pass    " + r.summary())
    export_onnx(model, spec, onnx_path, opset=opset, dynamic_batch=dynamic_batch, untouched=no_passes)
    if not no_passes:
        onnx_model, onnx_records = run_onnx_passes(onnx.load(str(onnx_path)), probe_input(spec, seed=1), skip=skip_passes,
                                                   tolerance=ONNX_PASS_TOLERANCE, dump_dir=dump_dir)
        embed_spec(onnx_model, spec)
        onnx.save(onnx_model, str(onnx_path))
        records += [r.to_dict() for r in onnx_records]
        for r in onnx_records:
            progress("pass    " + r.summary())
    records += [r.to_dict() for r in legal_records]
    for r in legal_records:
        progress("pass    " + r.summary())
    # End to end: the final graph against the untouched PyTorch model.
    error = check_onnx_parity(reference, spec, onnx_path)
    if error["max_rel"] > TENSOR_TOLERANCE["fp32"]:
        raise ConversionError(f"export: ONNX Runtime output differs from the PyTorch model by {error['max_rel']:.2e} "
                              f"(relative), above the fp32 tolerance {TENSOR_TOLERANCE['fp32']:.0e}")
    progress(f"export  onnx opset {opset}: max rel error vs PyTorch {error['max_rel']:.1e}")
    return {"passes": records, "export_error": error, "model": builder_model}


def export_artifact(model: DetectorModel, out_dir: str | Path, opset: int = DEFAULT_OPSET, dynamic_batch: bool = False,
                    source: str | None = None, skip_passes: Sequence[str] = (), no_passes: bool = False,
                    dump_dir: str | Path | None = None, progress: Progress = lambda line: None) -> Manifest:
    """``edgekit export``: an artifact folder with the (pass-optimised) ONNX model for ONNX Runtime fp32."""
    spec: ModelSpec = model.spec
    with ArtifactWriter(out_dir) as writer:
        stage = _export_stage(model, spec, writer.path(ONNX_FILE), opset, dynamic_batch, skip_passes, no_passes,
                              Path(dump_dir) if dump_dir else None, progress)
        info = {"producer": "edgekit export", "source": source, "opset": opset, "dynamic_batch": dynamic_batch,
                "tools": tool_versions(get_builder(BASELINE[0])), "passes": stage["passes"],
                "parity": {"onnxruntime/fp32": stage["export_error"]}}
        return writer.commit(spec, [ModelEntry(*BASELINE, ONNX_FILE)], info)


def resolve_input_size(model_size: tuple[int, int], from_checkpoint: bool, explicit: tuple[int, int] | None,
                       target: Target) -> tuple[tuple[int, int], str | None]:
    """The (H, W) to export at, and a note to print when the model's and the target's sizes disagree.

    Order: the explicit ``--imgsz``; else the size the checkpoint says it was trained at (a 160-px model run at a
    target's 640 loses most of its mAP: 0.536 -> 0.137 measured on the yolov8 fixture); else the target profile's
    ``input_size``; else the model's default. A conflict is always printed, never resolved silently.
    """
    target_size = (target.input_size[0], target.input_size[1]) if target.input_size else None
    if explicit is not None:
        size = (int(explicit[0]), int(explicit[1]))
        if from_checkpoint and size != model_size:
            return size, (f"note: exporting at {size[0]}x{size[1]} (--imgsz); the checkpoint was trained at "
                          f"{model_size[0]}x{model_size[1]}")
        return size, None
    if from_checkpoint:
        if target_size and target_size != model_size:
            return model_size, (f"note: target {target.name!r} suggests {target_size[0]}x{target_size[1]}; keeping the "
                                f"checkpoint's own {model_size[0]}x{model_size[1]} (pass --imgsz to change it)")
        return model_size, None
    if target_size:
        if target_size != model_size:
            return target_size, (f"note: the checkpoint does not record its input size; exporting at target "
                                 f"{target.name!r}'s {target_size[0]}x{target_size[1]} (pass --imgsz to change it)")
        return target_size, None
    return model_size, None


def convert(model: DetectorModel, target: Target | str, out_dir: str | Path, precision: str | None = None,
            input_size: tuple[int, int] | None = None, opset: int = DEFAULT_OPSET, source: str | None = None,
            skip_passes: Sequence[str] = (),
            no_passes: bool = False, dump_dir: str | Path | None = None, int8: Int8Options | None = None,
            progress: Progress = lambda line: None) -> Manifest:
    """``edgekit convert``: export for ``target`` and build its backend's files.

    ``input_size`` (H, W) overrides the model's own size (see :func:`resolve_input_size`). The artifact
    always carries the ONNX Runtime fp32 model too (the baseline validate compares with). Each backend
    build is run here when its library is installed and compared with the PyTorch model on the same
    input; the error lands in the manifest.

    int8 (``precision="int8"``; ``int8`` says how to calibrate, default: the bundled calibration set
    and the target's method): the fp32 graph is calibrated once (``calibration.json`` in the artifact),
    the ONNX Runtime Q/DQ model is always added (``onnxruntime/int8``: the int8 reference), and the
    target's backend emits its own int8 model from the same result.
    """
    target, precision = _target_precision(target, precision, int8)
    spec: ModelSpec = model.spec
    size, note = resolve_input_size((spec.input_size[0], spec.input_size[1]),
                                    getattr(model, "input_size_from_checkpoint", True), input_size, target)
    if note:
        progress(note)
    if size != tuple(spec.input_size):
        spec = spec.with_input_size(size)
    started = time.perf_counter()
    with ArtifactWriter(out_dir) as writer:
        onnx_path = writer.path(ONNX_FILE)
        stage = _export_stage(model, spec, onnx_path, opset, target.dynamic_batch, skip_passes, no_passes,
                              Path(dump_dir) if dump_dir else None, progress, backend=target.backend)
        parity = {"onnxruntime/fp32": stage["export_error"]}
        # the builder gets the pass-optimised module (e.g. Focus already a 6x6 conv) for converters that trace torch
        entries, extra = _build_target(BuildSource(onnx_path, spec, stage["model"], batch_range=target.batch_range),
                                       target, precision, int8, writer, parity,
                                       lambda tensor: torch_outputs(model, tensor), "PyTorch", progress)
        info = {**extra, "producer": "edgekit convert", "source": source, "target": asdict(target), "precision": precision,
                "opset": opset, "tools": _target_tools(target), "passes": stage["passes"], "parity": parity,
                "seconds": round(time.perf_counter() - started, 2)}
        return writer.commit(spec, entries, info, runtime=target.runtime_options())


def _calibrate(onnx_path: Path, spec: ModelSpec, target: Target, int8: Int8Options | None, writer: ArtifactWriter,
               extra: dict[str, Any], progress: Progress):
    """Calibrate the artifact's fp32 graph once; the result goes into the artifact and to every builder."""
    from edgekit.quant.gate import agreement_gate
    from edgekit.quant.pipeline import calibrate_artifact

    result, record, (gate_paths, gate_source, calibrated) = calibrate_artifact(
        onnx_path, spec, int8 or Int8Options(), target.calibration.method, target.calibration.images,
        target.calibration.percentile, progress=progress, placement=get_builder(target.backend).qdq_placement)
    result.save(writer.path(CALIBRATION_FILE))
    extra["int8"] = {**record, "calibration_file": CALIBRATION_FILE,
                     "quantized_layers": len(result.quantized_layers), "layers": len(result.layers), "agreement": {}}
    progress(f"int8    {len(result.quantized_layers)} of {len(result.layers)} layers in int8 "
             f"({result.method}, {result.num_images} images)")
    return result, agreement_gate(onnx_path, spec, gate_paths, gate_source, calibrated)


def _gate_int8(entry: ModelEntry, writer: ArtifactWriter, gate, extra: dict[str, Any], progress: Progress) -> None:
    """Every int8 model that runs here must agree with its fp32 graph (``quant.gate``): fail instead of shipping
    a broken one; the agreement lands in the manifest (``info.int8.agreement``)."""
    if entry.status(writer.path("")) == AWAITS_DEVICE_BUILD:
        return
    try:
        runner_class = get_runner_class(entry.backend)
    except EdgekitError:
        return
    if not runner_class.is_available():
        return
    name = f"{entry.backend}/{entry.precision}"
    try:
        runner = runner_class.from_artifact(writer.path(entry.file), entry.options)
        extra["int8"]["agreement"][name] = gate.check(name, runner, progress)
    except BackendUnavailableError as exc:  # built for a device this machine lacks (intel-igpu on a CPU host)
        progress(f"gate    {name}: not run here ({exc})")


def _check_backend(entry: ModelEntry, writer: ArtifactWriter, spec: ModelSpec, reference: Reference,
                   reference_name: str, progress: Progress) -> dict[str, Any]:
    """Run the freshly built backend model against the reference (PyTorch, or ONNX Runtime on a third-party
    ONNX file), when the backend runs on this machine."""
    if entry.status(writer.path("")) == AWAITS_DEVICE_BUILD:  # TensorRT: no engine until the device builds it
        progress(f"build   {entry.backend}/{entry.precision}: ONNX + build script written; the engine is built on the device")
        return {"checked": False}
    try:
        runner_class = get_runner_class(entry.backend)
    except EdgekitError:  # a backend with a builder but no runner in this edgekit (runs on the device only)
        runner_class = None
    if runner_class is None or not runner_class.is_available():
        progress(f"build   {entry.backend}/{entry.precision}: built; not run here (backend library not installed)")
        return {"checked": False}
    tensor = probe_input(spec, seed=2)
    try:
        outputs = runner_outputs(entry.backend, writer.path(entry.file), entry.options, spec, tensor)
    except BackendUnavailableError as exc:
        # the files do not depend on the device (an OpenVINO IR for an iGPU, built on a CPU-only host): written,
        # not run, as a TensorRT build is; the manifest says so ("checked": false)
        progress(f"build   {entry.backend}/{entry.precision}: built; not run here ({exc})")
        return {"checked": False, "reason": str(exc)}
    error = tensor_error(reference(tensor), outputs, spec.head.output_names).to_dict()
    tolerance = TENSOR_TOLERANCE.get(entry.precision)
    if not math.isfinite(error["max_rel"]):  # NaN/Inf: wrong at any precision (fp16 overflow too)
        raise ConversionError(f"build {entry.backend}/{entry.precision}: outputs hold NaN or Inf where "
                              f"{reference_name}'s do not (or {reference_name}'s are not finite): the model does not "
                              "run correctly on this backend")
    if entry.precision == "fp32" and error["max_rel"] > tolerance:
        raise ConversionError(f"build {entry.backend}/fp32: output differs from {reference_name} by "
                              f"{error['max_rel']:.2e} (relative), above the fp32 tolerance {tolerance:.0e}")
    progress(f"build   {entry.backend}/{entry.precision}: max rel error vs {reference_name} {error['max_rel']:.1e}")
    return {"checked": True, **error, "tolerance": tolerance}


def _target_precision(target: Target | str, precision: str | None, int8: Int8Options | None) -> tuple[Target, str]:
    """The target profile and the precision to build (default: the target's), checked before any work."""
    target = load_target(target) if isinstance(target, str) else target
    precision = precision or target.precision
    if precision not in target.precisions:
        raise ConversionError(f"--precision {precision}: target {target.name!r} supports {', '.join(target.precisions)}")
    if precision == "int8" and int8 is not None:
        # click's FloatRange lets nan through (every comparison with it is false), and a nan budget or percentile
        # would judge nothing and write invalid JSON into the manifest
        for flag, value in (("--drift-budget", int8.drift_budget), ("--percentile", int8.percentile)):
            if value is not None and not math.isfinite(value):
                raise ConversionError(f"{flag} {value}: expected a finite number")
    if precision == "int8" and int8 is not None and int8.cache is None and int8.calib_dir is not None:
        from edgekit.quant.calibration import check_calibration_folder

        check_calibration_folder(int8.calib_dir)  # before the export: a typo in --calib should not cost one
    if precision == "int8" and int8 is not None and int8.cache is not None:
        from edgekit.quant.result import CalibrationResult

        # a cache fixes the method, the images and the layers kept in float: these options would be ignored
        ignored = [flag for flag, value in (("--calib-method", int8.method), ("--calib-images", int8.images),
                                            ("--percentile", int8.percentile), ("--drift-budget", int8.drift_budget),
                                            ("--drift-data", int8.drift_data)) if value is not None]
        if ignored:
            raise ConversionError(f"--calib-cache: {', '.join(ignored)} cannot change a calibration that is reused "
                                  "(its method, images and float layers are fixed); drop them, or calibrate again "
                                  "without --calib-cache")

        CalibrationResult.load(int8.cache)  # readable, schema and values: a truncated cache should not cost an export
    return target, precision


def _build_target(source_model: BuildSource, target: Target, precision: str, int8: Int8Options | None,
                  writer: ArtifactWriter, parity: dict[str, Any], reference: Reference, reference_name: str,
                  progress: Progress) -> tuple[list[ModelEntry], dict[str, Any]]:
    """Backend builds of an artifact whose fp32 ONNX is written: (manifest entries, extra manifest info).

    int8: calibrate once, always add the ONNX Runtime Q/DQ model, then the target backend's own int8.
    Each build is checked against ``reference`` (its error lands in ``parity``).
    """
    spec = source_model.spec
    entries = [ModelEntry(*BASELINE, ONNX_FILE)]
    extra: dict[str, Any] = {}
    if precision == "int8":
        calibration, gate = _calibrate(source_model.onnx_path, spec, target, int8, writer, extra, progress)
        source_model = replace(source_model, calibration=calibration)
        qdq_entry = get_builder("onnxruntime").build(source_model, "int8", writer.path, {})
        entries.append(qdq_entry)
        parity["onnxruntime/int8"] = _check_backend(qdq_entry, writer, spec, reference, reference_name, progress)
        _gate_int8(qdq_entry, writer, gate, extra, progress)
    if (target.backend, precision) not in (BASELINE, ("onnxruntime", "int8")):
        builder = get_builder(target.backend)
        options = dict(target.backend_options)
        if target.nms == "graph":  # the target's model ends in NMS (convert/graph_nms); the baselines stay raw
            from edgekit.runtime.graph_nms import GraphNms

            graph_nms = GraphNms.from_postprocess(spec.postprocess).capped(builder.max_graph_topk)
            source_model = replace(source_model, graph_nms=graph_nms)
            capped = (f"; top-k {spec.postprocess.pre_nms_topk} capped to {graph_nms.pre_nms_topk}, the largest K "
                      f"{target.backend}'s TopK takes" if graph_nms.pre_nms_topk < spec.postprocess.pre_nms_topk else "")
            progress(f"nms     in the graph for {target.backend} ({graph_nms.describe()}{capped})")
        entry = builder.build(source_model, precision, writer.path, options)
        entries.append(entry)
        parity[f"{entry.backend}/{entry.precision}"] = _check_backend(entry, writer, spec, reference, reference_name,
                                                                      progress)
        if precision == "int8":
            _gate_int8(entry, writer, gate, extra, progress)
        if builder.builds_on_device:
            if not entry.builds_on_device:
                raise ConversionError(f"{type(builder).__name__} builds on the device but its entry "
                                      f"{entry.backend}/{entry.precision} names no engine to build")
            extra["on_device"] = f"on the device, build the engine with: {entry.build_hint()}"
    return entries, extra


def onnx_runtime_reference(onnx_path: Path, spec: ModelSpec) -> Reference:
    """ONNX Runtime (graph optimisation off: the plain oracle) on ``onnx_path`` as a Reference."""
    from edgekit.runtime.backends.onnxruntime import OnnxRuntimeRunner

    def run(tensor: np.ndarray) -> list[np.ndarray]:
        with OnnxRuntimeRunner(onnx_path, graph_optimization=False) as runner:
            outputs = runner.infer({spec.input_name: tensor})
        return [np.asarray(outputs[name], dtype=np.float32) for name in spec.head.output_names]

    return run


def convert_onnx(onnx_file: str | Path, spec: ModelSpec, target: Target | str, out_dir: str | Path,
                 precision: str | None = None, source: str | None = None, skip_passes: Sequence[str] = (),
                 no_passes: bool = False, dump_dir: str | Path | None = None, int8: Int8Options | None = None,
                 progress: Progress = lambda line: None) -> Manifest:
    """``edgekit convert MODEL.onnx``: an artifact for ``target`` from an ONNX file exported elsewhere.

    ``spec`` describes the file (``edgekit.runtime.onnx_import.spec_from_third_party_onnx``); its
    ``input_name`` / ``head.output_names`` are the file's. The input size is the file's own (a fixed
    input cannot be re-sized; the target's input size is not applied). Stages: the ONNX passes (each
    checked as in :func:`convert`), the spec embedded as ``model.onnx``, then the backend builds.
    The reference every stage is measured against is ONNX Runtime on the original file (there is no
    PyTorch model); errors beyond the fp32 tolerance abort, and the artifact is written atomically.
    """
    from edgekit.convert.passes import check_skip_names, run_onnx_passes
    from edgekit.convert.passes.pipeline import ONNX_STAGE, check_skips_apply

    target, precision = _target_precision(target, precision, int8)
    onnx_file = Path(onnx_file)
    check_skip_names(skip_passes)
    check_skips_apply(skip_passes, [] if no_passes else [ONNX_STAGE],
                      f"converting an ONNX file{' with --no-passes' if no_passes else ''}")
    if target.input_size and tuple(target.input_size) != tuple(spec.input_size):
        h, w = spec.input_size
        progress(f"input   {h}x{w} from {onnx_file.name} (the target's {target.input_size[0]}x{target.input_size[1]} "
                 "applies to models edgekit exports)")
    reference = onnx_runtime_reference(onnx_file, spec)
    started = time.perf_counter()
    try:
        original = onnx.load(str(onnx_file))
    except Exception as exc:
        raise ConversionError(f"{onnx_file}: not a readable ONNX file ({type(exc).__name__})") from None
    with ArtifactWriter(out_dir) as writer:
        onnx_path = writer.path(ONNX_FILE)
        records: list[dict[str, Any]] = []
        model = original
        if not no_passes:
            model, onnx_records = run_onnx_passes(original, probe_input(spec, seed=1), skip=skip_passes,
                                                  tolerance=ONNX_PASS_TOLERANCE,
                                                  dump_dir=Path(dump_dir) if dump_dir else None)
            records = [r.to_dict() for r in onnx_records]
            for r in onnx_records:
                progress("pass    " + r.summary())
        embed_spec(model, spec)
        onnx.save(model, str(onnx_path))
        tensor = probe_input(spec, seed=0)
        error = tensor_error(reference(tensor), onnx_runtime_reference(onnx_path, spec)(tensor),
                             spec.head.output_names).to_dict()
        if error["max_rel"] > TENSOR_TOLERANCE["fp32"]:
            raise ConversionError(f"onnx passes: ONNX Runtime output differs from {onnx_file.name} by "
                                  f"{error['max_rel']:.2e} (relative), above the fp32 tolerance "
                                  f"{TENSOR_TOLERANCE['fp32']:.0e}")
        progress(f"onnx    {onnx_file.name} after passes: max rel error vs the original {error['max_rel']:.1e}")
        parity = {"onnxruntime/fp32": error}
        entries, extra = _build_target(BuildSource(onnx_path, spec, None, batch_range=target.batch_range), target,
                                       precision, int8, writer, parity, reference, f"ONNX Runtime on {onnx_file.name}",
                                       progress)
        info = {**extra, "producer": "edgekit convert (third-party ONNX)", "source": source or str(onnx_file),
                "target": asdict(target), "precision": precision, "opset": _opset(original),
                "tools": _target_tools(target), "passes": records, "parity": parity,
                "seconds": round(time.perf_counter() - started, 2)}
        return writer.commit(spec, entries, info, runtime=target.runtime_options())


def _target_tools(target: Target) -> dict[str, str]:
    """The tools a conversion for ``target`` used: the converter's, the baseline's and the target backend's."""
    return tool_versions(get_builder(BASELINE[0]), get_builder(target.backend))


def _opset(model: onnx.ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
