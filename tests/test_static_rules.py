"""Rules the code must keep, checked on the source (AST), so a violation fails even on a path no test runs.

- edgekit never imports the upstream training packages (ultralytics, yolov5's `models`/`utils`, yolox: AGPL/GPL, and
  they drag torchvision onto the converter host) nor torchvision itself;
- nothing unpickles without edgekit's restrictions: no `pickle.load(s)`, no `torch.load` without `weights_only=True`;
- `edgekit.runtime` (what runs on the device) never imports torch.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edgekit"
SOURCES = sorted(PACKAGE.rglob("*.py"))
FORBIDDEN_PACKAGES = ("ultralytics", "yolov5", "yolox", "torchvision")


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return found


def unsafe_loads(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
        if owner == "pickle" and node.func.attr in ("load", "loads"):
            found.append((node.lineno, f"pickle.{node.func.attr}"))
        if owner == "torch" and node.func.attr == "load":
            weights_only = [k.value for k in node.keywords if k.arg == "weights_only"]
            if not (weights_only and isinstance(weights_only[0], ast.Constant) and weights_only[0].value is True):
                found.append((node.lineno, "torch.load without weights_only=True"))
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_source_keeps_the_rules(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    relative = path.relative_to(PACKAGE).as_posix()
    problems = [f"line {line}: imports {name}" for line, name in imported_modules(tree)
                if name.split(".")[0] in FORBIDDEN_PACKAGES]
    problems += [f"line {line}: {what}" for line, what in unsafe_loads(tree)]
    if relative.startswith("runtime/"):
        problems += [f"line {line}: the runtime imports {name}" for line, name in imported_modules(tree)
                     if name.split(".")[0] == "torch"]
    assert not problems, f"edgekit/{relative}: " + "; ".join(problems)


def test_the_checks_catch_what_they_look_for():
    bad = ast.parse("import ultralytics\nfrom yolox.models import X\nimport pickle\npickle.loads(b'')\n"
                    "import torch\ntorch.load('a.pt')\ntorch.load('b.pt', weights_only=False)\n"
                    "import importlib\nimportlib.import_module('torchvision.ops')\n")
    assert [name for _, name in imported_modules(bad)] == ["ultralytics", "yolox.models", "pickle", "torch",
                                                           "importlib", "torchvision.ops"]
    assert [what for _, what in unsafe_loads(bad)] == ["pickle.loads", "torch.load without weights_only=True",
                                                       "torch.load without weights_only=True"]
    assert unsafe_loads(ast.parse("torch.load('a.pt', map_location='cpu', weights_only=True)")) == []
