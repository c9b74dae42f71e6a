"""The runtime must run on a board that has numpy and a backend library, but no torch.

Every backend installed here (``Runner.is_available()``) gets a model built by the converter (which may use
torch), then a fresh interpreter with torch made unimportable loads each model through ``Detector`` and detects.
"""

import json
import subprocess
import sys
import textwrap

import pytest

from edgekit.runtime.backends import backend_names, get_runner_class
from tests.conftest import REPO_ROOT
from tests.helpers import fastestdet_like_artifact

AVAILABLE = [name for name in backend_names() if get_runner_class(name).is_available()]

#: The subprocess: torch blocked before edgekit is imported; one line of JSON per model that ran.
SCRIPT = textwrap.dedent("""
    import json
    import sys

    import numpy as np

    class BlockTorch:
        # make any attempt to import torch fail loudly, not just be noticed afterwards
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch import attempted by the runtime: " + name)
            return None

    sys.meta_path.insert(0, BlockTorch())
    import edgekit
    from edgekit.runtime.artifact import read_manifest
    from edgekit.runtime.detector import Detector
    from edgekit.runtime.draw import draw_detections

    image = np.random.default_rng(0).integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    for folder in sys.argv[1:]:
        for entry in read_manifest(folder).models:
            with Detector.load(folder, backend=entry.backend, precision=entry.precision, threads=1) as detector:
                result = detector.detect(image)
            draw_detections(image, result, detector.spec.class_names)
            print(json.dumps([entry.backend, entry.precision, len(result)]))
    assert "torch" not in sys.modules
""")


def _target_for(backend: str) -> str | None:
    """A bundled target profile that builds ``backend`` (None: no profile does)."""
    from edgekit.targets import load_target, target_names

    return next((name for name in target_names() if load_target(name).backend == backend), None)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """One artifact per available backend (ONNX Runtime fp32 is in every one of them)."""
    root = tmp_path_factory.mktemp("no_torch")
    folders = {"onnxruntime": fastestdet_like_artifact(root / "onnxruntime")}
    others = [backend for backend in AVAILABLE if backend != "onnxruntime"]
    if others:
        pytest.importorskip("torch", reason="building the other backends' models needs the converter")
        from edgekit.convert.chain import convert_onnx
        from tests.onnx_graphs import fastestdet_like_spec

        onnx_file = folders["onnxruntime"] / "model.onnx"
        for backend in others:
            target = _target_for(backend)
            if target is None:
                continue
            folders[backend] = root / backend
            convert_onnx(onnx_file, fastestdet_like_spec(), target, folders[backend])
    return folders


@pytest.mark.skipif("onnxruntime" not in AVAILABLE, reason="the baseline artifact needs ONNX Runtime")
def test_every_available_backend_runs_without_torch(artifacts):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *map(str, artifacts.values())],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    ran = {tuple(json.loads(line)[:2]) for line in proc.stdout.splitlines()}
    # every available backend that has a target profile here ran at least one model, torch never imported
    assert {backend for backend, _ in ran} == set(artifacts), (ran, proc.stderr)
    assert {backend for backend, _ in ran} >= {b for b in AVAILABLE if _target_for(b) is not None}


@pytest.mark.skipif("openvino" not in AVAILABLE, reason="needs an OpenVINO model")
def test_a_device_with_neither_onnxruntime_nor_onnx_loads_its_model(artifacts):
    """Detector.load checks the manifest's spec against the one embedded in the artifact's ONNX model; a board with
    only its own backend (TensorRT, OpenVINO) cannot read that ONNX, and the check must step aside, not fail."""
    script = SCRIPT.replace('if name == "torch" or name.startswith("torch."):',
                            'if name.split(".")[0] in ("torch", "onnxruntime", "onnx"):')
    script = script.replace("for entry in read_manifest(folder).models:",
                            "for entry in [e for e in read_manifest(folder).models if e.backend == 'openvino']:")
    proc = subprocess.run([sys.executable, "-c", script, str(artifacts["openvino"])],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert {json.loads(line)[0] for line in proc.stdout.splitlines()} == {"openvino"}
