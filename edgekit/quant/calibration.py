"""Calibration images: find them, check them, and turn them into exactly the runtime's input tensors.

numpy + Pillow (+ the runtime's preprocessing, which uses OpenCV for resizing); never torch, so
calibration can run where the runtime runs.

    calib = find_calibration_images("data/calib")            # or default_calibration_dir()
    warn_if_overlapping(calib, eval_image_paths)              # calibrating on test data inflates scores
    for tensor in calibration_tensors(calib, spec):           # float32 [1, 3, H, W]
        ...

Rules (why they exist):

- An image counts only if it decodes the way the runtime decodes it (``load_image``): a 0-byte,
  corrupt or truncated file, or a 16-bit greyscale PNG that the runtime refuses, is *skipped* with
  its reason instead of failing the whole run, because real folders always hold a few such files.
- Files are identified by the sha256 of their bytes. A byte-identical copy inside the set is skipped
  (it would silently double that image's weight); ``content_sha256`` identifies the set regardless
  of file names, so a cached calibration can tell whether it was computed on the same images.
- Too few images give unreliable activation ranges: below ``min_images`` is an error (unless
  forced), below ``warn_below`` a warning.
- ``limit`` picks an *evenly spaced* subset of the sorted file list (no randomness: the same folder
  always gives the same subset, and names that encode time or source are covered end to end).
  Only the files needed are decoded, so a limit on a large folder is cheap; a broken file in the
  subset is replaced by further evenly spaced picks among the files not yet examined.

Warnings (few images, skipped files, overlap with the evaluation set) go through a ``warn``
callable; by default ``warnings.warn(message, CalibrationWarning)``, so the CLI can route them to
its own output and tests can catch them.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import CalibrationError, InputError
from edgekit.runtime.artifact import sha256_file
from edgekit.runtime.preprocess import IMAGE_SUFFIXES, load_image, open_image, preprocess
from edgekit.spec import ModelSpec

__all__ = [
    "IMAGE_EXTENSIONS",
    "CalibrationImages",
    "CalibrationWarning",
    "calibration_tensors",
    "default_calibration_dir",
    "find_calibration_images",
    "overlapping_images",
    "warn_if_overlapping",
]

#: File extensions scanned for (compared lower-case): the runtime's own set, so a folder that `edgekit detect` reads
#: calibrates the same way. Anything else (.txt, .svg, ...) is ignored.
IMAGE_EXTENSIONS: tuple[str, ...] = tuple(sorted(IMAGE_SUFFIXES))

_EXTENSIONS_TEXT = "/".join(IMAGE_EXTENSIONS)

WarnFn = Callable[[str], None]


class CalibrationWarning(UserWarning):
    """A calibration set is usable but questionable (few images, skipped files, overlap with eval)."""


def _default_warn(message: str) -> None:
    # stacklevel 3: point at the caller of find_calibration_images / warn_if_overlapping.
    warnings.warn(message, CalibrationWarning, stacklevel=3)


@dataclass(frozen=True)
class CalibrationImages:
    """A checked calibration set.

    folder: the folder that was scanned (as given).
    paths: the readable images, ``folder / relative_path``, sorted by relative POSIX path.
    sha256: hex sha256 of each file's bytes, aligned with ``paths``.
    skipped: ``(path, reason)`` for every examined file that was not used (unreadable, 0 bytes,
        truncated, 16-bit, duplicate content), sorted by path. With ``limit``, files never examined
        are neither in ``paths`` nor in ``skipped``.
    content_sha256: sha256 of the sorted per-file hashes (one hex digest per line): identifies the
        set of image contents independent of file names and order.
    """

    folder: Path
    paths: tuple[Path, ...]
    sha256: tuple[str, ...]
    skipped: tuple[tuple[Path, str], ...]
    content_sha256: str

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[Path]:
        return iter(self.paths)


def content_hash(file_hashes: Iterable[str]) -> str:
    return hashlib.sha256("".join(f"{h}\n" for h in sorted(file_hashes)).encode("ascii")).hexdigest()


def _scan(folder: Path) -> tuple[list[Path], int]:
    """Image files under ``folder`` (recursive) sorted by relative POSIX path, and how many other files."""
    found: list[tuple[str, Path]] = []
    others = 0
    # os.walk rather than Path.rglob: deterministic handling of unreadable sub-folders (ignored)
    # and no following of symlinked folders (which could loop).
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            path = Path(root) / name
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                found.append((path.relative_to(folder).as_posix(), path))
            else:
                others += 1
    found.sort(key=lambda item: item[0])
    return [path for _, path in found], others


def _evenly_spaced(count: int, k: int) -> list[int]:
    """``k`` indices into ``range(count)``, evenly spaced, centred in their strides (``k <= count``)."""
    return [((2 * i + 1) * count) // (2 * k) for i in range(k)]


def _examine(path: Path) -> tuple[str | None, str]:
    """(sha256, "") for a file the runtime can decode, else (sha256 or None, reason)."""
    try:
        size = path.stat().st_size
        if size == 0:
            return None, "empty file (0 bytes)"
        data = path.read_bytes()
    except OSError as exc:
        return None, f"cannot read file ({exc.strerror or exc})"
    sha = hashlib.sha256(data).hexdigest()
    try:
        _decode(data, path)
    except InputError as exc:
        # The message starts with the file name; the reason is what follows it.
        text, prefix = str(exc), f"{path}: "
        return sha, text[len(prefix):] if text.startswith(prefix) else text
    return sha, ""


def _decode(data: bytes, path: Path) -> np.ndarray:
    """Decode file bytes exactly like ``load_image(path)``: HxWx3 uint8 RGB, or InputError naming ``path``.

    Decoding the bytes that were hashed (not re-opening the path) guarantees the tensors come from
    the content that ``sha256`` identifies.
    """
    try:
        image = open_image(io.BytesIO(data), str(path))  # refuses decompression bombs in one line, as the runtime
    except InputError:
        raise
    except Exception:  # UnidentifiedImageError, OSError, SyntaxError, ValueError, ...
        raise InputError(f"{path}: not a readable image (expected a {_EXTENSIONS_TEXT} file)") from None
    with image:
        # so load_image's messages name the file (Pillow sets filename in Image.open; its stubs omit it)
        image.filename = str(path)  # type: ignore[attr-defined]
        try:
            return load_image(image)
        except InputError as exc:
            raise InputError(str(exc).replace(f"PIL image ({path})", str(path), 1)) from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise InputError(f"{path}: image file is corrupt or truncated ({exc})") from None


def _summarise_skipped(skipped: list[tuple[Path, str]], folder: Path) -> str:
    path, reason = skipped[0]
    return f"e.g. {_relative(path, folder)}: {reason}"


def _relative(path: Path, folder: Path) -> str:
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return str(path)


def check_calibration_folder(folder: str | os.PathLike) -> None:
    """CalibrationError unless ``folder`` is an existing folder (cheap: nothing is scanned or decoded)."""
    folder = Path(folder)
    if not folder.exists():
        raise CalibrationError(
            f"calibration folder {folder} does not exist; expected a folder of {_EXTENSIONS_TEXT} images"
        )
    if not folder.is_dir():
        raise CalibrationError(
            f"calibration folder {folder} is a file, not a folder; expected a folder of {_EXTENSIONS_TEXT} images"
        )


def find_calibration_images(
    folder: str | os.PathLike,
    *,
    min_images: int = 16,
    warn_below: int = 100,
    force: bool = False,
    limit: int | None = None,
    warn: WarnFn | None = None,
) -> CalibrationImages:
    """Scan ``folder`` recursively for calibration images and check each one decodes.

    Extensions: .jpg .jpeg .png .bmp .webp (any case); other files are ignored. Every candidate is
    decoded with the runtime's ``load_image`` (an image that would fail at inference time is no use
    for calibration); failures and byte-identical duplicates are skipped with their reason.

    limit: at most this many images, an evenly spaced subset of the sorted file list (see the
        module docstring); only the files needed are decoded.
    min_images: fewer readable images is a CalibrationError, unless ``force``.
    warn_below: fewer readable images gives a warning through ``warn``.
    warn: callable taking a one-line message; default ``warnings.warn(msg, CalibrationWarning)``.

    Raises CalibrationError (one line naming the folder) when the folder is missing or not a
    folder, holds no image files, none of them is readable, or too few are.
    """
    warn = warn or _default_warn
    folder = Path(folder)
    if min_images < 1:
        raise CalibrationError(f"min_images must be at least 1, got {min_images}")
    if limit is not None and limit < 1:
        raise CalibrationError(f"calibration image limit must be at least 1, got {limit}")
    check_calibration_folder(folder)

    candidates, others = _scan(folder)
    if not candidates:
        raise CalibrationError(
            f"calibration folder {folder} holds no images (searched recursively for {_EXTENSIONS_TEXT}; "
            f"found {others} other file{'s' if others != 1 else ''})"
        )

    readable: dict[int, str] = {}          # candidate index -> sha256
    skipped: list[tuple[Path, str]] = []
    first_with_hash: dict[str, int] = {}   # sha256 -> candidate index, for duplicate detection

    def take(index: int) -> None:
        path = candidates[index]
        sha, reason = _examine(path)
        if reason or sha is None:  # no sha256 only for an unreadable file, which has a reason
            skipped.append((path, reason))
        elif sha in first_with_hash:
            other = candidates[first_with_hash[sha]]
            skipped.append((path, f"duplicate of {_relative(other, folder)} (same file content)"))
        else:
            first_with_hash[sha] = index
            readable[index] = sha

    if limit is None or limit >= len(candidates):
        for index in range(len(candidates)):
            take(index)
    else:
        remaining = list(range(len(candidates)))
        while remaining and len(readable) < limit:
            need = min(limit - len(readable), len(remaining))
            picks = [remaining[i] for i in _evenly_spaced(len(remaining), need)]
            # Examine in sorted order so duplicate detection keeps the earlier-sorted name.
            for index in sorted(picks):
                take(index)
            picked = set(picks)
            remaining = [i for i in remaining if i not in picked]

    order = sorted(readable)
    paths = tuple(candidates[i] for i in order)
    hashes = tuple(readable[i] for i in order)
    skipped.sort(key=lambda item: _relative(item[0], folder))
    examined = len(paths) + len(skipped)

    if not paths:
        raise CalibrationError(
            f"calibration folder {folder}: none of the {examined} image file{'s' if examined != 1 else ''} "
            f"could be used ({_summarise_skipped(skipped, folder)})"
        )
    if len(paths) < min_images and not force:
        broken = f" ({len(skipped)} skipped, {_summarise_skipped(skipped, folder)})" if skipped else ""
        raise CalibrationError(
            f"calibration folder {folder}: found {len(paths)} readable image{'s' if len(paths) != 1 else ''}"
            f"{broken}, need at least {min_images} (or --force-calib)"
        )
    if skipped:
        warn(f"calibration folder {folder}: skipped {len(skipped)} of {examined} image files "
             f"({_summarise_skipped(skipped, folder)})")
    if len(paths) < warn_below:
        warn(f"calibration folder {folder}: only {len(paths)} image{'s' if len(paths) != 1 else ''}; "
             f"INT8 ranges from fewer than {warn_below} images are unreliable "
             f"(use 300+ images from the deployment domain)")
    return CalibrationImages(
        folder=folder, paths=paths, sha256=hashes, skipped=tuple(skipped),
        content_sha256=content_hash(hashes),
    )


def calibration_tensors(images: CalibrationImages, spec: ModelSpec, progress: bool = False) -> Iterator[np.ndarray]:
    """Yield one float32 ``[1, 3, H, W]`` tensor per image, ``(H, W) = spec.input_size``.

    Exactly the runtime Detector's preprocessing: ``load_image`` (any mode -> RGB uint8, EXIF
    orientation applied, alpha dropped) then ``preprocess([image], spec)`` (letterbox or stretch,
    colour order, normalisation). Images are decoded from the bytes that are hashed, so a file that
    changed after ``find_calibration_images`` raises CalibrationError instead of silently
    calibrating on different content. ``progress`` shows a bar on a terminal (``edgekit.progress``).
    """
    bar = None
    if progress:
        from edgekit.progress import progress_bar

        bar = progress_bar(None, "calibration images", total=len(images.paths))
    try:
        for path, expected in zip(images.paths, images.sha256):
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise CalibrationError(f"{path}: calibration image can no longer be read ({exc.strerror or exc})") from None
            if hashlib.sha256(data).hexdigest() != expected:
                raise CalibrationError(
                    f"{path}: calibration image changed since the folder was scanned; scan {images.folder} again"
                )
            try:
                array = _decode(data, path)
            except InputError as exc:
                raise CalibrationError(f"calibration image {exc}") from None
            tensor, _ = preprocess([array], spec)
            if bar is not None:
                bar.update(1)
            yield tensor
    finally:
        if bar is not None:
            bar.close()


def _expand_eval_paths(eval_paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    for item in eval_paths:
        path = Path(item)
        if path.is_dir():
            yield from _scan(path)[0]
        elif path.is_file():
            yield path
        # Missing paths are ignored: the evaluator reports them; this is only a guard.


def overlapping_images(
    calib: CalibrationImages, eval_paths: Iterable[str | os.PathLike]
) -> list[tuple[Path, Path]]:
    """``(calibration path, evaluation path)`` for every evaluation file whose bytes equal a calibration image's.

    eval_paths: image files, or folders (scanned recursively for the same extensions). Matching is
    by sha256 of the file bytes, so renamed and moved copies are found; a re-encoded or resized
    copy is not. Pairs are in evaluation-path order.
    """
    by_hash = dict(zip(calib.sha256, calib.paths))
    pairs: list[tuple[Path, Path]] = []
    for path in _expand_eval_paths(eval_paths):
        try:
            sha = sha256_file(path)
        except OSError:
            continue
        if sha in by_hash:
            pairs.append((by_hash[sha], path))
    return pairs


def warn_if_overlapping(
    calib: CalibrationImages,
    eval_paths: Iterable[str | os.PathLike],
    *,
    warn: WarnFn | None = None,
) -> list[tuple[Path, Path]]:
    """Warn (through ``warn``) when calibration images also appear in the evaluation set; return the pairs.

    Message: "3 calibration images are also in the evaluation set (e.g. a.jpg = val/b.jpg):
    calibrating on test data inflates the INT8 score". The count is of distinct calibration images.
    """
    warn = warn or _default_warn
    pairs = overlapping_images(calib, eval_paths)
    if pairs:
        count = len({c for c, _ in pairs})
        first_calib, first_eval = pairs[0]
        noun = "image is" if count == 1 else "images are"
        warn(f"{count} calibration {noun} also in the evaluation set "
             f"(e.g. {_relative(first_calib, calib.folder)} = {first_eval}): "
             f"calibrating on test data inflates the INT8 score")
    return pairs


def default_calibration_dir() -> Path:
    """The bundled default calibration set (``edgekit/zoo/calibration``, shipped in the wheel).

    ~150 small JPEGs: synthetic shapes plus natural photos; see ``calibration/README.md`` and the
    folder's ``manifest.json``. Raises CalibrationError when the folder is missing (broken install).
    """
    folder = Path(__file__).resolve().parent.parent / "zoo" / "calibration"
    if not (folder / "manifest.json").is_file():
        raise CalibrationError(
            f"bundled calibration set {folder} is missing (expected images and manifest.json); "
            f"reinstall edgekit or pass your own calibration folder"
        )
    return folder
