"""The order in which the paper's pruner meets the layers: a depth-first walk of the autograd graph.

Diff-Pruning's code (VainF/Diff-Pruning ``ddpm_exp/prune.py``) prunes with the Torch-Pruning copy vendored in
that repository. With ``pruner.step(interactive=True)`` it builds one coupled group at a time, scores it on the
network that the groups before it have already pruned, and prunes it before building the next. The order of
the groups therefore changes which channels are kept, and reproducing the paper's channels means visiting
the groups in the same order. That order comes from how Torch-Pruning's ``DependencyGraph`` (Fang et al.,
"DepGraph: Towards Any Structural Pruning", CVPR 2023) fills its node table:

1. a forward hook on every layer maps the layer's output ``grad_fn`` to the layer;
2. a stack-based depth-first walk starts at the network output's ``grad_fn``. It pops a node (skipping one
   already expanded), and for each entry of its ``next_functions`` in order, skipping parameter leaves
   (``AccumulateGrad``), inserts the input's node into the table if it is new (a layer's node is the layer,
   any other op is its own node) and pushes it. So all inputs of a node are inserted before any of them is
   expanded, and the input pushed last is expanded first;
3. groups are then built for the Conv2d/Linear layers in table order, each group once.

This file performs step 2 on the graph of the tracer's own forward pass (run on the meta device with
``requires_grad`` weights, so it costs no arithmetic). Nothing is listed by name: the order follows from the
network's own autograd graph, so a forward written with other ops (``F.silu`` instead of ``x * sigmoid(x)``)
gets the order the paper's pruner would give it.
"""
from __future__ import annotations

from typing import Any, Iterable


def module_order(outputs: Iterable[Any], owner: dict[Any, str]) -> list[str]:
    """Module paths in the order the walk inserts them (see the module docstring).

    outputs: the ``grad_fn`` of each network output (None entries are skipped), walked in order.
    owner:   {grad_fn: module path} for the output grad_fn of every hooked layer.
    """
    order: list[str] = []
    inserted: set[Any] = set()
    expanded: set[Any] = set()

    def node(fn: Any) -> Any:
        return owner.get(fn, fn)  # a layer's grad_fn stands for the layer; other ops for themselves

    def insert(fn: Any) -> None:
        key = node(fn)
        if key not in inserted:
            inserted.add(key)
            if isinstance(key, str):
                order.append(key)

    for root in outputs:
        if root is None:
            continue
        insert(root)
        stack = [root]
        while stack:
            fn = stack.pop()
            key = node(fn)
            if key in expanded:
                continue
            expanded.add(key)
            for child, _ in fn.next_functions:
                if child is None or type(child).__name__ == "AccumulateGrad":
                    continue  # no input, or a parameter leaf
                insert(child)
                stack.append(child)
    return order
