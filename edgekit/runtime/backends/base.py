"""The Runner interface every backend implements.

Modelled on Polygraphy's runners: ``activate()`` loads/compiles the model, ``infer()`` runs it,
``deactivate()`` releases it, and the base class checks the feeds (names, dtypes, shapes) once,
so a backend module only has to move arrays in and out of its library.
"""

from __future__ import annotations

import contextlib
import importlib.util
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

import numpy as np

from edgekit.errors import BackendUnavailableError, EdgekitError, InputError

_Handle = TypeVar("_Handle")


@dataclass(frozen=True)
class TensorSpec:
    """A model input: name, numpy dtype, shape (None for a dynamic dimension)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]

    def check(self, array: np.ndarray) -> None:
        """Raise InputError naming the tensor if ``array`` does not fit this spec."""
        if array.dtype != self.dtype:
            raise InputError(f"input '{self.name}': expected dtype {np.dtype(self.dtype).name}, got {array.dtype.name}")
        if array.ndim != len(self.shape):
            raise InputError(f"input '{self.name}': expected rank {len(self.shape)} with shape {_shape_str(self.shape)}, "
                             f"got rank {array.ndim} with shape {tuple(array.shape)}")
        for axis, (want, got) in enumerate(zip(self.shape, array.shape)):
            if want is not None and want != got:
                raise InputError(f"input '{self.name}': expected shape {_shape_str(self.shape)}, got {tuple(array.shape)} "
                                 f"(axis {axis} must be {want})")


def _shape_str(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


class Runner(ABC):
    """Runs one model file on one backend.

    Use as a context manager (``with Runner(...) as r: r.infer(feeds)``) or call
    ``activate()`` / ``deactivate()`` yourself. Subclasses implement ``_activate``,
    ``_infer``, ``_deactivate`` and ``input_specs``; the feeds are checked here.

    Threads: an active runner may be shared; ``infer`` may be called from many threads at once
    and each call gets its own inputs' outputs. Every backend's ``_infer`` must keep that promise
    (per-call or pooled backend objects, or a lock around the one it has); activation happens once
    under a lock. ``deactivate`` waits for the calls in flight in other threads to return before it releases
    anything: some backends free native memory explicitly (ncnn's ``Net.clear()``, TensorRT's device buffers), and
    freeing it under a running call is a use-after-free, a crash rather than an exception.
    """

    #: backend name used by Detector.load(backend=...), CLI flags and target profiles
    name: ClassVar[str] = ""
    #: Python modules this backend needs; is_available() checks them without importing
    required_modules: ClassVar[tuple[str, ...]] = ()
    #: the pip extra that installs them (named in the error when they are missing)
    pip_extra: ClassVar[str] = ""
    #: the backend splits its cores between concurrent requests itself (OpenVINO's THROUGHPUT hint: streams);
    #: otherwise a throughput-mode Detector gives each of its one-per-core requests one thread (Detector.load)
    schedules_own_streams: ClassVar[bool] = False

    def __init__(self, model_path: str | Path) -> None:
        self.model_path = Path(model_path)
        self._active = False
        # re-entrant: a backend's _activate may call methods that activate() on their own
        self._lifecycle_lock = threading.RLock()
        self._calls_done = threading.Condition(self._lifecycle_lock)
        self._calls_in_flight = 0

    @classmethod
    def from_artifact(cls, model_path: Path, options: Mapping[str, object], threads: int = 0) -> Runner:
        """Build the runner for a model file listed in an artifact manifest with its backend options.

        Backends whose files come in pairs or need settings recorded at conversion time override this.
        """
        return cls(model_path, threads=threads)  # type: ignore[call-arg]

    # --- availability --------------------------------------------------------------------

    @classmethod
    def is_available(cls) -> bool:
        """True when the backend's Python library can be imported here: the one source of truth for skips."""
        return all(importlib.util.find_spec(m) is not None for m in cls.required_modules)

    @classmethod
    def require(cls) -> None:
        if not cls.is_available():
            missing = [m for m in cls.required_modules if importlib.util.find_spec(m) is None]
            raise BackendUnavailableError(
                f"backend '{cls.name}' needs the Python module(s) {', '.join(missing)}; "
                f"install them with: pip install 'edgekit[{cls.pip_extra}]'")

    # --- lifecycle -----------------------------------------------------------------------

    def activate(self) -> Runner:
        if not self._active:  # checked again under the lock: two threads' first infer() activate once
            with self._lifecycle_lock:
                if not self._active:
                    self.require()
                    self._activate()
                    self._active = True
        return self

    def deactivate(self) -> None:
        """Release the backend objects, after every call in flight in other threads has returned."""
        with self._lifecycle_lock:
            while self._calls_in_flight:
                self._calls_done.wait()
            if self._active:
                self._deactivate()
                self._active = False

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc_info: object) -> None:
        self.deactivate()

    @property
    def is_active(self) -> bool:
        return self._active

    # --- inference -----------------------------------------------------------------------

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model. feeds: input name -> array; returns output name -> array (numpy, backend dtype)."""
        with self.in_use():
            return self._infer(self.check_feeds(feeds))

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """Activate if needed and count one call in flight until the block ends (``deactivate`` waits for it).
        Every entry point that runs the backend objects goes through here."""
        with self._lifecycle_lock:
            self.activate()
            self._calls_in_flight += 1
        try:
            yield
        finally:
            with self._lifecycle_lock:
                self._calls_in_flight -= 1
                if not self._calls_in_flight:
                    self._calls_done.notify_all()

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Names, dtypes and shapes against input_specs(); returns contiguous arrays. Raises InputError."""
        specs = {s.name: s for s in self.input_specs()}
        missing = sorted(set(specs) - set(feeds))
        extra = sorted(set(feeds) - set(specs))
        if missing or extra:
            raise InputError(f"{self.model_path.name}: expected inputs {sorted(specs)}, got {sorted(feeds)}"
                             + (f" (missing {missing})" if missing else "") + (f" (unknown {extra})" if extra else ""))
        checked = {}
        for name, array in feeds.items():
            array = np.ascontiguousarray(array)
            specs[name].check(array)
            checked[name] = array
        return checked

    @abstractmethod
    def input_specs(self) -> list[TensorSpec]:
        """The model's inputs (valid after activate())."""

    @abstractmethod
    def output_names(self) -> list[str]:
        """The model's output names in the model's order (valid after activate())."""

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def _live(self, handle: _Handle | None) -> _Handle:
        """``handle``, a backend object ``_activate`` made and ``_deactivate`` drops, checked: None means the runner
        was deactivated before a call that did not go through :meth:`in_use` took its handle."""
        if handle is None:
            raise EdgekitError(f"{self.model_path.name}: the {self.name} runner was deactivated while in use "
                               "(deactivate() only after every infer() has returned)")
        return handle

    def _deactivate(self) -> None:  # noqa: B027 - an optional hook, not an abstract method
        """Drop references to the backend objects; override when there is more to release."""
