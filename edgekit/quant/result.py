"""The backend-neutral INT8 result: what calibration measured, in a form every emitter reads.

Everything is keyed by the names in the fp32 ONNX graph the artifact carries (``model.onnx``):

- ``activation_ranges``: tensor name -> (lo, hi), the float range calibration chose for that
  tensor (already clipped by the observer). Emitters derive their own encoding from it:
  uint8 affine for ONNX Runtime / OpenVINO (``uint8_affine``), int8 symmetric for TensorRT and
  NCNN (``int8_symmetric``).
- ``layers``: every quantisable layer (Conv / ConvTranspose node) with its input, output and
  weight names and the per-output-channel symmetric int8 weight scales ``max|W_c| / 127``.
- ``float_layers``: layer name -> why it stays in float (sensitivity ranking, user choice).
- ``quantize_head_outputs``: whether placements that requantise conv outputs (ONNX Runtime's) requantise the
  head convs' outputs too (the raw class logits / box tensors the decoder reads); only within a drift budget
  (``quant.head_outputs``), False in a cache written before the choice existed.

``model_sha256`` is the sha256 of the fp32 ONNX file the result was computed on: a cached result
is refused for any other model (``check_model``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.atomic_io import write_text_atomic
from edgekit.errors import CalibrationError
from edgekit.filetypes import read_json
from edgekit.runtime.artifact import sha256_file

RESULT_FORMAT = "edgekit-calibration"
RESULT_VERSION = 1
#: int8 symmetric range used for weights and for int8 activations: [-127, 127] (the -128 code is
#: left unused so that the range is symmetric, as TensorRT and ncnn do)
INT8_MAX = 127


VOLATILE_NOTES = ("seconds",)


@dataclass(frozen=True)
class QuantLayer:
    """One quantisable layer of the ONNX graph.

    name: the ONNX node name. op_type: "Conv" or "ConvTranspose".
    input / output: its activation input and output tensor names. weight: the weight initializer name.
    weight_scales: per output channel, ``max|W_c| / 127`` (float, length = output channels; a
    channel of zeros gets scale 1.0 so that dequantisation stays finite).
    input_mean: per input channel, the mean of the layer's input over the calibration images (float,
    length = input channels; empty in results from before it was recorded): what ``bias_correction``
    needs to cancel the mean output shift that rounding the weights causes.
    """

    name: str
    op_type: str
    input: str
    output: str
    weight: str
    weight_scales: tuple[float, ...]
    input_mean: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op_type": self.op_type, "input": self.input, "output": self.output,
                "weight": self.weight, "weight_scales": list(self.weight_scales), "input_mean": list(self.input_mean)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantLayer:
        return cls(str(data["name"]), str(data["op_type"]), str(data["input"]), str(data["output"]),
                   str(data["weight"]), tuple(float(s) for s in data["weight_scales"]),
                   tuple(float(m) for m in data.get("input_mean", ())))


@dataclass(frozen=True)
class CalibrationResult:
    """See the module docstring. ``images_sha256`` identifies the calibration images (content hash)."""

    model_sha256: str
    method: str
    num_images: int
    images_sha256: str
    activation_ranges: dict[str, tuple[float, float]]
    layers: tuple[QuantLayer, ...]
    float_layers: dict[str, str] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    #: sorted sha256 of each calibration image's bytes: a reused cache says which images it was made from, so the
    #: int8 gate can judge on others (empty: a cache written before they were recorded)
    image_sha256s: tuple[str, ...] = ()
    #: requantise the head convs' outputs where the placement requantises conv outputs (see the module docstring)
    quantize_head_outputs: bool = False

    # -- queries -------------------------------------------------------------------------------
    def layer(self, name: str) -> QuantLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise CalibrationError(f"calibration result has no layer {name!r}")

    @property
    def quantized_layers(self) -> tuple[QuantLayer, ...]:
        """The layers to emit in int8 (all but ``float_layers``)."""
        return tuple(layer for layer in self.layers if layer.name not in self.float_layers)

    def with_float_layers(self, float_layers: dict[str, str]) -> CalibrationResult:
        unknown = sorted(set(float_layers) - {layer.name for layer in self.layers})
        if unknown:
            raise CalibrationError(f"layers to keep in float not in the model: {', '.join(unknown[:5])}")
        return replace(self, float_layers=dict(float_layers))

    def check_model(self, onnx_path: str | Path) -> None:
        """Refuse a result computed on another model (sha256 of the fp32 ONNX file)."""
        actual = file_sha256(onnx_path)
        if actual != self.model_sha256:
            raise CalibrationError(f"calibration cache belongs to another model: it was computed on ONNX sha256 "
                                   f"{self.model_sha256[:12]}…, {Path(onnx_path).name} is {actual[:12]}…; "
                                   "recalibrate (delete the cache) for this model")

    # -- serialisation -------------------------------------------------------------------------
    # calibration.json is a file of the artifact, hashed in its manifest: what varies between two runs on the same
    # images (the time taken) stays out of it so that a re-conversion gives the same bytes (the manifest's info keeps it).
    def to_dict(self) -> dict[str, Any]:
        return {"format": RESULT_FORMAT, "version": RESULT_VERSION, "model_sha256": self.model_sha256,
                "method": self.method, "num_images": self.num_images, "images_sha256": self.images_sha256,
                "activation_ranges": {k: [float(lo), float(hi)] for k, (lo, hi) in sorted(self.activation_ranges.items())},
                "layers": [layer.to_dict() for layer in self.layers],
                "float_layers": dict(self.float_layers),
                "notes": {k: v for k, v in self.notes.items() if k not in VOLATILE_NOTES},
                "image_sha256s": sorted(self.image_sha256s), "quantize_head_outputs": self.quantize_head_outputs}

    @classmethod
    def from_dict(cls, data: Any, source: str = "calibration result") -> CalibrationResult:
        """Read a result written by :meth:`to_dict`; CalibrationError (one line) for anything malformed."""
        if not isinstance(data, dict) or data.get("format") != RESULT_FORMAT:
            raise CalibrationError(f"{source}: not an edgekit calibration result (expected \"format\": \"{RESULT_FORMAT}\")")
        if data.get("version") != RESULT_VERSION:
            raise CalibrationError(f"{source}: calibration result version {data.get('version')!r} is not supported")
        try:
            ranges = {str(k): (float(v[0]), float(v[1])) for k, v in data["activation_ranges"].items()}
            result = cls(model_sha256=str(data["model_sha256"]), method=str(data["method"]),
                         num_images=int(data["num_images"]), images_sha256=str(data["images_sha256"]),
                         activation_ranges=ranges, layers=tuple(QuantLayer.from_dict(d) for d in data["layers"]),
                         float_layers={str(k): str(v) for k, v in data.get("float_layers", {}).items()},
                         notes=dict(data.get("notes", {})),
                         image_sha256s=_sha256_list(data.get("image_sha256s", []), source),
                         quantize_head_outputs=_boolean(data.get("quantize_head_outputs", False),
                                                        "quantize_head_outputs", source))
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise CalibrationError(f"{source}: malformed calibration result ({type(exc).__name__}: {exc})") from None
        result.check_values(source)
        return result

    def check_values(self, source: str = "calibration result") -> None:
        """CalibrationError (one line naming the tensor / layer and the value) unless every number can be used:
        activation ranges finite with lo <= hi, weight scales finite and > 0, every layer's quantised input
        and output has a range, float layers are layers of the result. Checks the content only; whether the
        ranges fit the model is ``quant.gate.check_result_against_model``."""
        from edgekit.quant.observers import METHODS

        if self.method not in METHODS:  # it is reported and recorded as the method the ranges came from
            raise CalibrationError(f"{source}: method {self.method!r}; expected one of {', '.join(METHODS)}")
        for name, (lo, hi) in self.activation_ranges.items():
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise CalibrationError(f"{source}: activation range of tensor {name!r} is [{lo}, {hi}]; "
                                       "expected finite numbers")
            if lo > hi:
                raise CalibrationError(f"{source}: activation range of tensor {name!r} is [{lo:g}, {hi:g}]; "
                                       "expected lo <= hi")
        names = set()
        for layer in self.layers:
            names.add(layer.name)
            bad = next((s for s in layer.weight_scales if not (math.isfinite(s) and s > 0)), None)
            if bad is not None or not layer.weight_scales:
                raise CalibrationError(f"{source}: layer {layer.name!r} has weight scale {bad}; expected finite "
                                       "scales > 0, one per output channel")
            if not all(math.isfinite(m) for m in layer.input_mean):
                raise CalibrationError(f"{source}: layer {layer.name!r} has a non-finite input mean; expected finite "
                                       "numbers, one per input channel")
            missing = next((t for t in (layer.input, layer.output) if t not in self.activation_ranges), None)
            if missing is not None:
                raise CalibrationError(f"{source}: layer {layer.name!r}: tensor {missing!r} has no activation range")
        unknown = sorted(set(self.float_layers) - names)
        if unknown:
            raise CalibrationError(f"{source}: float layer {unknown[0]!r} is not a layer of the result")
        if self.num_images < 1:
            raise CalibrationError(f"{source}: num_images is {self.num_images}; expected the number of calibration "
                                   "images (>= 1)")
        if "head_outputs" in self.notes:
            _check_head_choice_note(self.notes["head_outputs"], self.quantize_head_outputs, source)
        elif self.quantize_head_outputs:
            raise CalibrationError(f"{source}: quantize_head_outputs is true but notes.head_outputs (the drift "
                                   "budget's judgement behind it) is missing: the file was edited; recalibrate")
        if self.image_sha256s:
            # the list decides which images the int8 gate may call held out: it must be the set the cache names
            from edgekit.quant.calibration import content_hash

            if len(set(self.image_sha256s)) != len(self.image_sha256s) or len(self.image_sha256s) != self.num_images:
                raise CalibrationError(f"{source}: image_sha256s lists {len(set(self.image_sha256s))} distinct "
                                       f"image(s) in {len(self.image_sha256s)} entries; expected {self.num_images} "
                                       "distinct ones (num_images)")
            if content_hash(self.image_sha256s) != self.images_sha256:
                raise CalibrationError(f"{source}: image_sha256s does not match images_sha256 (the hash of the "
                                       "calibration image set); the list was edited or belongs to another cache")

    def save(self, path: str | Path) -> Path:
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CalibrationResult:
        path = Path(path)
        if not path.is_file():
            raise CalibrationError(f"{path}: calibration result not found")
        data = read_json(path, CalibrationError, "calibration result")
        return cls.from_dict(data, str(path))


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file (the same digest the artifact manifest records)."""
    return sha256_file(Path(path))


def weight_scales(weight: np.ndarray, axis: int = 0) -> np.ndarray:
    """Per-channel symmetric int8 scales ``max|W_c| / 127`` along ``axis`` (float32 [C]).

    A channel of zeros gets scale 1.0 (its quantised weights are zeros whatever the scale)."""
    weight = np.asarray(weight, np.float32)
    reduce_axes = tuple(a for a in range(weight.ndim) if a != axis)
    absmax = np.abs(weight).max(axis=reduce_axes) if reduce_axes else np.abs(weight)
    return np.where(absmax > 0, absmax / INT8_MAX, 1.0).astype(np.float32)


def quantize_weight(weight: np.ndarray, scales: np.ndarray, axis: int = 0) -> np.ndarray:
    """int8 weights ``clip(round(W / s_c), -127, 127)`` with per-channel scales along ``axis``."""
    shape = [1] * weight.ndim
    shape[axis] = -1
    q = np.round(np.asarray(weight, np.float32) / np.asarray(scales, np.float32).reshape(shape))
    return np.clip(q, -INT8_MAX, INT8_MAX).astype(np.int8)


def bias_correction(weight: np.ndarray, scales: np.ndarray, input_mean: Sequence[float], op_type: str = "Conv",
                    group: int = 1) -> np.ndarray | None:
    """The mean shift of each output channel that rounding the weights to int8 causes: float64 [O].

    Subtract it from the layer's bias (``b' = b - shift``) so that the int8 layer's output has the
    fp32 layer's mean (Nagel et al. 2019, "Data-free quantization", empirical bias correction):
    ``E[conv(x, Q(W)) - conv(x, W)]_o = Σ_{i, kh, kw} (Q(W) - W)[o, i, kh, kw] · E[x_i]`` with
    ``Q(W) = clip(round(W / s_o), -127, 127) · s_o`` (``scales`` [O], the ones actually emitted) and
    ``E[x_i]`` = ``input_mean`` (per input channel, from calibration). Zero padding at the borders is
    ignored (it makes the shift slightly smaller there). Why: yolov5n (16-64 channels per layer) lost
    3 of 57 boxes to weight rounding alone (agreement with fp32 on real photos); with the correction 1.

    weight: Conv ``[O, I / group, kh, kw]``. Returns None (no correction) for ConvTranspose (each output
    pixel sums a stride-dependent number of taps) and when ``input_mean`` is empty or does not have
    ``I`` entries (a result from before input means were recorded).
    """
    weight = np.asarray(weight, np.float64)
    if op_type != "Conv" or weight.ndim < 3 or not len(input_mean):
        return None
    out_channels, per_group = weight.shape[0], weight.shape[1]
    mean = np.asarray(input_mean, np.float64).reshape(-1)
    if group < 1 or out_channels % group or mean.size != per_group * group:
        return None
    dequantized = quantize_weight(weight, scales, axis=0).astype(np.float64) * np.asarray(
        scales, np.float64).reshape((-1,) + (1,) * (weight.ndim - 1))
    delta = (dequantized - weight).reshape(out_channels, per_group, -1).sum(axis=2)  # [O, I/g]
    shift = np.einsum("goi,gi->go", delta.reshape(group, out_channels // group, per_group),
                      mean.reshape(group, per_group))
    return shift.reshape(out_channels)


def uint8_affine(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero_point) of the uint8 affine encoding of [lo, hi], widened to contain 0.

    q = clip(round(x / scale) + zero_point, 0, 255); x ≈ (q - zero_point) * scale. Zero must be
    exactly representable (zero padding, ReLU outputs), so the range is widened to include 0
    and the zero point is an integer in [0, 255]. A degenerate range gets scale 1.0.
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise CalibrationError(f"activation range [{lo}, {hi}] is not finite")
    if hi - lo <= 0:
        return 1.0, 0
    scale = (hi - lo) / 255.0
    zero_point = int(round(-lo / scale))
    return float(np.float32(scale)), int(min(max(zero_point, 0), 255))


def int8_symmetric(lo: float, hi: float) -> float:
    """The scale of the symmetric int8 encoding of [lo, hi]: ``max(|lo|, |hi|) / 127`` (zero point 0)."""
    absmax = max(abs(float(lo)), abs(float(hi)))
    if not math.isfinite(absmax):
        raise CalibrationError(f"activation range [{lo}, {hi}] is not finite")
    return float(np.float32(absmax / INT8_MAX)) if absmax > 0 else 1.0


_SHA256_HEX = frozenset("0123456789abcdef")


#: the keys of ``notes.head_outputs`` (``quant.head_outputs.HeadOutputChoice.summary`` writes them)
HEAD_CHOICE_KEYS = ("quantize", "reason", "drift", "budget")
#: how the reason of a requantising choice begins (``quant.head_outputs`` writes it, the cache check reads it)
REQUANTISED_REASON = "head outputs requantised"


def _check_head_choice_note(note: Any, quantize: bool, source: str) -> None:
    """``notes.head_outputs`` (why ``quantize_head_outputs`` is what it is, ``quant.head_outputs``) must be the record
    calibration wrote and agree with the flag: requantised heads need a judged drift within a budget. A cache
    edited to flip either is refused (nothing else ties the flag to a judgement)."""
    def number_or_none(value: Any) -> bool:
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))

    if not (isinstance(note, dict) and sorted(note) == sorted(HEAD_CHOICE_KEYS) and isinstance(note["quantize"], bool)
            and isinstance(note["reason"], str) and number_or_none(note["drift"]) and number_or_none(note["budget"])):
        raise CalibrationError(f"{source}: notes.head_outputs is not the record calibration writes (exactly "
                               f"{', '.join(HEAD_CHOICE_KEYS)}: true|false, text, points or null, points or null)")
    if note["quantize"] != quantize:
        raise CalibrationError(f"{source}: quantize_head_outputs is {str(quantize).lower()} but notes.head_outputs "
                               f"says {str(note['quantize']).lower()}: the file was edited; recalibrate")
    requantised = note["reason"].startswith(REQUANTISED_REASON)
    judged_within = note["drift"] is not None and note["budget"] is not None and note["drift"] <= note["budget"]
    if quantize != requantised or (quantize and not judged_within):
        raise CalibrationError(f"{source}: notes.head_outputs does not support quantize_head_outputs = "
                               f"{str(quantize).lower()} (reason {note['reason'][:60]!r}, drift {note['drift']}, "
                               f"budget {note['budget']}): the file was edited; recalibrate")


def _boolean(value: Any, key: str, source: str) -> bool:
    """A JSON true/false, nothing else: ``"false"`` or ``0`` in a hand-edited cache must not read as a choice."""
    if not isinstance(value, bool):
        raise CalibrationError(f"{source}: {key} is {value!r}; expected true or false")
    return value


def _sha256_list(value: Any, source: str) -> tuple[str, ...]:
    """``image_sha256s``: a list of lowercase hex sha256 digests (as ``hashlib`` writes them); else CalibrationError."""
    if not isinstance(value, list):
        raise CalibrationError(f"{source}: image_sha256s must be a list of sha256 hex digests, got "
                               f"{type(value).__name__}")
    for item in value:
        if not (isinstance(item, str) and len(item) == 64 and set(item) <= _SHA256_HEX):
            raise CalibrationError(f"{source}: image_sha256s holds {str(item)[:70]!r}; expected 64 lowercase hex "
                                   "digits (a sha256 digest)")
    return tuple(value)
