"""The torch-free runtime keeps to Python 3.8 (JetPack 5's Python): a static minimum-version check.

Checked: every ``edgekit.runtime`` module, the device-side commands (``edgekit.cli``, ``edgekit.bench``,
``edgekit.targets``) and every edgekit module they import (``spec.py``, ``errors.py`` …, lazily imported ones
and parent packages included), except the converter side (it needs Python >= 3.10: see pyproject's markers).
Two checks: vermin (``-t=3.8-``: library members such as ``str.removeprefix``, ``importlib.resources.files``,
syntax such as ``match``, dict ``|`` …) and, because vermin does not evaluate annotations, an AST check that a
module writing ``X | Y`` or ``list[int]`` in an annotation has ``from __future__ import annotations``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_static_rules import MODULES, module_imports

ROOTS = ["edgekit.cli", "edgekit.bench", "edgekit.targets",
         *(name for name in MODULES if name == "edgekit.runtime" or name.startswith("edgekit.runtime."))]
#: converter-side packages (Python >= 3.10): not followed from the device-side commands' lazy imports
CONVERTER = ("edgekit.convert.", "edgekit.models", "edgekit.quant", "edgekit.reference", "edgekit.validate",
             "edgekit.demo")
#: device-side modules under a converter package
DEVICE_SIDE = ("edgekit.convert", "edgekit.convert.artifact", "edgekit.convert.builders", "edgekit.quant",
               "edgekit.quant.placement")


def device_modules() -> list[str]:
    """ROOTS and every edgekit module they import (parents included), minus the converter side."""
    seen: set[str] = set()
    queue = list(ROOTS)
    while queue:
        name = queue.pop()
        if name in seen or name not in MODULES or (name.startswith(CONVERTER) and name not in DEVICE_SIDE):
            continue
        seen.add(name)
        parts = name.split(".")
        queue.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        queue.extend(imported for _, imported in module_imports(name, MODULES))
    return sorted(seen)


def test_the_device_side_is_what_a_board_runs():
    modules = device_modules()
    assert {"edgekit", "edgekit.spec", "edgekit.errors", "edgekit.runtime.detector", "edgekit.runtime.artifact",
            "edgekit.runtime.backends.ncnn", "edgekit.cli", "edgekit.bench", "edgekit.targets"} <= set(modules)
    assert not [m for m in modules if m.startswith(("edgekit.models", "edgekit.quant.", "edgekit.reference"))
                and m not in DEVICE_SIDE]


def vermin(paths: list[Path]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from vermin import main; sys.exit(main())",
                           "-t=3.8-", "--violations", "--no-tips", "--no-parse-comments", *map(str, paths)],
                          capture_output=True, text=True, timeout=300)


def test_device_side_modules_need_no_python_newer_than_3_8():
    pytest.importorskip("vermin", reason="vermin not installed (pip install 'edgekit[dev]')")
    paths = [MODULES[name] for name in device_modules()]
    result = vermin(paths)
    assert result.returncode == 0, f"needs a Python newer than 3.8:\n{result.stdout}{result.stderr}"


def test_vermin_catches_what_it_looks_for(tmp_path):
    pytest.importorskip("vermin", reason="vermin not installed (pip install 'edgekit[dev]')")
    bad = tmp_path / "bad.py"
    bad.write_text("import importlib.resources\nx = 'ab'.removeprefix('a')\ny = {} | {}\n"
                   "z = importlib.resources.files('edgekit')\n")
    result = vermin([bad])
    assert result.returncode != 0 and "removeprefix" in result.stdout and "importlib.resources.files" in result.stdout


def annotation_problems(source: str) -> list[str]:
    """Annotations Python 3.8 cannot evaluate (``X | Y``, ``list[int]`` …) in a module without
    ``from __future__ import annotations`` (with it, annotations are strings and never evaluated)."""
    tree = ast.parse(source)
    if any(isinstance(node, ast.ImportFrom) and node.module == "__future__"
           and any(alias.name == "annotations" for alias in node.names) for node in tree.body):
        return []
    generics = {"list", "dict", "tuple", "set", "frozenset", "type"}
    annotations = [node.annotation for node in ast.walk(tree) if isinstance(node, (ast.arg, ast.AnnAssign))
                   and node.annotation is not None]
    annotations += [node.returns for node in ast.walk(tree)
                    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None]
    problems = []
    for annotation in annotations:
        for node in ast.walk(annotation):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
                problems.append(f"line {node.lineno}: X | Y")
            elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in generics:
                problems.append(f"line {node.lineno}: {node.value.id}[...]")
    return problems


@pytest.mark.parametrize("name", device_modules())
def test_device_side_annotations_evaluate_on_python_3_8(name):
    assert annotation_problems(MODULES[name].read_text(encoding="utf-8")) == []


def test_the_annotation_check_catches_what_it_looks_for():
    assert annotation_problems("def f(x: int | None) -> list[int]: ...\n") == ["line 1: X | Y", "line 1: list[...]"]
    assert annotation_problems("from __future__ import annotations\ndef f(x: int | None) -> list[int]: ...\n") == []


def test_device_side_modules_compile_on_a_real_python_3_8():
    """Syntax, by Python 3.8 itself where one is installed (pyenv / deadsnakes)."""
    import shutil

    candidates = [shutil.which("python3.8"), *map(str, Path.home().glob(".pyenv/versions/3.8*/bin/python3.8"))]
    python38 = next((c for c in candidates
                     if c and subprocess.run([c, "-c", "pass"], capture_output=True).returncode == 0), None)
    if python38 is None:
        pytest.skip("no python3.8 here")
    paths = [str(MODULES[name]) for name in device_modules()]
    script = "import sys\nfor p in sys.argv[1:]: compile(open(p, encoding='utf-8').read(), p, 'exec')"
    result = subprocess.run([python38, "-c", script, *paths], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
