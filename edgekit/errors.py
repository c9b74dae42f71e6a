"""Errors edgekit raises for bad input or failed steps.

Every message is one line that says what failed (naming the file, layer, option or tensor),
what was expected, and where useful what to do. The CLI prints ``error: <message>`` and exits
non-zero without a traceback for any ``EdgekitError``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class EdgekitError(Exception):
    """Base class: a user-facing failure with a one-line message."""

    def __init__(self, message: str) -> None:
        # Keep the message on one line: the CLI prints it as is.
        super().__init__(" ".join(str(message).split()))


class SpecError(EdgekitError):
    """A ModelSpec is missing, malformed or inconsistent with the model."""


class ModelFileError(EdgekitError):
    """A model / checkpoint / artifact file is missing, corrupt, truncated or tampered with."""


class InputError(EdgekitError):
    """An image or tensor handed to the runtime is not what the model expects."""


class BackendUnavailableError(EdgekitError):
    """A backend's Python library is not installed (or cannot run on this machine)."""


class OutputError(EdgekitError):
    """A model produced outputs that cannot be decoded (NaN, wrong shape, missing name)."""


class ConversionError(EdgekitError):
    """Export, a graph pass, or a backend build failed."""


class CalibrationError(EdgekitError):
    """A calibration set, cache or INT8 quantisation step is unusable (empty, broken, wrong model)."""


def first_line(exc: BaseException | str, limit: int = 300, empty: str | None = None) -> str:
    """The first non-blank line of an exception's message (or of a text), at most ``limit`` characters.

    For one-line errors that quote a library's (often multi-line) complaint. An empty message gives
    ``empty``, or the exception's type name when ``empty`` is None (a bare ``KeyError()`` still says
    something).
    """
    text = str(exc).strip()
    if not text:
        if empty is not None:
            return empty
        return "" if isinstance(exc, str) else type(exc).__name__
    return text.splitlines()[0].strip()[:limit]


def did_you_mean(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """``"; did you mean 'x'?"`` for the choice closest to ``word`` (difflib ratio >= ``cutoff``), else ``""``.

    Appended to an "unknown X" message: ``f"unknown key {key!r}{did_you_mean(key, known)}"``.
    """
    close = difflib.get_close_matches(str(word), sorted(str(c) for c in choices), n=1, cutoff=cutoff)
    return f"; did you mean {close[0]!r}?" if close else ""
