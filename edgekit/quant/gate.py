"""Checks that keep a broken INT8 model from shipping.

Two guards, one before and one after the int8 builds:

1. ``check_result_against_model``: a calibration result (a reused ``--calib-cache`` above all: a
   hand-edited file keeps its model hash) must fit the fp32 graph it claims to belong to. Its layers
   are the graph's quantisable layers; its weight scales are within ``RANGE_MARGIN`` of the graph's
   own ``max|W_c| / 127``; every activation range stays within ``RANGE_MARGIN`` times the largest
   ``|x|`` the fp32 graph produces for that tensor on a few probe inputs (images of the bundled
   calibration set and of --calib, plus random pixels) and does not collapse to zero width where the tensor varies. A range of
   ±1e30 (uint8 step 8e27: every activation rounds to the zero point) is refused here with one line.
2. ``AgreementGate``: every int8 model built (ONNX Runtime Q/DQ, OpenVINO, NCNN) is run on held-out
   images next to the fp32 graph and judged by ``sensitivity.AgreementJudge`` (the matcher
   ``--drift-budget`` uses): precision and recall of its boxes against the fp32 boxes at IoU 0.5,
   both at the deployment score threshold. ``agreement = min(precision, recall)`` below
   ``AGREEMENT_FLOOR`` fails the conversion (ConversionError naming the backend).

Why a floor and not a budget: the gate catches *broken* models (a wrong cache, a writer bug), not
fine drift; that is what ``--drift-budget`` / ``validate`` measure. The floor sits far below every
good int8 build and far above a broken one (measurements at ``AGREEMENT_FLOOR``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgekit.errors import CalibrationError, ConversionError
from edgekit.quant.result import INT8_MAX, CalibrationResult
from edgekit.spec import ModelSpec
from edgekit.tolerances import INT8_AGREEMENT_FLOOR

#: a calibration range may exceed the fp32 graph's largest observed |x| by this factor (and weight scales
#: may differ from max|W_c|/127 by it either way): generous, because probes are few and a cache may come
#: from another image domain; a broken cache (±1e30, scales off by orders of magnitude) is far beyond it.
RANGE_MARGIN = 16.0
#: a range narrower than this share of the observed |x| max has collapsed (a varying tensor maps to 1 code)
MIN_RELATIVE_WIDTH = 1e-6
#: a tensor whose values spread less than this share of its |x| max is constant for 8 bits (one uint8 step is
#: max|x| / 255): a collapsed range there loses less than a step. A real conv output can be that flat (a dead
#: channel group; a random-weight yolov8 head: spread 2.9e-6 at |x| 11.5), and its honest cache must load.
NEGLIGIBLE_SPREAD = 1 / 256
#: images per folder (bundled set, --calib) + random-pixel tensors the ranges of a cache are checked on
PROBE_IMAGES = 8
PROBE_NOISE_SEEDS = (11, 12)
#: images the agreement gate runs on (evenly spaced over the held-out set or the calibration folder)
GATE_IMAGES = 24
#: fewer gate images than this from the calibration set: use the bundled calibration set instead
MIN_GATE_IMAGES = 8
#: min(precision, recall) at IoU 0.5 of an int8 model's boxes vs its fp32 model's, below which the build fails
#: (the measurements behind it: edgekit.tolerances.INT8_AGREEMENT_FLOOR).
AGREEMENT_FLOOR = INT8_AGREEMENT_FLOOR

Progress = Callable[[str], None]


def probe_tensors(spec: ModelSpec, folder: Path | None) -> list[np.ndarray]:
    """float32 [1, 3, H, W] inputs to observe the fp32 graph on: ``PROBE_IMAGES`` evenly spaced images of the
    bundled calibration set (natural photos and synthetic scenes) and as many of ``folder`` (the user's --calib,
    when given) through the runtime's preprocessing, and random pixels.

    A union of domains, because the largest |x| of a tensor depends on the images: the yolox fixture calibrated
    on the bundled set reaches 16.5x what natural photos alone produce in one tensor, 2.3x of the bundled mix."""
    from edgekit.quant.calibration import calibration_tensors, default_calibration_dir, find_calibration_images
    from edgekit.runtime.preprocess import probe_input

    folders = [default_calibration_dir()]
    if folder is not None and Path(folder).resolve() != folders[0].resolve():
        folders.append(Path(folder))
    tensors: list[np.ndarray] = []
    for source in folders:
        found = find_calibration_images(source, limit=PROBE_IMAGES, min_images=1, warn_below=0, force=True,
                                        warn=lambda message: None)
        tensors += calibration_tensors(found, spec)
    return tensors + [probe_input(spec, seed) for seed in PROBE_NOISE_SEEDS]


def tensors_out_session(model: onnx.ModelProto, names: Sequence[str]) -> Any:
    """An ONNX Runtime session returning every tensor of ``names`` whole besides the model outputs, graph optimisation
    off (the extended levels fuse Conv + activation, which extra outputs block or undo with a reorder each)."""
    import onnxruntime as ort

    observed = onnx.ModelProto()
    observed.CopyFrom(model)
    existing = {o.name for o in observed.graph.output}
    observed.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                                 for name in dict.fromkeys(names) if name not in existing)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(observed.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])


def observed_absmax(onnx_path: Path, names: Sequence[str], tensors: Sequence[np.ndarray]) -> dict[str, tuple[float, float]]:
    """For each tensor name: (max |x|, max - min) over ``tensors``, the fp32 graph run by ONNX Runtime.

    The whole tensors, reduced in numpy: this check of a calibration result must not share calibration's in-graph
    observation (``quant.observation``), or a defect there would pass its own check."""
    model = onnx.load(str(onnx_path))
    session = tensors_out_session(model, list(names))
    input_name = model.graph.input[0].name
    lo = dict.fromkeys(names, math.inf)
    hi = dict.fromkeys(names, -math.inf)
    for tensor in tensors:
        for name, value in zip(names, session.run(list(names), {input_name: np.ascontiguousarray(tensor, np.float32)})):
            lo[name] = min(lo[name], float(np.min(value)))
            hi[name] = max(hi[name], float(np.max(value)))
    return {n: (max(abs(lo[n]), abs(hi[n])), hi[n] - lo[n]) for n in names}


def check_result_against_model(result: CalibrationResult, onnx_path: Path, tensors: Sequence[np.ndarray],
                               source: str) -> None:
    """CalibrationError (one line naming the layer / tensor and the value) unless ``result`` fits the fp32 graph
    at ``onnx_path`` (see the module docstring). ``tensors``: probe inputs (``probe_tensors``)."""
    from edgekit.quant.collect import find_layers

    result.check_values(source)
    actual = {layer.name: layer for layer in find_layers(onnx.load(str(onnx_path)))}
    # every quantisable layer must be in the result (those kept in float are listed in float_layers): a layer
    # missing from it would be left in float without a word, and the build called int8
    missing = [name for name in actual if name not in {layer.name for layer in result.layers}]
    if missing:
        raise CalibrationError(f"{source}: {len(missing)} of the {len(actual)} quantisable layers of "
                               f"{Path(onnx_path).name} have no calibration (first: {missing[0]!r}); a calibration "
                               "result covers every Conv layer of its model")
    for layer in result.layers:
        own = actual.get(layer.name)
        if own is None or (own.op_type, own.input, own.output, own.weight) != (layer.op_type, layer.input,
                                                                             layer.output, layer.weight):
            raise CalibrationError(f"{source}: layer {layer.name!r} ({layer.op_type} {layer.input} -> {layer.output}) "
                                   f"is not a quantisable layer of {Path(onnx_path).name}")
        if len(layer.weight_scales) != len(own.weight_scales):
            raise CalibrationError(f"{source}: layer {layer.name!r} has {len(layer.weight_scales)} weight scales; the "
                                   f"model's weight has {len(own.weight_scales)} output channels")
        for channel, (scale, true) in enumerate(zip(layer.weight_scales, own.weight_scales)):
            # a channel of zeros has the conventional scale 1.0: any positive scale quantises it exactly
            zero_channel = true == 1.0 and scale > 0
            if not zero_channel and not (true / RANGE_MARGIN <= scale <= true * RANGE_MARGIN):
                raise CalibrationError(f"{source}: layer {layer.name!r} channel {channel} weight scale {scale:.3g}; the "
                                       f"model's weights give {true:.3g} (max|W| / {INT8_MAX}), expected within "
                                       f"x{RANGE_MARGIN:g} of it")
    names = sorted({t for layer in result.layers for t in (layer.input, layer.output)})
    observed = observed_absmax(Path(onnx_path), names, tensors)
    for name in names:
        lo, hi = result.activation_ranges[name]
        absmax, width = observed[name]
        limit = RANGE_MARGIN * absmax
        if max(abs(lo), abs(hi)) > limit:
            raise CalibrationError(f"{source}: activation range of tensor {name!r} is [{lo:.3g}, {hi:.3g}]; the model "
                                   f"produces |x| <= {absmax:.3g} there on {len(tensors)} probe inputs (allowed up "
                                   f"to x{RANGE_MARGIN:g})")
        if width > absmax * NEGLIGIBLE_SPREAD and hi - lo < MIN_RELATIVE_WIDTH * absmax:
            raise CalibrationError(f"{source}: activation range of tensor {name!r} is [{lo:.3g}, {hi:.3g}] (zero "
                                   f"width); the model's values there span {width:.3g}")
    for layer in result.layers:  # bias correction multiplies the input means into the bias: same bound as a range
        absmax = observed[layer.input][0]
        bad = next((m for m in layer.input_mean if abs(m) > RANGE_MARGIN * absmax), None)
        if bad is not None:
            raise CalibrationError(f"{source}: layer {layer.name!r} input mean {bad:.3g}; the model produces |x| <= "
                                   f"{absmax:.3g} at {layer.input!r} on {len(tensors)} probe inputs (allowed up to "
                                   f"x{RANGE_MARGIN:g})")


def gate_images(holdout: Sequence[Path], calib_paths: Sequence[Path]) -> tuple[list[Path], str]:
    """The images the agreement gate runs on, and where they come from (for the manifest).

    The held-out calibration images (``--drift-budget`` sets every 5th aside; a set of 40+ images spares an
    eighth, 8..24, for the gate: ``quant.pipeline.gate_holdout_count``); else ``GATE_IMAGES`` evenly spaced images
    of a smaller calibration set, which all calibrate (the source string says so in the manifest); else (fewer than
    ``MIN_GATE_IMAGES``) the whole bundled calibration set (``agreement_gate`` picks at most ``GATE_IMAGES``
    of it, unseen ones first)."""
    from edgekit.quant.calibration import default_calibration_dir, find_calibration_images

    if len(holdout) >= MIN_GATE_IMAGES:
        return list(holdout), HELD_OUT_SOURCE
    if len(calib_paths) >= MIN_GATE_IMAGES:
        return list(calib_paths), CALIBRATION_SOURCE
    found = find_calibration_images(default_calibration_dir(), warn=lambda message: None)
    return list(found.paths), BUNDLED_SOURCE


#: a gate on the bundled natural photos judges a model only if its fp32 boxes there (deployment threshold) are at
#: least this many; fewer (a model of another domain: parts, cells, thermal) and the calibration images judge it
MIN_HELD_OUT_BOXES = 10
#: where gate_images says the gate runs on calibration images (nothing held out), or on held-out ones
CALIBRATION_SOURCE = "calibration images"
HELD_OUT_SOURCE = "held-out calibration images"
BUNDLED_SOURCE = "bundled calibration set"
NATURAL_SOURCE = "bundled natural photos (held out: not calibrated on)"


def agreement_gate(onnx_path: Path, spec: ModelSpec, images: list[Path], source: str,
                   calibrated: frozenset[str] | None) -> AgreementGate:
    """The gate for this conversion's int8 builds, on images none of them was calibrated on wherever there are any.

    ``images`` / ``source`` from :func:`gate_images`; ``calibrated``: sha256 of the images the calibration used
    (a reused cache: the ones it lists; None: a cache that lists none). Held-out images are used as they are.
    Otherwise, in this order: ``images`` less the calibrated ones (a reused cache's --calib folder or the bundled
    set), then the bundled natural photos less the calibrated ones — those only if the fp32 model finds
    ``MIN_HELD_OUT_BOXES`` boxes on them (a COCO-like detector does; a model of another domain finds nothing there
    and would pass any int8 model) — each needing ``MIN_GATE_IMAGES``. Else the given images judge, and the
    manifest's ``source`` says what they are.
    """
    if source == HELD_OUT_SOURCE:
        return AgreementGate(onnx_path, spec, _spaced(images), source)
    if calibrated is None:  # a cache that does not list its images: nothing is known to be unseen
        return AgreementGate(onnx_path, spec, _spaced(images), f"{source} (the calibration cache lists no images: "
                                                               "some may be its own)")
    from edgekit.quant.calibration import default_calibration_dir, find_calibration_images
    from edgekit.quant.result import file_sha256

    def unseen(paths: Sequence[Path]) -> list[Path]:
        return [path for path in paths if file_sha256(path) not in calibrated]

    others = unseen(images)  # empty for a fresh calibration on all of ``images``; a reused cache: its own left out
    if len(others) >= MIN_GATE_IMAGES:
        return AgreementGate(onnx_path, spec, _spaced(others), f"{source} (not calibrated on)")
    natural_dir = default_calibration_dir() / "natural"
    if natural_dir.is_dir():
        found = find_calibration_images(natural_dir, warn=lambda message: None)  # hashes every file already
        natural = [path for path, digest in zip(found.paths, found.sha256) if digest not in calibrated]
        if len(natural) >= MIN_GATE_IMAGES:
            held_out = AgreementGate(onnx_path, spec, _spaced(natural), NATURAL_SOURCE)
            if held_out.fp32_boxes() >= MIN_HELD_OUT_BOXES:
                return held_out
    # nothing unseen to judge on: the calibration images themselves, unseen ones first, and the manifest says so
    judged = _spaced(others + [path for path in images if path not in others])
    seen = sum(path not in others for path in judged)
    return AgreementGate(onnx_path, spec, judged, f"{source} ({seen} of {len(judged)} calibrated on: fewer than "
                                                  f"{MIN_GATE_IMAGES} unseen images to judge on)")


def _spaced(paths: list[Path]) -> list[Path]:
    from edgekit.quant.calibration import _evenly_spaced

    if len(paths) <= GATE_IMAGES:
        return paths
    return [paths[i] for i in _evenly_spaced(len(paths), GATE_IMAGES)]


@dataclass
class AgreementGate:
    """Judges each int8 model against the fp32 graph ``onnx_path`` on ``images`` (see the module docstring)."""

    onnx_path: Path
    spec: ModelSpec
    images: list[Path]
    source: str
    floor: float = AGREEMENT_FLOOR

    def __post_init__(self) -> None:
        from edgekit.quant.sensitivity import AgreementJudge

        self.judge = AgreementJudge(self.onnx_path, self.spec, self.images)

    def fp32_boxes(self) -> int:
        """The fp32 model's boxes on the gate images at the deployment threshold (what agreement is judged on)."""
        threshold = self.spec.postprocess.conf_threshold
        return int(sum(int(np.count_nonzero(d.scores >= threshold)) for d in self.judge.reference.values()))

    def measure(self, runner: Any) -> dict[str, Any]:
        """Agreement of ``runner``'s model (any backend's Runner; closed afterwards) with the fp32 graph."""
        detections = self.judge.detect_with(runner)
        result = self.judge.deployment_agreement(detections)
        return {"agreement": round(min(result.precision, result.recall), 4), "precision": round(result.precision, 4),
                "recall": round(result.recall, 4), "fp32_boxes": result.num_reference,
                "int8_boxes": result.num_candidate, "map50_drift": round(self.judge.drift_of(detections), 2),
                "floor": self.floor, "iou": result.iou_threshold, "images": len(self.images), "source": self.source}

    def check(self, name: str, runner: Any, progress: Progress = lambda line: None) -> dict[str, Any]:
        """``measure`` and fail (ConversionError naming ``name``, e.g. "openvino/int8") below the floor."""
        record = self.measure(runner)
        line = (f"{name}: agreement with fp32 {record['agreement']:.3f} (precision {record['precision']:.3f}, recall "
                f"{record['recall']:.3f} at IoU 0.5 on {record['images']} {self.source}; {record['fp32_boxes']} fp32 boxes)")
        if record["agreement"] < self.floor:
            raise ConversionError(f"build {line} is below the floor {self.floor:g}: the int8 model is broken; "
                                  "recalibrate (check --calib / --calib-cache) or keep layers in float with --drift-budget "
                                  "(a new calibration: not with --calib-cache)")
        if record["fp32_boxes"] == 0:
            progress(f"warning {name}: the fp32 model finds no box on the gate images; agreement is vacuous")
        progress(f"gate    {line}")
        return record
