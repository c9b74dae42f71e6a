"""An ordered, bounded, multi-stage thread pipeline: decode → preprocess → inference → postprocess.

Each stage runs in its own worker thread(s) and hands items to the next through a bounded queue; a
semaphore caps the items in flight (``capacity``), so a fast decoder cannot run ahead of a slow
backend and fill memory. Workers of one stage may finish out of order; the consumer puts results
back in input order before yielding them, so the output is exactly the input sequence, processed.

Threads suffice for parallelism here because every heavy step releases the GIL: OpenCV decoding and
resizing, numpy, and each backend's inference call (ONNX Runtime ``run``, OpenVINO ``infer``, ncnn
``extract``). The inference stage's worker count is the number of requests in flight on the backend.

Errors: an exception in a stage stops the pipeline and is raised in the consumer; an exception from the
input iterator (a stalled stream) is raised after the items before it have been delivered.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Pipeline", "Stage", "StageClock"]

_DONE = object()
_POLL = 0.05  # seconds between checks of the stop flag while blocked on a queue


@dataclass(frozen=True)
class Stage:
    """A pipeline stage: ``function(item) -> item`` run by ``workers`` threads."""

    name: str
    function: Callable[[Any], Any]
    workers: int = 1


@dataclass
class StageClock:
    """Busy seconds per stage (summed over its workers) and items finished; thread-safe."""

    seconds: dict[str, float] = field(default_factory=dict)
    items: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds
            self.items[name] = self.items.get(name, 0) + 1

    def mean_ms(self) -> dict[str, float]:
        """Mean busy milliseconds per item of each stage (the work one frame costs there)."""
        with self._lock:
            return {name: 1000.0 * s / max(1, self.items.get(name, 0)) for name, s in self.seconds.items()}


class Pipeline:
    """Runs ``items`` through ``stages`` in parallel; :meth:`run` yields the results in input order.

    The input iterator itself is the first stage (``source_name`` in the clock): it is advanced in its
    own thread, so decoding overlaps with everything after it.
    """

    def __init__(self, stages: Sequence[Stage], capacity: int, clock: StageClock | None = None,
                 source_name: str = "decode") -> None:
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        if any(stage.workers < 1 for stage in stages):
            raise ValueError("every stage needs at least one worker")
        self.stages = list(stages)
        self.capacity = max(1, int(capacity))
        self.clock = clock if clock is not None else StageClock()
        self.source_name = source_name

    def run(self, items: Iterable[Any]) -> Generator[Any, None, None]:
        stop = threading.Event()
        stage_error: list[BaseException] = []
        source_error: list[BaseException] = []
        # queues[i] feeds stage i; queues[-1] holds finished items for the consumer
        queues: list[queue.Queue] = [queue.Queue(maxsize=self.capacity) for _ in range(len(self.stages) + 1)]
        slots = threading.Semaphore(self.capacity)
        remaining = [stage.workers for stage in self.stages]
        remaining_lock = threading.Lock()

        def put(q: queue.Queue, item: Any) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=_POLL)
                    return True
                except queue.Full:
                    continue
            return False

        def get(q: queue.Queue) -> Any:
            while not stop.is_set():
                try:
                    return q.get(timeout=_POLL)
                except queue.Empty:
                    continue
            return _DONE

        def feed() -> None:
            seq = 0
            try:
                iterator = iter(items)  # inside the try: a source that refuses a second reading raises here
                while not stop.is_set():
                    while not slots.acquire(timeout=_POLL):
                        if stop.is_set():
                            return
                    t0 = time.perf_counter()
                    try:
                        item = next(iterator)
                    except StopIteration:
                        slots.release()
                        break
                    self.clock.add(self.source_name, time.perf_counter() - t0)
                    if not put(queues[0], (seq, item)):
                        return
                    seq += 1
            except BaseException as exc:  # delivered after the items before it (e.g. a stalled stream)
                source_error.append(exc)
            finally:
                put(queues[0], _DONE)

        def work(index: int) -> None:
            stage = self.stages[index]
            inbox, outbox = queues[index], queues[index + 1]
            while True:
                got = get(inbox)
                if got is _DONE:
                    if stop.is_set():
                        return
                    with remaining_lock:
                        remaining[index] -= 1
                        last = remaining[index] == 0
                    # the last worker of a stage passes the end on; the others hand it to a sibling
                    put(outbox if last else inbox, _DONE)
                    return
                seq, item = got
                t0 = time.perf_counter()
                try:
                    result = stage.function(item)
                except BaseException as exc:
                    stage_error.append(exc)
                    stop.set()
                    return
                self.clock.add(stage.name, time.perf_counter() - t0)
                if not put(outbox, (seq, result)):
                    return

        threads = [threading.Thread(target=feed, name="edgekit-pipeline-source", daemon=True)]
        for index, stage in enumerate(self.stages):
            threads.extend(threading.Thread(target=work, args=(index,), name=f"edgekit-pipeline-{stage.name}-{w}",
                                            daemon=True) for w in range(stage.workers))
        for thread in threads:
            thread.start()
        pending: dict[int, Any] = {}
        next_seq = 0
        try:
            while True:
                got = get(queues[-1])
                if got is _DONE:
                    break
                seq, result = got
                pending[seq] = result
                while next_seq in pending:
                    out = pending.pop(next_seq)
                    next_seq += 1
                    slots.release()
                    yield out
            if stage_error:
                raise stage_error[0]
            if source_error:
                raise source_error[0]
        finally:
            stop.set()
            for thread in threads[1:]:
                thread.join()
            # the source thread may be blocked waiting for a live frame (up to the source's timeout); it is a
            # daemon and stops at its next frame, so the consumer does not wait for it beyond a moment
            threads[0].join(timeout=1.0)
