"""The "scratch" baseline of the Diff-Pruning paper (Fang et al. 2023, Table 1 "Scratch Training"; the code's
``--pruner reinit``): the pruned architecture with freshly initialised weights, so that fine-tuning it
measures what the pruned *structure* alone is worth, without the teacher's weights."""
from __future__ import annotations

import torch
from torch import nn


def reinitialize(model: nn.Module, seed: int | None = None) -> nn.Module:
    """The "scratch" baseline: ``reset_parameters()`` on every module that has one (PyTorch's default init:
    Conv/Linear kaiming-uniform(a=sqrt(5)), GroupNorm gamma=1, beta=0), as the paper's ``--pruner reinit``.
    With ``seed`` the result is deterministic and the global RNG state is left untouched. Grads are cleared."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        for m in model.modules():
            if callable(getattr(m, "reset_parameters", None)):
                m.reset_parameters()
    model.zero_grad(set_to_none=True)
    return model
