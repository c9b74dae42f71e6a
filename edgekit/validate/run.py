"""Validating an artifact: mAP, drift against the reference, agreement and latency per backend.

Every backend x precision model in the artifact runs through the same ``Detector`` on the same
dataset. mAP uses the COCO convention (score threshold 0.001, at most 100 detections per image);
agreement with the reference uses the deployment score threshold of the spec, by filtering the same
detections. Both sides of an agreement went through the same NMS (the mAP protocol's IoU), so agreement
measures the drift between two models exactly; it equals agreement of the deployed outputs when the spec's
NMS IoU is the protocol's (greedy NMS visits boxes in score order, so the boxes above a score threshold are
what NMS at that threshold keeps), and approximates it otherwise (e.g. Ultralytics' 0.7).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.artifact import AWAITS_DEVICE_BUILD, read_manifest
from edgekit.runtime.backends import get_runner_class
from edgekit.runtime.detections import Detections
from edgekit.runtime.detector import Detector
from edgekit.runtime.graph_nms import host_postprocess
from edgekit.tolerances import REFERENCE_CHECK_IMAGES, REFERENCE_SAME_MODEL_AGREEMENT, SAME_BOX_SCORE
from edgekit.validate.agreement import AgreementResult, agreement
from edgekit.validate.coco_eval import MapResult, evaluate_detections
from edgekit.validate.datasets import Dataset, map_to_model_classes

#: mAP protocol (the YOLO-family val convention): keep low-confidence boxes so the precision/recall
#: curve is complete, NMS at IoU 0.6, at most 100 detections per image (COCOeval's own cap).
#: Fixture training scores its checkpoints with the same protocol (map_postprocess), so a recorded
#: mAP can be reproduced by validate.
MAP_CONF_THRESHOLD = 0.001
MAP_IOU_THRESHOLD = 0.6
MAP_MAX_DETECTIONS = 100


class DetectorLike(Protocol):
    spec: Any

    def detect(self, image: Any) -> Detections: ...


@dataclass(frozen=True)
class ModelRun:
    """One backend x precision evaluated on a dataset."""

    name: str                               # e.g. "openvino/fp32" or "torch/fp32"
    detections: dict[int, Detections]       # image id -> detections at the mAP threshold
    latency_ms: float                       # median end-to-end per image (pre + infer + post)
    inference_ms: float                     # median backend call per image (nan for torch)
    size_bytes: int = 0
    metrics: MapResult | None = None
    agreement: AgreementResult | None = None  # vs the reference, at deployment thresholds


@dataclass
class ValidationReport:
    dataset: str
    reference: str
    runs: list[ModelRun] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    num_images: int = 0   # what was scored: every image of the dataset (a YOLO layout's train and val alike)
    num_objects: int = 0  # its ground-truth boxes
    split: str | None = None  # the YOLO data.yaml split scored (None: every image)

    def run(self, name: str) -> ModelRun:
        return next(r for r in self.runs if r.name == name)

    def _reference_metrics(self) -> MapResult:
        """The reference run's mAP, which the deltas are against (``_score_runs`` sets it)."""
        metrics = self.run(self.reference).metrics
        if metrics is None:
            raise EdgekitError(f"{self.reference}: the reference run has no mAP yet (the validate_* functions "
                               "return scored reports)")
        return metrics

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for run in self.runs:
            row: dict[str, Any] = {"name": run.name, "latency_ms": run.latency_ms, "inference_ms": run.inference_ms,
                                   "size_bytes": run.size_bytes}
            if run.metrics:
                row.update(map_50_95=run.metrics.map_50_95, map_50=run.metrics.map_50,
                           delta_map_50_95=run.metrics.map_50_95 - self._reference_metrics().map_50_95,
                           per_class_ap=run.metrics.per_class_ap)
            if run.agreement:
                a = run.agreement
                row["agreement"] = {"precision": a.precision, "recall": a.recall, "mean_iou": a.mean_iou,
                                    "mean_abs_score_delta": a.mean_abs_score_delta, "class_flips": a.class_flips}
            rows.append(row)
        return {"dataset": self.dataset, "split": self.split, "num_images": self.num_images,
                "num_objects": self.num_objects,
                "reference": self.reference, "runs": rows,
                "skipped": [{"name": n, "reason": r} for n, r in self.skipped]}


def run_detector(detector: DetectorLike, dataset: Dataset, name: str,
                 progress: Callable[[Sequence, str], Any] | None = None) -> ModelRun:
    """Detect on every dataset image; time each image end to end."""
    import time

    items = list(dataset.items)
    iterator = progress(items, name) if progress else items
    detections: dict[int, Detections] = {}
    totals: list[float] = []
    times = getattr(detector, "times", None)
    if times is not None:
        times.reset()
    for item in iterator:
        start = time.perf_counter()
        detections[item.image_id] = detector.detect(dataset.image_path(item))
        totals.append(time.perf_counter() - start)
    inference = [c[1] for c in times.per_call] if times is not None else []
    return ModelRun(name=name, detections=detections, latency_ms=statistics.median(totals) * 1000 if totals else 0.0,
                    inference_ms=statistics.median(inference) * 1000 if inference else float("nan"))


def above(detections: dict[int, Detections], threshold: float) -> dict[int, Detections]:
    """Only the detections with score > threshold (the deployment view of the same run)."""
    return {k: Detections(d.boxes[d.scores > threshold], d.scores[d.scores > threshold], d.labels[d.scores > threshold])
            for k, d in detections.items()}


def map_postprocess(spec: Any) -> Any:
    """The spec's post-processing with the mAP protocol's thresholds (NMS on/off, class-agnostic kept)."""
    return replace(spec.postprocess, conf_threshold=MAP_CONF_THRESHOLD, iou_threshold=MAP_IOU_THRESHOLD,
                   pre_nms_topk=max(spec.postprocess.pre_nms_topk, MAP_MAX_DETECTIONS),
                   max_detections=MAP_MAX_DETECTIONS)


# Heads decoded inside a third-party graph (Ultralytics / YOLOv5 / YOLOX exports): the checkpoint they came from
# outputs the raw head instead, so the reference decodes with the checkpoint's own head.
GRAPH_DECODED_HEADS = frozenset({"ultralytics_decoded", "e2e_xyxy", "yolo_decoded", "yolox_flat"})


def reference_detector(reference_model: Any, spec: Any) -> Any:
    """The PyTorch reference for a model described by ``spec`` (an artifact's or an ONNX file's), refusing a
    checkpoint that is not that model, so that Δ and agreement never measure the difference between two models.

    The checkpoint runs at ``spec``'s input size and preprocessing with the mAP protocol's post-processing; its head
    is decoded with ``spec``'s head for edgekit's own exports (same head, parameters at the export's size), with its
    own for a third-party graph that decodes in the graph (GRAPH_DECODED_HEADS).
    """
    from edgekit.reference.detector import ReferenceDetector

    own = reference_model.spec
    if tuple(own.class_names) != tuple(spec.class_names):
        differing = [f"{a!r} vs {b!r}" for a, b in zip(own.class_names, spec.class_names) if a != b][:3]
        raise EdgekitError(f"--reference: the checkpoint's {own.num_classes} classes are not the model's "
                           f"{spec.num_classes} ({'; '.join(differing) or 'different count'}): not the same model")
    graph_decoded = spec.head.kind in GRAPH_DECODED_HEADS
    if not graph_decoded and (own.family, own.head.kind) != (spec.family, spec.head.kind):
        raise EdgekitError(f"--reference: the checkpoint is a {own.family} ({own.head.kind} head), the model a "
                           f"{spec.family} ({spec.head.kind} head): not the same model")
    if own.postprocess.nms != spec.postprocess.nms:
        loaded = "its one-to-one end-to-end head (top-k, no NMS)" if not own.postprocess.nms else \
            "its one-to-many head with NMS"
        raise EdgekitError(f"--reference: the checkpoint loaded with {loaded}, the model runs the other head; pass the "
                           "same --end2end / --no-end2end as the conversion")
    run_spec = spec
    if graph_decoded:
        run_spec = replace(own, input_size=spec.input_size, color_order=spec.color_order,
                           normalization=spec.normalization, resize=spec.resize, postprocess=spec.postprocess)
    return ReferenceDetector(reference_model, run_spec, map_postprocess(spec))


def validate_artifact(artifact: str | Path, dataset: Dataset, backends: Sequence[str] | None = None,
                      reference_model: Any | None = None, threads: int | None = None,
                      progress: Callable[[Sequence, str], Any] | None = None,
                      class_map: dict[str, str] | None = None,
                      notice: Callable[[str], None] | None = None) -> ValidationReport:
    """Evaluate every model in the artifact (or those of ``backends``) on ``dataset``.

    ``threads``: None = the artifact's (its target profile's), 0 = each backend's default.

    ``reference_model``: the PyTorch nn.Module (with .spec) the artifact was made from; when given,
    it is run through the reference detector and is what Δ and agreement are measured against.
    Without it the artifact's ONNX Runtime fp32 model is the reference (the export verified it
    against PyTorch, and the manifest records that error).
    The dataset's classes are matched to the model's by name (``map_to_model_classes``, with the
    optional ``class_map`` dataset name -> model name; ``notice`` gets its one-line warnings).
    """
    return validate_artifacts([artifact], dataset, backends, reference_model, threads, progress, class_map, notice)


def validate_artifacts(artifacts: Sequence[str | Path], dataset: Dataset, backends: Sequence[str] | None = None,
                       reference_model: Any | None = None, threads: int | None = None,
                       progress: Callable[[Sequence, str], Any] | None = None,
                       class_map: dict[str, str] | None = None,
                       notice: Callable[[str], None] | None = None) -> ValidationReport:
    """One report over several artifacts of the same model; a backend/precision seen twice runs once.

    The dataset's classes are matched to the model's by name first (see ``validate_artifact``).
    """
    if not dataset.items:
        raise EdgekitError(f"{dataset.root}: the dataset has no images")
    manifests = [(Path(a), read_manifest(a)) for a in artifacts]
    spec = manifests[0][1].spec
    present = sorted({entry.backend for _, manifest in manifests for entry in manifest.models})
    missing = [backend for backend in backends or () if backend not in present]
    if missing:
        raise EdgekitError(f"--backends {','.join(missing)}: {', '.join(str(a) for a, _ in manifests)} has no such "
                           f"model (it has {', '.join(present)}); convert for a target that has it")
    dataset, report = _start_report(dataset, spec, reference_model, progress, class_map, notice,
                                    _fp32_opener(manifests, threads))
    seen = {run.name for run in report.runs}
    for artifact, manifest in manifests:
        for entry in manifest.models:
            name = f"{entry.backend}/{entry.precision}"
            if (backends and entry.backend not in backends) or name in seen:
                continue
            seen.add(name)
            try:
                available = get_runner_class(entry.backend).is_available()
            except EdgekitError:
                available = False
            unbuilt = entry.status(artifact) == AWAITS_DEVICE_BUILD
            if not available or unbuilt:
                report.skipped.append((name, "backend not installed here" if not available else
                                       f"engine not built yet (on the device: {entry.build_hint()})"))
                continue
            protocol = map_postprocess(manifest.spec)
            graph_nms = entry.graph_nms
            if graph_nms is not None:  # mAP needs the protocol's thresholds; this model's NMS has its own baked in
                refused = graph_nms.admits(protocol)
                if refused is not None:
                    report.skipped.append((name, f"{refused} (the mAP protocol runs NMS at IoU "
                                                 f"{MAP_IOU_THRESHOLD:g}, score > {MAP_CONF_THRESHOLD:g}); a --nms host "
                                                 "build of the same model measures the engine's drift"))
                    continue
                protocol = host_postprocess(graph_nms, protocol, name)  # the graph did the NMS: not again here
            with Detector.load(artifact, backend=entry.backend, precision=entry.precision, threads=threads) as detector:
                detector.postprocess_spec = protocol
                run = run_detector(detector, dataset, name, progress)
            # a device-built entry's size is its engine's, not the ONNX it was built from
            report.runs.append(replace(run, size_bytes=sum((artifact / f).stat().st_size
                                                           for f in entry.payload_files())))
            if not report.reference:
                report.reference = name
    if not report.runs:
        raise EdgekitError(f"no model could run here ({'; '.join(f'{n}: {r}' for n, r in report.skipped)})")
    return _score_runs(report, dataset, spec)


def calibration_images_among(artifact: str | Path, dataset: Dataset) -> int:
    """How many of ``dataset``'s images (by the sha256 of their bytes) calibrated ``artifact``'s int8 models
    (``calibration.json``'s ``image_sha256s``): scored on its own calibration images an int8 model looks better than
    it is (a hostile review: int8 0.673 mAP@.5 over fp32's 0.662 on coco8, 7 of its 8 images calibrating)."""
    from edgekit.quant.result import CalibrationResult
    from edgekit.runtime.artifact import CALIBRATION_FILE, sha256_file

    path = Path(artifact) / CALIBRATION_FILE
    if not path.is_file():
        return 0
    calibrated = set(CalibrationResult.load(path).image_sha256s)
    return sum(sha256_file(dataset.image_path(item)) in calibrated for item in dataset.items) if calibrated else 0


def require_ground_truth(dataset: Dataset) -> None:
    """Before any model runs: mAP needs at least one labelled box (it was refused only after every model had run
    over every image, in a message naming no dataset)."""
    if not dataset.num_objects:
        raise EdgekitError(f"{dataset.root}: no ground-truth box in any of its {len(dataset)} images (empty or "
                           "missing label files?); mAP is undefined")


def _start_report(dataset: Dataset, spec: Any, reference_model: Any | None,
                  progress: Callable[[Sequence, str], Any] | None, class_map: dict[str, str] | None,
                  notice: Callable[[str], None] | None,
                  open_fp32: Callable[[], Any] | None = None) -> tuple[Dataset, ValidationReport]:
    """The dataset renumbered into the model's classes by name (an error names mismatches; labels are scored as
    model class indices) and a report holding the PyTorch reference's run when ``reference_model`` is given.

    ``open_fp32`` opens the model's own fp32 detector (mAP protocol): the reference is first checked to be that
    model (``check_reference_is_the_model``), before its run over the whole dataset."""
    dataset = map_to_model_classes(dataset, spec.class_names, class_map, notice)
    require_ground_truth(dataset)
    report = ValidationReport(dataset=str(dataset.root), reference="", num_images=len(dataset),
                              num_objects=dataset.num_objects, split=dataset.split)
    if reference_model is not None:
        reference = reference_detector(reference_model, spec)
        if open_fp32 is not None:
            with open_fp32() as model:
                check_reference_is_the_model(reference, model, dataset, spec)
        report.runs.append(run_detector(reference, dataset, "torch/fp32", progress))
        report.reference = "torch/fp32"
    return dataset, report


def _fp32_opener(manifests: Sequence[tuple[Path, Any]], threads: int | None) -> Callable[[], Any] | None:
    """Opens an fp32 model of the artifacts that runs here (ONNX Runtime's first), with the mAP protocol; None when
    none does (then the reference cannot be checked against the model, only its classes and family)."""
    candidates = sorted(((artifact, manifest, entry) for artifact, manifest in manifests for entry in manifest.models
                         if entry.precision == "fp32" and entry.graph_nms is None),
                        key=lambda found: found[2].backend != "onnxruntime")
    for artifact, manifest, entry in candidates:
        try:
            available = get_runner_class(entry.backend).is_available()
        except EdgekitError:
            available = False
        if not available or entry.status(artifact) == AWAITS_DEVICE_BUILD:
            continue

        def open_fp32(artifact: Path = artifact, manifest: Any = manifest, backend: str = entry.backend) -> Any:
            detector = Detector.load(artifact, backend=backend, precision="fp32", threads=threads)
            detector.postprocess_spec = map_postprocess(manifest.spec)
            return detector
        return open_fp32
    return None


def check_reference_is_the_model(reference: DetectorLike, model: DetectorLike, dataset: Dataset, spec: Any) -> None:
    """Refuse a ``--reference`` checkpoint that is not the network ``model`` (the artifact's fp32 build) runs.

    Class names and family are checked before (``reference_detector``); weights are not, and a checkpoint of the
    same family and classes — another training run, another scale of an import whose graph decodes its own head —
    made Δ and agreement measure the difference between two networks, with exit 0. The two detect on the first
    REFERENCE_CHECK_IMAGES images; at the deployment threshold they must agree as one network does with itself
    (``tolerances.REFERENCE_SAME_MODEL_AGREEMENT``, ``SAME_BOX_SCORE``). Images where neither finds a box prove
    nothing either way (a dataset of empty images is not refused).
    """
    items = list(dataset.items)[:REFERENCE_CHECK_IMAGES]
    paths = [dataset.image_path(item) for item in items]
    conf = spec.postprocess.conf_threshold
    theirs = above({i: reference.detect(path) for i, path in enumerate(paths)}, conf)
    ours = above({i: model.detect(path) for i, path in enumerate(paths)}, conf)
    result = agreement(theirs, ours)
    if result.num_reference + result.num_candidate == 0:
        return
    same = (min(result.precision, result.recall) >= REFERENCE_SAME_MODEL_AGREEMENT
            and result.mean_abs_score_delta <= SAME_BOX_SCORE)
    if not same:
        raise EdgekitError(f"--reference: on the first {len(paths)} images the checkpoint's detections are not the "
                           f"model's fp32 ones (precision {result.precision:.3f}, recall {result.recall:.3f}, mean "
                           f"|Δscore| {result.mean_abs_score_delta:.3f} over {result.num_reference} boxes; the same "
                           f"network agrees >= {REFERENCE_SAME_MODEL_AGREEMENT} within {SAME_BOX_SCORE}): not the "
                           "checkpoint this model was converted from")


def _score_runs(report: ValidationReport, dataset: Dataset, spec: Any) -> ValidationReport:
    """mAP of every run, and its agreement with the reference run at the spec's deployment threshold."""
    conf = spec.postprocess.conf_threshold
    reference_view = above(report.run(report.reference).detections, conf)
    for index, run in enumerate(report.runs):
        metrics = evaluate_detections(dataset, run.detections)
        agree = agreement(above(run.detections, conf), reference_view)
        report.runs[index] = replace(run, metrics=metrics, agreement=agree)
    return report


def validate_onnx_file(path: str | Path, spec: Any, dataset: Dataset, reference_model: Any | None = None,
                       threads: int = 0, progress: Callable[[Sequence, str], Any] | None = None,
                       class_map: dict[str, str] | None = None,
                       notice: Callable[[str], None] | None = None) -> ValidationReport:
    """Evaluate a bare ONNX file (e.g. a third-party export) with ONNX Runtime fp32, as one run.

    ``spec`` describes the file (``edgekit.runtime.onnx_import.spec_from_third_party_onnx`` or the
    embedded edgekit spec). Classes, the mAP protocol and ``reference_model`` work as in
    :func:`validate_artifact`; without a reference the file's own run is the reference.
    """
    if not dataset.items:
        raise EdgekitError(f"{dataset.root}: the dataset has no images")
    path = Path(path)

    def open_fp32() -> Any:
        detector = Detector.from_third_party_onnx(path, spec, threads=threads)
        detector.postprocess_spec = map_postprocess(spec)
        return detector

    dataset, report = _start_report(dataset, spec, reference_model, progress, class_map, notice, open_fp32)
    name = "onnxruntime/fp32"
    with Detector.from_third_party_onnx(path, spec, threads=threads) as detector:
        detector.postprocess_spec = map_postprocess(spec)
        run = run_detector(detector, dataset, name, progress)
    report.runs.append(replace(run, size_bytes=path.stat().st_size))
    report.reference = report.reference or name
    return _score_runs(report, dataset, spec)


def validate_checkpoint(model: Any, dataset: Dataset, progress: Callable[[Sequence, str], Any] | None = None,
                        class_map: dict[str, str] | None = None,
                        notice: Callable[[str], None] | None = None) -> ValidationReport:
    """mAP of a PyTorch model (with ``.spec``) through edgekit's reference decoder and NMS, as one run.

    What a user checks before converting: does edgekit's import of *their* checkpoint score what their trainer
    reported? Classes and the mAP protocol are those of :func:`validate_artifact`.
    """
    from edgekit.reference.detector import ReferenceDetector

    if not dataset.items:
        raise EdgekitError(f"{dataset.root}: the dataset has no images")
    spec = model.spec
    dataset = map_to_model_classes(dataset, spec.class_names, class_map, notice)
    require_ground_truth(dataset)
    report = ValidationReport(dataset=str(dataset.root), reference="torch/fp32", num_images=len(dataset),
                              num_objects=dataset.num_objects, split=dataset.split)
    report.runs.append(run_detector(ReferenceDetector(model, spec, map_postprocess(spec)), dataset, "torch/fp32",
                                    progress))
    return _score_runs(report, dataset, spec)


def format_table(report: ValidationReport) -> str:
    """A markdown table: one row per backend/precision."""
    reference = report._reference_metrics()
    split = f", split {report.split}" if report.split else ""
    scored = f" ({report.num_images} images, {report.num_objects} boxes{split})" if report.num_images else ""
    lines = [f"reference: {report.reference}   dataset: {report.dataset}{scored}",
             "",
             "| model | mAP@.5:.95 | mAP@.5 | Δ mAP (pts) | precision | recall | mean IoU | class flips | ms/img | infer ms | size MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in report.runs:
        m, a = run.metrics, run.agreement
        if m is None or a is None:
            raise EdgekitError(f"{run.name}: the run has no mAP / agreement yet (the validate_* functions return "
                               "scored reports)")
        delta = (m.map_50_95 - reference.map_50_95) * 100
        infer = "—" if np.isnan(run.inference_ms) else f"{run.inference_ms:.2f}"
        size = f"{run.size_bytes / 1e6:.2f}" if run.size_bytes else "—"
        lines.append(f"| {run.name} | {m.map_50_95:.4f} | {m.map_50:.4f} | {delta:+.2f} | {a.precision:.3f} | "
                     f"{a.recall:.3f} | {a.mean_iou:.4f} | {a.class_flips} | {run.latency_ms:.2f} | {infer} | {size} |")
    for name, reason in report.skipped:
        lines.append(f"| {name} | skipped: {reason} | | | | | | | | | |")
    return "\n".join(lines)
