"""Safe checkpoint loading: tensors and plain containers only, never code from a file.

A ``.pt``/``.pth`` file is a pickle, and unpickling an arbitrary pickle can run arbitrary code
(``__reduce__`` returning ``(os.system, ("...",))`` is all it takes). edgekit therefore only ever
calls ``torch.load(..., weights_only=True)``, whose restricted unpickler accepts tensors,
storages, dtypes and plain containers (dict, list, tuple, OrderedDict, numbers, strings) and
refuses every other global. There is deliberately no "trusted" switch and no fallback to
``weights_only=False``: a checkpoint that needs one must be re-saved as a ``state_dict``.

Every failure becomes an :class:`edgekit.errors.ModelFileError` whose one-line message names the
file and says what was wrong: missing, empty, truncated/corrupt, or refused because it
references a global that could execute code.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from edgekit.errors import ModelFileError

# Keys under which training scripts commonly nest the real state_dict.
_WRAPPER_KEYS = ("state_dict", "model")
_DATA_PARALLEL_PREFIX = "module."
# Only the first pickles of a legacy (non-zip) torch file hold objects; the rest is raw
# storage bytes. 16 MiB is far more than any object pickle needs.
_MAX_PICKLE_SCAN_BYTES = 16 * 1024 * 1024
_REFUSAL_TAIL = "edgekit only loads tensors and plain containers"
# Opcodes that push a text string (candidates for the module/name operands of STACK_GLOBAL).
_OPCODE_NAMES = {opcode.code: opcode.name for opcode in pickletools.opcodes}
_STRING_OPCODES = frozenset(
    {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"}
)


def safe_torch_load(path: str | Path) -> Any:
    """Load a torch checkpoint onto the CPU with ``weights_only=True`` and nothing else.

    Returns whatever the file holds (typically a ``state_dict``: ``str -> Tensor``), with all
    tensors on the CPU. Raises ModelFileError (one line naming ``path``) when the file is
    missing, not a regular file, empty, truncated or not a torch checkpoint, or when its pickle
    references a global outside torch's weights-only allowlist. Such a pickle is never executed:
    the refusal is torch's restricted unpickler, and the global named in the message comes from
    reading torch's refusal or from a static disassembly of the pickle (``pickletools``).
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: checkpoint file not found")
    if not path.is_file():
        raise ModelFileError(f"{path}: is not a regular file (expected a torch checkpoint .pt/.pth)")
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols >= 4 before refusing them; the refusal is what matters.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _unpickling_error(path, str(exc)) from None
    except EOFError:
        if path.stat().st_size == 0:
            raise ModelFileError(f"{path}: file is empty (0 bytes); expected a torch checkpoint") from None
        raise ModelFileError(_corrupt_message(path)) from None
    except PermissionError as exc:
        raise ModelFileError(f"{path}: cannot be read ({exc.strerror})") from None
    except Exception:  # zip/reader/format errors all mean "not a readable checkpoint"
        raise ModelFileError(_corrupt_message(path)) from None


def load_state_dict_strict(module: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Load ``state_dict`` into ``module`` requiring exactly the same keys and shapes.

    Keys and shapes are compared here, before ``module.load_state_dict``, so that a mismatch is
    reported as one line naming the first offending key (in the model's parameter order for
    missing keys and shape mismatches, in the checkpoint's order for unexpected keys).

    Accepted forms, besides a plain ``name -> Tensor`` mapping:
    - keys prefixed ``module.`` (saved from ``nn.DataParallel``/DDP): the prefix is stripped;
    - a dict wrapping the state_dict under ``state_dict`` or ``model``, if that value is itself
      a mapping of tensors (other entries such as ``optimizer`` or ``epoch`` are ignored);
    - missing ``*.num_batches_tracked`` BatchNorm buffers (older torch and some converters drop
      them): they count training steps only and do not affect inference, so the model keeps its own.

    Raises ModelFileError prefixed with ``source`` (e.g. the file name) on any mismatch.
    """
    model_name = type(module).__name__
    tensors = _unwrap_state_dict(state_dict, source)
    expected = module.state_dict()
    tensors = _strip_data_parallel_prefix(tensors, expected)

    missing = [key for key in expected if key not in tensors and not _is_batch_counter(module, key)]
    unexpected = [key for key in tensors if key not in expected]
    problems = []
    if missing:
        problems.append(f"checkpoint lacks key {missing[0]!r} expected by {model_name}{_and_more(missing)}")
    if unexpected:
        problems.append(f"checkpoint has key {unexpected[0]!r} not in {model_name}{_and_more(unexpected)}")
    if problems:
        raise ModelFileError(f"{source}: " + "; ".join(problems))

    for key, model_tensor in expected.items():
        if key in tensors and tuple(tensors[key].shape) != tuple(model_tensor.shape):
            raise ModelFileError(
                f"{source}: key {key!r} has shape {tuple(tensors[key].shape)} in the checkpoint "
                f"but {tuple(model_tensor.shape)} in the model"
            )

    # Non-finite weights (a diverged run, a corrupt file) export "fine": NaN outputs compare as no
    # error everywhere downstream. Refused here, naming the first such tensor in the model's order.
    for key in expected:
        tensor = tensors.get(key)
        if tensor is None or not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        if bool(torch.isfinite(tensor).all()):
            continue
        nan = int(torch.isnan(tensor).sum())
        inf = int(torch.isinf(tensor).sum())
        held = " and ".join(f"{count} {word} value{'s' if count != 1 else ''}"
                            for count, word in ((nan, "NaN"), (inf, "Inf")) if count)
        raise ModelFileError(f"{source}: tensor {key!r} holds {held} (of {tensor.numel()}); the weights are not "
                             "finite (a diverged training run or a corrupt file): use a checkpoint from a good epoch")

    complete = OrderedDict(tensors)
    for key in expected:
        if key not in complete:  # only tolerated num_batches_tracked buffers reach this point
            complete[key] = expected[key]
    metadata = getattr(tensors, "_metadata", None)
    if metadata is not None:
        # Per-module version numbers steer legacy-format conversions in _load_from_state_dict.
        complete._metadata = metadata  # type: ignore[attr-defined]
    try:
        module.load_state_dict(complete, strict=True)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied into the parameter
        # torch's message is "Error(s) in loading state_dict for X:" followed by one line per problem.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[-1] if lines else type(exc).__name__
        raise ModelFileError(f"{source}: could not load into {model_name} ({detail})") from None


# --- state_dict shape helpers ----------------------------------------------------------------


def _is_tensor_mapping(value: Any) -> bool:
    return isinstance(value, Mapping) and len(value) > 0 and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items()
    )


def _unwrap_state_dict(state_dict: Any, source: str) -> Mapping[str, Tensor]:
    if _is_tensor_mapping(state_dict):
        return state_dict
    if isinstance(state_dict, Mapping):
        for key in _WRAPPER_KEYS:
            if key in state_dict and _is_tensor_mapping(state_dict[key]):
                return state_dict[key]
        keys = sorted(str(k) for k in state_dict)[:8]
        raise ModelFileError(
            f"{source}: expected a state_dict (parameter name -> tensor) or a dict holding one under "
            f"{' or '.join(repr(k) for k in _WRAPPER_KEYS)}; got a dict with keys {keys}"
        )
    raise ModelFileError(
        f"{source}: expected a state_dict (parameter name -> tensor), got {type(state_dict).__name__}"
    )


def _strip_data_parallel_prefix(tensors: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    """Drop a ``module.`` prefix carried by every key, unless the model's own keys carry it too."""
    prefix = _DATA_PARALLEL_PREFIX
    if not all(key.startswith(prefix) for key in tensors):
        return tensors
    if expected and all(key.startswith(prefix) for key in expected):
        return tensors
    stripped: OrderedDict[str, Tensor] = OrderedDict((key[len(prefix):], value) for key, value in tensors.items())
    metadata = getattr(tensors, "_metadata", None)
    if metadata is not None:
        stripped._metadata = OrderedDict(  # type: ignore[attr-defined]
            (key[len(prefix):] if key.startswith(prefix) else key, value) for key, value in metadata.items()
        )
    return stripped


def _is_batch_counter(module: nn.Module, key: str) -> bool:
    owner_name, _, buffer_name = key.rpartition(".")
    if buffer_name != "num_batches_tracked":
        return False
    try:
        owner = module.get_submodule(owner_name) if owner_name else module
    except AttributeError:
        return False
    return isinstance(owner, nn.modules.batchnorm._BatchNorm)


def _and_more(keys: list[str]) -> str:
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""


# --- error classification for torch.load ------------------------------------------------------


def _corrupt_message(path: Path) -> str:
    return f"{path} is truncated or corrupt (not a readable torch zip archive)"


def _unpickling_error(path: Path, torch_message: str) -> ModelFileError:
    """Turn torch's multi-paragraph weights-only refusal into one line naming the culprit.

    Torch's own message also suggests ``weights_only=False``; edgekit never does that, so the
    message is rebuilt rather than forwarded.
    """
    named = re.search(r"GLOBAL ([\w.]+)", torch_message)
    if named:
        return _refusal(path, named.group(1))
    pickles = _object_pickles(path)
    if pickles is None:
        return ModelFileError(_corrupt_message(path))
    allowed = _torch_allowed_globals()
    found = [name for data in pickles for name in _globals_in_pickle(data)]
    unsafe = [name for name in found if name not in allowed]
    if unsafe:
        return _refusal(path, unsafe[0])
    # No offending global: torch refused an instruction, typically FRAME from pickle protocol >= 4,
    # which torch's restricted unpickler does not read even around plain tensors.
    operand = re.search(r"Unsupported operand (\d+)", torch_message)
    instruction = _OPCODE_NAMES.get(chr(int(operand.group(1))), operand.group(1)) if operand else "an instruction"
    return ModelFileError(
        f"refused to unpickle {path}: it uses pickle {instruction}, which torch's weights-only loader does not "
        f"accept (re-save it with torch.save and its default pickle_protocol=2); {_REFUSAL_TAIL}"
    )


def _refusal(path: Path, global_name: str) -> ModelFileError:
    return ModelFileError(
        f"refused to unpickle {path}: it references {global_name} which could execute code; {_REFUSAL_TAIL}"
    )


def _object_pickles(path: Path) -> list[bytes] | None:
    """The pickle streams of a torch file that hold objects, or None if none parse as pickles.

    Zip checkpoints keep them in ``<archive>/data.pkl``; legacy files and raw pickles are a
    sequence of pickles at the start of the file. Nothing here unpickles: the bytes are only
    disassembled by ``pickletools``.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
                blobs = [archive.read(names[0])] if names else []
        else:
            with open(path, "rb") as handle:
                blobs = list(_consecutive_pickles(handle.read(_MAX_PICKLE_SCAN_BYTES)))
    except Exception:  # unreadable archive member (bad CRC, zlib error, I/O): treat as corrupt
        return None
    return blobs or None


def _consecutive_pickles(data: bytes) -> Iterator[bytes]:
    """Yield complete pickles found back to back from the start of ``data``; stop at the first non-pickle."""
    offset = 0
    while offset < len(data):
        end = _pickle_end(data[offset:])
        if end is None:
            return
        yield data[offset:offset + end]
        offset += end


def _pickle_end(data: bytes) -> int | None:
    """Length of the pickle at the start of ``data`` (through its STOP opcode), or None if not a pickle."""
    try:
        for opcode, _arg, position in pickletools.genops(io.BytesIO(data)):
            if opcode.name == "STOP":
                # genops gives no position only for a stream without tell(); a BytesIO has one
                return None if position is None else position + 1
    except Exception:  # any disassembly failure means "not a pickle here"
        return None
    return None


def _globals_in_pickle(data: bytes) -> list[str]:
    """Names ``module.qualname`` of every global a pickle would import, in order (static, no execution).

    GLOBAL/INST carry the name inline. STACK_GLOBAL (protocol >= 4) pops module and name pushed
    just before it, possibly fetched back from the memo, so string pushes and the memo are tracked.
    """
    names: list[str] = []
    recent: list[Any] = []  # values pushed by recent ops (strings or None), enough for STACK_GLOBAL
    memo: dict[int, Any] = {}
    try:
        for opcode, arg, _position in pickletools.genops(io.BytesIO(data)):
            name = opcode.name
            if name in ("GLOBAL", "INST"):
                names.append(str(arg).replace(" ", "."))
                recent.append(None)
            elif name == "STACK_GLOBAL":
                if len(recent) >= 2 and isinstance(recent[-2], str) and isinstance(recent[-1], str):
                    names.append(f"{recent[-2]}.{recent[-1]}")
                else:
                    names.append("<dynamically built global>")
                recent.append(None)
            elif name in _STRING_OPCODES:
                recent.append(arg.decode("latin-1") if isinstance(arg, bytes) else str(arg))
            elif name == "MEMOIZE":
                memo[len(memo)] = recent[-1] if recent else None
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[cast(int, arg)] = recent[-1] if recent else None  # pickletools decodes these memo indices as int
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                recent.append(memo.get(cast(int, arg)))
            elif name not in ("FRAME", "PROTO"):
                recent.append(None)
    except Exception:  # a broken tail still leaves the globals seen so far
        pass
    return names


def _torch_allowed_globals() -> set[str]:
    """Globals torch's weights-only unpickler accepts (private API; empty set if it moved)."""
    try:
        from torch import _weights_only_unpickler

        allowed = set(_weights_only_unpickler._get_allowed_globals())
        allowed |= set(_weights_only_unpickler._get_user_allowed_globals())
        return allowed
    except Exception:
        return set()


def pickle_globals(path: Path) -> list[str]:
    """Every global (``module.qualname``) the object pickles of a torch file name, in order; empty when the
    file is not a readable pickle or zip checkpoint. Static disassembly only: nothing is unpickled."""
    pickles = _object_pickles(Path(path))
    return [name for data in pickles or [] for name in _globals_in_pickle(data)]
