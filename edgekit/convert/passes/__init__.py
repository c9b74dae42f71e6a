"""Graph passes: named, ordered rewrites of the model, each checked for numeric equivalence.

Two stages, each an explicit ordered tuple (no registration order anywhere):

- :data:`MODULE_PASSES` rewrite the torch ``nn.Module`` before export
  (RepVGG/RepConv -> one conv, Focus -> 6x6 conv, SPP -> SPPF, BatchNorm folding, no-op removal);
- :data:`ONNX_PASSES` rewrite the exported ``onnx.ModelProto`` (constant folding, BatchNormalization
  folding, dead-node / Identity removal, onnxsim simplification), followed by the target
  legalisation stage a backend supplies (``extra_passes``, see :mod:`.onnx.legalize`).

After every pass the runner evaluates the model before and after on the same inputs — the example
tensor and one seeded random tensor of the same shape and similar statistics — with torch (module
passes) or ONNX Runtime with graph optimisation disabled (ONNX passes), and records the largest
absolute difference and the relative one, ``max |before - after| / max |before|`` per output (as in
:func:`edgekit.validate.compare.tensor_error`). Beyond ``tolerance`` the run aborts with a
:class:`~edgekit.errors.ConversionError` naming the pass. NaN and Inf are never "equal": a model whose
outputs are not finite before any pass is refused, and a pass whose outputs stop being finite aborts
(see :func:`output_error`). Passes work on
copies, so the caller's model is never modified, whatever happens.

Module passes run, and are checked, in float64 (the model is converted back at the end). Their
rewrites are exact in real arithmetic, so in float64 an honest pass shows errors around 1e-13 and
any mistake stands out by many orders of magnitude. In float32 the same exact rewrite differs from
the original by rounding alone — re-associated sums, BN scales multiplied into weights — and a deep
network can amplify that: on randomly initialised families with calibrated BatchNorm statistics
(which amplify perturbations far more than trained weights do) it reaches ~5e-5 of the output
magnitude, which would make a 1e-5 float32 check reject correct passes. Folding in float64 also
rounds every weight once, at the end, instead of once per pass. ONNX Runtime has no float64 Conv,
so ONNX passes are checked in float32; the ones the default chain runs after the module passes
(constant folding, dead nodes, simplification of an already folded graph) are exact there too.

Adding a pass: write one module under ``module/`` or ``onnx/`` with a :class:`Pass` subclass, add
one instance at the right place in the tuple below, and one test.
"""

from __future__ import annotations

import copy
import difflib
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx as onnx_lib  # aliased: the subpackage ``passes.onnx`` takes the name ``onnx`` in this namespace
import torch
from torch import nn

from edgekit.convert.passes.base import STAGES, Pass, PassRecord, PassResult
from edgekit.convert.passes.module import (
    FocusToConv,
    FoldBatchNorm,
    RemoveNoOps,
    ReparameterizeRepVGG,
    SppToSppf,
    module_count,
)
from edgekit.convert.passes.onnx import (
    ConstantFold,
    FoldBatchNormOnnx,
    LegalizationPass,
    RemoveDeadNodes,
    Simplify,
    legalization_passes,
)
from edgekit.convert.passes.onnx.legalize import DEFAULT_LEGALIZATION_PASSES, all_legalization_passes
from edgekit.errors import ConversionError, EdgekitError
from edgekit.validate.compare import TensorError, tensor_error

DEFAULT_TOLERANCE = 1e-5

#: Module passes in the order they run. RepVGG first: it folds each branch's BatchNorm itself and
#: needs the branches intact. Focus and SPP next (Focus leaves its conv's BatchNorm in place), then
#: the generic BatchNorm folding catches every remaining conv -> BN pair, and finally the Identity
#: modules it leaves behind in Sequential containers are removed.
MODULE_PASSES: tuple[Pass, ...] = (
    ReparameterizeRepVGG(),
    FocusToConv(),
    SppToSppf(),
    FoldBatchNorm(),
    RemoveNoOps(),
)

#: ONNX passes in the order they run: our own folding first (each visible in the records), then
#: onnxsim as a broad clean-up, then the default legalisation stage (empty; backends add theirs
#: through ``extra_passes``).
ONNX_PASSES: tuple[Pass, ...] = (
    ConstantFold(),
    FoldBatchNormOnnx(),
    RemoveDeadNodes(),
    Simplify(),
    *DEFAULT_LEGALIZATION_PASSES,
)


def all_pass_names() -> list[str]:
    """Every pass name ``--skip`` accepts: module passes, ONNX passes, then every backend's legalisation passes."""
    names: list[str] = []
    for p in (*MODULE_PASSES, *ONNX_PASSES, *all_legalization_passes()):
        if p.name not in names:
            names.append(p.name)
    return names


def _skip_set(skip: Sequence[str] | str | None) -> set[str]:
    if skip is None:
        return set()
    if isinstance(skip, str):  # a single name, not its characters
        return {skip}
    return {str(name) for name in skip}


def check_skip_names(skip: Sequence[str] | str | None, extra_passes: Sequence[Pass] = ()) -> None:
    """Raise ConversionError for any name in ``skip`` that is not a known pass (with a did-you-mean)."""
    known = all_pass_names() + [p.name for p in extra_passes if p.name not in all_pass_names()]
    for name in sorted(_skip_set(skip)):
        if name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConversionError(f"--skip {name!r}: no pass of that name{hint} (passes: {', '.join(known)})")


# --------------------------------------------------------------------------------------------
# equivalence check


def output_error(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> TensorError:
    """:func:`tensor_error` (max abs, and max abs / max |reference| per output) where any NaN or Inf,
    on either side, is an infinite error — NaN against NaN included: a NaN model is never "equal" to
    anything, and ``nan > tolerance`` would be False. Raises ValueError on a count or shape mismatch."""
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} outputs before vs {len(candidate)} after")
    for ref, cand in zip(reference, candidate):
        if ref.shape != cand.shape:
            raise ValueError(f"output shape {ref.shape} before vs {cand.shape} after")
    if non_finite_summary(reference) or non_finite_summary(candidate):
        return TensorError(math.inf, math.inf)
    return tensor_error([np.asarray(r, np.float64) for r in reference], [np.asarray(c, np.float64) for c in candidate])


def non_finite_summary(outputs: Sequence[np.ndarray]) -> str:
    """"" when every value is finite, else what is not, e.g. ``"12 NaN values and 1 Inf value"``."""
    nan = inf = 0
    for output in outputs:
        array = np.asarray(output)
        if array.dtype.kind not in "fc" or np.isfinite(array).all():
            continue
        nan += int(np.isnan(array).sum())
        inf += int(np.isinf(array).sum())
    return " and ".join(f"{count} {word} value{'s' if count != 1 else ''}"
                        for count, word in ((nan, "NaN"), (inf, "Inf")) if count)


def _require_finite(stage: str, what: str, outputs: list[list[np.ndarray]]) -> None:
    """ConversionError when the model's outputs before any pass are not finite: no pass can be judged then."""
    held = non_finite_summary([o for per_input in outputs for o in per_input])
    if held:
        raise ConversionError(f"{stage}: {what} hold {held} on the check inputs before any pass ran; its weights "
                              "or buffers are not finite (NaN/Inf): use a checkpoint from a good epoch")


def _check(name: str, reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]],
           tolerance: float) -> TensorError:
    worst = TensorError(0.0, 0.0)
    for ref, cand in zip(reference, candidate):
        try:
            error = output_error(ref, cand)
        except ValueError as exc:
            raise ConversionError(f"pass {name!r} changed the model's outputs: {exc}") from None
        held = non_finite_summary(cand)
        if held:  # the reference is finite (checked before the first pass, and every accepted pass after)
            raise ConversionError(f"pass {name!r} broke equivalence: max relative error inf (its outputs hold "
                                  f"{held} where the model before it gave finite values)")
        worst = TensorError(max(worst.max_abs, error.max_abs), max(worst.max_rel, error.max_rel))
    if not worst.max_rel <= tolerance:  # also catches NaN
        raise ConversionError(f"pass {name!r} broke equivalence: max relative error {worst.max_rel:.3g} "
                              f"> tolerance {tolerance:.3g} (max abs {worst.max_abs:.3g})")
    return worst


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else "")[:300]


def _apply(p: Pass, model: Any) -> tuple[PassResult, float]:
    start = time.perf_counter()
    try:
        result = p.apply(model)
    except EdgekitError:
        raise
    except Exception as exc:  # a bug or an unexpected model shape inside a pass: name the pass
        raise ConversionError(f"pass {p.name!r} failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    if not isinstance(result, PassResult):
        raise ConversionError(f"pass {p.name!r} returned {type(result).__name__}, expected a PassResult")
    return result, time.perf_counter() - start


def _skipped(p: Pass, stage: str, nodes: int, check_dtype: str = "float32") -> PassRecord:
    return PassRecord(p.name, stage, 0, 0.0, 0.0, nodes, nodes, 0.0, skipped=True, check_dtype=check_dtype)


# --------------------------------------------------------------------------------------------
# module stage


def _flatten_outputs(output: Any) -> list[np.ndarray]:
    """Tensor / tuple / list / dict (by sorted key) of tensors -> list of arrays (float64 stays float64)."""
    if isinstance(output, torch.Tensor):
        output = output.detach().cpu()
        return [(output if output.dtype == torch.float64 else output.float()).numpy()]
    if isinstance(output, Mapping):
        return [a for key in sorted(output) for a in _flatten_outputs(output[key])]
    if isinstance(output, (tuple, list)):
        return [a for item in output for a in _flatten_outputs(item)]
    raise ConversionError(f"module passes: the model returned {type(output).__name__}; "
                          "expected tensors (or tuples / lists / dicts of them)")


def _module_check_inputs(example: torch.Tensor, seed: int = 0) -> list[torch.Tensor]:
    """The example and one seeded random tensor with the example's shape, mean and std."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(example.shape, generator=generator, dtype=torch.float32)
    values = example.detach().float()
    std = float(values.std()) if values.numel() > 1 else 1.0
    if not math.isfinite(std) or std == 0.0:
        std = 1.0
    mean = float(values.mean()) if values.numel() else 0.0
    return [example, (mean + std * noise).to(example.dtype)]


def _run_module(model: nn.Module, inputs: list[torch.Tensor]) -> list[list[np.ndarray]]:
    with torch.no_grad():
        return [_flatten_outputs(model(x)) for x in inputs]


def _uniform_float_dtype(model: nn.Module) -> torch.dtype | None:
    """The one floating dtype of all parameters and buffers, or None (none, or mixed precision)."""
    dtypes = {t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


def _dump_module(model: nn.Module, dump_dir: Path, index: int, name: str) -> None:
    dump_dir.mkdir(parents=True, exist_ok=True)
    stem = dump_dir / f"module_{index:02d}_{name}"
    stem.with_suffix(".txt").write_text(repr(model) + "\n")
    torch.save(model.state_dict(), stem.with_suffix(".pt"))  # loadable with weights_only=True


def run_module_passes(model: nn.Module, example: torch.Tensor, skip: Sequence[str] = (),
                      tolerance: float = DEFAULT_TOLERANCE, dump_dir: Path | None = None,
                      passes: Sequence[Pass] | None = None) -> tuple[nn.Module, list[PassRecord]]:
    """Run the module passes (``passes``, default :data:`MODULE_PASSES`) on a copy of ``model`` in eval mode.

    example: a float32 input the model accepts, e.g. [1, 3, H, W]. The model may return a tensor or a
    tuple / list / dict of tensors. Passes run and are checked in float64 when the model runs in
    float64 (all its floating tensors one dtype, no float32 tensors made inside forward); the result
    is converted back to the model's dtype. Returns the rewritten copy (eval mode) and one record per
    pass (skipped ones included). ``dump_dir``: after each pass write ``module_NN_<name>.txt`` (the module
    tree) and ``.pt`` (its state_dict). Raises ConversionError naming the pass that fails or whose
    relative error exceeds ``tolerance``; ``model`` itself is never modified.
    """
    passes = MODULE_PASSES if passes is None else tuple(passes)
    check_skip_names(skip, passes)
    skip_names = _skip_set(skip)
    if not isinstance(model, nn.Module):
        raise ConversionError(f"module passes need a torch nn.Module, got {type(model).__name__}")
    if not isinstance(example, torch.Tensor):
        raise ConversionError(f"module passes need an example torch.Tensor input, got {type(example).__name__}")
    current = copy.deepcopy(model).eval()
    inputs = _module_check_inputs(example)
    try:
        reference = _run_module(current, inputs)
    except EdgekitError:
        raise
    except Exception as exc:
        raise ConversionError(f"module passes: the model fails on the example input of shape {tuple(example.shape)} "
                              f"({type(exc).__name__}: {_first_line(exc)})") from None
    # Run and check the passes in float64 when the model allows it (see the module docstring).
    model_dtype = _uniform_float_dtype(current)
    check_dtype = model_dtype
    if model_dtype is not None and model_dtype != torch.float64 and example.is_floating_point():
        wide = copy.deepcopy(current).double()
        wide_inputs = [x.double() for x in inputs]
        try:
            wide_reference = _run_module(wide, wide_inputs)
        except Exception:  # e.g. float32 tensors created inside forward: check in the model's own precision
            pass
        else:
            current, inputs, reference, check_dtype = wide, wide_inputs, wide_reference, torch.float64
    dtype_name = str(check_dtype or example.dtype).removeprefix("torch.")
    _require_finite("module passes", "the model's outputs", reference)
    records = []
    for index, p in enumerate(passes, start=1):
        before = module_count(current)
        if p.name in skip_names:
            records.append(_skipped(p, "module", before, dtype_name))
            continue
        result, seconds = _apply(p, copy.deepcopy(current))
        if not isinstance(result.model, nn.Module):
            raise ConversionError(f"pass {p.name!r} returned {type(result.model).__name__}, expected an nn.Module")
        candidate = result.model.eval()
        try:
            outputs = _run_module(candidate, inputs)
        except EdgekitError:
            raise
        except Exception as exc:
            raise ConversionError(f"pass {p.name!r} produced a model that fails to run "
                                  f"({type(exc).__name__}: {_first_line(exc)})") from None
        error = _check(p.name, reference, outputs, tolerance)
        records.append(PassRecord(p.name, "module", int(result.rewrites), error.max_abs, error.max_rel, before,
                                  module_count(candidate), seconds, notes=result.notes, check_dtype=dtype_name))
        current, reference = candidate, outputs
        if dump_dir is not None:
            _dump_module(copy.deepcopy(current).to(model_dtype) if model_dtype else current, Path(dump_dir), index, p.name)
    if check_dtype != model_dtype:
        current = current.to(model_dtype)
    return current, records


# --------------------------------------------------------------------------------------------
# ONNX stage


def _graph_inputs(model: onnx_lib.ModelProto) -> list[onnx_lib.ValueInfoProto]:
    """Runtime inputs: graph inputs that are not initializers (those are overridable constants)."""
    initializers = {init.name for init in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def _onnx_check_inputs(model: onnx_lib.ModelProto, example: np.ndarray | Mapping[str, np.ndarray],
                       seed: int = 0) -> list[dict[str, np.ndarray]]:
    inputs = _graph_inputs(model)
    if isinstance(example, Mapping):
        feeds = {str(k): np.asarray(v) for k, v in example.items()}
    else:
        if len(inputs) != 1:
            raise ConversionError(f"ONNX passes: the model has {len(inputs)} inputs "
                                  f"({[i.name for i in inputs]}); give the example as a dict name -> array")
        feeds = {inputs[0].name: np.asarray(example)}
    missing = sorted({i.name for i in inputs} - set(feeds))
    if missing:
        raise ConversionError(f"ONNX passes: no example value for model input(s) {missing}")
    rng = np.random.default_rng(seed)
    second = {}
    for name, value in feeds.items():
        if value.dtype.kind == "f" and value.size:
            std = float(value.std()) if value.size > 1 else 1.0
            std = std if math.isfinite(std) and std > 0 else 1.0
            second[name] = (float(value.mean()) + std * rng.standard_normal(value.shape)).astype(value.dtype)
        else:
            second[name] = value.copy()
    return [feeds, second]


def _save_onnx(model: onnx_lib.ModelProto, path: Path) -> None:
    if model.ByteSize() > 1_800_000_000:  # protobuf's 2 GB limit: weights go to a side file
        onnx_lib.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx_lib.save_model(model, str(path))


def _run_onnx(model: onnx_lib.ModelProto, feeds_list: list[dict[str, np.ndarray]], path: Path,
              names: list[str] | None = None) -> tuple[list[list[np.ndarray]], list[str]]:
    """Outputs (in ``names`` order, default the graph's output order) of ONNX Runtime with every graph
    optimisation disabled — the plain oracle, so the check sees the graph as written."""
    from edgekit.runtime.backends.onnxruntime import OnnxRuntimeRunner

    _save_onnx(model, path)
    names = names if names is not None else [o.name for o in model.graph.output]
    results = []
    with OnnxRuntimeRunner(path, graph_optimization=False) as runner:
        available = set(runner.output_names())
        missing = [n for n in names if n not in available]
        if missing:
            raise ValueError(f"output(s) {missing} no longer exist")
        for feeds in feeds_list:
            outputs = runner.infer(feeds)
            results.append([np.asarray(outputs[n]) for n in names])
    return results, names


def _node_count(model: onnx_lib.ModelProto) -> int:
    return len(model.graph.node)


def _passes_checker(model: onnx_lib.ModelProto) -> bool:
    if model.ByteSize() > 1_800_000_000:  # the in-memory checker cannot take > 2 GB protos
        return False
    try:
        onnx_lib.checker.check_model(model)
    except Exception:
        return False
    return True


def _restore_metadata(source: onnx_lib.ModelProto, target: onnx_lib.ModelProto) -> None:
    """Put back metadata entries (edgekit's spec) a pass dropped."""
    present = {p.key for p in target.metadata_props}
    for prop in source.metadata_props:
        if prop.key not in present:
            entry = target.metadata_props.add()
            entry.key, entry.value = prop.key, prop.value


def run_onnx_passes(model: onnx_lib.ModelProto, example: np.ndarray | Mapping[str, np.ndarray],
                    skip: Sequence[str] = (), tolerance: float = DEFAULT_TOLERANCE, dump_dir: Path | None = None,
                    extra_passes: Sequence[Pass] = (),
                    passes: Sequence[Pass] | None = None) -> tuple[onnx_lib.ModelProto, list[PassRecord]]:
    """Run the ONNX passes (``passes``, default :data:`ONNX_PASSES`, then ``extra_passes`` — the
    target legalisation stage, e.g. ``legalization_passes("ncnn")``) on a copy of ``model``.

    example: the input array (e.g. float32 [1, 3, H, W]) for a single-input model, or a dict
    input name -> array. Each pass is checked with ONNX Runtime (graph optimisation disabled) on
    the example and a seeded random input; it must keep the output names, shapes and values
    (relative error <= ``tolerance``) and produce a model ``onnx.checker`` accepts.
    ``dump_dir``: after each pass write ``onnx_NN_<name>.onnx``. Returns the rewritten copy and one
    record per pass. Raises ConversionError naming the failing pass; ``model`` is never modified.
    """
    passes = (ONNX_PASSES if passes is None else tuple(passes)) + tuple(extra_passes)
    check_skip_names(skip, passes)
    skip_names = _skip_set(skip)
    if not isinstance(model, onnx_lib.ModelProto):
        raise ConversionError(f"ONNX passes need an onnx.ModelProto, got {type(model).__name__}")
    current = onnx_lib.ModelProto()
    current.CopyFrom(model)
    feeds_list = _onnx_check_inputs(current, example)
    # hold every pass to onnx.checker only if the input passes it (some runnable third-party models do not)
    checked = _passes_checker(current)
    records = []
    with tempfile.TemporaryDirectory(prefix="edgekit-passes-") as tmp:
        try:
            reference, names = _run_onnx(current, feeds_list, Path(tmp) / "reference.onnx")
        except EdgekitError:
            raise
        except Exception as exc:
            raise ConversionError(f"ONNX passes: ONNX Runtime cannot run the input model ({_first_line(exc)})") from None
        _require_finite("ONNX passes", "the input model's outputs", reference)
        for index, p in enumerate(passes, start=1):
            before = _node_count(current)
            if p.name in skip_names:
                records.append(_skipped(p, "onnx", before))
                continue
            work = onnx_lib.ModelProto()
            work.CopyFrom(current)
            result, seconds = _apply(p, work)
            candidate = result.model
            if not isinstance(candidate, onnx_lib.ModelProto):
                raise ConversionError(f"pass {p.name!r} returned {type(candidate).__name__}, expected an onnx.ModelProto")
            _restore_metadata(current, candidate)
            try:
                if checked:
                    onnx_lib.checker.check_model(candidate)
                outputs, _ = _run_onnx(candidate, feeds_list, Path(tmp) / f"pass_{index:02d}.onnx", names)
            except EdgekitError as exc:
                raise ConversionError(f"pass {p.name!r} produced a model ONNX Runtime cannot load: {exc}") from None
            except Exception as exc:
                raise ConversionError(f"pass {p.name!r} produced an invalid model "
                                      f"({type(exc).__name__}: {_first_line(exc)})") from None
            error = _check(p.name, reference, outputs, tolerance)
            records.append(PassRecord(p.name, "onnx", int(result.rewrites), error.max_abs, error.max_rel, before,
                                      _node_count(candidate), seconds, notes=result.notes))
            current, reference = candidate, outputs
            (Path(tmp) / f"pass_{index:02d}.onnx").unlink(missing_ok=True)
            if dump_dir is not None:
                Path(dump_dir).mkdir(parents=True, exist_ok=True)
                _save_onnx(current, Path(dump_dir) / f"onnx_{index:02d}_{p.name}.onnx")
    return current, records


__all__ = [
    "DEFAULT_TOLERANCE",
    "MODULE_PASSES",
    "ONNX_PASSES",
    "STAGES",
    "LegalizationPass",
    "Pass",
    "PassRecord",
    "PassResult",
    "all_pass_names",
    "check_skip_names",
    "legalization_passes",
    "non_finite_summary",
    "output_error",
    "run_module_passes",
    "run_onnx_passes",
]
