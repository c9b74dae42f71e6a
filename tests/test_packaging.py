"""Packaging: the wheel ships the target profiles, and each board's runtime extra installs on its own Python.

Resolving needs the package index (skipped offline): each board's requirements must have a wheel for its
platform and Python, so a requirement without one there (onnxruntime >= 1.17 on Python 3.8 …) fails here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.requirements_helpers import REPO, Platform, requirements, resolve

#: board -> (its runtime extra, its Python, CPU and glibc): JetPack 5 = Ubuntu 20.04, JetPack 6 = 22.04,
#: Raspberry Pi OS bookworm = Debian 12, an Intel host on Ubuntu 24.04
BOARDS = {
    "jetson-jetpack5": ("runtime-jetson", Platform("3.8", "aarch64", "2_31")),
    "jetson-jetpack6": ("runtime-jetson", Platform("3.10", "aarch64", "2_35")),
    "raspberry-pi-5": ("runtime-arm", Platform("3.11", "aarch64", "2_36")),
    "intel": ("runtime-intel", Platform("3.12", "x86_64", "2_39")),
}


def test_each_boards_runtime_extra_resolves_for_its_platform_and_python():
    jobs = {}
    for board, (extra, platform) in BOARDS.items():
        specs = requirements([extra], platform)
        names = {r.name for r in specs}
        assert "numpy" in names and not names & {"torch", "onnx", "pnnx", "nncf"}, board  # no converter
        jobs[board] = ([str(r) for r in specs], platform)
    resolve(jobs)


def test_the_converter_extras_ask_for_python_3_10():
    old = requirements(["convert", "quant"], Platform("3.8", "aarch64", "2_31"))
    new = requirements(["convert", "quant"], Platform("3.11", "x86_64", "2_36"))
    assert {"torch", "onnx", "nncf"} <= {r.name for r in new}
    assert not {"torch", "onnx", "nncf"} & {r.name for r in old}
    assert "tomli" in {r.name for r in old} and "tomli" not in {r.name for r in new}


def test_the_wheel_ships_the_target_profiles_and_the_installed_package_finds_them(tmp_path):
    # a copy of what the wheel is built from, without the bundled checkpoints (they are not what is checked)
    source = tmp_path / "source"
    for name in ("pyproject.toml", "setup.py", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "targets", source / "targets")
    shutil.copytree(REPO / "edgekit", source / "edgekit", ignore=shutil.ignore_patterns("__pycache__", "*.pt"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "dist").glob("edgekit-*.whl"))
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if name.startswith("edgekit/profiles/")}
    assert {f"edgekit/profiles/{p.name}" for p in (REPO / "targets").glob("*.toml")} == shipped
    with zipfile.ZipFile(wheel) as archive:  # "installed": the wheel unpacked on its own, away from the checkout
        archive.extractall(tmp_path / "site")
    site = str(tmp_path / "site")
    probe = (f"import edgekit.targets as t; assert t.__file__.startswith({site!r}), t.__file__; "
             "print(len(t.target_names()), t.load_target('raspberry-pi-5').threads)")
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == [str(len(shipped)), "4"]


def test_the_resolution_check_fails_without_a_wheel_for_the_platform():
    jetpack5 = Platform("3.8", "aarch64", "2_31")
    with pytest.raises(AssertionError, match=r"numpy>=2.0 \(Python 3.8"):  # numpy 2 needs Python >= 3.9
        resolve({"jetson": (["numpy>=2.0"], jetpack5)})
    with pytest.raises(AssertionError, match="openvino"):  # no OpenVINO wheels for 32-bit ARM
        resolve({"pi": (["openvino>=2024.4"], Platform("3.11", "armv7l", "2_36"))})
    resolve({"jetson": (["onnxruntime>=1.17", "numpy>=1.24,<2"], jetpack5)})
