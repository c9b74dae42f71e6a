"""torch -> ONNX export with the ModelSpec embedded in the ONNX metadata."""

from __future__ import annotations

import io
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import onnx
import torch
from torch import nn

from edgekit.atomic_io import atomic_path
from edgekit.errors import ConversionError, first_line
from edgekit.spec import ONNX_METADATA_KEY, ModelSpec

DEFAULT_OPSET = 17
MIN_OPSET = 17
# The TorchScript exporter's highest opset (torch.onnx ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET): above it torch only warns
# and stamps the newer opset on operators built to older definitions. The CLI's OPSET_RANGE repeats the two numbers
# so that parsing arguments needs no torch; a test keeps them equal.
MAX_OPSET = 20


def export_onnx(model: nn.Module, spec: ModelSpec, out_path: str | Path, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = False, untouched: bool = False) -> Path:
    """Export ``model`` (forward: float32 [B,3,H,W] -> tuple of raw head tensors in
    ``spec.head.output_names`` order) to ONNX at ``out_path``.

    Uses the TorchScript-based exporter (``dynamo=False``): it is the one every backend's
    converter has been tested against for years, and it needs no extra packages. The graph's
    input is named ``spec.input_name`` with a fixed batch of 1 unless ``dynamic_batch``.
    The file is written next to its destination and renamed into place.

    ``untouched``: no constant folding and BatchNormalization kept as nodes — the exporter's own
    folding is itself a graph rewrite, and ``--no-passes`` promises the graph as the model wrote it.
    """
    if opset < MIN_OPSET:
        raise ConversionError(f"--opset {opset}: edgekit exports at opset >= {MIN_OPSET} "
                              "(per-channel quantisation and modern operators need it)")
    if opset > MAX_OPSET:
        raise ConversionError(f"--opset {opset}: torch's exporter writes at most opset {MAX_OPSET}")
    out_path = Path(out_path)
    model = model.eval()
    height, width = spec.input_size
    dummy = torch.zeros(1, 3, height, width, dtype=torch.float32)
    with torch.no_grad():
        try:
            outputs = model(dummy)
        except Exception as exc:  # the model itself fails on a correctly shaped input
            raise ConversionError(f"export: the model fails on a [1, 3, {height}, {width}] input "
                                  f"({type(exc).__name__}: {first_line(exc, empty='')})") from None
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    if len(outputs) != len(spec.head.output_names):
        raise ConversionError(f"export: the model returns {len(outputs)} tensors but spec.head.output_names "
                              f"lists {len(spec.head.output_names)} ({list(spec.head.output_names)})")
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {spec.input_name: {0: "batch"}}
        dynamic_axes.update({name: {0: "batch"} for name in spec.head.output_names})
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(out_path) as tmp_path:
            with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (dummy,), str(tmp_path), dynamo=False, opset_version=opset,
                                  input_names=[spec.input_name], output_names=list(spec.head.output_names),
                                  dynamic_axes=dynamic_axes, do_constant_folding=not untouched,
                                  training=torch.onnx.TrainingMode.PRESERVE if untouched
                                  else torch.onnx.TrainingMode.EVAL)
            onnx_model = onnx.load(str(tmp_path))
            embed_spec(onnx_model, spec)
            onnx.checker.check_model(onnx_model)
            onnx.save(onnx_model, str(tmp_path))
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(f"export to ONNX failed: {first_line(exc)}") from None
    return out_path


def embed_spec(onnx_model: onnx.ModelProto, spec: ModelSpec) -> None:
    """Store the spec JSON in metadata_props (replacing an older entry)."""
    for prop in list(onnx_model.metadata_props):
        if prop.key == ONNX_METADATA_KEY:
            onnx_model.metadata_props.remove(prop)
    entry = onnx_model.metadata_props.add()
    entry.key = ONNX_METADATA_KEY
    entry.value = spec.to_json()
    onnx_model.producer_name = "edgekit"
