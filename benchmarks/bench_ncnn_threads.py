"""NCNN latency by thread count on an idle and on a busy CPU, measured in one run.

Session notes saw NCNN's throughput collapse when another process kept a core busy (OpenMP worker
threads wait at every layer's barrier for a thread the OS has descheduled). This converts a
checkpoint for the raspberry-pi-5 target (NCNN fp16), then times ``NcnnRunner.infer`` on one
probe input for each thread count, first on an otherwise idle machine and then with ``--busy``
processes spinning in pure Python, and with ncnn's OpenMP block time (how long a worker spins
before sleeping, ncnn's default 20 ms) at 20 and 0. Reported: median latency and the ratio
to one thread under the same load.

    python benchmarks/bench_ncnn_threads.py [--checkpoint edgekit/zoo/yolov8.pt] [--imgsz 320]
        [--busy 1 2] [--runs 30]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _spin(stop: multiprocessing.Event) -> None:  # type: ignore[valid-type]
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def _median_ms(artifact: Path, threads: int, blocktime: int, runs: int) -> float:
    from edgekit.runtime.artifact import read_manifest
    from edgekit.runtime.backends.ncnn import NcnnRunner
    from edgekit.runtime.preprocess import probe_input

    manifest = read_manifest(artifact)
    entry = next(m for m in manifest.models if m.backend == "ncnn")
    runner = NcnnRunner.from_artifact(artifact / entry.file, entry.options, threads=threads)
    tensor = probe_input(manifest.spec)
    with runner:
        # The block time is not a runner option (edgekit leaves ncnn's default); set it on the live net.
        runner._net.opt.openmp_blocktime = blocktime
        feeds = {runner.input_specs()[0].name: tensor}
        times = []
        for run in range(runs + 3):
            start = time.perf_counter()
            runner.infer(feeds)
            if run >= 3:
                times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("edgekit/zoo/yolov8.pt"))
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--busy", type=int, nargs="+", default=[1, 2], help="busy processes per loaded run")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()

    from edgekit.convert.chain import convert
    from edgekit.models.loading import load_checkpoint

    cpus = os.cpu_count() or 1
    thread_counts = sorted({1, 2, cpus})
    print(f"{cpus} CPUs; checkpoint {args.checkpoint}, {args.imgsz}x{args.imgsz}, NCNN fp16, median of {args.runs}")
    with tempfile.TemporaryDirectory() as tmp:
        artifact = Path(tmp) / "art"
        convert(load_checkpoint(args.checkpoint).float().eval(), "raspberry-pi-5", artifact,
                input_size=(args.imgsz, args.imgsz))
        print("| busy processes | threads | block time (ms) | median (ms) | vs 1 thread, same load |")
        print("|---:|---:|---:|---:|---:|")
        for busy in [0, *args.busy]:
            stop = multiprocessing.Event()
            spinners = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(busy)]
            for process in spinners:
                process.start()
            try:
                time.sleep(0.5 if busy else 0.0)
                baseline = None
                for threads in thread_counts:
                    for blocktime in (20, 0):
                        ms = _median_ms(artifact, threads, blocktime, args.runs)
                        if threads == 1 and blocktime == 20:
                            baseline = ms
                        print(f"| {busy} | {threads} | {blocktime} | {ms:.1f} | {ms / baseline:.2f}× |", flush=True)
            finally:
                stop.set()
                for process in spinners:
                    process.join()


if __name__ == "__main__":
    main()
