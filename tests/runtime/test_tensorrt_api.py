"""The TensorRT API edgekit calls exists in the bindings of every version it supports; engine records; chunking.

The surface (``tools/trt_api_surface.json``) is extracted by ``tools/trt_api_surface.py`` from the 8.6 / 10.3 /
11.4 bindings wheels (``strings`` on ``tensorrt.so``, nothing imported); one test re-extracts it and skips
offline. No GPU, no TensorRT import: these checks run everywhere.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import numpy as np
import pytest

from edgekit.convert.tensorrt_engine import TENSORRT_BUILD_API
from edgekit.errors import ModelFileError
from edgekit.runtime.artifact import sha256_file
from edgekit.runtime.backends.tensorrt import (
    TENSORRT_RUNTIME_API,
    _pad_rows,
    check_engine_record,
    chunk_plan,
)
from tests.conftest import REPO_ROOT

SURFACE = json.loads((REPO_ROOT / "tools" / "trt_api_surface.json").read_text())["surface"]


def test_every_runtime_name_is_in_every_version_s_bindings():
    for family, names in SURFACE.items():
        missing = [n for n in TENSORRT_RUNTIME_API if not names.get(n)]
        assert not missing, (family, missing)


def test_the_runner_uses_exactly_the_names_it_declares():
    source = (REPO_ROOT / "edgekit" / "runtime" / "backends" / "tensorrt.py").read_text()
    for name in TENSORRT_RUNTIME_API:
        assert re.search(rf"(\.{name}\b|def {name}\()", source), name  # called, or a callback it defines


def test_the_build_uses_weak_typing_and_calibrators_only_where_they_exist():
    assert all(SURFACE[f][n] for f in SURFACE for n in TENSORRT_BUILD_API["all"]), "a build call is missing somewhere"
    for name in (*TENSORRT_BUILD_API["weak_typing"], *TENSORRT_BUILD_API["implicit_int8"]):
        assert SURFACE["8.6"][name] and SURFACE["10.x"][name] and not SURFACE["11.x"][name], name
    for name in ("set_dynamic_range", "execute_async_v2", "get_binding_index"):  # never used by edgekit
        source = "".join(p.read_text() for p in (REPO_ROOT / "edgekit").rglob("*tensorrt*.py"))
        assert f".{name}(" not in source
    assert not SURFACE["8.6"]["STRONGLY_TYPED"] and SURFACE["10.x"]["STRONGLY_TYPED"]


def _online() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _online(), reason="offline: the bindings wheels cannot be downloaded")
def test_the_committed_surface_is_what_the_wheels_say(tmp_path, monkeypatch):
    from tests.helpers import load_tool

    tool = load_tool("trt_api_surface", monkeypatch)
    wheel_dir = Path("/tmp/trtwheels")
    wheel_dir.mkdir(exist_ok=True)
    assert tool.extract(wheel_dir)["surface"] == SURFACE


# --- engine records -----------------------------------------------------------------------------

def engine_with_record(folder: Path, number: int = 8602, onnx_name: str = "model.onnx") -> Path:
    (folder / "model.onnx").write_bytes(b"onnx v1")
    engine = folder / "model_fp16.engine"
    engine.write_bytes(b"engine")
    record = {"format": "edgekit-tensorrt-engine", "tensorrt_number": number, "gpu": "Orin",
              "onnx": onnx_name, "onnx_sha256": sha256_file(folder / "model.onnx")}
    (folder / "model_fp16.engine.json").write_text(json.dumps(record))
    return engine


def test_a_matching_record_is_accepted(tmp_path):
    engine = engine_with_record(tmp_path)
    assert check_engine_record(engine, {"model.onnx"}, "8.6.2.3")["gpu"] == "Orin"
    assert check_engine_record(engine, {"model.onnx"}, None)["tensorrt_number"] == 8602


def test_an_engine_from_a_re_converted_onnx_is_refused(tmp_path):
    engine = engine_with_record(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"onnx v2")
    with pytest.raises(ModelFileError, match="built from another model.onnx") as caught:
        check_engine_record(engine, {"model.onnx"}, "8.6.2")
    assert "\n" not in str(caught.value) and "edgekit build-engine" in str(caught.value)


def test_an_engine_from_another_tensorrt_is_refused(tmp_path):
    engine = engine_with_record(tmp_path, number=100300)
    with pytest.raises(ModelFileError, match=r"built by TensorRT 10\.3\.0, this device has TensorRT 8\.6\.2"):
        check_engine_record(engine, {"model.onnx"}, "8.6.2")


@pytest.mark.parametrize("damage", ["missing", "garbage", "other onnx"])
def test_a_missing_or_foreign_record_is_refused(tmp_path, damage):
    engine = engine_with_record(tmp_path, onnx_name="elsewhere.onnx" if damage == "other onnx" else "model.onnx")
    record = tmp_path / "model_fp16.engine.json"
    if damage == "missing":
        record.unlink()
    elif damage == "garbage":
        record.write_text("{not json")
    with pytest.raises(ModelFileError) as caught:
        check_engine_record(engine, {"model.onnx"}, "8.6.2")
    assert "\n" not in str(caught.value) and "rebuild it on this device" in str(caught.value)


# --- batches over static and dynamic engines ----------------------------------------------------

def test_a_static_engine_runs_any_batch_in_padded_chunks():
    assert chunk_plan(1, 1, None) is None
    assert chunk_plan(3, 1, None) == [(0, 1, 1), (1, 2, 1), (2, 3, 1)]
    assert chunk_plan(5, 2, None) == [(0, 2, 2), (2, 4, 2), (4, 5, 2)]  # the last chunk padded to 2
    assert chunk_plan(1, 4, None) == [(0, 1, 4)]
    x = np.ones((1, 3), np.float32)
    assert _pad_rows(x, 4).shape == (4, 3) and not _pad_rows(x, 4)[1:].any()


def test_a_dynamic_engine_chunks_only_above_its_maximum():
    assert chunk_plan(8, None, 8) is None
    assert chunk_plan(9, None, 4) == [(0, 4, 4), (4, 8, 4), (8, 9, 1)]


def test_build_engine_runs_on_a_board_without_torch_or_onnx(tmp_path):
    """``edgekit build-engine`` is a device command: its path imports neither torch nor onnx."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "onnx"):
                    raise ImportError("blocked: " + name)
                return None

        sys.meta_path.insert(0, Block())
        from edgekit.cli import main
        code = main(["build-engine", r"{tmp_path / 'absent'}"])
        assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "onnx")]
        print("exit", code)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "exit 2" and proc.stderr.strip().startswith("error: ")
