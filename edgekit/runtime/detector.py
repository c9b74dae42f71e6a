"""Detector: the one interface on every backend.

preprocess (numpy) -> Runner.infer -> decode (numpy) -> NMS (numpy) -> Detections in original
image pixels. Only the Runner differs between backends, so a parity failure points at the
backend, never at duplicated pre/post-processing code.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgekit.errors import OutputError
from edgekit.runtime.artifact import read_manifest, spec_from_onnx, verify_file
from edgekit.runtime.backends import Runner, get_runner_class
from edgekit.runtime.decode import decode, get_decoder
from edgekit.runtime.detections import Detections
from edgekit.runtime.nms import postprocess
from edgekit.runtime.onnx_import import has_edgekit_spec, read_onnx_header, spec_from_third_party_onnx
from edgekit.runtime.preprocess import ImageLike, boxes_to_original, load_image, preprocess
from edgekit.spec import ModelSpec, PostprocessSpec


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
        self.runner.activate()
        self._check_model_io()

    # --- construction --------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, backend: str = "onnxruntime", precision: str | None = None,
             threads: int | None = None, conf_threshold: float | None = None,
             iou_threshold: float | None = None) -> Detector:
        """Open an artifact folder (edgekit.json inside) or a bare ``.onnx`` file: edgekit-exported, or a
        third-party export that describes itself (see ``edgekit.runtime.onnx_import``).

        Every file the chosen model needs is checked against its recorded sha256. ``threads``: the backend's
        inference threads; None = the artifact's (its target profile's ``threads``), 0 = the backend's default.
        """
        path = Path(path)
        runner_class = get_runner_class(backend)  # unknown backend names fail before any file is read
        if path.is_dir():
            manifest = read_manifest(path)
            entry = manifest.find(backend, precision)
            model_file = verify_file(path, manifest, entry.file)
            for extra in entry.options.get("companion_files", []):
                verify_file(path, manifest, extra)
            threads = manifest.threads if threads is None else threads
            runner = runner_class.from_artifact(model_file, entry.options, threads=threads)
            spec = manifest.spec
        else:
            # a bare ONNX file: edgekit's own (spec embedded) or a recognised third-party export
            header = read_onnx_header(path)
            spec = spec_from_onnx(path) if has_edgekit_spec(header) else spec_from_third_party_onnx(path, header=header)
            runner = runner_class.from_artifact(path, {}, threads=threads or 0)
        pp = spec.postprocess
        if conf_threshold is not None:
            pp = replace(pp, conf_threshold=float(conf_threshold))
        if iou_threshold is not None:
            pp = replace(pp, iou_threshold=float(iou_threshold))
        return cls(runner, spec, pp)

    @classmethod
    def from_third_party_onnx(cls, path: str | Path, spec: ModelSpec, backend: str = "onnxruntime",
                              threads: int = 0) -> Detector:
        """Run an ONNX file exported by someone else, described by ``spec`` (e.g. a family's spec).

        The spec's input and output names are replaced by the file's own, in the file's order, so
        the count of outputs must match the head kind's contract.
        """
        runner = get_runner_class(backend).from_artifact(Path(path), {}, threads=threads)
        runner.activate()
        inputs = [i.name for i in runner.input_specs()]
        outputs = runner.output_names()
        if len(inputs) != 1 or len(outputs) != len(spec.head.output_names):
            raise OutputError(f"{Path(path).name}: has inputs {inputs} and outputs {outputs}; a {spec.head.kind!r} head "
                              f"needs one image input and {len(spec.head.output_names)} output(s)")
        spec = replace(spec, input_name=inputs[0], head=replace(spec.head, output_names=tuple(outputs)))
        return cls(runner, spec)

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
