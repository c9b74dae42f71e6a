"""What pip would install for a platform and Python other than this one: pyproject's requirements with their
extras expanded and environment markers evaluated for that target, and a check that each has a wheel for it on
the index (what ``pip download --only-binary=:all: --platform … --python-version … --no-deps`` checks)."""

from __future__ import annotations

import html
import json
import re
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PYPI = "https://pypi.org/simple"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Platform:
    """A device's Python: its version, CPU and the newest manylinux its glibc runs (pip expands older ones)."""

    python: str           # "3.8"
    machine: str          # "aarch64" / "x86_64"
    glibc: str            # "2_31"

    @property
    def pip_platforms(self) -> list[str]:
        """Every manylinux tag this glibc runs (pip does not widen ``--platform`` to older ones itself)."""
        newest = int(self.glibc.split("_")[1])
        return [f"manylinux2014_{self.machine}", *(f"manylinux_2_{minor}_{self.machine}"
                                                    for minor in range(17, newest + 1))]

    def tags(self) -> frozenset[Tag]:
        """The wheel tags a CPython of this version accepts here (what pip's --python-version/--platform give)."""
        version = tuple(int(part) for part in self.python.split("."))
        return frozenset([*cpython_tags(version, platforms=self.pip_platforms),
                          *compatible_tags(version, f"cp{version[0]}{version[1]}", platforms=self.pip_platforms)])

    def environment(self) -> dict[str, str]:
        return {"python_version": self.python, "python_full_version": f"{self.python}.0",
                "platform_machine": self.machine, "sys_platform": "linux", "platform_system": "Linux",
                "os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def requirements(extras: list[str] | tuple[str, ...], platform: Platform) -> list[Requirement]:
    """edgekit's own dependencies plus ``extras`` (edgekit[...] self-references followed), markers evaluated."""
    project = PYPROJECT["project"]
    optional = project["optional-dependencies"]
    found: dict[str, Requirement] = {}
    pending = [(line, "") for line in project["dependencies"]] + [(f"edgekit[{e}]", "") for e in extras]
    seen_extras: set[str] = set()
    while pending:
        line, extra = pending.pop()
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({**platform.environment(),
                                                                              "extra": extra}):
            continue
        if requirement.name == "edgekit":
            for name in requirement.extras:
                if name not in optional:
                    raise AssertionError(f"pyproject: edgekit[{name}] names no extra")
                if name not in seen_extras:
                    seen_extras.add(name)
                    pending.extend((item, name) for item in optional[name])
            continue
        found[str(requirement)] = requirement
    return sorted(found.values(), key=str)


def resolve(jobs: dict[str, tuple[list[str], Platform]], index_url: str = PYPI) -> None:
    """For each job (name -> requirement lines, platform), the index must hold a wheel of every requirement for
    that platform and Python: what ``pip download --only-binary=:all: --platform … --python-version … --no-deps``
    checks, read from the index's simple API (PEP 691 JSON or PEP 503 HTML) once per project, without
    downloading wheels. Fails naming the job and the requirement; skips when the index cannot be reached."""
    wanted = {Requirement(line).name for specs, _ in jobs.values() for line in specs}
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            files = dict(zip(wanted, pool.map(lambda name: _index_files(index_url, name), wanted)))
    except (urllib.error.URLError, OSError) as exc:
        pytest.skip(f"package index {index_url} not reachable ({exc}): offline")
    failures = []
    for job, (specs, platform) in jobs.items():
        supported = platform.tags()
        for line in specs:
            requirement = Requirement(line)
            if not any(_fits(file, requires_python, requirement, platform, supported)
                       for file, requires_python in files[requirement.name]):
                failures.append(f"{job}: {requirement} (Python {platform.python}, glibc {platform.glibc} "
                                f"{platform.machine})")
    assert not failures, "no wheel on the index for:\n" + "\n".join(failures)



def _index_files(index_url: str, name: str) -> list[tuple[str, str | None]]:
    """(wheel file name, its Requires-Python) of project ``name`` on a simple index; yanked files left out."""
    request = urllib.request.Request(f"{index_url.rstrip('/')}/{canonicalize_name(name)}/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read().decode("utf-8")
        kind = response.headers.get("Content-Type", "")
    if "json" in kind:
        return [(f["filename"], f.get("requires-python")) for f in json.loads(body)["files"]
                if f["filename"].endswith(".whl") and not f.get("yanked")]
    found = []
    for anchor in re.finditer(r"<a\s([^>]*)>([^<]+\.whl)</a>", body):
        if "data-yanked" in anchor.group(1):
            continue
        requires = re.search(r'data-requires-python="([^"]*)"', anchor.group(1))
        found.append((anchor.group(2).strip(), html.unescape(requires.group(1)) if requires else None))
    return found


def _fits(file: str, requires_python: str | None, requirement: Requirement, platform: Platform,
          supported: frozenset[Tag]) -> bool:
    try:
        _, version, _, tags = parse_wheel_filename(file)
    except InvalidWheelFilename:
        return False
    if not requirement.specifier.contains(version, prereleases=False):
        return False
    if requires_python and not SpecifierSet(requires_python).contains(f"{platform.python}.0", prereleases=True):
        return False
    return bool(tags & supported)
