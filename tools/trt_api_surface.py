"""Which TensorRT Python names each bindings wheel has: the surface edgekit's TensorRT code is checked against.

    python tools/trt_api_surface.py [--wheel-dir DIR] [--out tools/trt_api_surface.json]

Downloads the bindings wheels (``pip download --no-deps``; nothing is imported or installed), runs ``strings``
on each wheel's ``tensorrt.so`` and records, for every name in :data:`WATCHED`, whether the module's strings
hold it as a whole identifier (pybind11 keeps every bound name as a C string). WATCHED = what edgekit calls
(``edgekit.runtime.backends.tensorrt.TENSORRT_RUNTIME_API``, ``edgekit.convert.tensorrt_engine``'s build API)
plus the names TensorRT removed that edgekit must not rely on. ``tests/runtime/test_tensorrt_api.py`` compares
edgekit's names with the committed JSON and re-extracts it (skipping offline).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: family -> the pip requirement of its bindings wheel (cp311 x86_64: the names are the same on aarch64)
WHEELS = {"8.6": "tensorrt-bindings==8.6.1", "10.x": "tensorrt-cu12-bindings==10.3.0",
          "11.x": "tensorrt-cu12-bindings==11.4.0.106"}
#: names TensorRT removed along the way (edgekit must not use them where they are gone)
REMOVED = ("set_dynamic_range", "IInt8EntropyCalibrator2", "int8_calibrator", "FP16", "EXPLICIT_BATCH",
           "execute_async_v2", "get_binding_index", "max_workspace_size", "STRONGLY_TYPED")


def watched() -> list[str]:
    from edgekit.convert.tensorrt_engine import TENSORRT_BUILD_API
    from edgekit.runtime.backends.tensorrt import TENSORRT_RUNTIME_API

    names = set(TENSORRT_RUNTIME_API) | set(REMOVED)
    for group in TENSORRT_BUILD_API.values():
        names |= set(group)
    return sorted(names)


def surface_of(wheel: Path, names: list[str]) -> dict[str, bool]:
    with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory() as tmp:
        member = next(m for m in archive.namelist() if m.endswith("tensorrt.so") or ("/tensorrt." in m and ".so" in m))
        path = Path(archive.extract(member, tmp))
        strings = set(subprocess.run(["strings", "-n", "3", str(path)], capture_output=True, text=True,
                                     check=True).stdout.split("\n"))
    return {name: name in strings for name in names}


def extract(wheel_dir: Path) -> dict:
    names = watched()
    result: dict = {"source": "strings -n 3 on tensorrt.so of each bindings wheel from PyPI (tools/trt_api_surface.py)",
                    "wheels": WHEELS, "surface": {}}
    for family, requirement in WHEELS.items():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", requirement, "-d",
                        str(wheel_dir)], check=True, timeout=600)
        distribution, version = requirement.split("==")
        stem = distribution.replace("-", "_") + "-" + version
        wheel = next(p for p in wheel_dir.glob("*.whl") if p.name.startswith(stem + "-"))
        result["surface"][family] = surface_of(wheel, names)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel-dir", type=Path, default=Path(tempfile.gettempdir()) / "trtwheels")
    parser.add_argument("--out", type=Path, default=REPO / "tools" / "trt_api_surface.json")
    args = parser.parse_args(argv)
    args.wheel_dir.mkdir(parents=True, exist_ok=True)
    data = extract(args.wheel_dir)
    args.out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
