"""``prune_layers``: one-shot layer pruning of a U-Net to a target (LAPTOP-Diff, arXiv 2404.11098, Sec. 3).

    small, report = prune_layers(model, criterion="output-loss", target_params=0.3, images=x0)

1. list the units the model still has, with the parameters and MACs each one saves (``units.find_units``);
2. check the target is reachable (before any scoring);
3. score every unit with the criterion (``criteria.LAYER_CRITERIA``);
4. choose the units: exact knapsack, greedy by score per cost, or ranked (``knapsack.py``), or the exhaustive
   search of the measured L(S) over the subsets that just reach the target (``exhaustive.py``, <= 20 units);
5. build the smaller network (``units.remove_units``): a new UNet whose config lists the removed units.

``model`` is left as it was. A channel-pruned model works the same way (its units are measured at their
pruned widths), and a layer-pruned model can be channel-pruned afterwards with ``pruning.prune``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from diffusion.schedule import Schedule
from metrics.macs import count_macs
from models.ddpm.unet import UNet
from pruning.layers import exhaustive, knapsack
from pruning.layers.criteria import (DEFAULT_CALIB_SIZE, DEFAULT_CALIB_TIMESTEPS, DEFAULT_SOLVER, LAYER_CRITERIA,
                                     Calibration, CriterionInputs, make_calibration)
from pruning.layers.units import Unit, find_units, remove_units


@dataclass
class LayerReport:
    """What ``prune_layers`` did. ``target`` is (what, fraction): ("params" | "macs", p)."""

    criterion: str
    solver: str
    target: tuple[str, float]
    units: list[Unit]
    scores: dict[str, float]
    removed: list[str]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    calibration: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready (saved as report.json next to the pruned checkpoint)."""
        return {"method": "layer", "criterion": self.criterion, "solver": self.solver,
                "target": {"what": self.target[0], "fraction": self.target[1]},
                "units": [{"path": u.path, "kind": u.kind, "params": u.params, "macs_paper": u.macs_paper,
                           "macs_full": u.macs_full, "score": self.scores[u.path], "removed": u.path in self.removed}
                          for u in self.units],
                "removed": self.removed, "params_before": self.params_before, "params_after": self.params_after,
                "macs_paper_before": self.macs_before, "macs_paper_after": self.macs_after,
                "calibration": self.calibration, "seconds": self.seconds}

    def table(self) -> str:
        """The units with cost and score, removed ones marked, then the achieved reduction."""
        lines = [f"{'unit':<22} {'kind':<5} {'params':>9} {'MACs':>12} {'score':>12}"]
        for u in self.units:
            mark = "  removed" if u.path in self.removed else ""
            lines.append(f"{u.path:<22} {u.kind:<5} {u.params:>9,} {u.macs_paper:>12,} {self.scores[u.path]:>12.5g}{mark}")
        pr = 1 - self.params_after / self.params_before
        mr = 1 - self.macs_after / self.macs_before
        lines.append(f"removed {len(self.removed)} of {len(self.units)} units: params {self.params_before:,} -> "
                     f"{self.params_after:,} (-{pr:.1%}), MACs {self.macs_before:,} -> {self.macs_after:,} (-{mr:.1%}); "
                     f"target -{self.target[1]:.0%} {self.target[0]}")
        return "\n".join(lines)


def check_layer_arguments(criterion: str, target_params: float | None, target_macs: float | None,
                          solver: str | None) -> tuple[str, float]:
    """Clear errors for bad settings, before any work. Returns the target as (what, fraction)."""
    if criterion not in LAYER_CRITERIA:
        raise ValueError(f"unknown layer criterion {criterion!r}; choose one of {tuple(LAYER_CRITERIA)}")
    if solver is not None and solver not in knapsack.SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {knapsack.SOLVERS}")
    if (target_params is None) == (target_macs is None):
        raise ValueError("give exactly one of target_params / target_macs (the fraction to remove)")
    what, p = ("params", target_params) if target_params is not None else ("macs", target_macs)
    if not 0.0 < p < 1.0:
        raise ValueError(f"target {what} fraction must be in (0, 1), got {p}")
    return what, float(p)


def target_cost(model: UNet, units: list[Unit], what: str, fraction: float) -> tuple[int, int, int]:
    """(target saving, total, MACs total) for removing ``fraction`` of the model's params or MACs.
    Raises ValueError when removing every unit cannot reach it."""
    c = model.config
    device = next(model.parameters()).device
    macs = count_macs(model, (torch.zeros(1, c.in_channels, c.image_size, c.image_size, device=device),
                              torch.ones(1, device=device)))
    total = macs.params if what == "params" else macs.macs_paper
    need = int(-(-fraction * total // 1))  # ceil: "at least fraction of the total"
    knapsack.check_reachable([u.cost(what) for u in units], need, what)
    return need, total, macs.macs_paper


def check_target(model: UNet, target_params: float | None, target_macs: float | None) -> None:
    """A target that removing every unit of ``model`` cannot reach is an error, before any scoring or sampling."""
    what, fraction = check_layer_arguments("random", target_params, target_macs, None)
    target_cost(model, find_units(model), what, fraction)


def prune_layers(model: UNet, *, criterion: str = "output-loss", target_params: float | None = None,
                 target_macs: float | None = None, solver: str | None = None, images: torch.Tensor | None = None,
                 schedule: Schedule | None = None, calib: Calibration | None = None,
                 calib_size: int = DEFAULT_CALIB_SIZE, calib_timesteps: str = DEFAULT_CALIB_TIMESTEPS,
                 seed: int = 0, thr: float = 0.05, micro_batch: int = 8, max_timesteps: int | None = None,
                 batch_size: int = 256, scores: dict[str, float] | None = None) -> tuple[UNet, LayerReport]:
    """Remove units of ``model`` so that at least ``target_params`` (or ``target_macs``) of its parameters (MACs,
    paper convention) go, choosing them by ``criterion`` and ``solver`` (default: the criterion's own,
    ``criteria.DEFAULT_SOLVER``). Returns the new, smaller UNet (eval mode) and a ``LayerReport``.

    images:    clean training images (N, C, H, W) in [-1, 1]: the calibration set of output-loss is built from
               them (``calib_size`` triples, ``calib_timesteps``, ``seed``), and taylor uses them as its ONE
               gradient batch (``thr``, ``micro_batch``, ``max_timesteps`` as in ``pruning.prune``).
    calib:     a ready calibration set instead (e.g. shared with an additivity report).
    scores:    this criterion's scores computed already (e.g. for an additivity report): no scoring pass.
    """
    what, fraction = check_layer_arguments(criterion, target_params, target_macs, solver)
    solver = solver or DEFAULT_SOLVER[criterion]
    if criterion in ("output-loss", "taylor") and images is None and calib is None and scores is None:
        raise ValueError(f"criterion {criterion!r} needs data: clean training images (images=x0)")
    if criterion == "taylor" and images is None and scores is None:
        raise ValueError("criterion 'taylor' needs images=x0 (its gradient batch)")
    if solver == "exhaustive" and images is None and calib is None:
        raise ValueError("solver 'exhaustive' measures L(S): it needs images=x0 or calib")
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    units = find_units(model)
    if not units:
        raise ValueError("the model has no removable unit left")
    need, total, macs_before = target_cost(model, units, what, fraction)
    if solver == "exhaustive":
        exhaustive.check_size(len(units))
    schedule = schedule or Schedule()
    if calib is None and ((criterion == "output-loss" and scores is None) or solver == "exhaustive"):
        calib = make_calibration(images, schedule, size=calib_size, timesteps=calib_timesteps, seed=seed)
    seconds["units"] = time.perf_counter() - start
    start = time.perf_counter()
    inputs = CriterionInputs(calib=calib, x0=images, schedule=schedule, thr=thr, micro_batch=micro_batch,
                             max_timesteps=max_timesteps, seed=seed, batch_size=batch_size)
    if scores is None:
        scores = LAYER_CRITERIA[criterion](model, units, inputs)
    missing = [u.path for u in units if u.path not in scores]
    if missing:
        raise ValueError(f"the given scores have no value for units {missing}")
    seconds["scores"] = time.perf_counter() - start
    start = time.perf_counter()
    costs = [u.cost(what) for u in units]
    if solver == "exhaustive":
        chosen, _ = exhaustive.search(model, calib, units, costs, need, batch_size=batch_size)
    else:
        chosen = knapsack.select([scores[u.path] for u in units], costs, need, solver)
    removed = [units[i].path for i in chosen]
    small = remove_units(model, removed)
    c = small.config
    device = next(small.parameters()).device
    after = count_macs(small, (torch.zeros(1, c.in_channels, c.image_size, c.image_size, device=device),
                               torch.ones(1, device=device)))
    seconds["select_and_build"] = time.perf_counter() - start
    report = LayerReport(criterion=criterion, solver=solver, target=(what, fraction), units=units, scores=scores,
                         removed=removed, params_before=sum(p.numel() for p in model.parameters()),
                         params_after=after.params, macs_before=macs_before, macs_after=after.macs_paper,
                         calibration=None if calib is None else {"size": int(calib.x_t.shape[0]), "seed": calib.seed,
                                                                 "timesteps": calib.timesteps},
                         seconds=seconds)
    return small, report
