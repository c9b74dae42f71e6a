"""Helpers the module passes share: reading a module's own forward as a graph of calls, and
replacing a submodule by its dotted path.

Patterns are recognised by *structure*, not by class: a pass looks at what a module's ``forward``
does with its children. :func:`trace_calls` records that with ``torch.fx`` while treating every
submodule call as an opaque ``call_module`` node (nothing below the module's own forward is traced),
so the graph of, e.g., ``ConvBNAct`` is ``x -> conv -> bn -> act -> output`` whatever the classes of
its children are. Modules whose forward cannot be traced (Python control flow on tensor values,
input checks) give ``None`` and are left alone by passes that need the graph.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any, cast

import torch
from torch import fx, nn

from edgekit.convert.passes.base import Pass, PassResult


class _CallsTracer(fx.Tracer):
    """An fx tracer that never traces *into* a submodule: every ``self.<child>(...)`` call
    (at any depth, e.g. ``self.m[0]`` or ``self.block.conv``) becomes one ``call_module`` node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def trace_calls(module: nn.Module) -> fx.Graph | None:
    """The fx graph of ``module.forward`` with submodule calls as leaves, or None if untraceable.

    ``call_module`` node targets are dotted paths relative to ``module``.
    """
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)) or not module._modules:
        return None  # containers have no forward; a leaf calls no submodules, so it holds no pattern
    # A forward may cache things on self (YOLO heads store grids) and tracing runs it with proxies: trace a
    # shallow twin instead, holding its own copies of the containers a forward could mutate, so the module
    # itself is never touched (same children: the call paths are the module's).
    twin = copy.copy(module)
    for key, value in vars(module).items():
        if not key.startswith("_") and isinstance(value, (list, dict, set)):
            twin.__dict__[key] = copy.deepcopy(value)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _CallsTracer(autowrap_modules=cast(Any, ())).trace(twin)  # () : torch annotates a 1-tuple
    except Exception:  # fx raises TraceError, TypeError, AttributeError ... for data-dependent forwards
        return None


def near_descendants(module: nn.Module, depth: int = 2) -> list[nn.Module]:
    """Children and (for ``depth`` 2) grandchildren of ``module``: the modules its forward can plausibly
    call as ``self.a(...)`` or ``self.m[i](...)``. Passes use this as a cheap pre-filter before
    tracing (an fx trace costs milliseconds; a model has hundreds of modules)."""
    found: list[nn.Module] = []
    level = [module]
    for _ in range(depth):
        level = [child for parent in level for child in parent._modules.values() if child is not None]
        found.extend(level)
    return found


def call_counts(graph: fx.Graph) -> Counter[str]:
    """How many times each submodule path is called in ``graph``."""
    return Counter(node.target for node in graph.nodes if node.op == "call_module")


def child_reference_counts(root: nn.Module) -> Counter[int]:
    """For every module (by ``id``), how many parent slots hold it. More than one means the module is
    shared (weight tying), and rewriting it in place would change every user."""
    counts: Counter[int] = Counter()
    seen: set[int] = set()
    stack = [root]
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        for child in module._modules.values():
            if child is not None:
                counts[id(child)] += 1
                stack.append(child)
    return counts


def iter_modules(root: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``root.named_modules()`` as a list snapshot, so callers may replace modules while iterating."""
    return iter(list(root.named_modules()))


def join_path(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    return root if not path else root.get_submodule(path)


def replace_submodule(root: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at dotted ``path`` under ``root``; returns the (possibly new) root.

    ``path == ""`` replaces the root itself: the returned module is ``new``, which keeps the old
    root's plain attributes it does not define (e.g. edgekit's ``.spec`` and ``.config``).
    """
    if not path:
        for key, value in vars(root).items():
            if not key.startswith("_") and key not in vars(new) and not isinstance(value, (nn.Module, torch.Tensor)):
                setattr(new, key, value)
        return new
    parent_path, _, name = path.rpartition(".")
    parent = get_submodule(root, parent_path)
    parent._modules[name] = new
    return root


def conv_pair(value: int | tuple[int, ...] | str) -> tuple[int, int]:
    """A Conv2d's kernel_size / stride / padding as (h, w) ints (padding: numeric only, checked by the caller)."""
    if isinstance(value, str):
        raise ValueError(f"padding {value!r} is not numeric")
    if isinstance(value, int):
        return value, value
    return int(value[0]), int(value[1])


def module_count(model: nn.Module) -> int:
    """Number of modules in the tree (the root included): the structural size recorded per module pass."""
    return sum(1 for _ in model.modules())


class NotRewritten(Exception):
    """Raised by :meth:`SubmoduleRewrite.rewrite` for a module that looks like the pattern but does not meet
    the pass's contract; the reason lands in the pass's notes."""


class SubmoduleRewrite(Pass):
    """A module pass that replaces whole submodules, one at a time.

    ``apply`` visits every module of the tree once (the root included, in ``named_modules`` order) and
    calls :meth:`rewrite` on it; a returned module takes its place. Skipped: modules held by more than
    one parent (tied weights: the other user would change too) and modules inside one already replaced.
    ``rejected`` names, for the notes, what a :class:`NotRewritten` module was (e.g. "RepVGG-like blocks").
    """

    rejected = "candidates"

    def prefilter(self, module: nn.Module) -> bool:
        """Cheap structural test run before :meth:`rewrite` (which may trace); default: every module."""
        return True

    def rewrite(self, module: nn.Module) -> nn.Module | None:
        """The replacement of ``module``, or None when it does not hold the pattern."""
        raise NotImplementedError

    def apply(self, model: nn.Module) -> PassResult:
        shared = child_reference_counts(model)
        replaced: list[str] = []
        rejected: list[str] = []
        for path, module in iter_modules(model):
            inside = any(not done or path.startswith(done + ".") for done in replaced)
            if inside or shared[id(module)] > 1 or not self.prefilter(module):
                continue
            try:
                new = self.rewrite(module)
            except NotRewritten as why:
                rejected.append(f"{path or '<root>'} ({why})")
                continue
            if new is not None:
                model = replace_submodule(model, path, new)
                replaced.append(path)
        notes = f"left {len(rejected)} {self.rejected}: {', '.join(rejected[:3])}" if rejected else ""
        return PassResult(model, len(replaced), notes)
