"""`edgekit bench`: latency per backend/precision, split into stages, next to the raw runner call.

For each model in an artifact: warm-up, then ``runs`` rounds, each timing (a) the raw
``Runner.infer`` on an already preprocessed tensor and (b) ``Detector.detect`` on the image
(preprocess / inference / postprocess), interleaved so machine-load drift hits both alike.
Reported: median and p90 per stage and end-to-end / raw as a ratio measured in the same run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgekit.atomic_io import write_text_atomic
from edgekit.errors import EdgekitError
from edgekit.filetypes import strict_json
from edgekit.runtime.artifact import READY, Manifest, ModelEntry, read_manifest
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
                   warmup: int = 5, threads: int | None = None) -> list[BenchResult]:
    """``threads``: None = the artifact's (its target profile's), 0 = each backend's default."""
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    threads = manifest.threads if threads is None else threads
    array = load_image(image)
    results = []
    for entry in runnable_entries(artifact, manifest, backends):
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
    return results


def runnable_entries(artifact: Path, manifest: Manifest, backends: Sequence[str] | None) -> list[ModelEntry]:
    """The artifact's models (of ``backends``, if given) that run here: ready (not awaiting an on-device build)
    and with their backend installed. Raises EdgekitError when none does."""
    entries = []
    for entry in manifest.models:
        if backends and entry.backend not in backends:
            continue
        try:
            if entry.status(artifact) == READY and get_runner_class(entry.backend).is_available():
                entries.append(entry)
        except EdgekitError:
            continue
    if not entries:
        raise EdgekitError(f"{artifact}: no model in the artifact runs on this machine")
    return entries


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
    write_text_atomic(json_path, strict_json([{**asdict(r), "overhead_ratio": r.overhead_ratio} for r in results]))
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



# --- throughput: frames/s end to end on a video next to the backend's raw throughput ---------------------------


@dataclass(frozen=True)
class ThroughputResult:
    name: str                 # backend/precision
    workers: int              # inference requests in flight, in both measurements
    frames: int               # frames per round
    rounds: int
    raw_fps: float            # median over rounds: Runner.infer alone from `workers` threads, preprocessed tensor
    end_to_end_fps: float     # median over rounds: Detector.stream(video, throughput): decode .. postprocess
    stage_ms: dict            # mean busy ms per frame of each stream stage (last round)

    @property
    def ratio(self) -> float:
        """end-to-end / raw frames per second, measured in the same interleaved run."""
        return self.end_to_end_fps / self.raw_fps if self.raw_fps else float("nan")


def raw_throughput(runner, feeds: dict, workers: int, frames: int) -> float:
    """Frames/s of ``frames`` Runner.infer calls on one prepared feed, ``workers`` calls in flight (threads)."""
    import threading

    remaining = [frames]
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            runner.infer(feeds)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return frames / (time.perf_counter() - t0)


def write_test_video(path: str | Path, images: Sequence[ImageLike], frames: int, size: tuple[int, int] = (1280, 720),
                     fps: float = 30.0) -> Path:
    """An MPEG-4 video (``mp4v``, what every OpenCV wheel writes) of ``frames`` frames at ``size`` (width, height):
    the images in turn, resized, each shifted a little further so that consecutive frames differ."""
    import cv2

    path = Path(path)
    bases = [cv2.cvtColor(cv2.resize(load_image(image), size, interpolation=cv2.INTER_LINEAR), cv2.COLOR_RGB2BGR)
             for image in images]
    if not bases:
        raise EdgekitError("write_test_video: no images given")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)  # type: ignore[attr-defined]
    if not writer.isOpened():
        raise EdgekitError(f"{path}: OpenCV cannot write an mp4v video here")
    for index in range(frames):
        writer.write(np.ascontiguousarray(np.roll(bases[index % len(bases)], 5 * index, axis=1)))
    writer.release()
    return path


def bench_throughput(artifact: str | Path, video: str | Path, backends: Sequence[str] | None = None,
                     rounds: int = 3, warmup_frames: int = 8, threads: int | None = None,
                     workers: int = 0) -> list[ThroughputResult]:
    """For each runnable model of ``artifact``: ``Detector.stream(video)`` in throughput mode (the whole video,
    decode included) and the raw ``Runner.infer`` throughput with the same number of requests in flight,
    interleaved round by round so machine-load drift hits both alike; medians over ``rounds``.

    workers: requests in flight (0 = :meth:`Detector.optimal_requests`: OpenVINO's own number under its
    THROUGHPUT hint, one per core elsewhere). threads: backend threads, passed to ``Detector.load``.
    """
    import cv2

    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    capture = cv2.VideoCapture(str(video))
    ok, first = capture.read()
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    if not ok or frames <= 0:
        raise EdgekitError(f"{video}: cannot read this video (expected a video file OpenCV decodes)")
    first_rgb = cv2.cvtColor(first, cv2.COLOR_BGR2RGB)
    results = []
    for entry in runnable_entries(artifact, manifest, backends):
        with Detector.load(artifact, backend=entry.backend, precision=entry.precision, threads=threads,
                           mode="throughput") as detector:
            count = workers or detector.optimal_requests()
            tensor, _ = preprocess([first_rgb], detector.spec)
            feeds = {detector.spec.input_name: tensor.astype(detector._input.dtype, copy=False)}
            raw_throughput(detector.runner, feeds, count, warmup_frames)
            raw, e2e = [], []
            stage_ms: dict = {}
            for _ in range(rounds):
                raw.append(raw_throughput(detector.runner, feeds, count, frames))
                stream = detector.stream(video, mode="throughput", workers=count)
                t0 = time.perf_counter()
                processed = sum(1 for _ in stream)
                e2e.append(processed / (time.perf_counter() - t0))
                stage_ms = stream.stage_ms()
            results.append(ThroughputResult(f"{entry.backend}/{entry.precision}", count, frames, rounds,
                                            float(np.median(raw)), float(np.median(e2e)), stage_ms))
    return results


def format_throughput(results: Sequence[ThroughputResult]) -> str:
    lines = ["| model | requests | raw infer frames/s | end-to-end frames/s | e2e / raw | decode / pre / infer / post ms |",
             "|---|---|---|---|---|---|"]
    for r in results:
        ms = " / ".join(f"{r.stage_ms.get(k, 0.0):.1f}" for k in ("decode", "preprocess", "inference", "postprocess"))
        lines.append(f"| {r.name} | {r.workers} | {r.raw_fps:.1f} | {r.end_to_end_fps:.1f} | {r.ratio:.3f} | {ms} |")
    return "\n".join(lines)
