"""Constant folding: evaluate every node whose inputs are all known at build time, store the result
as an initializer, and drop the node.

"Known" means: initializers (not overridable graph inputs), ``Constant`` node outputs, outputs of
nodes folded earlier, and — for ``Shape`` / ``Size`` — the static shape of the input from ONNX shape
inference. So a chain like ``Shape -> Gather -> Unsqueeze -> Concat -> Reshape(shape input)``
collapses into one initializer feeding the Reshape. Nodes are evaluated one at a time with
``onnx.reference.ReferenceEvaluator`` (the ONNX reference implementation, pure numpy); a node it
cannot evaluate is simply kept. ``Identity`` of a constant is not copied: its readers are pointed
at the source value instead (exporters route shared weights through Identity nodes).

Never folded: non-deterministic ops (Random*, Multinomial, Bernoulli), nodes with subgraphs, non-default
domains, nodes producing graph outputs (an output must stay a computed value), and folds that
would grow the model by more than ``MAX_GROWTH_BYTES`` (e.g. ``ConstantOfShape`` of a big shape).
"""

from __future__ import annotations

import io
import warnings
from contextlib import redirect_stdout

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgekit.convert.passes.base import Pass, PassResult
from edgekit.convert.passes.onnx.graph_tools import (
    Constants,
    constant_node_value,
    is_default_domain,
    output_names,
    prune_initializers,
    prune_value_info,
    rename_reads,
    subgraphs,
)

NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                              "Multinomial", "Bernoulli"})
MAX_GROWTH_BYTES = 16 << 20
MAX_ROUNDS = 4


def static_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Value name -> dims (None where symbolic/unknown) from ONNX shape inference (empty on failure)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # shape inference rejects some valid-to-run graphs; folding Shape is then skipped
        return {}
    shapes: dict[str, list[int | None]] = {}
    graph = inferred.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor = info.type.tensor_type
        if info.type.HasField("tensor_type") and tensor.HasField("shape"):
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _shape_value(node: onnx.NodeProto, shapes: dict[str, list[int | None]]) -> np.ndarray | None:
    """Value of a Shape (with start/end) or Size node whose selected dims are all static."""
    dims = shapes.get(node.input[0])
    if dims is None:
        return None
    if node.op_type == "Size":
        static = [d for d in dims if d is not None]
        return np.array(int(np.prod(static)), dtype=np.int64) if len(static) == len(dims) else None
    attrs = {a.name: a.i for a in node.attribute}
    # ONNX Shape start/end: negative counts from the back, then clamp to [0, rank] — Python slicing does the same
    selected = dims[attrs.get("start", 0):attrs.get("end", len(dims))] if "end" in attrs else dims[attrs.get("start", 0):]
    return np.array(selected, dtype=np.int64) if None not in selected else None


def _evaluate(node: onnx.NodeProto, values: list[np.ndarray | None], opset_imports) -> list[np.ndarray] | None:
    """Run one node with the ONNX reference evaluator; None if it cannot."""
    feeds = {}
    inputs = []
    for name, value in zip(node.input, values):
        if not name or name in feeds or value is None:  # the caller passes a value for every named input
            continue
        if value.dtype == object:
            return None
        feeds[name] = value
        inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape))
    outputs = [helper.make_empty_tensor_value_info(o) for o in node.output if o]
    graph = helper.make_graph([node], "fold", inputs, outputs)
    model = helper.make_model(graph, opset_imports=list(opset_imports))
    try:
        from onnx.reference import ReferenceEvaluator

        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            results = ReferenceEvaluator(model).run(None, feeds)
    except Exception:  # an op the reference implementation lacks or rejects: keep the node
        return None
    return [np.asarray(r) for r in results]


def _fold_round(model: onnx.ModelProto) -> int:
    graph = model.graph
    constants = Constants(graph)
    shapes = static_shapes(model)
    outputs = output_names(graph)
    folded_values: dict[str, np.ndarray] = {}
    aliases: dict[str, str] = {}
    keep = []
    folded = 0

    def known(name: str) -> np.ndarray | None:
        return folded_values.get(name) if name in folded_values else constants.get(name)

    for node in graph.node:
        value_list = None
        if (is_default_domain(node) and node.op_type not in NONDETERMINISTIC and not subgraphs(node)
                and not any(o in outputs for o in node.output)):
            if node.op_type == "Constant":
                value = constant_node_value(node)
                value_list = None if value is None else [value]
            elif node.op_type == "Identity" and known(node.input[0]) is not None:
                # point readers at the source instead of copying the tensor
                aliases[node.output[0]] = aliases.get(node.input[0], node.input[0])
                folded += 1
                continue
            elif node.op_type in ("Shape", "Size") and node.input[0] in shapes:
                value = _shape_value(node, shapes)
                value_list = None if value is None else [value]
            elif node.input and all(not name or known(name) is not None for name in node.input):
                inputs = [known(name) if name else None for name in node.input]
                value_list = _evaluate(node, inputs, model.opset_import)
                if value_list is not None:
                    in_bytes = sum(v.nbytes for v in inputs if v is not None)
                    out_bytes = sum(v.nbytes for v in value_list)
                    if out_bytes > in_bytes + MAX_GROWTH_BYTES:
                        value_list = None
        if value_list is None or len(value_list) != len([o for o in node.output if o]):
            keep.append(node)
            continue
        for name, value in zip([o for o in node.output if o], value_list):
            folded_values[name] = value
        folded += 1
    if not folded:
        return 0
    kept = [onnx.NodeProto() for _ in keep]
    for new, old in zip(kept, keep):
        new.CopyFrom(old)
    del graph.node[:]
    graph.node.extend(kept)
    # resolve alias chains (Identity of Identity of a weight) to their source, then rewire readers
    for name in list(aliases):
        source = aliases[name]
        while source in aliases:
            source = aliases[source]
        aliases[name] = source
    rename_reads(graph, aliases)
    existing = {init.name for init in graph.initializer}
    for name, value in folded_values.items():
        if name not in existing:
            # np.asarray, not ascontiguousarray: the latter turns 0-d scalars into shape (1,)
            graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    prune_initializers(graph)
    prune_value_info(graph)
    return folded


class ConstantFold(Pass):
    name = "constant_fold"
    description = "evaluate constant subgraphs (incl. Shape of static shapes) into initializers"

    def apply(self, model: onnx.ModelProto) -> PassResult:
        total = 0
        for _ in range(MAX_ROUNDS):
            folded = _fold_round(model)
            total += folded
            if not folded:
                break
        return PassResult(model, total)


__all__ = ["ConstantFold", "static_shapes"]
