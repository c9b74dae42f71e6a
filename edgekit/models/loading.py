"""Loading and saving detector checkpoints.

edgekit's own format is a plain dict that ``torch.load(weights_only=True)`` reads::

    {"format": "edgekit", "version": 1, "config": ModelConfig dict, "spec": ModelSpec dict,
     "state_dict": {name: tensor}, "metrics": {...}}

Checkpoints users bring load without flags: Ultralytics / classic YOLOv5 files (their pickled model objects are
read as inert data and rebuilt from edgekit's own modules) and YOLOX official ``.pth`` files. Other third-party
state_dicts load when the caller says which family they are (and the class names). Nothing from a file is ever
executed: edgekit's own and state_dict files go through ``torch.load(weights_only=True)``, module pickles through
the restricted unpickler of :mod:`edgekit.models.imports.pickled`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekit.atomic_io import atomic_path
from edgekit.errors import ModelFileError, SpecError
from edgekit.filetypes import is_zip_file, looks_like_onnx
from edgekit.models import FAMILIES, DetectorModel, ModelConfig, build_model, family_names
from edgekit.models.checkpoint import load_state_dict_strict, safe_torch_load
from edgekit.models.imports.pickled import is_module_pickle
from edgekit.spec import ModelSpec

CHECKPOINT_FORMAT = "edgekit"
CHECKPOINT_VERSION = 1


def load_checkpoint(path: str | Path, family: str | None = None, class_names: Sequence[str] | None = None,
                    input_size: tuple[int, int] | None = None, trust_upstream: str | None = None,
                    end2end: bool | None = None) -> DetectorModel:
    """Load a checkpoint into an eval-mode ``nn.Module`` carrying ``.spec`` (ModelSpec).

    ``path`` is, without any flag:
    - an edgekit checkpoint (``.config`` is attached too);
    - an Ultralytics 8.x ``best.pt`` / ``last.pt`` (YOLOv5u, YOLOv8, YOLO11, YOLO26) or a classic YOLOv5 one: the
      pickled model object is read as inert data (:mod:`edgekit.models.imports.pickled`) and rebuilt from edgekit's
      own modules (:mod:`edgekit.models.imports.ultralytics`); ``trust_upstream`` names an installed package
      allowed to provide the layer classes edgekit does not implement, ``end2end`` picks YOLO26's one-to-one head;
    - a YOLOX official ``.pth`` (``{"model": state_dict}``), its scale found from the tensor shapes;
    or a plain state_dict when ``family`` is given (then ``class_names`` sets the number of classes).

    ``class_names`` renames the classes of an imported checkpoint (same count). ``input_size`` (H, W) overrides
    the export size. ``model.input_size_from_checkpoint`` says whether ``spec.input_size`` is the size the file
    says it was trained at (True) or a default edgekit assumed (False): a target profile's size applies only then.
    """
    path = Path(path)
    if path.suffix.lower() == ".onnx" and not is_zip_file(path):
        raise ModelFileError(f"{path}: is an ONNX file, not a PyTorch checkpoint; pass it to detect/validate/convert "
                             "as it is")
    if looks_like_onnx(path):  # a renamed export: say so, rather than "truncated or corrupt checkpoint"
        raise ModelFileError(f"{path}: is an ONNX model (by its content), not a PyTorch checkpoint; rename it to "
                             f"{path.stem}.onnx and pass that file")
    if trust_upstream is not None and not _package_installed(trust_upstream):
        raise ModelFileError(f"--trust-upstream {trust_upstream}: no such package is installed here (it must be "
                             "importable, e.g. pip install it; edgekit never downloads code)")
    module_pickle = is_module_pickle(path)
    if family is not None and module_pickle:
        raise ModelFileError(f"{path}: pickles its model object (Ultralytics / YOLOv5), which describes itself: drop "
                             f"--family {family}")
    if module_pickle:
        model = _from_module_pickle(path, trust_upstream, end2end)
    else:
        for given, option in ((trust_upstream, "--trust-upstream"), (end2end, "--end2end/--no-end2end")):
            if given is not None:  # read only from a pickled model object: accepted and ignored before
                raise ModelFileError(f"{path}: {option} applies to an Ultralytics / YOLOv5 checkpoint (a pickled model "
                                     "object); this one is a state_dict checkpoint whose head is fixed: drop it")
        payload = safe_torch_load(path)
        if isinstance(payload, Mapping) and payload.get("format") == CHECKPOINT_FORMAT:
            model = _from_edgekit_payload(payload, str(path))
            model.input_size_from_checkpoint = True
            if family is not None and family != model.spec.family:
                raise ModelFileError(f"{path}: is an edgekit {model.spec.family!r} checkpoint, not {family!r}")
        elif family is None and _yolox_tensors(payload) is not None:
            from edgekit.models.imports.yolox_official import build_yolox_official

            model = build_yolox_official(_yolox_tensors(payload), str(path), None, None)
            model.input_size_from_checkpoint = False
        else:
            model = _from_state_dict(path, payload, family, class_names, input_size)
            model.input_size_from_checkpoint = False
    if class_names is not None and tuple(class_names) != tuple(model.spec.class_names):
        names = tuple(str(n) for n in class_names)
        if len(names) != model.spec.num_classes:
            raise ModelFileError(f"{path}: --names lists {len(names)} classes, the checkpoint has {model.spec.num_classes}")
        model.spec = dataclasses.replace(model.spec, class_names=names)
    if input_size is not None and tuple(input_size) != tuple(model.spec.input_size):
        model.spec = model.spec.with_input_size((int(input_size[0]), int(input_size[1])))
        model.input_size_from_checkpoint = True  # the user's size is as binding as the file's
    return model.eval()


def _package_installed(name: str) -> bool:
    """Whether ``name`` (``pkg`` or ``pkg.sub``) names an installed package; only its top level is looked up, so
    nothing of it is imported (executed) here."""
    import importlib.util

    parts = name.split(".")
    if not all(part.isidentifier() for part in parts):
        return False  # '..', a path or an empty name is not a package name
    try:
        return importlib.util.find_spec(parts[0]) is not None
    except (ImportError, ValueError):
        return False


def _from_module_pickle(path: Path, trust_upstream: str | None, end2end: bool | None) -> DetectorModel:
    """An Ultralytics / YOLOv5 checkpoint that pickles the model object, rebuilt from edgekit's modules."""
    from edgekit.models.imports.pickled import PickledObject, load_pickled_checkpoint
    from edgekit.models.imports.ultralytics import build_from_pickled

    checkpoint = load_pickled_checkpoint(path)
    payload = checkpoint.payload
    # Ultralytics and YOLOv5 load the EMA weights when a (mid-training) file has them, else "model".
    model_object = None
    if isinstance(payload, Mapping):
        model_object = payload.get("ema") if isinstance(payload.get("ema"), PickledObject) else payload.get("model")
    if not isinstance(model_object, PickledObject) or not model_object.is_module:
        shown = ", ".join(checkpoint.class_names[:6]) or "none"
        raise ModelFileError(f"{path}: pickles objects ({shown}) but no model under 'model' or 'ema'; expected an "
                             "Ultralytics or YOLOv5 checkpoint, an edgekit checkpoint or a state_dict")
    model = build_from_pickled(checkpoint, str(path), end2end=end2end, trust_upstream=trust_upstream)
    model.input_size_from_checkpoint = bool(getattr(model, "input_size_from_checkpoint", False))
    return model


def _yolox_tensors(payload: Any) -> Mapping[str, Any] | None:
    """The state_dict of a YOLOX official checkpoint (``{"model": state_dict, ...}`` or a bare one), else None."""
    from edgekit.models.imports.yolox_official import is_yolox_state_dict

    for candidate in (payload.get("model") if isinstance(payload, Mapping) else None, payload):
        if isinstance(candidate, Mapping) and candidate and is_yolox_state_dict(candidate):
            return candidate
    return None


def _from_state_dict(path: Path, payload: Any, family: str | None, class_names: Sequence[str] | None,
                     input_size: tuple[int, int] | None) -> DetectorModel:
    """A plain state_dict of a built-in family: the user says which family and which classes."""
    if family is None:
        raise ModelFileError(f"{path}: a plain state_dict does not say which model it belongs to; "
                             f"pass --family NAME (one of {', '.join(family_names())}) and --names FILE")
    if not isinstance(payload, Mapping):
        raise ModelFileError(f"{path}: expected a state_dict (a mapping of tensors), got {type(payload).__name__}")
    names = tuple(class_names) if class_names else None
    if names is None:
        raise ModelFileError(f"{path}: pass --names FILE (one class name per line) with a plain state_dict")
    size = (int(input_size[0]), int(input_size[1])) if input_size else _default_input_size(family)
    config = (ModelConfig(family=family, num_classes=len(names), input_size=size) if size
              else ModelConfig(family=family, num_classes=len(names)))
    model = build_model(config, names)
    load_state_dict_strict(model, payload, str(path))
    return model


def _default_input_size(family: str) -> tuple[int, int] | None:
    """A family module's DEFAULT_INPUT_SIZE (e.g. FastestDet's 352x352), if it declares one."""
    if family not in FAMILIES:
        return None  # build_model names the unknown family with a did-you-mean
    module = importlib.import_module(FAMILIES[family].partition(":")[0])
    return getattr(module, "DEFAULT_INPUT_SIZE", None)


def _from_edgekit_payload(payload: Mapping[str, Any], source: str) -> DetectorModel:
    version = payload.get("version")
    if version != CHECKPOINT_VERSION:
        raise ModelFileError(f"{source}: edgekit checkpoint version {version!r} is not supported (expected {CHECKPOINT_VERSION})")
    for key in ("config", "spec", "state_dict"):
        if key not in payload:
            raise ModelFileError(f"{source}: edgekit checkpoint lacks its {key!r} entry")
    try:
        config = ModelConfig.from_dict(dict(payload["config"]))
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelFileError(f"{source}: malformed 'config' entry ({exc})") from None
    spec = ModelSpec.from_dict(payload["spec"], source=f"{source} spec")
    model = build_model(config, spec.class_names)
    load_state_dict_strict(model, payload["state_dict"], source)
    model.spec = spec
    model.metrics = dict(payload.get("metrics", {}))
    return model


def save_checkpoint(model: DetectorModel, path: str | Path, metrics: Mapping[str, Any] | None = None,
                    half_weights: bool = False) -> Path:
    """Write ``model`` (with ``.spec`` and ``.config``) in edgekit's checkpoint format.

    ``half_weights`` stores floating-point tensors as float16 (half the file; the bundled zoo must fit
    its size budget). Loading copies them back into the float32 model, so a half checkpoint loads as
    the float32 model whose weights are the fp16-rounded values: score it after rounding
    (``round_weights_to_half``) so the metrics it records are what a fresh evaluation gives.
    """
    path = Path(path)
    if model.config is None:
        raise SpecError(f"{path}: an imported checkpoint ({model.spec.family}) has no edgekit ModelConfig to save; "
                        "edgekit checkpoints hold the built-in families (convert or export the model instead)")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if half_weights:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": model.config.to_dict(),
        "spec": model.spec.to_dict(),
        "state_dict": state,
        "metrics": dict(metrics or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def round_weights_to_half(model: nn.Module) -> nn.Module:
    """Round every floating-point parameter and buffer of ``model`` to float16 values, in place
    (the dtype stays float32): the model a ``half_weights`` checkpoint loads back as."""
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
    return model
