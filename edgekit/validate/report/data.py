"""The numbers of the report (``report.json``): per-run Δ, per-class Δ AP, INT8 details, strict JSON."""


from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.runtime.artifact import Manifest
from edgekit.validate.coco_eval import MapResult
from edgekit.validate.datasets import Dataset
from edgekit.validate.run import ModelRun, ValidationReport


@dataclass(frozen=True)
class Sample:
    """One sample image: where it was written and how much each compared run disagreed on it."""

    file: str                      # relative to the report folder, e.g. "samples/01_val_000003.jpg"
    image_id: int
    image: str                     # the dataset's file name
    unmatched: dict[str, int]      # run name -> boxes (its own + the reference's) left unmatched


def per_class_deltas(run: ModelRun, reference: ModelRun) -> dict[str, float | None]:
    """AP@[.5:.95] of ``run`` minus the reference's, per class the reference has an AP for (fractions).

    None where the run has no AP for that class (no metrics); classes without ground truth have no
    AP in either and are not listed.
    """
    ref_ap = reference.metrics.per_class_ap if reference.metrics else {}
    run_ap = run.metrics.per_class_ap if run.metrics else {}
    return {name: (run_ap[name] - ap if name in run_ap else None) for name, ap in ref_ap.items()}


def float_layers(manifest: Manifest | None) -> list[tuple[str, str]] | None:
    """(layer, why) for every layer the INT8 chain kept in float, from ``manifest.info["int8"]``.

    None when the manifest records no INT8 information. Accepts ``float_layers`` as a mapping
    name -> why (what the chain writes) or as a plain list of names.
    """
    info = int8_info(manifest)
    if info is None:
        return None
    layers = info.get("float_layers") or {}
    if isinstance(layers, Mapping):
        return [(str(name), str(why)) for name, why in layers.items()]
    if isinstance(layers, (list, tuple)):
        return [(str(name), "") for name in layers]
    return []


# --- numbers -----------------------------------------------------------------------------------


def split_name(name: str) -> tuple[str, str]:
    """"openvino/int8" -> ("openvino", "int8")."""
    backend, _, precision = name.partition("/")
    return backend, precision or "?"


def is_int8(run: ModelRun) -> bool:
    return split_name(run.name)[1].startswith("int8")


def int8_info(manifest: Manifest | None) -> dict[str, Any] | None:
    info = manifest.info.get("int8") if manifest is not None and isinstance(manifest.info, Mapping) else None
    return dict(info) if isinstance(info, Mapping) else None


def reference_metrics(report: ValidationReport) -> MapResult:
    """The reference run's mAP (write_drift_report refuses a report whose reference has none)."""
    metrics = report.run(report.reference).metrics
    if metrics is None:
        raise EdgekitError(f"the reference run {report.reference} has no mAP")
    return metrics


def ordered_classes(report: ValidationReport, dataset: Dataset) -> list[str]:
    """Classes with a reference AP, in the dataset's class order."""
    ref_ap = reference_metrics(report).per_class_ap
    ordered = [name for name in dataset.class_names if name in ref_ap]
    return ordered + [name for name in ref_ap if name not in ordered]


def other_runs(report: ValidationReport) -> list[ModelRun]:
    return [run for run in report.runs if run.name != report.reference]


def class_name(dataset: Dataset, label: int) -> str:
    return dataset.class_names[label] if 0 <= label < len(dataset.class_names) else str(label)


def tensor_errors(manifest: Manifest | None) -> list[dict[str, Any]]:
    """Per run and output, the raw-tensor error the build measured against its reference (PyTorch, or the
    original ONNX) on the same input: ``manifest.info["parity"]``, one row per output with max / mean /
    p99 of |Δ| and the same relative to the output's max |reference| (``validate.compare.tensor_error``),
    so a drift can be traced to a head level. Artifacts from before per-output statistics give one row
    per run (output ``None``, max only); runs not checked on this machine give none."""
    parity = manifest.info.get("parity") if manifest is not None and isinstance(manifest.info, Mapping) else None
    rows: list[dict[str, Any]] = []
    for run, record in (parity or {}).items() if isinstance(parity, Mapping) else ():
        if not isinstance(record, Mapping) or "max_rel" not in record:
            continue
        common = {"run": str(run), "tolerance": record.get("tolerance")}
        outputs = record.get("outputs")
        if isinstance(outputs, Mapping) and outputs:
            rows += [{**common, "output": str(name), **dict(stats)} for name, stats in outputs.items()
                     if isinstance(stats, Mapping)]
        else:
            rows.append({**common, "output": None, "max_abs": record.get("max_abs"), "max_rel": record["max_rel"]})
    return rows


def report_data(report: ValidationReport, dataset: Dataset, manifest: Manifest | None, conf: float,
                 samples: list[Sample]) -> dict[str, Any]:
    data = report.to_dict()
    reference = report.run(report.reference)
    for row, run in zip(data["runs"], report.runs):
        backend, precision = split_name(run.name)
        row.update(backend=backend, precision=precision, is_reference=run.name == report.reference)
        if run.metrics is not None:
            row["per_class_ap_50"] = run.metrics.per_class_ap_50
            row["delta_map_50"] = run.metrics.map_50 - reference_metrics(report).map_50
            row["delta_per_class_ap"] = per_class_deltas(run, reference)
        if run.agreement is not None:
            a = run.agreement
            flips = [{"reference": class_name(dataset, ref), "candidate": class_name(dataset, cand), "count": n}
                     for (ref, cand), n in sorted(a.flip_counts.items())]
            row["agreement"].update(num_candidate=a.num_candidate, num_reference=a.num_reference,
                                    num_matched=a.num_matched, iou_threshold=a.iou_threshold, flips=flips)
    layers = float_layers(manifest)
    data.update(
        units="AP, mAP and their deltas are fractions in [0, 1] (x100 = points); latency in ms; size in bytes",
        conf_threshold=conf,
        class_names=list(dataset.class_names),
        num_images=len(dataset.items),
        int8=int8_info(manifest),
        tensor_errors=tensor_errors(manifest),
        float_layers=None if layers is None else [{"name": n, "reason": why} for n, why in layers],
        plots={"map_vs_latency": "map_vs_latency.png", "per_class_delta": "per_class_delta.png"},
        samples=[{"file": s.file, "image_id": s.image_id, "image": s.image, "unmatched": s.unmatched}
                 for s in samples],
    )
    return data
