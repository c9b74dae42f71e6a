"""`validate --reference`: the checkpoint must be the network the artifact was converted from.

Before the check, a checkpoint of the same family and classes with other weights (or, for a graph-decoded import,
another scale) was accepted, and Δ / agreement measured two different networks with exit 0 (a hostile review: Δ
+30 mAP points). Oracle: the checkpoint the artifact was exported from passes; the same checkpoint with its weights
perturbed is refused before the reference's run over the dataset.
"""

from __future__ import annotations

import copy

import pytest
import torch

from edgekit.convert.chain import export_artifact
from edgekit.errors import EdgekitError
from edgekit.models.loading import load_checkpoint
from edgekit.validate import synth
from edgekit.validate.datasets import load_dataset
from edgekit.validate.run import validate_artifacts
from tests.conftest import ZOO_DIR


@pytest.fixture(scope="module")
def model_artifact_data(tmp_path_factory):
    model = load_checkpoint(ZOO_DIR / "yolov8.pt")
    root = tmp_path_factory.mktemp("reference")
    export_artifact(model, root / "art")
    height, width = model.spec.input_size
    data = synth.generate(root / "val", "val", seed=11, num_images=8, image_size=max(height, width), progress=False)
    return model, root / "art", load_dataset(data)


def test_the_source_checkpoint_is_accepted(model_artifact_data):
    model, artifact, dataset = model_artifact_data
    report = validate_artifacts([artifact], dataset, reference_model=model)
    assert report.reference == "torch/fp32"
    assert report.run("onnxruntime/fp32").agreement.precision == 1.0


def test_a_checkpoint_with_other_weights_is_refused(model_artifact_data):
    model, artifact, dataset = model_artifact_data
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.mul_(1 + 0.15 * torch.randn(parameter.shape, generator=generator))
    seen: list[str] = []
    with pytest.raises(EdgekitError) as info:
        validate_artifacts([artifact], dataset, reference_model=other,
                           progress=lambda items, name: seen.append(name) or items)
    message = str(info.value)
    assert message.startswith("--reference: on the first 8 images") and "not the checkpoint" in message
    assert seen == []  # refused before the reference (or any model) ran over the dataset
