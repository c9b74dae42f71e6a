"""The ``edgekit`` command line.

Every command exits non-zero with one ``error: …`` line on bad input (no traceback); heavy
libraries (torch, onnx) are imported inside the commands that need them.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from edgekit import __version__
from edgekit.atomic_io import Terminated, write_text_atomic
from edgekit.errors import EdgekitError, InputError, OutputError, first_line
from edgekit.filetypes import is_zip_file, strict_json

if TYPE_CHECKING:
    from edgekit.runtime.sources import Source

CHECKPOINT_SUFFIXES = {".pt", ".pth", ".ckpt"}
# Bounds on numbers a user types: beyond them a run hangs or allocates far more than any device has.
MAX_THREADS = 256
MAX_IMGSZ = 4096
# ONNX opsets edgekit exports at: from convert/export.MIN_OPSET (per-channel quantisation, modern operators) to the
# TorchScript exporter's highest (torch.onnx ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET): above it torch only warns and stamps
# the newer opset on operators built to the older definitions. Numbers here so the CLI need not import torch (a test
# keeps them equal to the libraries').
OPSET_RANGE = (17, 20)
# images the early --calib check decodes at most: find_calibration_images' min_images, enough to tell "too few"
CALIB_CHECK_IMAGES = 16


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point: run the click group, turning EdgekitError into one line."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="edgekit", standalone_mode=False)
    except EdgekitError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except click.exceptions.Abort as exc:  # click turns Ctrl-C into Abort
        click.echo(f"error: {'interrupted' if isinstance(exc.__cause__, KeyboardInterrupt) else 'aborted'}", err=True)
        return 130
    except click.UsageError as exc:  # click's own "Usage: … Error: …" block becomes the one line every error is
        command = exc.ctx.command_path.replace("edgekit", "", 1).strip() if exc.ctx is not None else ""
        hint = f" (see `edgekit {command} --help`)" if command else " (see `edgekit --help`)"
        click.echo(f"error: {' '.join(exc.format_message().split())}{hint}", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except (KeyboardInterrupt, Terminated):  # Terminated: SIGTERM during a write, after its cleanup ran
        click.echo("error: interrupted", err=True)
        return 130
    except Exception as exc:  # a bug in edgekit or a backend failure nobody translated: still one line
        if os.environ.get("EDGEKIT_TRACEBACK"):
            raise
        click.echo(f"error: unexpected {type(exc).__name__}: {first_line(exc, empty='')} "
                   "(this is a bug; rerun with EDGEKIT_TRACEBACK=1 and report it)", err=True)
        return 1
    return 0


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekit")
def cli() -> None:
    """Convert PyTorch detectors for edge backends, run them, and measure the drift."""


# --- helpers -------------------------------------------------------------------------------


def _read_names(path: str | None) -> tuple[str, ...] | None:
    if path is None:
        return None
    from edgekit.spec import load_class_names

    return load_class_names(path)


def _parse_imgsz(imgsz: int | None) -> tuple[int, int] | None:
    if imgsz is None:
        return None
    if imgsz <= 0 or imgsz % 32 or imgsz > MAX_IMGSZ:
        raise InputError(f"--imgsz {imgsz}: expected a positive multiple of 32, at most {MAX_IMGSZ}")
    return (imgsz, imgsz)


def _parse_backends(backends: str | None) -> list[str] | None:
    """``--backends a,b`` -> names, each checked against the known runners (a typo must not be skipped silently)."""
    if backends is None:
        return None
    from edgekit.runtime.backends import get_runner_class

    names = [name.strip() for name in backends.split(",") if name.strip()]
    if not names:
        raise InputError("--backends: expected a comma-separated list of backend names")
    for name in names:
        get_runner_class(name)  # raises with the known names and a did-you-mean
    return names


def _is_checkpoint(path: Path) -> bool:
    """A PyTorch checkpoint: by suffix, or by its zip signature (best.pt renamed, no suffix, .pth.tar)."""
    return path.is_file() and (path.suffix.lower() in CHECKPOINT_SUFFIXES or is_zip_file(path))


def _load_model(checkpoint: str, family: str | None, names: str | None, imgsz: int | None):
    from edgekit.models.loading import load_checkpoint

    imports = _import_settings()
    return load_checkpoint(checkpoint, family=family, class_names=_read_names(names), input_size=_parse_imgsz(imgsz),
                           trust_upstream=imports.get("trust_upstream"), end2end=imports.get("end2end"))


_IMPORT_META_KEY = "edgekit.import"


def _remember_import_setting(ctx: click.Context, param: click.Parameter, value: object) -> object:
    """Keep --trust-upstream / --end2end for this invocation (ctx.meta), so every command loads checkpoints the same way."""
    if value is not None:
        ctx.meta.setdefault(_IMPORT_META_KEY, {})[param.name] = value
    return value


def _given(parameter: str) -> bool:
    """Whether the user typed the option (not its default): an option with a default cannot say it by its value."""
    from click.core import ParameterSource

    return click.get_current_context().get_parameter_source(parameter) == ParameterSource.COMMANDLINE


def _import_settings() -> dict:
    ctx = click.get_current_context(silent=True)
    return dict(ctx.meta.get(_IMPORT_META_KEY, {})) if ctx is not None else {}


def _import_options(function):
    """Options for checkpoints users bring (Ultralytics, YOLOv5): shared by export, convert, detect and validate."""
    function = click.option("--end2end/--no-end2end", "end2end", default=None, expose_value=False,
                            callback=_remember_import_setting,
                            help="YOLO26 / end-to-end heads: use the one-to-one branch (top-k, no NMS) or the "
                                 "one-to-many branch with NMS (default: what the checkpoint says).")(function)
    function = click.option("--trust-upstream", "trust_upstream", metavar="PACKAGE", default=None, expose_value=False,
                            callback=_remember_import_setting,
                            help="Resolve only the layer classes edgekit does not implement (a fork's custom blocks) "
                                 "from this installed package.")(function)
    return function


def expand_sources(sources: Sequence[str]) -> list[Path]:
    """Image files from paths, folders (their images, sorted) and globs; errors name the bad path
    (``edgekit.runtime.sources.list_image_files``)."""
    from edgekit.runtime.sources import list_image_files

    return list_image_files(sources)


def _open_detector(model: str, backend: str | None, precision: str | None, threads: int | None, conf: float | None,
                   iou: float | None, family: str | None, names: str | None, mode: str = "latency"):
    """A Detector for an artifact/ONNX file, or the PyTorch reference for a checkpoint (or --backend torch)."""
    path = Path(model)
    if not path.exists():
        raise InputError(f"{path}: no such checkpoint, ONNX file or artifact folder")
    is_checkpoint = _is_checkpoint(path)
    if not is_checkpoint:
        _refuse_checkpoint_options(path, family, names, "convert the checkpoint with the option")
    if backend == "torch" or is_checkpoint:
        if not is_checkpoint:
            raise InputError(f"{path}: --backend torch needs a PyTorch checkpoint ({', '.join(sorted(CHECKPOINT_SUFFIXES))})")
        if backend not in (None, "torch"):
            raise InputError(f"{path}: --backend {backend} runs a converted model; a checkpoint runs on the PyTorch "
                             f"reference only: convert it first (edgekit convert {path.name} --target …)")
        if precision not in (None, "fp32"):
            raise InputError(f"{path}: --precision {precision}: a checkpoint runs in fp32 on the PyTorch reference; "
                             "convert it for other precisions")
        from edgekit.reference.detector import ReferenceDetector

        torch_model = _load_model(model, family, names, None)
        return ReferenceDetector(torch_model, torch_model.spec, torch_model.spec.postprocess.with_thresholds(conf, iou))
    from edgekit.runtime.detector import Detector

    backend = backend or "onnxruntime"
    spec = _bare_onnx_spec(path, family, names) if path.is_file() else None
    if spec is not None:
        if precision not in (None, "fp32"):
            raise InputError(f"{path}: --precision {precision}: a third-party ONNX file runs as it is (fp32); "
                             f"convert it for other precisions (edgekit convert {path.name} --target …)")
        # a third-party ONNX file: its metadata/layout (or --family, --names) describe it, the file gives the tensor names
        detector = Detector.from_third_party_onnx(path, spec, backend=backend, threads=threads, mode=mode)
        detector.postprocess_spec = detector.postprocess_spec.with_thresholds(conf, iou)
        return detector
    return Detector.load(path, backend=backend, precision=precision, threads=threads,
                         conf_threshold=conf, iou_threshold=iou, mode=mode)


def _refuse_unused_validate_options(path: Path, backends: list[str] | None, reference: str | None,
                                    family: str | None, names: str | None) -> None:
    """Options validate would accept and not apply to this MODEL: each was silently ignored (the table then said
    "reference: torch/fp32" for a checkpoint whose --reference was dropped, "openvino" ran as ONNX Runtime)."""
    if _is_checkpoint(path):
        for given, option in ((reference, "--reference"), (backends, "--backends")):
            if given:
                raise InputError(f"{path}: {option} applies to an artifact or ONNX file; a checkpoint is validated on "
                                 "the PyTorch reference alone (convert it, then validate the artifact with --reference "
                                 f"{path.name})")
        return
    if path.is_file() and backends and backends != ["onnxruntime"]:
        raise InputError(f"{path}: --backends {','.join(backends)}: a bare ONNX file is validated on ONNX Runtime; "
                         f"convert it for other backends (edgekit convert {path.name} --target …)")
    if not reference:  # with one, --family / --names / --end2end / --trust-upstream load the reference checkpoint
        _refuse_checkpoint_options(path, family, names, "here no --reference loads one")


def _refuse_checkpoint_options(path: Path, family: str | None, names: str | None, remedy: str) -> None:
    """``path`` is an ONNX file or an artifact: options that only describe a checkpoint must not be accepted and
    silently ignored (--trust-upstream, --end2end; --family / --names beside an artifact, which carries its spec)."""
    imports = _import_settings()
    given = [flag for flag, key in (("--trust-upstream", "trust_upstream"), ("--end2end/--no-end2end", "end2end"))
             if key in imports]
    if given:
        raise InputError(f"{path}: {', '.join(given)} apply when loading a PyTorch checkpoint; an ONNX file or "
                         f"artifact has its head fixed at conversion ({remedy})")
    if path.is_dir() and (family is not None or names is not None):
        raise InputError(f"{path}: --family/--names describe a checkpoint or a third-party ONNX file; an "
                         "artifact carries its own spec (see `edgekit inspect`)")


def _bare_onnx_spec(path: Path, family: str | None, names: str | None, imgsz: int | None = None):
    """The ModelSpec of a model file that is not an edgekit artifact, or None for an edgekit-exported ONNX
    (its embedded spec is read by Detector.load / spec_from_onnx).

    ``--family`` of a built-in family (e.g. fastestdet, with ``--names``) describes any raw head; otherwise
    an ``.onnx`` file describes itself (Ultralytics metadata) or is told apart by ``--family ultralytics|yolov5|yolox``
    (see ``edgekit.runtime.onnx_import``).
    """
    from edgekit.runtime.onnx_import import (
        THIRD_PARTY_FAMILIES,
        has_edgekit_spec,
        read_onnx_header,
        spec_from_third_party_onnx,
    )

    header = read_onnx_header(path) if path.suffix.lower() == ".onnx" else None
    single_output = header is not None and len(header.outputs) == 1
    if family is not None and not (family in THIRD_PARTY_FAMILIES and single_output):
        from edgekit.models import ModelConfig, build_model

        class_names = _read_names(names)
        if class_names is None:
            raise InputError(f"{path}: --family needs --names FILE (one class name per line)")
        spec = build_model(ModelConfig(family, len(class_names), _onnx_input_size(path)), class_names).spec
        if header is not None and len(header.inputs) == 1 and len(header.outputs) == len(spec.head.output_names):
            from dataclasses import replace

            # the family gives the layout, the file its tensor names (in the file's output order)
            spec = replace(spec, input_name=header.inputs[0][0],
                           head=replace(spec.head, output_names=tuple(n for n, _ in header.outputs)))
        return spec
    if header is None or has_edgekit_spec(header):
        return None
    return spec_from_third_party_onnx(path, family=family, class_names=_read_names(names),
                                      input_size=_parse_imgsz(imgsz), header=header)


def _onnx_input_size(path: Path) -> tuple[int, int]:
    """(H, W) of a third-party ONNX file's fixed-size image input."""
    from edgekit.runtime.backends.onnxruntime import OnnxRuntimeRunner

    with OnnxRuntimeRunner(path) as runner:
        shape = runner.input_specs()[0].shape
    if len(shape) != 4 or not isinstance(shape[2], int) or not isinstance(shape[3], int):
        raise InputError(f"{path}: image input has shape {shape}; expected a fixed [B, 3, H, W]")
    return int(shape[2]), int(shape[3])


def _check_detect_outputs(source: Source, json_path: str | None, save_dir: str | None) -> None:
    """Refuse, before the work, outputs that would replace an input (`--save-dir` the images' own folder, `--json`
    the video itself) or each other (`--json` where the annotated video goes, or the --save-dir folder itself)."""
    from edgekit.runtime.outputs import output_video_name
    from edgekit.runtime.sources import ImageSource

    def same(a: Path, b: Path) -> bool:
        return os.path.realpath(a) == os.path.realpath(b)

    inputs = (list(source.files) if isinstance(source, ImageSource)
              else [Path(source.origin)] if source.kind == "video" else [])
    drawings: list[Path] = []
    if save_dir:
        drawings = ([Path(save_dir) / name for _, _, name in _output_names(inputs)] if isinstance(source, ImageSource)
                    else [Path(save_dir) / output_video_name(source)])
    if json_path:
        if save_dir and same(Path(json_path), Path(save_dir)):
            raise OutputError(f"--json {json_path} is the --save-dir folder itself; expected a file outside it or "
                              "a file name inside it")
        clash = next((p for p in inputs if same(Path(json_path), p)), None)
        if clash is not None:
            raise OutputError(f"--json {json_path}: would overwrite the input {clash}; expected another file name")
        clash = next((p for p in drawings if same(Path(json_path), p)), None)
        if clash is not None:
            raise OutputError(f"--json {json_path}: --save-dir writes {clash} there; expected another file name")
    for drawing in drawings:
        clash = next((p for p in inputs if same(drawing, p)), None)
        if clash is not None:
            raise OutputError(f"--save-dir {save_dir}: the drawing {drawing} would overwrite the input {clash}; "
                              "expected a folder other than the inputs' own")


def _output_names(files: Sequence[Path]) -> list[tuple[int, str, str]]:
    """Per input image: (COCO image id, file name, drawing name), each unique across ``files``.

    A numeric stem is its own id (000123.jpg -> 123, the COCO convention) the first time it is
    seen; every other image gets the next id above them. File names are the paths relative to the
    inputs' common folder (d1/0.jpg and d2/0.jpg stay apart); drawings use the same relative path
    with .jpg, and `a.png` next to `a.jpg` becomes `a.png.jpg` rather than overwriting it.
    """
    absolute = [p.absolute() for p in files]
    base = Path(os.path.commonpath([p.parent for p in absolute])) if absolute else Path()
    relative = [p.relative_to(base) for p in absolute]
    ids: list[int | None] = [None] * len(files)
    for i, path in enumerate(files):
        if path.stem.isdigit() and int(path.stem) not in ids:
            ids[i] = int(path.stem)
    next_id = max((i for i in ids if i is not None), default=0) + 1
    image_ids: list[int] = []
    drawings: list[str] = []
    for i, rel in enumerate(relative):
        image_id = ids[i]
        if image_id is None:
            image_id, next_id = next_id, next_id + 1
        image_ids.append(image_id)
        name = rel.with_suffix(".jpg").as_posix()
        if name in drawings:
            name = rel.with_name(rel.name + ".jpg").as_posix()
        for n in range(2, len(files) + 2):
            if name not in drawings:
                break
            name = rel.with_name(f"{rel.stem}_{n}.jpg").as_posix()  # the same file given twice
        drawings.append(name)
    return [(image_id, rel.as_posix(), d) for image_id, rel, d in zip(image_ids, relative, drawings)]


def _check_output_path(path: str | None, option: str, folder: bool) -> None:
    """An output a command writes at the end (``--json`` file, ``--save-dir``/``--report`` folder): refuse
    now, before the work, a path that cannot be written. Creates nothing."""
    if path is None:
        return
    target = Path(path)
    if not folder and str(path).endswith(("/", os.sep)):
        raise OutputError(f"{option} {path}: ends in a path separator; expected a file name")
    if target.exists() and target.is_dir() != folder:
        raise OutputError(f"{option} {target}: is a {'file' if folder else 'folder'}; "
                          f"expected a {'folder' if folder else 'file'} path")
    existing = next(p for p in (target, *target.absolute().parents) if p.exists())
    if existing != target and not existing.is_dir():
        raise OutputError(f"{option} {target}: {existing} is a file, so nothing can be written below it")
    if not os.access(existing if existing.is_dir() else existing.parent, os.W_OK | os.X_OK) or \
            (existing == target and not os.access(target, os.W_OK)):
        raise OutputError(f"{option} {target}: not writable ({existing} is read-only for this user)")


# --- commands ------------------------------------------------------------------------------


def _pass_options(function):
    function = click.option("--dump-dir", type=click.Path(file_okay=False), default=None,
                            help="Save the model after each pass here (for debugging a pass).")(function)
    function = click.option("--no-passes", is_flag=True, help="Export the untouched graph (no graph passes).")(function)
    function = click.option("--skip", "skip_passes", multiple=True, metavar="PASS",
                            help="Skip a graph pass by name (repeatable).")(function)
    return function


def _int8_options(function):
    """--calib and friends: how ``convert --precision int8`` calibrates."""
    from edgekit.quant.observers import METHODS

    options = [
        click.option("--calib", type=click.Path(), default=None,
                     help="Calibration image folder (jpg/png/bmp/webp; default: the bundled set). Use 300+ images "
                          "from the deployment domain."),
        click.option("--calib-method", type=click.Choice(METHODS), default=None,
                     help="Range observer (default: the target's)."),
        click.option("--calib-images", type=click.IntRange(1), default=None,
                     help="Use at most N calibration images, evenly spaced (default: the target's)."),
        click.option("--percentile", type=click.FloatRange(0, 100, min_open=True), default=None,
                     help="Percentile for --calib-method percentile (default 99.99)."),
        click.option("--drift-budget", type=click.FloatRange(0), default=None,
                     help="Keep the most sensitive layers in float until the int8 drift is within this many mAP "
                          "points (partial quantisation; off by default)."),
        click.option("--drift-data", type=click.Path(), default=None,
                     help="Labelled dataset (COCO/YOLO) the drift budget is judged on (default: agreement with the "
                          "fp32 model on held-out calibration images)."),
        click.option("--calib-cache", type=click.Path(dir_okay=False), default=None,
                     help="Reuse a calibration.json from an earlier artifact of the same model."),
        click.option("--force-calib", is_flag=True, help="Calibrate even with fewer than 16 images."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _model_options(function):
    """--family/--names: what a file that does not describe itself is (a plain state_dict, a third-party ONNX)."""
    function = click.option("--names", type=click.Path(dir_okay=False), default=None,
                            help="Class names file, one per line (with --family).")(function)
    function = click.option("--family", default=None,
                            help="Model family of a file that does not describe itself: a plain third-party "
                                 "state_dict or ONNX file (e.g. fastestdet, yolox).")(function)
    return function


def _backends_option(function):
    """--backends a,b (validate, bench): parsed and checked against the known runners when the command line is read."""
    return click.option("--backends", default=None, callback=lambda ctx, param, value: _parse_backends(value),
                        help="Comma-separated backends to run (default: every model in the artifact).")(function)


def _threads_option(function):
    return click.option("--threads", type=click.IntRange(0, MAX_THREADS), default=None,
                        help="Backend threads (default: the artifact's, from its target profile; 0 = the backend's "
                             "default). In throughput mode ONNX Runtime and NCNN run one request per core with one "
                             "thread each unless a count is given here.")(function)


@cli.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Artifact folder to write (default: <checkpoint stem>_edgekit next to the checkpoint).")
@click.option("--imgsz", type=int, default=None, help="Square export input size (multiple of 32); default from the checkpoint.")
@click.option("--opset", type=click.IntRange(*OPSET_RANGE), default=17, show_default=True,
              help=f"ONNX opset ({OPSET_RANGE[0]}..{OPSET_RANGE[1]}).")
@click.option("--dynamic-batch", is_flag=True, help="Export with a dynamic batch dimension.")
@click.option("--force", is_flag=True, help="Replace an existing artifact at the output folder.")
@_pass_options
@_model_options
@_import_options
def export(checkpoint: str, out_dir: str | None, imgsz: int | None, opset: int, dynamic_batch: bool, force: bool,
           skip_passes: tuple[str, ...], no_passes: bool, dump_dir: str | None, family: str | None,
           names: str | None) -> None:
    """Export CHECKPOINT to an ONNX artifact folder (model.onnx + edgekit.json)."""
    from edgekit.convert.artifact import claim_destination
    from edgekit.convert.chain import export_artifact

    out = Path(out_dir) if out_dir else Path(checkpoint).with_name(Path(checkpoint).stem + "_edgekit")
    # lock the folder and refuse an existing artifact without --force, before any work; held until the command ends
    _check_output_path(str(out), "-o", folder=True)  # a file on the way: one clear line, not "File exists"
    click.get_current_context().with_resource(claim_destination(out, overwrite=force))
    model = _load_model(checkpoint, family, names, imgsz)
    click.echo(f"exporting {checkpoint} ({model.spec.family}, {model.spec.input_size[0]}x{model.spec.input_size[1]}, "
               f"{model.spec.num_classes} classes) at opset {opset}")
    export_artifact(model, out, opset=opset, dynamic_batch=dynamic_batch, source=str(checkpoint),
                    skip_passes=skip_passes, no_passes=no_passes, dump_dir=dump_dir, progress=click.echo)
    click.echo(f"wrote {out}")


@cli.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--target", "target_name", required=True, help="Target profile name (see `edgekit targets`) or a .toml path.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8"]), default=None,
              help="Precision to build (default: the target's).")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Artifact folder (default: <checkpoint stem>_<target> next to the checkpoint).")
@click.option("--imgsz", type=int, default=None,
              help="Square input size (multiple of 32); default: the size the checkpoint was trained at, else the target's.")
@click.option("--opset", type=click.IntRange(*OPSET_RANGE), default=17, show_default=True,
              help=f"ONNX opset ({OPSET_RANGE[0]}..{OPSET_RANGE[1]}).")
@click.option("--force", is_flag=True, help="Replace an existing artifact at the output folder.")
@click.option("--nms", type=click.Choice(["host", "graph"]), default=None,
              help="Where NMS runs (default: the target's): host = edgekit's NMS after the model; graph = decode and "
                   "NMS appended to the graph, built into the engine (TensorRT targets).")
@_pass_options
@_int8_options
@_model_options
@_import_options
def convert(checkpoint: str, target_name: str, precision: str | None, out_dir: str | None, imgsz: int | None, opset: int,
            force: bool, nms: str | None, skip_passes: tuple[str, ...], no_passes: bool, dump_dir: str | None, calib: str | None,
            calib_method: str | None, calib_images: int | None, percentile: float | None, drift_budget: float | None,
            drift_data: str | None, calib_cache: str | None, force_calib: bool, family: str | None,
            names: str | None) -> None:
    """Convert CHECKPOINT for a deployment target: export, passes, backend build, artifact.

    With --precision int8 the exported graph is calibrated once (--calib folder, default: the bundled
    set) and every backend's int8 model is emitted from that one result."""
    from edgekit.convert.chain import convert as convert_model
    from edgekit.quant.pipeline import Int8Options
    from edgekit.targets import load_target

    int8 = Int8Options(calib_dir=Path(calib) if calib else None, method=calib_method, images=calib_images,
                       percentile=percentile, drift_budget=drift_budget,
                       drift_data=Path(drift_data) if drift_data else None,
                       cache=Path(calib_cache) if calib_cache else None, force=force_calib,
                       eval_paths=(Path(drift_data),) if drift_data else ())
    int8_flags = [flag for flag, value in (("--calib", calib), ("--calib-method", calib_method),
                                           ("--calib-images", calib_images), ("--percentile", percentile),
                                           ("--drift-budget", drift_budget), ("--drift-data", drift_data),
                                           ("--calib-cache", calib_cache), ("--force-calib", force_calib or None))
                  if value is not None]

    target = load_target(target_name)
    if nms is not None:
        from dataclasses import replace as replace_field

        from edgekit.targets import check_nms_placement

        check_nms_placement(nms, target.backend, f"--nms {nms} for target {target.name!r}")
        target = replace_field(target, nms=nms)
    if int8_flags and (precision or target.precision) != "int8":
        raise click.UsageError(f"{', '.join(int8_flags)} only apply with --precision int8")
    # options that only act beside another one were accepted and ignored alone
    method = calib_method or target.calibration.method
    if percentile is not None and calib_cache is None and method != "percentile":
        raise click.UsageError(f"--percentile applies to --calib-method percentile (the method here is {method})")
    if drift_data is not None and drift_budget is None:
        raise click.UsageError("--drift-data is the dataset --drift-budget judges on; give --drift-budget too")
    if drift_data is not None:
        from edgekit.validate.datasets import load_dataset

        load_dataset(drift_data)  # a typo must not cost the export and calibration first
    if Path(checkpoint).suffix.lower() == ".onnx" and _given("opset"):
        raise click.UsageError(f"--opset applies when exporting a checkpoint; {checkpoint} is an ONNX graph with its "
                               "own opset")
    if calib is not None or (calib_images is not None and calib_cache is None):
        # the folder (--calib, else the bundled set when --calib-images asks for a count) is read after the export:
        # check it now as calibration will read it (exists, holds readable images, enough of them unless forced; a
        # cache needs only one, for its checks), decoding a few images
        from edgekit.quant.calibration import default_calibration_dir, find_calibration_images

        find_calibration_images(calib or default_calibration_dir(),
                                limit=min(calib_images or target.calibration.images, CALIB_CHECK_IMAGES),
                                force=force_calib or calib_cache is not None, warn=lambda message: None)
    if calib_cache is not None:
        from edgekit.quant.result import CalibrationResult

        CalibrationResult.load(calib_cache)  # truncated / not JSON / wrong schema / bad numbers: now, not after an export
    out = Path(out_dir) if out_dir else Path(checkpoint).with_name(f"{Path(checkpoint).stem}_{target.name}")
    # lock the folder and refuse an existing artifact without --force, before any work; held until the command ends
    from edgekit.convert.artifact import claim_destination

    _check_output_path(str(out), "-o", folder=True)  # a file on the way: one clear line, not "File exists"
    click.get_current_context().with_resource(claim_destination(out, overwrite=force))
    if Path(checkpoint).suffix.lower() == ".onnx":
        # an ONNX file made elsewhere (or by edgekit): passes + backend builds, checked against ONNX Runtime on it
        from edgekit.convert.chain import convert_onnx
        from edgekit.runtime.artifact import spec_from_onnx

        if not Path(checkpoint).is_file():
            raise InputError(f"{checkpoint}: no such ONNX file")
        spec = _bare_onnx_spec(Path(checkpoint), family, names, imgsz) or spec_from_onnx(checkpoint)
        wanted = _parse_imgsz(imgsz)
        if wanted is not None and tuple(spec.input_size) != wanted:
            # an ONNX graph's input size is its own (an edgekit export, a --family file): --imgsz was ignored
            raise InputError(f"{checkpoint}: its input is {spec.input_size[0]}x{spec.input_size[1]}; --imgsz {imgsz} "
                             "does not match it: export the model at that size first (edgekit export CHECKPOINT "
                             f"--imgsz {imgsz}), or drop --imgsz")
        click.echo(f"converting {checkpoint} ({spec.family}, {spec.head.kind}, {spec.input_size[0]}x{spec.input_size[1]}) "
                   f"for {target.name}: {target.backend} {precision or target.precision} — {target.description}")
        manifest = convert_onnx(checkpoint, spec, target, out, precision=precision, source=str(checkpoint),
                                skip_passes=skip_passes, no_passes=no_passes, dump_dir=dump_dir, int8=int8,
                                progress=click.echo)
    else:
        model = _load_model(checkpoint, family, names, None)
        click.echo(f"converting {checkpoint} ({model.spec.family}) for {target.name}: {target.backend} "
                   f"{precision or target.precision} — {target.description}")
        manifest = convert_model(model, target, out, precision=precision, input_size=_parse_imgsz(imgsz), opset=opset,
                                 source=str(checkpoint),
                                 skip_passes=skip_passes, no_passes=no_passes, dump_dir=dump_dir, int8=int8,
                                 progress=click.echo)
    for entry in manifest.models:
        click.echo(f"  {entry.backend}/{entry.precision}: {entry.file}")
    if "on_device" in manifest.info:
        click.echo(manifest.info["on_device"])
    click.echo(f"wrote {out}")


@cli.command()
@click.argument("model", type=click.Path())
@click.argument("sources", nargs=-1, required=True)
@click.option("--backend", default=None,
              help="torch (the PyTorch reference, for checkpoints) or a runtime backend: onnxruntime, … "
                   "(default: torch for a checkpoint, onnxruntime otherwise).")
@click.option("--precision", default=None, help="Precision of the artifact model to run (fp32, fp16, int8 …).")
@click.option("--conf", type=click.FloatRange(0, 1), default=None, help="Score threshold (default from the spec).")
@click.option("--iou", type=click.FloatRange(0, 1), default=None, help="NMS IoU threshold (default from the spec).")
@_threads_option
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write detections: COCO results for images, JSON Lines (one object per frame) for video and streams.")
@click.option("--save-dir", type=click.Path(file_okay=False), default=None,
              help="Save images with boxes drawn, or the annotated video (same size and fps).")
@click.option("--mode", type=click.Choice(["latency", "throughput"]), default=None,
              help="latency: one frame at a time, one request; throughput: pipelined stages and the backend's optimal "
                   "number of requests (default: throughput for files, latency for cameras and streams).")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=10.0, show_default=True,
              help="Seconds a camera or stream may go without a frame before it counts as stalled.")
@_model_options
@_import_options
def detect(model: str, sources: tuple[str, ...], backend: str | None, precision: str | None, conf: float | None,
           iou: float | None, threads: int | None, json_path: str | None, save_dir: str | None, mode: str | None,
           timeout: float, family: str | None, names: str | None) -> None:
    """Detect objects in SOURCES with MODEL (artifact, ONNX file or checkpoint).

    SOURCES: image files, folders and globs; or one video file, camera (index such as 0, or /dev/videoN),
    or rtsp:// / http:// stream.
    """
    from edgekit.progress import progress_bar
    from edgekit.runtime.outputs import frame_detections
    from edgekit.runtime.sources import ImageSource, open_source

    _check_output_path(json_path, "--json", folder=False)  # before the work, not after it
    _check_output_path(save_dir, "--save-dir", folder=True)
    source = open_source(sources, timeout=timeout)
    try:
        _check_detect_outputs(source, json_path, save_dir)
    except BaseException:
        source.close()
        raise
    mode = mode or ("latency" if source.live else "throughput")
    try:
        detector = _open_detector(model, backend, precision, threads, conf, iou, family, names, mode)
    except BaseException:
        source.close()
        raise
    if not isinstance(source, ImageSource):
        from edgekit.runtime.outputs import detect_video

        detect_video(detector, source, mode, json_path, save_dir, echo=click.echo)
        return
    files = source.files
    class_names = detector.spec.class_names
    results = []
    for frame, detections in progress_bar(frame_detections(detector, source, mode), "detect", total=len(files),
                                          quiet=len(files) < 8):
        path = Path(frame.origin)
        results.append((path, detections))
        summary = ", ".join(f"{class_names[int(label)]} {score:.2f}"
                            for score, label in zip(detections.scores[:8], detections.labels[:8]))
        more = f" (+{len(detections) - 8} more)" if len(detections) > 8 else ""
        click.echo(f"{path}: {len(detections)} detections{': ' + summary if summary else ''}{more}")
    if json_path:
        entries = []
        for (_, detections), (image_id, file_name, _) in zip(results, _output_names(files)):
            entries.extend(detections.to_coco(image_id, file_name=file_name))
        write_text_atomic(json_path, strict_json(entries))
        click.echo(f"wrote {len(entries)} detections to {json_path}")
    if save_dir:
        from edgekit.atomic_io import write_bytes_atomic
        from edgekit.runtime.draw import draw_detections

        out = Path(save_dir)
        out.mkdir(parents=True, exist_ok=True)
        replaced = 0
        for (path, detections), (_, _, drawing) in zip(results, _output_names(files)):
            (out / drawing).parent.mkdir(parents=True, exist_ok=True)
            encoded = io.BytesIO()  # encoded whole first: a full disk leaves no half image
            image = draw_detections(path, detections, class_names).convert("RGB")
            image.save(encoded, format="JPEG", quality=92)  # drawings are always .jpg (see _output_names)
            replaced += (out / drawing).exists()
            write_bytes_atomic(out / drawing, encoded.getvalue())
        # files of an earlier run under the same names are replaced, and the user is told so
        note = f" (replaced {replaced} from an earlier run)" if replaced else ""
        click.echo(f"saved {len(results)} images with boxes to {out}{note}")


@cli.command()
@click.argument("artifact", type=click.Path())
@click.option("--data", "data_path", required=True, type=click.Path(),
              help="Dataset: COCO layout (images + instances JSON) or YOLO layout.")
@_backends_option
@click.option("--reference", "reference_checkpoint", type=click.Path(dir_okay=False), default=None,
              help="The PyTorch checkpoint the artifact came from: Δ and agreement are measured against it.")
@_threads_option
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the results as JSON.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
              help="Write the drift report folder here: report.md, report.json, plots and sample images.")
@click.option("--class-map", "class_map_path", type=click.Path(dir_okay=False), default=None,
              help="Dataset class name -> model class name, for names that differ: a JSON object or "
                   "'dataset name<TAB>model name' lines. Classes are otherwise matched by name.")
@click.option("--split", default=None, help="A YOLO dataset's data.yaml split (train, val, test): only its images "
                                            "(default: every image under images/).")
@_model_options
@_import_options
def validate(artifact: str, data_path: str, backends: list[str] | None, reference_checkpoint: str | None,
             threads: int | None,
             json_path: str | None, report_dir: str | None, class_map_path: str | None, split: str | None,
             family: str | None, names: str | None) -> None:
    """mAP, drift vs the reference, agreement and latency of every backend in ARTIFACT."""
    from edgekit.progress import progress_bar
    from edgekit.runtime.artifact import read_manifest, spec_from_onnx
    from edgekit.validate.datasets import load_class_map, load_dataset, map_to_model_classes
    from edgekit.validate.run import format_table, validate_artifact, validate_checkpoint, validate_onnx_file

    _check_output_path(json_path, "--json", folder=False)  # before the work, not after it
    path = Path(artifact)
    class_map = load_class_map(class_map_path) if class_map_path else None

    def notice(message: str) -> None:
        click.echo(f"warning: {message}", err=True)

    def progress(items: Sequence, name: str):
        return progress_bar(items, f"validate {name}")

    _refuse_unused_validate_options(path, backends, reference_checkpoint, family, names)

    def scored_dataset():  # read after the model, whose errors come first
        scored = load_dataset(data_path, split=split)
        if scored.splits and scored.split is None:
            notice(f"{data_path}: data.yaml names splits ({', '.join(scored.splits)}); all {len(scored)} images "
                   f"under images/ are scored (--split {scored.splits[-1]} scores that split alone)")
        return scored

    if _is_checkpoint(path):
        # a checkpoint (edgekit, Ultralytics, YOLOv5, YOLOX): the PyTorch reference alone, as imported by edgekit
        if report_dir:
            raise InputError("--report needs an artifact or ONNX file to compare with the reference; for a "
                             "checkpoint, convert it first and pass --reference CHECKPOINT")
        report = validate_checkpoint(_load_model(artifact, family, names, None), scored_dataset(),
                                     class_map=class_map, notice=notice, progress=progress)
        dataset = None
    else:
        # a bare ONNX file (third-party or edgekit's own) is validated as one ONNX Runtime model
        onnx_spec = (_bare_onnx_spec(path, family, names) or spec_from_onnx(path)) if path.is_file() else None
        if onnx_spec is None:
            manifest = read_manifest(path)
            spec = manifest.spec
        else:
            manifest, spec = None, onnx_spec
        # dataset classes -> model classes by name, before any work (the report then names model classes)
        dataset = map_to_model_classes(scored_dataset(), spec.class_names, class_map, notice=notice)
        if report_dir:
            from edgekit.validate.report import check_report_dir

            check_report_dir(report_dir)  # an unwritable folder fails now, not after the whole validation
        reference = _load_model(reference_checkpoint, family, names, None) if reference_checkpoint else None
        if onnx_spec is None:
            from edgekit.validate.run import calibration_images_among

            calibrated = calibration_images_among(path, dataset)
            if calibrated:
                notice(f"{calibrated} of the {len(dataset)} images of {data_path} calibrated this artifact's int8 "
                       "models (calibration.json): their int8 scores there are inflated; validate on images it was "
                       "not calibrated on")
        if onnx_spec is not None:
            report = validate_onnx_file(path, onnx_spec, dataset, reference_model=reference, threads=threads or 0,
                                        progress=progress)
        else:
            report = validate_artifact(path, dataset, backends=backends, reference_model=reference, threads=threads,
                                       progress=progress)
    click.echo(format_table(report))
    if json_path:
        write_text_atomic(json_path, strict_json(report.to_dict()))
        click.echo(f"wrote {json_path}")
    if report_dir and dataset is not None:
        from edgekit.validate.report import write_drift_report

        written = write_drift_report(report, dataset, Path(report_dir), manifest=manifest,
                                     conf_threshold=spec.postprocess.conf_threshold if onnx_spec else None)
        click.echo(f"report written to {written['report.md']}")


@cli.command()
@click.argument("artifact", type=click.Path())
@click.option("--image", "image_path", type=click.Path(dir_okay=False), default=None,
              help="Image to run (default: a bundled demo image).")
@_backends_option
@click.option("--runs", type=click.IntRange(1), default=None,
              help="Timed runs per model (default 50); with --mode throughput, interleaved rounds (default 3).")
@click.option("--warmup", type=click.IntRange(0), default=5, show_default=True, help="Untimed warm-up runs.")
@click.option("--mode", type=click.Choice(["latency", "throughput"]), default="latency", show_default=True,
              help="throughput: frames/s of the pipelined Detector.stream on a video, next to the backend's raw "
                   "throughput with the same number of requests in flight.")
@click.option("--video", "video_path", type=click.Path(dir_okay=False), default=None,
              help="Video for --mode throughput (default: a 720p video made from the bundled images).")
@click.option("--workers", type=click.IntRange(0, MAX_THREADS), default=0,
              help="Requests in flight for --mode throughput (0 = the backend's optimal number).")
@_threads_option
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Also write the results as JSON.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for bench.json and bench.png (a bar chart of the stages).")
def bench(artifact: str, image_path: str | None, backends: list[str] | None, runs: int | None, warmup: int,
          threads: int | None, json_path: str | None, report_dir: str | None, mode: str, video_path: str | None,
          workers: int) -> None:
    """Latency of every backend/precision in ARTIFACT: stages vs the raw backend call, in one run
    (--mode throughput: frames/s end to end on a video vs the raw backend throughput)."""
    from dataclasses import asdict

    from edgekit.bench import bench_artifact, format_bench, write_bench_report

    _check_output_path(json_path, "--json", folder=False)  # before the work, not after it
    _check_output_path(report_dir, "--report", folder=True)
    if mode == "throughput":
        if _given("warmup"):
            raise InputError("--warmup applies to --mode latency; --mode throughput warms each model up on the "
                             "video's first frames itself")
        _bench_throughput(artifact, image_path, backends, runs or 3, threads, json_path, report_dir, video_path,
                          workers)
        return
    if video_path is not None or workers:
        raise InputError("--video and --workers apply to --mode throughput")
    runs = runs or 50
    image = image_path or str(_bundled_image())
    results = bench_artifact(artifact, image, backends=backends, runs=runs,
                             warmup=warmup, threads=threads)
    click.echo(f"image: {image}   runs: {runs} (+{warmup} warm-up)   threads: {results[0].threads or 'default'}")
    click.echo(format_bench(results))
    if json_path:
        write_text_atomic(json_path, strict_json([asdict(r) for r in results]))
    if report_dir:
        json_file, png_file = write_bench_report(results, report_dir)
        click.echo(f"wrote {json_file} and {png_file}")


def _bench_throughput(artifact: str, image_path: str | None, backends: list[str] | None, rounds: int,
                      threads: int | None,
                      json_path: str | None, report_dir: str | None, video_path: str | None, workers: int) -> None:
    import tempfile
    from dataclasses import asdict

    from edgekit.bench import bench_throughput, format_throughput, write_test_video

    if report_dir or image_path:
        raise InputError("--report and --image apply to --mode latency; --mode throughput runs a --video")
    if video_path is not None and not Path(video_path).is_file():
        raise InputError(f"--video {video_path}: no such video file")
    from edgekit.runtime.sources import VIDEO_SUFFIXES

    if video_path is not None and Path(video_path).suffix.lower() not in VIDEO_SUFFIXES:
        # FFmpeg reads a still image as a one-frame video: frames/s from one frame, with exit 0
        raise InputError(f"--video {video_path}: expected a video file ({', '.join(sorted(VIDEO_SUFFIXES))})")
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as folder:
        if video_path is None:
            images = _bundled_images()
            video_path = str(write_test_video(Path(folder) / "bench_720p.mp4", images, frames=120))
            click.echo(f"video: 120 frames 1280x720 made from {len(images)} bundled images")
        results = bench_throughput(artifact, video_path, backends=backends, rounds=rounds,
                                   threads=threads, workers=workers)
    click.echo(f"video: {video_path if Path(video_path).exists() else 'generated'}   rounds: {rounds} (interleaved)")
    click.echo(format_throughput(results))
    if json_path:
        write_text_atomic(json_path, strict_json([{**asdict(r), "ratio": r.ratio} for r in results]))


def _bundled_images() -> list[Path]:
    # package data next to this file (importlib.resources.files is Python 3.9+; the runtime keeps to 3.8)
    return sorted((Path(__file__).resolve().parent / "zoo" / "images").glob("*.jpg"))


def _bundled_image() -> Path:
    images = _bundled_images()
    if not images:
        raise InputError("no bundled images in edgekit/zoo/images; pass --image FILE")
    return images[0]


@cli.command()
def targets() -> None:
    """List the deployment target profiles."""
    from edgekit.runtime.backends import get_runner_class
    from edgekit.targets import load_target, target_names

    click.echo(f"{'target':<18} {'backend':<12} {'precision':<9} {'input':<8} here  description")
    for name in target_names():
        target = load_target(name)
        size = f"{target.input_size[0]}" if target.input_size else "ckpt"
        try:
            runs_here = "yes" if get_runner_class(target.backend).is_available() else "no"
        except EdgekitError:
            runs_here = "no"
        device = target.backend_options.get("device")
        if runs_here == "yes" and target.backend == "openvino" and device:
            import openvino as ov

            from edgekit.runtime.backends.openvino import device_present

            # the library imports, but an iGPU target's models need the GPU (convert still builds them)
            runs_here = "yes" if device_present(str(device), ov.Core().available_devices) else "no"
        click.echo(f"{name:<18} {target.backend:<12} {target.precision:<9} {size:<8} {runs_here:<5} {target.description}")


@cli.command()
@click.argument("artifact", type=click.Path())
@_model_options
@_import_options
def inspect(artifact: str, family: str | None, names: str | None) -> None:
    """Show what edgekit reads from an artifact folder, an ONNX file or a checkpoint (the spec every stage uses),
    and verify an artifact's file hashes. --family/--names as for detect, for files that do not describe themselves."""
    from edgekit.runtime.artifact import READY, read_manifest, sha256_file, spec_from_onnx

    path = Path(artifact)
    if not path.exists():
        raise InputError(f"{path}: no such checkpoint, ONNX file or artifact folder")
    if _is_checkpoint(path):
        model = _load_model(artifact, family, names, None)
        _echo_spec(model.spec)
        size_source = "the checkpoint" if getattr(model, "input_size_from_checkpoint", True) else "edgekit's default"
        click.echo(f"checkpoint: {type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters; "
                   f"input size from {size_source}")
        return
    if path.is_file():
        spec = _bare_onnx_spec(path, family, names)
        if spec is None:  # edgekit's own export: the embedded spec
            spec = spec_from_onnx(path)
        _echo_spec(spec)
        return
    if family is not None or names is not None:
        raise InputError(f"{path}: --family/--names describe a checkpoint or a third-party ONNX file; an artifact "
                         "carries its own spec")
    manifest = read_manifest(path)
    _echo_spec(manifest.spec)
    click.echo("models:")
    for entry in manifest.models:
        status = entry.status(path)
        waiting = "" if status == READY else f"  ({status}: {entry.build_hint()})"
        graph_nms = entry.graph_nms
        nms = f"  (NMS in the graph: {graph_nms.describe()})" if graph_nms is not None else ""
        click.echo(f"  {entry.backend:<12} {entry.precision:<6} {entry.file}{nms}{waiting}")
    if manifest.runtime:
        click.echo(f"runtime: {json.dumps(manifest.runtime, sort_keys=True)}  (the device's defaults)")
    click.echo("files:")
    bad = []
    for name, digest in manifest.files.items():
        file_path = path / name
        status = "missing" if not file_path.is_file() else ("ok" if sha256_file(file_path) == digest else "MODIFIED")
        size = file_path.stat().st_size if file_path.is_file() else 0
        click.echo(f"  {name:<32} {size / 1e6:8.2f} MB  sha256 {digest[:16]}…  {status}")
        if status != "ok":
            bad.append(name)
    for key, value in manifest.info.items():
        click.echo(f"{key}: {json.dumps(value, sort_keys=True)}")
    if bad:
        raise EdgekitError(f"{path}: {len(bad)} file(s) do not match the manifest: {', '.join(bad)}")


@cli.command("build-engine")
@click.argument("artifact", type=click.Path())
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="which TensorRT entry of the artifact (default: the first)")
def build_engine_command(artifact: str, precision: str | None) -> None:
    """On the device: build the artifact's TensorRT engine for the installed TensorRT (8.5 to 11.x) through its
    Python API; writes the engine and its record (TensorRT version, GPU, source ONNX sha256) into the artifact."""
    from edgekit.convert.tensorrt_engine import build_engine

    build_engine(Path(artifact), precision, progress=click.echo)


def _echo_spec(spec) -> None:
    h, w = spec.input_size
    click.echo(f"family: {spec.family}   input: {spec.input_name} [B, 3, {h}, {w}] {spec.color_order}, "
               f"{spec.resize.mode}   head: {spec.head.kind} -> {', '.join(spec.head.output_names)}")
    names = ", ".join(spec.class_names[:10]) + (f", … ({spec.num_classes} in all)" if spec.num_classes > 10 else "")
    click.echo(f"classes: {names}")
    pp = spec.postprocess
    click.echo(f"postprocess: conf {pp.conf_threshold}, iou {pp.iou_threshold}, nms {'on' if pp.nms else 'off'}"
               f"{' (class-agnostic)' if pp.class_agnostic else ''}, max {pp.max_detections}")


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
