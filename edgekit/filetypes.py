"""What a model file is, from its first bytes rather than its suffix (users rename ``best.pt``)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError

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


def read_json(path: Path, error: type[EdgekitError], what: str) -> Any:
    """The JSON value in ``path`` (UTF-8), or ``error`` with one line naming the file, ``what`` it should be and
    where the text is not valid JSON ("<path>: <what> is not valid JSON: line L column C: <reason>")."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise error(f"{path}: {what} is not valid JSON: malformed JSON at line {exc.lineno} column {exc.colno}: "
                    f"{exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: {what} is not valid JSON (not UTF-8 text: {exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror or exc}") from None


def json_safe(value: Any) -> Any:
    """NaN / inf -> None and numpy scalars -> Python numbers, recursively: what strict JSON can hold."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def strict_json(value: Any, indent: int | None = 1) -> str:
    """``value`` as strict JSON text (RFC 8259: a NaN is null, never the bare ``NaN`` Python's json writes and other
    readers refuse), ending in a newline: every JSON file a command writes for other tools goes through here."""
    return json.dumps(json_safe(value), indent=indent, allow_nan=False) + "\n"
