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

The SD family's U-Net (``models/sd``) goes through the same steps, scored on (latent, t, eps, condition):

    small, report = prune_layers(unet, criterion="output-loss", target_params=0.3, images=latents,
                                 cond={"encoder_hidden_states": prompt_embeds})   # (N, 4, h, w), (N, 77, 768)

with its own units (``sd.py``: ResNets, Transformer2Ds or, ``granularity="block"``, BasicTransformerBlocks),
one unit of every down and up block always kept, and the scaled-linear schedule by default. Instead of a
target, ``criterion="handcrafted", architecture="bk-sdm-base" | "bk-sdm-small" | "bk-sdm-tiny"`` builds BK-SDM's
architecture from an SD-v1 U-Net with BK-SDM's weight copy (``bksdm.py``); no data is read.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from diffusion.schedule import Schedule
from models.ddpm.unet import UNet
from models.integrity import check_weights
from pruning.inputs import check_layer_inputs
from pruning.layers import bksdm, exhaustive, knapsack, sd
from pruning.layers.criteria import LAYER_CRITERIA, Calibration, CriterionInputs, make_calibration
from pruning.layers.spec import LayerPruning
from pruning.layers.units import Unit, find_units, model_macs, remove_units


@dataclass
class LayerReport:
    """What ``prune_layers`` did. ``target`` is (what, fraction): ("params" | "macs", p)."""

    criterion: str
    solver: str | None
    target: tuple[str, float] | None    # None: a handcrafted (BK-SDM) fixed architecture
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
    copied: dict[str, str] | None = None  # an architecture: student path -> teacher path of the re-mapped weights

    def summary(self) -> dict[str, Any]:
        """JSON-ready (saved as report.json next to the pruned checkpoint)."""
        return {"spec": None if self.spec is None else self.spec.to_dict(), "method": "layer", "criterion": self.criterion, "solver": self.solver,
                "target": None if self.target is None else {"what": self.target[0], "fraction": self.target[1]},
                "units": [{"path": u.path, "kind": u.kind, "params": u.params, "macs_paper": u.macs_paper,
                           "macs_full": u.macs_full, "score": self.scores[u.path], "removed": u.path in self.removed}
                          for u in self.units],
                "removed": self.removed, "params_before": self.params_before, "params_after": self.params_after,
                "macs_paper_before": self.macs_before, "macs_paper_after": self.macs_after,
                "calibration": self.calibration, "seconds": self.seconds, "copied": self.copied}

    def table(self) -> str:
        """The units with cost and score, removed ones marked, then the achieved reduction."""
        w = max([22] + [len(u.path) for u in self.units])
        lines = [f"{'unit':<{w}} {'kind':<5} {'params':>11} {'MACs':>14} {'score':>12}"]
        for u in self.units:
            mark = "  removed" if u.path in self.removed else ""
            lines.append(f"{u.path:<{w}} {u.kind:<5} {u.params:>11,} {u.macs_paper:>14,} {self.scores[u.path]:>12.5g}{mark}")
        pr = 1 - self.params_after / self.params_before
        mr = 1 - self.macs_after / self.macs_before
        goal = (f"architecture {self.spec.architecture}" if self.target is None and self.spec
                else f"target -{self.target[1]:.0%} {self.target[0]}")
        lines.append(f"removed {len(self.removed)} of {len(self.units)} units: params {self.params_before:,} -> "
                     f"{self.params_after:,} (-{pr:.1%}), MACs {self.macs_before:,} -> {self.macs_after:,} (-{mr:.1%}); "
                     f"{goal}")
        return "\n".join(lines)


def target_cost(model: UNet, units: list[Unit], what: str, fraction: float) -> tuple[int, int, int]:
    """(target saving, total, MACs total) for removing ``fraction`` of the model's params or MACs.
    Raises ValueError when removing every unit cannot reach it, or (SD) only emptying a stage would."""
    macs = model_macs(model)
    total = macs.params if what == "params" else macs.macs_paper
    need = int(-(-fraction * total // 1))  # ceil: "at least fraction of the total"
    knapsack.check_reachable([u.cost(what) for u in units], need, what, groups=stages(units))
    return need, total, macs.macs_paper


def stages(units: list[Unit]) -> list[str | None] | None:
    """The knapsack's groups: each SD unit's down/up block (one unit of each stays); None for the DDPM U-Net
    and for the mid block, which may go whole (BK-SDM-Small)."""
    if all(u.stage is None for u in units):
        return None
    return [None if u.stage in (None, "mid_block") else u.stage for u in units]


def check_target(model: UNet, spec: LayerPruning) -> None:
    """A target that removing every unit of ``model`` cannot reach is an error, before any scoring or sampling;
    so is a handcrafted architecture asked of a U-Net it does not apply to."""
    if spec.architecture is not None:
        bksdm.check_teacher(model, spec.architecture)
        return
    target_cost(model, find_units(model, spec.granularity), *spec.target)


def _check_inputs(model, spec: LayerPruning, images, cond, calib) -> None:
    """Every input, before any work: the model and its data (DDPM images in [-1, 1]; SD latents and their
    forward keywords)."""
    if spec.architecture is not None:
        bksdm.check_teacher(model, spec.architecture)
    if not sd.is_sd(model):
        if cond is not None or (calib is not None and calib.cond is not None):
            raise ValueError("cond (prompt embeddings, ...) applies to SD U-Nets; the DDPM U-Net reads (x_t, t)")
        check_layer_inputs(model, images, calib)  # the model, then its images
        return
    check_weights(model, "the model to prune")
    if images is not None or cond is not None:
        sd.check_condition(model, images, cond)
    if calib is not None:
        sd.check_condition(model, None, calib.cond)


def _check_data_for(model, spec: LayerPruning, images, cond, calib, scores) -> None:
    """What the criterion and the solver read is there: one-line errors before any work."""
    if sd.is_sd(model) and images is not None and cond is None:
        raise ValueError("an SD U-Net is scored on (latent, t, noise, condition): give cond= with the latents")
    criterion = spec.criterion
    if criterion in ("output-loss", "taylor") and images is None and calib is None and scores is None:
        raise ValueError(f"criterion {criterion!r} needs data: clean training images (images=x0)")
    if criterion == "taylor" and images is None and scores is None:
        raise ValueError("criterion 'taylor' needs images=x0 (its gradient batch)")
    if criterion == "taylor" and images is not None and images.shape[0] < spec.batch_size:
        raise ValueError(f"criterion 'taylor' reads a gradient batch of batch_size={spec.batch_size} images, "
                         f"got {images.shape[0]}")
    if spec.solver == "exhaustive" and images is None and calib is None:
        raise ValueError("solver 'exhaustive' measures L(S): it needs images=x0 or calib")


def _prune_architecture(model, spec: LayerPruning) -> tuple[UNet, LayerReport]:
    """BK-SDM's architecture of ``spec.architecture`` from ``model`` (bksdm.py), reported like a layer pruning."""
    start = time.perf_counter()
    macs_before = model_macs(model)
    units = find_units(model)
    student, info = bksdm.bk_sdm(model, spec.architecture)
    after = model_macs(student)
    dropped = set(info["removed"])
    order = sd.handcrafted_order(model, [u.path for u in units])
    return student, LayerReport(criterion="handcrafted", solver=None, target=None, units=units,
                                scores={p: float(i) for i, p in enumerate(order)},
                                removed=[u.path for u in units if u.path in dropped], params_before=macs_before.params,
                                params_after=after.params, macs_before=macs_before.macs_paper,
                                macs_after=after.macs_paper, seconds={"build": time.perf_counter() - start},
                                spec=spec, copied=info["copied"])


def prune_layers(model: UNet, spec: LayerPruning | None = None, images: torch.Tensor | None = None, *,
                 cond: dict | None = None, schedule: Schedule | None = None, calib: Calibration | None = None,
                 scores: dict[str, float] | None = None, forward_batch: int = 256,
                 **options: Any) -> tuple[UNet, LayerReport]:
    """Remove units of ``model`` so that at least the spec's target fraction of its parameters (MACs, paper
    convention) goes, choosing them by ``spec.criterion`` and ``spec.solver``. Returns the new, smaller UNet
    (eval mode) and a ``LayerReport``. Instead of a spec, its options may be given as keywords.

    images:    clean training images (N, C, H, W) in [-1, 1]: the calibration set (output-loss, the exhaustive
               solver) is built from them (``spec.calib_size`` triples), and taylor uses the first
               ``spec.batch_size`` as its ONE gradient batch.
    cond:      SD U-Nets: the forward keywords of each latent in ``images`` (one row each):
               {"encoder_hidden_states": (N, M, D)} plus "class_labels" / "added_cond_kwargs" where the U-Net
               reads them. ``images`` are then clean VAE latents, and ``schedule`` defaults to SD's.
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
    _check_inputs(model, spec, images, cond, calib)  # every criterion: the model, then its data, before any work
    if spec.architecture is not None:
        return _prune_architecture(model, spec)
    _check_data_for(model, spec, images, cond, calib, scores)
    criterion, solver, (what, fraction) = spec.criterion, spec.solver, spec.target
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    units = find_units(model, spec.granularity)
    if not units:
        raise ValueError("the model has no removable unit left")
    need, total, macs_before = target_cost(model, units, what, fraction)
    if solver == "exhaustive":
        exhaustive.check_size(len(units))
    schedule = schedule or (sd.latent_schedule() if sd.is_sd(model) else Schedule())
    if calib is None and ((criterion == "output-loss" and scores is None) or solver == "exhaustive"):
        calib = make_calibration(images, schedule, size=spec.calib_size, timesteps=spec.calib_timesteps,
                                 seed=spec.seed, cond=cond)
    seconds["units"] = time.perf_counter() - start
    start = time.perf_counter()
    x0, x0_cond = images, cond
    if criterion == "taylor" and images is not None:  # its ONE gradient batch, the conditions on its device
        x0 = images[:spec.batch_size]
        x0_cond = sd.map_tensors(cond, lambda v: v[:spec.batch_size].to(images.device))
    inputs = CriterionInputs(calib=calib, x0=x0, cond=x0_cond,
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
        chosen, _ = exhaustive.search(model, calib, units, costs, need, batch_size=forward_batch, groups=stages(units))
    else:
        chosen = knapsack.select([scores[u.path] for u in units], costs, need, solver, groups=stages(units))
    removed = [units[i].path for i in chosen]
    small = remove_units(model, removed)
    after = model_macs(small)
    seconds["select_and_build"] = time.perf_counter() - start
    report = LayerReport(criterion=criterion, solver=solver, target=(what, fraction), units=units, scores=scores,
                         removed=removed, params_before=sum(p.numel() for p in model.parameters()),
                         params_after=after.params, macs_before=macs_before, macs_after=after.macs_paper,
                         calibration=None if calib is None else {"size": int(calib.x_t.shape[0]), "seed": calib.seed,
                                                                 "timesteps": calib.timesteps},
                         seconds=seconds, spec=spec)
    return small, report
