"""Small ONNX graph helpers the ONNX passes share (onnx + numpy only).

Names in an ONNX graph are SSA: each value is produced once (by a node, an initializer or a graph
input). A node with a subgraph attribute (If / Loop / Scan) may read outer-scope values from inside
the subgraph, so "who reads this value" always includes those references (:func:`read_names`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import AttributeProto, numpy_helper

DEFAULT_DOMAINS = ("", "ai.onnx")


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    found = []
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            found.append(attr.g)
        elif attr.type == AttributeProto.GRAPHS:
            found.extend(attr.graphs)
    return found


def read_names(node: onnx.NodeProto) -> set[str]:
    """Every value name ``node`` reads: its inputs plus names its subgraphs read but do not define."""
    names = {name for name in node.input if name}
    for graph in subgraphs(node):
        defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
        for inner in graph.node:
            defined.update(o for o in inner.output if o)
        for inner in graph.node:
            names.update(read_names(inner) - defined)
        names.update(o.name for o in graph.output if o.name not in defined)
    return names


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Value name -> nodes that read it (directly or from a subgraph)."""
    readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in read_names(node):
            readers[name].append(node)
    return readers


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Value name -> the node that produces it."""
    return {out: node for node in graph.node for out in node.output if out}


def output_names(graph: onnx.GraphProto) -> set[str]:
    return {o.name for o in graph.output}


def is_default_domain(node: onnx.NodeProto) -> bool:
    return node.domain in DEFAULT_DOMAINS


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The tensor a ``Constant`` node produces, or None for the (rare) sparse / string forms."""
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    return None


class Constants:
    """Values fixed at build time: initializers that are not graph inputs (a graph input with an
    initializer is only a default, overridable at run time), ``Constant`` node outputs, and
    ``Identity`` of either. Lookups return numpy arrays (not copies to be mutated)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        inputs = {i.name for i in graph.input}
        self._initializers = {init.name: init for init in graph.initializer if init.name not in inputs}
        self._nodes = producers(graph)
        self._cache: dict[str, np.ndarray] = {}

    def get(self, name: str) -> np.ndarray | None:
        if not name:
            return None
        if name in self._cache:
            return self._cache[name]
        value = None
        if name in self._initializers:
            value = numpy_helper.to_array(self._initializers[name])
        elif name in self._nodes:
            node = self._nodes[name]
            if is_default_domain(node) and node.op_type == "Constant":
                value = constant_node_value(node)
            elif is_default_domain(node) and node.op_type == "Identity":
                value = self.get(node.input[0])
        if value is not None:
            self._cache[name] = value
        return value


def unique_name(taken: set[str], base: str) -> str:
    """``base`` or ``base_1``, ``base_2`` ... whichever is not in ``taken``; the result is added to it."""
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def all_names(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.input} | {o.name for o in graph.output} | {i.name for i in graph.initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    return names


def rename_reads(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    """Make every node (and subgraph node) that reads ``old`` read ``mapping[old]`` instead."""
    if not mapping:
        return
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in mapping:
                node.input[i] = mapping[name]
        for sub in subgraphs(node):
            rename_reads(sub, mapping)
            for out in sub.output:
                if out.name in mapping:
                    out.name = mapping[out.name]


def prune_initializers(graph: onnx.GraphProto, keep: Iterable[str] = ()) -> int:
    """Delete initializers nobody reads (and that are not graph outputs or in ``keep``); returns the count.

    Initializers that are also graph inputs are part of the model's interface and are kept.
    """
    used = set(keep) | output_names(graph) | {i.name for i in graph.input}
    for node in graph.node:
        used.update(read_names(node))
    return delete_where(graph.initializer, lambda init: init.name not in used)


def prune_value_info(graph: onnx.GraphProto) -> None:
    """Drop ``value_info`` entries for values no node produces any more (stale shape annotations)."""
    produced = {o for node in graph.node for o in node.output if o}
    delete_where(graph.value_info, lambda vi: vi.name not in produced)


def delete_where(field, predicate) -> int:
    """Delete the items of a repeated protobuf field for which ``predicate`` is true, in place; returns
    the count. (By index, back to front: ``field.remove(x)`` compares whole messages, slow for weights.)"""
    doomed = [i for i, item in enumerate(field) if predicate(item)]
    for i in reversed(doomed):
        del field[i]
    return len(doomed)


def delete_indices(field, indices) -> int:
    """Delete the items at ``indices`` of a repeated protobuf field, in place; returns the count."""
    doomed = sorted(set(indices))
    for i in reversed(doomed):
        del field[i]
    return len(doomed)


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 0)
