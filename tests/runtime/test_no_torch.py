"""The runtime must run on a board that has numpy and a backend library, but no torch."""

import subprocess
import sys
import textwrap

from edgekit.convert.artifact import ArtifactWriter
from edgekit.runtime.artifact import ModelEntry
from tests.conftest import REPO_ROOT
from tests.onnx_graphs import fastestdet_like_graph, fastestdet_like_spec, save


def test_detector_on_onnxruntime_never_imports_torch(tmp_path):
    spec = fastestdet_like_spec()
    with ArtifactWriter(tmp_path / "art") as writer:
        save(fastestdet_like_graph(spec), writer.path("model.onnx"))
        writer.commit(spec, [ModelEntry("onnxruntime", "fp32", "model.onnx")], {})
    script = textwrap.dedent(f"""
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
        from edgekit.runtime.detector import Detector
        from edgekit.runtime.draw import draw_detections
        image = np.random.default_rng(0).integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
        with Detector.load(r"{tmp_path / 'art'}") as detector:
            result = detector.detect(image)
        draw_detections(image, result, detector.spec.class_names)
        assert "torch" not in sys.modules
        print("ok", len(result))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")
