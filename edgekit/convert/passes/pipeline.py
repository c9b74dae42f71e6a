"""The pass pipeline: ordered stages of passes, each pass checked for numeric equivalence.

A :class:`Stage` is a name, the kind of model its passes rewrite (:class:`TorchModels` for an
``nn.Module``, :class:`OnnxModels` for an ``onnx.ModelProto``) and its passes in the order they run,
each with the reason for its place — the stage lists below are the whole registry: adding a pass is
one module, one line in a list and one test file (``tests/convert/passes/test_<name>.py``).

One loop (:func:`run_stages`) runs every stage. After each pass the model before and after are
evaluated on the same check inputs — the example tensor and one seeded random tensor of the same
shape and similar statistics — with torch (in float64 when the model allows it, see
:class:`TorchModels`) or ONNX Runtime with graph optimisation disabled, and the largest absolute
difference and the relative one, ``max |before - after| / max |before|`` per output, land in the
pass's :class:`PassRecord` (the manifest's ``passes``). The outputs after a pass are the reference
for the next one: each pass costs one evaluation, and none when it left the model exactly as it
was (:meth:`Session.state`: same objects, tensor versions and attributes, or the same serialized
graph — the outputs are then the previous ones, bit for bit). Beyond ``tolerance`` the run aborts with a
:class:`~edgekit.errors.ConversionError` naming the pass. NaN and Inf are never "equal": a model
whose outputs are not finite before any pass is refused, and a pass whose outputs stop being finite
aborts (:func:`output_error`). The caller's model is never modified: the stages run on one copy
(passes may mutate it in place — on failure the run aborts, and the copy is dropped).

Backend legalisation (:data:`LEGALIZATION`) is a stage too: what a backend's converter needs that
the portable model must not carry. It runs on the model handed to that backend's builder, after the
generic stages, with the same checks, records and ``--skip`` names.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import torch
from torch import nn

from edgekit.convert.passes.base import Pass, PassRecord, PassResult
from edgekit.convert.passes.module import focus, fold_bn, ncnn_focus, noop, repvgg, spp
from edgekit.convert.passes.module.tree import module_count
from edgekit.convert.passes.onnx import bn_fold, constant_fold, dead_nodes, simplify
from edgekit.errors import ConversionError, EdgekitError, did_you_mean, first_line
from edgekit.tolerances import MODULE_PASS
from edgekit.validate.compare import TensorError, tensor_error

#: module passes, checked in float64 (why 1e-5: edgekit.tolerances.MODULE_PASS)
DEFAULT_TOLERANCE = MODULE_PASS

#: one evaluation of a model on every check input: outputs per input, in a fixed order
Outputs = list[list[np.ndarray]]


# --------------------------------------------------------------------------------------------
# model kinds: how a stage copies, evaluates, measures and dumps its models


class Session(ABC):
    """One run of stages over one working copy: the check inputs and whatever evaluating needs."""

    #: the precision the before/after comparison runs in (PassRecord.check_dtype)
    check_dtype: str = "float32"

    @abstractmethod
    def evaluate(self, model: Any) -> Outputs:
        """Outputs of ``model`` on every check input (per input, outputs in a fixed order); raises on failure."""

    @abstractmethod
    def size(self, model: Any) -> int:
        """The structural size recorded per pass (torch modules, ONNX nodes)."""

    @abstractmethod
    def state(self, model: Any) -> Any:
        """Everything the model's outputs depend on, compared with ``==``: equal before and after a pass
        means the pass left the model exactly as it was (its outputs are the ones before it, bit for bit)."""

    def accept(self, name: str, candidate: Any) -> None:
        """Checks on a pass's result before it is evaluated (ONNX: metadata back, onnx.checker); default none."""
        return None

    @abstractmethod
    def dump(self, model: Any, path_stem: Path) -> None:
        """Write ``model`` after a pass for ``--dump-dir`` (``path_stem`` plus the kind's suffixes)."""

    @abstractmethod
    def finish(self, model: Any) -> Any:
        """The working model as the caller's model again (e.g. back from float64)."""

    def close(self) -> None:
        """Release what the session holds (temporary files); default nothing."""
        return None


class ModelKind(ABC):
    """The kind of model a stage's passes rewrite."""

    #: the type a pass must return
    model_type: ClassVar[type]
    #: what error messages call this kind's passes
    label: ClassVar[str]

    @abstractmethod
    def start(self, model: Any, example: Any) -> tuple[Session, Any, Outputs]:
        """(the session, a private working copy of ``model``, the copy's outputs on the check inputs).
        Raises ConversionError when ``model`` or ``example`` cannot be used."""


def _flatten_outputs(output: Any) -> list[torch.Tensor]:
    """Tensor / tuple / list / dict (by sorted key) of tensors -> flat list of tensors."""
    if isinstance(output, torch.Tensor):
        return [output.detach()]
    if isinstance(output, Mapping):
        return [t for key in sorted(output) for t in _flatten_outputs(output[key])]
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _flatten_outputs(item)]
    raise ConversionError(f"module passes: the model returned {type(output).__name__}; "
                          "expected tensors (or tuples / lists / dicts of them)")


def _as_array(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.cpu()
    return (tensor if tensor.dtype == torch.float64 else tensor.float()).numpy()


def _value_or_id(value: Any, depth: int = 0) -> Any:
    """An immutable scalar itself; a tensor by identity, storage and in-place version; a list / tuple / dict
    by identity and contents (4 levels deep, then identity alone); anything else by identity."""
    if isinstance(value, (bool, int, float, str, type(None))):
        return value
    if isinstance(value, torch.Tensor):
        return "tensor", id(value), value.data_ptr(), value._version
    if isinstance(value, (list, tuple)) and depth < 4:
        return type(value).__name__, id(value), tuple(_value_or_id(v, depth + 1) for v in value)
    if isinstance(value, dict) and depth < 4:
        return "dict", id(value), tuple((k, _value_or_id(v, depth + 1)) for k, v in value.items())
    return "id", id(value)


def _uniform_float_dtype(model: nn.Module) -> torch.dtype | None:
    """The one floating dtype of all parameters and buffers, or None (none, or mixed precision)."""
    dtypes = {t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


def _torch_check_inputs(example: torch.Tensor, seed: int = 0) -> list[torch.Tensor]:
    """The example and one seeded random tensor with the example's shape, mean and std."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(example.shape, generator=generator, dtype=torch.float32)
    values = example.detach().float()
    std = float(values.std()) if values.numel() > 1 else 1.0
    if not math.isfinite(std) or std == 0.0:
        std = 1.0
    mean = float(values.mean()) if values.numel() else 0.0
    return [example, (mean + std * noise).to(example.dtype)]


class TorchSession(Session):
    """Check inputs for a torch model, and how to feed them: as one batch when the model accepts it.

    Float64 convolutions are far slower than float32 ones, so the check inputs go through the model
    in one forward per pass when it takes them as a batch (each output's leading dimension the total
    batch); the outputs are split back per input, so each input's error is still relative to its own
    outputs. A model fixed to its example's batch size gets one forward per input.
    """

    def __init__(self, inputs: list[torch.Tensor], model_dtype: torch.dtype | None, check_dtype: str) -> None:
        self.inputs = inputs
        self.batches = [int(x.shape[0]) for x in inputs]
        self.joined: torch.Tensor | None = torch.cat(inputs)
        self.model_dtype = model_dtype
        self.check_dtype = check_dtype

    def evaluate(self, model: Any) -> Outputs:
        with torch.no_grad():
            if self.joined is not None:
                try:
                    outputs = _flatten_outputs(model(self.joined))
                except EdgekitError:
                    raise
                except Exception:  # fixed to one batch size (or broken: the per-input run says how)
                    outputs = None
                if outputs is not None and all(t.dim() and t.shape[0] == len(self.joined) for t in outputs):
                    parts = [t.split(self.batches) for t in outputs]
                    return [[_as_array(part[i]) for part in parts] for i in range(len(self.inputs))]
                self.joined = None  # decided once, on the model before any pass
            return [[_as_array(t) for t in _flatten_outputs(model(x))] for x in self.inputs]

    def size(self, model: Any) -> int:
        return module_count(model)

    def state(self, model: Any) -> Any:
        # every module (identity, class, plain attributes: immutable values by value, the rest by identity)
        # and every tensor (identity, storage, in-place version counter): a pass that replaced, mutated or
        # re-configured anything changes it; one that only looked (tracing restores copies) may too, and is
        # then evaluated like any other
        modules = [(path, id(m), type(m), tuple((k, _value_or_id(v)) for k, v in vars(m).items()))
                   for path, m in model.named_modules(remove_duplicate=False)]
        tensors = [(name, id(t), t.data_ptr(), t._version)
                   for name, t in (*model.named_parameters(remove_duplicate=False),
                                   *model.named_buffers(remove_duplicate=False))]
        return id(model), modules, tensors

    def dump(self, model: Any, path_stem: Path) -> None:
        path_stem.with_suffix(".txt").write_text(repr(model) + "\n")
        # in the caller's dtype, loadable with torch.load(weights_only=True)
        torch.save(self.finish(copy.deepcopy(model)).state_dict(), path_stem.with_suffix(".pt"))

    def finish(self, model: Any) -> Any:
        if self.model_dtype is not None and self.check_dtype != str(self.model_dtype).removeprefix("torch."):
            return model.to(self.model_dtype)
        return model


class TorchModels(ModelKind):
    """Torch ``nn.Module`` stages, run and checked in float64 when the model allows it.

    Why float64: the module rewrites are exact in real arithmetic, so in float64 an honest pass shows
    errors around 1e-13 and any mistake stands out by many orders of magnitude. In float32 the same
    exact rewrite differs from the original by rounding alone — re-associated sums, BN scales
    multiplied into weights — and a deep network can amplify that: on randomly initialised families
    with calibrated BatchNorm statistics it reaches ~5e-5 of the output magnitude, which would make a
    1e-5 float32 check reject correct passes. Folding in float64 also rounds every weight once, at the
    end, instead of once per pass. A model that cannot run in float64 (float32 tensors made inside
    forward) is checked in its own dtype; so is a mixed-precision one.
    """

    model_type = nn.Module
    label = "module passes"

    def start(self, model: Any, example: Any) -> tuple[Session, Any, Outputs]:
        if not isinstance(model, nn.Module):
            raise ConversionError(f"module passes need a torch nn.Module, got {type(model).__name__}")
        if not isinstance(example, torch.Tensor):
            raise ConversionError(f"module passes need an example torch.Tensor input, got {type(example).__name__}")
        work = copy.deepcopy(model).eval()
        inputs = _torch_check_inputs(example)
        model_dtype = _uniform_float_dtype(work)
        if model_dtype is not None and model_dtype != torch.float64 and example.is_floating_point():
            session = TorchSession([x.double() for x in inputs], model_dtype, "float64")
            try:
                return session, work, session.evaluate(work.double())
            except Exception:  # e.g. float32 tensors created inside forward: check in the model's own precision
                work = work.to(model_dtype)  # float32 -> float64 -> float32 is exact
        session = TorchSession(inputs, model_dtype, str(model_dtype or example.dtype).removeprefix("torch."))
        try:
            return session, work, session.evaluate(work)
        except EdgekitError:
            raise
        except Exception as exc:
            raise ConversionError(f"module passes: the model fails on the example input of shape "
                                  f"{tuple(example.shape)} ({type(exc).__name__}: {first_line(exc)})") from None


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Runtime inputs: graph inputs that are not initializers (those are overridable constants)."""
    initializers = {init.name for init in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def _onnx_check_inputs(model: onnx.ModelProto, example: np.ndarray | Mapping[str, np.ndarray],
                       seed: int = 0) -> list[dict[str, np.ndarray]]:
    """The example feeds and one seeded random set with each float input's shape, mean and std."""
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


def save_onnx(model: onnx.ModelProto, path: Path) -> None:
    """Save ``model``, with its weights in a side file beyond protobuf's 2 GB limit."""
    if model.ByteSize() > 1_800_000_000:
        onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save_model(model, str(path))


def _passes_checker(model: onnx.ModelProto) -> bool:
    if model.ByteSize() > 1_800_000_000:  # the in-memory checker cannot take > 2 GB protos
        return False
    try:
        onnx.checker.check_model(model)
    except Exception:
        return False
    return True


class OnnxSession(Session):
    """Check feeds for an ONNX model, evaluated by ONNX Runtime with every graph optimisation disabled
    (the plain oracle: the check sees the graph as written), through files in a temporary folder."""

    def __init__(self, feeds: list[dict[str, np.ndarray]], metadata: list[tuple[str, str]], checked: bool) -> None:
        self.feeds = feeds
        self.metadata = metadata
        self.checked = checked  # hold every pass to onnx.checker only if the input passes it
        self.names: list[str] | None = None  # output names, fixed by the model before any pass
        self._folder = tempfile.TemporaryDirectory(prefix="edgekit-passes-")
        self._count = 0

    def evaluate(self, model: Any) -> Outputs:
        from edgekit.runtime.backends.onnxruntime import OnnxRuntimeRunner

        self._count += 1
        path = Path(self._folder.name) / f"model_{self._count:02d}.onnx"
        save_onnx(model, path)
        names = self.names if self.names is not None else [o.name for o in model.graph.output]
        try:
            with OnnxRuntimeRunner(path, graph_optimization=False) as runner:
                missing = [n for n in names if n not in set(runner.output_names())]
                if missing:
                    raise ValueError(f"output(s) {missing} no longer exist")
                results = [[np.asarray(runner.infer(feeds)[n]) for n in names] for feeds in self.feeds]
        finally:
            for stale in Path(self._folder.name).iterdir():
                stale.unlink()
        self.names = names
        return results

    def size(self, model: Any) -> int:
        return len(model.graph.node)

    def state(self, model: Any) -> Any:
        return model.SerializeToString(deterministic=True)

    def accept(self, name: str, candidate: Any) -> None:
        present = {p.key for p in candidate.metadata_props}
        for key, value in self.metadata:  # edgekit's spec and the like, when a pass dropped them
            if key not in present:
                entry = candidate.metadata_props.add()
                entry.key, entry.value = key, value
        if self.checked:
            try:
                onnx.checker.check_model(candidate)
            except Exception as exc:
                raise ConversionError(f"pass {name!r} produced an invalid model "
                                      f"({type(exc).__name__}: {first_line(exc)})") from None

    def dump(self, model: Any, path_stem: Path) -> None:
        save_onnx(model, path_stem.with_suffix(".onnx"))

    def finish(self, model: Any) -> Any:
        return model

    def close(self) -> None:
        self._folder.cleanup()


class OnnxModels(ModelKind):
    """``onnx.ModelProto`` stages, checked with ONNX Runtime in float32 (it has no float64 Conv): the
    ONNX passes after the module passes (constant folding, dead nodes, simplifying an already folded
    graph) are exact there too; BN folding on a third-party graph rounds (the chain's tolerance says how much)."""

    model_type = onnx.ModelProto
    label = "ONNX passes"

    def start(self, model: Any, example: Any) -> tuple[Session, Any, Outputs]:
        if not isinstance(model, onnx.ModelProto):
            raise ConversionError(f"ONNX passes need an onnx.ModelProto, got {type(model).__name__}")
        work = onnx.ModelProto()
        work.CopyFrom(model)
        session = OnnxSession(_onnx_check_inputs(work, example), [(p.key, p.value) for p in work.metadata_props],
                              _passes_checker(work))
        try:
            return session, work, session.evaluate(work)
        except EdgekitError:
            session.close()
            raise
        except Exception as exc:
            session.close()
            raise ConversionError(f"ONNX passes: ONNX Runtime cannot run the input model ({first_line(exc)})") from None


TORCH = TorchModels()
ONNX = OnnxModels()


# --------------------------------------------------------------------------------------------
# stages


@dataclass(frozen=True)
class Stage:
    """name: what records and dumps call it (``module``, ``onnx``, a backend name); kind: the models its
    passes rewrite; passes: in the order they run."""

    name: str
    kind: ModelKind
    passes: tuple[Pass, ...]

    def with_passes(self, passes: Sequence[Pass]) -> Stage:
        return Stage(self.name, self.kind, tuple(passes))


#: torch nn.Module rewrites before export.
MODULE_STAGE = Stage("module", TORCH, (
    repvgg.ReparameterizeRepVGG(),  # first: folds each branch's BatchNorm itself and needs the branches intact
    focus.FocusToConv(),            # before fold_bn: leaves its conv's BatchNorm for fold_bn
    spp.SppToSppf(),                # exact (max of max); any order among the structural rewrites
    fold_bn.FoldBatchNorm(),        # catches every conv -> BN pair the rewrites above left
    noop.RemoveNoOps(),             # last: drops the Identity modules fold_bn leaves in Sequentials
))

#: rewrites of the exported ONNX graph (every backend reads it).
ONNX_STAGE = Stage("onnx", ONNX, (
    constant_fold.ConstantFold(),     # first: Shape chains and Identity-routed weights become constants the folds below read
    bn_fold.FoldBatchNormOnnx(),      # graphs that arrive with BatchNormalization nodes (third-party ONNX, --no-passes export)
    dead_nodes.RemoveDeadNodes(),     # what the folds left unread
    simplify.Simplify(),              # last: onnxsim as a broad clean-up; our own folds above stay visible in the records
))

#: backend -> its legalisation stage: what that backend's converter needs and the portable model must not
#: carry. Runs on the model handed to the backend's builder, after the stages above.
LEGALIZATION: Mapping[str, Stage] = {
    "ncnn": Stage("ncnn", TORCH, (
        ncnn_focus.FocusToPixelUnshuffle(),  # ncnn has no strided slice: a Focus stem the focus pass left (--skip focus)
    )),
}

MODULE_PASSES: tuple[Pass, ...] = MODULE_STAGE.passes
ONNX_PASSES: tuple[Pass, ...] = ONNX_STAGE.passes


def legalization_stage(backend: str | None) -> Stage | None:
    """The legalisation stage of ``backend``, or None when it needs none."""
    return LEGALIZATION.get(backend or "")


def all_pass_names() -> list[str]:
    """Every pass name ``--skip`` accepts: module passes, ONNX passes, then every backend's legalisation passes."""
    names: list[str] = []
    for stage in (MODULE_STAGE, ONNX_STAGE, *LEGALIZATION.values()):
        names.extend(p.name for p in stage.passes if p.name not in names)
    return names


def check_skips_apply(skip: Sequence[str] | str | None, stages: Sequence[Stage], what: str) -> None:
    """Raise ConversionError for a ``--skip`` name (a known pass: ``check_skip_names``) of a pass none of ``stages``
    runs — ncnn's legalisation for an ONNX Runtime target, a module pass on an ONNX input, anything under
    --no-passes: such a skip was accepted, did nothing and was not recorded. ``what`` says which run this is."""
    running = {p.name for stage in stages for p in stage.passes}
    for name in sorted(_skip_set(skip) - running):
        where = next((stage.name for stage in (MODULE_STAGE, ONNX_STAGE, *LEGALIZATION.values())
                      if any(p.name == name for p in stage.passes)), "")
        raise ConversionError(f"--skip {name}: the pass runs in the {where} stage, which {what} does not run "
                              f"(its passes: {', '.join(sorted(running)) or 'none'})")


def _skip_set(skip: Sequence[str] | str | None) -> set[str]:
    if skip is None:
        return set()
    if isinstance(skip, str):  # a single name, not its characters
        return {skip}
    return {str(name) for name in skip}


def check_skip_names(skip: Sequence[str] | str | None, extra_passes: Sequence[Pass] = ()) -> None:
    """Raise ConversionError for any name in ``skip`` that is not a known pass (with a did-you-mean)."""
    known = all_pass_names()
    known += [p.name for p in extra_passes if p.name not in known]
    for name in sorted(_skip_set(skip)):
        if name in known:
            continue
        raise ConversionError(f"--skip {name!r}: no pass of that name{did_you_mean(name, known, cutoff=0.5)} "
                              f"(passes: {', '.join(known)})")


# --------------------------------------------------------------------------------------------
# the equivalence check


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


def _require_finite(label: str, outputs: Outputs) -> None:
    """ConversionError when the model's outputs before any pass are not finite: no pass can be judged then."""
    held = non_finite_summary([o for per_input in outputs for o in per_input])
    if held:
        what = "the model's outputs" if label == TORCH.label else "the input model's outputs"
        raise ConversionError(f"{label}: {what} hold {held} on the check inputs before any pass ran; its weights "
                              "or buffers are not finite (NaN/Inf): use a checkpoint from a good epoch")


def _check(name: str, reference: Outputs, candidate: Outputs, tolerance: float) -> TensorError:
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


def _apply(p: Pass, kind: ModelKind, model: Any) -> tuple[PassResult, float]:
    start = time.perf_counter()
    try:
        result = p.apply(model)
    except EdgekitError:
        raise
    except Exception as exc:  # a bug or an unexpected model shape inside a pass: name the pass
        raise ConversionError(f"pass {p.name!r} failed: {type(exc).__name__}: {first_line(exc)}") from exc
    if not isinstance(result, PassResult):
        raise ConversionError(f"pass {p.name!r} returned {type(result).__name__}, expected a PassResult")
    if not isinstance(result.model, kind.model_type):
        raise ConversionError(f"pass {p.name!r} returned {type(result.model).__name__}, "
                              f"expected {'an nn.Module' if kind is TORCH else 'an onnx.ModelProto'}")
    return result, time.perf_counter() - start


def _evaluate(session: Session, name: str, candidate: Any) -> Outputs:
    session.accept(name, candidate)
    try:
        return session.evaluate(candidate)
    except EdgekitError as exc:
        raise ConversionError(f"pass {name!r} produced a model that fails to run: {exc}") from None
    except Exception as exc:
        raise ConversionError(f"pass {name!r} produced a model that fails to run "
                              f"({type(exc).__name__}: {first_line(exc)})") from None


def run_stages(stages: Sequence[Stage], model: Any, example: Any, skip: Sequence[str] | str = (),
               tolerance: float = DEFAULT_TOLERANCE, dump_dir: Path | None = None) -> tuple[list[Any], list[PassRecord]]:
    """Run ``stages`` (all of one model kind) in order on one copy of ``model``.

    example: an input the model accepts (torch: a tensor, e.g. float32 [1, 3, H, W]; ONNX: an array
    for a single-input model or a dict input name -> array). Returns the model after each stage (the
    caller's dtype; a stage's result is a snapshot the next stages do not touch) and one record per
    pass, skipped ones included. ``dump_dir``: after each pass write ``<stage>_NN_<name>`` files (torch:
    ``.txt`` module tree + ``.pt`` state_dict; ONNX: ``.onnx``). Raises ConversionError naming the pass
    that fails, changes the outputs' names or shapes, or whose relative error exceeds ``tolerance``;
    ``model`` itself is never modified.
    """
    if not stages:
        return [], []
    kind = stages[0].kind
    if any(stage.kind is not kind for stage in stages):
        raise ValueError("run_stages: the stages rewrite different kinds of model")
    check_skip_names(skip, [p for stage in stages for p in stage.passes])
    skip_names = _skip_set(skip)
    session, current, reference = kind.start(model, example)
    try:
        _require_finite(kind.label, reference)
        results: list[Any] = []
        records: list[PassRecord] = []
        for number, stage in enumerate(stages, start=1):
            for index, p in enumerate(stage.passes, start=1):
                before = session.size(current)
                if p.name in skip_names:
                    records.append(PassRecord(p.name, stage.name, 0, 0.0, 0.0, before, before, 0.0, skipped=True,
                                              check_dtype=session.check_dtype))
                    continue
                state = session.state(current)
                result, seconds = _apply(p, kind, current)
                if session.state(result.model) == state:  # untouched: the outputs before it, exactly
                    outputs, error = reference, TensorError(0.0, 0.0)
                else:
                    outputs = _evaluate(session, p.name, result.model)
                    error = _check(p.name, reference, outputs, tolerance)
                current, reference = result.model, outputs
                records.append(PassRecord(p.name, stage.name, int(result.rewrites), error.max_abs, error.max_rel,
                                          before, session.size(current), seconds, notes=result.notes,
                                          check_dtype=session.check_dtype))
                if dump_dir is not None:
                    Path(dump_dir).mkdir(parents=True, exist_ok=True)
                    session.dump(current, Path(dump_dir) / f"{stage.name}_{index:02d}_{p.name}")
            last = number == len(stages)
            results.append(session.finish(current if last else copy.deepcopy(current)))
        return results, records
    finally:
        session.close()


def run_module_passes(model: nn.Module, example: torch.Tensor, skip: Sequence[str] = (),
                      tolerance: float = DEFAULT_TOLERANCE, dump_dir: Path | None = None,
                      passes: Sequence[Pass] | None = None) -> tuple[nn.Module, list[PassRecord]]:
    """The module stage (``passes``, default :data:`MODULE_PASSES`) on a copy of ``model`` in eval mode.

    example: a float32 input the model accepts, e.g. [1, 3, H, W]. The model may return a tensor or a
    tuple / list / dict of tensors. Returns the rewritten copy (eval mode, the model's dtype) and one
    record per pass; see :func:`run_stages`.
    """
    stage = MODULE_STAGE if passes is None else MODULE_STAGE.with_passes(passes)
    (result,), records = run_stages([stage], model, example, skip, tolerance, dump_dir)
    return result, records


def run_onnx_passes(model: onnx.ModelProto, example: np.ndarray | Mapping[str, np.ndarray],
                    skip: Sequence[str] = (), tolerance: float = DEFAULT_TOLERANCE, dump_dir: Path | None = None,
                    extra_passes: Sequence[Pass] = (),
                    passes: Sequence[Pass] | None = None) -> tuple[onnx.ModelProto, list[PassRecord]]:
    """The ONNX stage (``passes``, default :data:`ONNX_PASSES`, then ``extra_passes``) on a copy of ``model``.

    Each pass is checked with ONNX Runtime (graph optimisation disabled) on the example and a seeded
    random input; it must keep the output names, shapes and values (relative error <= ``tolerance``)
    and produce a model ``onnx.checker`` accepts (when the input does). Returns the rewritten copy and
    one record per pass; see :func:`run_stages`.
    """
    stage = ONNX_STAGE.with_passes((*(ONNX_PASSES if passes is None else passes), *extra_passes))
    (result,), records = run_stages([stage], model, example, skip, tolerance, dump_dir)
    return result, records
