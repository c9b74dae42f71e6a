"""Video fixtures for the source / stream / CLI video tests: real photos written as a video with OpenCV, and a
local HTTP MJPEG server (multipart/x-mixed-replace, what IP cameras serve) that can end or stall on purpose."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

from tests.conftest import FASTESTDET_DIR, ZOO_DIR


def photos() -> list[np.ndarray]:
    """Real photographs as BGR arrays: the FastestDet upstream photos, else the bundled zoo scenes."""
    folder = FASTESTDET_DIR / "images"
    paths = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    paths = paths or sorted((ZOO_DIR / "images").glob("*.jpg"))
    images = [cv2.imread(str(p)) for p in paths]
    assert images and all(i is not None for i in images), "no photos to build a video from"
    return images


def video_frames(count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """``count`` different BGR frames of ``size`` (width, height): the photos in turn, each shifted a little
    further, so no two frames are alike and a frame's content tells its index."""
    base = [cv2.resize(p, size, interpolation=cv2.INTER_AREA) for p in photos()]
    return [np.ascontiguousarray(np.roll(base[i % len(base)], 7 * i, axis=1)) for i in range(count)]


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0, fourcc: str = "FFV1") -> Path:
    """Write BGR ``frames`` with cv2.VideoWriter (FFV1 is lossless: decoded frames equal the written ones)."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} to {path}"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def truncate(path: Path, out: Path, fraction: float) -> Path:
    data = path.read_bytes()
    out.write_bytes(data[:int(len(data) * fraction)])
    return out


def identify(frame_rgb: np.ndarray, frames_bgr: list[np.ndarray]) -> tuple[int, float]:
    """(index of the closest of ``frames_bgr``, its mean absolute difference) for a decoded RGB frame."""
    bgr = frame_rgb[:, :, ::-1].astype(np.int16)
    diffs = [float(np.abs(bgr - f.astype(np.int16)).mean()) for f in frames_bgr]
    best = int(np.argmin(diffs))
    return best, diffs[best]


class MjpegServer:
    """Serves ``frames`` (BGR) as an MJPEG stream at http://127.0.0.1:PORT/stream.mjpg, one every ``interval``
    seconds; then closes the connection (the stream ends) or, with ``stall=True``, keeps it open sending nothing."""

    def __init__(self, frames: list[np.ndarray], interval: float = 0.01, stall: bool = False) -> None:
        self.jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes() for f in frames]
        self.interval = interval
        self.stall = stall
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet test output
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                with contextlib.suppress(OSError):
                    for jpeg in server.jpegs:
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                         % len(jpeg) + jpeg + b"\r\n")
                        self.wfile.flush()
                        time.sleep(server.interval)
                    if server.stall:
                        server.release.wait(30)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/stream.mjpg"

    def __enter__(self) -> MjpegServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@contextlib.contextmanager
def mjpeg_server(frames: list[np.ndarray], interval: float = 0.01, stall: bool = False) -> Iterator[MjpegServer]:
    with MjpegServer(frames, interval, stall) as server:
        yield server
