"""NCNN build: TorchScript (or ONNX) -> pnnx -> ``model.ncnn.param`` + ``model.ncnn.bin``.

Route. With the PyTorch model at hand the model is traced (``torch.jit.trace``) and the TorchScript
file is converted by pnnx — pnnx's primary input and the one that reproduces PyTorch most closely.
Without it (a third-party ONNX file) pnnx converts the ONNX file. pnnx runs as its own executable
in a temporary folder (it writes half a dozen side files: pnnx param/bin, Python scripts, an ONNX
copy); only the ncnn ``.param`` / ``.bin`` are kept. The ``pnnx.convert`` Python helper is not used
because it imports and executes the Python file pnnx generates.

Precisions. ``fp32`` stores fp32 weights (pnnx ``fp16=0``; pnnx's own default, ``fp16=1``, would
silently round the weights to fp16) and runs with every fp16 switch off. ``fp16`` stores fp16
weights (pnnx ``fp16=1``: half the download to the board) as separate files ``model_fp16.ncnn.*`` and
runs with ncnn's fp16 storage / packing / arithmetic on. On CPUs without fp16 arithmetic (most
x86) ncnn widens the weights back to fp32 when loading them, so the fp16 variant still costs the
weight rounding but computes in fp32 there; on ARMv8.2+ boards it computes in fp16.

Export-friendly form. What ncnn cannot express is rewritten before the build, by the pass pipeline's
``ncnn`` legalisation stage (``edgekit.convert.passes.pipeline.LEGALIZATION``: a Focus stem's strided
slices -> ``pixel_unshuffle``, pass ``ncnn_focus``), checked and recorded like every pass; the builder
traces the model it is given. Anything else pnnx cannot express raises ConversionError naming the
operator.

Blob names. pnnx names the input ``in0`` and the outputs ``out0``, ``out1`` … in the order the model
returns them. The builder does not rely on that: it runs the converted network and ONNX Runtime on
the same input and assigns each spec output the ncnn blob whose values match it (the positional
blob first), records the ONNX output shapes (NCNN drops the batch axis and squeezes), and fails
with ConversionError when an output has no match within the precision's tolerance.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from edgekit.convert.builders import BackendBuilder, BuildSource, FileSink, ProfileOption
from edgekit.errors import ConversionError, EdgekitError, first_line
from edgekit.quant.placement import SYMMETRIC_INT8
from edgekit.runtime.artifact import ModelEntry
from edgekit.runtime.backends.ncnn import NcnnRunner, read_param_io
from edgekit.runtime.backends.onnxruntime import OnnxRuntimeRunner
from edgekit.spec import ModelSpec
from edgekit.tolerances import NCNN_BLOB_MATCH
from edgekit.validate.compare import tensor_error

#: max |ncnn - onnxruntime| / max |onnxruntime| per output accepted at build time, to tell which blob is
#: which output and catch a wrong layout (why fp16 is 5e-2, not 1e-2: edgekit.tolerances.NCNN_BLOB_MATCH)
TOLERANCES = NCNN_BLOB_MATCH
#: pnnx on a large model takes tens of seconds; anything near this is a hung converter
PNNX_TIMEOUT_SECONDS = 900
_PNNX_COMPLAINTS = re.compile(r"not supported|not exists|unsupported|ignore |error|failed", re.IGNORECASE)


class NcnnBuilder(BackendBuilder):
    """Writes ``model.ncnn.param`` / ``model.ncnn.bin`` (fp32) or ``model_fp16.ncnn.*`` (fp16).

    ``options`` (the target profile's ``[backend_options]``, see ``profile_options``): ``use_vulkan``
    (recorded for the runner). The verification run here is on the CPU.
    """

    backend = "ncnn"
    precisions = ("fp32", "fp16", "int8")
    # ncnn int8 convolutions: symmetric int8 input, per-channel int8 weights, float output, as that placement
    qdq_placement = SYMMETRIC_INT8
    tools = ("ncnn", "pnnx")
    profile_options: ClassVar[Mapping[str, ProfileOption]] = {
        "use_vulkan": ProfileOption(bool, "run on the GPU through Vulkan (ncnn's use_vulkan_compute); where the "
                                          "installed ncnn finds no Vulkan GPU the runner notes it and uses the CPU"),
    }

    def build(self, source: BuildSource, precision: str, sink: FileSink, options: Mapping[str, Any]) -> ModelEntry:
        self.check_precision(precision)
        if precision == "int8":
            return self._build_int8(source, sink, options)
        _require_converter()
        spec = source.spec
        height, width = spec.input_size
        input_shape = [1, 3, height, width]
        fp16 = precision == "fp16"
        stem = "model_fp16" if fp16 else "model"
        with tempfile.TemporaryDirectory(prefix="edgekit-pnnx-") as work_dir:
            work = Path(work_dir)
            if source.torch_model is not None:
                route = "torchscript"
                model_file = trace_for_pnnx(source.torch_model, input_shape, work / "model.pt")
            else:
                route = "onnx"
                model_file = work / "model.onnx"
                shutil.copyfile(source.onnx_path, model_file)
            param, weights = run_pnnx(model_file, input_shape, fp16=fp16, work_dir=work)
            inputs, outputs = read_param_io(param)
            if len(inputs) != 1:
                raise ConversionError(f"ncnn: the converted network has inputs {inputs}; an image detector needs "
                                      "exactly one")
            blobs, shapes, parity = match_outputs(source.onnx_path, spec, param, weights, inputs[0], outputs,
                                                  precision=precision, threads=int(options.get("threads", 0)))
            param_name, bin_name = f"{stem}.ncnn.param", f"{stem}.ncnn.bin"
            shutil.copyfile(param, sink(param_name))
            shutil.copyfile(weights, sink(bin_name))
        import pnnx

        entry_options: dict[str, Any] = {
            "bin_file": bin_name,
            "companion_files": [bin_name],
            "input_name": spec.input_name,
            "input_blob": inputs[0],
            "input_shape": input_shape,
            "output_blobs": blobs,
            "output_shapes": shapes,
            "use_fp16": fp16,
        }
        if options.get("use_vulkan"):
            entry_options["use_vulkan"] = True
        build = {"converter": {"tool": "pnnx", "version": getattr(pnnx, "__version__", "unknown"), "route": route,
                               "fp16_weights": fp16},
                 "parity": {"reference": "onnxruntime/fp32", **parity}}
        return ModelEntry(self.backend, precision, param_name, entry_options, build)


    def _build_int8(self, source: BuildSource, sink: FileSink, options: Mapping[str, Any]) -> ModelEntry:
        """The fp32 ncnn model (built in a scratch folder), rewritten in ncnn's int8 format from the
        calibration result (``edgekit.quant.ncnn_int8``): ``model_int8.ncnn.param`` / ``.bin``."""
        from edgekit.quant.ncnn_int8 import emit_ncnn_int8

        calibration = source.require_calibration(self.backend)
        with tempfile.TemporaryDirectory(prefix="edgekit-ncnn-int8-") as scratch:
            fp32 = self.build(source, "fp32", lambda name: Path(scratch) / name, options)
            param_name, bin_name = "model_int8.ncnn.param", "model_int8.ncnn.bin"
            summary = emit_ncnn_int8(Path(scratch) / fp32.file, Path(scratch) / fp32.options["bin_file"],
                                     source.onnx_path, calibration, sink(param_name), sink(bin_name))
        entry_options = dict(fp32.options)
        entry_options.update(bin_file=bin_name, companion_files=[bin_name], use_int8=True)
        # parity was measured on the fp32 model; the chain measures the int8 one
        build = {"converter": fp32.build["converter"],
                 "int8": {"layers": len(summary["int8"]), "float_layers": summary["float"]}}
        return ModelEntry(self.backend, "int8", param_name, entry_options, build)


# --- conversion steps -------------------------------------------------------------------------


def _require_converter() -> None:
    import importlib.util

    NcnnRunner.require()
    if importlib.util.find_spec("pnnx") is None:
        raise ConversionError("the ncnn build needs the pnnx converter; install it with: pip install 'edgekit[ncnn]'")


def trace_for_pnnx(model: Any, input_shape: Sequence[int], out_path: Path) -> Path:
    """Trace ``model`` (legalised for ncnn by the pass pipeline) to TorchScript at ``out_path``."""
    example = torch.zeros(*input_shape, dtype=torch.float32)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, example, check_trace=False)
            traced.save(str(out_path))
    except Exception as exc:  # tracing failures come from arbitrary user model code
        raise ConversionError(f"ncnn: torch.jit.trace failed on a {list(input_shape)} input "
                              f"({type(exc).__name__}: {first_line(exc, 200, empty='')})") from None
    return out_path


def run_pnnx(model_file: Path, input_shape: Sequence[int], fp16: bool, work_dir: Path) -> tuple[Path, Path]:
    """Run the pnnx executable on a TorchScript ``.pt`` or ``.onnx`` file inside ``work_dir``.

    Returns the ncnn (param, bin) paths. Raises ConversionError when pnnx fails or leaves layers
    ncnn does not have (pnnx still exits 0 then, writing e.g. a ``Tensor.slice`` layer that
    ncnn cannot load), quoting pnnx's own complaint.
    """
    import pnnx

    param, weights = work_dir / "model.ncnn.param", work_dir / "model.ncnn.bin"
    shape = "[" + ",".join(str(int(d)) for d in input_shape) + "]f32"
    command = [pnnx.EXEC_PATH, model_file.name, f"inputshape={shape}", f"fp16={1 if fp16 else 0}",
               f"ncnnparam={param.name}", f"ncnnbin={weights.name}"]
    try:
        proc = subprocess.run(command, cwd=work_dir, capture_output=True, text=True, errors="replace",
                              timeout=PNNX_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise ConversionError(f"ncnn: pnnx did not finish within {PNNX_TIMEOUT_SECONDS} s") from None
    log = (proc.stdout or "") + "\n" + (proc.stderr or "")
    complaints = _complaints(log)
    if proc.returncode != 0 or not param.is_file() or not weights.is_file():
        detail = complaints[0] if complaints else _last_line(log)
        raise ConversionError(f"ncnn: pnnx failed on {model_file.name} (exit code {proc.returncode}: {detail})")
    unsupported = unknown_layers(param)
    if unsupported:
        listed = ", ".join(f"{layer_type} ({name})" for layer_type, name in unsupported[:4])
        more = f" and {len(unsupported) - 4} more" if len(unsupported) > 4 else ""
        said = f"; pnnx says: {complaints[0]!r}" if complaints else ""
        raise ConversionError(f"ncnn: operator(s) not supported by ncnn: {listed}{more}{said}")
    return param, weights


def unknown_layers(param: Path) -> list[tuple[str, str]]:
    """(layer type, layer name) of every layer in a .param that this ncnn build does not know."""
    import ncnn

    unknown = []
    for line in param.read_text(encoding="utf-8", errors="replace").splitlines()[2:]:
        fields = line.split()
        if len(fields) >= 2 and ncnn.layer_to_index(fields[0]) < 0:
            unknown.append((fields[0], fields[1]))
    return unknown


def match_outputs(onnx_path: Path, spec: ModelSpec, param: Path, weights: Path, input_blob: str,
                  output_blobs: Sequence[str], precision: str, threads: int = 0,
                  seed: int = 0) -> tuple[dict[str, str], dict[str, list[int]], dict[str, Any]]:
    """Assign every spec output an ncnn blob by running both networks on the same input.

    Returns (spec name -> blob, spec name -> ONNX shape, tensor error of the matched outputs).
    A third-party ONNX file whose output names differ from the spec's is read in its own output order.
    The positional blob (pnnx's ``out{i}`` for output ``i``) is taken when it matches; otherwise
    the best-matching unused blob with the same element count; with none within
    ``TOLERANCES[precision]`` the build fails.
    """
    tolerance = TOLERANCES[precision]
    feed = _image_like_input(spec, seed)
    with OnnxRuntimeRunner(onnx_path, graph_optimization=False) as reference_runner:
        onnx_inputs = reference_runner.input_specs()
        if len(onnx_inputs) != 1:
            raise ConversionError(f"ncnn: {onnx_path.name} has inputs {[i.name for i in onnx_inputs]}; "
                                  "expected one image input")
        raw_reference = reference_runner.infer({onnx_inputs[0].name: feed})
    missing = [name for name in spec.head.output_names if name not in raw_reference]
    if not missing:
        reference = [raw_reference[name] for name in spec.head.output_names]
    elif len(raw_reference) == len(spec.head.output_names):
        # a third-party file with its own tensor names: its outputs in file order are the spec's
        reference = list(raw_reference.values())
    else:
        raise ConversionError(f"ncnn: {onnx_path.name} has outputs {list(raw_reference)}; the spec expects "
                              f"{list(spec.head.output_names)}")

    ordered = pnnx_output_order(output_blobs)
    runner = NcnnRunner(param, weights, input_name=spec.input_name, input_blob=input_blob,
                        input_shape=feed.shape, output_blobs={blob: blob for blob in ordered},
                        threads=threads, use_fp16=precision == "fp16")
    try:
        with runner:
            raw = runner.infer({spec.input_name: feed})
    except EdgekitError as exc:
        raise ConversionError(f"ncnn: the converted network does not run ({exc})") from None

    chosen: dict[str, str] = {}
    shapes: dict[str, list[int]] = {}
    for index, (name, ref) in enumerate(zip(spec.head.output_names, reference)):
        errors = {blob: _relative_error(ref, raw[blob]) for blob in ordered
                  if blob not in chosen.values() and raw[blob].size == ref.size}
        positional = ordered[index] if index < len(ordered) else None
        if positional in errors and errors[positional] <= tolerance:
            best = positional
        elif errors:
            best = min(errors, key=errors.__getitem__)
        else:
            found = ", ".join(f"{b} {list(raw[b].shape[1:])}" for b in ordered)
            raise ConversionError(f"ncnn: no converted output has the size of '{name}' {list(ref.shape)}; "
                                  f"ncnn produced {found}")
        if errors[best] > tolerance:
            raise ConversionError(f"ncnn: output '{name}' {list(ref.shape)} differs from ONNX Runtime by "
                                  f"{errors[best]:.2e} (relative; best blob '{best}'), above the {precision} "
                                  f"tolerance {tolerance:.0e}: the converted layout or an operator is wrong")
        chosen[name] = best
        shapes[name] = [int(d) for d in ref.shape]
    candidate = [raw[chosen[name]].reshape(ref.shape) for name, ref in zip(spec.head.output_names, reference)]
    return chosen, shapes, tensor_error(reference, candidate, spec.head.output_names).to_dict()


# --- helpers ------------------------------------------------------------------------------------


def _image_like_input(spec: ModelSpec, seed: int) -> np.ndarray:
    """A [1,3,H,W] float32 tensor from random uint8 pixels through the spec's normalisation."""
    height, width = spec.input_size
    pixels = np.random.default_rng(seed).integers(0, 256, size=(1, 3, height, width)).astype(np.float32)
    norm = spec.normalization
    mean = np.asarray(norm.mean, np.float32)[:, None, None]
    std = np.asarray(norm.std, np.float32)[:, None, None]
    return ((pixels * np.float32(norm.scale) - mean) / std).astype(np.float32)


def _relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    return tensor_error([reference], [candidate.reshape(reference.shape)]).max_rel


def pnnx_output_order(blobs: Sequence[str]) -> list[str]:
    """pnnx's ``out0, out1, … out10`` in numeric order first, any other names after, as produced."""
    def key(item: tuple[int, str]) -> tuple[int, int]:
        position, blob = item
        match = re.fullmatch(r"out(\d+)", blob)
        return (0, int(match.group(1))) if match else (1, position)

    return [blob for _, blob in sorted(enumerate(blobs), key=key)]


def _complaints(log: str) -> list[str]:
    return [line.strip() for line in log.splitlines() if _PNNX_COMPLAINTS.search(line) and line.strip()]


def _last_line(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"
