"""Small helpers shared by several test modules (import as ``from tests.helpers import ...``)."""

from __future__ import annotations

import importlib.util
import io
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def missing_backends(*names: str) -> list[str]:
    """The backends of ``names`` whose ``Runner.is_available()`` is False here (the one source of truth for skips)."""
    from edgekit.runtime.backends import get_runner_class

    return [name for name in names if not get_runner_class(name).is_available()]


def needs_backends(*names: str) -> pytest.MarkDecorator:
    """A skipif mark for tests that run these backends: ``pytestmark = needs_backends("openvino")``."""
    missing = missing_backends(*names)
    return pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} not installed")


def skip_unless_backends(*names: str) -> None:
    """Skip the calling test (or, at module level, the module) unless every backend of ``names`` is available."""
    missing = missing_backends(*names)
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed", allow_module_level=True)


def varied_weights(model, seed: int):
    """Re-draw conv / transposed-conv weights and BN statistics; returns ``model`` in eval mode.

    A freshly built detector's outputs are dominated by its prior biases (every anchor scores about
    the same), so an error in the weights (fp16 rounding, a wrong layout, a bad quantisation scale)
    would hardly show and detection-level comparisons turn into tests of tie-breaking. With
    unit-gain convolutions (std 1/sqrt(fan_in)) and random BN statistics every layer's weights are
    distinct and the score map is a random field without ties.
    """
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / math.sqrt(fan_in))
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
    return model.eval()


def load_tool(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import ``tools/<name>.py`` (a script, not a package module) for the duration of one test."""
    path = REPO_ROOT / "tools" / f"{name}.py"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    monkeypatch.setitem(sys.modules, name, module)  # its dataclasses look themselves up there
    module_spec.loader.exec_module(module)
    return module


# --- the CLI contract, shared by every CLI test module ---------------------------------------------------------


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """``edgekit`` in-process (``edgekit.cli.main``) with ``argv`` (any path-like items); (exit code, stdout, stderr)."""
    from edgekit.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code: int, err: str, *fragments: str) -> str:
    """Assert the CLI's contract for bad input and return the line: a non-zero exit, exactly one ``error: …`` line on
    stderr holding every fragment, no traceback and no click usage block."""
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "Usage:" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def fastestdet_like_artifact(folder: Path) -> Path:
    """A one-model artifact (ONNX Runtime fp32, a FastestDet-like graph from tests.onnx_graphs) written to ``folder``."""
    from edgekit.convert.artifact import ArtifactWriter
    from edgekit.runtime.artifact import ModelEntry
    from tests.onnx_graphs import fastestdet_like_graph, fastestdet_like_spec, save

    spec = fastestdet_like_spec()
    with ArtifactWriter(folder) as writer:
        save(fastestdet_like_graph(spec), writer.path("model.onnx"))
        writer.commit(spec, [ModelEntry("onnxruntime", "fp32", "model.onnx")], {"producer": "test"})
    return folder


class TerminalStream(io.StringIO):
    """A stderr that says it is a terminal (progress bars show only on one: edgekit.progress)."""

    def isatty(self) -> bool:
        return True
