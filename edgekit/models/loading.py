"""Loading and saving detector checkpoints.

edgekit's own format is a plain dict that ``torch.load(weights_only=True)`` reads::

    {"format": "edgekit", "version": 1, "config": ModelConfig dict, "spec": ModelSpec dict,
     "state_dict": {name: tensor}, "metrics": {...}}

Third-party state_dicts load when the caller says which family they are (and the class names).
Nothing from a file is ever executed: unpickling is restricted to tensors and plain containers.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekit.errors import ModelFileError
from edgekit.models import FAMILIES, ModelConfig, build_model, family_names
from edgekit.models.checkpoint import load_state_dict_strict, safe_torch_load
from edgekit.spec import ModelSpec

CHECKPOINT_FORMAT = "edgekit"
CHECKPOINT_VERSION = 1


def load_checkpoint(path: str | Path, family: str | None = None, class_names: Sequence[str] | None = None,
                    input_size: tuple[int, int] | None = None) -> nn.Module:
    """Load a checkpoint into an ``nn.Module`` carrying ``.spec`` (ModelSpec) and ``.config``.

    ``path`` is an edgekit checkpoint, or a plain state_dict when ``family`` is given (then
    ``class_names`` sets the number of classes). ``input_size`` (H, W) overrides the export size.
    """
    path = Path(path)
    payload = safe_torch_load(path)
    if isinstance(payload, Mapping) and payload.get("format") == CHECKPOINT_FORMAT:
        model = _from_edgekit_payload(payload, str(path))
        if family is not None and family != model.spec.family:
            raise ModelFileError(f"{path}: is an edgekit {model.spec.family!r} checkpoint, not {family!r}")
    else:
        if family is None:
            raise ModelFileError(f"{path}: a plain state_dict does not say which model it belongs to; "
                                 f"pass --family NAME (one of {', '.join(family_names())}) and --names FILE")
        if not isinstance(payload, Mapping):
            raise ModelFileError(f"{path}: expected a state_dict (a mapping of tensors), got {type(payload).__name__}")
        names = tuple(class_names) if class_names else None
        if names is None:
            raise ModelFileError(f"{path}: pass --names FILE (one class name per line) with a plain state_dict")
        size = tuple(input_size) if input_size else _default_input_size(family)
        config = ModelConfig(family=family, num_classes=len(names), **({"input_size": size} if size else {}))
        model = build_model(config, names)
        load_state_dict_strict(model, payload, str(path))
    if input_size is not None and tuple(input_size) != tuple(model.spec.input_size):
        model.spec = model.spec.with_input_size(tuple(input_size))
    return model.eval()


def _default_input_size(family: str) -> tuple[int, int] | None:
    """A family module's DEFAULT_INPUT_SIZE (e.g. FastestDet's 352x352), if it declares one."""
    if family not in FAMILIES:
        return None  # build_model names the unknown family with a did-you-mean
    module = importlib.import_module(FAMILIES[family].partition(":")[0])
    return getattr(module, "DEFAULT_INPUT_SIZE", None)


def _from_edgekit_payload(payload: Mapping[str, Any], source: str) -> nn.Module:
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


def save_checkpoint(model: nn.Module, path: str | Path, metrics: Mapping[str, Any] | None = None,
                    half_weights: bool = False) -> Path:
    """Write ``model`` (with ``.spec`` and ``.config``) in edgekit's checkpoint format.

    ``half_weights`` stores floating-point tensors as float16 (half the file; the bundled zoo must fit
    its size budget). Loading copies them back into the float32 model, so a half checkpoint loads as
    the float32 model whose weights are the fp16-rounded values: score it after rounding
    (``round_weights_to_half``) so the metrics it records are what a fresh evaluation gives.
    """
    path = Path(path)
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
    tmp = path.with_name(f".{path.name}.partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def round_weights_to_half(model: nn.Module) -> nn.Module:
    """Round every floating-point parameter and buffer of ``model`` to float16 values, in place
    (the dtype stays float32): the model a ``half_weights`` checkpoint loads back as."""
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
    return model
