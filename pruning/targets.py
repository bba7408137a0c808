"""From a target ("remove 30% of the parameters", or of the MACs) to the pruning ratio that reaches it.

Under the local rule the widths depend on the ratio only, never on the scores (every group removes
C - int(C (1 - ratio)) channels, rounded to its blocks), so the removed fraction f(ratio) can be measured
without any scores: prune a copy of the network that lives on the meta device (shapes, no data) with
the lowest-index channels, count its parameters and MACs (``metrics/macs.py``, the paper's convention), and
bisect. Under the global rule the widths depend on the scores, so the caller passes a ``select`` that ranks
with them. f is a non-decreasing step function of the ratio; the search returns the ratio whose result lies
closest to the target and reports what it achieves.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Mapping

import torch
from torch import nn

from metrics.macs import count_macs
from pruning.select import select_groups
from pruning.surgery import apply_keeps
from pruning.trace.grouping import Analysis

KINDS = ("params", "macs")


def _meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers live on the meta device (no tensor data is copied)."""
    memo = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def zero_score_select(analysis: Analysis, head_mode: str,
                      round_to: int | None = None) -> Callable[[float], Mapping[int, torch.Tensor]]:
    """Local-rule keep sets for a ratio, from equal scores (the widths do not depend on the scores)."""
    groups = analysis.groups
    zeros = {i: torch.zeros(g.size) for i, g in enumerate(groups) if g.prunable}
    return lambda ratio: select_groups(groups, zeros, ratio, scope="local", head_mode=head_mode, round_to=round_to)


def removed_fraction(model: nn.Module, example_inputs: tuple, analysis: Analysis,
                     keeps: Mapping[int, torch.Tensor], kind: str, dense: int) -> float:
    """1 - (params or MACs after cutting ``keeps``) / ``dense``, measured on a meta copy."""
    trial = _meta_copy(model)
    apply_keeps(trial, copy.deepcopy(analysis.groups), keeps, keep_grads=False)
    return 1.0 - _count(trial, example_inputs, kind) / dense


def _count(model: nn.Module, example_inputs: tuple, kind: str) -> int:
    if kind == "params":
        return sum(p.numel() for p in model.parameters())
    return count_macs(model, tuple(_one_meta(x) for x in example_inputs)).macs_paper


def _one_meta(x):
    """Batch 1 of an example input for the meta copy: float tensors (also inside SDXL's ``added_cond_kwargs``
    dict) become meta; integer ones (class labels) keep their values, which the forward checks and an
    Embedding on the meta device indexes."""
    if isinstance(x, dict):
        return {k: _one_meta(v) for k, v in x.items()}
    if not isinstance(x, torch.Tensor):
        return x
    return torch.empty_like(x[:1], device="meta") if x.is_floating_point() else x[:1]


def ratio_for_target(model: nn.Module, example_inputs: tuple, analysis: Analysis, *, kind: str, target: float,
                     select: Callable[[float], Mapping[int, torch.Tensor]] | None = None,
                     head_mode: str = "channels", iterations: int = 24,
                     round_to: int | None = None) -> tuple[float, float]:
    """The ratio whose pruning removes the fraction of ``kind`` ("params" or "macs") closest to ``target``,
    and the fraction it removes. ``select(ratio) -> keeps``: the selection rule (default: the local rule).
    A target beyond what the largest ratio reaches is an error naming the reachable maximum."""
    if kind not in KINDS:
        raise ValueError(f"target kind must be one of {KINDS}, got {kind!r}")
    select = select or zero_score_select(analysis, head_mode, round_to)
    dense = _count(_meta_copy(model), example_inputs, kind)
    cache: dict[float, float] = {}

    def f(ratio: float) -> float:
        if ratio not in cache:
            try:
                cache[ratio] = removed_fraction(model, example_inputs, analysis, select(ratio), kind, dense)
            except ValueError:  # a group would empty at this ratio: treat as beyond reach
                cache[ratio] = float("inf")
        return cache[ratio]

    lo, hi = 0.0, 0.99
    while f(hi) == float("inf") and hi - lo > 1e-3:  # the largest ratio that still leaves every group non-empty
        hi = (lo + hi) / 2
    if f(hi) < target:
        raise ValueError(f"a {target:.1%} reduction of {kind} is out of reach: the largest pruning ratio "
                         f"({hi:.3f}) removes {f(hi):.1%} (protected groups and GroupNorm/head blocks keep the rest)")
    if iterations == 0:  # asked whether the target is reachable only (pruning.api.check_prune)
        return hi, f(hi)
    for _ in range(iterations):  # smallest ratio with f >= target, to within (hi - lo)
        mid = (lo + hi) / 2
        if f(mid) >= target:
            hi = mid
        else:
            lo = mid
    best = min((lo, hi), key=lambda r: abs(f(r) - target))
    return best, f(best)


def check_feasible(analysis: Analysis, *, ratio: float | None, head_mode: str, round_to: int | None,
                   scope: str) -> None:
    """What a spec asks of these groups, checked before any gradient pass or scoring (one-line ValueErrors):
    under the local rule every group's width depends on the ratio alone, so a ratio that would empty a group
    fails here, naming it; a ``round_to`` wider than every prunable group would change no width at all."""
    prunable = [g for g in analysis.groups if g.prunable]
    if round_to and round_to > 1 and prunable and all(g.size < math.lcm(round_to, g.blocks) for g in prunable):
        raise ValueError(f"round_to={round_to} changes no width: every prunable group is narrower than it (the "
                         f"widest has {max(g.size for g in prunable)} channels); give a smaller multiple or none")
    if ratio is not None and scope == "local":
        try:
            zero_score_select(analysis, head_mode, round_to)(ratio)
        except ValueError as err:
            raise ValueError(f"ratio {ratio} is not feasible: {err}") from None
