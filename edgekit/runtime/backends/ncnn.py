"""NCNN runner: runs a ``.param`` + ``.bin`` pair with the ncnn Python binding (CPU; Vulkan GPU with ``use_vulkan``).

NCNN knows blobs by the names its converter gave them (pnnx: ``in0``, ``out0``, ``out1`` …; older
onnx2ncnn conversions keep ONNX tensor names such as ``input.1`` / ``758``), and an ncnn Mat has no
batch axis: a 4-D ``[1, C, H, W]`` tensor is a 3-D ``C x H x W`` Mat and a ``[1, P, 4]`` tensor a
2-D ``P x 4`` Mat. This runner therefore

- exposes the model under the *spec's* names (one input ``[B, 3, H, W]``, the head's outputs) and
  maps them to ncnn blob names recorded at conversion time (``ModelEntry.options``);
- feeds the batch one image at a time (NCNN runs batch 1) and stacks the results;
- reshapes every output back to the ONNX shape recorded at conversion time. Only a reshape is ever
  needed because pnnx keeps the ONNX element order (the builder checks this against ONNX Runtime
  before it writes the artifact).

Manifest options (all written by ``edgekit.convert.builders.ncnn``)::

    {"bin_file": "model.ncnn.bin",                  # next to the .param file
     "input_name": "images", "input_blob": "in0", "input_shape": [1, 3, H, W],
     "output_blobs": {"p3": "out0", "p4": "out1", "p5": "out2"},   # spec order
     "output_shapes": {"p3": [1, 67, 20, 20], …},   # the ONNX shapes (batch 1)
     "use_fp16": false,                             # fp16 storage + arithmetic switches
     "use_int8": false,                             # int8 inference (int8 models only)
     "use_vulkan": false,                           # run on a Vulkan GPU (target profile's use_vulkan)
     "companion_files": ["model.ncnn.bin"]}         # hashed by Detector.load

The ncnn binding does not raise on a bad file: ``load_param`` / ``load_model`` return -1 and print
the reason on the C stderr. The runner checks the return codes and puts that reason into a
one-line ModelFileError.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekit.errors import InputError, ModelFileError, OutputError
from edgekit.runtime.backends.base import Runner, TensorSpec

if TYPE_CHECKING:
    import ncnn
from edgekit.runtime.ncnn_format import PARAM_MAGIC, read_param_io

__all__ = ["NcnnRunner", "read_param_io"]  # read_param_io: the format's, re-exported for the builder


class NcnnRunner(Runner):
    """Runs an NCNN model (``model.ncnn.param`` + ``model.ncnn.bin``) on the CPU.

    param_path: the ``.param`` text file; bin_path: its weights (default: same name with ``.bin``).
    input_name / output_blobs: the names the caller uses (the spec's input name; spec output name ->
    ncnn blob name, in spec order). input_blob: the ncnn blob the image goes into.
    input_shape: ``[1, 3, H, W]`` the model was converted for, or None when unknown (then any H, W is
    accepted and NCNN decides). output_shapes: spec output name -> ONNX shape with batch 1; an output
    without one comes back as ``[B, *mat_shape]`` (right for the usual ``[B, C, H, W]`` heads).
    threads: CPU threads (0 = ncnn's default, one per big core). use_fp16: fp16 storage, packing and
    arithmetic where the CPU supports them (otherwise ncnn silently computes in fp32). use_int8: run
    the int8 layers of an int8 model (``model_int8.ncnn.*``) in int8.

    Threads: one runner may serve many threads. The loaded ``Net`` is shared and read-only;
    ``Net.create_extractor`` is thread-safe, and each image of each call gets a new Extractor
    (ncnn's documented pattern: an Extractor is used for one input and thrown away), which holds
    that inference's blobs.
    """

    name = "ncnn"
    required_modules = ("ncnn",)
    pip_extra = "ncnn"

    def __init__(self, param_path: str | Path, bin_path: str | Path | None = None, *,
                 input_name: str = "images", input_blob: str = "in0",
                 input_shape: Sequence[int] | None = None,
                 output_blobs: Mapping[str, str] | None = None,
                 output_shapes: Mapping[str, Sequence[int]] | None = None,
                 threads: int = 0, use_fp16: bool = False, use_int8: bool = False, use_vulkan: bool = False) -> None:
        super().__init__(param_path)
        self.bin_path = Path(bin_path) if bin_path is not None else self.model_path.with_suffix(".bin")
        self.input_name = str(input_name)
        self.input_blob = str(input_blob)
        self.input_shape = _check_input_shape(input_shape, self.model_path)
        if not output_blobs:
            raise ModelFileError(f"{self.model_path}: no output blobs given; expected a mapping of output name -> "
                                 "ncnn blob name (e.g. {'output': 'out0'})")
        self.output_blobs = {str(k): str(v) for k, v in output_blobs.items()}
        self.output_shapes = {str(k): tuple(int(d) for d in v) for k, v in (output_shapes or {}).items()}
        unknown = sorted(set(self.output_shapes) - set(self.output_blobs))
        if unknown:
            raise ModelFileError(f"{self.model_path}: output_shapes names {unknown} that are not in output_blobs "
                                 f"{list(self.output_blobs)}")
        self.threads = int(threads)
        self.use_fp16 = bool(use_fp16)
        self.use_int8 = bool(use_int8)
        self.use_vulkan = bool(use_vulkan)
        #: whether this run uses Vulkan (set at activation: use_vulkan and a Vulkan GPU found)
        self.vulkan_active = False
        self._net: ncnn.Net | None = None

    @classmethod
    def from_artifact(cls, model_path: Path, options: Mapping[str, object], threads: int = 0) -> NcnnRunner:
        """Build the runner from a manifest entry's options (see the module docstring)."""
        missing = [key for key in ("input_name", "input_blob", "output_blobs") if key not in options]
        if missing:
            raise ModelFileError(f"{model_path}: the manifest's ncnn options lack {missing}; "
                                 "re-convert the model with edgekit (ncnn blob names are recorded at conversion)")
        output_blobs = options["output_blobs"]
        output_shapes = options.get("output_shapes") or {}
        if not isinstance(output_blobs, Mapping) or not isinstance(output_shapes, Mapping):
            raise ModelFileError(f"{model_path}: manifest ncnn options 'output_blobs' and 'output_shapes' must be "
                                 "objects keyed by output name")
        bin_file = options.get("bin_file")
        bin_path = model_path.with_name(str(bin_file)) if bin_file else None
        return cls(model_path, bin_path, input_name=str(options["input_name"]), input_blob=str(options["input_blob"]),
                   input_shape=options.get("input_shape"), output_blobs=output_blobs,  # type: ignore[arg-type]
                   output_shapes=output_shapes, threads=threads,
                   use_fp16=bool(options.get("use_fp16", False)), use_int8=bool(options.get("use_int8", False)),
                   use_vulkan=bool(options.get("use_vulkan", False)))

    # --- lifecycle -----------------------------------------------------------------------

    def _activate(self) -> None:
        import ncnn

        for path, what in ((self.model_path, ".param (network structure)"), (self.bin_path, ".bin (weights)")):
            if not path.is_file():
                raise ModelFileError(f"{path}: ncnn {what} file not found")
        net = ncnn.Net()
        # Options must be set before load_param: layers pick their kernels when they are created.
        opt = net.opt
        self.vulkan_active = self.use_vulkan and _vulkan_gpu_or_notice(ncnn, self.model_path)
        opt.use_vulkan_compute = self.vulkan_active
        # The binding turns int8 inference on by default. int8 layers (written by edgekit.quant.ncnn_int8)
        # need it on: with it off ncnn 1.0.20261020 loads an int8 model without complaint and returns
        # NaN. fp32 models keep it off so that no layer is ever quantised behind the manifest's back.
        opt.use_int8_inference = self.use_int8
        opt.use_fp16_storage = self.use_fp16
        opt.use_fp16_packed = self.use_fp16
        opt.use_fp16_arithmetic = self.use_fp16
        opt.use_bf16_storage = False
        if self.threads > 0:
            opt.num_threads = self.threads
        with _captured_stderr() as messages:
            code = net.load_param(str(self.model_path))
        if code != 0:
            raise ModelFileError(f"{self.model_path}: ncnn cannot parse this .param file "
                                 f"(load_param returned {code}{_reason(messages)}); expected a text .param "
                                 f"starting with the magic {PARAM_MAGIC}")
        with _captured_stderr() as messages:
            code = net.load_model(str(self.bin_path))
        if code != 0:
            raise ModelFileError(f"{self.bin_path}: ncnn cannot load the weights for {self.model_path.name} "
                                 f"(load_model returned {code}{_reason(messages)}); the .bin is truncated or "
                                 "belongs to another .param")
        blob_names = {blob.name for blob in net.blobs()}
        wanted = [self.input_blob, *self.output_blobs.values()]
        absent = [name for name in wanted if name not in blob_names]
        if absent:
            raise ModelFileError(f"{self.model_path}: blob(s) {absent} not found in the network; its inputs are "
                                 f"{list(net.input_names())} and its outputs {list(net.output_names())}")
        self._net = net

    def _deactivate(self) -> None:
        if self._net is not None:
            self._net.clear()
        self._net = None

    # --- interface -----------------------------------------------------------------------

    def input_specs(self) -> list[TensorSpec]:
        """One float32 input ``[B, 3, H, W]``; B is free because batches are run one image at a time."""
        if self.input_shape is None:
            shape: tuple[int | None, ...] = (None, 3, None, None)
        else:
            shape = (None, *self.input_shape[1:])
        return [TensorSpec(self.input_name, np.dtype(np.float32), shape)]

    def output_names(self) -> list[str]:
        return list(self.output_blobs)

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import ncnn

        batch = feeds[self.input_name]
        if batch.shape[0] < 1:
            raise InputError(f"input '{self.input_name}': empty batch (shape {tuple(batch.shape)})")
        per_image: dict[str, list[np.ndarray]] = {name: [] for name in self.output_blobs}
        net = self._live(self._net)
        for image in batch:
            # ncnn.Mat wraps the numpy buffer without copying, and the extractor does not keep it
            # alive: `chw` and `mat` must stay referenced until every output has been extracted.
            chw = np.ascontiguousarray(image, dtype=np.float32)
            mat = ncnn.Mat(chw)
            extractor = net.create_extractor()
            try:
                code = extractor.input(self.input_blob, mat)
                if code != 0:
                    raise OutputError(f"{self.model_path.name}: ncnn rejected the input blob '{self.input_blob}' "
                                      f"(code {code})")
                for name, blob in self.output_blobs.items():
                    code, out = extractor.extract(blob)
                    if code != 0:
                        raise OutputError(f"{self.model_path.name}: ncnn failed to compute blob '{blob}' for output "
                                          f"'{name}' (code {code}) on an input of shape {tuple(chw.shape)}")
                    # copy: the Mat's memory belongs to ncnn's allocator
                    per_image[name].append(self._restore_shape(name, np.array(out.numpy(), dtype=np.float32)))
            finally:
                extractor.clear()
            del mat, chw
        return {name: np.stack(arrays) for name, arrays in per_image.items()}

    def _restore_shape(self, name: str, array: np.ndarray) -> np.ndarray:
        """One image's ncnn output (no batch axis, possibly squeezed) -> the ONNX shape without its batch axis."""
        expected = self.output_shapes.get(name)
        if expected is None:
            return array
        item_shape = expected[1:]
        if array.size != int(np.prod(item_shape)):
            raise OutputError(f"{self.model_path.name}: ncnn output '{name}' (blob '{self.output_blobs[name]}') has "
                              f"shape {tuple(array.shape)}, which cannot be {list(expected)} recorded at conversion; "
                              "was the model converted for another input size?")
        return array.reshape(item_shape)


def _check_input_shape(shape: Sequence[int] | None, path: Path) -> tuple[int, ...] | None:
    if shape is None:
        return None
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise ModelFileError(f"{path}: input_shape must be [1, 3, H, W], got {shape!r}") from None
    if len(dims) != 4 or dims[1] != 3 or min(dims) < 1:
        raise ModelFileError(f"{path}: input_shape must be [1, 3, H, W] with positive sizes, got {list(dims)}")
    return dims


def _reason(messages: list[str]) -> str:
    return f": {messages[0][:200]}" if messages else ""


def _vulkan_gpu_or_notice(ncnn: object, model_path: Path) -> bool:
    """True when the installed ncnn can run on a Vulkan GPU. Otherwise one ``note:`` line on stderr and False: the
    model runs on the CPU (the same model and numbers, slower). Not an error, because the artifact's use_vulkan is
    the *device's* setting and the converter host, which checks every build by running it, usually has no Vulkan."""
    count = getattr(ncnn, "get_gpu_count", None)
    with _captured_stderr():  # the loader prints "dlopen failed libvulkan.so.1 …" per attempt on the C stderr
        gpus = count() if count is not None else 0
    if gpus <= 0:
        print(f"note: {model_path.name}: the artifact asks for ncnn on a Vulkan GPU (its target's use_vulkan = true), "
              + ("but this ncnn was built without Vulkan" if count is None else "but ncnn finds no Vulkan GPU here")
              + "; running on the CPU", file=sys.stderr)
        return False
    return True


@contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Collect what C code writes to file descriptor 2 during the block (ncnn's load errors).

    Python's sys.stderr object cannot see C-level writes, so fd 2 itself is pointed at a
    temporary file and restored afterwards. The yielded list is filled when the block exits.
    """
    messages: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters): run without capturing
        yield messages
        return
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield messages
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", errors="replace")
            messages.extend(line.strip() for line in text.splitlines() if line.strip())
