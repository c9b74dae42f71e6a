"""Calibration image sources: scanning, skipping broken files, guards, tensors, the bundled default set."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import tomllib
from PIL import Image

from edgekit.errors import CalibrationError
from edgekit.quant.calibration import (
    CalibrationWarning,
    calibration_tensors,
    default_calibration_dir,
    find_calibration_images,
    overlapping_images,
    warn_if_overlapping,
)
from edgekit.runtime.preprocess import load_image, preprocess
from edgekit.spec import HeadSpec, ModelSpec, Normalization, ResizeSpec
from tests.conftest import REPO_ROOT

LETTERBOX_SPEC = ModelSpec(family="t", input_size=(48, 64), class_names=("a",), head=HeadSpec("fastestdet", ("out",)))
STRETCH_BGR_SPEC = ModelSpec(
    family="t", input_size=(40, 40), class_names=("a",), head=HeadSpec("fastestdet", ("out",)), color_order="BGR",
    resize=ResizeSpec("resize", 0), normalization=Normalization(1 / 255, (0.4, 0.45, 0.5), (0.2, 0.25, 0.3)),
)


def _noise(seed: int, h: int, w: int, c: int | None = 3) -> np.ndarray:
    shape = (h, w) if c is None else (h, w, c)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _write_good_images(folder: Path) -> list[str]:
    """Readable images of mixed formats / modes / sizes; returns their relative paths, sorted."""
    (folder / "sub" / "deeper").mkdir(parents=True, exist_ok=True)
    Image.fromarray(_noise(1, 30, 40)).save(folder / "rgb.png")
    Image.fromarray(_noise(2, 20, 50, None)).save(folder / "sub" / "grey.jpg", quality=90)
    Image.fromarray(_noise(3, 33, 17, 4), "RGBA").save(folder / "rgba.png")
    Image.fromarray(_noise(4, 25, 25)).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    Image.fromarray(_noise(5, 64, 48)).save(folder / "sub" / "deeper" / "upper.BMP")
    Image.fromarray(_noise(6, 21, 60)).save(folder / "pic.webp", quality=80)
    Image.fromarray(_noise(7, 10, 10)).save(folder / "photo.JPEG")
    # EXIF orientation 6 (rotate 90 deg): the runtime shows it upright; calibration must too.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_noise(8, 20, 36)).save(folder / "rotated.jpg", exif=exif.tobytes())
    # A GIF is an image for calibration as for `edgekit detect` (one suffix set, runtime.preprocess.IMAGE_SUFFIXES).
    Image.fromarray(_noise(9, 12, 12)).convert("P").save(folder / "anim.gif")
    # Not in the extension list: ignored, neither counted nor skipped.
    (folder / "notes.txt").write_text("not an image")
    (folder / "drawing.svg").write_text("<svg/>")
    return sorted(["rgb.png", "sub/grey.jpg", "rgba.png", "palette.png", "sub/deeper/upper.BMP", "pic.webp",
                   "photo.JPEG", "rotated.jpg", "anim.gif"])


def _write_broken_images(folder: Path) -> dict[str, str]:
    """Broken files; returns relative path -> a word their skip reason must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg" * 10)
    (folder / "empty.png").write_bytes(b"")
    Image.fromarray(_noise(10, 80, 80)).save(folder / "whole.jpg", quality=95)
    data = (folder / "whole.jpg").read_bytes()
    (folder / "whole.jpg").unlink()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(folder / "depth16.png")
    return {"corrupt.jpg": "not a readable image", "empty.png": "0 bytes", "truncated.jpg": "truncated",
            "depth16.png": "16-bit"}


def _write_n(folder: Path, n: int, start_seed: int = 100) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(_noise(start_seed + i, 16, 16)).save(folder / f"img_{i:03d}.png")


def _relative(calib, paths=None) -> list[str]:
    return [p.relative_to(calib.folder).as_posix() for p in (calib.paths if paths is None else paths)]


# ----------------------------------------------------------------------------------------------
# Scanning
# ----------------------------------------------------------------------------------------------


def test_mixed_formats_all_counted_and_tensors_match_runtime(tmp_path):
    expected = _write_good_images(tmp_path)
    calib = find_calibration_images(tmp_path, min_images=1, warn=lambda m: None)
    assert _relative(calib) == expected
    assert calib.skipped == ()
    assert len(calib) == len(calib.sha256) == len(expected) == 9
    assert all(h == hashlib.sha256(p.read_bytes()).hexdigest() for p, h in zip(calib.paths, calib.sha256))

    for spec in (LETTERBOX_SPEC, STRETCH_BGR_SPEC):
        tensors = list(calibration_tensors(calib, spec))
        assert len(tensors) == len(expected)
        for path, tensor in zip(calib.paths, tensors):
            assert tensor.shape == (1, 3, *spec.input_size) and tensor.dtype == np.float32
            runtime, _ = preprocess([load_image(path)], spec)
            np.testing.assert_array_equal(tensor, runtime, err_msg=str(path))

    # The EXIF-rotated JPEG is used upright (20x36 stored -> 36x20 displayed), as the runtime does.
    assert load_image(tmp_path / "rotated.jpg").shape == (36, 20, 3)


def test_broken_files_are_skipped_with_reasons(tmp_path):
    _write_good_images(tmp_path)
    reasons = _write_broken_images(tmp_path / "bad")
    messages: list[str] = []
    calib = find_calibration_images(tmp_path, min_images=1, warn=messages.append)
    assert len(calib) == 9  # the good images, the GIF among them
    skipped = {p.relative_to(tmp_path).as_posix(): reason for p, reason in calib.skipped}
    assert set(skipped) == {f"bad/{name}" for name in reasons}
    for name, word in reasons.items():
        assert word in skipped[f"bad/{name}"], (name, skipped[f"bad/{name}"])
    assert any("skipped 4 of 13 image files" in m for m in messages), messages
    assert len(list(calibration_tensors(calib, LETTERBOX_SPEC))) == 9


def test_duplicates_are_skipped_and_content_hash_ignores_names(tmp_path):
    _write_n(tmp_path / "a", 5)
    shutil.copy(tmp_path / "a" / "img_002.png", tmp_path / "a" / "zz_copy.png")
    calib = find_calibration_images(tmp_path / "a", min_images=1, warn=lambda m: None)
    assert len(calib) == 5
    assert [(p.name, r) for p, r in calib.skipped] == [("zz_copy.png", "duplicate of img_002.png (same file content)")]

    # Same contents under other names and folders -> the same content_sha256; one changed image -> different.
    (tmp_path / "b" / "nested").mkdir(parents=True)
    for i, path in enumerate(sorted((tmp_path / "a").glob("img_*.png"))):
        shutil.copy(path, tmp_path / "b" / ("nested" if i % 2 else "") / f"renamed_{9 - i}.png")
    renamed = find_calibration_images(tmp_path / "b", min_images=1, warn=lambda m: None)
    assert renamed.content_sha256 == calib.content_sha256
    assert sorted(renamed.sha256) == sorted(calib.sha256)
    Image.fromarray(_noise(999, 16, 16)).save(tmp_path / "b" / "renamed_9.png")
    assert find_calibration_images(tmp_path / "b", min_images=1, warn=lambda m: None).content_sha256 != calib.content_sha256


def test_scan_is_deterministic(tmp_path):
    _write_good_images(tmp_path)
    _write_broken_images(tmp_path / "bad")
    first = find_calibration_images(tmp_path, min_images=1, warn=lambda m: None)
    second = find_calibration_images(tmp_path, min_images=1, warn=lambda m: None)
    assert first == second


# ----------------------------------------------------------------------------------------------
# Errors and warnings
# ----------------------------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(CalibrationError, match="does not exist") as info:
        find_calibration_images(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)


def test_file_instead_of_folder(tmp_path):
    Image.fromarray(_noise(0, 8, 8)).save(tmp_path / "one.png")
    with pytest.raises(CalibrationError, match="is a file, not a folder") as info:
        find_calibration_images(tmp_path / "one.png")
    assert str(tmp_path / "one.png") in str(info.value)


def test_empty_folder_and_folder_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="holds no images") as info:
        find_calibration_images(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(info.value)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("x")
    (tmp_path / "other" / "x.svg").write_text("<svg/>")
    with pytest.raises(CalibrationError, match=r"holds no images .*found 2 other files"):
        find_calibration_images(tmp_path / "other")


def test_all_broken_folder(tmp_path):
    _write_broken_images(tmp_path)
    with pytest.raises(CalibrationError, match="none of the 4 image files could be used") as info:
        find_calibration_images(tmp_path, force=True)
    message = str(info.value)
    assert str(tmp_path) in message and "\n" not in message


def test_below_min_images_is_an_error_unless_forced(tmp_path):
    _write_n(tmp_path, 9)
    (tmp_path / "broken.jpg").write_bytes(b"")
    with pytest.raises(CalibrationError) as info:
        find_calibration_images(tmp_path, warn=lambda m: None)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "found 9 readable images" in message and "need at least 16 (or --force-calib)" in message
    assert "1 skipped" in message and "broken.jpg" in message

    messages: list[str] = []
    calib = find_calibration_images(tmp_path, force=True, warn=messages.append)
    assert len(calib) == 9
    assert any("only 9 images" in m for m in messages), messages


def test_below_warn_below_warns(tmp_path):
    _write_n(tmp_path, 20)
    messages: list[str] = []
    find_calibration_images(tmp_path, warn=messages.append)
    assert len(messages) == 1 and "only 20 images" in messages[0] and str(tmp_path) in messages[0]
    # The default route is warnings.warn with CalibrationWarning.
    with pytest.warns(CalibrationWarning, match="only 20 images"):
        find_calibration_images(tmp_path)
    # Enough images: silent.
    messages.clear()
    find_calibration_images(tmp_path, warn_below=20, warn=messages.append)
    assert messages == []


def test_limit_takes_an_evenly_spaced_subset(tmp_path):
    _write_n(tmp_path, 20)
    calib = find_calibration_images(tmp_path, limit=5, min_images=1, warn=lambda m: None)
    assert [p.name for p in calib.paths] == [f"img_{i:03d}.png" for i in (2, 6, 10, 14, 18)]
    assert find_calibration_images(tmp_path, limit=5, min_images=1, warn=lambda m: None) == calib
    # A broken file among the picks is replaced by another pick; only examined files are listed.
    (tmp_path / "img_006.png").write_bytes(b"broken")
    calib = find_calibration_images(tmp_path, limit=5, min_images=1, warn=lambda m: None)
    assert len(calib) == 5 and "img_006.png" not in [p.name for p in calib.paths]
    assert [p.name for p, _ in calib.skipped] == ["img_006.png"]
    # A limit above the count takes everything; a limit below min_images is an error.
    assert len(find_calibration_images(tmp_path, limit=100, min_images=1, warn=lambda m: None)) == 19
    with pytest.raises(CalibrationError, match="need at least 16"):
        find_calibration_images(tmp_path, limit=8, warn=lambda m: None)
    with pytest.raises(CalibrationError, match="limit must be at least 1"):
        find_calibration_images(tmp_path, limit=0)


def test_file_changed_after_scan_is_refused(tmp_path):
    _write_n(tmp_path, 3)
    calib = find_calibration_images(tmp_path, min_images=1, warn=lambda m: None)
    Image.fromarray(_noise(555, 16, 16)).save(tmp_path / "img_001.png")
    tensors = calibration_tensors(calib, LETTERBOX_SPEC)
    next(tensors)
    with pytest.raises(CalibrationError, match=r"img_001.png: calibration image changed since the folder was scanned"):
        next(tensors)


def test_progress_bar_on_a_terminal_only(tmp_path, monkeypatch):
    """``progress`` shows the bar where stderr is a terminal and writes nothing into a log (edgekit.progress)."""
    import io
    import sys

    from tests.helpers import TerminalStream

    _write_n(tmp_path, 3)
    calib = find_calibration_images(tmp_path, min_images=1, warn=lambda m: None)
    for stream, shown in ((TerminalStream(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        assert len(list(calibration_tensors(calib, LETTERBOX_SPEC, progress=True))) == 3
        assert ("calibration images" in stream.getvalue()) is shown


# ----------------------------------------------------------------------------------------------
# Overlap with the evaluation set
# ----------------------------------------------------------------------------------------------


def test_overlap_finds_renamed_copies(tmp_path):
    _write_n(tmp_path / "calib", 6)
    (tmp_path / "val" / "deep").mkdir(parents=True)
    shutil.copy(tmp_path / "calib" / "img_003.png", tmp_path / "val" / "deep" / "b.png")
    shutil.copy(tmp_path / "calib" / "img_005.png", tmp_path / "val" / "c.png")
    shutil.copy(tmp_path / "calib" / "img_005.png", tmp_path / "val" / "d.png")
    Image.fromarray(_noise(777, 16, 16)).save(tmp_path / "val" / "unrelated.png")
    calib = find_calibration_images(tmp_path / "calib", min_images=1, warn=lambda m: None)

    # Folders are scanned; single files work too; missing paths are ignored.
    pairs = overlapping_images(calib, [tmp_path / "val", tmp_path / "missing.png"])
    assert [(c.name, e.relative_to(tmp_path).as_posix()) for c, e in pairs] == [
        ("img_005.png", "val/c.png"), ("img_005.png", "val/d.png"), ("img_003.png", "val/deep/b.png")]
    assert overlapping_images(calib, [tmp_path / "val" / "unrelated.png"]) == []

    messages: list[str] = []
    assert warn_if_overlapping(calib, sorted((tmp_path / "val").rglob("*.png")), warn=messages.append) == pairs
    assert messages == [
        f"2 calibration images are also in the evaluation set (e.g. img_005.png = {tmp_path / 'val' / 'c.png'}): "
        f"calibrating on test data inflates the INT8 score"]
    with pytest.warns(CalibrationWarning, match="1 calibration image is also in the evaluation set"):
        warn_if_overlapping(calib, [tmp_path / "val" / "deep" / "b.png"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_overlapping(calib, [tmp_path / "val" / "unrelated.png"]) == []


# ----------------------------------------------------------------------------------------------
# The bundled default set
# ----------------------------------------------------------------------------------------------


def _manifest() -> dict:
    return json.loads((default_calibration_dir() / "manifest.json").read_text(encoding="utf-8"))


def test_default_set_loads_and_matches_its_manifest():
    folder = default_calibration_dir()
    assert folder == REPO_ROOT / "edgekit" / "zoo" / "calibration"
    messages: list[str] = []
    calib = find_calibration_images(folder, warn=messages.append)
    assert messages == [] and calib.skipped == ()
    assert len(calib) >= 100

    manifest = _manifest()
    assert [e["file"] for e in manifest["images"]] == [p.relative_to(folder).as_posix() for p in calib.paths]
    assert [e["sha256"] for e in manifest["images"]] == list(calib.sha256)
    assert manifest["content_sha256"] == calib.content_sha256
    assert manifest["num_images"] == len(calib)
    sources = [e["source"] for e in manifest["images"]]
    assert sum(s.startswith("synth train seed 7 #") for s in sources) == 100
    assert sum(s.startswith("skimage.data.") for s in sources) == 54
    assert sum(s.endswith(" flipped") for s in sources) == 18
    for entry in manifest["images"]:
        with Image.open(folder / entry["file"]) as image:
            assert image.size == (entry["width"], entry["height"]) and image.mode == entry["mode"]
            assert max(image.size) <= 320
    assert sum((folder / e["file"]).stat().st_size for e in manifest["images"]) <= 2_500_000

    first = next(calibration_tensors(calib, LETTERBOX_SPEC))
    assert first.shape == (1, 3, 48, 64) and first.dtype == np.float32


def test_default_set_is_package_data():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = pyproject["tool"]["setuptools"]["package-data"]["edgekit"]
    for name in ("zoo/calibration/manifest.json", "zoo/calibration/synthetic/synth_train7_000.jpg"):
        assert any(fnmatch.fnmatch(name, g) for g in globs), (name, globs)


def test_build_default_reproduces_the_bundled_set(tmp_path):
    """Runs calibration/build_default.py --out tmp (about 3 s) and compares with the committed manifest."""
    out = tmp_path / "calib"
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "calibration" / "build_default.py"), "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    committed, rebuilt = _manifest(), json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert [e["file"] for e in rebuilt["images"]] == [e["file"] for e in committed["images"]]
    if rebuilt["built_with"] == committed["built_with"]:
        # Same library versions: byte-identical files and manifest.
        assert rebuilt == committed
        for entry in committed["images"]:
            assert hashlib.sha256((out / entry["file"]).read_bytes()).hexdigest() == entry["sha256"], entry["file"]
        assert (out / "manifest.json").read_bytes() == (default_calibration_dir() / "manifest.json").read_bytes()
    else:
        # Another numpy / Pillow / scikit-image: bytes may differ, pictures must not.
        for entry in committed["images"]:
            a = load_image(out / entry["file"]).astype(np.int16)
            b = load_image(default_calibration_dir() / entry["file"]).astype(np.int16)
            assert a.shape == b.shape and np.abs(a - b).mean() < 2.0, entry["file"]


def test_calibration_module_never_imports_torch():
    script = textwrap.dedent("""
        import sys

        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch import attempted: " + name)
                return None

        sys.meta_path.insert(0, BlockTorch())
        from edgekit.quant.calibration import calibration_tensors, default_calibration_dir, find_calibration_images
        from edgekit.spec import HeadSpec, ModelSpec
        spec = ModelSpec(family="t", input_size=(32, 32), class_names=("a",), head=HeadSpec("fastestdet", ("o",)))
        calib = find_calibration_images(default_calibration_dir(), limit=2, min_images=1, warn_below=1)
        print("ok", sum(t.shape[0] for t in calibration_tensors(calib, spec)), "torch" in sys.modules)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ok", "2", "False"]


def test_calibration_progress_shows_on_a_terminal_and_stays_out_of_logs(monkeypatch, capsys):
    """convert's calibration bar (the pipeline's ``progress_bar``): nothing when stderr is a pipe or a log file (it
    printed one line per image there), a bar when it is a terminal."""
    from edgekit.quant.pipeline import progress_bar
    from tests.helpers import TerminalStream

    assert list(progress_bar(iter(range(40)), "calibrate (mse)")) == list(range(40))
    assert capsys.readouterr().err == ""

    terminal = TerminalStream()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert list(progress_bar(iter(range(40)), "calibrate (mse)")) == list(range(40))
    assert "calibrate (mse)" in terminal.getvalue()
