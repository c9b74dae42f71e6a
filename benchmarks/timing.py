"""One interleaved timing loop for the benchmarks that compare models in the same run.

Interleaving (every model once per round) makes a drift in the machine's load hit every model alike. Two things
it must not do, both found when the 2-thread ONNX Runtime figures of ``bench_int8.py`` came out 1.4-1.9x apart for
two int8 graphs that run within 0.93-1.01x of each other when timed alone:

- keep the order of the models fixed up to rotation: each model then always follows the same one or two
  neighbours, and a runtime's worker threads keep spinning for a while after a call (ONNX Runtime's intra-op pool,
  OpenMP in ncnn), so a model that follows a multi-threaded session loses a core to its spinning workers every
  time while one that follows a single-threaded session never does. The order here is a fresh random permutation
  each round (seeded: the same run twice gives the same order), so every model follows every other alike;
- start a call while the previous one's workers still spin: ``settle_ms`` of sleep before each call lets them
  park. How long that takes was measured, not assumed (``benchmarks/bench_int8.py``'s six ONNX Runtime sessions,
  yolov8n-size at 640 px, 20-30 rounds, edgekit int8 / quantize_static at 2 threads): no pause 1.10 / 1.18x,
  20 ms 1.21 / 1.31x, 100 ms 1.02 / 1.02 / 1.06x, 300 ms 1.01 / 1.09x; each model timed alone in its own block:
  0.93-1.01x. The 2-thread medians themselves drop 20-30 % from no pause to 100 ms.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping

#: pause before each timed call, long enough for the previous call's worker threads to stop spinning
DEFAULT_SETTLE_MS = 100.0


def interleaved(calls: Mapping[str, Callable[[], object]], runs: int, warmup: int = 3,
                settle_ms: float = DEFAULT_SETTLE_MS, seed: int = 0) -> dict[str, list[float]]:
    """Run every call once per round, ``warmup + runs`` rounds, in a random order per round; milliseconds per call
    (warm-up rounds not kept), in the order of ``calls``."""
    names = list(calls)
    order_rng = random.Random(seed)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + runs):
        order = names[:]
        order_rng.shuffle(order)
        for name in order:
            time.sleep(settle_ms / 1000)
            started = time.perf_counter()
            calls[name]()
            elapsed = (time.perf_counter() - started) * 1000
            if round_index >= warmup:
                times[name].append(elapsed)
    return times
