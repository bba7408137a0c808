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

``groups`` (optional, one label per unit, None = free) adds the constraint that no labelled group is taken
whole: at least one unit of each stays. An SD U-Net labels its units by stage (``sd.py``), so layer
pruning never empties a down or up block; a target reachable only that way is refused before any work
(``check_reachable``). The exact DP carries one more bit per state, "every unit of the current group so far
taken", and drops the states that end a group with it set.
"""
from __future__ import annotations

from typing import Sequence

SOLVERS = ("knapsack", "greedy", "ranked", "exhaustive")


def _members(groups: Sequence[str | None] | None, n: int) -> dict[str, list[int]]:
    """Label -> indices of the units in that group (free units, None, are in none)."""
    if groups is None:
        return {}
    if len(groups) != n:
        raise ValueError(f"{len(groups)} group labels for {n} units")
    out: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        if g is not None:
            out.setdefault(g, []).append(i)
    return out


def check_reachable(costs: Sequence[int], target: int, what: str = "cost",
                    groups: Sequence[str | None] | None = None) -> None:
    """ValueError when removing every unit saves less than ``target``, or, with ``groups``, when only
    removing every unit of some group (a whole stage) would reach it."""
    if sum(costs) < target:
        raise ValueError(f"the target is not reachable: it asks to remove {target:,} {what}, but removing every "
                         f"removable unit removes only {sum(costs):,}")
    members = _members(groups, len(costs))
    most = sum(costs) - sum(min(costs[i] for i in idx) for idx in members.values())  # keep each group's cheapest
    if most < target:
        raise ValueError(f"the target is only reachable by removing a whole stage: it asks to remove {target:,} "
                         f"{what}, but keeping one unit of every stage ({', '.join(sorted(members))}) removes at "
                         f"most {most:,}; ask for less (or use a handcrafted architecture that drops a whole level)")


def _front(states: dict) -> dict:
    """The Pareto front of {cost: (score, chosen)}: a state stays only if every costlier one scores more."""
    front, best = {}, float("inf")
    for cost in sorted(states, reverse=True):
        if states[cost][0] < best:
            front[cost] = states[cost]
            best = states[cost][0]
    return front


def knapsack(scores: Sequence[float], costs: Sequence[int], target: int,
             groups: Sequence[str | None] | None = None) -> list[int]:
    """The exact minimum-score subset whose costs sum to at least ``target`` and that takes no labelled
    group whole (module docstring)."""
    if len(scores) != len(costs):
        raise ValueError(f"{len(scores)} scores for {len(costs)} costs")
    if any(c < 0 for c in costs):
        raise ValueError(f"costs must be >= 0, got {list(costs)}")
    check_reachable(costs, target, groups=groups)
    members = _members(groups, len(costs))
    # Units in runs: each labelled group together (its first appearance), each free unit alone.
    runs: list[tuple[bool, list[int]]] = []
    for i in range(len(costs)):
        g = None if groups is None else groups[i]
        if g is None:
            runs.append((False, [i]))
        elif members[g][0] == i:
            runs.append((True, members[g]))
    # states: (all of the current group taken so far) -> saturated cost -> (score, chosen indices).
    states: dict[int, tuple[float, tuple[int, ...]]] = {0: (0.0, ())}
    for constrained, run in runs:
        flagged = {True: states, False: {}}
        for i in run:
            new: dict[bool, dict] = {True: {}, False: dict(flagged[False])}
            for whole, front in flagged.items():
                for cost, (score, chosen) in front.items():
                    if whole and cost not in new[False] or whole and score < new[False][cost][0]:
                        new[False][cost] = (score, chosen)  # unit i kept: the group is no longer whole
                    cost2, score2 = min(cost + int(costs[i]), target), score + float(scores[i])
                    if cost2 not in new[whole] or score2 < new[whole][cost2][0]:
                        new[whole][cost2] = (score2, chosen + (i,))  # unit i taken
            flagged = {k: _front(v) for k, v in new.items()}
        merged = dict(flagged[False])
        if not constrained:  # a free unit: taking it "whole" is allowed
            for cost, state in flagged[True].items():
                if cost not in merged or state[0] < merged[cost][0]:
                    merged[cost] = state
        states = _front(merged)
    return sorted(states[target][1])


def greedy(scores: Sequence[float], costs: Sequence[int], target: int,
           groups: Sequence[str | None] | None = None) -> list[int]:
    """Units by ascending s_i / c_i until the target is reached (zero-cost units last); a unit that would
    be the last of its group is passed over."""
    check_reachable(costs, target, groups=groups)
    order = sorted(range(len(scores)), key=lambda i: (scores[i] / costs[i]) if costs[i] > 0 else float("inf"))
    return _take(order, costs, target, groups)


def ranked(scores: Sequence[float], costs: Sequence[int], target: int,
           groups: Sequence[str | None] | None = None) -> list[int]:
    """Units by ascending score until the target is reached (a group's last unit passed over)."""
    check_reachable(costs, target, groups=groups)
    return _take(sorted(range(len(scores)), key=lambda i: scores[i]), costs, target, groups)


def _take(order: Sequence[int], costs: Sequence[int], target: int,
          groups: Sequence[str | None] | None = None) -> list[int]:
    left = {g: len(idx) for g, idx in _members(groups, len(costs)).items()}  # units of each group still kept
    chosen, total = [], 0
    for i in order:
        if total >= target:
            break
        g = None if groups is None else groups[i]
        if g is not None and left[g] == 1:
            continue
        if g is not None:
            left[g] -= 1
        chosen.append(i)
        total += costs[i]
    if total < target:  # passing over each group's last unit fell short (a greedy order, not the reachability)
        raise ValueError(f"the {len(chosen)} units this order takes remove {total:,}, short of the target "
                         f"{target:,}, once each stage keeps a unit; use solver 'knapsack'")
    return sorted(chosen)


def select(scores: Sequence[float], costs: Sequence[int], target: int, solver: str = "knapsack",
           groups: Sequence[str | None] | None = None) -> list[int]:
    """Dispatch to a solver by name (``groups``: module docstring)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    if solver == "exhaustive":
        raise ValueError("solver 'exhaustive' measures L(S) on the model; call pruning.layers.prune_layers "
                         "(or exhaustive.search) instead of select")
    return {"knapsack": knapsack, "greedy": greedy, "ranked": ranked}[solver](scores, costs, target, groups)
