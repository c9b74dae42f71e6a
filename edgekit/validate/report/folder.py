"""The report folder: checked before any work, staged in a hidden sibling, swapped into place whole."""


from __future__ import annotations

from pathlib import Path

from edgekit.errors import EdgekitError

#: What ``write_drift_report`` may find in (and replace in) an existing report folder.
REPORT_ENTRIES = frozenset({"report.json", "report.md", "map_vs_latency.png", "per_class_delta.png", "samples"})

# --- the folder --------------------------------------------------------------------------------


def os_reason(exc: OSError, out_dir: Path) -> str:
    """The OS's reason, but "X is a file" when a folder on the way is a file (mkdir says "File exists")."""
    blocker = next((p for p in (out_dir, *out_dir.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        return f"{blocker} is a file, not a folder"
    return exc.strerror or str(exc) or type(exc).__name__


def start_report_dir(out_dir: Path) -> tuple[Path, list[Path]]:
    """Check ``out_dir``, make its parents and an empty staging folder beside it.

    Returns (staging folder, parent folders created here, deepest first, to remove on failure).
    """
    _check_report_dir(out_dir)
    out_dir = named_folder(out_dir)
    created = _missing_ancestors(out_dir.parent)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        return _make_staging_dir(out_dir), created
    except OSError as exc:
        remove_empty(created)
        raise EdgekitError(f"{out_dir}: cannot write the report there ({os_reason(exc, out_dir)})") from None


def named_folder(folder: Path) -> Path:
    """``folder`` with a real last component ("." or ".." resolved), so siblings can be named."""
    return folder if folder.name not in ("", ".", "..") else folder.resolve()


def _check_report_dir(out_dir: Path) -> None:
    """Refuse a file, or a folder with files a report does not write (they would be lost)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise EdgekitError(f"{out_dir}: is a file; expected a folder for the report")
    if out_dir.is_dir():
        try:
            foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in REPORT_ENTRIES)
        except OSError as exc:
            raise EdgekitError(f"{out_dir}: cannot write the report there ({os_reason(exc, out_dir)})") from None
        if foreign:
            raise EdgekitError(f"{out_dir}: holds files a drift report does not write ({', '.join(foreign[:5])}); "
                               "choose a new or empty folder")


def _missing_ancestors(folder: Path) -> list[Path]:
    """The folders of ``folder``'s path that do not exist yet, deepest first (to undo a mkdir -p)."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    return missing


def remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


def _make_staging_dir(out_dir: Path) -> Path:
    """A new hidden sibling of ``out_dir``: the one staging helper artifacts use too."""
    from edgekit.atomic_io import make_staging_dir

    return make_staging_dir(out_dir)


def swap_report_into_place(staging: Path, out_dir: Path) -> None:
    """Move the finished report to ``out_dir`` (an earlier report is replaced as a whole, never missing)."""
    from edgekit.atomic_io import swap_into_place

    swap_into_place(staging, out_dir)
