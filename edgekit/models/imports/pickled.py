"""A restricted unpickler for torch checkpoints that pickle whole ``nn.Module`` objects.

Ultralytics (``ultralytics.nn.tasks.DetectionModel``) and the classic YOLOv5 repository
(``models.yolo.Model``) save the model *object*, not a state_dict. ``torch.load(weights_only=True)``
refuses such a file, and ``weights_only=False`` would import the upstream package and run whatever the
pickle asks for. This module reads the file without executing anything from it:

- the zip archive is opened with :mod:`zipfile`; ``<archive>/data.pkl`` is unpickled by
  :class:`_InertUnpickler`, whose ``find_class`` is the only door through which a pickle can reach code.
  It returns, for every global the file names, one of:
  * a tensor rebuilder written here (``torch._utils._rebuild_tensor_v2`` / ``_v3`` / ``_rebuild_parameter``):
    it reads the storage bytes of ``<archive>/data/<key>`` and checks the view stays inside them;
  * a plain container type (``collections.OrderedDict``, ``set``, ``frozenset``) or ``torch.Size`` (as a tuple);
  * a numpy scalar / dtype decoder that only accepts numeric dtypes;
  * otherwise a *placeholder class* (a :class:`PickledObject` subclass made for that name) that records the
    arguments and the state the pickle gives it and does nothing else. A model layer becomes a
    PickledObject whose ``class_name`` is e.g. ``"ultralytics.nn.modules.conv.Conv"``; the importers then
    build edgekit's own module for it. Training leftovers (loss objects, namespaces, optimizer classes)
    stay inert PickledObjects nobody looks at.
- globals from modules that exist only to run code (``os``, ``subprocess``, ``builtins.eval`` …) are refused
  with one line naming them, after the whole file was read as inert data; nothing was called.

Only the zip format (torch >= 1.6, which every Ultralytics and YOLOv5 release writes) is read.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekit.errors import ModelFileError

# torch storage class name -> dtype of its elements (the legacy typed storages every zip checkpoint names).
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
# torch dtype objects pickled by name (``torch.float32`` …).
_TORCH_DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name) for name in (
        "float32", "float16", "float64", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
        "float", "half", "double", "long", "int")
}
# Module roots whose globals only ever appear in a pickle to run code; such a file is refused.
_CODE_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "shutil", "importlib", "runpy", "socket", "pickle", "_pickle",
    "marshal", "types", "code", "codeop", "ctypes", "pty", "webbrowser", "operator", "functools", "builtins",
    "__builtin__", "io", "pathlib", "tempfile", "threading", "multiprocessing", "signal", "asyncio", "inspect",
    "pdb", "timeit", "trace", "cProfile", "profile", "platform", "urllib", "http", "requests", "shlex", "glob",
    "zipimport", "pkgutil", "site", "sysconfig", "distutils", "setuptools", "pip", "torch.hub", "numpy.testing",
})
# Harmless builtins a checkpoint may name (protocol 2 writes ``__builtin__.set``).
_SAFE_BUILTINS = {"set": set, "frozenset": frozenset, "slice": slice, "complex": complex, "bytearray": bytearray}
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy")
_NUMERIC_KINDS = "biufc?"  # numpy dtype kinds a checkpoint scalar may have: ints, floats, complex, bool


class PickledObject:
    """An object of a class named in the file, kept as inert data.

    ``class_name`` is the fully qualified name the pickle gave (``module.qualname``); ``args`` what the
    pickle passed when creating it; ``state`` what it set afterwards (for an ``nn.Module``: its
    ``__dict__`` with ``_modules``, ``_parameters``, ``_buffers`` and plain attributes).
    """

    class_name: str = "?"

    def __init__(self, *args: Any) -> None:  # REDUCE calls the class: record, never act
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:  # BUILD
        self.state = state

    def __repr__(self) -> str:
        return f"<pickled {self.class_name}>"

    # --- nn.Module views ---------------------------------------------------------------------

    @property
    def attrs(self) -> dict[str, Any]:
        """Plain attributes (the state's keys that do not start with ``_``), e.g. ``{"f": -1, "i": 3}``."""
        state = self.state if isinstance(self.state, dict) else {}
        return {k: v for k, v in state.items() if isinstance(k, str) and not k.startswith("_")}

    def _state_dict_entry(self, key: str) -> dict[str, Any]:
        state = self.state if isinstance(self.state, dict) else {}
        value = state.get(key)
        return dict(value) if isinstance(value, dict) else {}

    @property
    def children(self) -> dict[str, PickledObject | None]:
        """Child modules in registration order (``_modules``); a value may be None (an optional layer)."""
        return self._state_dict_entry("_modules")

    @property
    def is_module(self) -> bool:
        """True when the state looks like an ``nn.Module``'s ``__dict__``."""
        return isinstance(self.state, dict) and "_modules" in self.state and "_parameters" in self.state

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, PickledObject]]:
        """(dotted path, module) for this module and every descendant, depth first, as ``nn.Module`` does."""
        yield prefix, self
        for name, child in self.children.items():
            if isinstance(child, PickledObject):
                yield from child.named_modules(f"{prefix}.{name}" if prefix else str(name))

    def state_dict(self) -> OrderedDict[str, torch.Tensor]:
        """``nn.Module.state_dict()`` of the pickled module: parameters and persistent buffers, upstream names.

        Tensors keep the file's dtype (often float16); ``load_state_dict`` copies them into float32 parameters.
        """
        tensors: OrderedDict[str, torch.Tensor] = OrderedDict()
        for path, module in self.named_modules():
            prefix = f"{path}." if path else ""
            for name, value in module._state_dict_entry("_parameters").items():
                if isinstance(value, torch.Tensor):
                    tensors[prefix + name] = value
            non_persistent = module.state.get("_non_persistent_buffers_set") if isinstance(module.state, dict) else None
            skip = set(non_persistent) if isinstance(non_persistent, (set, frozenset, list, tuple)) else set()
            for name, value in module._state_dict_entry("_buffers").items():
                if isinstance(value, torch.Tensor) and name not in skip:
                    tensors[prefix + name] = value
        return tensors


@dataclass(frozen=True)
class PickledCheckpoint:
    """What a module-pickling checkpoint holds, read as data.

    ``payload`` is the unpickled top-level object (usually a dict such as ``{"model": PickledObject, "epoch": …,
    "train_args": {...}}``); ``class_names`` every global the file named that became a placeholder, sorted.
    """

    path: Path
    payload: Any
    class_names: tuple[str, ...]


class _StorageType:
    """Marker for ``torch.<X>Storage`` in a persistent id: only its element dtype matters."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _InertUnpickler(pickle.Unpickler):
    """See the module docstring: every global resolves to something written here that cannot run code."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, source: str) -> None:
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._prefix = prefix
        self._source = source
        self._storages: dict[str, torch.Tensor] = {}
        self._placeholders: dict[str, type[PickledObject]] = {}
        self.code_globals: list[str] = []
        self.little_endian = True

    # pickle calls find_class for GLOBAL, INST, STACK_GLOBAL and copyreg extensions alike.
    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        if module in ("torch._utils",) and name in ("_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_tensor"):
            return self._rebuild_tensor
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _TORCH_DTYPES:
            return _TORCH_DTYPES[name]
        if module == "torch" and name == "Size":
            return _as_tuple
        if module == "torch" and name == "device":
            return _as_device_name
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[name]
        if module in _NUMPY_MODULES and name == "scalar":
            return _numpy_scalar
        if module == "numpy" and name == "dtype":
            return _numpy_dtype
        root = module.split(".")[0]
        if root in _CODE_MODULES or module in _CODE_MODULES:
            self.code_globals.append(qualified)
        return self._placeholder(qualified)

    def _placeholder(self, qualified: str) -> type[PickledObject]:
        if qualified not in self._placeholders:
            self._placeholders[qualified] = type(qualified.rpartition(".")[2] or "Pickled", (PickledObject,),
                                                 {"class_name": qualified, "__module__": __name__})
        return self._placeholders[qualified]

    @property
    def placeholder_names(self) -> tuple[str, ...]:
        return tuple(sorted(self._placeholders))

    def persistent_load(self, pid: Any) -> torch.Tensor:
        """``("storage", <X>Storage, key, location, numel)`` -> a flat tensor over ``data/<key>``'s bytes."""
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise ModelFileError(f"{self._source}: unsupported storage reference {str(pid)[:80]} in the pickle")
        dtype, key, numel = pid[1].dtype, str(pid[2]), pid[4]
        if key not in self._storages:
            member = f"{self._prefix}data/{key}"
            try:
                raw = self._archive.read(member)
            except KeyError:
                raise ModelFileError(f"{self._source}: storage {member!r} named by the pickle is missing "
                                     "(truncated or corrupt file)") from None
            itemsize = torch.empty((), dtype=dtype).element_size()
            if not isinstance(numel, int) or numel < 0 or len(raw) < numel * itemsize:
                raise ModelFileError(f"{self._source}: storage {member!r} holds {len(raw)} bytes, "
                                     f"fewer than the {numel} x {itemsize} it declares (truncated or corrupt file)")
            flat = torch.frombuffer(bytearray(raw[:numel * itemsize]), dtype=dtype) if numel else torch.empty(0, dtype=dtype)
            if not self.little_endian and itemsize > 1:
                flat = torch.from_numpy(flat.numpy().byteswap().copy())
            self._storages[key] = flat
        return self._storages[key]

    def _rebuild_tensor(self, storage: Any, storage_offset: Any, size: Any, stride: Any, *rest: Any) -> torch.Tensor:
        """``torch._utils._rebuild_tensor_v2``'s arguments -> a tensor, after checking the view fits its storage."""
        if not isinstance(storage, torch.Tensor):
            raise ModelFileError(f"{self._source}: a tensor in the pickle has no storage")
        size, stride = tuple(size), tuple(stride)
        ints = (storage_offset, *size, *stride)
        if (len(size) != len(stride) or not all(isinstance(v, int) and v >= 0 for v in ints)):
            raise ModelFileError(f"{self._source}: a tensor has a malformed shape {size} / stride {stride}")
        last = storage_offset + sum((s - 1) * st for s, st in zip(size, stride)) if all(size) else storage_offset - 1
        if last >= storage.numel():
            raise ModelFileError(f"{self._source}: a tensor of shape {size} reads past the end of its storage "
                                 f"({storage.numel()} elements; truncated or corrupt file)")
        return storage.as_strided(size, stride, storage_offset).clone()


def _rebuild_parameter(data: Any, *rest: Any) -> Any:
    """``nn.Parameter`` in the file -> its plain tensor (edgekit only reads the values)."""
    return data


def _as_tuple(*args: Any) -> tuple:
    return tuple(args[0]) if args else ()


def _as_device_name(*args: Any) -> str:
    return ":".join(str(a) for a in args)


def _numpy_dtype(code: Any, *rest: Any) -> np.dtype:
    try:
        dtype = np.dtype(str(code))
    except TypeError:
        raise ModelFileError(f"unsupported numpy dtype {str(code)[:40]!r} in the pickle") from None
    if dtype.kind not in _NUMERIC_KINDS:
        raise ModelFileError(f"unsupported numpy dtype {dtype} in the pickle (only numeric scalars are read)")
    return dtype


def _numpy_scalar(dtype: Any, data: Any = b"") -> Any:
    """``numpy.core.multiarray.scalar(dtype, bytes)`` -> a Python number (numpy scalars in training metrics)."""
    if not isinstance(dtype, np.dtype) or not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize:
        return None
    return np.frombuffer(bytes(data), dtype=dtype)[0].item()


def is_module_pickle(path: str | Path) -> bool:
    """True when ``path`` is a torch zip checkpoint whose pickle names classes outside torch and the standard
    containers (an Ultralytics / YOLOv5 file that pickles the model object). Static: nothing is unpickled."""
    from edgekit.models.checkpoint import pickle_globals  # one place for the static pickle scan

    names = pickle_globals(Path(path))
    plain = ("torch.", "collections.", "builtins.", "__builtin__.", "numpy.")
    # torch.nn classes are module objects too: ``torch.save(model)`` of a plain torch model lands here and is
    # told what is missing, instead of being refused as if it ran code.
    return any(n.startswith("torch.nn.") or not (n.startswith(plain) or n == "<dynamically built global>")
               for n in names)


def load_pickled_checkpoint(path: str | Path) -> PickledCheckpoint:
    """Read a module-pickling torch checkpoint as inert data (see the module docstring).

    Raises ModelFileError (one line naming ``path``) when the file is missing, not a torch zip archive,
    truncated or corrupt, or names globals that exist only to run code.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: checkpoint file not found")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise ModelFileError(f"{path} is truncated or corrupt, or a legacy (pre-1.6) torch file; "
                             "expected a torch zip checkpoint") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pickles:
            raise ModelFileError(f"{path}: not a torch checkpoint (no data.pkl in the archive)")
        member = min(pickles, key=len)
        prefix = member[: -len("data.pkl")]
        try:
            data = archive.read(member)
            byteorder = archive.read(prefix + "byteorder").decode("ascii", "replace").strip() \
                if prefix + "byteorder" in archive.namelist() else "little"
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError):
            raise ModelFileError(f"{path} is truncated or corrupt (unreadable archive member)") from None
        unpickler = _InertUnpickler(data, archive, prefix, source)
        unpickler.little_endian = byteorder != "big"
        try:
            payload = unpickler.load()
        except ModelFileError:
            raise
        except RecursionError:
            raise ModelFileError(f"{path}: the pickle nests too deeply to be a checkpoint") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
                zipfile.BadZipFile, OSError, RuntimeError, MemoryError, OverflowError) as exc:
            detail = " ".join(str(exc).split())[:120] or type(exc).__name__
            raise ModelFileError(f"{path} is truncated or corrupt (the pickle does not read: {detail})") from None
    if unpickler.code_globals:
        names = sorted(set(unpickler.code_globals))
        raise ModelFileError(f"refused {path}: its pickle references {', '.join(names)}, which could execute code "
                             "(nothing was run); edgekit only reads model layers, tensors and plain data")
    return PickledCheckpoint(path=path, payload=payload, class_names=unpickler.placeholder_names)


__all__ = ["PickledCheckpoint", "PickledObject", "is_module_pickle", "load_pickled_checkpoint"]
