"""Which units to remove: reach a target saving at the least summed score.

LAPTOP-Diff (Zhang et al. 2024, arXiv 2404.11098, Sec. 3) poses layer pruning as

    min_{r in {0,1}^m}  L(r)   subject to   sum_i r_i c_i >= p * C,

r_i = 1 removing unit i, c_i its cost (parameters or MACs saved), C the model's total and p the target
fraction. With an additive criterion, L(r) ~ sum_i r_i s_i, and this is a 0/1 knapsack problem (in its
"covering" form: reach at least a capacity at minimum value). Three solvers:

``knapsack``  exact dynamic programming over the units. The state after deciding units 1..k is the pair
              (cost reached, score paid); costs are saturated at the target (anything past it is as good as
              the target) and a state is dropped when another reaches at least its cost for at most its
              score. The surviving states at the end include the optimum: a subset is optimal iff its
              saturated cost is the target and no other such subset scores less.
``greedy``    sort by score per unit of cost, s_i / c_i, and take units until the target is reached.
``ranked``    sort by score alone (the handcrafted rule's order), take units until the target is reached.

A fourth solver, ``exhaustive`` (``exhaustive.py``), ignores the scores: it measures the output loss L(S) of
every subset that just reaches the target and keeps the least, so it needs the model and a calibration set
and is dispatched by ``api.prune_layers``, not by ``select``.

All return indices into the given lists, in ascending order; an unreachable target is a ValueError.
"""
from __future__ import annotations

from typing import Sequence

SOLVERS = ("knapsack", "greedy", "ranked", "exhaustive")


def check_reachable(costs: Sequence[int], target: int, what: str = "cost") -> None:
    """ValueError when removing every unit saves less than ``target``."""
    if sum(costs) < target:
        raise ValueError(f"the target is not reachable: it asks to remove {target:,} {what}, but removing every "
                         f"removable unit removes only {sum(costs):,}")


def knapsack(scores: Sequence[float], costs: Sequence[int], target: int) -> list[int]:
    """The exact minimum-score subset whose costs sum to at least ``target`` (module docstring)."""
    if len(scores) != len(costs):
        raise ValueError(f"{len(scores)} scores for {len(costs)} costs")
    if any(c < 0 for c in costs):
        raise ValueError(f"costs must be >= 0, got {list(costs)}")
    check_reachable(costs, target)
    # states: saturated cost -> (score, chosen indices). Pareto front over (cost up, score down).
    states: dict[int, tuple[float, tuple[int, ...]]] = {0: (0.0, ())}
    for i, (s, c) in enumerate(zip(scores, costs)):
        new = dict(states)
        for cost, (score, chosen) in states.items():
            cost2, score2 = min(cost + int(c), target), score + float(s)
            if cost2 not in new or score2 < new[cost2][0]:
                new[cost2] = (score2, chosen + (i,))
        front, best = {}, float("inf")
        for cost in sorted(new, reverse=True):  # keep a state only if every costlier one scores more
            if new[cost][0] < best:
                front[cost] = new[cost]
                best = new[cost][0]
        states = front
    return sorted(states[target][1])


def greedy(scores: Sequence[float], costs: Sequence[int], target: int) -> list[int]:
    """Units by ascending s_i / c_i until the target is reached (zero-cost units last)."""
    check_reachable(costs, target)
    order = sorted(range(len(scores)), key=lambda i: (scores[i] / costs[i]) if costs[i] > 0 else float("inf"))
    return _take(order, costs, target)


def ranked(scores: Sequence[float], costs: Sequence[int], target: int) -> list[int]:
    """Units by ascending score until the target is reached."""
    check_reachable(costs, target)
    return _take(sorted(range(len(scores)), key=lambda i: scores[i]), costs, target)


def _take(order: Sequence[int], costs: Sequence[int], target: int) -> list[int]:
    chosen, total = [], 0
    for i in order:
        if total >= target:
            break
        chosen.append(i)
        total += costs[i]
    return sorted(chosen)


def select(scores: Sequence[float], costs: Sequence[int], target: int, solver: str = "knapsack") -> list[int]:
    """Dispatch to a solver by name."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    if solver == "exhaustive":
        raise ValueError("solver 'exhaustive' measures L(S) on the model; call pruning.layers.prune_layers "
                         "(or exhaustive.search) instead of select")
    return {"knapsack": knapsack, "greedy": greedy, "ranked": ranked}[solver](scores, costs, target)
