"""The registries: name -> implementation, in one place.

- :class:`LazyRegistry`, ``name -> "package.module:Class"`` imported when first asked for: the backend
  registries (``edgekit.runtime.backends`` for Runners, ``edgekit.convert.builders`` for builders). A board
  imports only its own backend's library, and a backend outside edgekit registers itself by a dotted path
  without importing anything. Built-in entries cannot be replaced or removed.
- :class:`DecoratorRegistry`, ``name -> function`` filled by a decorator as its module is imported: the head
  decoders (``edgekit.runtime.decode`` in numpy, ``edgekit.reference.decode`` in torch).

Torch-free and Python 3.8 (it runs on the device).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Generic, TypeVar, cast

from edgekit.errors import EdgekitError

T = TypeVar("T")
Fn = TypeVar("Fn", bound=Callable[..., Any])


class LazyRegistry(Generic[T]):
    """``name -> "package.module:Class"``; :meth:`load` imports the module and checks the class.

    ``kind`` ("runner", "builder") and ``error`` (the EdgekitError subclass raised) shape the messages;
    ``base`` is the class every entry must subclass (typed ``type``, not ``type[T]``: it is usually abstract,
    which mypy refuses where ``type[T]`` is expected; ``T`` comes from the annotated registry variable).
    """

    def __init__(self, kind: str, base: type, builtins: dict[str, str],
                 error: type[EdgekitError] = EdgekitError) -> None:
        self.kind = kind
        self.base = base
        self.error = error
        self._targets: dict[str, str] = dict(builtins)
        self._builtins = frozenset(builtins)

    def names(self) -> list[str]:
        return list(self._targets)

    def register(self, name: str, target: str) -> None:
        """Add ``name`` -> ``"package.module:Class"`` (imported when first used); a built-in cannot be replaced."""
        module_name, sep, class_name = target.partition(":")
        if not (name and module_name and sep and class_name):
            raise self.error(f"register_{self.kind}({name!r}, {target!r}): expected a backend name and "
                             f"'package.module:{self.base.__name__}Class'")
        if self._targets.get(name, target) != target:
            raise self.error(f"backend {name!r} already has a {self.kind} ({self._targets[name]})")
        self._targets[name] = target

    def unregister(self, name: str) -> None:
        """Remove an entry added with :meth:`register` (built-in entries stay)."""
        if name in self._builtins:
            raise self.error(f"the built-in {self.kind} for {name!r} cannot be removed")
        self._targets.pop(name, None)

    def load(self, name: str) -> type[T]:
        """The class registered for ``name``: unknown names raise ``error`` listing the known ones; an entry that
        is not a ``base`` subclass raises too (an ImportError of the backend's own library propagates)."""
        try:
            target = self._targets[name]
        except KeyError:
            raise self.error(f"unknown backend {name!r} (no {self.kind}); known backends: "
                             f"{', '.join(self._targets)}") from None
        module_name, _, class_name = target.partition(":")
        found = getattr(importlib.import_module(module_name), class_name, None)
        if not (isinstance(found, type) and issubclass(found, self.base)):
            raise self.error(f"{target} is not a {self.base.__name__} (registered as the {self.kind} of {name!r})")
        return cast("type[T]", found)  # an issubclass(found, self.base) class, base being T


class DecoratorRegistry(Dict[str, Fn]):
    """``name -> function``, a dict filled by :meth:`register` used as a decorator.

    Registering a name twice is a programming error (``ValueError``: two implementations of one name would
    make the import order decide); :meth:`lookup` of an unknown name raises ``error`` listing the known names,
    a user-facing message (the name usually comes from a spec or a command line). ``what`` names the entries
    in messages ("head kind").
    """

    def __init__(self, what: str, error: type[EdgekitError] = EdgekitError) -> None:
        super().__init__()
        self.what = what
        self.error = error

    def register(self, name: str) -> Callable[[Fn], Fn]:
        """Decorator: register the decorated function under ``name``."""

        def wrap(fn: Fn) -> Fn:
            if name in self:
                raise ValueError(f"{self.what} {name!r} is already registered ({getattr(self[name], '__name__', '?')})")
            self[name] = fn
            return fn

        return wrap

    def lookup(self, name: str) -> Fn:
        """The function registered for ``name``; ``error`` listing the known names otherwise."""
        try:
            return self[name]
        except KeyError:
            raise self.error(f"unknown {self.what} {name!r}; known {self.what}s: {', '.join(sorted(self))}") from None
