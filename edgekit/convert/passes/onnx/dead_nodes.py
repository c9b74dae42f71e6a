"""Dead-node and Identity removal.

1. Pass-through nodes — ``Identity`` and inference-mode ``Dropout`` (no ``training_mode`` input or a
   constant false one, mask output unused) — are removed and their readers read the source value.
   When the pass-through output is a graph output, the *producer* of its input is renamed to
   produce the graph output instead (outputs keep their names); it is kept when its input is a graph
   input, an initializer or another graph output (an output must be computed by some node).
2. Nodes whose outputs reach no graph output (walking back from the outputs, subgraph reads
   included) are removed.
3. Initializers nobody reads and stale ``value_info`` entries are deleted.
"""

from __future__ import annotations

import onnx

from edgekit.convert.passes.base import Pass, PassResult
from edgekit.convert.passes.onnx.graph_tools import (
    Constants,
    consumers,
    delete_indices,
    is_default_domain,
    output_names,
    producers,
    prune_initializers,
    prune_value_info,
    read_names,
    rename_reads,
)


def _is_passthrough(node: onnx.NodeProto, constants: Constants, readers: dict) -> bool:
    if not is_default_domain(node) or not node.input or not node.input[0]:
        return False
    if node.op_type == "Identity":
        return True
    if node.op_type != "Dropout":
        return False
    if len(node.output) > 1 and node.output[1] and readers.get(node.output[1]):
        return False  # the mask is used
    if len(node.input) < 3 or not node.input[2]:
        return True
    training = constants.get(node.input[2])
    return training is not None and not bool(training)


def remove_passthroughs(graph: onnx.GraphProto) -> int:
    outputs = output_names(graph)
    constants = Constants(graph)
    readers = consumers(graph)
    aliases: dict[str, str] = {}
    doomed = []
    for i, node in enumerate(graph.node):
        if _is_passthrough(node, constants, readers) and node.output[0] not in outputs:
            aliases[node.output[0]] = node.input[0]
            doomed.append(i)
    for name in list(aliases):
        source = aliases[name]
        while source in aliases:
            source = aliases[source]
        aliases[name] = source
    removed = delete_indices(graph.node, doomed)
    rename_reads(graph, aliases)

    # pass-throughs that produce a graph output: move the output name onto the producer
    while True:
        produced = producers(graph)
        readers = consumers(graph)
        constants = Constants(graph)
        outputs = output_names(graph)
        target = None
        for i, node in enumerate(graph.node):
            if not _is_passthrough(node, constants, readers) or node.output[0] not in outputs:
                continue
            source = node.input[0]
            producer = produced.get(source)
            if source in outputs or producer is None:
                continue
            target = (i, source, node.output[0], producer)
            break
        if target is None:
            return removed
        index, source, output, producer = target
        del graph.node[index]
        for k, name in enumerate(producer.output):
            if name == source:
                producer.output[k] = output
        rename_reads(graph, {source: output})
        removed += 1


def remove_dead_nodes(graph: onnx.GraphProto) -> int:
    live = set(output_names(graph))
    doomed = []
    for i in range(len(graph.node) - 1, -1, -1):
        node = graph.node[i]
        if any(o in live for o in node.output if o):
            live.update(read_names(node))
        else:
            doomed.append(i)
    return delete_indices(graph.node, doomed)


def clean_graph(graph: onnx.GraphProto) -> tuple[int, str]:
    """Steps 1-3 of the module docstring on ``graph``, in place: (nodes removed, what was removed)."""
    passthrough = remove_passthroughs(graph)
    dead = remove_dead_nodes(graph)
    initializers = prune_initializers(graph)
    prune_value_info(graph)
    return passthrough + dead, f"{passthrough} Identity/Dropout, {dead} dead nodes, {initializers} unused initializers"


class RemoveDeadNodes(Pass):
    name = "dead_nodes"
    description = "remove Identity / inference Dropout nodes, nodes that reach no output, unused initializers"

    def apply(self, model: onnx.ModelProto) -> PassResult:
        return PassResult(model, *clean_graph(model.graph))
