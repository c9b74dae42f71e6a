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


def looks_like_onnx(path: str | Path) -> bool:
    """True when ``path`` starts as an ONNX ``ModelProto`` serialised by onnx / torch.onnx does: field 1
    (``ir_version``, varint, tag byte 0x08) first, holding a released IR version (3..15). A legacy (pre-zip) torch
    pickle starts with 0x80, a zip with ``PK``. A heuristic on the first two bytes, used only to name what a
    misnamed file really is; False for a missing or unreadable file."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x08 and 3 <= head[1] <= 15


__all__ = ["ZIP_MAGIC", "is_zip_file", "looks_like_onnx"]
