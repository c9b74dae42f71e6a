"""Deployment target profiles: one TOML file per device, shipped inside the package.

A profile names the backend, the default precision (and which precisions make sense on that
hardware), the input size, batch, threads, where NMS runs, calibration defaults and options
passed to the backend. Unknown keys and unknown target names fail with a "did you mean".
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError, did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class TargetError(EdgekitError):
    """A target name or profile is unknown or malformed."""


PRECISIONS = ("fp32", "fp16", "bf16", "int8")
CALIBRATION_METHODS = ("entropy", "minmax", "percentile", "mse")
NMS_PLACEMENTS = ("host",)  # NMS inside the graph is not built yet; host = edgekit's numpy NMS

_TOP_LEVEL_KEYS = {"description", "backend", "precision", "precisions", "input_size", "batch", "dynamic_batch",
                   "max_batch", "threads", "nms", "calibration", "backend_options"}
_CALIBRATION_KEYS = {"method", "images", "percentile"}


@dataclass(frozen=True)
class Calibration:
    method: str = "mse"
    images: int = 300
    percentile: float = 99.99


@dataclass(frozen=True)
class Target:
    """A validated target profile. ``input_size`` None = keep the checkpoint's size."""

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


def _profiles_dir() -> Path:
    return Path(str(resources.files("edgekit") / "targets"))


def target_names() -> list[str]:
    return sorted(p.stem for p in _profiles_dir().glob("*.toml"))


def load_target(name_or_path: str | Path) -> Target:
    """A built-in target by name, or a profile TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        name = path.stem
    else:
        name = str(name_or_path)
        path = _profiles_dir() / f"{name}.toml"
        if not path.is_file():
            raise TargetError(f"unknown target {name!r}{did_you_mean(name, target_names())} "
                              f"(known: {', '.join(target_names())}; or give a path to a .toml profile)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TargetError(f"{path}: not valid TOML ({exc})") from None
    return parse_target(name, data, str(path))


def parse_target(name: str, data: dict[str, Any], source: str) -> Target:
    """Validate a profile's data; each error names the file and the key."""
    from edgekit.runtime.backends import backend_names

    for key in data:
        if key not in _TOP_LEVEL_KEYS:
            raise TargetError(f"{source}: unknown key {key!r}{did_you_mean(key, _TOP_LEVEL_KEYS)}")
    for key in ("description", "backend", "precision"):
        if key not in data:
            raise TargetError(f"{source}: missing required key {key!r}")
    backend = data["backend"]
    known_backends = set(backend_names()) | {"tensorrt"}
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
                or not all(isinstance(s, int) and s > 0 and s % 32 == 0 for s in sizes)):
            raise TargetError(f"{source}: input_size must be a multiple of 32 or [height, width], got {size!r}")
        input_size = (sizes[0], sizes[1])
    for key in ("batch", "max_batch", "threads"):
        value = data.get(key, 0 if key == "threads" else 1)
        if not isinstance(value, int) or value < (0 if key == "threads" else 1):
            raise TargetError(f"{source}: {key} must be an integer >= {0 if key == 'threads' else 1}, got {value!r}")
    nms = data.get("nms", "host")
    if nms not in NMS_PLACEMENTS:
        raise TargetError(f"{source}: nms {nms!r} is not supported (expected one of {', '.join(NMS_PLACEMENTS)})")
    calibration_data = data.get("calibration", {})
    if not isinstance(calibration_data, dict):
        raise TargetError(f"{source}: [calibration] must be a table")
    for key in calibration_data:
        if key not in _CALIBRATION_KEYS:
            raise TargetError(f"{source}: unknown key 'calibration.{key}'"
                              f"{did_you_mean('calibration.' + key, {'calibration.' + k for k in _CALIBRATION_KEYS})}")
    calibration = Calibration(**calibration_data)
    if calibration.method not in CALIBRATION_METHODS:
        raise TargetError(f"{source}: calibration.method {calibration.method!r} is not one of "
                          f"{', '.join(CALIBRATION_METHODS)}{did_you_mean(calibration.method, set(CALIBRATION_METHODS))}")
    options = data.get("backend_options", {})
    if not isinstance(options, dict):
        raise TargetError(f"{source}: [backend_options] must be a table")
    return Target(name=name, description=str(data["description"]), backend=backend, precision=data["precision"],
                  precisions=precisions, input_size=input_size, batch=data.get("batch", 1),
                  dynamic_batch=bool(data.get("dynamic_batch", False)), max_batch=data.get("max_batch", 1),
                  threads=data.get("threads", 0), nms=nms, calibration=calibration, backend_options=dict(options),
                  source=source)
