"""Progress bars for long work: on a terminal only.

Validation, calibration, training, synthetic data and detection over many images show a tqdm bar on stderr when
stderr is a terminal, and nothing otherwise: a log file or a pipe would get one line per refresh (tqdm's own TTY
test, ``disable=None``). What runs is said by the commands' own lines; the bar only shows how far it is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def progress_bar(iterable: Iterable[Any] | None, description: str, *, total: int | None = None, unit: str = "img",
                 quiet: bool = False) -> tqdm:
    """A tqdm bar over ``iterable`` (or, with None, a manual one of ``total`` steps advanced by ``update``) on a
    terminal; off a terminal, or with ``quiet``, the same object silent. The bar is removed when done
    (``leave=False``). ``(iterable, description)`` is the shape of the ``progress`` callables calibration and
    validation take, so it is passed to them as it is."""
    return tqdm(iterable, desc=description, total=total, unit=unit, leave=False, dynamic_ncols=True,
                mininterval=0.5, disable=True if quiet else None)
