"""Long work shows a progress bar on a terminal and stays quiet in logs (edgekit.progress), CLI included."""

from __future__ import annotations

import io
import sys

import numpy as np
from PIL import Image

from edgekit.progress import progress_bar
from tests.helpers import TerminalStream, fastestdet_like_artifact
from tests.helpers import run_cli as run


def test_a_bar_shows_on_a_terminal_only_and_never_when_quiet(monkeypatch):
    for stream, quiet, shown in ((io.StringIO(), False, False), (TerminalStream(), False, True), (TerminalStream(), True, False)):
        monkeypatch.setattr(sys, "stderr", stream)
        assert list(progress_bar(range(40), "work", quiet=quiet)) == list(range(40))
        assert ("work" in stream.getvalue()) is shown, (type(stream).__name__, quiet, stream.getvalue())


def test_a_manual_bar_counts_off_a_terminal_without_writing(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    bar = progress_bar(None, "images", total=5)
    for _ in range(5):
        bar.update(1)
    bar.close()
    assert log.getvalue() == ""


def test_detect_over_many_images_writes_no_bar_into_a_log(tmp_path, capsys):
    """Ten images (the bar starts at eight): the captured stderr is a log, not a terminal, and holds no bar."""
    artifact = fastestdet_like_artifact(tmp_path / "art")
    folder = tmp_path / "images"
    folder.mkdir()
    for seed in range(10):
        image = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"{seed}.jpg")
    code, out, err = run(["detect", artifact, folder, "--json", tmp_path / "r.json"], capsys)
    assert code == 0, err
    assert "img/s" not in err and "%|" not in err and "detect:" not in err, err
