"""Detector.stream: every frame once, in order, with exactly the detections of the single-image path, on every
installed backend, in latency and throughput mode (parallel stages, several inference requests in flight).

The model is the real COCO-trained FastestDet: the authors' own ONNX file (ONNX Runtime, OpenVINO) and their own
ncnn files, so no conversion runs here. The oracle for each frame is ``detector.detect(frame.image)``; the frames
are checked against the ones written into the video (lossless FFV1).
"""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest

from edgekit.runtime.backends import get_runner_class
from edgekit.runtime.detector import Detector
from edgekit.runtime.pipeline import Pipeline, Stage
from edgekit.runtime.sources import SourceError
from tests.video_helpers import identify, mjpeg_server, video_frames, write_video

BACKENDS = ("onnxruntime", "openvino", "ncnn")
COUNT = 10


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return video_frames(COUNT, (192, 144))


@pytest.fixture(scope="module")
def video(frames, tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("stream") / "clip.avi", frames, fps=25.0)


def open_detector(fastestdet_dir, backend: str, mode: str) -> Detector:
    if not get_runner_class(backend).is_available():
        pytest.skip(f"{backend} is not installed")
    from edgekit.models.fastestdet import fastestdet_spec
    from edgekit.spec import load_class_names

    spec = fastestdet_spec(load_class_names(fastestdet_dir / "coco.names"))
    if backend != "ncnn":
        return Detector.from_third_party_onnx(fastestdet_dir / "FastestDet.onnx", spec, backend=backend, mode=mode)
    from edgekit.runtime.backends.ncnn import NcnnRunner, read_param_io

    param = fastestdet_dir / "FastestDet.ncnn.param"
    inputs, outputs = read_param_io(param)
    # one thread per call: ncnn's default threads spin on this shared 2-core machine
    runner = NcnnRunner(param, fastestdet_dir / "FastestDet.ncnn.bin", input_name=spec.input_name,
                        input_blob=inputs[0], input_shape=[1, 3, *spec.input_size],
                        output_blobs={spec.head.output_names[0]: outputs[0]}, threads=1)
    detector = Detector(runner, spec)
    detector.mode = mode
    return detector


def assert_same(expected, actual) -> None:
    np.testing.assert_array_equal(actual.labels, expected.labels)
    np.testing.assert_allclose(actual.boxes, expected.boxes, rtol=0, atol=1e-4)
    np.testing.assert_allclose(actual.scores, expected.scores, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["latency", "throughput"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_stream_of_a_video_equals_the_single_image_path(backend, mode, video, frames, fastestdet_dir):
    with open_detector(fastestdet_dir, backend, mode) as detector:
        stream = detector.stream(str(video))
        results = list(stream)
        assert stream.mode == mode and (stream.workers == 1 if mode == "latency" else stream.workers >= 1)
        assert [frame.index for frame, _ in results] == list(range(COUNT))
        for (frame, detections), written in zip(results, frames):
            np.testing.assert_array_equal(frame.image, written[:, :, ::-1])
            assert_same(detector.detect(frame.image), detections)
    assert sum(len(d) for _, d in results) > 0, "the photos have detections, so a mix-up shows"
    assert len({round(float(d.scores.sum()), 4) for _, d in results}) > COUNT // 2, "frames' detections differ"
    ms = stream.stage_ms()
    assert set(ms) == {"decode", "preprocess", "inference", "postprocess"} and all(v > 0 for v in ms.values())
    assert stream.frames == COUNT and stream.dropped == 0 and "10 frames" in stream.summary()


def test_throughput_mode_has_several_requests_in_flight(video, fastestdet_dir):
    """Throughput mode must really overlap inference calls: count the calls running at the same moment."""
    with open_detector(fastestdet_dir, "onnxruntime", "throughput") as detector:
        running = 0
        peak = 0
        lock = threading.Lock()
        infer = detector.runner.infer

        def counting(feeds):
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
            try:
                time.sleep(0.02)  # long enough for the other worker to start its call meanwhile
                return infer(feeds)
            finally:
                with lock:
                    running -= 1

        detector.runner.infer = counting
        list(detector.stream(str(video), workers=3))
    assert peak == 3


def test_openvino_throughput_mode_compiles_for_throughput(fastestdet_dir):
    with open_detector(fastestdet_dir, "openvino", "throughput") as detector:
        assert detector.runner.compiled_property("PERFORMANCE_HINT") == "THROUGHPUT"
        assert detector.optimal_requests() == int(detector.runner.compiled_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))


@pytest.mark.parametrize("mode", ["latency", "throughput"])
def test_stream_over_http_in_order_and_equal_to_single_image(mode, frames, fastestdet_dir):
    with open_detector(fastestdet_dir, "onnxruntime", mode) as detector, \
            mjpeg_server(frames, interval=0.02) as server:
        stream = detector.stream([server.url], timeout=5)
        results = list(stream)
        served = [identify(frame.image, frames)[0] for frame, _ in results]
        assert served == sorted(served) and [frame.index for frame, _ in results] == served
        for frame, detections in results:
            assert_same(detector.detect(frame.image), detections)
    assert len(results) + stream.dropped == COUNT
    assert stream.notes == [f"{server.url}: the stream ended after {COUNT} frames"]


@pytest.mark.parametrize("mode", ["latency", "throughput"])
def test_stalled_stream_delivers_what_came_then_raises(mode, frames, fastestdet_dir):
    with open_detector(fastestdet_dir, "onnxruntime", mode) as detector, \
            mjpeg_server(frames[:4], interval=0.01, stall=True) as server:
        got = []
        with pytest.raises(SourceError, match="stalled"):
            for item in detector.stream([server.url], timeout=1.0):
                got.append(item)
    assert 1 <= len(got) <= 4


def test_breaking_out_of_a_stream_stops_its_threads(video, fastestdet_dir, monkeypatch):
    """The pipeline's threads are joined before the stream releases its source: the decode thread must not be
    inside FFmpeg's read() when the capture is released (a use-after-free: segfaults seen), nor inference workers
    running when the caller closes the detector right after the loop."""
    from edgekit.runtime.sources import VideoFileSource

    running_at_release: list[list[str]] = []
    release = VideoFileSource.close

    def recording_close(source: VideoFileSource) -> None:
        running_at_release.append([t.name for t in threading.enumerate() if t.name.startswith("edgekit-pipeline")
                                   and t.name != "edgekit-pipeline-source"])
        release(source)

    monkeypatch.setattr(VideoFileSource, "close", recording_close)
    before = threading.active_count()
    with open_detector(fastestdet_dir, "onnxruntime", "throughput") as detector:
        stream = detector.stream(str(video))
        for _, _ in stream:  # the loop's generator is dropped (and closed) at the break
            break
    assert running_at_release == [[]]
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before


def test_bad_mode_is_refused(fastestdet_dir, video):
    with open_detector(fastestdet_dir, "onnxruntime", "latency") as detector, \
            pytest.raises(Exception, match="mode 'fast': expected one of latency, throughput"):
        detector.stream(str(video), mode="fast")


# --- the pipeline itself -----------------------------------------------------------------------


def test_pipeline_returns_input_order_when_workers_finish_out_of_order():
    rng = random.Random(0)
    delays = [rng.uniform(0, 0.01) for _ in range(60)]

    def slow_square(i: int) -> int:
        time.sleep(delays[i])
        return i * i

    stages = [Stage("a", lambda i: i, 2), Stage("b", slow_square, 4), Stage("c", lambda x: x + 1, 3)]
    pipeline = Pipeline(stages, capacity=6)
    assert list(pipeline.run(range(60))) == [i * i + 1 for i in range(60)]
    assert pipeline.clock.items["b"] == 60 and pipeline.clock.items["decode"] == 60


def test_pipeline_keeps_at_most_capacity_items_in_flight():
    in_flight = 0
    peak = 0
    lock = threading.Lock()

    def produce():
        nonlocal in_flight, peak
        for i in range(40):
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)
            yield i

    pipeline = Pipeline([Stage("work", lambda i: (time.sleep(0.002), i)[1], 3)], capacity=4)
    for _ in pipeline.run(produce()):
        with lock:
            in_flight -= 1
    assert peak <= 4


def test_pipeline_stage_error_is_raised_in_the_consumer():
    def fail_on_7(i: int) -> int:
        if i == 7:
            raise ValueError("frame 7 is broken")
        return i

    got = []
    with pytest.raises(ValueError, match="frame 7 is broken"):
        for value in Pipeline([Stage("work", fail_on_7, 2)], capacity=4).run(range(100)):
            got.append(value)
    assert got == list(range(len(got))) and len(got) <= 7


@pytest.mark.parametrize("mode, requested, expected", [("latency", None, 3), ("latency", 0, 0), ("latency", 2, 2),
                                                         ("throughput", None, 1), ("throughput", 0, 0),
                                                         ("throughput", 2, 2)])
def test_throughput_mode_gives_each_request_one_thread_unless_asked(tmp_path, mode, requested, expected):
    """Throughput mode runs one request per core on ONNX Runtime / ncnn: one thread each, not the artifact's
    latency threads (3 here) per request, which oversubscribe the cores; an explicit --threads is kept, and
    --threads 0 means the backend's own default in either mode, as its help says. OpenVINO splits its cores into
    streams itself and keeps its settings."""
    import json

    from tests.helpers import fastestdet_like_artifact

    artifact = fastestdet_like_artifact(tmp_path / "art")
    manifest = json.loads((artifact / "edgekit.json").read_text())
    manifest["runtime"] = {**manifest.get("runtime", {}), "threads": 3}
    (artifact / "edgekit.json").write_text(json.dumps(manifest))
    with Detector.load(artifact, "onnxruntime", mode=mode, threads=requested) as detector:
        assert detector.runner.threads == expected
    assert get_runner_class("openvino").schedules_own_streams
    assert not get_runner_class("onnxruntime").schedules_own_streams and not get_runner_class("ncnn").schedules_own_streams


@pytest.mark.parametrize("mode, requested, expected", [("latency", None, 0), ("latency", 0, 0), ("latency", 2, 2),
                                                         ("throughput", None, 1), ("throughput", 0, 0),
                                                         ("throughput", 2, 2)])
def test_a_third_party_onnx_takes_threads_as_an_artifact_does(tmp_path, mode, requested, expected):
    """``Detector.from_third_party_onnx`` (``detect``/``validate`` of someone else's ONNX) follows the same rule as
    :meth:`Detector.load`; it used to pass ``--threads`` through unchanged, so throughput mode oversubscribed the
    cores with the backend's default threads in every request."""
    from edgekit.runtime.artifact import spec_from_onnx
    from tests.helpers import fastestdet_like_artifact

    model = fastestdet_like_artifact(tmp_path / "art") / "model.onnx"
    with Detector.from_third_party_onnx(model, spec_from_onnx(model), mode=mode, threads=requested) as detector:
        assert detector.runner.threads == expected


@pytest.mark.parametrize("mode", ["latency", "throughput"])
def test_a_source_read_twice_raises_in_the_consumer(mode, video, fastestdet_dir):
    """Throughput mode reads the source in a pipeline thread: its 'read once' error was raised before the
    pipeline's try, so the end marker never came and the consumer waited forever."""
    from edgekit.runtime.sources import open_source

    with open_detector(fastestdet_dir, "onnxruntime", mode) as detector, open_source(video) as source:
        assert len(list(detector.stream(source))) == COUNT
        raised: list[BaseException] = []

        def second_reading() -> None:
            try:
                list(detector.stream(source))
            except BaseException as exc:
                raised.append(exc)

        reader = threading.Thread(target=second_reading, daemon=True)  # a hang fails the test, not the suite
        reader.start()
        reader.join(timeout=30)
        assert not reader.is_alive(), "the second reading hung"
        assert len(raised) == 1 and isinstance(raised[0], SourceError) and "read once" in str(raised[0])
