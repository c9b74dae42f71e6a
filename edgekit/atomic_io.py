"""Writing outputs all or nothing: single files and whole folders. Standard library only (the device-side
commands use it too).

Files (``--json``, ``bench.json``, a saved image): :func:`write_bytes_atomic` / :func:`write_text_atomic`
write a hidden temporary file in the same folder, fsync it and rename it over the destination
(``os.replace`` is atomic within one file system); :func:`atomic_path` does the same for a library that
writes the file itself (``onnx.save``, ``torch.save``), :class:`PartialFile` for a file written frame by frame
(a video, JSON Lines) and published when the stream ends. A full disk, a permission error half-way or an
interrupt leaves the previous file (or no file), and the temporary file is removed.

Folders (artifacts, drift reports): :func:`make_staging_dir` makes a hidden sibling
``.<name>.<pid>.<token>.partial``; :func:`swap_into_place` fsyncs it and swaps it in so the destination
is never missing (``renameat2(RENAME_EXCHANGE)`` on Linux, else two renames back to back, the old
folder first moved aside); :func:`clean_stale` removes the siblings of writers that died (SIGKILL).
:func:`interruptible` turns SIGTERM into :class:`Terminated` for the duration of a write so cleanup
runs exactly as for Ctrl-C, and :func:`signals_held` holds SIGINT/SIGTERM back during a swap.
Locking one writer per destination and the artifact's rules (``--force``) are in
:mod:`edgekit.convert.artifact`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# --- files -------------------------------------------------------------------------------------


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` all or nothing (see the module docstring). Returns ``path``.

    Raises OSError (e.g. ENOSPC) after removing the temporary file; the destination is untouched then.
    """
    path = Path(path)
    with atomic_path(path) as temporary, open(temporary, "wb") as stream:
        stream.write(data)
    return path


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """:func:`write_bytes_atomic` of ``text`` encoded with ``encoding``."""
    return write_bytes_atomic(path, text.encode(encoding))


class PartialFile:
    """A file written over time (a video, JSON Lines) under a hidden temporary name next to ``path``, published
    at ``path`` by :meth:`commit` (fsync, mode 0644, rename, folder fsync) or removed by :meth:`discard`.

    The temporary name is ``.<name>.<random>.partial``; with ``suffix_last`` ``.<stem>.<random>.partial<suffix>``
    (OpenCV picks a video's container from the suffix).
    """

    def __init__(self, path: str | Path, suffix_last: bool = False) -> None:
        self.path = Path(path)
        # `--json runs/exp/results.json` makes runs/exp as `-o` makes its folder (the CLI checked, before the work,
        # that the nearest existing folder is writable); a discarded file takes the folders it made with it
        self._made: list[Path] = []  # deepest first
        folder = self.path.parent
        while not folder.exists() and folder != folder.parent:
            self._made.append(folder)
            folder = folder.parent
        self.path.parent.mkdir(parents=True, exist_ok=True)
        prefix, suffix = ((f".{self.path.stem}.", f".partial{self.path.suffix}") if suffix_last
                          else (f".{self.path.name}.", ".partial"))
        handle, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=self.path.parent)
        os.close(handle)
        self.partial = Path(name)

    def commit(self) -> Path:
        """Publish the written file at ``path`` (the caller has closed its own handle); returns ``path``."""
        with open(self.partial, "rb+") as stream:
            os.fsync(stream.fileno())
        os.chmod(self.partial, 0o644)
        os.replace(self.partial, self.path)
        _fsync_dir(self.path.parent)
        return self.path

    def discard(self) -> None:
        self.partial.unlink(missing_ok=True)
        for folder in self._made:
            try:
                folder.rmdir()  # only while empty: another output may have been written there since
            except OSError:
                break


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path`` for the block to write; on success it is fsynced and renamed to
    ``path`` (mode 0644), on any exception (KeyboardInterrupt included) it is removed and ``path`` is
    left as it was. ``with atomic_path(out) as tmp: onnx.save(model, str(tmp))``."""
    partial = PartialFile(path)
    try:
        yield partial.partial
        partial.commit()
    except BaseException:
        partial.discard()
        raise


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; best effort (some file systems cannot fsync a folder, and the
    rename has happened either way)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(folder: str | Path) -> None:
    """fsync every file and folder under ``folder`` (and ``folder``): what a later rename publishes is on disk."""
    folder = Path(folder)
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as stream:
                os.fsync(stream.fileno())
        elif path.is_dir():
            _fsync_dir(path)
    _fsync_dir(folder)


# --- signals -----------------------------------------------------------------------------------


class Terminated(BaseException):
    """SIGTERM arrived during a write. A BaseException (like KeyboardInterrupt), so the broad
    ``except Exception`` blocks of conversion code do not swallow it and every cleanup runs."""


class _RecordingHandler:
    """A signal handler that records the signal in ``received`` and raises its exception: ``Terminated`` for
    SIGTERM, KeyboardInterrupt for SIGINT."""

    def __init__(self, received: list[int]) -> None:
        self.received = received

    def __call__(self, signum: int, frame: object) -> None:
        self.received.append(signum)
        raise _signal_exception(signum)


def _signal_exception(signum: int) -> BaseException:
    """What ``interruptible`` raises for a signal: ``Terminated`` for SIGTERM, KeyboardInterrupt for SIGINT."""
    return Terminated("terminated") if signum == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """For the duration: SIGTERM raises ``Terminated`` and SIGINT raises KeyboardInterrupt (also in
    processes that started with SIGINT at its default). Handlers are restored on exit; outside the
    main thread (where Python cannot install handlers) this does nothing.

    A library may catch the exception a handler raised and raise its own instead: a SIGTERM that landed in
    ONNX Runtime's session creation came out as "initialization failed", which conversion code reported as a
    model ONNX Runtime cannot run (exit 2, a wrong reason). So the handlers record the signal, and an exception
    other than Terminated / KeyboardInterrupt leaving the block after a signal is raised as the signal's own
    exception (the library's one chained as its cause).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    # nested blocks share the outermost block's record: the exception may leave only through an inner block (the
    # outer one can be a resource its framework closes without the exception)
    outer = [h.received for h in previous.values() if isinstance(h, _RecordingHandler)]
    received: list[int] = outer[0] if outer else []
    if previous[signal.SIGTERM] in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _RecordingHandler(received))
    if previous[signal.SIGINT] in (signal.SIG_DFL, None, signal.default_int_handler):
        signal.signal(signal.SIGINT, _RecordingHandler(received))
    try:
        yield
    except (Terminated, KeyboardInterrupt):
        raise
    except BaseException as exc:
        if not received:
            raise
        raise _signal_exception(received[0]) from exc
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM wait until the block is over (a swap or a cleanup is never cut in half).

    Python runs signal handlers in the main thread whichever thread the kernel picked, so the
    handlers themselves are swapped for a recorder (a signal mask would not hold back a signal
    delivered to one of torch's threads); the first recorded signal is acted on afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if pending:
            handler = previous[signal.Signals(pending[0])]
            if callable(handler):
                handler(pending[0], None)  # raises Terminated / KeyboardInterrupt now the swap is whole
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), pending[0])  # the default action (termination), just later


# --- the folder swap ---------------------------------------------------------------------------

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _renameat2() -> Any:
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap the two existing paths ``a`` and ``b``; False where the OS or file system cannot."""
    function = _renameat2()
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # no renameat2 in this kernel, or a file system without RENAME_EXCHANGE
    raise OSError(code, os.strerror(code), str(b))


def _sibling(out_dir: Path, kind: str) -> Path:
    """A unique hidden sibling ``.<name>.<pid>.<token>.<kind>`` (the pid lets a later writer see it is stale)."""
    return out_dir.with_name(f".{out_dir.name}.{os.getpid()}.{secrets.token_hex(4)}.{kind}")


def make_staging_dir(out_dir: str | Path) -> Path:
    """A new empty staging folder next to ``out_dir`` (same file system, so the swap is a rename).

    Made with mkdir, so it has the umask's permissions (an artifact or report is meant to be shared).
    """
    out_dir = Path(out_dir)
    for _ in range(100):
        staging = _sibling(out_dir, "partial")
        try:
            staging.mkdir()
            return staging
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {out_dir}")


def swap_into_place(staging: str | Path, out_dir: str | Path) -> str:
    """Move the finished folder ``staging`` to ``out_dir``, replacing a folder there as a whole.

    ``out_dir`` is never missing while it is replaced: ``renameat2(RENAME_EXCHANGE)`` swaps the two
    folders in one step; where that is unavailable the old folder is renamed aside and the new one
    renamed in right after (moved back if that fails). The old folder is deleted afterwards.
    Every file in ``staging`` is fsynced first (a crash right after the swap must not leave 0-byte
    files under the final name). SIGINT/SIGTERM are held back until the swap is done. Returns how:
    "new", "exchange" or "rename".
    """
    staging, out_dir = Path(staging), Path(out_dir)
    fsync_tree(staging)  # the files are on disk before the rename makes them the destination
    old = None
    with signals_held():
        if not out_dir.exists():
            os.rename(staging, out_dir)
            how = "new"
        elif _exchange(staging, out_dir):
            old, how = staging, "exchange"  # the previous folder now sits at the staging path
        else:
            old, how = _sibling(out_dir, "old"), "rename"
            os.rename(out_dir, old)
            try:
                os.rename(staging, out_dir)
            except BaseException:
                os.rename(old, out_dir)
                raise
        _fsync_dir(out_dir.parent)  # the rename itself survives a power cut
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return how


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def clean_stale(out_dir: str | Path) -> list[Path]:
    """Remove ``.<name>.<pid>.<token>.partial|old`` siblings of ``out_dir`` left by dead processes.

    Called with the destination's lock held, so no live writer of this process owns one either.
    """
    out_dir = Path(out_dir)
    pattern = re.compile(rf"^\.{re.escape(out_dir.name)}\.(\d+)\.[0-9a-f]+\.(partial|old)$")
    removed: list[Path] = []
    try:
        entries = list(out_dir.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match and (int(match.group(1)) == os.getpid() or not _pid_alive(int(match.group(1)))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


__all__ = [
    "Terminated",
    "atomic_path",
    "clean_stale",
    "fsync_tree",
    "interruptible",
    "make_staging_dir",
    "signals_held",
    "swap_into_place",
    "write_bytes_atomic",
    "write_text_atomic",
]
