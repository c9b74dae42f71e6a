"""``report.md``: the runs table, per-class Δ AP, layers kept in float, plots and samples, skipped runs."""


from __future__ import annotations

import math
from typing import Any

from edgekit.runtime.artifact import Manifest
from edgekit.validate.datasets import Dataset
from edgekit.validate.report.data import (
    Sample,
    float_layers,
    int8_info,
    ordered_classes,
    other_runs,
    per_class_deltas,
    reference_metrics,
    split_name,
    tensor_errors,
)
from edgekit.validate.report.samples import SAMPLE_IOU
from edgekit.validate.run import ValidationReport

# --- markdown ----------------------------------------------------------------------------------


def _cell(text: Any) -> str:
    """Table-safe text: a '|' would end the cell, a newline the row."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _num(value: float | None, spec: str) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _size_mb(size_bytes: int) -> str:
    """MB with two decimals; more for files under 10 kB, so a tiny model does not read as 0.00."""
    if not size_bytes:
        return "—"
    mb = size_bytes / 1e6
    return f"{mb:.2f}" if mb >= 0.01 else f"{mb:.5f}"


def markdown_report(report: ValidationReport, dataset: Dataset, manifest: Manifest | None, conf: float,
              samples: list[Sample]) -> str:
    from edgekit import __version__

    reference = report.run(report.reference)
    ref_m = reference_metrics(report)
    out = [f"# Drift report: {report.dataset}", "",
           f"Reference: **{report.reference}** · dataset: `{report.dataset}` ({len(dataset.items)} images, "
           f"{len(dataset.class_names)} classes) · deployment score threshold: {conf:g} · edgekit {__version__}", "",
           "## Accuracy, agreement and speed", "",
           "Δ: points of mAP (x100) against the reference. Agreement: each run's boxes above the deployment "
           f"threshold against the reference's, matched at IoU {SAMPLE_IOU:g} (precision / recall of the reference's "
           "boxes, mean IoU and mean |Δscore| of matched pairs, class flips = found with another class). "
           "Latency: median end to end per image on this machine.", "",
           "| backend | precision | mAP@0.5:0.95 | mAP@0.5 | Δ mAP@0.5:0.95 (pts) | Δ mAP@0.5 (pts) | precision "
           "| recall | mean IoU | mean \\|Δscore\\| | class flips | size MB | latency ms |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in report.runs:
        backend, precision = split_name(run.name)
        m, a = run.metrics, run.agreement
        if run.name == report.reference:
            precision += " (reference)"
        d_map = (m.map_50_95 - ref_m.map_50_95) * 100 if m else None
        d_50 = (m.map_50 - ref_m.map_50) * 100 if m else None
        out.append("| " + " | ".join([
            _cell(backend), _cell(precision), _num(m.map_50_95 if m else None, ".4f"),
            _num(m.map_50 if m else None, ".4f"), _num(d_map, "+.2f"), _num(d_50, "+.2f"),
            _num(a.precision if a else None, ".3f"), _num(a.recall if a else None, ".3f"),
            _num(a.mean_iou if a else None, ".4f"), _num(a.mean_abs_score_delta if a else None, ".4f"),
            _num(a.class_flips if a else None, "d"), _size_mb(run.size_bytes),
            _num(run.latency_ms, ".2f")]) + " |")
    for name, reason in report.skipped:
        backend, precision = split_name(name)
        out.append(f"| {_cell(backend)} | {_cell(precision)} | not run: {_cell(reason)} |" + " |" * 10)

    out += ["", "## Per-class Δ AP@0.5:0.95 (points)", ""]
    others = other_runs(report)
    classes = ordered_classes(report, dataset)
    if not others:
        out.append("Only the reference ran; there is nothing to compare per class.")
    else:
        deltas = {run.name: per_class_deltas(run, reference) for run in others}
        out.append("| class | reference AP | " + " | ".join(_cell(r.name) for r in others) + " |")
        out.append("|---|---|" + "---|" * len(others))
        for name in classes:
            cells = [_num(None if (delta := deltas[r.name][name]) is None else delta * 100, "+.2f") for r in others]
            out.append(f"| {_cell(name)} | {ref_m.per_class_ap[name]:.4f} | " + " | ".join(cells) + " |")
        missing = [name for name in dataset.class_names if name not in ref_m.per_class_ap]
        if missing:
            out += ["", f"No ground truth (no AP) for: {', '.join(missing)}."]

    out += ["", "## Raw tensors at build time (per output)", ""]
    rows = tensor_errors(manifest)
    if not rows:
        out.append("The artifact's manifest records no raw-tensor comparison run on the build machine."
                   if manifest is not None else "No manifest was given; the build-time comparisons are unknown.")
    else:
        out += ["Each built model against its reference on one input; relative = |Δ| / max |reference| of that "
                "output. INT8 is judged on detections, not here.", "",
                "| run | output | max \\|Δ\\| | mean \\|Δ\\| | p99 \\|Δ\\| | max rel | mean rel | p99 rel | tolerance |",
                "|---|---|---|---|---|---|---|---|---|"]
        for row in rows:
            out.append("| " + " | ".join([_cell(row["run"]), _cell(row["output"] or "all outputs")] + [
                _num(row.get(key), ".2e") for key in ("max_abs", "mean_abs", "p99_abs", "max_rel", "mean_rel",
                                                       "p99_rel", "tolerance")]) + " |")
        worst: dict[str, dict[str, Any]] = {}
        for row in rows:
            if row["output"] and (row["run"] not in worst or row["max_rel"] > worst[row["run"]]["max_rel"]):
                worst[row["run"]] = row
        if worst:
            out += ["", "Largest relative error per run: " + "; ".join(
                f"{_cell(run)} `{_cell(row['output'])}` {row['max_rel']:.2e}" for run, row in worst.items()) + "."]

    out += ["", "## Layers kept in float (INT8)", ""]
    info, layers = int8_info(manifest), float_layers(manifest)
    if info is None:
        out.append("The artifact's manifest records no INT8 calibration." if manifest is not None
                   else "No manifest was given; the INT8 details are unknown.")
    else:
        details = [f"{label}: {info[key]}" for key, label in (("method", "calibration method"),
                                                                ("calibration_images", "calibration images"),
                                                                ("drift_budget", "drift budget"))
                   if info.get(key) is not None]
        if details:
            out += ["; ".join(details) + ".", ""]
        if layers:
            out += [f"- `{name}`" + (f": {_cell(why)}" if why else "") for name, why in layers]
        else:
            out.append("None: every quantisable layer runs in int8.")

    out += ["", "## Plots", "", "![mAP@0.5:0.95 against latency](map_vs_latency.png)", "",
            "![per-class Δ AP](per_class_delta.png)", "", "## Samples", ""]
    if samples:
        out.append(f"Boxes with score > {conf:g}; the images where the runs disagree most with the reference "
                   f"(unmatched boxes at IoU {SAMPLE_IOU:g}).")
        for sample in samples:
            counts = ", ".join(f"{name}: {n} unmatched" for name, n in sample.unmatched.items())
            out += ["", f"**{_cell(sample.image)}** ({counts})", "", f"![{_cell(sample.image)}]({sample.file})"]
    else:
        out.append("No sample images (no run other than the reference, or none asked for).")

    if report.skipped:
        out += ["", "## Not run here", ""]
        out += [f"- {_cell(name)}: {_cell(reason)}" for name, reason in report.skipped]
    return "\n".join(out) + "\n"
