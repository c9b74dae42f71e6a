"""Rules the code must keep, checked on the source (AST), so a violation fails even on a path no test runs.

- edgekit never imports the upstream training packages (ultralytics, yolov5's `models`/`utils`, yolox: AGPL/GPL, and
  they drag torchvision onto the converter host) nor torchvision itself;
- nothing unpickles without edgekit's restrictions: no `pickle.load(s)`, no `torch.load` without `weights_only=True`;
- `edgekit.runtime` (what runs on the device) never imports torch: not itself, and not through any edgekit module it
  imports, at load time or inside a function (transitively; `if TYPE_CHECKING:` blocks aside).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edgekit"
SOURCES = sorted(PACKAGE.rglob("*.py"))
FORBIDDEN_PACKAGES = ("ultralytics", "yolov5", "yolox", "torchvision")


def module_name(path: Path, root: Path) -> str:
    """edgekit/runtime/nms.py -> edgekit.runtime.nms; a package's __init__.py -> the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(package: Path) -> dict[str, Path]:
    return {module_name(p, package.parent): p for p in sorted(package.rglob("*.py"))}


MODULES = package_modules(PACKAGE)
RUNTIME_MODULES = sorted(name for name in MODULES if name == "edgekit.runtime" or name.startswith("edgekit.runtime."))


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def module_imports(name: str, modules: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, module) for every import in module ``name``, at load time or inside functions; relative imports
    resolved, ``from pkg import sub`` also listing ``pkg.sub`` when that is a module; ``if TYPE_CHECKING:`` skipped."""
    path = modules[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.extend((child.lineno, alias.name) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[:len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                found.append((child.lineno, base))
                found.extend((child.lineno, f"{base}.{alias.name}") for alias in child.names
                             if f"{base}.{alias.name}" in modules)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def torch_import_chain(start: str, modules: dict[str, Path]) -> list[str] | None:
    """The shortest chain of imports from ``start`` to torch through the package's modules, or None.

    Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` too, so parents are followed as well.
    """
    came_from: dict[str, tuple[str, str] | None] = {start: None}
    queue = [start]
    parts = start.split(".")
    for parent in (".".join(parts[:i]) for i in range(1, len(parts))):
        if parent in modules:
            came_from[parent] = (start, f"importing {start} runs {parent}")
            queue.append(parent)
    while queue:
        name = queue.pop(0)
        for line, imported in module_imports(name, modules):
            step = f"{name}:{line} imports {imported}"
            if imported.split(".")[0] == "torch":
                chain = [step]
                while (previous := came_from[name]) is not None:
                    name, how = previous
                    chain.append(how)
                return chain[::-1]
            parts = imported.split(".")
            for parent in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):
                if parent in modules and parent not in came_from:
                    came_from[parent] = (name, f"{name}:{line} imports {parent}")
                    queue.append(parent)
    return None


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


@pytest.mark.parametrize("name", RUNTIME_MODULES)
def test_runtime_module_never_reaches_torch(name):
    chain = torch_import_chain(name, MODULES)
    assert chain is None, f"{name} reaches torch: " + " -> ".join(chain)


def test_the_torch_chain_is_followed_through_packages_functions_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    files = {
        "__init__.py": "",
        "runtime/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n",
        "runtime/a.py": "def f():\n    from ..helpers import tools\n",
        "helpers/__init__.py": "from . import inner\n",
        "helpers/tools.py": "X = 1\n",
        "helpers/inner.py": "import torch.nn\n",
        "runtime/clean.py": "import numpy\nfrom pkg.helpers.tools import X\n",
    }
    for relative, text in files.items():
        (pkg / relative).parent.mkdir(parents=True, exist_ok=True)
        (pkg / relative).write_text(text)
    modules = package_modules(pkg)
    # a lazy, relative import of a module whose parent package imports torch
    assert torch_import_chain("pkg.runtime.a", modules) == [
        "pkg.runtime.a:2 imports pkg.helpers", "pkg.helpers:1 imports pkg.helpers.inner",
        "pkg.helpers.inner:1 imports torch.nn"]
    # importing pkg.helpers.tools runs pkg/helpers/__init__.py as well
    assert torch_import_chain("pkg.runtime.clean", modules)[-1] == "pkg.helpers.inner:1 imports torch.nn"
    assert torch_import_chain("pkg.runtime", modules) is None  # TYPE_CHECKING only
    assert torch_import_chain("pkg.helpers.tools", modules) == [
        "importing pkg.helpers.tools runs pkg.helpers", "pkg.helpers:1 imports pkg.helpers.inner",
        "pkg.helpers.inner:1 imports torch.nn"]


def test_the_checks_catch_what_they_look_for():
    bad = ast.parse("import ultralytics\nfrom yolox.models import X\nimport pickle\npickle.loads(b'')\n"
                    "import torch\ntorch.load('a.pt')\ntorch.load('b.pt', weights_only=False)\n"
                    "import importlib\nimportlib.import_module('torchvision.ops')\n")
    assert [name for _, name in imported_modules(bad)] == ["ultralytics", "yolox.models", "pickle", "torch",
                                                           "importlib", "torchvision.ops"]
    assert [what for _, what in unsafe_loads(bad)] == ["pickle.loads", "torch.load without weights_only=True",
                                                       "torch.load without weights_only=True"]
    assert unsafe_loads(ast.parse("torch.load('a.pt', map_location='cpu', weights_only=True)")) == []
