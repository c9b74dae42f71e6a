"""OpenVINO runner: Intel CPUs and iGPUs, from an IR (``.xml`` + ``.bin``) or an ``.onnx`` file.

Inference precision is the one setting that changes results, so it is always explicit here:
OpenVINO's CPU plugin computes in **bf16 by default on CPUs with native bf16** (AVX512_BF16 /
AMX), whatever precision the weights are stored in. edgekit's ``fp32`` therefore sets
``INFERENCE_PRECISION_HINT=f32``; ``bf16`` sets ``bf16`` on purpose; ``f16`` asks for fp16
compute (native on iGPUs; a CPU without fp16 arithmetic ignores it and computes in f32).
:meth:`OpenVinoRunner.runtime_precisions` reports what the compiled model really runs in.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import BackendUnavailableError, EdgekitError, ModelFileError
from edgekit.runtime.backends.base import Runner, TensorSpec

#: accepted spellings of an inference precision -> OpenVINO's element type name for the hint
_PRECISION_HINTS = {"f32": "f32", "fp32": "f32", "bf16": "bf16", "f16": "f16", "fp16": "f16"}
_PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")
#: devices that dispatch to other devices ("AUTO:GPU,CPU", "HETERO:GPU,CPU", …); never listed as available
_VIRTUAL_DEVICES = ("AUTO", "HETERO", "MULTI", "BATCH")


def device_present(device: str, available: Sequence[str]) -> bool:
    """Whether OpenVINO ``device`` ("CPU", "GPU", "GPU.1" …) is among ``available`` (``Core().available_devices``);
    a dispatching device (AUTO, HETERO …) counts as present: OpenVINO resolves it at compile time."""
    requested = device.upper()
    base = re.split(r"[.:]", requested, maxsplit=1)[0]
    if base in _VIRTUAL_DEVICES:
        return True
    listed = [d.upper() for d in available]
    return requested in listed or base in {re.split(r"[.]", d)[0] for d in listed}


def openvino_error_text(exc: BaseException) -> str:
    """The informative part of an OpenVINO exception, on one line.

    OpenVINO prefixes its messages with source locations ("Exception from src/…:84:",
    "Check 'x' failed at …:", "FrontEnd API failed with …:"); those say where in OpenVINO the
    check lives, not what is wrong with the model, so they are dropped.
    """
    noise = ("Exception from ", "Check '", "FrontEnd API failed with", "Summary:")
    lines = [line.strip() for line in str(exc).splitlines()]
    useful = [line for line in lines if line and not line.startswith(noise)]
    text = "; ".join(useful) if useful else type(exc).__name__
    return text[:400]


def unconverted_operators(text: str) -> tuple[list[str], list[str]]:
    """Operators named in an OpenVINO frontend's "Model wasn't fully converted" report.

    Returns (operators without any conversion rule, operators whose conversion failed), as
    OpenVINO spells them: ``domain.OpType`` for custom domains, ``OpType-<opset>`` for the
    default ONNX domain (e.g. ``["com.example.FancyOp"]``, ``["Resize-17"]``).
    """
    missing: list[str] = []
    failed: list[str] = []
    for line in str(text).splitlines():
        line = line.strip()
        for prefix, bucket in (("-- No conversion rule found for operations:", missing),
                               ("-- Conversion is failed for:", failed)):
            if line.startswith(prefix):
                bucket.extend(op.strip() for op in line[len(prefix):].split(",") if op.strip())
    return missing, failed


def normalize_precision_hint(value: object) -> str | None:
    """"f32" / "fp32" -> "f32", "bf16", "f16" / "fp16" -> "f16", None -> None; anything else raises EdgekitError."""
    if value is None:
        return None
    hint = _PRECISION_HINTS.get(str(value).lower())
    if hint is None:
        raise EdgekitError(f"openvino: inference_precision {value!r} is not supported; "
                           f"expected one of f32, bf16, f16 (or None for OpenVINO's device default)")
    return hint


class OpenVinoRunner(Runner):
    """Runs an OpenVINO IR (``model.xml`` with ``model.bin`` beside it) or an ``.onnx`` file.

    threads: ``INFERENCE_NUM_THREADS`` on CPU devices (0 = OpenVINO's default, one per core).
    device: ``"CPU"`` (default), ``"GPU"``, ``"GPU.1"``, ``"AUTO"`` …; an unknown or absent device
    raises BackendUnavailableError naming the devices this machine has.
    performance_hint: ``"LATENCY"`` (one stream: fastest single image, what Detector needs) or
    ``"THROUGHPUT"`` (several streams: best images/s with :meth:`infer_many`).
    inference_precision: ``"f32"`` (default: edgekit's fp32 must not silently run in bf16),
    ``"bf16"``, ``"f16"``, or None for OpenVINO's device default.

    Output names are the model's tensor names, which edgekit's builder sets to the ONNX graph's
    output names (the spec's ``head.output_names``).

    Threads: one runner may serve many threads. An OpenVINO InferRequest runs one inference at a
    time, so each :meth:`infer` borrows a request from a pool of at most the compiled model's
    ``OPTIMAL_NUMBER_OF_INFER_REQUESTS`` (1 under LATENCY: its one stream runs one request at a time
    anyway; one per stream under THROUGHPUT); further callers wait for a request to come back.
    """

    schedules_own_streams = True

    name = "openvino"
    required_modules = ("openvino",)
    pip_extra = "openvino"

    def __init__(self, model_path: str | Path, threads: int = 0, device: str = "CPU",
                 performance_hint: str = "LATENCY", inference_precision: str | None = "f32") -> None:
        super().__init__(model_path)
        self.threads = int(threads)
        self.device = str(device)
        hint = str(performance_hint).upper()
        if hint not in _PERFORMANCE_HINTS:
            raise EdgekitError(f"openvino: performance_hint {performance_hint!r} is not supported; "
                               f"expected one of {', '.join(_PERFORMANCE_HINTS)}")
        self.performance_hint = hint
        self.inference_precision = normalize_precision_hint(inference_precision)
        self._core: Any = None
        self._compiled: Any = None
        self._requests: _RequestPool | None = None
        self._output_ports: list[tuple[str, Any]] = []

    @classmethod
    def from_artifact(cls, model_path: Path, options: Mapping[str, object], threads: int = 0) -> OpenVinoRunner:
        """Options written by the OpenVINO builder: ``inference_precision`` (None in the entry means
        OpenVINO's default), ``device``, ``performance_hint``; absent keys take the constructor defaults.
        A bare ``.onnx`` opened without options runs in f32."""
        kwargs: dict[str, Any] = {}
        for key in ("device", "performance_hint", "inference_precision"):
            if key in options:
                kwargs[key] = options[key]
        return cls(model_path, threads=threads, **kwargs)

    # --- lifecycle -----------------------------------------------------------------------

    def _activate(self) -> None:
        import openvino as ov

        self._core = ov.Core()
        model = self._read_model()
        self._check_device()
        config: dict[str, Any] = {"PERFORMANCE_HINT": self.performance_hint}
        if self.inference_precision is not None:
            config["INFERENCE_PRECISION_HINT"] = self.inference_precision
        if self.threads > 0 and self.device.upper().startswith("CPU"):
            config["INFERENCE_NUM_THREADS"] = self.threads  # a CPU-plugin property: GPUs reject it
        try:
            self._compiled = self._core.compile_model(model, self.device, config)
        except RuntimeError as exc:
            text = openvino_error_text(exc)
            if "Cannot load library" in text or "not registered" in text:
                raise BackendUnavailableError(self._device_message(f"cannot be used here ({text[:200]})")) from None
            raise ModelFileError(f"{self.model_path}: OpenVINO cannot compile this model for {self.device} ({text})") from None
        limit = int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self._requests = _RequestPool(self._compiled, limit)
        self._output_ports = [(port.get_any_name(), port) for port in self._compiled.outputs]

    def _read_model(self) -> Any:
        """Read the IR or ONNX file; every failure becomes one ModelFileError line naming the file."""
        path = self.model_path
        if not path.is_file():
            raise ModelFileError(f"{path}: OpenVINO model file not found")
        suffix = path.suffix.lower()
        if suffix not in (".xml", ".onnx"):
            raise ModelFileError(f"{path}: expected an OpenVINO IR (.xml with its .bin) or an .onnx file")
        try:
            if suffix == ".xml":
                weights = path.with_suffix(".bin")
                if not weights.is_file():
                    raise ModelFileError(f"{path}: its weights file {weights.name} is missing (it must sit beside the .xml)")
                return self._core.read_model(str(path), str(weights))
            # The ONNX frontend directly: core.read_model would also try every other frontend
            # (TensorFlow, Paddle …) on a corrupt file and print their parse errors to stderr.
            from openvino.frontend import FrontEndManager

            frontend = FrontEndManager().load_by_framework("onnx")
            return frontend.convert(frontend.load(str(path)))
        except ModelFileError:
            raise
        except Exception as exc:  # RuntimeError, GeneralFailure, OpConversionFailure …
            missing, failed = unconverted_operators(str(exc))
            if missing or failed:
                what = (f"no OpenVINO conversion rule for operator(s) {', '.join(missing)}" if missing
                        else f"conversion failed for operator(s) {', '.join(failed)}")
                raise ModelFileError(f"{path}: {what}") from None
            raise ModelFileError(f"{path}: OpenVINO cannot read this model ({openvino_error_text(exc)})") from None

    def _check_device(self) -> None:
        if not device_present(self.device, self._core.available_devices):
            raise BackendUnavailableError(self._device_message("is not available on this machine"))

    def _device_message(self, problem: str) -> str:
        devices = ", ".join(self._core.available_devices) or "none"
        return f"openvino: device {self.device!r} {problem}; available devices: {devices}"

    def _deactivate(self) -> None:
        self._requests = None
        self._compiled = None
        self._core = None
        self._output_ports = []

    # --- model description ---------------------------------------------------------------

    def input_specs(self) -> list[TensorSpec]:
        self.activate()
        specs = []
        for port in self._compiled.inputs:
            shape = port.get_partial_shape()
            dims = tuple(d.get_length() if d.is_static else None for d in shape)
            specs.append(TensorSpec(port.get_any_name(), np.dtype(port.get_element_type().to_dtype()), dims))
        return specs

    def output_names(self) -> list[str]:
        self.activate()
        return [name for name, _ in self._output_ports]

    # --- inference -----------------------------------------------------------------------

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._live(self._requests).lend() as request:
            # share_outputs=False (the default) copies the results out of the request's buffers,
            # which the request's next inference (maybe another thread's) overwrites.
            results = request.infer(feeds)
            return {name: np.asarray(results[port]) for name, port in self._output_ports}

    def infer_many(self, feeds_list: Sequence[Mapping[str, np.ndarray]], jobs: int = 0) -> list[dict[str, np.ndarray]]:
        """Run many independent feeds asynchronously; results come back in input order.

        Runs ``jobs`` infer requests in parallel (0 = the
        compiled model's ``OPTIMAL_NUMBER_OF_INFER_REQUESTS``: 1 under the LATENCY hint, one
        per stream under THROUGHPUT). This is how OpenVINO reaches its best images/s on a
        stream of images; Detector does not use it yet (it runs one batch at a time).
        Each feed is checked exactly like :meth:`infer`'s.
        """
        with self.in_use():
            return self._infer_many([self.check_feeds(feeds) for feeds in feeds_list], jobs)

    def _infer_many(self, checked: list[dict[str, np.ndarray]], jobs: int) -> list[dict[str, np.ndarray]]:
        if not checked:
            return []
        if jobs <= 0:
            jobs = int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        ports = self._output_ports
        # Plain infer requests, started in waves of ``jobs`` and read back in the calling thread.
        # (AsyncInferQueue with a Python callback crashed the interpreter at exit now and then here:
        # "Resource deadlock avoided" when its callback threads were torn down.)
        requests = [self._compiled.create_infer_request() for _ in range(max(1, min(jobs, len(checked))))]
        results: list[dict[str, np.ndarray]] = []
        for start in range(0, len(checked), len(requests)):
            wave = list(zip(requests, checked[start:start + len(requests)]))
            for request, feeds in wave:
                request.start_async(feeds)
            for request, _ in wave:
                request.wait()
                # copy: the request's output buffers are reused by its next job
                results.append({name: np.array(request.get_tensor(port).data, copy=True) for name, port in ports})
        return results

    def runtime_precisions(self, layer_type: str | None = None) -> Counter[str]:
        """How many executed operations ran in each precision (``"f32"``, ``"bf16"``, ``"i8"`` …).

        Read from the compiled model's runtime graph (``rt_info['runtimePrecision']``): what the
        plugin really executes after fusion, not what the IR asked for. ``layer_type`` keeps only
        one kind of runtime layer, e.g. ``"Convolution"`` (``rt_info['layerType']``).

        Read it with one caveat, measured on OpenVINO 2026.4's CPU plugin: a convolution whose
        weights stay compressed (an fp16 IR) reports ``f16`` although its arithmetic is f32 (its
        outputs equal an f32 run of the fp16-rounded weights to ~1e-7); bf16 and f32 compute
        report ``bf16`` / ``f32`` as expected.
        """
        self.activate()
        counts: Counter[str] = Counter()
        for op in self._compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            if layer_type is not None and str(info["layerType"].astype(str)) != layer_type:
                continue
            if "runtimePrecision" in info:
                counts[str(info["runtimePrecision"].astype(str))] += 1
        return counts

    def compiled_property(self, name: str) -> Any:
        """A property of the compiled model, e.g. ``"INFERENCE_PRECISION_HINT"`` or ``"NUM_STREAMS"``."""
        self.activate()
        return self._compiled.get_property(name)


class _RequestPool:
    """Infer requests of one compiled model, each lent to one caller at a time.

    An InferRequest holds its inputs and outputs and runs one inference at a time ("Infer Request
    is busy" otherwise), so concurrent callers need one each. Requests are created on demand up to
    ``limit`` (the first at construction, so a single-threaded caller always reuses that one and
    pays no creation cost per call); a caller finding all of them lent out waits for one.
    """

    def __init__(self, compiled: Any, limit: int) -> None:
        self._compiled = compiled
        self._limit = max(1, int(limit))
        self._idle: list[Any] = [compiled.create_infer_request()]
        self._created = 1
        self._available = threading.Condition()

    @property
    def limit(self) -> int:
        return self._limit

    @contextmanager
    def lend(self) -> Iterator[Any]:
        with self._available:
            while not self._idle and self._created >= self._limit:
                self._available.wait()
            request = self._idle.pop() if self._idle else None
            if request is None:
                self._created += 1  # counted now, created below outside the lock
        if request is None:
            try:
                request = self._compiled.create_infer_request()
            except BaseException:
                with self._available:
                    self._created -= 1
                    self._available.notify()
                raise
        try:
            yield request
        finally:
            with self._available:
                self._idle.append(request)
                self._available.notify()
