"""Reading an edgekit artifact: a folder of model files plus the ``edgekit.json`` manifest.

The manifest records the ModelSpec, the sha256 of every file, which file each backend and
precision runs, and how the artifact was produced (tool versions, passes and their measured
error). Reading it needs only the standard library and numpy: it runs on the device.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import ModelFileError
from edgekit.spec import ONNX_METADATA_KEY, ModelSpec

MANIFEST_NAME = "edgekit.json"
MANIFEST_FORMAT = "edgekit-artifact"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class ModelEntry:
    """One runnable model file: which backend runs it, at what precision, and backend options."""

    backend: str
    precision: str
    file: str
    options: dict[str, Any] = field(default_factory=dict)

    def awaits_device_build(self, artifact_dir: str | Path) -> bool:
        """True for an entry whose engine is built on the device (TensorRT, ``built_on_device``) and is
        not in ``artifact_dir`` yet: nothing of it can run until its build script has written the engine."""
        if not self.options.get("built_on_device"):
            return False
        engine = self.options.get("engine")
        return not (engine and (Path(artifact_dir) / str(engine)).is_file())


@dataclass(frozen=True)
class Manifest:
    spec: ModelSpec
    models: tuple[ModelEntry, ...]
    files: dict[str, str]  # relative file name -> sha256 hex
    info: dict[str, Any] = field(default_factory=dict)  # producer, tool versions, passes, calibration …

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "spec": self.spec.to_dict(),
            "models": [{"backend": m.backend, "precision": m.precision, "file": m.file, "options": m.options}
                       for m in self.models],
            "files": dict(sorted(self.files.items())),
            "info": self.info,
        }

    def find(self, backend: str, precision: str | None) -> ModelEntry:
        """The entry for backend (+ precision; None = the first listed for that backend)."""
        for entry in self.models:
            if entry.backend == backend and (precision is None or entry.precision == precision):
                return entry
        available = ", ".join(f"{m.backend}/{m.precision}" for m in self.models) or "none"
        wanted = backend + (f"/{precision}" if precision else "")
        raise ModelFileError(f"artifact has no model for {wanted}; it contains: {available}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(artifact_dir: str | Path) -> Manifest:
    """Parse and validate ``edgekit.json`` in ``artifact_dir``; errors name the file and the field."""
    artifact_dir = Path(artifact_dir)
    path = artifact_dir / MANIFEST_NAME
    if not artifact_dir.is_dir():
        raise ModelFileError(f"{artifact_dir}: artifact folder not found")
    if not path.is_file():
        raise ModelFileError(f"{artifact_dir}: not an edgekit artifact (no {MANIFEST_NAME} inside)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: manifest is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise ModelFileError(f"{path}: not an edgekit manifest (expected \"format\": \"{MANIFEST_FORMAT}\")")
    if data.get("version") != MANIFEST_VERSION:
        raise ModelFileError(f"{path}: manifest version {data.get('version')!r} is not supported (expected {MANIFEST_VERSION})")
    spec = ModelSpec.from_dict(data.get("spec"), source=f"{path} spec")
    try:
        models = tuple(ModelEntry(backend=str(m["backend"]), precision=str(m["precision"]), file=str(m["file"]),
                                  options=dict(m.get("options", {}))) for m in data["models"])
        files = {str(k): str(v) for k, v in data["files"].items()}
    except (KeyError, TypeError, AttributeError) as exc:
        raise ModelFileError(f"{path}: malformed 'models' or 'files' section ({exc})") from None
    for entry in models:
        if entry.file not in files:
            raise ModelFileError(f"{path}: model file {entry.file!r} has no sha256 in 'files'")
    return Manifest(spec=spec, models=models, files=files, info=dict(data.get("info", {})))


def verify_file(artifact_dir: Path, manifest: Manifest, relative: str) -> Path:
    """Check that ``relative`` exists and matches its recorded sha256; return its path."""
    path = artifact_dir / relative
    if not path.is_file():
        raise ModelFileError(f"{path}: listed in the manifest but missing from the artifact")
    expected = manifest.files.get(relative)
    if expected is None:
        raise ModelFileError(f"{path}: not listed in the manifest's 'files'")
    actual = sha256_file(path)
    if actual != expected:
        raise ModelFileError(f"{path}: sha256 mismatch (manifest {expected[:12]}…, file {actual[:12]}…): "
                             "the file was modified or corrupted after conversion")
    return path


def spec_from_onnx(path: str | Path) -> ModelSpec:
    """Read the ModelSpec embedded in an ONNX file's metadata_props without loading the weights.

    Uses the onnx package when present; the metadata is also readable through onnxruntime's
    model metadata, which is what a device has.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: ONNX model file not found")
    text = None
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        text = session.get_modelmeta().custom_metadata_map.get(ONNX_METADATA_KEY)
    except ImportError:
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:
            raise ModelFileError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from None
        text = next((p.value for p in model.metadata_props if p.key == ONNX_METADATA_KEY), None)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{path}: not a loadable ONNX model ({first[:300]})") from None
    if text is None:
        raise ModelFileError(f"{path}: no edgekit spec in the ONNX metadata (key {ONNX_METADATA_KEY!r}); "
                             "export it with edgekit, or pass --family and --names for a third-party model")
    return ModelSpec.from_json(text, source=f"{path} metadata")
