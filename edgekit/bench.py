"""`edgekit bench`: latency per backend/precision, split into stages, next to the raw runner call.

For each model in an artifact: warm-up, then ``runs`` rounds, each timing (a) the raw
``Runner.infer`` on an already preprocessed tensor and (b) ``Detector.detect`` on the image
(preprocess / inference / postprocess), interleaved so machine-load drift hits both alike.
Reported: median and p90 per stage and end-to-end / raw as a ratio measured in the same run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgekit.atomic_io import write_text_atomic
from edgekit.errors import EdgekitError
from edgekit.runtime.artifact import read_manifest
from edgekit.runtime.backends import get_runner_class
from edgekit.runtime.detector import Detector
from edgekit.runtime.preprocess import ImageLike, load_image, preprocess


@dataclass(frozen=True)
class StageStats:
    median_ms: float
    p90_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> StageStats:
        ms = np.asarray(seconds, dtype=np.float64) * 1000
        return cls(float(np.median(ms)), float(np.percentile(ms, 90)))


@dataclass(frozen=True)
class BenchResult:
    name: str            # backend/precision
    threads: int
    runs: int
    raw: StageStats      # Runner.infer alone
    preprocess: StageStats
    inference: StageStats
    postprocess: StageStats
    end_to_end: StageStats

    @property
    def overhead_ratio(self) -> float:
        """end-to-end median / raw median: what edgekit's pipeline costs on top of the backend call."""
        return self.end_to_end.median_ms / self.raw.median_ms if self.raw.median_ms else float("nan")


def bench_artifact(artifact: str | Path, image: ImageLike, backends: Sequence[str] | None = None, runs: int = 50,
                   warmup: int = 5, threads: int = 0) -> list[BenchResult]:
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    array = load_image(image)
    results = []
    for entry in manifest.models:
        if backends and entry.backend not in backends:
            continue
        try:
            runnable = not entry.awaits_device_build(artifact) and get_runner_class(entry.backend).is_available()
        except EdgekitError:
            runnable = False
        if not runnable:
            continue
        with Detector.load(artifact, backend=entry.backend, precision=entry.precision, threads=threads) as detector:
            tensor, _ = preprocess([array], detector.spec)
            feeds = {detector.spec.input_name: tensor}
            raw: list[float] = []
            totals: list[float] = []
            for round_index in range(warmup + runs):
                t0 = time.perf_counter()
                detector.runner.infer(feeds)
                t1 = time.perf_counter()
                if round_index == warmup:
                    detector.times.reset()
                detector.detect(array)
                t2 = time.perf_counter()
                if round_index >= warmup:
                    raw.append(t1 - t0)
                    totals.append(t2 - t1)
            per_call = detector.times.per_call
            results.append(BenchResult(
                name=f"{entry.backend}/{entry.precision}", threads=threads, runs=runs, raw=StageStats.of(raw),
                preprocess=StageStats.of([c[0] for c in per_call]), inference=StageStats.of([c[1] for c in per_call]),
                postprocess=StageStats.of([c[2] for c in per_call]), end_to_end=StageStats.of(totals)))
    if not results:
        raise EdgekitError(f"{artifact}: no model in the artifact runs on this machine")
    return results


def format_bench(results: Sequence[BenchResult]) -> str:
    lines = ["| model | raw infer ms (p90) | preprocess ms | inference ms | postprocess ms | end-to-end ms (p90) | e2e / raw |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.name} | {r.raw.median_ms:.2f} ({r.raw.p90_ms:.2f}) | {r.preprocess.median_ms:.2f} | "
                     f"{r.inference.median_ms:.2f} | {r.postprocess.median_ms:.2f} | {r.end_to_end.median_ms:.2f} "
                     f"({r.end_to_end.p90_ms:.2f}) | {r.overhead_ratio:.3f} |")
    return "\n".join(lines)


def write_bench_report(results: Sequence[BenchResult], folder: str | Path) -> tuple[Path, Path]:
    """bench.json and bench.png (stacked stage bars with the raw call beside them) in ``folder``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "bench.json"
    write_text_atomic(json_path, json.dumps([{**asdict(r), "overhead_ratio": r.overhead_ratio} for r in results],
                                            indent=1) + "\n")
    names = [r.name for r in results]
    x = np.arange(len(results))
    fig, ax = plt.subplots(figsize=(1.6 * len(results) + 3, 4))
    pre = [r.preprocess.median_ms for r in results]
    inf = [r.inference.median_ms for r in results]
    post = [r.postprocess.median_ms for r in results]
    ax.bar(x - 0.2, pre, 0.4, label="preprocess")
    ax.bar(x - 0.2, inf, 0.4, bottom=pre, label="inference")
    ax.bar(x - 0.2, post, 0.4, bottom=np.add(pre, inf), label="decode + NMS")
    ax.bar(x + 0.2, [r.raw.median_ms for r in results], 0.4, label="raw runner call", color="grey")
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylabel("median ms per image")
    ax.set_title("edgekit bench: Detector stages vs the raw backend call")
    ax.legend()
    fig.tight_layout()
    png_path = folder / "bench.png"
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return json_path, png_path

