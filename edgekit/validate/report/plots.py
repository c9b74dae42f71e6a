"""``map_vs_latency.png`` and ``per_class_delta.png`` (matplotlib, Agg backend)."""


from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.validate.datasets import Dataset
from edgekit.validate.report.data import ordered_classes, other_runs, per_class_deltas, split_name
from edgekit.validate.run import ValidationReport

#: The per-class chart stays readable up to about this many classes; past it, only those that moved most.
MAX_CHART_CLASSES = 30

_MARKERS = {"fp32": "o", "fp16": "s", "bf16": "D", "int8": "^"}
_SPARE_MARKERS = ("v", "P", "X", "*", "h")
#: Bars of one backend share its colour; precisions are shades of it: (mix with, fraction).
_SHADES = {"fp32": ("white", 0.0), "fp16": ("white", 0.45), "bf16": ("white", 0.65), "int8": ("black", 0.35)}

# --- plots -------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    # A bare Figure renders with Agg on savefig: no pyplot, so no global backend switch and no
    # figure registry to leak, which matters when a notebook or another tool imports edgekit.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110)


def _backend_colors(report: ValidationReport) -> dict[str, str]:
    """One colour per backend, the same in both plots."""
    backends = sorted({split_name(r.name)[0] for r in report.runs})
    return {b: f"C{i % 10}" for i, b in enumerate(backends)}


def _shade(color: str, precision: str) -> tuple[float, float, float]:
    """The backend's colour, lighter or darker by precision, so two runs of one backend differ."""
    from matplotlib.colors import to_rgb

    toward, amount = _SHADES.get(precision, ("white", 0.25))
    base, other = np.array(to_rgb(color)), np.array(to_rgb(toward))
    red, green, blue = (float(v) for v in base * (1 - amount) + other * amount)
    return red, green, blue


def plot_map_vs_latency(report: ValidationReport, path: Path) -> None:
    from matplotlib.lines import Line2D

    runs = [(r, r.metrics) for r in report.runs if r.metrics is not None]
    backends = sorted({split_name(r.name)[0] for r, _ in runs})
    precisions = sorted({split_name(r.name)[1] for r, _ in runs})
    colors = _backend_colors(report)
    spare = iter(_SPARE_MARKERS * 4)
    markers = {p: _MARKERS.get(p) or next(spare) for p in precisions}

    fig = _figure(7.5, 5)
    ax = fig.subplots()
    for run, metrics in runs:
        backend, precision = split_name(run.name)
        is_ref = run.name == report.reference
        ax.scatter(run.latency_ms, metrics.map_50_95, s=110 if is_ref else 70, c=colors[backend],
                   marker=markers[precision], edgecolors="black" if is_ref else "none", linewidths=1.5, zorder=3)
        ax.annotate(run.name + (" (reference)" if is_ref else ""), (run.latency_ms, metrics.map_50_95),
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


def plot_per_class_delta(report: ValidationReport, dataset: Dataset, path: Path) -> None:
    reference = report.run(report.reference)
    others = [r for r in other_runs(report) if r.metrics is not None]
    classes = ordered_classes(report, dataset)
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
            backend, precision = split_name(run.name)
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
