"""Writing an artifact folder atomically, one writer at a time.

Files are written into a temporary sibling folder ``.<name>.<pid>.<token>.partial``; only when
everything succeeded is the manifest (with every file's sha256) written and the folder moved into
place. The rules:

- one writer per destination: a lock file ``.<name>.lock`` next to it (``fcntl.flock``, non
  blocking), held from before the first byte is written until the commit is done; a second
  writer fails at once with one line naming the folder (``DestinationLock``);
- an existing artifact is replaced only when asked (``overwrite`` / the CLI's ``--force``), and
  ``claim_destination`` checks that before any work starts;
- staging, the swap and the signal handling are :mod:`edgekit.atomic_io`'s (the one atomic-write
  module): every file is fsynced, then the folder is swapped in so the destination is never
  missing (``renameat2(RENAME_EXCHANGE)``, else two renames back to back); the old folder is
  deleted after the swap;
- SIGTERM becomes an exception (``Terminated``) for the duration of a write, so the cleanup runs
  exactly as for Ctrl-C; SIGINT/SIGTERM are held back during the swap itself. A writer killed
  outright (SIGKILL) leaves its partial folder, whose name carries its pid: the next writer to
  the same destination removes partial folders of processes that are gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from edgekit.atomic_io import (  # re-exported: the CLI and tests import them from here
    Terminated,
    clean_stale,
    interruptible,
    make_staging_dir,
    signals_held,
    swap_into_place,
)
from edgekit.errors import EdgekitError, OutputError
from edgekit.runtime.artifact import MANIFEST_NAME, Manifest, ModelEntry, sha256_file
from edgekit.spec import ModelSpec

__all__ = ["ArtifactWriter", "DestinationLock", "Terminated", "claim_destination", "clean_stale", "interruptible",
           "make_staging_dir", "signals_held", "swap_into_place"]

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

    def commit(self, spec: ModelSpec, models: Iterable[ModelEntry], info: dict[str, Any],
               runtime: dict[str, Any] | None = None) -> Manifest:
        """Hash every file, write edgekit.json, and swap the folder into place. ``runtime``: what the device
        runs with (``Manifest.runtime``, e.g. the target's threads)."""
        if self._tmp is None:
            raise RuntimeError("ArtifactWriter.commit called outside its with-block")
        models = tuple(models)
        files = {p.relative_to(self._tmp).as_posix(): sha256_file(p)
                 for p in sorted(self._tmp.rglob("*")) if p.is_file()}
        for entry in models:
            if entry.file not in files:
                raise EdgekitError(f"artifact: model file {entry.file!r} was never written")
        manifest = Manifest(spec=spec, models=models, files=files, info=info, runtime=dict(runtime or {}))
        (self._tmp / MANIFEST_NAME).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.chmod(self._tmp, 0o755)
        self.swap = swap_into_place(self._tmp, self.out_dir)
        self._committed = True
        return manifest

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            if self._tmp is not None and not self._committed:
                with signals_held():
                    shutil.rmtree(self._tmp, ignore_errors=True)
        finally:
            self._stack.close()
