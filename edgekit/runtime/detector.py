"""Detector: the one interface on every backend.

preprocess (numpy) -> Runner.infer -> decode (numpy) -> NMS (numpy) -> Detections in original
image pixels. Only the Runner differs between backends, so a parity failure points at the
backend, never at duplicated pre/post-processing code.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgekit.errors import InputError, OutputError
from edgekit.runtime.artifact import check_manifest_spec, read_manifest, spec_from_onnx, verify_file
from edgekit.runtime.backends import Runner, get_runner_class
from edgekit.runtime.decode import decode, get_decoder
from edgekit.runtime.detections import Detections
from edgekit.runtime.graph_nms import graph_nms_spec, host_postprocess
from edgekit.runtime.nms import postprocess
from edgekit.runtime.onnx_import import has_edgekit_spec, read_onnx_header, spec_from_third_party_onnx
from edgekit.runtime.pipeline import Pipeline, Stage, StageClock
from edgekit.runtime.preprocess import ImageLike, boxes_to_original, load_image, preprocess
from edgekit.runtime.sources import DEFAULT_TIMEOUT, Frame, Source, open_source
from edgekit.spec import ModelSpec, PostprocessSpec

#: ``mode`` values of Detector.load / Detector.stream / ``edgekit detect --mode``
MODES = ("latency", "throughput")


@dataclass
class StageTimes:
    """Accumulated wall time per stage in seconds, and how many images went through."""

    preprocess: float = 0.0
    inference: float = 0.0
    postprocess: float = 0.0
    images: int = 0
    per_call: list[tuple[float, float, float]] = field(default_factory=list)

    def reset(self) -> None:
        self.preprocess = self.inference = self.postprocess = 0.0
        self.images = 0
        self.per_call.clear()


class Detector:
    """Runs a detector on images with any Runner.

    Images: file paths, PIL images, or HWC uint8 arrays (``color_order`` says whether arrays
    are RGB or BGR); grayscale and RGBA are converted. ``detect`` returns one Detections,
    ``detect_batch`` a list; boxes are xyxy float32 in original-image pixels.

    Threads: a Detector may be shared by many threads. Each call keeps its images, tensors and
    transforms in local variables; the Runner is thread-safe (see :class:`Runner`); only the
    stage timers are shared, and they are updated under a lock.
    """

    def __init__(self, runner: Runner, spec: ModelSpec, postprocess_spec: PostprocessSpec | None = None) -> None:
        get_decoder(spec.head.kind)  # unknown head kinds fail here, before any image is read
        self.runner = runner
        self.spec = spec
        self.postprocess_spec = postprocess_spec or spec.postprocess
        self.times = StageTimes()
        self._times_lock = threading.Lock()
        #: what stream() does by default: "latency" or "throughput" (set by load())
        self.mode = "latency"
        self.runner.activate()
        self._check_model_io()

    # --- construction --------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, backend: str = "onnxruntime", precision: str | None = None,
             threads: int | None = None, conf_threshold: float | None = None, iou_threshold: float | None = None,
             mode: str = "latency") -> Detector:
        """Open an artifact folder (edgekit.json inside) or a bare ``.onnx`` file: edgekit-exported, or a
        third-party export that describes itself (see ``edgekit.runtime.onnx_import``).

        Every file the chosen model needs is checked against its recorded sha256. ``threads``: the backend's
        inference threads per request; None = the artifact's (its target profile's ``threads``; in throughput mode one
        per request where the backend does not split its cores itself), 0 = the backend's default.
        ``mode`` is what :meth:`stream` defaults to and how the backend is compiled: "latency" (one request at a
        time) or "throughput" (several requests in flight; OpenVINO compiles with its THROUGHPUT hint).
        """
        path = Path(path)
        _check_mode(mode)
        runner_class = get_runner_class(backend)  # unknown backend names fail before any file is read
        if path.is_dir():
            manifest = read_manifest(path)
            entry = manifest.find(backend, precision)
            check_manifest_spec(path, manifest)
            model_file = verify_file(path, manifest, entry.file)
            for extra in entry.options.get("companion_files", []):
                verify_file(path, manifest, extra)
            runner = runner_class.from_artifact(model_file, _mode_options(entry.options, mode),
                                                threads=_request_threads(runner_class, mode, threads, manifest.threads))
            spec = manifest.spec
            graph_nms = entry.graph_nms
            if graph_nms is not None:  # the model ends in NMS: its outputs are the kept rows
                spec = graph_nms_spec(spec, graph_nms)
        else:
            graph_nms = None
            # a bare ONNX file: edgekit's own (spec embedded) or a recognised third-party export
            header = read_onnx_header(path)
            spec = spec_from_onnx(path) if has_edgekit_spec(header) else spec_from_third_party_onnx(path, header=header)
            runner = runner_class.from_artifact(path, _mode_options({}, mode),
                                                threads=_request_threads(runner_class, mode, threads, 0))
        pp = spec.postprocess.with_thresholds(conf_threshold, iou_threshold)
        if graph_nms is not None:
            pp = host_postprocess(graph_nms, pp, f"{path} ({backend} model)")
        detector = cls(runner, spec, pp)
        detector.mode = mode
        return detector

    @classmethod
    def from_third_party_onnx(cls, path: str | Path, spec: ModelSpec, backend: str = "onnxruntime",
                              threads: int | None = None, mode: str = "latency") -> Detector:
        """Run an ONNX file exported by someone else, described by ``spec`` (e.g. a family's spec).

        The spec's input and output names are replaced by the file's own, in the file's order, so
        the count of outputs must match the head kind's contract. ``mode``: as in :meth:`load`.
        """
        _check_mode(mode)
        runner_class = get_runner_class(backend)
        runner = runner_class.from_artifact(Path(path), _mode_options({}, mode),
                                            threads=_request_threads(runner_class, mode, threads, 0))
        runner.activate()
        inputs = [i.name for i in runner.input_specs()]
        outputs = runner.output_names()
        if len(inputs) != 1 or len(outputs) != len(spec.head.output_names):
            raise OutputError(f"{Path(path).name}: has inputs {inputs} and outputs {outputs}; a {spec.head.kind!r} head "
                              f"needs one image input and {len(spec.head.output_names)} output(s)")
        spec = replace(spec, input_name=inputs[0], head=replace(spec.head, output_names=tuple(outputs)))
        detector = cls(runner, spec)
        detector.mode = mode
        return detector

    def _check_model_io(self) -> None:
        inputs = self.runner.input_specs()
        if len(inputs) != 1:
            raise OutputError(f"{self.runner.model_path.name}: expected one image input, the model has "
                              f"{[i.name for i in inputs]}")
        self._input = inputs[0]
        outputs = self.runner.output_names()
        missing = [n for n in self.spec.head.output_names if n not in outputs]
        if missing:
            raise OutputError(f"{self.runner.model_path.name}: spec expects outputs {list(self.spec.head.output_names)}, "
                              f"the model has {outputs}")
        batch = self._input.shape[0] if self._input.shape else None
        self._max_batch = batch if isinstance(batch, int) else None

    def close(self) -> None:
        self.runner.deactivate()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- running -------------------------------------------------------------------------

    def detect(self, image: ImageLike, color_order: str = "RGB") -> Detections:
        return self.detect_batch([image], color_order=color_order)[0]

    __call__ = detect

    def detect_batch(self, images: Sequence[ImageLike], color_order: str = "RGB") -> list[Detections]:
        """Detections for each image, in order. Batches up to the model's batch size."""
        arrays = [load_image(image, color_order=color_order) for image in images]
        step = self._max_batch or max(1, len(arrays))
        results: list[Detections] = []
        for start in range(0, len(arrays), step):
            results.extend(self._detect_arrays(arrays[start:start + step]))
        return results

    def raw_outputs(self, images: Sequence[ImageLike], color_order: str = "RGB") -> list[np.ndarray]:
        """The network's raw head outputs (spec order) for a batch of images: for tensor-level comparisons."""
        arrays = [load_image(image, color_order=color_order) for image in images]
        tensor, _ = preprocess(arrays, self.spec)
        return self.infer_tensor(tensor)

    def infer_tensor(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Run the runner on an already preprocessed float32 [B,3,H,W] tensor; outputs in spec order."""
        tensor = tensor.astype(self._input.dtype, copy=False)
        outputs = self.runner.infer({self._input.name: tensor})
        return [outputs[name] for name in self.spec.head.output_names]

    def _detect_arrays(self, arrays: list[np.ndarray]) -> list[Detections]:
        t0 = time.perf_counter()
        tensor, transforms = preprocess(arrays, self.spec)
        t1 = time.perf_counter()
        outputs = self.infer_tensor(tensor)
        t2 = time.perf_counter()
        detections = self.postprocess(outputs, transforms)
        t3 = time.perf_counter()
        with self._times_lock:  # `+=` on shared floats loses updates when threads interleave
            self.times.preprocess += t1 - t0
            self.times.inference += t2 - t1
            self.times.postprocess += t3 - t2
            self.times.images += len(arrays)
            self.times.per_call.append((t1 - t0, t2 - t1, t3 - t2))
        return detections

    # --- video, cameras, streams ------------------------------------------------------------

    def stream(self, source: Source | str | os.PathLike | Sequence[str | os.PathLike], mode: str | None = None,
               workers: int = 0, capacity: int = 0, timeout: float = DEFAULT_TIMEOUT) -> FrameStream:
        """``(frame, Detections)`` for every frame of ``source``, in frame order: iterate the returned stream.

        source: a :class:`~edgekit.runtime.sources.Source`, or what ``open_source`` takes (image paths,
        folders, globs, a video file, a camera index such as "0", an rtsp:// or http:// URL); a source opened
        here is closed when the iteration ends. Frames are RGB uint8; detections are exactly what
        ``detect(frame.image)`` returns (same preprocessing, runner call, decoding and NMS).

        mode (default: the one given to :meth:`load`): "latency" runs each frame through every stage in
        the calling thread, one request at a time; "throughput" runs decode, preprocess, inference and
        postprocess in parallel threads with bounded queues and ``workers`` inference requests in flight
        (0: :meth:`optimal_requests`), at most ``capacity`` frames in flight (0: 2 x workers + 2).
        timeout: seconds a camera or stream may go without a frame before SourceError (stalled).
        """
        mode = mode or self.mode
        _check_mode(mode)
        if workers < 0 or capacity < 0:
            raise InputError(f"workers {workers}, capacity {capacity}: expected 0 (automatic) or a positive count")
        return FrameStream(self, source, mode, workers or self.optimal_requests(), capacity, timeout)

    def optimal_requests(self) -> int:
        """How many inference requests keep this backend busy: OpenVINO's own answer for the compiled model
        (``OPTIMAL_NUMBER_OF_INFER_REQUESTS``: 1 under its LATENCY hint, one per stream under THROUGHPUT),
        otherwise one per CPU core (ONNX Runtime sessions and ncnn nets run concurrent calls in parallel)."""
        ask = getattr(self.runner, "compiled_property", None)  # runners with a compiled model say what they want
        if callable(ask):
            try:
                return max(1, int(ask("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
            except Exception:  # a runner without this property falls back to the core count
                pass
        return max(1, os.cpu_count() or 1)

    def _preprocess_frame(self, frame: Frame) -> tuple[Frame, np.ndarray, list]:
        tensor, transforms = preprocess([frame.image], self.spec)
        return frame, tensor, transforms

    def _infer_frame(self, item: tuple[Frame, np.ndarray, list]) -> tuple[Frame, list[np.ndarray], list]:
        frame, tensor, transforms = item
        return frame, self.infer_tensor(tensor), transforms

    def _postprocess_frame(self, item: tuple[Frame, list[np.ndarray], list]) -> tuple[Frame, Detections]:
        frame, outputs, transforms = item
        return frame, self.postprocess(outputs, transforms)[0]

    def postprocess(self, outputs: Sequence[np.ndarray], transforms: Sequence) -> list[Detections]:
        """Decode raw outputs, run NMS, map boxes back to each original image."""
        pp = self.postprocess_spec
        # decoders may skip the box math of candidates the score filter drops anyway
        candidates = decode(outputs, self.spec, score_threshold=pp.conf_threshold)
        kept = postprocess(candidates.boxes, candidates.scores, candidates.labels,
                           conf_threshold=pp.conf_threshold, iou_threshold=pp.iou_threshold,
                           class_agnostic=pp.class_agnostic, pre_nms_topk=pp.pre_nms_topk,
                           max_detections=pp.max_detections, apply_nms=pp.nms)
        return [Detections(boxes_to_original(boxes, transform), scores, labels)
                for (boxes, scores, labels), transform in zip(kept, transforms)]


class FrameStream:
    """The frames of a source with their detections: ``for frame, detections in stream: …`` (see Detector.stream).

    While and after iterating: ``frames`` processed, ``fps`` (frames per second of wall time since the
    first frame was asked for), ``stage_ms()`` (mean busy ms per frame of decode, preprocess, inference,
    postprocess), ``dropped`` (stale frames a live source skipped), ``notes`` (how the source ended).
    """

    STAGES = ("decode", "preprocess", "inference", "postprocess")

    def __init__(self, detector: Detector, source: Source | str | os.PathLike | Sequence[str | os.PathLike],
                 mode: str, workers: int, capacity: int, timeout: float) -> None:
        self.detector = detector
        self.mode = mode
        self.workers = 1 if mode == "latency" else workers
        self.capacity = capacity or 2 * self.workers + 2
        self._owns_source = not isinstance(source, Source)
        self.source = open_source(source, timeout=timeout) if not isinstance(source, Source) else source
        self.clock = StageClock()
        self.frames = 0
        self._started: float | None = None

    @property
    def dropped(self) -> int:
        return self.source.dropped

    @property
    def notes(self) -> list[str]:
        return self.source.notes

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._started if self._started is not None else 0.0

    @property
    def fps(self) -> float:
        elapsed = self.elapsed
        return self.frames / elapsed if elapsed > 0 else 0.0

    def stage_ms(self) -> dict[str, float]:
        means = self.clock.mean_ms()
        return {name: means.get(name, 0.0) for name in self.STAGES}

    def summary(self) -> str:
        """One line: frames, fps, per-stage ms, dropped frames."""
        stages = "  ".join(f"{name} {ms:.1f}" for name, ms in self.stage_ms().items())
        return (f"{self.frames} frames  {self.fps:.1f} fps  ms/frame: {stages}  dropped {self.dropped}"
                f"  [{self.mode}, {self.workers} request{'s' if self.workers != 1 else ''}]")

    def __iter__(self) -> Iterator[tuple[Frame, Detections]]:
        self._started = time.perf_counter()
        results: Generator[tuple[Frame, Detections], None, None] | None = None
        try:
            if self.mode == "latency":
                results = self._sequential()
            else:
                d = self.detector
                stages = [Stage("preprocess", d._preprocess_frame), Stage("inference", d._infer_frame, self.workers),
                          Stage("postprocess", d._postprocess_frame)]
                results = Pipeline(stages, self.capacity, self.clock).run(self.source)
            for frame, detections in results:
                self.frames += 1
                yield frame, detections
        finally:
            # The pipeline's threads stop first (closing its generator joins them): a consumer that breaks out
            # would otherwise release the source while the decode thread is still reading it, and leave
            # inference workers running into a detector its caller closes next.
            if results is not None:
                results.close()
            self.close()

    def _sequential(self) -> Generator[tuple[Frame, Detections], None, None]:
        """Latency mode: every stage of a frame in this thread, one request at a time."""
        d = self.detector
        frames = iter(self.source)
        clock = self.clock
        while True:
            t0 = time.perf_counter()
            try:
                frame = next(frames)
            except StopIteration:
                return
            t1 = time.perf_counter()
            item = d._preprocess_frame(frame)
            t2 = time.perf_counter()
            inferred = d._infer_frame(item)
            t3 = time.perf_counter()
            result = d._postprocess_frame(inferred)
            t4 = time.perf_counter()
            for name, seconds in zip(self.STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                clock.add(name, seconds)
            yield result

    def close(self) -> None:
        """Release the source if this stream opened it (idempotent)."""
        if self._owns_source:
            self.source.close()

    def __enter__(self) -> FrameStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise InputError(f"mode {mode!r}: expected one of {', '.join(MODES)}")


def _request_threads(runner_class: type[Runner], mode: str, requested: int | None, default: int) -> int:
    """Inference threads per request: ``requested`` when given (0 = the backend's own default, as ``--threads``
    says), else ``default`` (the artifact's profile) in latency mode. Not given, in throughput mode, a backend that
    does not split its cores between requests itself runs one request per core (:meth:`Detector.optimal_requests`),
    so each gets one thread: several each oversubscribe the cores (yolov8n 320 px on ONNX Runtime, 2 cores, 2
    requests: 52-55 frames/s with the default threads per session, 70 with one; benchmarks/RESULTS.md "Video")."""
    if requested is not None:
        return requested
    if mode == "throughput" and not runner_class.schedules_own_streams:
        return 1
    return default


def _mode_options(options: dict, mode: str) -> dict:
    """A manifest entry's runner options for ``mode``: throughput asks the backend for its throughput setting
    (OpenVINO's ``performance_hint``; runners without such a setting ignore the key)."""
    return {**options, "performance_hint": "THROUGHPUT"} if mode == "throughput" else dict(options)
