"""What ``edgekit detect`` writes for video files, cameras and streams: JSON Lines, an annotated video, a live line.

Files are written all or nothing, like every edgekit output (``edgekit.atomic_io``): frames go into a hidden
``.<name>.partial…`` file in the destination folder, renamed over the destination by :meth:`commit`;
:meth:`discard` (a failure) removes it and leaves any earlier file in place.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from edgekit.atomic_io import PartialFile, interruptible
from edgekit.errors import OutputError
from edgekit.runtime.detections import Detections
from edgekit.runtime.detector import Detector, FrameStream
from edgekit.runtime.draw import draw_detections
from edgekit.runtime.sources import Frame, Source, SourceError

__all__ = ["AnnotatedVideoWriter", "JsonLinesWriter", "LiveLine", "detect_video", "frame_detections", "frame_record",
           "output_video_name"]

#: container suffix -> fourcc OpenCV's FFmpeg writer has in every pip wheel
_FOURCC = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "mp4v", ".mov": "mp4v"}


def frame_record(frame: Frame, detections: Detections, class_names: Sequence[str]) -> dict[str, Any]:
    """One JSON Lines object: index, timestamp (s), boxes (xyxy, original pixels), scores, labels, names."""
    labels = detections.labels.tolist()
    return {
        "index": frame.index,
        "timestamp": round(float(frame.timestamp), 6),
        "boxes": [[round(v, 3) for v in box] for box in detections.boxes.tolist()],
        "scores": [round(s, 6) for s in detections.scores.tolist()],
        "labels": labels,
        "names": [class_names[i] if 0 <= i < len(class_names) else str(i) for i in labels],
    }


class _PartialOutput:
    """An output written under a temporary name (:class:`edgekit.atomic_io.PartialFile`) and published at
    :meth:`commit`, so that an interrupted run leaves no half-written file under the real name."""

    path: Path
    _partial: PartialFile

    def _close(self) -> bool:
        """Close the open handle; True when one was open (there is something to publish)."""
        raise NotImplementedError

    def commit(self) -> Path:
        if self._close():
            self._partial.commit()
        else:  # nothing was written (a video that got no frame) or already published: publish nothing
            self._partial.discard()
        return self.path

    def discard(self) -> None:
        self._close()
        self._partial.discard()


class JsonLinesWriter(_PartialOutput):
    """``path`` gets one JSON object per line (:func:`frame_record`), flushed as frames come."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._partial = PartialFile(self.path)  # makes the folders (and removes them if discarded)
        self._file: IO[str] | None = open(self._partial.partial, "w", encoding="utf-8")  # noqa: SIM115 (closed in commit/discard)
        self.lines = 0

    def write(self, record: dict[str, Any]) -> None:
        assert self._file is not None, "write after commit/discard"
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.lines += 1

    def _close(self) -> bool:
        if self._file is None:
            return False
        self._file.close()
        self._file = None
        return True


class AnnotatedVideoWriter(_PartialOutput):
    """The frames with their boxes drawn, as a video of the source's size and frame rate (cv2.VideoWriter).

    The writer opens at the first frame (its size is the frame's); ``fps`` is the source's (None: 25).
    """

    def __init__(self, path: str | Path, fps: float | None, class_names: Sequence[str]) -> None:
        self.path = Path(path)
        fourcc = _FOURCC.get(self.path.suffix.lower())
        if fourcc is None:
            raise OutputError(f"{self.path}: expected a video file name ending in {', '.join(_FOURCC)}")
        self.fourcc = fourcc
        self.fps = float(fps) if fps else 25.0
        self.class_names = list(class_names)
        self._partial = PartialFile(self.path, suffix_last=True)  # OpenCV picks the container from the suffix
        self._writer: Any = None
        self.size: tuple[int, int] | None = None
        self.frames = 0

    def write(self, frame: Frame, detections: Detections) -> None:
        height, width = frame.image.shape[:2]
        if self._writer is None:
            self._writer = cv2.VideoWriter(str(self._partial.partial), cv2.VideoWriter_fourcc(*self.fourcc),  # type: ignore[attr-defined]
                                           self.fps, (width, height))
            if not self._writer.isOpened():
                raise OutputError(f"{self.path}: OpenCV cannot write a {self.fourcc} video of {width}x{height} here"
                                  + (" (its codec needs at least 2x2 pixels)" if min(width, height) < 2 else ""))
            self.size = (width, height)
        elif (width, height) != self.size:
            # a stream that changes resolution: keep the video's size (a writer cannot change it)
            size = self.size
            if size is None:  # the writer did not open at the first frame (that write raised this already)
                raise OutputError(f"{self.path}: OpenCV cannot write a {self.fourcc} video here")
            frame = Frame(cv2.resize(frame.image, size), frame.index, frame.timestamp, frame.origin)
            scale = np.array([size[0] / width, size[1] / height] * 2, dtype=np.float32)
            detections = Detections(detections.boxes * scale, detections.scores, detections.labels)
        drawn = np.asarray(draw_detections(frame.image, detections, self.class_names))
        self._writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def _close(self) -> bool:
        if self._writer is None:  # no frame came (or already closed): no video
            return False
        self._writer.release()
        self._writer = None
        return True


class LiveLine:
    """A status line rewritten in place on a terminal (``\\r``) at most every ``interval`` seconds; silent when
    ``stream`` is not a terminal (logs get the final summary only)."""

    def __init__(self, stream: IO[str] | None = None, interval: float = 0.5) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval
        self._last = 0.0
        self._width = 0

    def update(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def clear(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


def frame_detections(detector: Any, source: Source, mode: str) -> Iterable[tuple[Frame, Detections]]:
    """(frame, detections) for each frame: ``Detector.stream`` (a FrameStream, with its stage timings), or for
    any other detector with ``detect(image)`` (the PyTorch reference) one frame at a time."""
    if isinstance(detector, Detector):
        return detector.stream(source, mode=mode)
    return ((frame, detector.detect(frame.image)) for frame in source)


def output_video_name(source: Source) -> str:
    """The annotated video's file name: the video file's stem, ``camera0`` / ``video2`` for cameras, else ``stream``."""
    if source.kind == "video":
        return f"{Path(source.origin).stem}.mp4"
    if source.kind == "camera":
        return f"{source.origin.replace(' ', '').replace('/dev/', '')}.mp4"
    return "stream.mp4"


def detect_video(detector: Any, source: Source, mode: str, json_path: str | None, save_dir: str | None,
                 echo: Callable[..., None]) -> None:
    """``edgekit detect`` on a video file, camera or stream: JSON Lines at ``json_path``, the annotated video in
    ``save_dir``, a live status line on a terminal and one summary line at the end (``echo`` = click.echo).

    Files: any failure discards the outputs. Live sources: Ctrl-C ends the run normally, and a stall keeps the
    results of the frames before it (then raises); both are how a camera run ends.
    """
    class_names = list(detector.spec.class_names)
    jsonl = JsonLinesWriter(json_path) if json_path else None
    video = (AnnotatedVideoWriter(Path(save_dir) / output_video_name(source), source.fps, class_names)
             if save_dir else None)
    writers: list[JsonLinesWriter | AnnotatedVideoWriter] = [w for w in (jsonl, video) if w is not None]
    line = LiveLine()
    stream = frame_detections(detector, source, mode)
    frames = 0
    started = time.perf_counter()
    ending: BaseException | None = None

    def summary() -> str:
        if isinstance(stream, FrameStream):
            return stream.summary()
        elapsed = time.perf_counter() - started
        return f"{frames} frames  {frames / elapsed if elapsed else 0:.1f} fps  dropped {source.dropped}"

    try:
        # SIGTERM (a service stopped, a container killed) raises Terminated here like Ctrl-C's KeyboardInterrupt, so
        # the outputs are discarded below; at the default handler it killed the process and left .partial files
        with interruptible():
            for frame, detections in stream:
                frames += 1
                if jsonl is not None:
                    jsonl.write(frame_record(frame, detections, class_names))
                if video is not None:
                    video.write(frame, detections)
                line.update(f"{source.origin}: {summary()}")
    except (KeyboardInterrupt, SourceError) as exc:
        if not (source.live and frames):
            for writer in reversed(writers):  # the last made first: each removes the folders it made
                writer.discard()
            raise
        ending = exc  # a live run ends this way: keep what it produced
    except BaseException:
        for writer in reversed(writers):
            writer.discard()
        raise
    finally:
        line.clear()
        source.close()
    replaced = [w.path for w in writers if w.path.exists()]
    for writer in writers:
        writer.commit()
    echo(f"{source.origin}: {summary()}")
    for note in source.notes:
        echo(f"warning: {note}" if source.kind == "video" else f"note: {note}", err=source.kind == "video")
    if jsonl is not None:
        echo(f"wrote {jsonl.lines} frames to {jsonl.path}" + (" (replaced)" if jsonl.path in replaced else ""))
    if video is not None:
        echo(f"saved the annotated video ({video.frames} frames, {video.fps:g} fps) to {video.path}"
             + (" (replaced)" if video.path in replaced else ""))
        if video.size is not None and (video.size[0] % 2 or video.size[1] % 2):
            # the writers' codecs store 4:2:0 colour (one chroma sample per 2x2 pixels) and FFmpeg drops an odd last
            # column / row: measured for mp4v, MJPG, XVID and FFV1 through OpenCV (333x251 -> 332x250)
            width, height = video.size
            echo(f"warning: {video.path}: the frames are {width}x{height}; the video is {width - width % 2}x"
                 f"{height - height % 2} (its codec stores even sides: the last odd column / row is dropped, the "
                 "boxes are unchanged)", err=True)
    if isinstance(ending, SourceError):
        raise ending
    if ending is not None:
        echo("stopped (Ctrl-C)")
