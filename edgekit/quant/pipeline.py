"""Calibrate an exported graph once, for every backend of an artifact.

    calibration images -> calibrate (observer) -> [sensitivity -> partial quantisation -> head-output choice]
        -> CalibrationResult

Used by ``convert`` when the precision is int8. The result is saved in the artifact
(``calibration.json``) and every backend builder emits its int8 model from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np

from edgekit.errors import CalibrationError
from edgekit.progress import progress_bar
from edgekit.quant.calibration import (
    CalibrationImages,
    calibration_tensors,
    content_hash,
    default_calibration_dir,
    find_calibration_images,
    warn_if_overlapping,
)
from edgekit.quant.collect import calibrate
from edgekit.quant.head_outputs import WITHOUT_BUDGET, HeadOutputChoice, cached_choice, choose_head_outputs
from edgekit.quant.observers import DEFAULT_PERCENTILE
from edgekit.quant.placement import FUSED_UINT8, QdqPlacement
from edgekit.quant.result import CalibrationResult
from edgekit.spec import ModelSpec

Progress = Callable[[str], None]
#: images the sensitivity ranking runs on (relative output error is stable well before this)
SENSITIVITY_IMAGES = 8
#: without labelled drift data, this share of the calibration images is held out to judge agreement
HOLDOUT_FRACTION = 0.2
#: the Q/DQ placement partial quantisation is judged with by default (ONNX Runtime runs it here, fused to
#: QLinearConv: the strictest of the uint8 placements, since it also requantises conv outputs); convert passes
#: the target backend's own (``BackendBuilder.int8_placement``)
JUDGE_PLACEMENT = "onnxruntime"


# A calibration set this large spares held-out images for the int8 agreement gate (see gate_holdout_count):
# 5 x MIN_GATE_IMAGES, so the gate's share never exceeds a fifth of the set. Measured on the real yolov5n with
# the 54 bundled natural photos, ORT minmax: 8 held out (46 calibrate) gave agreement 0.966 / 0.982 vs 0.965 /
# 0.965 with all 54 (benchmarks/RESULTS.md, "held-out gate").
GATE_HOLDOUT_MIN_IMAGES = 40


def gate_holdout_count(images: int) -> int:
    """How many of ``images`` calibration images the agreement gate takes for itself (0: too few to spare).

    n // 8 (an eighth: ranges are a max/histogram over the rest, which an eighth fewer images barely moves),
    at least ``MIN_GATE_IMAGES`` (fewer judge nothing) and at most ``GATE_IMAGES``; none below
    ``GATE_HOLDOUT_MIN_IMAGES`` (the gate then runs on calibration images and the manifest says so).
    """
    from edgekit.quant.gate import GATE_IMAGES, MIN_GATE_IMAGES

    if images < GATE_HOLDOUT_MIN_IMAGES:
        return 0
    return min(GATE_IMAGES, max(MIN_GATE_IMAGES, images // 8))


@dataclass(frozen=True)
class Int8Options:
    """How ``convert`` calibrates (CLI: --calib, --calib-method, --drift-budget, --drift-data …).

    calib_dir: image folder (None: the bundled default set). method / images / percentile: None =
    the target profile's. drift_budget: mAP points (None: no partial quantisation, every layer
    int8). drift_data: a labelled COCO/YOLO dataset the budget is judged on (None: agreement with
    the fp32 graph on held-out calibration images). cache: a calibration.json to reuse (refused
    when it belongs to another model). force: calibrate even with fewer than 16 images.
    eval_paths: images the model will be evaluated on (overlap is warned about).
    """

    calib_dir: Path | None = None
    method: str | None = None
    images: int | None = None
    percentile: float | None = None
    drift_budget: float | None = None
    drift_data: Path | None = None
    cache: Path | None = None
    force: bool = False
    max_float_fraction: float = 0.25
    eval_paths: tuple[Path, ...] = ()


def calibrate_artifact(onnx_path: Path, spec: ModelSpec, options: Int8Options, default_method: str,
                       default_images: int, default_percentile: float = DEFAULT_PERCENTILE,
                       progress: Progress = lambda line: None, show_bars: bool = True,
                       warn: Callable[[str], None] | None = None,
                       placement: QdqPlacement | str = JUDGE_PLACEMENT
                       ) -> tuple[CalibrationResult, dict[str, Any], tuple[list[Path], str, frozenset[str] | None]]:
    """Calibrate ``onnx_path`` (the artifact's fp32 graph); returns the result, a manifest record, and the
    images the int8 builds' agreement gate runs on with where they come from (``quant.gate.gate_images``) and the
    sha256 of the images calibrated on (a reused cache: those it lists, None for a cache that lists none;
    ``quant.gate.agreement_gate`` avoids them).
    ``placement``: the Q/DQ placement ``--drift-budget`` ranks and judges layers with (the target backend's)."""
    from edgekit.quant.gate import check_result_against_model, gate_images, probe_tensors

    bars = progress_bar if show_bars else None  # on a terminal only: the ``int8 ...`` lines already say what runs
    warn = warn or (lambda message: progress(f"warning {message}"))
    if options.cache is not None:
        result = CalibrationResult.load(options.cache)
        result.check_model(onnx_path)
        # the hash says which model, not that the numbers are sane (a hand-edited cache keeps it)
        check_result_against_model(result, onnx_path, probe_tensors(spec, options.calib_dir), str(options.cache))
        progress(f"int8    reusing calibration {options.cache} ({result.method}, {result.num_images} images)")
        gate_paths: list[Path] = []
        if options.calib_dir is not None:
            # all of them: the gate picks its images among those the cache was not made from
            gate_paths = list(find_calibration_images(options.calib_dir, force=True, warn=lambda message: None).paths)
        return result, {"method": result.method, "cache": str(options.cache), "images": result.num_images,
                        "images_sha256": result.images_sha256, "float_layers": dict(result.float_layers),
                        "head_outputs": cached_choice(result).summary()}, \
            (*gate_images([], gate_paths), frozenset(result.image_sha256s) if result.image_sha256s else None)
    folder = Path(options.calib_dir) if options.calib_dir else default_calibration_dir()
    method = options.method or default_method
    limit = options.images or default_images
    found = find_calibration_images(folder, limit=limit, force=options.force, warn=warn)
    if options.eval_paths:
        warn_if_overlapping(found, options.eval_paths, warn=warn)
    calib_set, holdout = _split_holdout(found, options)
    percentile = options.percentile or default_percentile
    progress(f"int8    calibrating on {len(calib_set.paths)} images from {folder} ({method})")
    result = calibrate(onnx_path, lambda: calibration_tensors(calib_set, spec), method=method, percentile=percentile,
                       images_sha256=calib_set.content_sha256, num_images=len(calib_set.paths), progress=bars)
    result = replace(result, image_sha256s=tuple(sorted(calib_set.sha256)))
    record: dict[str, Any] = {"method": method, "calibration_dir": str(folder), "images": len(calib_set.paths),
                              "skipped_images": len(found.skipped), "images_sha256": calib_set.content_sha256,
                              "calibration_seconds": result.notes.get("seconds")}
    choice = WITHOUT_BUDGET
    if options.drift_budget is not None:
        result, partial, choice = _partial(onnx_path, spec, result, calib_set, holdout, options, progress, bars,
                                           placement)
        record["partial_quantization"] = partial
        progress(f"int8    {choice.reason}")
    result = replace(result, quantize_head_outputs=choice.quantize,
                     notes={**result.notes, "head_outputs": choice.summary()})
    record["float_layers"] = dict(result.float_layers)
    record["head_outputs"] = choice.summary()
    return result, record, (*gate_images(holdout, calib_set.paths), frozenset(calib_set.sha256))


def _first_tensors(calib_set: CalibrationImages, spec: ModelSpec, count: int) -> list[np.ndarray]:
    """The network inputs of the first ``count`` calibration images (float32 [1,3,H,W])."""
    tensors = []
    for tensor in calibration_tensors(calib_set, spec):
        tensors.append(tensor)
        if len(tensors) == count:
            break
    return tensors


def _split_holdout(found: CalibrationImages, options: Int8Options) -> tuple[CalibrationImages, list[Path]]:
    """Images set aside from calibration: judged unseen by ``--drift-budget`` and by the int8 agreement gate.

    - ``--drift-budget`` without ``--drift-data``: every 5th image (the search needs a fair share);
    - otherwise, a set of at least ``GATE_HOLDOUT_MIN_IMAGES`` gives ``gate_holdout_count`` evenly spaced images
      to the gate, so every int8 build is checked on images it was not calibrated on; a smaller set keeps every
      image for calibration and the gate runs on calibration images, which the manifest says
      (``info.int8.agreement.*.source``).
    """
    from edgekit.quant.calibration import _evenly_spaced

    if options.drift_budget is None or options.drift_data is not None:
        spared = gate_holdout_count(len(found.paths))
        if spared == 0:
            return found, []
        held_indices = set(_evenly_spaced(len(found.paths), spared))
    else:
        stride = round(1 / HOLDOUT_FRACTION)
        held_indices = {i for i in range(len(found.paths)) if i % stride == stride - 1}
    held = [p for i, p in enumerate(found.paths) if i in held_indices]
    if options.drift_budget is not None and options.drift_data is None and len(held) < 4:
        raise CalibrationError(f"--drift-budget without --drift-data judges agreement on held-out calibration images; "
                               f"{len(found.paths)} images leave only {len(held)} (need >= 4): add images or give --drift-data")
    keep = [i for i in range(len(found.paths)) if i not in held_indices]
    hashes = tuple(found.sha256[i] for i in keep)
    kept = CalibrationImages(folder=found.folder, paths=tuple(found.paths[i] for i in keep), sha256=hashes,
                             skipped=found.skipped, content_sha256=content_hash(hashes))
    return kept, held


def _partial(onnx_path: Path, spec: ModelSpec, result: CalibrationResult, calib_set: CalibrationImages,
             holdout: list[Path], options: Int8Options, progress: Progress, bars,
             placement: QdqPlacement | str = JUDGE_PLACEMENT) -> tuple[CalibrationResult, dict, HeadOutputChoice]:
    """The --drift-budget search, then (by the same judge) whether ONNX Runtime's graph may requantise its head
    outputs (``quant.head_outputs``)."""
    from edgekit.quant.sensitivity import AgreementJudge, MapJudge, layer_sensitivity, partial_quantize

    if options.drift_data is not None:
        from edgekit.validate.datasets import load_dataset, map_to_model_classes

        # by name, as validate does: a dataset whose ids are permuted must not steer the search silently wrong
        dataset = map_to_model_classes(load_dataset(options.drift_data), spec.class_names,
                                       remedy="(convert matches --drift-data classes by name and has no class map)")
        judge: MapJudge | AgreementJudge = MapJudge(onnx_path, spec, dataset)
    else:
        judge = AgreementJudge(onnx_path, spec, holdout)
    tensors = _first_tensors(calib_set, spec, SENSITIVITY_IMAGES)
    placement_name = placement if isinstance(placement, str) else placement.name
    progress(f"int8    sensitivity of {len(result.layers)} layers on {len(tensors)} images ({placement_name} Q/DQ "
             "placement)")
    ranking = layer_sensitivity(onnx_path, result, placement, tensors, progress=bars)
    partial = partial_quantize(onnx_path, result, placement, judge, cast(float, options.drift_budget), ranking,  # set: the caller's check
                               max_float_fraction=options.max_float_fraction, progress=progress)
    if not partial.met:
        progress(f"warning drift budget {options.drift_budget:g} not met: best {partial.drift:.2f} points with "
                 f"{len(partial.result.float_layers)} layers in float")
    choice = choose_head_outputs(onnx_path, partial, judge)
    summary = partial.summary()
    if placement_name != FUSED_UINT8.name:
        summary["onnxruntime"] = _judge_onnxruntime_model(onnx_path, partial, choice, judge, progress)
    return partial.result, summary, choice


def _judge_onnxruntime_model(onnx_path: Path, partial: Any, choice: HeadOutputChoice, judge: Any,
                             progress: Progress) -> dict[str, Any]:
    """Every int8 artifact also ships ONNX Runtime's int8 model (the portable baseline ``detect --precision int8``
    runs by default), built from the same float layers as the target's. The search judged the target's placement
    only, and the manifest said "met" while the ONNX Runtime model drifted 1.39 points against a 0.5 budget (a
    hostile review). Its drift is judged by the same judge and recorded; over the budget is a warning naming it."""
    import tempfile

    from edgekit.quant.qdq import write_qdq

    with tempfile.TemporaryDirectory(prefix="edgekit-ort-budget-") as tmp:
        path = Path(tmp) / "onnxruntime_int8.onnx"
        write_qdq(onnx_path, replace(partial.result, quantize_head_outputs=choice.quantize), FUSED_UINT8, path)
        drift = float(judge.drift(path))
    within = drift <= partial.budget  # False for a NaN drift
    if not within:
        progress(f"warning onnxruntime/int8 drifts {drift:.2f} points, over the {partial.budget:g}-point budget the "
                 "search met for the target's own int8 model: ONNX Runtime's placement was not searched (for an "
                 "ONNX Runtime deployment convert with --target onnxruntime-cpu)")
    return {"drift": round(drift, 4), "within_budget": within}
