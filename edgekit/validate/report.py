"""The drift report: what each backend x precision conversion cost, as a folder a human can read.

``write_drift_report`` turns a ``ValidationReport`` (see ``run.py``) into ``DIR/``:

    report.json          everything in ``ValidationReport.to_dict()`` (mAP, agreement, latency,
                         size per run, skipped runs), plus per run: backend, precision, Δ mAP@0.5,
                         Δ AP@[.5:.95] per class (by class name) vs the reference; the manifest's
                         ``info["int8"]`` as written by the INT8 chain and the layers it kept in
                         float (name + why); the deployment score threshold; the sample images.
                         AP / mAP / Δ are fractions in [0, 1] here (x100 = points); NaN (e.g. the
                         inference time of the PyTorch reference) is written as null.
    report.md            the runs table (mAP@0.5:0.95, mAP@0.5, Δ in points, agreement precision /
                         recall, mean IoU, mean |Δscore|, class flips, size MB, latency ms), a
                         per-class Δ AP table (classes x runs), the layers kept in float, the
                         plots and sample images (relative links), and the runs that did not run.
    map_vs_latency.png   mAP@0.5:0.95 against median end-to-end latency, one labelled point per
                         run, colour = backend, marker = precision, the reference ringed.
    per_class_delta.png  grouped bars of per-class Δ AP@[.5:.95] (points) per non-reference run
                         (the 30 classes that moved most when there are more).
    samples/NN_<image>.jpg
                         the images where the compared runs disagree most with the reference
                         (most unmatched boxes at IoU 0.5, ties by dataset order; only images
                         with some disagreement, or the first image if none), side by side:
                         reference | each int8 run (or, with no int8 run, the run that agrees
                         least), boxes above the spec's deployment score threshold only.

The folder is built in a hidden sibling and renamed into place, so an error never leaves a
half-written report (an earlier report in ``DIR`` stays as it was).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.artifact import Manifest
from edgekit.runtime.detections import Detections
from edgekit.spec import PostprocessSpec
from edgekit.tolerances import AGREEMENT_IOU
from edgekit.validate.datasets import Dataset
from edgekit.validate.matching import match_image
from edgekit.validate.run import ModelRun, ValidationReport, above

#: What ``write_drift_report`` may find in (and replace in) an existing report folder.
REPORT_ENTRIES = frozenset({"report.json", "report.md", "map_vs_latency.png", "per_class_delta.png", "samples"})

#: Samples: boxes match at this IoU (as in ``agreement``); panels are scaled to this longest side
#: so a 160 px synthetic image and a 4000 px photo both give readable boxes and labels.
SAMPLE_IOU = AGREEMENT_IOU
PANEL_SIZE = 480
TITLE_HEIGHT = 26
PANEL_GAP = 6
#: The per-class chart stays readable up to about this many classes; past it, only those that moved most.
MAX_CHART_CLASSES = 30

_MARKERS = {"fp32": "o", "fp16": "s", "bf16": "D", "int8": "^"}
_SPARE_MARKERS = ("v", "P", "X", "*", "h")
#: Bars of one backend share its colour; precisions are shades of it: (mix with, fraction).
_SHADES = {"fp32": ("white", 0.0), "fp16": ("white", 0.45), "bf16": ("white", 0.65), "int8": ("black", 0.35)}


@dataclass(frozen=True)
class _Sample:
    """One sample image: where it was written and how much each compared run disagreed on it."""

    file: str                      # relative to the report folder, e.g. "samples/01_val_000003.jpg"
    image_id: int
    image: str                     # the dataset's file name
    unmatched: dict[str, int]      # run name -> boxes (its own + the reference's) left unmatched


# --- public API --------------------------------------------------------------------------------


def write_drift_report(report: ValidationReport, dataset: Dataset, out_dir: str | Path,
                       manifest: Manifest | None = None, sample_images: int = 4,
                       conf_threshold: float | None = None) -> dict[str, Path]:
    """Write the drift report folder ``out_dir`` (see the module docstring for what is in it).

    ``dataset``: the one ``report`` was computed on (class names, images for the samples).
    ``manifest``: the artifact's manifest; gives the deployment score threshold
    (``spec.postprocess.conf_threshold``) and the INT8 details in ``info["int8"]`` (optional).
    ``conf_threshold`` overrides the threshold; without it or a manifest the ``PostprocessSpec``
    default is used. ``sample_images``: how many sample images to draw (0 = none).

    ``out_dir`` may be new, empty, or an earlier report (which is replaced); a folder holding
    other files is refused. Returns every file written, keyed by its path relative to ``out_dir``.
    Raises ``EdgekitError`` (one line naming the folder) when it cannot be written.
    """
    out_dir = Path(out_dir)
    if not report.runs or not any(r.name == report.reference for r in report.runs):
        raise EdgekitError(f"{out_dir}: no report written: the validation has no reference run "
                           f"({report.reference!r}) to measure drift against")
    if report.run(report.reference).metrics is None:
        raise EdgekitError(f"{out_dir}: no report written: the reference run {report.reference} has no mAP")
    if sample_images < 0:
        raise EdgekitError(f"sample_images {sample_images}: expected 0 or more")
    if conf_threshold is None:
        conf_threshold = (manifest.spec.postprocess.conf_threshold if manifest is not None
                          else PostprocessSpec().conf_threshold)
    staging, created = _start(out_dir)
    try:
        written = _write_contents(staging, report, dataset, manifest, sample_images, conf_threshold)
        _swap_into_place(staging, _named(out_dir))
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(created)
        if isinstance(exc, OSError):
            raise EdgekitError(f"{out_dir}: cannot write the report there ({_reason(exc, out_dir)})") from None
        raise
    return {name: out_dir / name for name in written}


def check_report_dir(out_dir: str | Path) -> None:
    """Raise the ``EdgekitError`` ``write_drift_report`` would for an unusable ``out_dir``, writing nothing.

    For callers that run a long validation first (the CLI): a bad folder fails before, not after.
    """
    staging, created = _start(Path(out_dir))
    staging.rmdir()
    _remove_empty(created)


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
    info = _int8_info(manifest)
    if info is None:
        return None
    layers = info.get("float_layers") or {}
    if isinstance(layers, Mapping):
        return [(str(name), str(why)) for name, why in layers.items()]
    if isinstance(layers, (list, tuple)):
        return [(str(name), "") for name in layers]
    return []


# --- the folder --------------------------------------------------------------------------------


def _reason(exc: OSError, out_dir: Path) -> str:
    """The OS's reason, but "X is a file" when a folder on the way is a file (mkdir says "File exists")."""
    blocker = next((p for p in (out_dir, *out_dir.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        return f"{blocker} is a file, not a folder"
    return exc.strerror or str(exc) or type(exc).__name__


def _start(out_dir: Path) -> tuple[Path, list[Path]]:
    """Check ``out_dir``, make its parents and an empty staging folder beside it.

    Returns (staging folder, parent folders created here, deepest first, to remove on failure).
    """
    _check_report_dir(out_dir)
    out_dir = _named(out_dir)
    created = _missing_ancestors(out_dir.parent)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        return _make_staging_dir(out_dir), created
    except OSError as exc:
        _remove_empty(created)
        raise EdgekitError(f"{out_dir}: cannot write the report there ({_reason(exc, out_dir)})") from None


def _named(folder: Path) -> Path:
    """``folder`` with a real last component ("." or ".." resolved), so siblings can be named."""
    return folder if folder.name not in ("", ".", "..") else folder.resolve()


def _check_report_dir(out_dir: Path) -> None:
    """Refuse a file, or a folder with files a report does not write (they would be lost)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise EdgekitError(f"{out_dir}: is a file; expected a folder for the report")
    if out_dir.is_dir():
        try:
            foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in REPORT_ENTRIES)
        except OSError as exc:
            raise EdgekitError(f"{out_dir}: cannot write the report there ({_reason(exc, out_dir)})") from None
        if foreign:
            raise EdgekitError(f"{out_dir}: holds files a drift report does not write ({', '.join(foreign[:5])}); "
                               "choose a new or empty folder")


def _missing_ancestors(folder: Path) -> list[Path]:
    """The folders of ``folder``'s path that do not exist yet, deepest first (to undo a mkdir -p)."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


def _make_staging_dir(out_dir: Path) -> Path:
    """A new hidden sibling of ``out_dir``: the one staging helper artifacts use too."""
    from edgekit.convert.artifact import make_staging_dir

    return make_staging_dir(out_dir)


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    """Move the finished report to ``out_dir`` (an earlier report is replaced as a whole, never missing)."""
    from edgekit.convert.artifact import swap_into_place

    swap_into_place(staging, out_dir)


def _write_contents(folder: Path, report: ValidationReport, dataset: Dataset, manifest: Manifest | None,
                    sample_images: int, conf: float) -> list[str]:
    """Every report file into ``folder``; returns their paths relative to it."""
    samples = _write_samples(folder, report, dataset, conf, sample_images)
    _plot_map_vs_latency(report, folder / "map_vs_latency.png")
    _plot_per_class_delta(report, dataset, folder / "per_class_delta.png")
    data = _report_data(report, dataset, manifest, conf, samples)
    (folder / "report.json").write_text(json.dumps(_json_safe(data), indent=1, allow_nan=False) + "\n",
                                        encoding="utf-8")
    (folder / "report.md").write_text(_markdown(report, dataset, manifest, conf, samples), encoding="utf-8")
    return ["report.json", "report.md", "map_vs_latency.png", "per_class_delta.png", *(s.file for s in samples)]


# --- numbers -----------------------------------------------------------------------------------


def _split_name(name: str) -> tuple[str, str]:
    """"openvino/int8" -> ("openvino", "int8")."""
    backend, _, precision = name.partition("/")
    return backend, precision or "?"


def _is_int8(run: ModelRun) -> bool:
    return _split_name(run.name)[1].startswith("int8")


def _int8_info(manifest: Manifest | None) -> dict[str, Any] | None:
    info = manifest.info.get("int8") if manifest is not None and isinstance(manifest.info, Mapping) else None
    return dict(info) if isinstance(info, Mapping) else None


def _ordered_classes(report: ValidationReport, dataset: Dataset) -> list[str]:
    """Classes with a reference AP, in the dataset's class order."""
    ref_ap = report.run(report.reference).metrics.per_class_ap
    ordered = [name for name in dataset.class_names if name in ref_ap]
    return ordered + [name for name in ref_ap if name not in ordered]


def _others(report: ValidationReport) -> list[ModelRun]:
    return [run for run in report.runs if run.name != report.reference]


def _class_name(dataset: Dataset, label: int) -> str:
    return dataset.class_names[label] if 0 <= label < len(dataset.class_names) else str(label)


def _json_safe(value: Any) -> Any:
    """NaN / inf -> None and numpy scalars -> Python numbers, so report.json is strict JSON."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _report_data(report: ValidationReport, dataset: Dataset, manifest: Manifest | None, conf: float,
                 samples: list[_Sample]) -> dict[str, Any]:
    data = report.to_dict()
    reference = report.run(report.reference)
    for row, run in zip(data["runs"], report.runs):
        backend, precision = _split_name(run.name)
        row.update(backend=backend, precision=precision, is_reference=run.name == report.reference)
        if run.metrics is not None:
            row["per_class_ap_50"] = run.metrics.per_class_ap_50
            row["delta_map_50"] = run.metrics.map_50 - reference.metrics.map_50
            row["delta_per_class_ap"] = per_class_deltas(run, reference)
        if run.agreement is not None:
            a = run.agreement
            flips = [{"reference": _class_name(dataset, ref), "candidate": _class_name(dataset, cand), "count": n}
                     for (ref, cand), n in sorted(a.flip_counts.items())]
            row["agreement"].update(num_candidate=a.num_candidate, num_reference=a.num_reference,
                                    num_matched=a.num_matched, iou_threshold=a.iou_threshold, flips=flips)
    layers = float_layers(manifest)
    data.update(
        units="AP, mAP and their deltas are fractions in [0, 1] (x100 = points); latency in ms; size in bytes",
        conf_threshold=conf,
        class_names=list(dataset.class_names),
        num_images=len(dataset.items),
        int8=_int8_info(manifest),
        float_layers=None if layers is None else [{"name": n, "reason": why} for n, why in layers],
        plots={"map_vs_latency": "map_vs_latency.png", "per_class_delta": "per_class_delta.png"},
        samples=[{"file": s.file, "image_id": s.image_id, "image": s.image, "unmatched": s.unmatched}
                 for s in samples],
    )
    return data


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


def _markdown(report: ValidationReport, dataset: Dataset, manifest: Manifest | None, conf: float,
              samples: list[_Sample]) -> str:
    from edgekit import __version__

    reference = report.run(report.reference)
    ref_m = reference.metrics
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
        backend, precision = _split_name(run.name)
        m, a = run.metrics, run.agreement
        if run.name == report.reference:
            precision += " (reference)"
        d_map = (m.map_50_95 - ref_m.map_50_95) * 100 if m else None
        d_50 = (m.map_50 - ref_m.map_50) * 100 if m else None
        out.append("| " + " | ".join([
            _cell(backend), _cell(precision), _num(m and m.map_50_95, ".4f"), _num(m and m.map_50, ".4f"),
            _num(d_map, "+.2f"), _num(d_50, "+.2f"), _num(a and a.precision, ".3f"), _num(a and a.recall, ".3f"),
            _num(a and a.mean_iou, ".4f"), _num(a and a.mean_abs_score_delta, ".4f"),
            _num(a and a.class_flips, "d"), _size_mb(run.size_bytes),
            _num(run.latency_ms, ".2f")]) + " |")
    for name, reason in report.skipped:
        backend, precision = _split_name(name)
        out.append(f"| {_cell(backend)} | {_cell(precision)} | not run: {_cell(reason)} |" + " |" * 10)

    out += ["", "## Per-class Δ AP@0.5:0.95 (points)", ""]
    others = _others(report)
    classes = _ordered_classes(report, dataset)
    if not others:
        out.append("Only the reference ran; there is nothing to compare per class.")
    else:
        deltas = {run.name: per_class_deltas(run, reference) for run in others}
        out.append("| class | reference AP | " + " | ".join(_cell(r.name) for r in others) + " |")
        out.append("|---|---|" + "---|" * len(others))
        for name in classes:
            cells = [_num(None if deltas[r.name][name] is None else deltas[r.name][name] * 100, "+.2f")
                     for r in others]
            out.append(f"| {_cell(name)} | {ref_m.per_class_ap[name]:.4f} | " + " | ".join(cells) + " |")
        missing = [name for name in dataset.class_names if name not in ref_m.per_class_ap]
        if missing:
            out += ["", f"No ground truth (no AP) for: {', '.join(missing)}."]

    out += ["", "## Layers kept in float (INT8)", ""]
    info, layers = _int8_info(manifest), float_layers(manifest)
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


# --- plots -------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    # A bare Figure renders with Agg on savefig: no pyplot, so no global backend switch and no
    # figure registry to leak, which matters when a notebook or another tool imports edgekit.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110)


def _backend_colors(report: ValidationReport) -> dict[str, str]:
    """One colour per backend, the same in both plots."""
    backends = sorted({_split_name(r.name)[0] for r in report.runs})
    return {b: f"C{i % 10}" for i, b in enumerate(backends)}


def _shade(color: str, precision: str) -> tuple[float, float, float]:
    """The backend's colour, lighter or darker by precision, so two runs of one backend differ."""
    from matplotlib.colors import to_rgb

    toward, amount = _SHADES.get(precision, ("white", 0.25))
    base, other = np.array(to_rgb(color)), np.array(to_rgb(toward))
    return tuple(float(v) for v in base * (1 - amount) + other * amount)


def _plot_map_vs_latency(report: ValidationReport, path: Path) -> None:
    from matplotlib.lines import Line2D

    runs = [r for r in report.runs if r.metrics is not None]
    backends = sorted({_split_name(r.name)[0] for r in runs})
    precisions = sorted({_split_name(r.name)[1] for r in runs})
    colors = _backend_colors(report)
    spare = iter(_SPARE_MARKERS * 4)
    markers = {p: _MARKERS.get(p) or next(spare) for p in precisions}

    fig = _figure(7.5, 5)
    ax = fig.subplots()
    for run in runs:
        backend, precision = _split_name(run.name)
        is_ref = run.name == report.reference
        ax.scatter(run.latency_ms, run.metrics.map_50_95, s=110 if is_ref else 70, c=colors[backend],
                   marker=markers[precision], edgecolors="black" if is_ref else "none", linewidths=1.5, zorder=3)
        ax.annotate(run.name + (" (reference)" if is_ref else ""), (run.latency_ms, run.metrics.map_50_95),
                    xytext=(6, 6), textcoords="offset points", fontsize=8)
    ax.set_xlabel("median latency per image, end to end (ms)")
    ax.set_ylabel("mAP@0.5:0.95")
    ax.set_title(f"accuracy against latency (reference {report.reference})")
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.25, y=0.2)  # room for the point labels
    backend_legend = ax.legend(handles=[Line2D([], [], marker="o", ls="", color=colors[b], label=b) for b in backends],
                               title="backend", loc="lower right", fontsize=8)
    ax.add_artist(backend_legend)
    ax.legend(handles=[Line2D([], [], marker=markers[p], ls="", color="grey", label=p) for p in precisions],
              title="precision", loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def _plot_per_class_delta(report: ValidationReport, dataset: Dataset, path: Path) -> None:
    reference = report.run(report.reference)
    others = [r for r in _others(report) if r.metrics is not None]
    classes = _ordered_classes(report, dataset)
    deltas = {r.name: per_class_deltas(r, reference) for r in others}
    title = "per-class Δ AP@0.5:0.95 against " + report.reference
    if len(classes) > MAX_CHART_CLASSES and others:
        # Keep the classes with the largest drop or gain in any run, in class order.
        moved = sorted(classes, key=lambda c: -max(abs(deltas[r.name][c] or 0.0) for r in others))
        keep = set(moved[:MAX_CHART_CLASSES])
        title += f" (the {MAX_CHART_CLASSES} of {len(classes)} classes that moved most)"
        classes = [c for c in classes if c in keep]

    width = max(6.0, min(24.0, 2.0 + len(classes) * (0.3 + 0.18 * max(1, len(others)))))
    fig = _figure(width, 4.8)
    ax = fig.subplots()
    if not others or not classes:
        ax.text(0.5, 0.5, "only the reference ran: nothing to compare" if not others else "no class has an AP",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        x = np.arange(len(classes))
        bar = 0.8 / len(others)
        colors = _backend_colors(report)
        for i, run in enumerate(others):
            backend, precision = _split_name(run.name)
            values = [(deltas[run.name][c] or 0.0) * 100 for c in classes]
            ax.bar(x - 0.4 + bar * (i + 0.5), values, bar, label=run.name, color=_shade(colors[backend], precision))
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(x, classes, rotation=30 if len(classes) > 6 else 0, ha="right" if len(classes) > 6 else "center")
        ax.set_ylabel("Δ AP (points)")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)


# --- sample images -----------------------------------------------------------------------------


def _unmatched(candidate: Detections, reference: Detections) -> int:
    """Boxes of either side without a same-class partner at IoU >= 0.5 (a class flip counts on both sides)."""
    # The one matching rule (edgekit.validate.matching), as agreement() uses it.
    matches = match_image(candidate, reference, SAMPLE_IOU).matches
    return len(candidate) + len(reference) - 2 * len(matches)


def _compared_runs(report: ValidationReport) -> list[ModelRun]:
    """The int8 runs, or else the one run that agrees least with the reference (lowest precision + recall)."""
    others = _others(report)
    int8 = [r for r in others if _is_int8(r)]
    if int8:
        return int8
    scored = [r for r in others if r.agreement is not None]
    if not scored:
        return others[:1]
    return [min(scored, key=lambda r: (r.agreement.precision + r.agreement.recall, r.name))]


def _write_samples(folder: Path, report: ValidationReport, dataset: Dataset, conf: float,
                   count: int) -> list[_Sample]:
    compared = _compared_runs(report)
    if not compared or count == 0:
        return []
    empty = Detections.empty()
    views = {run.name: above(run.detections, conf) for run in (report.run(report.reference), *compared)}
    ref_view = views[report.reference]
    scored = []
    for order, item in enumerate(dataset.items):
        ref = ref_view.get(item.image_id, empty)
        unmatched = {run.name: _unmatched(views[run.name].get(item.image_id, empty), ref) for run in compared}
        # Most disagreement first; ties keep the dataset order so the choice is deterministic.
        scored.append((-sum(unmatched.values()), order, item, unmatched))
    scored.sort(key=lambda s: (s[0], s[1]))
    # Images where everything agrees teach nothing; when no image disagrees, one still shows what
    # the boxes look like.
    chosen = [s for s in scored if s[0] < 0][:count] or scored[:1]

    (folder / "samples").mkdir()
    samples = []
    for rank, (_, _, item, unmatched) in enumerate(chosen, start=1):
        panels = [(f"reference {report.reference}", ref_view.get(item.image_id, empty))]
        panels += [(f"{run.name}: {unmatched[run.name]} unmatched", views[run.name].get(item.image_id, empty))
                   for run in compared]
        image = _side_by_side(dataset, item, panels, conf)
        relative = f"samples/{rank:02d}_{Path(item.file_name).stem}.jpg"
        image.save(folder / relative, quality=90)
        samples.append(_Sample(relative, int(item.image_id), item.file_name, unmatched))
    return samples


def _side_by_side(dataset: Dataset, item: Any, panels: list[tuple[str, Detections]], conf: float):
    """One row of panels (the image with that run's boxes), each under its title, and a header line."""
    from PIL import Image, ImageDraw, ImageFont

    from edgekit.runtime.draw import draw_detections
    from edgekit.runtime.preprocess import load_image

    original = Image.fromarray(load_image(dataset.image_path(item)))
    scale = PANEL_SIZE / max(original.size)
    size = (max(1, round(original.width * scale)), max(1, round(original.height * scale)))
    resized = np.asarray(original.resize(size, Image.Resampling.BILINEAR))
    font = ImageFont.load_default(size=14)
    gap = PANEL_GAP
    width = len(panels) * size[0] + (len(panels) - 1) * gap
    canvas = Image.new("RGB", (width, size[1] + 2 * TITLE_HEIGHT), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 5), f"{item.file_name} (id {item.image_id}): boxes with score > {conf:g}", fill="black", font=font)
    for index, (title, detections) in enumerate(panels):
        scaled = Detections(detections.boxes * scale, detections.scores, detections.labels)
        left = index * (size[0] + gap)
        draw.text((left + 4, TITLE_HEIGHT + 5), f"{title} ({len(detections)} boxes)", fill="black", font=font)
        canvas.paste(draw_detections(resized, scaled, dataset.class_names), (left, 2 * TITLE_HEIGHT))
    return canvas
