"""Errors edgekit raises for bad input or failed steps.

Every message is one line that says what failed (naming the file, layer, option or tensor),
what was expected, and where useful what to do. The CLI prints ``error: <message>`` and exits
non-zero without a traceback for any ``EdgekitError``.
"""

from __future__ import annotations


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
