"""All or nothing: ``with rollback(model):`` restores the model exactly as it was if the block raises.

Pruning changes a model in many small steps (gradients accumulated into ``.grad``, parameters replaced by
sliced copies, width and head attributes, the config). An error half-way (a group that would empty, an
unsupported op found by the re-trace, a non-finite loss) must not leave the caller with a half-pruned network.

What makes a cheap snapshot enough: surgery never writes into an existing tensor. It replaces parameters by
NEW ``nn.Parameter`` objects (``pruning/surgery.py``) and sets attributes, so keeping each module's attribute
dictionary (a shallow copy, with copies of its parameter, buffer and sub-module tables) and each parameter's
``.grad`` is enough to put every object back. No tensor data is copied.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def rollback(model: nn.Module) -> Iterator[None]:
    """Run the block; on any exception put back every module attribute, parameter object and ``.grad`` of
    ``model`` (and its train/eval flags), then re-raise."""
    modules = list(model.modules())
    saved = []
    for m in modules:
        state = dict(m.__dict__)
        for table in ("_parameters", "_buffers", "_modules"):
            state[table] = dict(m.__dict__[table])
        saved.append((m, state))
    grads = [(p, p.grad) for p in model.parameters()]
    try:
        yield
    except BaseException:
        for m, state in saved:
            m.__dict__.clear()
            m.__dict__.update(state)
        for p, g in grads:
            p.grad = g
        raise
