"""One Detector shared by many threads gives every thread its own image's detections.

The oracle is the same Detector run serially, image by image. Eight threads each detect a
different image many times at once (started together behind a barrier, so their calls overlap);
every result must equal that image's serial result. Before the runners were made thread-safe,
OpenVINO returned another thread's detections or raised "Infer Request is busy".

Every backend runs here whose library is installed (``Runner.is_available()``, the one source of
truth for skips); the model is the bundled trained zoo fixture, converted once per module.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgekit.runtime.backends import backend_names, get_runner_class
from edgekit.runtime.backends.base import Runner, TensorSpec
from edgekit.runtime.detector import Detector
from edgekit.runtime.preprocess import load_image

ZOO = Path(__file__).resolve().parents[2] / "edgekit" / "zoo"
THREADS = 8
ROUNDS = 12


def _target(backend: str):
    from edgekit.targets import parse_target

    return parse_target(f"test-{backend}", {"description": "thread-safety test", "backend": backend,
                                            "precision": "fp32", "precisions": ["fp32"]}, "test.toml")


@pytest.fixture(scope="module")
def model():
    from edgekit.models.loading import load_checkpoint

    return load_checkpoint(ZOO / "yolov8.pt")  # 160 x 160: a fast conversion


@pytest.fixture(scope="module")
def artifacts(model, tmp_path_factory):
    """backend -> artifact folder holding its fp32 model (converted lazily, once per backend)."""
    from edgekit.convert.chain import convert, export_artifact

    made: dict[str, Path] = {}

    def get(backend: str) -> Path:
        if backend not in made:
            out = tmp_path_factory.mktemp(f"threads-{backend}") / "artifact"
            if backend == "onnxruntime":
                export_artifact(model, out)
            else:
                convert(model, _target(backend), out, precision="fp32", input_size=model.spec.input_size)
            made[backend] = out
        return made[backend]

    return get


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    """Eight different images: the four zoo scenes and their mirror images (HWC uint8 RGB)."""
    scenes = [load_image(path) for path in sorted((ZOO / "images").glob("*.jpg"))]
    assert len(scenes) >= 4, "edgekit/zoo/images holds the bundled scenes"
    return [np.ascontiguousarray(image) for image in scenes[:4] + [s[:, ::-1] for s in scenes[:4]]][:THREADS]


def _same(expected, actual) -> bool:
    return (len(expected) == len(actual) and np.array_equal(expected.labels, actual.labels)
            and np.allclose(expected.boxes, actual.boxes, rtol=0, atol=1e-3)
            and np.allclose(expected.scores, actual.scores, rtol=0, atol=1e-5))


@pytest.mark.parametrize("backend", backend_names())
def test_shared_detector_gives_each_thread_its_own_detections(backend, artifacts, images):
    if not get_runner_class(backend).is_available():
        pytest.skip(f"{backend} is not installed")
    with Detector.load(artifacts(backend), backend=backend, conf_threshold=0.25) as detector:
        serial = [detector.detect(image) for image in images]
        assert all(len(d) for d in serial), "every image has detections, so a mix-up shows"
        assert len({(len(d), round(float(d.scores.sum()), 4)) for d in serial}) == len(serial), \
            "the images' detections differ from each other"
        detector.times.reset()
        barrier = threading.Barrier(THREADS)
        results: list[list] = [[] for _ in range(THREADS)]
        errors: list[BaseException] = []

        def work(index: int) -> None:
            try:
                barrier.wait()
                for _ in range(ROUNDS):
                    results[index].append(detector.detect(images[index]))
            except BaseException as exc:  # reported below with the thread's image
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, f"{backend}: {len(errors)} thread(s) failed, first: {errors[0]!r}"
        wrong = [(index, call) for index in range(THREADS) for call, got in enumerate(results[index])
                 if not _same(serial[index], got)]
        assert not wrong, f"{backend}: {len(wrong)} of {THREADS * ROUNDS} calls returned other detections: {wrong[:5]}"
        # the stage timers are shared too: no update may be lost
        assert detector.times.images == THREADS * ROUNDS
        assert len(detector.times.per_call) == THREADS * ROUNDS


def test_openvino_throughput_runner_lends_one_request_per_concurrent_call(artifacts, images, model):
    """THROUGHPUT compiles several streams, so the pool holds several requests that run at once."""
    from edgekit.runtime.artifact import read_manifest
    from edgekit.runtime.backends.openvino import OpenVinoRunner
    from edgekit.runtime.preprocess import preprocess

    if not OpenVinoRunner.is_available():
        pytest.skip("openvino is not installed")
    folder = artifacts("openvino")
    entry = read_manifest(folder).find("openvino", "fp32")
    spec = model.spec
    tensors = [preprocess([image], spec)[0] for image in images]
    options = {**entry.options, "performance_hint": "THROUGHPUT"}
    with OpenVinoRunner.from_artifact(folder / entry.file, options) as runner:
        serial = [runner.infer({spec.input_name: t}) for t in tensors]
        barrier = threading.Barrier(THREADS)
        wrong: list[tuple[int, int]] = []
        errors: list[BaseException] = []

        def work(index: int) -> None:
            try:
                barrier.wait()
                for call in range(ROUNDS):
                    got = runner.infer({spec.input_name: tensors[index]})
                    if any(not np.array_equal(got[name], serial[index][name]) for name in got):
                        wrong.append((index, call))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors, f"{len(errors)} thread(s) failed, first: {errors[0]!r}"
    assert not wrong, f"{len(wrong)} of {THREADS * ROUNDS} calls returned another input's outputs: {wrong[:5]}"


class GatedRunner(Runner):
    """A Runner whose ``_infer`` blocks until released, recording whether ``_deactivate`` ever ran while a call was
    inside ``_infer`` (built here, not mocked: a real Runner subclass with the base class's lifecycle)."""

    name = "gated"

    def __init__(self, model_path: Path) -> None:
        super().__init__(model_path)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.inside = 0
        self.released_under_a_call = False

    def _activate(self) -> None:
        pass

    def _deactivate(self) -> None:
        self.released_under_a_call |= self.inside > 0

    def input_specs(self) -> list[TensorSpec]:
        return [TensorSpec("x", np.dtype(np.float32), (1,))]

    def output_names(self) -> list[str]:
        return ["y"]

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.inside += 1
        self.entered.set()
        self.release.wait(10)
        self.inside -= 1
        return {"y": feeds["x"] * 2}


def test_deactivate_waits_for_the_calls_in_flight_in_other_threads(tmp_path):
    """ncnn's ``Net.clear()`` and TensorRT's buffer frees release native memory: a deactivate (``Detector.close``)
    while another thread's call runs on it was a use-after-free. Deactivate now waits for every call in flight."""
    runner = GatedRunner(tmp_path / "gated.model")
    outputs: list[dict] = []
    caller = threading.Thread(target=lambda: outputs.append(runner.infer({"x": np.ones(1, np.float32)})))
    caller.start()
    assert runner.entered.wait(10)
    closer = threading.Thread(target=runner.deactivate)
    closer.start()
    closer.join(timeout=0.3)
    assert closer.is_alive(), "deactivate returned while another thread's call was still running"
    runner.release.set()
    caller.join(timeout=10)
    closer.join(timeout=10)
    assert not closer.is_alive() and not runner.is_active
    assert not runner.released_under_a_call
    np.testing.assert_array_equal(outputs[0]["y"], [2.0])
    runner.release.set()
    assert runner.infer({"x": np.ones(1, np.float32)})["y"][0] == 2.0  # a later call activates again


@pytest.mark.parametrize("backend", backend_names())
def test_closing_a_shared_detector_while_threads_run_it_waits_for_them(backend, artifacts, images):
    """The real backends: threads keep detecting while the Detector is closed again and again under them; every
    call still returns its own image's detections (the runner activates again on the next call)."""
    if not get_runner_class(backend).is_available():
        pytest.skip(f"{backend} is not installed")
    with Detector.load(artifacts(backend), backend=backend, conf_threshold=0.25) as detector:
        serial = [detector.detect(image) for image in images[:2]]
        stop = threading.Event()
        wrong: list[int] = []
        errors: list[BaseException] = []

        def work(index: int) -> None:
            try:
                while not stop.is_set():
                    if not _same(serial[index], detector.detect(images[index])):
                        wrong.append(index)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for _ in range(6):
            detector.close()
            time.sleep(0.02)
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors, f"{backend}: first error {errors[0]!r}"
    assert not wrong
