"""Handles that are None at runtime in a misuse the type checker found: an edgekit error, not an AttributeError
or an OpenCV error on None."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekit.errors import EdgekitError, OutputError
from edgekit.runtime.detections import Detections
from edgekit.runtime.outputs import AnnotatedVideoWriter
from edgekit.runtime.sources import Frame


def _frame(width: int, height: int) -> Frame:
    return Frame(np.zeros((height, width, 3), np.uint8), 0, 0.0, "test")


def _no_detections() -> Detections:
    return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


def test_video_writer_that_did_not_open_keeps_raising_output_error(tmp_path: Path) -> None:
    path = tmp_path / "out.avi"
    writer = AnnotatedVideoWriter(path, 10.0, ["thing"])
    writer._partial.partial.unlink()
    writer._partial.partial.mkdir()  # a directory where the video goes: OpenCV cannot open its writer
    with pytest.raises(OutputError, match="OpenCV cannot write a MJPG video"):
        writer.write(_frame(64, 48), _no_detections())
    # a second frame (a caller that caught the error): before, cv2.resize(image, None) failed inside OpenCV
    with pytest.raises(OutputError, match="OpenCV cannot write a MJPG video"):
        writer.write(_frame(32, 24), _no_detections())
    assert not path.exists()


def test_runner_deactivated_under_a_call_raises_an_edgekit_error() -> None:
    from edgekit.runtime.backends.onnxruntime import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner("model.onnx")  # never activated: its session is None, as after deactivate()
    with pytest.raises(EdgekitError, match=r"model\.onnx: the onnxruntime runner was deactivated while in use"):
        runner._live(runner._session)
