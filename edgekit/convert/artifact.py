"""Writing an artifact folder atomically.

Files are written into a temporary sibling folder; only when everything succeeded is the
manifest (with every file's sha256) written and the folder renamed into place. A failed
conversion therefore leaves nothing half-written at the destination.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError, OutputError
from edgekit.runtime.artifact import MANIFEST_NAME, Manifest, ModelEntry, sha256_file
from edgekit.spec import ModelSpec


class ArtifactWriter:
    """Context manager: ``with ArtifactWriter(out) as w: path = w.path("model.onnx"); …; w.commit(spec, entries, info)``.

    If the block raises, or ``commit`` is never called, the temporary folder is removed and
    ``out`` is left as it was.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir).absolute()
        self._tmp: Path | None = None
        self._committed = False

    def __enter__(self) -> ArtifactWriter:
        parent = self.out_dir.parent
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise OutputError(f"{self.out_dir}: exists and is not a folder; choose another output path")
        if self.out_dir.is_dir() and any(self.out_dir.iterdir()) and not (self.out_dir / MANIFEST_NAME).is_file():
            raise OutputError(f"{self.out_dir}: folder exists, is not empty and is not an edgekit artifact; "
                              "refusing to overwrite it")
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.", suffix=".partial", dir=parent))
        except OSError as exc:
            raise OutputError(f"{parent}: cannot write the artifact there ({exc.strerror or exc})") from None
        return self

    def path(self, relative: str) -> Path:
        """Where to write the file ``relative`` inside the artifact (in the temporary folder)."""
        if self._tmp is None:
            raise RuntimeError("ArtifactWriter used outside its with-block")
        target = self._tmp / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def commit(self, spec: ModelSpec, models: Iterable[ModelEntry], info: dict[str, Any]) -> Manifest:
        """Hash every file, write edgekit.json, and move the folder into place."""
        assert self._tmp is not None
        models = tuple(models)
        files = {p.relative_to(self._tmp).as_posix(): sha256_file(p)
                 for p in sorted(self._tmp.rglob("*")) if p.is_file()}
        for entry in models:
            if entry.file not in files:
                raise EdgekitError(f"artifact: model file {entry.file!r} was never written")
        manifest = Manifest(spec=spec, models=models, files=files, info=info)
        (self._tmp / MANIFEST_NAME).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.chmod(self._tmp, 0o755)
        backup = None
        if self.out_dir.exists():
            backup = self.out_dir.with_name(f".{self.out_dir.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(self.out_dir, backup)
        os.replace(self._tmp, self.out_dir)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
        self._committed = True
        return manifest

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if self._tmp is not None and not self._committed:
            shutil.rmtree(self._tmp, ignore_errors=True)
