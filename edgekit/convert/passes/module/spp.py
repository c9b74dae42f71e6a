"""SPP (parallel max-pools k1 < k2 < ... on one tensor) -> SPPF (one k1 max-pool applied in a chain).

Why it is exact. A stride-1 max-pool of odd size k = 2r + 1 with padding r pads with -inf
(PyTorch and ONNX MaxPool ignore padded cells), so it is ``max`` over the window [i - r, i + r]
clipped to the valid range V. Composing two of them:

    pool_a(pool_b(x))[i] = max_{j in [i - r_a, i + r_a] ∩ V} max_{l in [j - r_b, j + r_b] ∩ V} x[l]
                         = max_{l in [i - r_a - r_b, i + r_a + r_b] ∩ V} x[l]  = pool_{a + b - 1}(x)[i]

(the union of the inner windows is one interval because V is an interval containing i; the same
holds per axis, so in 2-D too). Hence pool9 = pool5∘pool5 and pool13 = pool5∘pool9, and
SPP(5, 9, 13)'s ``cat(y, pool5(y), pool9(y), pool13(y))`` equals SPPF's
``cat(y, p(y), p(p(y)), p(p(p(y))))`` with p = pool5, bit for bit (max is exact in floating point).

Recognised by structure in any module's forward (traced as a graph of submodule calls): two or
more ``nn.MaxPool2d`` calls on the *same* tensor, each stride 1, padding k // 2, dilation 1, odd
square kernel, with sorted sizes chaining as k_{i+1} = k_i + k_1 - 1 (5, 9, 13 / 3, 5, 7 ...).
The forward graph is rewritten so that pool_{i+1} reads pool_i's output through the k_1 pool
(reused), and the module becomes a ``torch.fx.GraphModule`` (class name ``<Original>SPPF``) holding
only the submodules it still calls: the larger pools are gone.
"""

from __future__ import annotations

from itertools import pairwise

from torch import fx, nn

from edgekit.convert.passes.module.tree import SubmoduleRewrite, near_descendants, trace_calls


def _same_size_pool_kernel(pool: nn.Module) -> int | None:
    """k when ``pool`` is a stride-1, padding-k//2, odd-k square MaxPool2d (size preserving), else None."""
    if not isinstance(pool, nn.MaxPool2d) or pool.return_indices:
        return None

    def pair(value: object) -> tuple:
        return tuple(value) if isinstance(value, (tuple, list)) else (value, value)

    kh, kw = pair(pool.kernel_size)
    stride = pair(pool.stride if pool.stride is not None else pool.kernel_size)
    if kh != kw or kh % 2 == 0 or stride != (1, 1) or pair(pool.padding) != (kh // 2, kh // 2) or pair(pool.dilation) != (1, 1):
        return None
    return int(kh)


def _parallel_pool_groups(module: nn.Module, graph: fx.Graph) -> list[list[tuple[int, fx.Node]]]:
    """Groups of (kernel, node) pool calls on one tensor whose sorted kernels chain (k_{i+1} = k_i + k_1 - 1)."""
    by_input: dict[fx.Node, list[tuple[int, fx.Node]]] = {}
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
            continue
        kernel = _same_size_pool_kernel(module.get_submodule(node.target))
        if kernel is not None:
            by_input.setdefault(node.args[0], []).append((kernel, node))
    groups = []
    for pools in by_input.values():
        pools.sort(key=lambda item: item[0])
        kernels = [k for k, _ in pools]
        if len(pools) < 2 or len(set(kernels)) != len(kernels) or kernels[0] == 1:
            continue
        base = kernels[0]
        if all(b == a + base - 1 for a, b in pairwise(kernels)):
            groups.append(pools)
    return groups


def chain_pools(module: nn.Module) -> fx.GraphModule | None:
    """``module`` with every chaining group of parallel max-pools rewritten into a chain, or None."""
    graph = trace_calls(module)
    if graph is None:
        return None
    groups = _parallel_pool_groups(module, graph)
    if not groups:
        return None
    order = {node: i for i, node in enumerate(graph.nodes)}
    for pools in groups:
        base_node = pools[0][1]
        # Insert the chain before the first node that reads any of the pools, so every new node is
        # defined before its users (the pools themselves may appear in any order in the graph).
        users = [user for _, node in pools for user in node.users]
        first_user = min(users, key=order.__getitem__)
        previous = base_node
        with graph.inserting_before(first_user):
            for _, node in pools[1:]:
                chained = graph.call_module(str(base_node.target), (previous,))
                node.replace_all_uses_with(chained)
                previous = chained
        for _, node in pools[1:]:
            graph.erase_node(node)
        order = {node: i for i, node in enumerate(graph.nodes)}
    graph.lint()
    rewritten = fx.GraphModule(module, graph, class_name=f"{type(module).__name__}SPPF")
    return rewritten.train(module.training)


class SppToSppf(SubmoduleRewrite):
    name = "sppf"
    description = "SPP parallel max-pools (5, 9, 13) -> SPPF chained 5x5 max-pools (exact)"

    def prefilter(self, module: nn.Module) -> bool:
        # not a container / pool / an already rewritten graph, and two size-preserving pools nearby
        # (children / grandchildren) before paying for a trace
        return (not isinstance(module, (nn.Sequential, nn.MaxPool2d, fx.GraphModule))
                and sum(_same_size_pool_kernel(m) is not None for m in near_descendants(module)) >= 2)

    def rewrite(self, module: nn.Module) -> nn.Module | None:
        return chain_pools(module)
