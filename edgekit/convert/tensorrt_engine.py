"""``edgekit build-engine ARTIFACT``: the TensorRT engine of an artifact, built on the device through the Python API.

Does what ``tensorrt_build.sh`` does with trtexec, for the TensorRT the device has (8.5 to 11.x): picks that
version's build from the manifest entry (``options["builds"]``, the same ONNX and settings the script uses),
parses the ONNX, sets only what that version's API has (:data:`TENSORRT_BUILD_API`: ``BuilderFlag.FP16`` /
``INT8`` and ``int8_calibrator`` exist up to 10.x and are gone in 11.x, where the ONNX carries the types),
builds, and writes ``<engine>`` plus its record ``<engine>.json`` (TensorRT version, GPU name, the source
ONNX and its sha256) that the runner checks. Imports neither torch nor onnx: it runs on the board.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekit.atomic_io import write_bytes_atomic
from edgekit.convert.tensorrt_versions import calibration_header, family_for, parse_version
from edgekit.errors import BackendUnavailableError, ConversionError, InputError
from edgekit.runtime.artifact import read_manifest, sha256_file
from edgekit.runtime.backends.tensorrt import plain_file_name

#: TensorRT Python names the build uses, by the families that have them (checked against the bindings wheels
#: by tests/runtime/test_tensorrt_api.py)
TENSORRT_BUILD_API = {
    "all": ("create_network", "OnnxParser", "create_builder_config", "set_memory_pool_limit", "clear_flag",
            "set_flag", "TF32", "create_optimization_profile", "set_shape", "add_optimization_profile",
            "create_timing_cache", "set_timing_cache", "build_serialized_network", "get_timing_cache", "get_error",
            "MemoryPoolType", "WORKSPACE", "DeviceType", "NetworkDefinitionCreationFlag"),
    "weak_typing": ("FP16",),  # 8.5 - 10.x only
    "implicit_int8": ("int8_calibrator", "IInt8EntropyCalibrator2", "get_batch_size", "get_batch",
                      "read_calibration_cache", "write_calibration_cache"),  # 8.5 - 10.x only
    "dla": ("default_device_type", "DLA_core", "GPU_FALLBACK"),
}


def build_engine(artifact: str | Path, precision: str | None = None,
                 progress: Callable[[str], None] = lambda line: None) -> Path:
    """Build the engine of the artifact's TensorRT entry (``precision``: which one, default the first)."""
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    entry = manifest.find("tensorrt", precision)
    builds = entry.options.get("builds")
    if not isinstance(builds, dict):
        raise InputError(f"{artifact}: this artifact predates per-version TensorRT builds; re-convert it with this "
                         "edgekit, or run its ./tensorrt_build.sh")
    for build in builds.values():  # file names first: a hostile manifest never gets a file outside the folder read
        for key in ("onnx", "calib_cache"):
            if isinstance(build, dict) and build.get(key) is not None:
                plain_file_name(build[key], artifact)
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(f"build-engine needs TensorRT's Python bindings (on a Jetson: apt install "
                                      f"python3-libnvinfer; {exc})") from None
    version = parse_version(str(trt.__version__))
    family = family_for(version)
    build = builds.get(family.name)
    if not isinstance(build, dict):
        raise InputError(f"{artifact}: no build for TensorRT {family.name} in the manifest")
    onnx_file = artifact / plain_file_name(build.get("onnx"), artifact)
    engine = artifact / plain_file_name(entry.options.get("engine"), artifact)
    progress(f"build-engine  TensorRT {version} ({family.name}): {onnx_file.name} -> {engine.name}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if explicit is not None and version.major < 10:  # 8.x: explicit batch is opt-in (the ONNX parser needs it)
        flags |= 1 << int(explicit)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_file.read_bytes()):  # a failed parse records at least one error: quote the first
        raise ConversionError(f"{onnx_file}: TensorRT {version}'s ONNX parser refused it: "
                              f"{' '.join(str(parser.get_error(0)).split())[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(entry.options.get("workspace_mib", 1024)) << 20)
    config.clear_flag(trt.BuilderFlag.TF32)  # fp32 parity: no 10-bit-mantissa products (trtexec --noTF32)
    for flag in (family.fp16_flags if entry.precision == "fp16" else family.int8_flags if entry.precision == "int8"
                 else ()):
        config.set_flag(getattr(trt.BuilderFlag, flag.lstrip("-").upper()))
    if build.get("dla_core") is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(build["dla_core"])
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if build.get("calib_cache"):
        cache = (artifact / plain_file_name(build["calib_cache"], artifact)).read_text(encoding="utf-8").split("\n", 1)[1]
        config.int8_calibrator = _cache_calibrator(trt, (calibration_header(version) + "\n" + cache).encode())
    batch = entry.options.get("batch") or {}
    if batch.get("dynamic"):
        name = manifest.spec.input_name
        h, w = manifest.spec.input_size
        profile = builder.create_optimization_profile()
        profile.set_shape(name, (1, 3, h, w), (int(batch["opt"]), 3, h, w), (int(batch["max"]), 3, h, w))
        config.add_optimization_profile(profile)
    timing_path = artifact / "timing.cache"
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ConversionError(f"{onnx_file}: TensorRT {version} could not build the engine (see its log above)")
    write_bytes_atomic(engine, bytes(serialized))
    write_bytes_atomic(timing_path, bytes(config.get_timing_cache().serialize()))
    record = {"format": "edgekit-tensorrt-engine", "tensorrt_number": version.number, "tensorrt": str(trt.__version__),
              "gpu": gpu_name(), "onnx": onnx_file.name, "onnx_sha256": sha256_file(onnx_file),
              "built_by": "edgekit build-engine"}
    write_bytes_atomic(engine.with_name(engine.name + ".json"), (json.dumps(record, indent=1) + "\n").encode())
    progress(f"build-engine  wrote {engine.name} ({engine.stat().st_size / 1e6:.1f} MB) on {record['gpu']}")
    return engine


def _cache_calibrator(trt: Any, cache: bytes) -> Any:
    """An entropy calibrator that only serves the cache (DLA's implicit int8 on <= 10.x): no images on the device."""

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: Any) -> None:
            return None  # never asked: the cache covers every tensor

        def read_calibration_cache(self) -> bytes:
            return cache

        def write_calibration_cache(self, data: Any) -> None:
            return None

    return CacheCalibrator()


def gpu_name() -> str:
    """The CUDA device's name (cudaGetDeviceProperties), else the board's (/proc/device-tree/model), else unknown."""
    from edgekit.runtime.backends.tensorrt import CudaRuntime

    try:
        return CudaRuntime.load().device_name()
    except Exception:
        try:
            return Path("/proc/device-tree/model").read_text(errors="replace").strip("\0\n ")
        except OSError:
            return "unknown"
