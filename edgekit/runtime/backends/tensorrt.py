"""TensorRT runner: runs a serialized engine on an NVIDIA GPU (a Jetson, or any CUDA machine).

Needs **TensorRT >= 8.5** (JetPack 5.1 and later; JetPack 6 ships 10.x): the runner uses only the
name-based I/O API that 8.5 introduced and 10.x kept — ``engine.num_io_tensors``,
``get_tensor_name`` / ``get_tensor_mode`` / ``get_tensor_shape`` / ``get_tensor_dtype``,
``context.set_input_shape``, ``set_tensor_address`` and ``execute_async_v3`` — never the binding-index
API that 10.x removed (11.x keeps the name-based API: ``tools/trt_api_surface.py`` checks every name this
module uses against the 8.6 / 10.3 / 11.4 bindings). An older TensorRT gives a BackendUnavailableError.
Device memory, pinned host buffers, copies and the stream come from the CUDA runtime library the device
already has (``libcudart.so`` of JetPack's CUDA 11.4 / 12.x / 13.x) through ctypes, as Polygraphy does:
no cuda-python wheel to match to the JetPack's CUDA major version (cuda-python 13 needs a CUDA 13 driver
and reported "no usable GPU" on JetPack 5/6). Every call's status is checked. The runtime never imports torch.

Where the engine comes from: an edgekit artifact for a Jetson target carries the ONNX graph and
``tensorrt_build.sh`` (a ``trtexec`` command), because an engine only runs on the GPU model and
TensorRT version that built it. The manifest entry's ``file`` is that ONNX (``model.onnx``, or
``model_int8_qdq.onnx`` for int8) and its options name the engine the script writes::

    {"engine": "model_fp16.engine", "build_script": "tensorrt_build.sh",
     "build_command": "trtexec --onnx=model.onnx --saveEngine=model_fp16.engine --fp16 …",
     "builds": {"8.5": {"onnx": "model.onnx", …}, …, "11.x": {"onnx": "model_fp16.onnx", …}},
     "built_on_device": true}

The engine is produced on the device after conversion, so it has no sha256 in the manifest:
:func:`resolve_engine` opens ``<artifact>/<engine>`` directly and says how to build it when it is
missing. Next to it the build writes ``<engine>.json`` (TensorRT version, GPU, source ONNX and its
sha256); :func:`check_engine_record` refuses an engine built from another ONNX (a re-convert) or by
another TensorRT version before TensorRT is asked to load it. The engine's I/O tensors keep the ONNX
names (TensorRT's ONNX parser keeps graph input and output names), which are the spec's ``input_name``
and ``head.output_names``.

On a Jetson the ``tensorrt`` Python module comes with JetPack (built for the system Python), not
from pip; the CUDA runtime library comes with JetPack too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import json
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import BackendUnavailableError, InputError, ModelFileError, OutputError
from edgekit.runtime.artifact import sha256_file
from edgekit.runtime.backends.base import Runner, TensorSpec

#: oldest TensorRT with the name-based I/O API and execute_async_v3
MIN_TENSORRT = (8, 5)
#: file suffixes a serialized engine is usually saved with (for runners opened on a bare engine file)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
#: TensorRT DataType member names -> numpy dtypes (looked up with getattr: INT64 is 10.x only)
_NUMPY_DTYPES: dict[str, np.dtype] = {
    "FLOAT": np.dtype(np.float32),
    "HALF": np.dtype(np.float16),
    "INT8": np.dtype(np.int8),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
}
#: every TensorRT Python name this module calls: checked against the 8.6 / 10.3 / 11.4 bindings
#: (``tools/trt_api_surface.json``, extracted by ``tools/trt_api_surface.py``)
TENSORRT_RUNTIME_API = ("num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_shape", "get_tensor_dtype",
                        "get_tensor_profile_shape", "set_input_shape", "set_tensor_address", "execute_async_v3",
                        "deserialize_cuda_engine", "create_execution_context", "TensorIOMode", "ILogger",
                        "IOutputAllocator", "set_output_allocator", "reallocate_output", "notify_shape",
                        "ICudaEngine", "IExecutionContext", "Severity", "INTERNAL_ERROR", "WARNING", "log")
#: the record the device build writes next to the engine (``<engine>.json``)
ENGINE_RECORD_FORMAT = "edgekit-tensorrt-engine"
#: cuda errors that mean "no usable GPU here" rather than "this call went wrong"
_NO_GPU_ERRORS = ("cudaErrorNoDevice", "cudaErrorInsufficientDriver", "cudaErrorDevicesUnavailable",
                  "cudaErrorSystemDriverMismatch", "cudaErrorCompatNotSupportedOnDevice", "cudaErrorInitializationError")


# --- engine file (no TensorRT needed) ---------------------------------------------------------

def engine_path(model_path: str | Path, options: Mapping[str, object]) -> Path | None:
    """Where a manifest entry's engine lives: ``options["engine"]`` next to the entry's file.

    None when the options name no engine (the entry is not a TensorRT one). Checks nothing on disk.
    """
    engine = options.get("engine")
    if not engine:
        return None
    return Path(model_path).parent / str(engine)


def resolve_engine(model_path: str | Path, options: Mapping[str, object]) -> Path:
    """The engine file for a manifest entry (or ``model_path`` itself when it is an engine file), checked on disk.

    Raises ModelFileError when ``model_path`` is neither an entry with an engine nor an engine file,
    and when the engine has not been built yet (naming the script / command that builds it).
    """
    path = _engine_location(model_path, options)
    check_engine_file(path, options.get("build_script"), options.get("build_command"))
    return path


def check_engine_file(path: Path, build_script: object = None, build_command: object = None) -> None:
    """ModelFileError unless ``path`` is a non-empty file: "engine not built yet: run ./<script> on the device"."""
    if not path.is_file():
        how = (f"run ./{build_script} on the device" if build_script else "build it on the device with trtexec") + \
              (f" (it runs: {build_command})" if build_command else "")
        raise ModelFileError(f"{path}: engine not built yet: {how}")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: the engine file is empty (its build did not finish); rebuild it on the device")


def _engine_location(model_path: str | Path, options: Mapping[str, object]) -> Path:
    model_path = Path(model_path)
    path = engine_path(model_path, options)
    if path is not None:
        return path
    if model_path.suffix.lower() not in ENGINE_SUFFIXES:
        raise ModelFileError(f"{model_path}: tensorrt runs a serialized engine ({', '.join(ENGINE_SUFFIXES)}), not a "
                             f"{model_path.suffix or 'suffix-less'} file; build one on the device with "
                             f"trtexec --onnx={model_path.name} --saveEngine=model.engine")
    return model_path


# --- the build record next to an engine (no TensorRT needed) -----------------------------------

def record_path(engine: Path) -> Path:
    return engine.with_name(engine.name + ".json")


def check_engine_record(engine: Path, allowed_onnx: set[str] | frozenset[str], tensorrt_version: str | None) -> dict:
    """The engine's build record, checked: ModelFileError (one line) unless the engine was built from an ONNX of
    this artifact as it is now (sha256) and, when ``tensorrt_version`` is given, by that TensorRT version.

    ``allowed_onnx``: the ONNX files of the manifest entry's builds (relative to the engine's folder).
    """
    path = record_path(engine)
    rebuild = f"rebuild it on this device: edgekit build-engine {engine.parent} (or ./tensorrt_build.sh)"
    if not path.is_file():
        raise ModelFileError(f"{engine}: no build record {path.name} next to the engine, so nothing says which ONNX "
                             f"and TensorRT built it; {rebuild}")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        onnx_name, onnx_sha = str(record["onnx"]), str(record["onnx_sha256"])
        number = int(record["tensorrt_number"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: not a readable engine build record ({type(exc).__name__}: {exc}); "
                             f"{rebuild}") from None
    if record.get("format") != ENGINE_RECORD_FORMAT or onnx_name not in allowed_onnx:
        raise ModelFileError(f"{path}: the engine was not built from this artifact's ONNX ({onnx_name!r}); {rebuild}")
    source = engine.parent / onnx_name
    actual = sha256_file(source) if source.is_file() else "missing"
    if actual != onnx_sha:
        raise ModelFileError(f"{engine}: built from another {onnx_name} (sha256 {onnx_sha[:12]}…, the artifact's is "
                             f"{actual[:12]}…): the model was re-converted after the engine was built; {rebuild}")
    if tensorrt_version is not None:
        from edgekit.convert.tensorrt_versions import parse_version  # torch- and onnx-free: the version table

        if parse_version(tensorrt_version).number != number:
            raise ModelFileError(f"{engine}: built by TensorRT {parse_version(str(number))}, this device has TensorRT "
                                 f"{tensorrt_version}; an engine runs only on the TensorRT that built it; {rebuild}")
    return dict(record)


def plain_file_name(name: object, where: Path | str) -> str:
    """``name`` when it names a file in the artifact folder itself; ModelFileError for a path (``../x``, ``/etc/x``):
    the manifest's per-version builds name files the device reads and hashes."""
    text = str(name)
    if not text or Path(text).name != text or text in (".", ".."):
        raise ModelFileError(f"{where}: the manifest's tensorrt builds name {text!r}; expected a file name inside "
                             "the artifact folder")
    return text


# --- the runner --------------------------------------------------------------------------------

class TensorRtRunner(Runner):
    """Runs a serialized TensorRT engine on the GPU.

    engine_path: the ``.engine`` file. build_script / build_command: how the engine is built (from
    the manifest; named in the error when the engine is missing). allowed_onnx: the ONNX files the
    manifest entry's builds read; when given, the engine's build record (``<engine>.json``) must name one
    of them with its current sha256 and this TensorRT version (:func:`check_engine_record`); None (a bare
    engine file) skips that check. threads: accepted for the common interface and ignored (the GPU runs
    the network).

    Inputs and outputs are the engine's I/O tensors by name, in the engine's order. A dynamic batch
    axis accepts any batch up to the engine's optimization-profile maximum; a larger batch, or any batch
    other than a static engine's own, is run in chunks of that size (the last chunk of a static engine
    padded with zeros, its padding rows dropped from the outputs). Each chunk is copied into pinned host
    buffers, then to device buffers (both kept between calls and grown when needed), runs
    ``execute_async_v3`` on the runner's own stream, comes back through pinned buffers, and the stream is
    waited for: the returned arrays are new numpy arrays owned by the caller.

    Threads: the execution context, its stream and the buffers are one set, so concurrent
    :meth:`infer` calls take turns (a lock around each call). The GPU runs one engine's kernels at a
    time on one stream anyway; a per-thread context would need its own stream and buffers each.
    """

    name = "tensorrt"
    required_modules = ("tensorrt",)
    pip_extra = "tensorrt"

    def __init__(self, engine_path: str | Path, *, build_script: str | None = None, build_command: str | None = None,
                 allowed_onnx: set[str] | frozenset[str] | None = None, threads: int = 0) -> None:
        super().__init__(engine_path)
        self.build_script = build_script
        self.build_command = build_command
        self.allowed_onnx = frozenset(allowed_onnx) if allowed_onnx is not None else None
        self.threads = int(threads)
        self.record: dict = {}
        self._trt: Any = None
        self._cuda: CudaRuntime | None = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream = 0
        self._inputs: list[TensorSpec] = []
        self._outputs: list[tuple[str, np.dtype]] = []
        self._max_batch: dict[str, int] = {}
        self._static_batch: dict[str, int] = {}
        self._buffers: dict[str, tuple[int, int]] = {}  # tensor name -> (device pointer, capacity in bytes)
        self._pinned: dict[str, tuple[int, int]] = {}  # tensor name -> (pinned host pointer, capacity in bytes)
        self._allocator: Any = None  # trt.IOutputAllocator for outputs whose shape depends on the data (NMS)
        # one context + stream + buffers: held for the whole of each inference (input shapes, copies, outputs)
        self._infer_lock = threading.Lock()

    @classmethod
    def from_artifact(cls, model_path: Path, options: Mapping[str, object], threads: int = 0) -> TensorRtRunner:
        """A manifest entry (``model_path`` is its ONNX, ``options["engine"]`` the engine next to it) or,
        without options, a bare engine file. Whether the engine exists is checked at activation."""
        path = _engine_location(model_path, options)
        script, command = options.get("build_script"), options.get("build_command")
        allowed = None
        if options.get("engine"):
            builds = options.get("builds")
            allowed = {Path(model_path).name}
            if isinstance(builds, Mapping):
                allowed |= {plain_file_name(b["onnx"], model_path) for b in builds.values()
                            if isinstance(b, Mapping) and b.get("onnx")}
        return cls(path, build_script=str(script) if script else None, build_command=str(command) if command else None,
                   allowed_onnx=allowed, threads=threads)

    # --- availability --------------------------------------------------------------------

    @classmethod
    def is_available(cls) -> bool:
        """TensorRT's Python module importable and the CUDA runtime library found (no GPU probe)."""
        return importlib.util.find_spec("tensorrt") is not None and find_cudart() is not None

    @classmethod
    def require(cls) -> None:
        missing = []
        if importlib.util.find_spec("tensorrt") is None:
            missing.append("the Python module tensorrt (TensorRT's Python bindings: on a Jetson they come with "
                           "JetPack, apt install python3-libnvinfer; elsewhere pip install 'edgekit[tensorrt]')")
        if find_cudart() is None:
            missing.append("the CUDA runtime library libcudart.so (JetPack's CUDA; elsewhere the CUDA toolkit or "
                           "pip install nvidia-cuda-runtime-cu12)")
        if missing:
            raise BackendUnavailableError(f"backend 'tensorrt' needs {'; and '.join(missing)}; "
                                          "it runs only on a machine with an NVIDIA GPU")

    # --- lifecycle -----------------------------------------------------------------------

    def _activate(self) -> None:
        trt = _import_tensorrt()
        path = self.model_path
        check_engine_file(path, self.build_script, self.build_command)
        if self.allowed_onnx is not None:
            self.record = check_engine_record(path, self.allowed_onnx, str(trt.__version__))
        cuda = CudaRuntime.load()
        self._trt, self._cuda = trt, cuda
        try:
            self._stream = cuda.stream_create()
            self._load_engine(path)
            self._read_io()
        except BaseException:
            self._deactivate()
            raise

    def _load_engine(self, path: Path) -> None:
        trt = self._trt
        logger = _recording_logger(trt)
        logger.errors.clear()
        try:
            self._runtime = trt.Runtime(logger)
        except Exception as exc:  # pybind11 raises TypeError when the factory returns nullptr (no CUDA)
            raise BackendUnavailableError(f"tensorrt: cannot create a TensorRT runtime here "
                                          f"({_first_line(logger.errors, exc)})") from None
        try:
            engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        except Exception as exc:  # newer bindings may raise instead of returning None
            logger.errors.insert(0, str(exc))
            engine = None
        if engine is None:
            raise ModelFileError(f"{path}: TensorRT {trt.__version__} cannot load this engine "
                                 f"({_first_line(logger.errors)}); "
                                 "an engine runs only on the GPU model and TensorRT version that built it: "
                                 f"rebuild it on this device{f' with ./{self.build_script}' if self.build_script else ''}")
        self._engine = engine
        context = engine.create_execution_context()
        if context is None:
            raise BackendUnavailableError(f"{path}: TensorRT cannot create an execution context "
                                          f"({_first_line(logger.errors)}); is the GPU out of memory?")
        self._context = context

    def _read_io(self) -> None:
        trt, engine = self._trt, self._engine
        inputs, outputs = [], []
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            dtype = _numpy_dtype(trt, engine.get_tensor_dtype(name), name, self.model_path)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                dims = tuple(int(d) for d in engine.get_tensor_shape(name))
                # a static batch axis is left open in the spec: the runner chunks (and pads) to the engine's batch
                inputs.append(TensorSpec(name, dtype, tuple(None if d < 0 or i == 0 else d for i, d in enumerate(dims))))
                if dims and dims[0] < 0:
                    # profile 0: [min, opt, max] shapes; the batch axis may go up to max[0]
                    self._max_batch[name] = int(engine.get_tensor_profile_shape(name, 0)[2][0])
                elif dims:
                    self._static_batch[name] = dims[0]
            else:
                outputs.append((name, dtype))
        self._inputs, self._outputs = inputs, outputs

    def _deactivate(self) -> None:
        """Release everything; best effort (a failing free here follows an error already raised)."""
        cuda = self._cuda
        if cuda is not None:
            if self._stream:
                cuda.lib.cudaStreamSynchronize(ctypes.c_void_p(self._stream))
            for pointer, _ in self._buffers.values():
                cuda.lib.cudaFree(ctypes.c_void_p(pointer))
            for pointer, _ in self._pinned.values():
                cuda.lib.cudaFreeHost(ctypes.c_void_p(pointer))
            if self._stream:
                cuda.lib.cudaStreamDestroy(ctypes.c_void_p(self._stream))
            if self._allocator is not None:
                for pointer, _ in self._allocator.buffers.values():
                    cuda.lib.cudaFree(ctypes.c_void_p(pointer))
        self._buffers, self._pinned, self._allocator = {}, {}, None
        self._stream = 0
        # context before engine before runtime: each must outlive what was created from it
        self._context = None
        self._engine = None
        self._runtime = None
        self._inputs, self._outputs, self._max_batch, self._static_batch = [], [], {}, {}

    # --- interface -----------------------------------------------------------------------

    def input_specs(self) -> list[TensorSpec]:
        self.activate()
        return list(self._inputs)

    def output_names(self) -> list[str]:
        self.activate()
        return [name for name, _ in self._outputs]

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._infer_lock:
            return self._infer_locked(feeds)

    def _infer_locked(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        static = {self._static_batch[n] for n in feeds if n in self._static_batch}
        dynamic = min((self._max_batch[n] for n in feeds if n in self._max_batch), default=None)
        batches = {int(a.shape[0]) for a in feeds.values() if a.ndim}
        total = batches.pop() if len(batches) == 1 else None
        plan = chunk_plan(total, min(static) if static else None, dynamic)
        if plan is None:
            return self._infer_once(feeds)
        parts = []
        for start, stop, padded in plan:
            chunk = {n: _pad_rows(a[start:stop], padded) for n, a in feeds.items()}
            result = self._infer_once(chunk)
            if self._allocator is not None and self._allocator.registered:
                # rows of a data-dependent output (NMS: [num_selected, 3]) are not batch rows: no chunking
                raise InputError(f"{self.model_path.name}: a batch of {total} does not fit this engine "
                                 f"({self._profile_text(next(iter(feeds)))}) and its data-dependent outputs "
                                 "cannot be run in chunks; send at most the engine's batch")
            parts.append({n: r[:stop - start] for n, r in result.items()})
        return {name: np.concatenate([p[name] for p in parts]) for name, _ in self._outputs}

    def _infer_once(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cuda, context = self._cuda, self._context
        assert cuda is not None  # activated
        for spec in self._inputs:
            array = feeds[spec.name]
            if spec.name in self._static_batch:
                continue  # a static shape is the engine's own
            if not context.set_input_shape(spec.name, tuple(int(d) for d in array.shape)):
                raise InputError(f"{self.model_path.name}: input '{spec.name}' of shape {tuple(array.shape)} is outside "
                                 f"what the engine was built for ({self._profile_text(spec.name)})")
        for spec in self._inputs:
            array = np.ascontiguousarray(feeds[spec.name])
            pointer = self._device_buffer(spec.name, array.nbytes)
            if array.nbytes:
                pinned = self._pinned_buffer(spec.name, array.nbytes)
                ctypes.memmove(pinned, array.ctypes.data, array.nbytes)
                cuda.memcpy_async(pointer, pinned, array.nbytes, CUDA_H2D, self._stream,
                                  f"copying input '{spec.name}' to the GPU")
            self._set_address(spec.name, pointer)
        shapes: dict[str, tuple[int, ...]] = {}
        data_dependent = []
        for name, dtype in self._outputs:
            shape = tuple(int(d) for d in context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                # known only after the run (an NMS output: [num_selected, 3]): TensorRT asks the output allocator
                # for memory and tells it the shape (IOutputAllocator, TensorRT >= 8.5)
                self._use_output_allocator(name)
                data_dependent.append(name)
                continue
            shapes[name] = shape
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            self._set_address(name, self._device_buffer(name, nbytes))
        _recording_logger(self._trt).errors.clear()
        if not context.execute_async_v3(self._stream):
            raise OutputError(f"{self.model_path.name}: TensorRT failed to enqueue the inference "
                              f"({_first_line(_recording_logger(self._trt).errors)})")
        for name, dtype in self._outputs:
            if name in data_dependent:
                continue
            nbytes = int(np.prod(shapes[name], dtype=np.int64)) * dtype.itemsize
            if nbytes:
                cuda.memcpy_async(self._pinned_buffer(name, nbytes), self._buffers[name][0], nbytes, CUDA_D2H,
                                  self._stream, f"copying output '{name}' from the GPU")
        cuda.check(cuda.lib.cudaStreamSynchronize(ctypes.c_void_p(self._stream)), "running the engine "
                   "(cudaStreamSynchronize)")
        if data_dependent:  # their shapes are known now: copy them back, then wait again
            dtypes = dict(self._outputs)
            for name in data_dependent:
                if name not in self._allocator.shapes:
                    raise OutputError(f"{self.model_path.name}: TensorRT reported no shape for output '{name}'")
                shapes[name] = self._allocator.shapes[name]
                nbytes = int(np.prod(shapes[name], dtype=np.int64)) * dtypes[name].itemsize
                if nbytes:
                    cuda.memcpy_async(self._pinned_buffer(name, nbytes), self._allocator.buffers[name][0], nbytes,
                                      CUDA_D2H, self._stream, f"copying output '{name}' from the GPU")
            cuda.check(cuda.lib.cudaStreamSynchronize(ctypes.c_void_p(self._stream)), "copying data-dependent "
                       "outputs (cudaStreamSynchronize)")
        results = {}
        for name, dtype in self._outputs:
            host = np.empty(shapes[name], dtype=dtype)
            if host.nbytes:
                ctypes.memmove(host.ctypes.data, self._pinned[name][0], host.nbytes)
            results[name] = host
        return results

    # --- helpers -------------------------------------------------------------------------

    def _device_buffer(self, name: str, nbytes: int) -> int:
        """A device buffer of at least ``nbytes`` for tensor ``name``, reused across calls."""
        cuda = self._cuda
        assert cuda is not None
        return _grown(self._buffers, name, nbytes, cuda.malloc, cuda.free)

    def _pinned_buffer(self, name: str, nbytes: int) -> int:
        """A pinned (page-locked) host buffer of at least ``nbytes``: async copies need one to be asynchronous."""
        cuda = self._cuda
        assert cuda is not None
        return _grown(self._pinned, name, nbytes, cuda.malloc_host, cuda.free_host)

    def _use_output_allocator(self, name: str) -> None:
        if self._allocator is None:
            assert self._cuda is not None  # activated
            self._allocator = _output_allocator(self._trt, self._cuda)
        if name not in self._allocator.registered:
            if not self._context.set_output_allocator(name, self._allocator):
                raise OutputError(f"{self.model_path.name}: TensorRT refused an output allocator for '{name}'")
            self._allocator.registered.add(name)

    def _set_address(self, name: str, pointer: int) -> None:
        if not self._context.set_tensor_address(name, pointer):
            raise OutputError(f"{self.model_path.name}: TensorRT rejected the device address of tensor '{name}'")

    def _profile_text(self, name: str) -> str:
        try:
            low, _, high = self._engine.get_tensor_profile_shape(name, 0)
            return f"shapes from {list(low)} to {list(high)}"
        except Exception:
            return f"shape {list(self._engine.get_tensor_shape(name))}"


def _grown(buffers: dict[str, tuple[int, int]], name: str, nbytes: int, allocate: Any, release: Any) -> int:
    pointer, capacity = buffers.get(name, (0, 0))
    if nbytes <= capacity and pointer:
        return pointer
    if pointer:
        buffers.pop(name)
        release(pointer, name)
    size = max(int(nbytes), 1)
    pointer = allocate(size, name)
    buffers[name] = (pointer, size)
    return pointer


def _output_allocator(trt: Any, cuda: CudaRuntime) -> Any:
    """A ``trt.IOutputAllocator`` that keeps one growing device buffer per output and records the shapes TensorRT
    reports. ``reallocate_output`` is 8.x's callback, ``reallocate_output_async`` 10.x's (both defined: each
    version calls the one it has)."""

    class OutputAllocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.buffers: dict[str, tuple[int, int]] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.registered: set[str] = set()

        def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int) -> int:
            return _grown(self.buffers, tensor_name, int(size), cuda.malloc, cuda.free)

        def reallocate_output_async(self, tensor_name: str, memory: int, size: int, alignment: int,
                                    stream: int) -> int:
            return self.reallocate_output(tensor_name, memory, size, alignment)

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            self.shapes[tensor_name] = tuple(int(d) for d in shape)

    return OutputAllocator()


def chunk_plan(total: int | None, static_batch: int | None, max_batch: int | None) -> list[tuple[int, int, int]] | None:
    """How a batch of ``total`` rows runs: None = in one call, else ``(start, stop, rows_sent)`` per call.

    A static engine (``static_batch``) takes exactly that many rows: every other batch is sent in chunks of
    it, the last padded to it. A dynamic engine takes up to ``max_batch``: larger batches go in chunks.
    """
    if total is None or total == 0:
        return None
    if static_batch is not None and static_batch > 0:
        if total == static_batch:
            return None
        return [(s, min(s + static_batch, total), static_batch) for s in range(0, total, static_batch)]
    if max_batch is not None and max_batch > 0 and total > max_batch:
        return [(s, min(s + max_batch, total), min(s + max_batch, total) - s) for s in range(0, total, max_batch)]
    return None


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    if array.ndim == 0 or array.shape[0] == rows:
        return array
    pad = np.zeros((rows - array.shape[0], *array.shape[1:]), dtype=array.dtype)
    return np.concatenate([array, pad])


# --- TensorRT / CUDA plumbing ------------------------------------------------------------------

def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:  # present but broken, e.g. libnvinfer not on the library path
        raise BackendUnavailableError(f"tensorrt: the tensorrt module is installed but cannot be imported "
                                      f"({exc})") from None
    version = _version_tuple(getattr(trt, "__version__", "0"))
    if version < MIN_TENSORRT or not hasattr(trt.ICudaEngine, "num_io_tensors") \
            or not hasattr(trt.IExecutionContext, "execute_async_v3"):
        raise BackendUnavailableError(f"tensorrt: TensorRT {getattr(trt, '__version__', '?')} is too old; edgekit's "
                                      f"tensorrt backend needs TensorRT >= {'.'.join(map(str, MIN_TENSORRT))} "
                                      "(JetPack 5.1 or later) for the name-based I/O API and execute_async_v3")
    return trt


#: cudaMemcpyKind values (CUDA runtime API, stable since CUDA 4)
CUDA_H2D, CUDA_D2H = 1, 2
#: sonames of the CUDA runtime, newest first (JetPack 7: CUDA 13, JetPack 6: 12, JetPack 5: 11.4)
CUDART_NAMES = ("libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so")
#: where JetPack / the CUDA toolkit put it when the loader's cache does not list it
CUDART_DIRS = ("/usr/local/cuda/lib64", "/usr/local/cuda/targets/aarch64-linux/lib",
               "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/lib/aarch64-linux-gnu", "/usr/lib/x86_64-linux-gnu")


def find_cudart() -> str | None:
    """The CUDA runtime library to load: ``EDGEKIT_CUDART`` if set, else the loader's ``cudart``, else JetPack's
    and the toolkit's folders, else the ``nvidia-cuda-runtime`` wheel's. None when there is none (no GPU stack)."""
    explicit = os.environ.get("EDGEKIT_CUDART")
    if explicit:
        return explicit
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d] + list(CUDART_DIRS)
    spec = importlib.util.find_spec("nvidia")
    for location in (spec.submodule_search_locations or []) if spec else []:
        dirs.append(os.path.join(location, "cuda_runtime", "lib"))
    for folder in dirs:
        for name in CUDART_NAMES:
            candidate = os.path.join(folder, name)
            if os.path.isfile(candidate):
                return candidate
    found = ctypes.util.find_library("cudart")
    return found or None


class CudaRuntime:
    """The few CUDA runtime calls the runner needs, through ctypes (as Polygraphy's ``cuda`` wrapper does).

    Every call returns a ``cudaError_t``; :meth:`check` turns a non-zero one into an error naming the call and
    ``cudaGetErrorName`` of the status ("no usable GPU" errors become BackendUnavailableError).
    """

    _loaded: CudaRuntime | None = None

    def __init__(self, path: str) -> None:
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            raise BackendUnavailableError(f"tensorrt: cannot load the CUDA runtime {path} ({exc})") from None
        voidpp = ctypes.POINTER(ctypes.c_void_p)
        for name, argtypes in {"cudaMalloc": [voidpp, ctypes.c_size_t], "cudaFree": [ctypes.c_void_p],
                               "cudaMallocHost": [voidpp, ctypes.c_size_t], "cudaFreeHost": [ctypes.c_void_p],
                               "cudaMemcpyAsync": [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                                   ctypes.c_void_p],
                               "cudaStreamCreate": [voidpp], "cudaStreamSynchronize": [ctypes.c_void_p],
                               "cudaStreamDestroy": [ctypes.c_void_p], "cudaGetErrorName": [ctypes.c_int],
                               "cudaGetDeviceCount": [ctypes.POINTER(ctypes.c_int)]}.items():
            function = getattr(lib, name)
            function.argtypes = argtypes
            function.restype = ctypes.c_char_p if name == "cudaGetErrorName" else ctypes.c_int
        self.lib = lib
        self.path = path

    @classmethod
    def load(cls) -> CudaRuntime:
        if cls._loaded is None:
            path = find_cudart()
            if path is None:
                raise BackendUnavailableError("tensorrt: no CUDA runtime library (libcudart.so) found; set "
                                              "EDGEKIT_CUDART to its path")
            runtime = cls(path)
            count = ctypes.c_int(0)
            runtime.check(runtime.lib.cudaGetDeviceCount(ctypes.byref(count)), "cudaGetDeviceCount",
                          BackendUnavailableError)
            cls._loaded = runtime
        return cls._loaded

    def check(self, status: int, what: str, error: type[Exception] = OutputError) -> None:
        if status == 0:
            return
        raw = self.lib.cudaGetErrorName(status)
        name = raw.decode() if raw else f"cudaError {status}"
        if name in _NO_GPU_ERRORS:
            error = BackendUnavailableError
        hint = "; no usable NVIDIA GPU / driver here" if name in _NO_GPU_ERRORS else ""
        raise error(f"tensorrt: {what} failed with {name}{hint}")

    def _allocated(self, allocate: Any, size: int, what: str) -> int:
        """``allocate(void **pointer, size)`` (cudaMalloc, cudaMallocHost) checked; the pointer as an int."""
        pointer = ctypes.c_void_p()
        self.check(allocate(ctypes.byref(pointer), size), what)
        return int(pointer.value or 0)

    def malloc(self, size: int, name: str) -> int:
        return self._allocated(self.lib.cudaMalloc, size,
                               f"allocating {size} bytes of GPU memory for '{name}' (cudaMalloc)")

    def free(self, pointer: int, name: str) -> None:
        self.check(self.lib.cudaFree(ctypes.c_void_p(pointer)), f"freeing the GPU buffer of '{name}' (cudaFree)")

    def malloc_host(self, size: int, name: str) -> int:
        return self._allocated(self.lib.cudaMallocHost, size,
                               f"allocating {size} bytes of pinned host memory for '{name}' (cudaMallocHost)")

    def free_host(self, pointer: int, name: str) -> None:
        self.check(self.lib.cudaFreeHost(ctypes.c_void_p(pointer)), f"freeing the pinned buffer of '{name}'")

    def memcpy_async(self, dst: int, src: int, nbytes: int, kind: int, stream: int, what: str) -> None:
        self.check(self.lib.cudaMemcpyAsync(ctypes.c_void_p(dst), ctypes.c_void_p(src), nbytes, kind,
                                            ctypes.c_void_p(stream)), f"{what} (cudaMemcpyAsync)")

    def device_name(self) -> str:
        """Device 0's name: the first field of cudaDeviceProp (``char name[256]``), the same in every CUDA."""
        buffer = ctypes.create_string_buffer(8192)  # larger than cudaDeviceProp in any CUDA release
        function = getattr(self.lib, "cudaGetDeviceProperties_v2", None) or self.lib.cudaGetDeviceProperties
        function.argtypes, function.restype = [ctypes.c_void_p, ctypes.c_int], ctypes.c_int
        self.check(function(buffer, 0), "cudaGetDeviceProperties")
        return buffer.raw[:256].split(b"\0", 1)[0].decode(errors="replace")

    def stream_create(self) -> int:
        stream = ctypes.c_void_p()
        self.check(self.lib.cudaStreamCreate(ctypes.byref(stream)), "cudaStreamCreate", BackendUnavailableError)
        return int(stream.value or 0)


def _numpy_dtype(trt: Any, dtype: Any, name: str, path: Path) -> np.dtype:
    # Our own table: trt.nptype in TensorRT 8.x refers to np.bool, which numpy 1.24-1.26 does not have.
    for member, np_dtype in _NUMPY_DTYPES.items():
        if getattr(trt.DataType, member, None) == dtype:
            return np_dtype
    raise ModelFileError(f"{path}: engine tensor '{name}' has TensorRT type {dtype}, which numpy cannot hold; "
                         "build the engine with float32 I/O (trtexec's default)")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", str(text))[:2]) or (0,)


def _first_line(messages: list[str], exc: BaseException | None = None) -> str:
    text = messages[0] if messages else (str(exc) if exc is not None else "")
    text = " ".join(text.split())
    return text[:300] if text else "no message from TensorRT"


_LOGGER: Any = None


def _recording_logger(trt: Any) -> Any:
    """One process-wide logger (TensorRT 8 treats the logger as a singleton) that keeps the errors.

    Warnings go to stderr as with ``trt.Logger(WARNING)``; errors are kept instead, and the one-line
    error raised when loading or enqueueing fails quotes the first of them.
    """
    global _LOGGER
    if _LOGGER is None:
        import sys

        severity = trt.ILogger.Severity

        class RecordingLogger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, level: Any, msg: str) -> None:
                if level in (severity.INTERNAL_ERROR, severity.ERROR):
                    self.errors.append(str(msg))
                    del self.errors[:-20]
                elif level == severity.WARNING:
                    print(f"[TensorRT] warning: {msg}", file=sys.stderr)

        _LOGGER = RecordingLogger()
    return _LOGGER
