"""Where frames come from: image files, folders and globs, video files, cameras, RTSP/HTTP streams.

One abstraction, :class:`Source`: iterating it yields :class:`Frame` objects (an HxWx3 uint8 **RGB**
image, its index, timestamp and origin). numpy + OpenCV + Pillow only: this runs on the device.

Two kinds of sources behave differently on purpose:

- **files** (images, video files) yield every frame exactly once, in order, at whatever pace the
  consumer reads them. A video file that ends before the frame count its header announces (a
  truncated file) ends there with a note in :attr:`Source.notes`.
- **live** sources (cameras, streams) are read by a background thread that keeps only the newest
  frame: a consumer slower than the camera skips the stale frames in between, and
  :attr:`Source.dropped` counts them (a frame's ``index`` is its position in the stream, so the
  skipped ones show as gaps). No frame for ``timeout`` seconds raises :class:`SourceError`
  ("stalled"); a stream whose server closes it ends normally, with a note.

``open_source(["video.mp4"])``, ``open_source(["0"])`` (camera 0), ``open_source(["/dev/video2"])``,
``open_source(["rtsp://host/stream"])``, ``open_source(["images/", "extra.jpg", "shots/*.png"])``.
"""

from __future__ import annotations

import glob
import math
import os
import re
import stat
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from edgekit.errors import InputError
from edgekit.runtime.preprocess import IMAGE_SUFFIXES, load_image

__all__ = [
    "VIDEO_SUFFIXES",
    "Frame",
    "ImageSource",
    "LiveSource",
    "Source",
    "SourceError",
    "VideoFileSource",
    "list_image_files",
    "open_source",
]

#: Video file suffixes (compared lower-case) that ``open_source`` opens with OpenCV's FFmpeg reader.
VIDEO_SUFFIXES: frozenset[str] = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg",
                                            ".wmv", ".flv", ".ts", ".mts", ".m2ts", ".3gp", ".mjpeg", ".mjpg"})
#: URL schemes read as network streams
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
#: seconds a live source may go without a new frame before it counts as stalled
DEFAULT_TIMEOUT = 10.0
#: a day: FFmpeg takes the timeouts in int32 milliseconds, and a stall longer than this is no stall detection at all
MAX_TIMEOUT = 86400.0
#: failed reads in a row a video file may have inside its announced frame count before it counts as cut short
MAX_UNDECODABLE_RUN = 8


class SourceError(InputError):
    """A source cannot be opened, or a live source stalled."""


@dataclass(frozen=True)
class Frame:
    """One frame of a source.

    image: HxWx3 uint8 RGB (C-contiguous). index: position in the source, from 0 (images: the file's
    position in the list; video: the frame number; live: the frame's position in the stream, so frames a
    slow consumer skipped leave gaps). timestamp: seconds — a video file's presentation time of the
    frame, a live frame's arrival time since the source was opened, 0.0 for still images.
    origin: the image file, the video file, the camera or the stream URL.
    """

    image: np.ndarray
    index: int
    timestamp: float
    origin: str


class Source(ABC):
    """Frames from somewhere; iterate once (``for frame in source``), then ``close()`` (or use ``with``).

    kind: "images", "video", "camera" or "stream". live: True for cameras and streams (stale frames
    are dropped and counted in ``dropped``). fps / frame_size: what the source announces (None when it
    says nothing: images, some streams). notes: one-line remarks on how the source ended (truncated
    video, stream closed by the server) for the caller to show.
    """

    kind: str = ""
    live: ClassVar[bool] = False

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.fps: float | None = None
        self.frame_size: tuple[int, int] | None = None  # (width, height)
        self.dropped = 0
        self.notes: list[str] = []
        self._iterated = False

    def __iter__(self) -> Iterator[Frame]:
        if self._iterated:
            raise SourceError(f"{self.origin}: a source is read once; open it again to read it again")
        self._iterated = True
        return self._frames()

    @abstractmethod
    def _frames(self) -> Iterator[Frame]: ...

    def close(self) -> None:  # noqa: B027 (still images hold nothing open)
        """Release the file, camera or connection (idempotent)."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- still images --------------------------------------------------------------------------------


def list_image_files(sources: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files from paths, folders (their images, sorted) and globs (``shots/*.png``, sorted matches).

    Single files and folder scans accept the same suffixes (``IMAGE_SUFFIXES``). Raises InputError naming
    the bad path: a missing path, a folder or glob with no images, a file that is not an image file name.
    """
    files: list[Path] = []
    for source in sources:
        path = Path(source)
        if not path.exists() and glob.has_magic(str(source)):
            matches = sorted(Path(p) for p in glob.glob(str(source), recursive=True))
            _refuse_videos(source, matches, "the pattern matches")
            found = [p for p in matches if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            if not found:
                raise InputError(f"{source}: the pattern matches no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            files.extend(found)
        elif path.is_dir():
            entries = sorted(path.iterdir())
            _refuse_videos(source, entries, "the folder holds")
            found = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
            if not found:
                raise InputError(f"{path}: folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            files.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputError(f"{path}: not an image file name; expected one of {', '.join(sorted(IMAGE_SUFFIXES))}")
            files.append(path)
        else:
            raise InputError(f"{path}: no such image file or folder")
    return files


def _refuse_videos(source: str | os.PathLike, paths: Sequence[Path], where: str) -> None:
    """Folders and globs are read as images: a video among them was skipped without a word (its frames unseen)."""
    videos = [p for p in paths if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()]
    if videos:
        more = f" and {len(videos) - 1} more" if len(videos) > 1 else ""
        raise InputError(f"{source}: {where} a video ({videos[0].name}{more}); folders and patterns are read as "
                         f"images, a video one at a time (edgekit detect MODEL {videos[0]})")


class ImageSource(Source):
    """Image files, one frame each, in the given order (decoded with ``load_image``: EXIF-upright RGB)."""

    kind = "images"

    def __init__(self, files: Sequence[Path]) -> None:
        super().__init__(str(files[0]) if len(files) == 1 else f"{len(files)} images")
        self.files = list(files)

    def _frames(self) -> Iterator[Frame]:
        for index, path in enumerate(self.files):
            yield Frame(load_image(path), index, 0.0, str(path))


# --- video files -----------------------------------------------------------------------------------


class VideoFileSource(Source):
    """Every frame of a video file, once, in order (OpenCV ``VideoCapture``, FFmpeg).

    Opening fails with one SourceError line (FFmpeg's reason included: "moov atom not found" for an MP4
    cut short). A file that ends before the frame count in its header yields the frames it has and
    leaves a note ("ended after 11 of 20 frames …").
    """

    kind = "video"

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(str(path))
        self.path = Path(path)
        if self.path.exists() and not self.path.is_file():
            raise SourceError(f"{self.path}: not a regular file (a folder, a pipe or a device); expected a video file")
        if not self.path.is_file():
            raise SourceError(f"{self.path}: no such video file")
        self._capture = _open_capture(str(self.path), cv2.CAP_FFMPEG, [],
                                      f"{self.path}: cannot open this video file",
                                      "expected a video OpenCV's FFmpeg can decode; the file may be truncated or "
                                      "not a video")
        self.fps = _positive(self._capture.get(cv2.CAP_PROP_FPS))
        self.frame_size = _frame_size(self._capture)
        count = self._capture.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count: int | None = int(count) if 0 < count < 1e9 else None
        # A pipeline reads frames in its own thread and may still be inside read() when the consumer stops
        # and closes the source; releasing FFmpeg's decoder under a running read is a use-after-free (a crash,
        # not an exception). Reads and the release take turns on this lock.
        self._capture_lock = threading.Lock()

    def _frames(self) -> Iterator[Frame]:
        index = 0  # the frame's number in the file: an undecodable frame keeps its number, skipped
        delivered = 0
        skipped: list[int] = []
        failures = 0  # consecutive failed reads
        while True:
            with self._capture_lock:
                if not self._capture.isOpened():
                    return  # released by the consumer: no frame, no note
                ok, bgr = self._capture.read()
                # the presentation time of the frame just read (variable frame rates included)
                msec = self._capture.get(cv2.CAP_PROP_POS_MSEC) if ok and bgr is not None else -1.0
            if not ok or bgr is None:
                # A frame FFmpeg cannot decode (a damaged packet) fails one read and the next reads go on: within
                # the header's frame count, read on, up to MAX_UNDECODABLE_RUN failures in a row (a file cut short
                # fails every read; there the run ends).
                failures += 1
                if self.frame_count is None or index + failures >= self.frame_count or \
                        failures > MAX_UNDECODABLE_RUN:
                    break
                continue
            if failures:
                skipped.extend(range(index, index + failures))
                index, failures = index + failures, 0
            timestamp = msec / 1000.0 if msec >= 0 else (index / self.fps if self.fps else 0.0)
            yield Frame(_to_rgb(bgr), index, timestamp, str(self.path))
            index += 1
            delivered += 1
        if delivered == 0:
            raise SourceError(f"{self.path}: no frame could be decoded; expected a video file (truncated or corrupt?)")
        if skipped:
            shown = ", ".join(map(str, skipped[:5])) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
            several = len(skipped) > 1
            self.notes.append(f"{self.path}: frame{'s' if several else ''} {shown} could not be decoded (damaged data) "
                              f"and {'were' if several else 'was'} skipped; the frames after "
                              f"{'them' if several else 'it'} keep their numbers")
        if self.frame_count is not None and index < self.frame_count:
            self.notes.append(f"{self.path}: ended after {index} of the {self.frame_count} frames its header "
                              "announces (truncated file?)")

    def close(self) -> None:
        with self._capture_lock:
            self._capture.release()


# --- cameras and streams ---------------------------------------------------------------------------


class LiveSource(Source):
    """A camera or a network stream, read by a background thread that keeps only the newest frame.

    camera: an index (0 = /dev/video0) or a device path; url: rtsp://, http(s):// … (OpenCV's FFmpeg).
    timeout: seconds without a new frame after which iteration raises SourceError (stalled); also the
    connection timeout of streams. ``dropped`` counts frames replaced by a newer one before the consumer
    took them.
    """

    live = True

    def __init__(self, target: int | str, timeout: float = DEFAULT_TIMEOUT) -> None:
        check_timeout(timeout)
        self.timeout = float(timeout)
        if isinstance(target, int) or str(target).startswith("/dev/"):
            self.kind = "camera"
            device = f"/dev/video{target}" if isinstance(target, int) else str(target)
            super().__init__(f"camera {target}" if isinstance(target, int) else device)
            if sys.platform.startswith("linux") and not os.path.exists(device):
                raise SourceError(f"{self.origin}: no such camera ({device} does not exist); expected a connected "
                                  "camera (ls /dev/video*), a video file or a stream URL")
            self._capture = _open_capture(target if isinstance(target, int) else device, cv2.CAP_ANY, [],
                                          f"{self.origin}: cannot open the camera",
                                          "is it in use by another program, or not a capture device?")
        else:
            self.kind = "stream"
            super().__init__(str(target))
            msec = int(self.timeout * 1000)
            self._capture = _open_capture(str(target), cv2.CAP_FFMPEG,
                                          [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, msec, cv2.CAP_PROP_READ_TIMEOUT_MSEC, msec],
                                          f"{_redact(str(target))}: cannot open the stream",
                                          f"expected a reachable RTSP/HTTP video stream (tried for {self.timeout:g} s)")
            self.origin = _redact(str(target))
        self.fps = _positive(self._capture.get(cv2.CAP_PROP_FPS))
        self.frame_size = _frame_size(self._capture)
        self.frames_read = 0
        self._lock = threading.Condition()
        self._newest: tuple[np.ndarray, int, float] | None = None
        self._finished: str | None = None  # "ended" | "stalled" | "closed" once the reader stops
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._start = time.monotonic()

    def _read_loop(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            ok, bgr = self._capture.read()
            now = time.monotonic()
            if not ok or bgr is None:
                # a read that failed after waiting ~timeout is FFmpeg's read timeout: the stream stalled
                outcome = "stalled" if now - last >= 0.9 * self.timeout else "ended"
                with self._lock:
                    self._finished = "closed" if self._stop.is_set() else outcome
                    self._lock.notify_all()
                return
            last = now
            with self._lock:
                if self._newest is not None:
                    self.dropped += 1  # the consumer did not take the previous frame: stale now
                self._newest = (bgr, self.frames_read, now - self._start)
                self.frames_read += 1
                self._lock.notify_all()
        with self._lock:
            self._finished = "closed"
            self._lock.notify_all()

    def _frames(self) -> Iterator[Frame]:
        self._reader = threading.Thread(target=self._read_loop, name=f"edgekit-source-{self.kind}", daemon=True)
        self._reader.start()
        while True:
            with self._lock:
                deadline = time.monotonic() + self.timeout
                while self._newest is None and self._finished is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        self._finished = "stalled"
                        break
                    self._lock.wait(remaining)
                item, self._newest = self._newest, None
                finished = self._finished
            if item is not None:
                bgr, index, timestamp = item
                yield Frame(_to_rgb(bgr), index, timestamp, self.origin)
                continue
            if finished == "stalled":
                raise SourceError(f"{self.origin}: no new frame for {self.timeout:g} s (the {self.kind} stalled) "
                                  f"after {self.frames_read} frames")
            if self.frames_read == 0:
                raise SourceError(f"{self.origin}: the {self.kind} delivered no frame")
            if finished == "ended":
                self.notes.append(f"{self.origin}: the {self.kind} ended after {self.frames_read} frames")
            return

    def close(self) -> None:
        self._stop.set()
        reader = self._reader
        if reader is not None and reader.is_alive():
            # a read blocked in FFmpeg returns within the read timeout; do not wait longer than that
            reader.join(timeout=min(self.timeout, 2.0) + 0.5)
        if reader is None or not reader.is_alive():
            self._capture.release()


# --- opening ---------------------------------------------------------------------------------------


def open_source(sources: str | os.PathLike | Sequence[str | os.PathLike],
                timeout: float = DEFAULT_TIMEOUT) -> Source:
    """The Source that ``sources`` names (the CLI's SOURCE arguments).

    One video file, camera (an integer index such as "0", or a /dev/ path) or stream URL (rtsp://,
    http(s)://, …) at a time; anything else is a list of images, folders and globs. Raises InputError /
    SourceError with one line naming the bad source.
    """
    items = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    check_timeout(timeout)
    if not items:
        raise InputError("no source given; expected image files, folders, a video file, a camera or a stream URL")
    singles = [s for s in items if _single_kind(s) is not None]
    if singles:
        if len(items) > 1:
            raise InputError(f"{singles[0]}: one video file, camera or stream at a time (got {len(items)} sources)")
        item = items[0]
        kind = _single_kind(item)
        if kind == "camera":
            text = str(item)
            return LiveSource(int(text) if text.isdigit() else text, timeout=timeout)
        if kind == "stream":
            return LiveSource(str(item), timeout=timeout)
        return VideoFileSource(item)
    return ImageSource(list_image_files(items))


def check_timeout(timeout: float) -> None:
    """A stall timeout must be a finite number of seconds in (0, MAX_TIMEOUT] (NaN passes every comparison)."""
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and 0 < timeout <= MAX_TIMEOUT):
        raise InputError(f"--timeout {timeout}: expected a number of seconds > 0 and <= {MAX_TIMEOUT:g}")


def _single_kind(source: str | os.PathLike) -> str | None:
    text = str(source)
    if text.isdigit() and not Path(text).exists():
        return "camera"
    if text.startswith("/dev/"):
        # a capture device is a character device; /dev/stdin (a redirected file), /dev/fd/N or /dev/shm/x.mp4 are
        # files, and read as one they give every frame with its own timestamp, not the newest at arrival
        try:
            mode = os.stat(text).st_mode
        except OSError:
            return "camera"  # missing: the camera's error says which device does not exist
        return "camera" if stat.S_ISCHR(mode) else "video"
    if not Path(text).exists() and glob.has_magic(text):
        return None  # a pattern: list_image_files expands it (and refuses the videos it matches)
    if text.lower().startswith(STREAM_SCHEMES):
        return "stream"
    if Path(text).suffix.lower() in VIDEO_SUFFIXES:
        return "video"
    return None


def _open_capture(target: int | str, api: int, params: list[int], failure: str, hint: str) -> Any:
    """``cv2.VideoCapture`` that fails with one SourceError line, FFmpeg's own reason folded in.

    FFmpeg and OpenCV print their reasons on the C-level stderr; they are captured while opening so the
    user sees one line instead of a block of library warnings.
    """
    from edgekit.runtime.backends.ncnn import _captured_stderr  # the one fd-2 capture (no ncnn import)

    with _captured_stderr() as messages:
        capture = cv2.VideoCapture(target, api, params) if params else cv2.VideoCapture(target, api)
        opened = capture.isOpened()
    if not opened:
        capture.release()
        reasons = [_strip_log_prefix(m) for m in messages if "backend is generally available" not in m]
        reason = f" ({'; '.join(reasons)[:200]})" if reasons else ""
        raise SourceError(f"{failure}{reason}; {hint}")
    return capture


def _strip_log_prefix(message: str) -> str:
    """"[mov,mp4 @ 0x55…] moov atom not found" -> "moov atom not found"; OpenCV's "[ WARN:0@0.1] global …" too."""
    return re.sub(r"^\[[^\]]*\]\s*(global \S+ )?", "", message).strip()


def _redact(url: str) -> str:
    """A stream URL without its password (rtsp://user:secret@host -> rtsp://user:***@host), for messages.

    The user information runs to the authority's LAST '@' (FFmpeg's reading): a password may hold '@' itself."""
    return re.sub(r"(//[^:/@]+:)[^/]*@", r"\1***@", url)


def _to_rgb(bgr: np.ndarray) -> np.ndarray:
    if bgr.ndim == 2:
        return cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _positive(value: float) -> float | None:
    return float(value) if value and 0 < value < 1e6 else None


def _frame_size(capture: Any) -> tuple[int, int] | None:
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    return (width, height) if width > 0 and height > 0 else None
