"""Writing output files so that a failure never leaves a truncated or 0-byte file behind.

A result file (``--json``, ``bench.json``, a saved image) is written to a hidden temporary file in the same folder,
flushed to disk, and renamed over the destination (``os.replace`` is atomic within one file system). A full disk, a
permission error half-way or an interrupt leaves the previous file (or no file), and the temporary file is removed.
Artifact *folders* have their own staging and swap in :mod:`edgekit.convert.artifact`. Standard library only: the
device-side commands use it too.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` all or nothing (see the module docstring). Returns ``path``.

    Raises OSError (e.g. ENOSPC) after removing the temporary file; the destination is untouched then.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """:func:`write_bytes_atomic` of ``text`` encoded with ``encoding``."""
    return write_bytes_atomic(path, text.encode(encoding))


__all__ = ["write_bytes_atomic", "write_text_atomic"]
