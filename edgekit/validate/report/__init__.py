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

Modules: ``folder`` (checks, staging, swap), ``data`` (report.json numbers), ``markdown``, ``plots``, ``samples``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.filetypes import strict_json
from edgekit.runtime.artifact import Manifest
from edgekit.spec import PostprocessSpec
from edgekit.validate.datasets import Dataset
from edgekit.validate.report.data import float_layers, per_class_deltas, report_data
from edgekit.validate.report.folder import (
    REPORT_ENTRIES,
    named_folder,
    os_reason,
    remove_empty,
    start_report_dir,
    swap_report_into_place,
)
from edgekit.validate.report.markdown import markdown_report
from edgekit.validate.report.plots import MAX_CHART_CLASSES, plot_map_vs_latency, plot_per_class_delta
from edgekit.validate.report.samples import PANEL_GAP, PANEL_SIZE, SAMPLE_IOU, TITLE_HEIGHT, write_samples
from edgekit.validate.run import ValidationReport

__all__ = [
    "MAX_CHART_CLASSES",
    "PANEL_GAP",
    "PANEL_SIZE",
    "REPORT_ENTRIES",
    "SAMPLE_IOU",
    "TITLE_HEIGHT",
    "check_report_dir",
    "float_layers",
    "per_class_deltas",
    "write_drift_report",
]

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
    staging, created = start_report_dir(out_dir)
    try:
        written = _write_contents(staging, report, dataset, manifest, sample_images, conf_threshold)
        swap_report_into_place(staging, named_folder(out_dir))
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        remove_empty(created)
        if isinstance(exc, OSError):
            raise EdgekitError(f"{out_dir}: cannot write the report there ({os_reason(exc, out_dir)})") from None
        raise
    return {name: out_dir / name for name in written}


def check_report_dir(out_dir: str | Path) -> None:
    """Raise the ``EdgekitError`` ``write_drift_report`` would for an unusable ``out_dir``, writing nothing.

    For callers that run a long validation first (the CLI): a bad folder fails before, not after.
    """
    staging, created = start_report_dir(Path(out_dir))
    staging.rmdir()
    remove_empty(created)



def _write_contents(folder: Path, report: ValidationReport, dataset: Dataset, manifest: Manifest | None,
                    sample_images: int, conf: float) -> list[str]:
    """Every report file into ``folder``; returns their paths relative to it."""
    samples = write_samples(folder, report, dataset, conf, sample_images)
    plot_map_vs_latency(report, folder / "map_vs_latency.png")
    plot_per_class_delta(report, dataset, folder / "per_class_delta.png")
    data = report_data(report, dataset, manifest, conf, samples)
    (folder / "report.json").write_text(strict_json(data), encoding="utf-8")
    (folder / "report.md").write_text(markdown_report(report, dataset, manifest, conf, samples), encoding="utf-8")
    return ["report.json", "report.md", "map_vs_latency.png", "per_class_delta.png", *(s.file for s in samples)]
