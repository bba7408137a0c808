"""The exhaustive layer search: measure L(S) for every subset that just reaches the budget, keep the least.

LAPTOP-Diff (Zhang et al. 2024, arXiv 2404.11098, Sec. 3) replaces

    min_{S}  L(S)   subject to   sum_{i in S} c_i >= p * C

by a knapsack on single-unit scores, which is exact only when L is additive, L(S) = sum_{i in S} L({i}).
With few units (the tiny U-Net has 15) the original problem can be solved as posed: enumerate the subsets,
measure L(S) on the calibration set (``criteria.output_losses``, batched) and take the least. Only the
*minimal covers* are measured: subsets that reach the target and fall below it when any one unit is put
back. Every other subset reaching the target is a minimal cover plus extra units, which remove more than
the budget asks; on the tiny teacher that is 1,432 of the 13,727 subsets that reach the ratio-0.3 parameter count.

    covers = minimal_covers(costs, target)           # list of index tuples, sizes ascending
    chosen, losses = search(model, calib, units, costs, target)

Cost: one forward pass of the calibration set per cover (batched), so this is an option for models with at
most ``MAX_UNITS`` units; more is an error before any work.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from models import UNet
from pruning.layers.criteria import Calibration, output_losses
from pruning.layers.units import Unit

MAX_UNITS = 20  # 2^20 masks enumerate in a second; the measurement is what grows


def check_size(n_units: int) -> None:
    """ValueError when the search would enumerate more than 2^MAX_UNITS subsets."""
    if n_units > MAX_UNITS:
        raise ValueError(f"solver 'exhaustive' enumerates 2^units subsets; the model has {n_units} removable units, "
                         f"more than {MAX_UNITS}: use solver 'knapsack'")


def minimal_covers(costs: Sequence[int], target: int) -> list[tuple[int, ...]]:
    """Every index set S with sum_{i in S} c_i >= target and sum - c_j < target for each j in S, ordered by
    size, then lexicographically. A zero-cost unit is never in a minimal cover; target <= 0 gives [()]."""
    m = len(costs)
    check_size(m)
    if target <= 0:
        return [()]
    c = np.asarray(costs, dtype=np.int64)
    if (c < 0).any():
        raise ValueError(f"costs must be >= 0, got {list(costs)}")
    masks = np.arange(1 << m, dtype=np.int64)
    bits = ((masks[:, None] >> np.arange(m)) & 1).astype(bool)              # (2^m, m)
    total = bits @ c                                                         # (2^m,)
    smallest = np.where(bits, c[None, :], np.iinfo(np.int64).max).min(axis=1)  # cheapest unit in S
    keep = (total >= target) & (total - smallest < target)
    covers = [tuple(np.flatnonzero(b).tolist()) for b in bits[keep]]
    return sorted(covers, key=lambda s: (len(s), s))


def measure(model: UNet, calib: Calibration, units: Sequence[Unit], covers: Sequence[tuple[int, ...]], *,
            batch_size: int = 256, chunk: int = 64,
            progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """L(S) of every cover (float64, (len(covers),)), ``chunk`` covers per call of ``output_losses``."""
    out = []
    for start in range(0, len(covers), chunk):
        subsets = [frozenset(units[i].path for i in s) for s in covers[start:start + chunk]]
        out.append(output_losses(model, calib, subsets, batch_size).numpy())
        if progress is not None:
            progress(min(start + chunk, len(covers)), len(covers))
    return np.concatenate(out) if out else np.zeros(0)


def search(model: UNet, calib: Calibration, units: Sequence[Unit], costs: Sequence[int], target: int, *,
           batch_size: int = 256, groups: Sequence[str | None] | None = None) -> tuple[list[int], dict]:
    """The minimal cover of least measured L(S): (its indices ascending, {"covers": n, "loss": L(S)}).
    groups: as ``knapsack.knapsack``'s, covers that take a labelled group whole are left out (SD stages)."""
    if len(costs) != len(units):
        raise ValueError(f"{len(costs)} costs for {len(units)} units")
    check_size(len(units))
    covers = minimal_covers(costs, target)
    if groups is not None:
        sizes = {g: groups.count(g) for g in set(groups) if g is not None}
        covers = [s for s in covers if all(sum(groups[i] == g for i in s) < n for g, n in sizes.items())]
    if not covers:
        raise ValueError(f"the target is not reachable: removing every unit removes {sum(costs):,}, "
                         f"the target asks for {target:,}")
    losses = measure(model, calib, units, covers, batch_size=batch_size)
    best = int(np.argmin(losses))
    return sorted(covers[best]), {"covers": len(covers), "loss": float(losses[best])}


def rank_of(loss: float, losses: np.ndarray) -> int:
    """1 + the number of measured covers strictly better than ``loss`` (1 = the optimum)."""
    return 1 + int((np.asarray(losses) < loss).sum())
