"""edgekit.tolerances is the one place for the levels, and tensor_error's per-output statistics
(max / mean / p99, absolute and relative, as Polygraphy's comparator reports them) are right."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest

from edgekit import tolerances
from edgekit.validate.compare import tensor_error

EDGEKIT = Path(tolerances.__file__).parent


def test_design_levels():
    assert tolerances.TENSOR["fp32"] == 1e-4 and tolerances.TENSOR["fp16"] == 1e-2  # DESIGN.md
    assert tolerances.tensor_tolerance("int8") is None                             # judged on detections only
    assert tolerances.ONNX_PASS == tolerances.FP32 and tolerances.MODULE_PASS < tolerances.FP32
    assert tolerances.NCNN_BLOB_MATCH["fp32"] == tolerances.FP32


def test_no_tolerance_literal_outside_the_module():
    """A module-level name with TOLERANCE in it is bound to edgekit.tolerances, never to a number."""
    offenders = []
    for path in sorted(EDGEKIT.rglob("*.py")):
        if path.name == "tolerances.py":
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            literal = [n for n in ast.walk(node.value) if isinstance(n, ast.Constant) and isinstance(n.value, float)]
            if any("TOLERANCE" in name for name in names) and literal:
                offenders.append(f"{path.relative_to(EDGEKIT.parent)}:{node.lineno} {names}")
    # decode's e2e class check and the ncnn int8 writer's weight lookup compare a file with itself (not a
    # deployment with its reference): their own concepts, documented where they are
    allowed = {"_E2E_CLASS_TOLERANCE", "MATCH_TOLERANCE"}
    assert [o for o in offenders if not any(f"'{a}'" in o for a in allowed)] == []


def brute_force_stats(ref: np.ndarray, cand: np.ndarray) -> dict[str, float]:
    """Element by element in Python floats; p99 by numpy's default (linear) rule written out."""
    diffs = sorted(abs(float(r) - float(c)) for r, c in zip(ref.ravel().tolist(), cand.ravel().tolist()))
    rank = 0.99 * (len(diffs) - 1)
    low = int(math.floor(rank))
    high = min(low + 1, len(diffs) - 1)
    p99 = diffs[low] + (diffs[high] - diffs[low]) * (rank - low)
    scale = max(abs(float(r)) for r in ref.ravel().tolist()) or 1.0
    stats = {"max_abs": diffs[-1], "mean_abs": sum(diffs) / len(diffs), "p99_abs": p99}
    stats.update({key.replace("abs", "rel"): value / scale for key, value in list(stats.items())})
    return stats


@pytest.mark.parametrize("seed", [0, 1])
def test_per_output_statistics_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    # three head levels: the middle one drifted most (relative to its own magnitude)
    refs = [rng.normal(0, 1, (1, 8, 20)), rng.normal(0, 50, (1, 8, 10)), rng.normal(0, 0.1, (1, 8, 5))]
    noise = [1e-5, 1.0, 1e-5]
    cands = [(r + rng.normal(0, n, r.shape)).astype(np.float32) for r, n in zip(refs, noise)]
    error = tensor_error([r.astype(np.float32) for r in refs], cands, ["p3", "p4", "p5"])
    assert [o.name for o in error.per_output] == ["p3", "p4", "p5"]
    for output, ref, cand in zip(error.per_output, refs, cands):
        expected = brute_force_stats(ref.astype(np.float32), cand)
        for key, value in expected.items():
            assert getattr(output, key) == pytest.approx(value, rel=1e-9), key
    assert error.worst_output.name == "p4"
    assert error.max_rel == max(o.max_rel for o in error.per_output)
    assert error.max_abs == max(o.max_abs for o in error.per_output)
    assert set(error.to_dict()["outputs"]) == {"p3", "p4", "p5"}


def test_non_finite_output_is_infinite_error_and_named():
    ref = [np.ones((2, 3), np.float32), np.ones((4,), np.float32)]
    cand = [np.ones((2, 3), np.float32), np.array([1, np.nan, 1, 1], np.float32)]
    error = tensor_error(ref, cand, ["boxes", "scores"])
    assert error.max_rel == math.inf and error.worst_output.name == "scores"
    assert error.per_output[0].max_abs == 0.0


def test_mismatches_raise():
    with pytest.raises(ValueError, match="shapes differ"):
        tensor_error([np.zeros(3)], [np.zeros(4)])
    with pytest.raises(ValueError, match="1 names for 2 outputs"):
        tensor_error([np.zeros(3)] * 2, [np.zeros(3)] * 2, ["a"])
