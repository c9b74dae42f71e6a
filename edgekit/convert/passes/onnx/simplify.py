"""Graph simplification through onnxsim (onnx-simplifier), with onnxslim as the fallback.

A dependency, not a rewrite of our own: onnxsim runs shape inference, constant folding and the
onnxoptimizer fusion / elimination passes (Conv+BN, Conv+Add, Identity, dead ends, Pad into Conv,
...). If onnxsim raises (an op it cannot shape-infer, models >2 GB ...), onnxslim is tried; if both
fail the model is returned unchanged with a note saying why, so a simplifier bug never blocks a
conversion that is otherwise correct. Either way the pipeline's equivalence check runs after.

The model's ``metadata_props`` (edgekit's spec) are restored exactly: onnxsim adds its own
bookkeeping entries (lists of removed nodes, ...), which do not belong in a deployed model.
"""

from __future__ import annotations

import io
import warnings
from contextlib import redirect_stderr, redirect_stdout

import onnx

from edgekit.convert.passes.base import Pass, PassResult
from edgekit.errors import first_line


def _run_onnxsim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim

    # check_n=0: the pipeline checks equivalence itself, with ONNX Runtime on the real example input
    simplified, ok = onnxsim.simplify(model, check_n=0)
    if not ok:
        raise RuntimeError("onnxsim reported a failed check")
    return simplified


def _run_onnxslim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    return onnxslim.slim(model)


class Simplify(Pass):
    name = "simplify"
    description = "onnxsim (fallback onnxslim): shape inference, constant folding, standard fusions"

    def __init__(self, tools: tuple[str, ...] = ("onnxsim", "onnxslim")) -> None:
        self.tools = tools

    def apply(self, model: onnx.ModelProto) -> PassResult:
        runners = {"onnxsim": _run_onnxsim, "onnxslim": _run_onnxslim}
        metadata = [(p.key, p.value) for p in model.metadata_props]
        before = len(model.graph.node)
        failures = []
        for tool in self.tools:
            source = onnx.ModelProto()
            source.CopyFrom(model)  # a failed tool must not leave a half-rewritten model behind
            try:
                with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                    warnings.simplefilter("ignore")
                    simplified = runners[tool](source)
            except Exception as exc:  # the tools raise many types; record and try the next one
                failures.append(f"{tool} failed: {first_line(exc, 200) or type(exc).__name__}")
                continue
            del simplified.metadata_props[:]
            for key, value in metadata:
                entry = simplified.metadata_props.add()
                entry.key, entry.value = key, value
            after = len(simplified.graph.node)
            notes = "; ".join([*failures, f"{tool}: {before} -> {after} nodes"])
            return PassResult(simplified, max(0, before - after), notes)
        return PassResult(model, 0, "; ".join(failures) + "; model left unchanged")
