"""Sources: every frame of a video file once and in order, truncated files, missing cameras, and a local HTTP
MJPEG stream that ends, stalls, or outruns its consumer (stale frames dropped and counted).

Oracles: the frames written into the video (FFV1 is lossless, so decoding must give them back bit for bit);
the JPEG frames the test server sent (identified by content: each frame is a differently shifted photo).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from edgekit.errors import InputError
from edgekit.runtime.sources import ImageSource, LiveSource, SourceError, VideoFileSource, list_image_files, open_source
from tests.video_helpers import identify, mjpeg_server, truncate, video_frames, write_video

SIZE = (160, 120)
COUNT = 12


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return video_frames(COUNT, SIZE)


@pytest.fixture(scope="module")
def video(frames, tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "clip.avi", frames, fps=10.0)


def test_video_file_yields_every_frame_once_in_order(video, frames):
    with open_source([str(video)]) as source:
        assert isinstance(source, VideoFileSource) and not source.live
        assert source.fps == pytest.approx(10.0) and source.frame_size == SIZE and source.frame_count == COUNT
        got = list(source)
    assert [f.index for f in got] == list(range(COUNT))
    assert [f.timestamp for f in got] == pytest.approx([i / 10.0 for i in range(COUNT)])
    assert all(f.origin == str(video) for f in got)
    for frame, written in zip(got, frames):
        assert frame.image.dtype == np.uint8 and frame.image.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(frame.image, written[:, :, ::-1])  # lossless, and RGB
    assert source.notes == [] and source.dropped == 0


def test_a_source_is_read_once(video):
    with open_source(video) as source:
        list(source)
        with pytest.raises(SourceError, match="read once"):
            iter(source)


def test_closing_a_video_while_another_thread_reads_it_ends_the_frames_quietly(video):
    """A pipeline reads the file in its own thread; a consumer that stops early closes the source under it.
    Reads and the release take turns (releasing FFmpeg's decoder under a running read is a use-after-free that
    crashed the process: a segfault in 1 of 6 runs before), and a closed source ends without claiming the file was truncated."""
    import threading

    source = open_source(video)
    frames = iter(source)
    first = next(frames)
    reader = threading.Thread(target=lambda: list(frames))
    reader.start()
    source.close()
    reader.join(timeout=10)
    assert not reader.is_alive()
    assert first.index == 0 and source.notes == []
    source.close()  # idempotent


def test_truncated_video_yields_the_frames_it_has_and_says_so(video, frames, tmp_path):
    cut = truncate(video, tmp_path / "cut.avi", 0.5)
    with open_source(cut) as source:
        got = list(source)
    assert 0 < len(got) < COUNT
    for frame, written in zip(got, frames):  # the frames before the cut, intact and in order
        np.testing.assert_array_equal(frame.image, written[:, :, ::-1])
    assert len(source.notes) == 1 and f"ended after {len(got)} of the {COUNT} frames" in source.notes[0]


def test_truncated_mp4_is_one_error_line_with_ffmpegs_reason(frames, tmp_path):
    mp4 = write_video(tmp_path / "clip.mp4", frames, fourcc="mp4v")
    cut = truncate(mp4, tmp_path / "cut.mp4", 0.5)  # MP4 keeps its index (moov) at the end: cut, it is gone
    with pytest.raises(SourceError, match=r"cut\.mp4: cannot open this video file \(.*moov atom not found") as info:
        open_source(cut)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad", ["not_a_video.mp4", "garbage"])
def test_missing_or_garbage_video_file(bad, tmp_path):
    path = tmp_path / "not_a_video.mp4"
    if bad == "garbage":
        path.write_bytes(b"this is no video" * 100)
        with pytest.raises(SourceError, match="cannot open this video file"):
            open_source(path)
    else:
        with pytest.raises(SourceError, match="no such video file"):
            open_source(path)


@pytest.mark.parametrize("camera", ["7", "/dev/video9"])
def test_missing_camera_is_one_clear_error(camera):
    with pytest.raises(SourceError, match=r"no such camera \(/dev/video(7|9) does not exist\)"):
        open_source([camera])


def test_images_folders_and_globs_keep_their_order(tmp_path):
    import cv2

    for name in ("b.jpg", "a.png", "c.txt"):
        (tmp_path / name).write_bytes(b"") if name.endswith("txt") else cv2.imwrite(str(tmp_path / name), np.zeros((8, 8, 3), np.uint8))
    assert list_image_files([tmp_path]) == [tmp_path / "a.png", tmp_path / "b.jpg"]
    assert list_image_files([str(tmp_path / "*.jpg"), tmp_path / "a.png"]) == [tmp_path / "b.jpg", tmp_path / "a.png"]
    with pytest.raises(InputError, match="matches no images"):
        list_image_files([str(tmp_path / "*.gif")])
    with open_source([str(tmp_path)]) as source:
        assert isinstance(source, ImageSource)
        got = list(source)
    assert [(f.index, f.origin) for f in got] == [(0, str(tmp_path / "a.png")), (1, str(tmp_path / "b.jpg"))]


def test_one_video_camera_or_stream_at_a_time(video, tmp_path):
    with pytest.raises(InputError, match="one video file, camera or stream at a time"):
        open_source([video, video])


# --- a live HTTP MJPEG stream ------------------------------------------------------------------


def test_stream_that_ends_delivers_its_frames_in_order(frames):
    with mjpeg_server(frames, interval=0.02) as server, open_source([server.url], timeout=5) as source:
        assert isinstance(source, LiveSource) and source.live and source.kind == "stream"
        got = list(source)
    matched = [identify(f.image, frames) for f in got]
    assert all(diff < 4 for _, diff in matched), matched  # JPEG decoders differ by a few levels, frames by far more
    served = [index for index, _ in matched]
    assert served == sorted(served) and len(set(served)) == len(served)  # in order, none twice
    assert [f.index for f in got] == served  # a frame's index is its position in the stream
    assert len(got) + source.dropped == source.frames_read == COUNT
    assert source.notes == [f"{server.url}: the stream ended after {COUNT} frames"]


def test_slow_consumer_gets_the_newest_frame_and_drops_are_counted(frames):
    with mjpeg_server(frames, interval=0.005) as server, open_source([server.url], timeout=5) as source:
        got = []
        for frame in source:
            got.append(frame)
            time.sleep(0.05)  # ten times slower than the stream
    served = [identify(f.image, frames)[0] for f in got]
    assert [f.index for f in got] == served and served == sorted(served)
    assert source.dropped > 0 and len(got) + source.dropped == source.frames_read == COUNT
    assert served[-1] == COUNT - 1  # the newest frame is never the one dropped


def test_stalled_stream_raises_after_the_frames_it_sent(frames):
    with mjpeg_server(frames[:3], interval=0.01, stall=True) as server, \
            open_source([server.url], timeout=1.0) as source:
        got = []
        started = time.monotonic()
        with pytest.raises(SourceError, match=r"no new frame for 1 s \(the stream stalled\) after 3 frames"):
            for frame in source:
                got.append(frame)
        assert time.monotonic() - started < 10
    assert len(got) + source.dropped == 3


def test_unreachable_stream_is_one_error_line():
    with pytest.raises(SourceError, match=r"http://127\.0\.0\.1:1/x\.mjpg: cannot open the stream") as info:
        open_source(["http://127.0.0.1:1/x.mjpg"], timeout=2)
    assert "\n" not in str(info.value)


def test_stream_password_is_not_printed():
    with pytest.raises(SourceError) as info:
        open_source(["http://user:secret@127.0.0.1:1/x.mjpg"], timeout=2)
    assert "secret" not in str(info.value) and "user:***@" in str(info.value)


# --- a hostile review (session 12): each of these ran with exit 0 and a wrong or partial result -----------------


def test_a_video_under_dev_is_a_file_not_a_camera(video, frames):
    """/dev/stdin (a redirected file), /dev/fd/N, /dev/shm/x.mp4: read as a camera they lost frames (newest only)
    and took arrival times for timestamps. Only a character device is a camera."""
    with open(video, "rb") as handle:
        path = f"/dev/fd/{handle.fileno()}"
        with open_source([path]) as source:
            assert isinstance(source, VideoFileSource) and not source.live
            got = list(source)
    assert [f.index for f in got] == list(range(COUNT))
    assert [f.timestamp for f in got] == pytest.approx([i / 10.0 for i in range(COUNT)])
    with pytest.raises(SourceError, match="no such camera"):  # a missing /dev path is still a camera's error
        open_source(["/dev/video9"])


def test_videos_in_a_folder_or_pattern_are_refused_not_skipped(video, tmp_path):
    import shutil

    import cv2

    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((8, 8, 3), np.uint8))
    shutil.copy(video, tmp_path / "clip.avi")
    for given, where in ((tmp_path, "the folder holds"), (str(tmp_path / "*"), "the pattern matches"),
                         (str(tmp_path / "cl*.avi"), "the pattern matches")):
        with pytest.raises(InputError) as info:
            open_source([given])
        assert f"{given}: {where} a video (clip.avi)" in str(info.value)
        assert f"edgekit detect MODEL {tmp_path / 'clip.avi'}" in str(info.value)


def test_a_video_path_that_is_not_a_file(tmp_path):
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(SourceError, match=r"dir\.mp4: not a regular file"):
        open_source([tmp_path / "dir.mp4"])


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), 1e7, 0.0, -1.0])
def test_timeout_must_be_finite_and_bounded(video, timeout):
    """nan / inf / 1e7 reached FFmpeg as milliseconds: 'unexpected ValueError / OverflowError' tracebacks."""
    with pytest.raises(InputError, match=r"--timeout .*: expected a number of seconds > 0 and <= 86400"):
        open_source([video], timeout=timeout)


def test_a_password_with_an_at_sign_is_not_printed():
    """FFmpeg splits user information at the LAST '@': 'Pa@ssw0rd' printed as '***@ssw0rd'."""
    with pytest.raises(SourceError) as info:
        open_source(["http://admin:Pa@ssw0rd@127.0.0.1:1/x.mjpg"], timeout=2)
    assert "ssw0rd" not in str(info.value) and "admin:***@127.0.0.1:1" in str(info.value)


def test_an_undecodable_frame_inside_a_file_is_skipped_and_said(frames, tmp_path):
    """One damaged frame (its JPEG header zeroed) ended the run at frame 5 with 'truncated file?', losing the six
    good frames after it; FFmpeg decodes on after the failure. Now: every decodable frame, with its own number and
    time, and a note naming the skipped one."""
    clip = write_video(tmp_path / "clip.avi", frames, fps=10.0, fourcc="MJPG")
    data = bytearray(clip.read_bytes())
    starts = [i for i in range(len(data) - 2) if data[i:i + 3] == b"\xff\xd8\xff"]  # each frame's JPEG start
    assert len(starts) == COUNT
    half = (starts[6] - starts[5]) // 2
    data[starts[5]:starts[5] + half] = bytes(half)
    damaged = tmp_path / "damaged.avi"
    damaged.write_bytes(bytes(data))
    with open_source([damaged]) as source:
        got = list(source)
    expected = [i for i in range(COUNT) if i != 5]
    assert [f.index for f in got] == expected
    assert [f.timestamp for f in got] == pytest.approx([i / 10.0 for i in expected])
    assert [identify(f.image, frames)[0] for f in got] == expected  # the frames are the ones their numbers say
    assert source.notes == [f"{damaged}: frame 5 could not be decoded (damaged data) and was skipped; the frames "
                            "after it keep their numbers"]
