"""TensorRT runner: runs a serialized engine on an NVIDIA GPU (a Jetson, or any CUDA machine).

Needs **TensorRT >= 8.5** (JetPack 5.1 and later; JetPack 6 ships 10.x): the runner uses only the
name-based I/O API that 8.5 introduced and 10.x kept — ``engine.num_io_tensors``,
``get_tensor_name`` / ``get_tensor_mode`` / ``get_tensor_shape`` / ``get_tensor_dtype``,
``context.set_input_shape``, ``set_tensor_address`` and ``execute_async_v3`` — never the binding-index
API that 10.x removed. An older TensorRT gives a BackendUnavailableError saying so. Device memory,
copies and the stream come from cuda-python's runtime API (``cuda.bindings.runtime`` since
cuda-python 12.6.1 / 11.8.4, ``cuda.cudart`` before); every call returns ``(error, value…)`` and
every error is checked. The runtime never imports torch.

Where the engine comes from: an edgekit artifact for a Jetson target carries the ONNX graph and
``tensorrt_build.sh`` (a ``trtexec`` command), because an engine only runs on the GPU model and
TensorRT version that built it. The manifest entry's ``file`` is that ONNX (``model.onnx``, or
``model_int8_qdq.onnx`` for int8) and its options name the engine the script writes::

    {"engine": "model_fp16.engine", "build_script": "tensorrt_build.sh",
     "build_command": "trtexec --onnx=model.onnx --saveEngine=model_fp16.engine --fp16 …",
     "built_on_device": true}

The engine is produced on the device after conversion, so it has no sha256 in the manifest:
:func:`resolve_engine` opens ``<artifact>/<engine>`` directly and says how to build it when it is
missing. The engine's I/O tensors keep the ONNX names (TensorRT's ONNX parser keeps graph input and
output names), which are the spec's ``input_name`` and ``head.output_names``.

On a Jetson the ``tensorrt`` Python module comes with JetPack (built for the system Python), not
from pip; cuda-python comes from pip in the release matching the device's CUDA major version.
"""

from __future__ import annotations

import importlib.util
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import BackendUnavailableError, InputError, ModelFileError, OutputError
from edgekit.runtime.backends.base import Runner, TensorSpec

#: oldest TensorRT with the name-based I/O API and execute_async_v3
MIN_TENSORRT = (8, 5)
#: file suffixes a serialized engine is usually saved with (for runners opened on a bare engine file)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
#: TensorRT DataType member names -> numpy dtypes (looked up with getattr: INT64 is 10.x only)
_NUMPY_DTYPES = {
    "FLOAT": np.dtype(np.float32),
    "HALF": np.dtype(np.float16),
    "INT8": np.dtype(np.int8),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
}
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


# --- the runner --------------------------------------------------------------------------------

class TensorRtRunner(Runner):
    """Runs a serialized TensorRT engine on the GPU.

    engine_path: the ``.engine`` file. build_script / build_command: how the engine is built (from
    the manifest; named in the error when the engine is missing). threads: accepted for the common
    interface and ignored (the GPU runs the network).

    Inputs and outputs are the engine's I/O tensors by name, in the engine's order. A dynamic batch
    axis accepts any batch up to the engine's optimization-profile maximum; a larger batch is run in
    chunks of that maximum. Each call copies the inputs to device buffers (kept between calls and
    grown when needed), runs ``execute_async_v3`` on the runner's own stream, copies the outputs back
    and waits for the stream: the returned arrays are new numpy arrays owned by the caller.

    Threads: the execution context, its stream and the device buffers are one set, so concurrent
    :meth:`infer` calls take turns (a lock around each call). The GPU runs one engine's kernels at a
    time on one stream anyway; a per-thread context would need its own stream and buffers each.
    """

    name = "tensorrt"
    required_modules = ("tensorrt", "cuda")
    pip_extra = "tensorrt"

    def __init__(self, engine_path: str | Path, *, build_script: str | None = None, build_command: str | None = None,
                 threads: int = 0) -> None:
        super().__init__(engine_path)
        self.build_script = build_script
        self.build_command = build_command
        self.threads = int(threads)
        self._trt: Any = None
        self._cudart: Any = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._stream_handle = 0
        self._inputs: list[TensorSpec] = []
        self._outputs: list[tuple[str, np.dtype]] = []
        self._max_batch: dict[str, int] = {}
        self._buffers: dict[str, tuple[int, int]] = {}  # tensor name -> (device pointer, capacity in bytes)
        # one context + stream + buffers: held for the whole of each inference (input shapes, copies, outputs)
        self._infer_lock = threading.Lock()

    @classmethod
    def from_artifact(cls, model_path: Path, options: Mapping[str, object], threads: int = 0) -> TensorRtRunner:
        """A manifest entry (``model_path`` is its ONNX, ``options["engine"]`` the engine next to it) or,
        without options, a bare engine file. Whether the engine exists is checked at activation."""
        path = _engine_location(model_path, options)
        script, command = options.get("build_script"), options.get("build_command")
        return cls(path, build_script=str(script) if script else None, build_command=str(command) if command else None,
                   threads=threads)

    # --- availability --------------------------------------------------------------------

    @classmethod
    def require(cls) -> None:
        missing = [m for m in cls.required_modules if importlib.util.find_spec(m) is None]
        if not missing:
            return
        what = {"tensorrt": "tensorrt (TensorRT's Python bindings: on a Jetson they come with JetPack; elsewhere "
                            "pip install 'edgekit[tensorrt]')",
                "cuda": "cuda (cuda-python: pip install cuda-python, the release matching the CUDA major version)"}
        needed = "; ".join(what[m] for m in missing)
        raise BackendUnavailableError(f"backend 'tensorrt' needs the Python module(s) {needed}; "
                                      "it runs only on a machine with an NVIDIA GPU")

    # --- lifecycle -----------------------------------------------------------------------

    def _activate(self) -> None:
        trt = _import_tensorrt()
        cudart = _import_cudart()
        path = self.model_path
        check_engine_file(path, self.build_script, self.build_command)
        self._trt, self._cudart = trt, cudart
        try:
            self._stream = _cuda(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate", BackendUnavailableError)
            self._stream_handle = _native_handle(self._stream)
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
                inputs.append(TensorSpec(name, dtype, tuple(None if d < 0 else d for d in dims)))
                if dims and dims[0] < 0:
                    # profile 0: [min, opt, max] shapes; the batch axis may go up to max[0]
                    self._max_batch[name] = int(engine.get_tensor_profile_shape(name, 0)[2][0])
            else:
                outputs.append((name, dtype))
        self._inputs, self._outputs = inputs, outputs

    def _deactivate(self) -> None:
        """Release everything; best effort (a failing cudaFree here follows an error already raised)."""
        cudart = self._cudart
        if cudart is not None:
            if self._stream is not None:
                cudart.cudaStreamSynchronize(self._stream)
            for pointer, _ in self._buffers.values():
                cudart.cudaFree(pointer)
            if self._stream is not None:
                cudart.cudaStreamDestroy(self._stream)
        self._buffers = {}
        self._stream, self._stream_handle = None, 0
        # context before engine before runtime: each must outlive what was created from it
        self._context = None
        self._engine = None
        self._runtime = None
        self._inputs, self._outputs, self._max_batch = [], [], {}

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
        limit = min((self._max_batch[n] for n in feeds if n in self._max_batch), default=None)
        batches = {int(a.shape[0]) for a in feeds.values() if a.ndim}
        total = batches.pop() if len(batches) == 1 else None
        if limit is None or limit < 1 or total is None or total <= limit:
            return self._infer_once(feeds)
        # a batch above the engine's profile maximum: run it in chunks along the batch axis
        parts = [self._infer_once({n: a[start:start + limit] for n, a in feeds.items()})
                 for start in range(0, total, limit)]
        return {name: np.concatenate([p[name] for p in parts]) for name, _ in self._outputs}

    def _infer_once(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart, context = self._cudart, self._context
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for spec in self._inputs:
            array = feeds[spec.name]
            if not context.set_input_shape(spec.name, tuple(int(d) for d in array.shape)):
                raise InputError(f"{self.model_path.name}: input '{spec.name}' of shape {tuple(array.shape)} is outside "
                                 f"what the engine was built for ({self._profile_text(spec.name)})")
        for spec in self._inputs:
            array = feeds[spec.name]
            pointer = self._device_buffer(spec.name, array.nbytes)
            if array.nbytes:
                _cuda(cudart, cudart.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, h2d, self._stream),
                      f"copying input '{spec.name}' to the GPU (cudaMemcpyAsync)")
            self._set_address(spec.name, pointer)
        results: dict[str, np.ndarray] = {}
        for name, dtype in self._outputs:
            shape = tuple(int(d) for d in context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise OutputError(f"{self.model_path.name}: output '{name}' has a data-dependent shape {list(shape)}, "
                                  "which this runner does not support")
            results[name] = np.empty(shape, dtype=dtype)
            self._set_address(name, self._device_buffer(name, results[name].nbytes))
        _recording_logger(self._trt).errors.clear()
        if not context.execute_async_v3(self._stream_handle):
            raise OutputError(f"{self.model_path.name}: TensorRT failed to enqueue the inference "
                              f"({_first_line(_recording_logger(self._trt).errors)})")
        for name, _ in self._outputs:
            host = results[name]
            if host.nbytes:
                copy = cudart.cudaMemcpyAsync(host.ctypes.data, self._buffers[name][0], host.nbytes, d2h, self._stream)
                _cuda(cudart, copy, f"copying output '{name}' from the GPU (cudaMemcpyAsync)")
        # the inputs stay referenced by `feeds` until the stream has finished reading them
        _cuda(cudart, cudart.cudaStreamSynchronize(self._stream), "running the engine (cudaStreamSynchronize)")
        return results

    # --- helpers -------------------------------------------------------------------------

    def _device_buffer(self, name: str, nbytes: int) -> int:
        """A device buffer of at least ``nbytes`` for tensor ``name``, reused across calls."""
        pointer, capacity = self._buffers.get(name, (0, 0))
        if nbytes <= capacity and pointer:
            return pointer
        cudart = self._cudart
        if pointer:
            self._buffers.pop(name)
            _cuda(cudart, cudart.cudaFree(pointer), f"freeing the GPU buffer of '{name}' (cudaFree)")
        size = max(int(nbytes), 1)
        pointer = int(_cuda(cudart, cudart.cudaMalloc(size),
                            f"allocating {size} bytes of GPU memory for '{name}' (cudaMalloc)"))
        self._buffers[name] = (pointer, size)
        return pointer

    def _set_address(self, name: str, pointer: int) -> None:
        if not self._context.set_tensor_address(name, pointer):
            raise OutputError(f"{self.model_path.name}: TensorRT rejected the device address of tensor '{name}'")

    def _profile_text(self, name: str) -> str:
        try:
            low, _, high = self._engine.get_tensor_profile_shape(name, 0)
            return f"shapes from {list(low)} to {list(high)}"
        except Exception:
            return f"shape {list(self._engine.get_tensor_shape(name))}"


# --- TensorRT / cuda-python plumbing -----------------------------------------------------------

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


def _import_cudart() -> Any:
    """cuda-python's runtime API: ``cuda.bindings.runtime`` (>= 12.6.1 / 11.8.4), else ``cuda.cudart``."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]
        except ImportError as exc:
            raise BackendUnavailableError(f"tensorrt: cuda-python's runtime API cannot be imported ({exc}); "
                                          "install cuda-python (pip install cuda-python)") from None
    return cudart


def _native_handle(obj: Any) -> int:
    """The address a cuda-python object wraps (int(obj) is deprecated from cuda-bindings 12.9.1 on)."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(obj)
    return int(get_cuda_native_handle(obj))


def _cuda(cudart: Any, result: tuple, what: str, error: type[Exception] = OutputError) -> Any:
    """Check a cuda-python ``(err, value…)`` result; return the value (None when there is none)."""
    err, values = result[0], result[1:]
    if err != cudart.cudaError_t.cudaSuccess:
        name = _cuda_error_name(cudart, err)
        if error is OutputError and name in _NO_GPU_ERRORS:
            error = BackendUnavailableError
        hint = "; no usable NVIDIA GPU / driver here" if name in _NO_GPU_ERRORS else ""
        raise error(f"tensorrt: {what} failed with {name}{hint}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _cuda_error_name(cudart: Any, err: Any) -> str:
    try:
        status, name = cudart.cudaGetErrorName(err)
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return str(err)


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
