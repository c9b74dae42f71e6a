"""What a model file is, from its first bytes rather than its suffix (users rename ``best.pt``)."""

from __future__ import annotations

from pathlib import Path

ZIP_MAGIC = b"PK\x03\x04"


def is_zip_file(path: str | Path) -> bool:
    """True when ``path`` starts like a zip archive, as every torch >= 1.6 checkpoint does (whatever its suffix);
    an ONNX file (a protobuf) never does. False for a missing or unreadable file."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == ZIP_MAGIC
    except OSError:
        return False


__all__ = ["ZIP_MAGIC", "is_zip_file"]
