"""Artifact commits (issue 13, "Artifact commits"): one writer per destination (a lock next to it),
no silent replacement without --force, the destination folder never missing while it is replaced,
and no partial folder left behind by SIGINT/SIGTERM (stale ones of dead processes are cleaned)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgekit.cli import main
from edgekit.convert.artifact import ArtifactWriter
from edgekit.errors import OutputError
from edgekit.runtime.artifact import MANIFEST_NAME, ModelEntry, read_manifest, sha256_file
from tests.conftest import REPO_ROOT, ZOO_DIR
from tests.onnx_graphs import fastestdet_like_spec

PROCESSES = 6
ROUNDS = 3
#: bound on each child's lock retries in the forced test (a child waits at most this many * 5 ms)
MAX_ATTEMPTS = 4000


def _commit(out: Path, payload: bytes, overwrite: bool | None = None, hold_s: float = 0.0) -> None:
    kwargs = {} if overwrite is None else {"overwrite": overwrite}
    with ArtifactWriter(out, **kwargs) as writer:
        writer.path("model.onnx").write_bytes(payload)
        writer.path("sub/extra.bin").write_bytes(payload[::-1])
        if hold_s:
            time.sleep(hold_s)
        writer.commit(fastestdet_like_spec(), [ModelEntry("onnxruntime", "fp32", "model.onnx")], {"producer": "test"})


def _leftovers(parent: Path, keep: str) -> list[str]:
    return sorted(name for name in os.listdir(parent) if name != keep)


# --- children of the multiprocessing tests (module level: picklable) ---------------------------------


def _child_exclusive(out: str, start, index: int, results) -> None:
    start.wait(30)
    try:
        _commit(Path(out), f"writer {index}".encode() * 1000, overwrite=False, hold_s=0.05)
        results.put((index, "ok"))
    except OutputError as exc:
        results.put((index, f"error: {exc}"))
    except Exception as exc:  # anything else is a defect the parent reports
        results.put((index, f"unexpected {type(exc).__name__}: {exc}"))


def _child_forced(out: str, start, index: int, commits: int, results) -> None:
    start.wait(30)
    done, errors = 0, []
    for _ in range(MAX_ATTEMPTS):
        if done == commits:
            break
        try:
            _commit(Path(out), f"writer {index} commit {done}".encode() * 5000)
            done += 1
        except OutputError as exc:
            if "another process" not in str(exc):
                errors.append(str(exc))
                break
            time.sleep(0.005)  # the lock is held: try again (the commits happen in sequence)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            break
    results.put((index, done, errors))


def _start(target, args_list) -> list:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=target, args=args) for args in args_list]
    for proc in procs:
        proc.start()
    return procs


def _join(procs) -> None:
    for proc in procs:
        proc.join(120)
        if proc.is_alive():
            proc.kill()
            pytest.fail("a writer process hung")


def test_concurrent_writers_without_force_exactly_one_wins(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for round_ in range(ROUNDS):
        out = tmp_path / f"round{round_}" / "art"
        start, results = ctx.Event(), ctx.Queue()
        procs = _start(_child_exclusive, [(str(out), start, i, results) for i in range(PROCESSES)])
        start.set()
        outcome = [results.get(timeout=120) for _ in procs]
        _join(procs)
        winners = [i for i, r in outcome if r == "ok"]
        assert len(winners) == 1, outcome
        for _, message in outcome:
            assert message == "ok" or ("another process" in message or "already exists" in message), message
        # the winner's files, whole, and nothing else next to them
        assert (out / "model.onnx").read_bytes() == f"writer {winners[0]}".encode() * 1000
        assert read_manifest(out).files["model.onnx"] == sha256_file(out / "model.onnx")
        assert _leftovers(out.parent, "art") == []


def test_forced_writers_all_succeed_in_sequence_and_the_folder_is_never_missing(tmp_path):
    out = tmp_path / "art"
    _commit(out, b"first")
    missing, stop = [], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if not (out / MANIFEST_NAME).is_file():
                missing.append(time.monotonic())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Event(), ctx.Queue()
    try:
        procs = _start(_child_forced, [(str(out), start, i, ROUNDS, results) for i in range(PROCESSES)])
        start.set()
        outcome = [results.get(timeout=300) for _ in procs]
        _join(procs)
    finally:
        stop.set()
        watcher.join(10)
    assert all(done == ROUNDS and not errors for _, done, errors in outcome), outcome
    assert not missing, f"the artifact folder was missing {len(missing)} times while being replaced"
    manifest = read_manifest(out)
    assert manifest.files["model.onnx"] == sha256_file(out / "model.onnx")
    assert manifest.files["sub/extra.bin"] == sha256_file(out / "sub" / "extra.bin")
    assert _leftovers(tmp_path, "art") == []


def test_second_writer_gets_one_line_lock_error(tmp_path):
    out = tmp_path / "art"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from edgekit.convert.artifact import ArtifactWriter\n"
         f"with ArtifactWriter({str(out)!r}) as w:\n"
         "    print('holding', flush=True); sys.stdin.readline()\n"],
        cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(OutputError) as info:
            _commit(out, b"second")
        message = str(info.value)
        assert "\n" not in message and str(out) in message and "another process" in message, message
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    assert _leftovers(tmp_path, "art") == []  # nothing committed, and the holder's partial is gone


def test_existing_artifact_is_not_replaced_without_overwrite(tmp_path):
    out = tmp_path / "art"
    _commit(out, b"first")
    with pytest.raises(OutputError, match="already exists.*--force"):
        _commit(out, b"second", overwrite=False)
    assert (out / "model.onnx").read_bytes() == b"first"
    assert _leftovers(tmp_path, "art") == []


SLOW_WRITER = """
import sys, time
from pathlib import Path
from edgekit.convert.artifact import ArtifactWriter, Terminated
from edgekit.runtime.artifact import ModelEntry
from tests.onnx_graphs import fastestdet_like_spec
out = Path(sys.argv[1])
try:
    with ArtifactWriter(out) as writer:
        with open(writer.path("model.onnx"), "wb") as handle:
            print("writing", flush=True)
            for _ in range(2000):  # a large artifact written slowly: the signal lands mid-write
                handle.write(b"x" * 65536)
                time.sleep(0.01)
        writer.commit(fastestdet_like_spec(), [ModelEntry("onnxruntime", "fp32", "model.onnx")], {})
except (KeyboardInterrupt, Terminated) as exc:  # SIGINT / SIGTERM, after the writer cleaned up
    print(f"interrupted: {type(exc).__name__}", file=sys.stderr)
    sys.exit(130)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_write_leaves_no_partial_folder(tmp_path, sig):
    out = tmp_path / "art"
    _commit(out, b"previous")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(out)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert _leftovers(tmp_path, "art") == []
    assert (out / "model.onnx").read_bytes() == b"previous"  # the previous artifact is untouched


def test_stale_partial_of_a_killed_writer_is_cleaned_at_the_next_commit(tmp_path):
    out = tmp_path / "art"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(out)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()  # SIGKILL: nothing can clean up
    proc.communicate(timeout=60)
    stale = [name for name in _leftovers(tmp_path, "art") if name != ".art.lock"]  # a lock file is harmless
    assert stale and all(f".art.{proc.pid}." in name and name.endswith(".partial") for name in stale), stale
    _commit(out, b"next")
    assert _leftovers(tmp_path, "art") == []
    assert (out / "model.onnx").read_bytes() == b"next"


# --- the CLI: --force, checked before any work; SIGTERM prints one line -------------------------------


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_export_and_convert_refuse_an_existing_artifact_before_any_work(tmp_path, capsys):
    out = tmp_path / "art"
    _commit(out, b"previous")
    for argv in (["export", ZOO_DIR / "yolov8.pt", "-o", out],
                 ["convert", ZOO_DIR / "yolov8.pt", "--target", "intel-cpu", "-o", out]):
        code, stdout, err = run_cli(argv, capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code != 0 and len(lines) == 1 and lines[0].startswith("error: "), err
        assert str(out) in lines[0] and "--force" in lines[0]
        assert "exporting" not in stdout and "converting" not in stdout  # no work started
    assert (out / "model.onnx").read_bytes() == b"previous"


def test_export_with_force_replaces_and_sigterm_prints_one_line(tmp_path, capsys):
    out = tmp_path / "art"
    _commit(out, b"previous")
    code, _, err = run_cli(["export", ZOO_DIR / "yolov8.pt", "-o", out, "--force"], capsys)
    assert code == 0, err
    assert read_manifest(out).spec.family == "yolov8"
    assert _leftovers(tmp_path, "art") == []

    fresh = tmp_path / "fresh"
    proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "export", str(ZOO_DIR / "yolov8.pt"), "-o", str(fresh)],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("exporting")
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130 and lines == ["error: interrupted"], err
    assert _leftovers(tmp_path, "art") == []  # no fresh artifact, no partial, no lock file


def _signal_wrapped_by_a_library(signum: int):
    """A stand-in for a library call that catches the exception a signal handler raised inside it and raises its own:
    ONNX Runtime's session creation turned a SIGTERM that landed in it into "initialization failed" (CI, a829acf)."""

    def call(*args, **kwargs):
        try:
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler raises here, at the next bytecode
        except BaseException as exc:
            raise RuntimeError("initialization failed") from exc
        raise AssertionError("the signal handler did not run")

    return call


@pytest.mark.parametrize("signum, exception", [(signal.SIGTERM, "Terminated"), (signal.SIGINT, "KeyboardInterrupt")])
def test_interruptible_raises_the_signal_a_library_wrapped(signum, exception):
    from edgekit.atomic_io import interruptible

    with pytest.raises(BaseException) as raised, interruptible():
        _signal_wrapped_by_a_library(signum)()
    assert type(raised.value).__name__ == exception
    assert isinstance(raised.value.__cause__, RuntimeError)
    with pytest.raises(RuntimeError, match="not a signal"), interruptible():  # without a signal, an error stays
        raise RuntimeError("not a signal")


def test_a_nested_block_raises_the_signal_when_the_outer_one_is_closed_without_the_exception():
    """The CLI holds the outer block as a click resource (``claim_destination``), which older click closes without
    the exception; the artifact writer's inner block, through which it does pass, must know of the signal."""
    from edgekit.atomic_io import Terminated, interruptible

    outer = interruptible()
    outer.__enter__()
    try:
        with pytest.raises(Terminated), interruptible():
            _signal_wrapped_by_a_library(signal.SIGTERM)()
    finally:
        outer.__exit__(None, None, None)
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)


def test_sigterm_inside_onnx_runtime_is_reported_as_an_interrupt_not_a_model_error(tmp_path, capsys, monkeypatch):
    """The export's ONNX passes run the graph in ONNX Runtime; a SIGTERM whose exception ORT wraps was reported as
    "error: ONNX passes: ONNX Runtime cannot run the input model (initialization failed)", exit 2. It is an
    interrupt: one line, exit 130, nothing written."""
    from edgekit.convert.passes.pipeline import OnnxSession

    monkeypatch.setattr(OnnxSession, "evaluate", _signal_wrapped_by_a_library(signal.SIGTERM))
    out = tmp_path / "art"
    code, _, err = run_cli(["export", ZOO_DIR / "yolov8.pt", "-o", out], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 130 and lines == ["error: interrupted"], err
    assert not out.exists() and _leftovers(tmp_path, "art") == []


def test_swap_without_rename_exchange_falls_back_to_two_renames(tmp_path, monkeypatch):
    """Where renameat2(RENAME_EXCHANGE) is unavailable (other kernels / file systems) the old folder is
    renamed aside and the new one renamed in; the result is the same, and nothing is left behind."""
    import edgekit.atomic_io as atomic_io

    out = tmp_path / "art"
    _commit(out, b"first")
    with ArtifactWriter(out) as writer:
        writer.path("model.onnx").write_bytes(b"exchanged")
        writer.commit(fastestdet_like_spec(), [ModelEntry("onnxruntime", "fp32", "model.onnx")], {})
    assert writer.swap in ("exchange", "rename")  # which one this machine's file system gives
    monkeypatch.setattr(atomic_io, "_exchange", lambda a, b: False)
    with ArtifactWriter(out) as writer:
        writer.path("model.onnx").write_bytes(b"renamed")
        writer.commit(fastestdet_like_spec(), [ModelEntry("onnxruntime", "fp32", "model.onnx")], {})
    assert writer.swap == "rename"
    assert (out / "model.onnx").read_bytes() == b"renamed"
    assert _leftovers(tmp_path, "art") == []
