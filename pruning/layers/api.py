"""``prune_layers``: one-shot layer pruning of a U-Net to a target (LAPTOP-Diff, arXiv 2404.11098, Sec. 3).

    small, report = prune_layers(model, LayerPruning(criterion="output-loss", target_params=0.3), images=x0)
    small, report = prune_layers(model, criterion="output-loss", target_params=0.3, images=x0)   # the same

What to do is ONE frozen spec, ``LayerPruning`` (``pruning/layers/spec.py``: options, defaults, checks).

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
from pruning.inputs import check_layer_inputs
from pruning.layers import exhaustive, knapsack
from pruning.layers.criteria import LAYER_CRITERIA, Calibration, CriterionInputs, make_calibration
from pruning.layers.spec import LayerPruning
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
    spec: LayerPruning | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-ready (saved as report.json next to the pruned checkpoint)."""
        return {"spec": None if self.spec is None else self.spec.to_dict(), "method": "layer", "criterion": self.criterion, "solver": self.solver,
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


def target_cost(model: UNet, units: list[Unit], what: str, fraction: float) -> tuple[int, int, int]:
    """(target saving, total, MACs total) for removing ``fraction`` of the model's params or MACs.
    Raises ValueError when removing every unit cannot reach it."""
    macs = count_macs(model, model.example_inputs())
    total = macs.params if what == "params" else macs.macs_paper
    need = int(-(-fraction * total // 1))  # ceil: "at least fraction of the total"
    knapsack.check_reachable([u.cost(what) for u in units], need, what)
    return need, total, macs.macs_paper


def check_target(model: UNet, spec: LayerPruning) -> None:
    """A target that removing every unit of ``model`` cannot reach is an error, before any scoring or sampling."""
    target_cost(model, find_units(model), *spec.target)


def prune_layers(model: UNet, spec: LayerPruning | None = None, images: torch.Tensor | None = None, *,
                 schedule: Schedule | None = None, calib: Calibration | None = None,
                 scores: dict[str, float] | None = None, forward_batch: int = 256,
                 **options: Any) -> tuple[UNet, LayerReport]:
    """Remove units of ``model`` so that at least the spec's target fraction of its parameters (MACs, paper
    convention) goes, choosing them by ``spec.criterion`` and ``spec.solver``. Returns the new, smaller UNet
    (eval mode) and a ``LayerReport``. Instead of a spec, its options may be given as keywords.

    images:    clean training images (N, C, H, W) in [-1, 1]: the calibration set (output-loss, the exhaustive
               solver) is built from them (``spec.calib_size`` triples), and taylor uses the first
               ``spec.batch_size`` as its ONE gradient batch.
    calib:     a ready calibration set instead (e.g. shared with an additivity report).
    scores:    this criterion's scores computed already (e.g. for an additivity report): no scoring pass.
    forward_batch: samples per batched forward of output-loss and the exhaustive search (memory only).
    """
    if spec is None:
        if options.get("criterion") == "taylor" and "batch_size" not in options and images is not None:
            options["batch_size"] = int(images.shape[0])  # the batch it is given, unless stated
        spec = LayerPruning(**options)
    elif options:
        raise TypeError(f"give a LayerPruning spec or keyword options, not both (got {sorted(options)})")
    elif not isinstance(spec, LayerPruning):
        raise TypeError(f"spec must be a pruning.layers.spec.LayerPruning, got {type(spec).__name__}")
    check_layer_inputs(model, images, calib)  # every criterion: the model, then its images, before any work
    criterion, solver, (what, fraction) = spec.criterion, spec.solver, spec.target
    if criterion in ("output-loss", "taylor") and images is None and calib is None and scores is None:
        raise ValueError(f"criterion {criterion!r} needs data: clean training images (images=x0)")
    if criterion == "taylor" and images is None and scores is None:
        raise ValueError("criterion 'taylor' needs images=x0 (its gradient batch)")
    if criterion == "taylor" and images is not None and images.shape[0] < spec.batch_size:
        raise ValueError(f"criterion 'taylor' reads a gradient batch of batch_size={spec.batch_size} images, "
                         f"got {images.shape[0]}")
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
        calib = make_calibration(images, schedule, size=spec.calib_size, timesteps=spec.calib_timesteps, seed=spec.seed)
    seconds["units"] = time.perf_counter() - start
    start = time.perf_counter()
    taylor = criterion == "taylor"
    inputs = CriterionInputs(calib=calib, x0=images[:spec.batch_size] if taylor and images is not None else images,
                             schedule=schedule, thr=spec.thr, micro_batch=spec.micro_batch,
                             max_timesteps=spec.max_timesteps, seed=spec.seed, batch_size=forward_batch)
    if scores is None:
        scores = LAYER_CRITERIA[criterion](model, units, inputs)
    missing = [u.path for u in units if u.path not in scores]
    if missing:
        raise ValueError(f"the given scores have no value for units {missing}")
    seconds["scores"] = time.perf_counter() - start
    start = time.perf_counter()
    costs = [u.cost(what) for u in units]
    if solver == "exhaustive":
        chosen, _ = exhaustive.search(model, calib, units, costs, need, batch_size=forward_batch)
    else:
        chosen = knapsack.select([scores[u.path] for u in units], costs, need, solver)
    removed = [units[i].path for i in chosen]
    small = remove_units(model, removed)
    after = count_macs(small, small.example_inputs())
    seconds["select_and_build"] = time.perf_counter() - start
    report = LayerReport(criterion=criterion, solver=solver, target=(what, fraction), units=units, scores=scores,
                         removed=removed, params_before=sum(p.numel() for p in model.parameters()),
                         params_after=after.params, macs_before=macs_before, macs_after=after.macs_paper,
                         calibration=None if calib is None else {"size": int(calib.x_t.shape[0]), "seed": calib.seed,
                                                                 "timesteps": calib.timesteps},
                         seconds=seconds, spec=spec)
    return small, report
