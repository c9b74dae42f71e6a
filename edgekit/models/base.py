"""DetectorModel: the ``nn.Module`` every edgekit detector network is (built-in families and imported checkpoints)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from edgekit.spec import ModelSpec

if TYPE_CHECKING:
    from edgekit.models import ModelConfig


class DetectorModel(nn.Module):
    """An ``nn.Module`` carrying what every later stage reads, attached by the family's builder or the importer.

    ``spec``: the :class:`~edgekit.spec.ModelSpec` (input, normalisation, head kind and params, class names);
    ``config``: the ``ModelConfig`` it was built from (None for an imported checkpoint);
    ``input_size_from_checkpoint``: whether ``spec.input_size`` is the size the file records (a target
    profile's size then does not override it). Declared here so they are typed attributes, not
    ``nn.Module.__getattr__``'s ``Tensor | Module``.
    """

    spec: ModelSpec
    config: ModelConfig | None
    input_size_from_checkpoint: bool
    #: what the training run measured, as saved in an edgekit checkpoint (load_checkpoint sets it)
    metrics: dict[str, Any]
