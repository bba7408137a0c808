"""``pruning.prune``: the one call that prune.py is a thin shell over.

    model, report = prune(model, (x, t), method="diff-pruning", ratio=0.3, data=x0, thr=0.05)

Works on any ``nn.Module`` whose forward the tracer understands (``pruning/graph.py``). The steps:

1. trace one forward pass on ``example_inputs`` and build the coupling groups;
2. for the gradient criteria, accumulate the gradient over timesteps on ``data`` (Diff-Pruning: stop at
   the first t with L_t < thr * L_max; plain Taylor: every timestep, thr = 0);
3. score and prune the groups: "local" scope as the paper (each group in turn, re-scored on the partly
   pruned model, removing n = C - int(C (1 - ratio)) channels, equally from every GroupNorm group / head),
   or "global" ranking across groups;
4. for the "scratch" baseline, re-initialise every layer of the pruned network (PyTorch default init);
5. record the new widths in the model's config (our U-Net) and check every module's bookkeeping.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from diffusion.schedule import Schedule
from pruning.trace.grouping import build_groups
from pruning.groups import Group, describe
from pruning.importance import IMPORTANCE, TimestepReport, accumulate_gradients
from pruning.select import select_groups
from pruning.surgery import attention_heads, prune as apply_keeps, prune_sequential, reinitialize

METHODS = ("random", "magnitude", "taylor", "diff-pruning", "scratch")
GRADIENT_METHODS = ("taylor", "diff-pruning")


@dataclass
class PruneReport:
    """What ``prune`` did: widths before/after (module path -> output channels), the groups, timesteps."""

    method: str
    ratio: float
    scope: str
    widths_before: dict[str, int]
    widths_after: dict[str, int]
    groups: list[Group]
    groups_text: str
    params_before: int
    params_after: int
    timesteps: TimestepReport | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (saved next to the pruned checkpoint)."""
        ts = self.timesteps
        return {"method": self.method, "ratio": self.ratio, "scope": self.scope,
                "params_before": self.params_before, "params_after": self.params_after,
                "widths_before": self.widths_before, "widths_after": self.widths_after,
                "num_groups": len(self.groups), "num_prunable_groups": sum(g.prunable for g in self.groups),
                "kept_timesteps": None if ts is None else {"first": ts.kept[0] if ts.kept else None,
                                                           "last": ts.kept[-1] if ts.kept else None,
                                                           "count": len(ts.kept)},
                "timestep_losses": None if ts is None else ts.losses, "thr": None if ts is None else ts.thr,
                "loss_max": None if ts is None else ts.loss_max, "seconds": self.seconds}


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every Conv2d / Linear and channel count of every GroupNorm, by module path."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            out[name] = m.weight.shape[0]
        elif isinstance(m, nn.GroupNorm):
            out[name] = m.num_channels
    return out


def check_arguments(method: str, ratio: float, thr: float, scope: str) -> None:
    """Clear errors for bad settings, before any work is done."""
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose one of {METHODS}")
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio}")
    if thr < 0:
        raise ValueError(f"thr must be >= 0, got {thr}")
    if scope not in ("local", "global"):
        raise ValueError(f"scope must be 'local' or 'global', got {scope!r}")


def prune(model: nn.Module, example_inputs: tuple, *, method: str = "diff-pruning", ratio: float = 0.3,
          ignored: Iterable[str] = (), data: torch.Tensor | None = None, schedule: Schedule | None = None,
          thr: float = 0.05, scope: str = "local", head_mode: str = "channels", micro_batch: int = 16,
          max_timesteps: int | None = None, seed: int = 0, progress: bool = True) -> tuple[nn.Module, PruneReport]:
    """Prune ``model`` in place and return it with a ``PruneReport``.

    example_inputs: positional inputs of one forward pass, e.g. (x (1, 3, H, W), t (1,)).
    method:         random | magnitude | taylor | diff-pruning | scratch (random pruning, then re-init).
    ratio:          the paper's per-group channel sparsity (local) or the global fraction of channels.
    ignored:        module paths whose output channels are never pruned (conv_out's are protected anyway).
    data:           (B, C, H, W) clean images in [-1, 1]: the ONE batch x0 of the gradient criteria.
    thr:            Diff-Pruning's threshold (0 keeps every timestep; "taylor" always uses 0).
    micro_batch:    gradient accumulation in micro-batches of this size (same gradient as the full batch).
    max_timesteps:  cap on the timesteps of the gradient loop (for quick runs; None = up to T).
    """
    check_arguments(method, ratio, thr, scope)
    if method in GRADIENT_METHODS and data is None:
        raise ValueError(f"method {method!r} needs data: a batch of clean training images (data=x0)")
    seconds: dict[str, float] = {}
    widths_before, params_before = layer_widths(model), sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    groups = build_groups(model, example_inputs, ignored=ignored)
    seconds["trace_and_group"] = time.perf_counter() - start
    groups_text = describe(groups)

    timesteps = None
    generator = torch.Generator().manual_seed(seed)
    if method in GRADIENT_METHODS:
        start = time.perf_counter()
        timesteps = accumulate_gradients(model, schedule or Schedule(), data, thr=0.0 if method == "taylor" else thr,
                                         micro_batch=micro_batch, generator=generator, max_timesteps=max_timesteps,
                                         progress=progress)
        seconds["gradients"] = time.perf_counter() - start

    criterion = IMPORTANCE["random" if method == "scratch" else method]
    start = time.perf_counter()
    if scope == "local":
        prune_sequential(model, groups, criterion, ratio, head_mode=head_mode, generator=generator)
    else:  # global ranking needs every group's scores on the same (dense) model
        scores = {i: criterion(model, g, generator=generator) for i, g in enumerate(groups) if g.prunable}
        keeps = select_groups(groups, scores, ratio, scope="global", head_mode=head_mode,
                              num_heads=attention_heads(model))
        apply_keeps(model, groups, keeps)
    if method == "scratch":  # widths are final already: prune_sequential / apply_keeps ran finalize
        reinitialize(model, seed=seed)
    for p in model.parameters():  # the accumulated gradients served the ranking only
        p.grad = None
    seconds["select_and_surgery"] = time.perf_counter() - start
    report = PruneReport(method=method, ratio=ratio, scope=scope, widths_before=widths_before,
                         widths_after=layer_widths(model), groups=groups, groups_text=groups_text,
                         params_before=params_before, params_after=sum(p.numel() for p in model.parameters()),
                         timesteps=timesteps, seconds=seconds)
    return model, report
