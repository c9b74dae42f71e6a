"""Reading an edgekit artifact: a folder of model files plus the ``edgekit.json`` manifest.

The manifest records the ModelSpec, the sha256 of every file, which file each backend and
precision runs, and how the artifact was produced (tool versions, passes and their measured
error). Reading it needs only the standard library and numpy: it runs on the device.

What the device runs with is kept apart from how the artifact was made:

- ``runtime``: defaults the device runs with (``threads`` from the target profile);
- ``models[i].options``: the runtime options its Runner reads (blob names, precision switches, the
  engine a device build writes …);
- ``models[i].build``: provenance of that model (converter and route, Q/DQ placement, its parity
  check, int8 layer counts): read by people and reports, never by a Runner;
- ``info``: provenance of the artifact (producer, target, tools, passes, parity, calibration).

Format version 1 (before this split) had no ``runtime`` and no ``build``: it loads, its provenance keys
moved out of ``options`` (:data:`PROVENANCE_OPTIONS`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from edgekit.errors import ModelFileError, first_line
from edgekit.filetypes import read_json
from edgekit.runtime.graph_nms import GraphNms
from edgekit.spec import ONNX_METADATA_KEY, ModelSpec

MANIFEST_NAME = "edgekit.json"
#: an int8 artifact's calibration result (``edgekit.quant.result``), beside the manifest
CALIBRATION_FILE = "calibration.json"
MANIFEST_FORMAT = "edgekit-artifact"
MANIFEST_VERSION = 2
#: manifest versions this edgekit reads (1: runtime options and provenance mixed in ``options``)
READABLE_VERSIONS = (1, 2)
#: keys a version-1 manifest kept in a model's ``options`` that are provenance, not runtime options
PROVENANCE_OPTIONS = ("converter", "parity", "qdq_placement", "weights", "int8")
#: ``runtime`` keys and their types (a manifest is input: anything else is refused)
RUNTIME_KEYS = {"threads": int}
#: ModelEntry.status(): the entry's files are all there and it can run on a machine with its backend
READY = "ready"
#: ModelEntry.status(): the runnable file is built on the device (TensorRT engine) and is not there yet
AWAITS_DEVICE_BUILD = "awaits device build"
#: entry options that name one file, and the folder the runtime resolves each against ("entry": the
#: folder of the entry's own ``file``, "artifact": the artifact folder). Every one is checked to stay
#: inside the artifact folder when the manifest is read; so are options ending in ``_file``.
FILE_OPTIONS = {"bin_file": "entry", "engine": "entry", "build_script": "artifact"}
#: entry options that name a list of files, relative to the artifact folder
FILE_LIST_OPTIONS = ("companion_files",)


@dataclass(frozen=True)
class ModelEntry:
    """One runnable model file: which backend runs it, at what precision, its runtime options (what the
    backend's Runner reads) and its build provenance (what made it; never read by a Runner).

    A model built on the device (TensorRT) has the runtime options ``built_on_device`` (true), ``engine``
    (the file the device build writes, next to ``file``), ``build_script`` (artifact-relative) and
    ``build_command``; only this class and the backend's own builder and runner read them.
    """

    backend: str
    precision: str
    file: str
    options: dict[str, Any] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)

    @property
    def builds_on_device(self) -> bool:
        """True when the runnable file (an engine) is made on the device from ``file``."""
        return bool(self.options.get("built_on_device"))

    @property
    def graph_nms(self) -> GraphNms | None:
        """The NMS built into this model's graph (``nms = "graph"``), None for a model decoded on the host."""
        data = self.options.get("graph_nms")
        return GraphNms.from_dict(data, f"model {self.backend}/{self.precision}") if data is not None else None

    @property
    def engine(self) -> str | None:
        """The device-built file, relative to the artifact folder (None for other entries)."""
        engine = self.options.get("engine") if self.builds_on_device else None
        return str(PurePosixPath(self.file).parent / str(engine)) if engine else None

    def status(self, artifact_dir: str | Path) -> str:
        """:data:`READY`, or :data:`AWAITS_DEVICE_BUILD` while a device-built entry's engine is not in
        ``artifact_dir`` (nothing of it can run until its build script has written the engine)."""
        if self.builds_on_device:
            engine = self.engine
            if not (engine and (Path(artifact_dir) / engine).is_file()):
                return AWAITS_DEVICE_BUILD
        return READY

    def payload_files(self) -> list[str]:
        """The files this model runs from, relative to the artifact folder: its engine (device-built entries)
        or its ``file``, then its companion files (weights next to a graph)."""
        return [self.engine or self.file, *self.options.get("companion_files", [])]

    def build_hint(self) -> str:
        """What builds a device-built entry's engine on the device: ``./<script> (it runs: <command>)``; "" for
        other entries."""
        if not self.builds_on_device:
            return ""
        script, command = self.options.get("build_script"), self.options.get("build_command")
        how = f"./{script}" if script else "trtexec"
        return how + (f" (it runs: {command})" if command else "")


@dataclass(frozen=True)
class Manifest:
    spec: ModelSpec
    models: tuple[ModelEntry, ...]
    files: dict[str, str]  # relative file name -> sha256 hex
    info: dict[str, Any] = field(default_factory=dict)  # producer, tool versions, passes, calibration …
    #: what the device runs with unless told otherwise (``threads``: the target profile's)
    runtime: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "spec": self.spec.to_dict(),
            "runtime": self.runtime,
            "models": [{"backend": m.backend, "precision": m.precision, "file": m.file, "options": m.options,
                        **({"build": m.build} if m.build else {})}
                       for m in self.models],
            "files": dict(sorted(self.files.items())),
            "info": self.info,
        }

    @property
    def threads(self) -> int:
        """The inference threads the target profile asked for (0 = the backend's default)."""
        return int(self.runtime.get("threads", 0))

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
    data = read_json(path, ModelFileError, "manifest")
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise ModelFileError(f"{path}: not an edgekit manifest (expected \"format\": \"{MANIFEST_FORMAT}\")")
    version = data.get("version")
    if version not in READABLE_VERSIONS:
        raise ModelFileError(f"{path}: manifest version {version!r} is not supported "
                             f"(expected one of {', '.join(map(str, READABLE_VERSIONS))})")
    spec = ModelSpec.from_dict(data.get("spec"), source=f"{path} spec")
    try:
        models = tuple(_read_entry(m, version) for m in data["models"])
        files = {str(k): str(v) for k, v in data["files"].items()}
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ModelFileError(f"{path}: malformed 'models' or 'files' section ({exc})") from None
    runtime = _read_runtime(path, data.get("runtime", {}))
    check_manifest_paths(path, artifact_dir, models, files)
    for entry in models:
        if entry.file not in files:
            raise ModelFileError(f"{path}: model file {entry.file!r} has no sha256 in 'files'")
    return Manifest(spec=spec, models=models, files=files, info=dict(data.get("info", {})), runtime=runtime)


def _read_entry(data: dict[str, Any], version: int) -> ModelEntry:
    options, build = dict(data.get("options", {})), dict(data.get("build", {}))
    if version == 1:  # provenance lived among the runtime options
        build.update({key: options.pop(key) for key in PROVENANCE_OPTIONS if key in options})
    return ModelEntry(backend=str(data["backend"]), precision=str(data["precision"]), file=str(data["file"]),
                      options=options, build=build)


def _read_runtime(path: Path, runtime: object) -> dict[str, Any]:
    if not isinstance(runtime, dict):
        raise ModelFileError(f"{path}: 'runtime' must be an object, got {type(runtime).__name__}")
    for key, value in runtime.items():
        expected = RUNTIME_KEYS.get(key)
        if expected is None:
            raise ModelFileError(f"{path}: unknown 'runtime' key {key!r} (known: {', '.join(RUNTIME_KEYS)})")
        if not isinstance(value, expected) or isinstance(value, bool) or value < 0:
            raise ModelFileError(f"{path}: runtime.{key} must be a non-negative integer, got {value!r}")
    return dict(runtime)


def check_manifest_paths(manifest_path: Path, artifact_dir: Path, models: tuple[ModelEntry, ...],
                         files: dict[str, str]) -> None:
    """Every file the manifest names must lie inside ``artifact_dir``: the ``files`` map, each model
    entry's ``file`` and its file-naming options (:data:`FILE_OPTIONS`, :data:`FILE_LIST_OPTIONS`,
    any ``*_file`` option). Raises one-line ModelFileError naming the manifest, the entry and the path.

    A manifest is input like any other: without this, ``"file": "../../elsewhere/model.onnx"`` (with its
    sha256 in ``files``) would load and run a model from outside the folder, and ``inspect`` would hash
    and list ``/etc/passwd``.
    """
    root = artifact_dir.resolve()
    for index, entry in enumerate(models):  # entries first: their error says which model would have run it
        where = f"models[{index}] ({entry.backend}/{entry.precision})"
        _check_inside(manifest_path, root, root, f"{where} 'file'", entry.file)
        entry_dir = (root / entry.file).parent
        for key, value in entry.options.items():
            if key in FILE_LIST_OPTIONS or key.endswith("_files"):
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ModelFileError(f"{manifest_path}: {where} option '{key}' must be a list of file names, "
                                         f"got {type(value).__name__}")
                for item in value:
                    _check_inside(manifest_path, root, root, f"{where} option '{key}'", item)
            elif key in FILE_OPTIONS or key.endswith("_file"):
                if value is None:
                    continue
                if not isinstance(value, str):
                    raise ModelFileError(f"{manifest_path}: {where} option '{key}' must be a file name, "
                                         f"got {type(value).__name__}")
                base = entry_dir if FILE_OPTIONS.get(key) == "entry" else root
                _check_inside(manifest_path, root, base, f"{where} option '{key}'", value)
    for name in files:
        _check_inside(manifest_path, root, root, "'files' entry", name)


def _check_inside(manifest_path: Path, root: Path, base: Path, what: str, name: str) -> None:
    """``name`` (relative to ``base``, itself inside the resolved ``root``) must stay inside ``root``.

    Refused: empty names, NUL, absolute paths (POSIX ``/x``, Windows ``C:\\x``, ``C:x``, ``\\\\server``), any
    ``..`` component (``/`` or ``\\`` separated: a manifest written on one OS is read on another), and a
    path whose resolution (symlinks followed, existing or not) ends outside ``root``.
    """
    shown = f"'{name}'" if name.isprintable() else repr(name)
    problem = None
    if not name:
        problem = "an empty name"
    elif "\x00" in name:
        problem = "a NUL character in the name"
    elif PurePosixPath(name).is_absolute() or PureWindowsPath(name).drive or PureWindowsPath(name).root:
        problem = "an absolute path"
    elif ".." in PureWindowsPath(name).parts:  # splits on both / and \\
        problem = "a '..' component"
    else:
        try:
            resolved = (base / name).resolve()  # follows symlinks, also when the file itself is missing
        except (OSError, RuntimeError):  # a symlink loop
            problem = "a symlink loop"
        else:
            if not _is_relative_to(resolved, root):
                problem = f"a symlink resolving to {resolved}"
    if problem is not None:
        raise ModelFileError(f"{manifest_path}: {what} {shown} leaves the artifact folder ({problem}); "
                             "every file a manifest names must be a relative path inside its folder")


def _is_relative_to(path: Path, root: Path) -> bool:
    """``Path.is_relative_to`` (Python 3.9+), for the runtime's Python 3.8."""
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


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
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the metadata is all we read
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
        raise ModelFileError(f"{path}: not a loadable ONNX model ({first_line(exc)})") from None
    if text is None:
        raise ModelFileError(f"{path}: no edgekit spec in the ONNX metadata (key {ONNX_METADATA_KEY!r}); "
                             "export it with edgekit, or pass --family and --names for a third-party model")
    return ModelSpec.from_json(text, source=f"{path} metadata")


def check_manifest_spec(artifact_dir: Path, manifest: Manifest) -> None:
    """Refuse an artifact whose manifest spec is not the one its models were built with.

    The model files are hashed, ``edgekit.json`` is not: an edit of it (two class names swapped, an input size, a
    threshold) would run the untouched model under another description and score it with exit 0. Every ONNX model
    edgekit writes embeds the spec it was exported with (``ONNX_METADATA_KEY``), so the smallest ONNX model of the
    artifact (hash checked) is the witness; an artifact without one (a device-built engine only) has none to compare.
    """
    onnx_files = sorted((entry.file for entry in manifest.models if entry.file.endswith(".onnx")
                         and (artifact_dir / entry.file).is_file()),
                        key=lambda name: (artifact_dir / name).stat().st_size)
    if not onnx_files:
        return
    witness = verify_file(artifact_dir, manifest, onnx_files[0])
    try:
        embedded = spec_from_onnx(witness)
    except ModelFileError:  # a model without an embedded spec (not written by edgekit's exporter): no witness
        return
    except ImportError:  # a device with neither onnxruntime nor onnx (TensorRT alone) cannot read the witness
        return
    if embedded == manifest.spec:
        return
    listed, built = manifest.spec.to_dict(), embedded.to_dict()
    key = next((k for k in listed if listed[k] != built.get(k)), "spec")
    detail = f"{key}: {_first_difference(listed.get(key), built.get(key))}"
    raise ModelFileError(f"{artifact_dir / MANIFEST_NAME}: its spec differs from the one {onnx_files[0]} was built with "
                         f"({detail}); the manifest was edited after conversion: restore it or convert again")


def _first_difference(listed: Any, built: Any) -> str:
    """'manifest X, model Y' at the first differing element of two spec fields (lists and dicts descended)."""
    if isinstance(listed, list) and isinstance(built, list) and len(listed) == len(built):
        index = next(i for i, (a, b) in enumerate(zip(listed, built)) if a != b)
        return f"[{index}] {_first_difference(listed[index], built[index])}"
    if isinstance(listed, dict) and isinstance(built, dict) and listed.keys() == built.keys():
        key = next(k for k in listed if listed[k] != built[k])
        return f".{key} {_first_difference(listed[key], built[key])}"
    return f"manifest {str(listed)[:60]!r}, model {str(built)[:60]!r}"
