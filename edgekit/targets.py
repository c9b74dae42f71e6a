"""Deployment target profiles: one TOML file per device, in the repository's top-level ``targets/``.

A profile names the backend, the default precision (and which precisions make sense on that
hardware), the input size, the batch range, threads, where NMS runs, calibration defaults and the
backend builder's own options. Every key is typed and used:

- ``threads``: recorded in the artifact's runtime options; ``Detector.load`` runs with it on the
  device unless the caller passes ``threads``.
- ``batch`` / ``dynamic_batch`` / ``max_batch``: the batch the build is tuned for, and the largest it
  accepts. ``max_batch > 1`` exports a dynamic batch axis (``dynamic_batch`` defaults to it) and gives every
  builder the range (``BuildSource.batch_range`` = (1, batch, max_batch): TensorRT's min/opt/max shapes);
  ``max_batch = 1`` is a static batch 1. ``dynamic_batch = true`` alone: any batch, tuned for ``batch``.
- ``[backend_options]``: declared, with their types, by the backend's builder
  (``BackendBuilder.profile_options``), e.g. ``use_vulkan`` for NCNN, ``device`` for OpenVINO.

Unknown keys (anywhere) and unknown target names fail with a "did you mean".

Where the files live: ``targets/`` at the top of the repository; a wheel ships them as the package
data ``edgekit/profiles/`` (pyproject ``package-dir``), so an installed edgekit finds them there.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError, did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.8-3.10
    import tomli as tomllib  # type: ignore[import-not-found]


class TargetError(EdgekitError):
    """A target name or profile is unknown or malformed."""


PRECISIONS = ("fp32", "fp16", "bf16", "int8")
CALIBRATION_METHODS = ("entropy", "minmax", "percentile", "mse")
#: host: edgekit's numpy NMS after the model; graph: decode + NMS appended to the graph (TensorRT's INMSLayer)
NMS_PLACEMENTS = ("host", "graph")
#: the backends whose builder appends NMS to the graph (``edgekit.convert.graph_nms``)
GRAPH_NMS_BACKENDS = ("tensorrt",)

#: every top-level key and its TOML type (tables are checked by their own sections)
_TOP_LEVEL_KEYS: dict[str, type | tuple[type, ...]] = {
    "description": str, "backend": str, "precision": str, "precisions": list, "input_size": (int, list),
    "batch": int, "dynamic_batch": bool, "max_batch": int, "threads": int, "nms": str,
    "calibration": dict, "backend_options": dict}
_CALIBRATION_KEYS: dict[str, type | tuple[type, ...]] = {"method": str, "images": int, "percentile": (float, int)}


@dataclass(frozen=True)
class Calibration:
    method: str = "mse"
    images: int = 300
    percentile: float = 99.99


@dataclass(frozen=True)
class Target:
    """A validated target profile. ``input_size`` None = keep the checkpoint's size.

    ``batch``: the batch the build is tuned for (TensorRT's opt shape); ``max_batch``: the largest batch the
    artifact accepts (> 1: a dynamic batch axis); ``threads``: the device's inference threads (0 = the backend's
    default), recorded in the artifact.
    """

    name: str
    description: str
    backend: str
    precision: str
    precisions: tuple[str, ...]
    input_size: tuple[int, int] | None = None
    batch: int = 1
    dynamic_batch: bool = False
    max_batch: int = 1
    threads: int = 0
    nms: str = "host"
    calibration: Calibration = field(default_factory=Calibration)
    backend_options: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def batch_range(self) -> tuple[int, int, int]:
        """(min, opt, max) batch of the build: (1, batch, max_batch) with a dynamic batch axis, else all ``batch``."""
        return (1, self.batch, self.max_batch) if self.dynamic_batch else (self.batch, self.batch, self.batch)

    def runtime_options(self) -> dict[str, Any]:
        """What the artifact carries to the device from this profile (``Manifest.runtime``)."""
        return {"threads": self.threads}


def profiles_dir() -> Path:
    """The folder of the built-in profiles: an installed wheel's package data ``edgekit/profiles``, else the
    repository's ``targets/`` (a source checkout or an editable install)."""
    package = Path(__file__).resolve().parent
    installed = package / "profiles"
    return installed if installed.is_dir() else package.parent / "targets"


def target_names() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.toml"))


def load_target(name_or_path: str | Path) -> Target:
    """A built-in target by name, or a profile TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        name = path.stem
    else:
        name = str(name_or_path)
        path = profiles_dir() / f"{name}.toml"
        if not path.is_file():
            raise TargetError(f"unknown target {name!r}{did_you_mean(name, target_names())} "
                              f"(known: {', '.join(target_names())}; or give a path to a .toml profile)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TargetError(f"{path}: not valid TOML ({exc})") from None
    return parse_target(name, data, str(path))


def _type_name(expected: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
             dict: "a table"}
    kinds = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _check_type(source: str, key: str, value: Any, expected: type | tuple[type, ...]) -> None:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    # TOML true/false are Python bools, and bool is an int subclass: `threads = true` is not 1
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        raise TargetError(f"{source}: {key} must be {_type_name(expected)}, got {value!r}")


def _check_keys(source: str, table: Mapping[str, Any], known: Mapping[str, Any], prefix: str = "") -> None:
    for key in table:
        if key not in known:
            raise TargetError(f"{source}: unknown key '{prefix}{key}'"
                              f"{did_you_mean(prefix + key, {prefix + k for k in known})}")


def parse_target(name: str, data: dict[str, Any], source: str) -> Target:
    """Validate a profile's data; each error names the file and the key."""
    from edgekit.runtime.backends import backend_names

    _check_keys(source, data, _TOP_LEVEL_KEYS)
    for key in ("description", "backend", "precision"):
        if key not in data:
            raise TargetError(f"{source}: missing required key {key!r}")
    for key, value in data.items():
        _check_type(source, key, value, _TOP_LEVEL_KEYS[key])
    backend = data["backend"]
    known_backends = set(backend_names()) | set(_builder_names())
    if backend not in known_backends:
        raise TargetError(f"{source}: backend {backend!r} is not one of {', '.join(sorted(known_backends))}"
                          f"{did_you_mean(str(backend), known_backends)}")
    precisions = tuple(data.get("precisions", [data["precision"]]))
    for precision in (data["precision"], *precisions):
        if precision not in PRECISIONS:
            raise TargetError(f"{source}: precision {precision!r} is not one of {', '.join(PRECISIONS)}"
                              f"{did_you_mean(str(precision), set(PRECISIONS))}")
    if data["precision"] not in precisions:
        raise TargetError(f"{source}: precision {data['precision']!r} is not in its own precisions list {list(precisions)}")
    size = data.get("input_size")
    input_size = None
    if size is not None:
        sizes = [size, size] if isinstance(size, int) else size
        if (not isinstance(sizes, list) or len(sizes) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 and s % 32 == 0 for s in sizes)):
            raise TargetError(f"{source}: input_size must be a multiple of 32 or [height, width], got {size!r}")
        input_size = (sizes[0], sizes[1])
    batch, max_batch, threads = data.get("batch", 1), data.get("max_batch", data.get("batch", 1)), data.get("threads", 0)
    for key, value, least in (("batch", batch, 1), ("max_batch", max_batch, 1), ("threads", threads, 0)):
        if value < least:
            raise TargetError(f"{source}: {key} must be an integer >= {least}, got {value!r}")
    # the export writes batch 1 or a dynamic batch axis: any batch above 1 is built dynamic
    dynamic_batch = data.get("dynamic_batch", max_batch > 1)
    if max_batch < batch:
        raise TargetError(f"{source}: max_batch ({max_batch}) must be >= batch ({batch})")
    if max_batch > 1 and not dynamic_batch:
        raise TargetError(f"{source}: batch {batch} / max_batch {max_batch} need a dynamic batch axis (edgekit "
                          "exports batch 1 or a dynamic batch); set dynamic_batch = true, or batch = max_batch = 1")
    nms = data.get("nms", "host")
    check_nms_placement(nms, backend, source)
    calibration_data = data.get("calibration", {})
    _check_keys(source, calibration_data, _CALIBRATION_KEYS, "calibration.")
    for key, value in calibration_data.items():
        _check_type(source, f"calibration.{key}", value, _CALIBRATION_KEYS[key])
    calibration = Calibration(**calibration_data)
    if calibration.method not in CALIBRATION_METHODS:
        raise TargetError(f"{source}: calibration.method {calibration.method!r} is not one of "
                          f"{', '.join(CALIBRATION_METHODS)}{did_you_mean(calibration.method, set(CALIBRATION_METHODS))}")
    options = check_backend_options(source, backend, data.get("backend_options", {}))
    return Target(name=name, description=data["description"], backend=backend, precision=data["precision"],
                  precisions=precisions, input_size=input_size, batch=batch, dynamic_batch=dynamic_batch,
                  max_batch=max_batch, threads=threads, nms=nms, calibration=calibration, backend_options=options,
                  source=source)


def check_nms_placement(nms: str, backend: str, source: str) -> None:
    """TargetError (one line naming ``source``) unless ``backend`` can place NMS where ``nms`` says."""
    if nms not in NMS_PLACEMENTS:
        raise TargetError(f"{source}: nms {nms!r} is not supported (expected one of {', '.join(NMS_PLACEMENTS)})")
    if nms == "graph" and backend not in GRAPH_NMS_BACKENDS:
        raise TargetError(f"{source}: nms \"graph\" is built for {', '.join(GRAPH_NMS_BACKENDS)} (NMS as an engine "
                          f"layer); backend {backend!r} runs edgekit's host NMS (nms = \"host\")")


def _builder_names() -> list[str]:
    from edgekit.convert.builders import builder_names

    return builder_names()


def check_backend_options(source: str, backend: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``[backend_options]`` against the options the backend's builder declares (``profile_options``): unknown
    keys (did you mean), wrong types and values outside an option's choices are errors naming the key.

    The builder module imports its converter (torch, pnnx …); where that is missing (a device listing its
    profiles) the options cannot be checked here, and ``convert`` — which needs the builder — checks them.
    """
    from edgekit.convert.builders import get_builder_class

    try:
        declared = get_builder_class(backend).profile_options
    except ImportError:
        return dict(options)
    _check_keys(source, options, declared, "backend_options.")
    for key, value in options.items():
        option = declared[key]
        _check_type(source, f"backend_options.{key}", value, option.type)
        if option.choices and value not in option.choices:
            raise TargetError(f"{source}: backend_options.{key} {value!r} is not one of "
                              f"{', '.join(map(str, option.choices))}{did_you_mean(str(value), set(map(str, option.choices)))}")
    return dict(options)
