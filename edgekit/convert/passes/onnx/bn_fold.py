"""Fold ``BatchNormalization`` (inference form) into the ``Conv`` / ``ConvTranspose`` that feeds it.

For models that arrive as ONNX with the BN still in the graph (exported with
``training=TrainingMode.PRESERVE`` / without constant folding, or from third-party tools).
The math is the module pass's (:mod:`edgekit.convert.passes.module.fold_bn`)::

    s = scale / sqrt(var + epsilon)              (per output channel)
    W'[o] = W[o] * s[o]                          Conv weight [M, C / group, k...]: o is dim 0
    B'[o] = (B[o] - mean[o]) * s[o] + bias[o]    (B = 0 when the Conv has no bias input)

For ``ConvTranspose`` the weight is [C, M / group, k...] and output channel
``o = g * (M / group) + j`` is dim 1 index ``j`` of group ``g``'s rows, so ``s`` is applied on the view
[group, C / group, M / group, k...]. Computed in float64, stored in the weight's dtype.

Folded only when it is safe: the BN is in inference mode (one output, ``training_mode`` 0), its
four parameters and the conv's weight (and bias) are build-time constants (initializers, Constant
nodes, or Identity of those), the conv output is read by the BN alone and is not a graph output.
New weight / bias initializers are written under fresh names (the originals may be shared with
other nodes); originals nobody reads any more are deleted.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.convert.passes.base import Pass, PassResult
from edgekit.convert.passes.onnx.graph_tools import (
    Constants,
    all_names,
    consumers,
    delete_where,
    is_default_domain,
    output_names,
    producers,
    prune_value_info,
    read_names,
    unique_name,
)


def _attribute(node: onnx.NodeProto, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def fold_weights(weight: np.ndarray, bias: np.ndarray | None, transposed: bool, group: int,
                 scale: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray,
                 epsilon: float) -> tuple[np.ndarray, np.ndarray] | None:
    """(W', B') in ``weight``'s dtype, or None if the channel counts do not match."""
    out_channels = weight.shape[1] * group if transposed else weight.shape[0]
    if not all(v.shape == (out_channels,) for v in (scale, beta, mean, var)):
        return None
    if bias is not None and bias.shape != (out_channels,):
        return None
    s = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + epsilon)
    w = weight.astype(np.float64)
    spatial = (1,) * (w.ndim - 2)
    if transposed:
        rows_per_group, out_per_group = w.shape[0] // group, w.shape[1]
        folded = (w.reshape(group, rows_per_group, out_per_group, *w.shape[2:])
                  * s.reshape(group, 1, out_per_group, *spatial)).reshape(w.shape)
    else:
        folded = w * s.reshape(-1, 1, *spatial)
    b = bias.astype(np.float64) if bias is not None else np.zeros(out_channels)
    new_bias = (b - mean.astype(np.float64)) * s + beta.astype(np.float64)
    return folded.astype(weight.dtype), new_bias.astype(weight.dtype)


class FoldBatchNormOnnx(Pass):
    name = "onnx_fold_bn"
    description = "fold BatchNormalization into the preceding Conv / ConvTranspose (ONNX graphs)"

    def apply(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        constants = Constants(graph)
        produced_by = producers(graph)
        readers = consumers(graph)
        outputs = output_names(graph)
        taken = all_names(graph)
        removed: set[str] = set()  # output names of folded BN nodes (node objects have no stable identity)
        touched: set[str] = set()
        folded = 0
        for bn in graph.node:
            if not (is_default_domain(bn) and bn.op_type == "BatchNormalization"):
                continue
            if len([o for o in bn.output if o]) != 1 or _attribute(bn, "training_mode", 0):
                continue
            conv = produced_by.get(bn.input[0])
            if conv is None or not is_default_domain(conv) or conv.op_type not in ("Conv", "ConvTranspose"):
                continue
            if len(readers.get(bn.input[0], [])) != 1 or bn.input[0] in outputs or conv.output[0] != bn.input[0]:
                continue
            weight = constants.get(conv.input[1])
            bias = constants.get(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
            if weight is None or (len(conv.input) > 2 and conv.input[2] and bias is None):
                continue
            if len(bn.input) != 5 or weight.dtype.kind != "f":
                continue
            scale, beta, mean, var = (constants.get(name) for name in bn.input[1:5])
            if scale is None or beta is None or mean is None or var is None:
                continue
            result = fold_weights(weight, bias, conv.op_type == "ConvTranspose", int(_attribute(conv, "group", 1)),
                                  scale, beta, mean, var, epsilon=float(_attribute(bn, "epsilon", 1e-5)))
            if result is None:
                continue
            new_weight, new_bias = result
            weight_name = unique_name(taken, f"{conv.input[1]}_bnfold")
            bias_name = unique_name(taken, f"{conv.name or conv.output[0]}_bias_bnfold")
            graph.initializer.append(numpy_helper.from_array(new_weight, weight_name))
            graph.initializer.append(numpy_helper.from_array(new_bias, bias_name))
            touched.update(name for name in list(conv.input[1:3]) + list(bn.input[1:5]) if name)
            conv.input[1] = weight_name
            if len(conv.input) > 2:
                conv.input[2] = bias_name
            else:
                conv.input.append(bias_name)
            # the conv now produces the BN's output; its old output (read only by the BN) disappears
            conv.output[0] = bn.output[0]
            removed.add(bn.output[0])
            folded += 1
        if folded:
            delete_where(graph.node, lambda node: node.op_type == "BatchNormalization" and node.output[0] in removed)
            prune_value_info(graph)
            # originals we read and nobody reads any more (initializers only; Constant nodes go with dead_nodes)
            still_read = set(outputs) | {i.name for i in graph.input}
            for node in graph.node:
                still_read.update(read_names(node))
            delete_where(graph.initializer, lambda init: init.name in touched and init.name not in still_read)
        return PassResult(model, folded)


__all__ = ["FoldBatchNormOnnx", "fold_weights"]
