"""Writing an artifact folder atomically, one writer at a time.

Files are written into a temporary sibling folder ``.<name>.<pid>.<token>.partial``; only when
everything succeeded is the manifest (with every file's sha256) written and the folder moved into
place. The rules:

- one writer per destination: a lock file ``.<name>.lock`` next to it (``fcntl.flock``, non
  blocking), held from before the first byte is written until the commit is done; a second
  writer fails at once with one line naming the folder (``DestinationLock``);
- an existing artifact is replaced only when asked (``overwrite`` / the CLI's ``--force``), and
  ``claim_destination`` checks that before any work starts;
- the destination is never missing: the finished folder is swapped in with one
  ``renameat2(RENAME_EXCHANGE)`` (Linux; atomic), else with two renames back to back (the old
  folder first moved aside to a unique name); the old folder is deleted after the swap;
- SIGTERM becomes an exception (``Terminated``) for the duration of a write, so the cleanup runs
  exactly as for Ctrl-C; SIGINT/SIGTERM are held back during the swap itself. A writer killed
  outright (SIGKILL) leaves its partial folder, whose name carries its pid: the next writer to
  the same destination removes partial folders of processes that are gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import signal
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError, OutputError
from edgekit.runtime.artifact import MANIFEST_NAME, Manifest, ModelEntry, sha256_file
from edgekit.spec import ModelSpec


class Terminated(BaseException):
    """SIGTERM arrived during a write. A BaseException (like KeyboardInterrupt), so the broad
    ``except Exception`` blocks of conversion code do not swallow it and every cleanup runs."""


# --- signals ---------------------------------------------------------------------------------


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated("terminated")


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """For the duration: SIGTERM raises ``Terminated`` and SIGINT raises KeyboardInterrupt (also in
    processes that started with SIGINT at its default). Handlers are restored on exit; outside the
    main thread (where Python cannot install handlers) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    if previous[signal.SIGTERM] in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _raise_terminated)
    if previous[signal.SIGINT] in (signal.SIG_DFL, None):
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
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
            handler = previous[pending[0]]
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
    SIGINT/SIGTERM are held back until the swap is done. Returns how: "new", "exchange" or "rename".
    """
    staging, out_dir = Path(staging), Path(out_dir)
    old = None
    with _signals_held():
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
    removed = []
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


# --- the destination lock ----------------------------------------------------------------------

#: locks this process holds: (lock path, thread id) -> [fd, depth]; a thread may re-enter its own
#: lock (the CLI claims the destination, then the converter's ArtifactWriter enters it again)
_HELD: dict[tuple[str, int], list[int]] = {}


class DestinationLock:
    """Exclusive, non-blocking lock on an output folder: ``.<name>.lock`` next to it (flock).

    A second process (or thread) fails at once with ``OutputError`` naming the folder and the
    holder's pid. On first acquisition, stale partial folders of dead writers are removed. The
    lock file is deleted on release (the inode check on acquisition makes that race free).
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir).absolute()
        self.lock_path = self.out_dir.with_name(f".{self.out_dir.name}.lock")
        self._key = (str(self.lock_path), threading.get_ident())

    def __enter__(self) -> DestinationLock:
        import fcntl

        if self._key in _HELD:
            _HELD[self._key][1] += 1
            return self
        try:
            self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{self.out_dir.parent}: cannot write the artifact there ({exc.strerror or exc})") from None
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(f"{self.out_dir.parent}: cannot write the artifact there "
                                  f"({exc.strerror or exc})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode("ascii", "replace").strip()
                os.close(fd)
                raise OutputError(f"{self.out_dir}: another process{f' (pid {holder})' if holder.isdigit() else ''} "
                                  "is writing this artifact; wait for it to finish or choose another output "
                                  "folder") from None
            # the previous holder deletes the file on release: make sure we locked the file still there
            try:
                same = os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _HELD[self._key] = [fd, 1]
        clean_stale(self.out_dir)
        return self

    def __exit__(self, *exc: object) -> None:
        held = _HELD[self._key]
        held[1] -= 1
        if held[1]:
            return
        del _HELD[self._key]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.lock_path)
        os.close(held[0])


def _check_destination(out_dir: Path, overwrite: bool) -> None:
    """``out_dir`` may be written: absent, empty, or an edgekit artifact to replace (with ``overwrite``)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: exists and is not a folder; choose another output path")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not (out_dir / MANIFEST_NAME).is_file():
        raise OutputError(f"{out_dir}: folder exists, is not empty and is not an edgekit artifact; "
                          "refusing to overwrite it")
    if not overwrite:
        raise OutputError(f"{out_dir}: an artifact already exists there; pass --force to replace it "
                          "(or choose another output folder)")


@contextlib.contextmanager
def claim_destination(out_dir: str | Path, overwrite: bool) -> Iterator[Path]:
    """Hold ``out_dir``'s lock for a whole command and check it may be written, before any work.

    The ``ArtifactWriter`` the work opens later in the same thread re-enters this lock. SIGTERM
    raises ``Terminated`` for the duration. Yields the absolute folder path.
    """
    out = Path(out_dir).absolute()
    with interruptible(), DestinationLock(out):
        _check_destination(out, overwrite)
        yield out


# --- the writer --------------------------------------------------------------------------------


class ArtifactWriter:
    """Context manager: ``with ArtifactWriter(out) as w: path = w.path("model.onnx"); …; w.commit(spec, entries, info)``.

    If the block raises (SIGTERM included), or ``commit`` is never called, the temporary folder is
    removed and ``out`` is left as it was. ``overwrite=False``: an existing artifact at ``out`` is
    an ``OutputError`` on entry. A second concurrent writer to ``out`` is an ``OutputError`` too.
    ``swap`` tells, after commit, how the folder went into place ("new", "exchange", "rename").
    """

    def __init__(self, out_dir: str | Path, overwrite: bool = True) -> None:
        self.out_dir = Path(out_dir).absolute()
        self.overwrite = overwrite
        self.swap = ""
        self._tmp: Path | None = None
        self._committed = False
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> ArtifactWriter:
        _check_destination(self.out_dir, overwrite=True)  # wrong kind of path: fail before locking
        with self._stack as stack:
            stack.enter_context(interruptible())
            stack.enter_context(DestinationLock(self.out_dir))
            _check_destination(self.out_dir, self.overwrite)  # under the lock: nobody replaced it meanwhile
            try:
                self._tmp = make_staging_dir(self.out_dir)
            except OSError as exc:
                raise OutputError(f"{self.out_dir.parent}: cannot write the artifact there "
                                  f"({exc.strerror or exc})") from None
            self._stack = stack.pop_all()  # keep the lock and the handlers until __exit__
        return self

    def path(self, relative: str) -> Path:
        """Where to write the file ``relative`` inside the artifact (in the temporary folder)."""
        if self._tmp is None:
            raise RuntimeError("ArtifactWriter used outside its with-block")
        target = self._tmp / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def commit(self, spec: ModelSpec, models: Iterable[ModelEntry], info: dict[str, Any]) -> Manifest:
        """Hash every file, write edgekit.json, and swap the folder into place."""
        if self._tmp is None:
            raise RuntimeError("ArtifactWriter.commit called outside its with-block")
        models = tuple(models)
        files = {p.relative_to(self._tmp).as_posix(): sha256_file(p)
                 for p in sorted(self._tmp.rglob("*")) if p.is_file()}
        for entry in models:
            if entry.file not in files:
                raise EdgekitError(f"artifact: model file {entry.file!r} was never written")
        manifest = Manifest(spec=spec, models=models, files=files, info=info)
        (self._tmp / MANIFEST_NAME).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.chmod(self._tmp, 0o755)
        self.swap = swap_into_place(self._tmp, self.out_dir)
        self._committed = True
        return manifest

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            if self._tmp is not None and not self._committed:
                with _signals_held():
                    shutil.rmtree(self._tmp, ignore_errors=True)
        finally:
            self._stack.close()
