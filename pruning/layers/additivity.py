"""The additivity test: is the loss of removing a set of units the sum of the single-unit scores?

LAPTOP-Diff (Zhang et al. 2024, arXiv 2404.11098, Sec. 3) justifies its one-shot selection by the additivity
of the output loss, L(S) ~ sum_{i in S} L({i}) (the property Xu et al. 2023, arXiv 2308.10438, found for the
output distortion of pruning several layers). It holds to first order: removing unit i moves the output by
delta_i, and ||sum_i delta_i||^2 = sum_i ||delta_i||^2 + the cross terms, which vanish when the deltas are
uncorrelated; it fails where removed units compound.

``additivity_report`` draws random unit subsets S of several sizes, measures L(S) on the calibration set
(batched, ``output_losses``) and, for every criterion given, compares it with sum_{i in S} s_i: Pearson r,
Spearman rho and the least-squares line L = slope * sum + intercept, per subset size and pooled. For the
output-loss criterion the two axes are the same quantity, so slope 1 and intercept 0 is exact additivity;
any other criterion (Taylor) is in its own units, and only r and rho are comparable across criteria.
The SD U-Net needs nothing of its own here: its calibration set carries the condition (``criteria.py``).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch

from diffusion.schedule import Schedule
from models.ddpm.unet import UNet
from pruning.layers.criteria import LAYER_CRITERIA, Calibration, CriterionInputs, make_calibration, output_losses

if TYPE_CHECKING:
    from pruning.layers.api import LayerReport
    from pruning.layers.spec import LayerPruning


def random_subsets(paths: Sequence[str], sizes: Sequence[int], per_size: int, seed: int) -> list[frozenset[str]]:
    """``per_size`` distinct subsets of each size (fewer where fewer exist), drawn with a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    out: list[frozenset[str]] = []
    for k in sizes:
        if not 1 <= k <= len(paths):
            raise ValueError(f"subset size {k} must be in [1, {len(paths)}] (the number of units)")
        wanted = min(per_size, math.comb(len(paths), k))
        found: list[frozenset[str]] = []
        while len(found) < wanted:
            s = frozenset(paths[int(i)] for i in torch.randperm(len(paths), generator=g)[:k])
            if s not in found:
                found.append(s)
        out += found
    return out


def _fit(x: np.ndarray, y: np.ndarray) -> dict:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"n": int(len(x)), "pearson": None, "spearman": None, "slope": None, "intercept": None}
    slope, intercept = np.polyfit(x, y, 1)
    from scipy import stats  # here, not at import: scipy.stats costs seconds of start-up for every script

    return {"n": int(len(x)), "pearson": float(stats.pearsonr(x, y)[0]), "spearman": float(stats.spearmanr(x, y)[0]),
            "slope": float(slope), "intercept": float(intercept)}


def additivity_report(model: UNet, calib: Calibration, scores: Mapping[str, Mapping[str, float]], *,
                      sizes: Sequence[int] = (2, 4, 8), per_size: int = 20, seed: int = 0,
                      batch_size: int = 256, progress: bool = False) -> dict:
    """Measured L(S) against sum_{i in S} s_i for every criterion in ``scores`` ({criterion: {path: s_i}}).

    Returns a JSON-ready dict: the subsets, their measured losses, and per criterion the predicted sums and
    the statistics per size ("2", "4", ...) and pooled ("all").
    """
    paths = sorted(set.intersection(*(set(s) for s in scores.values())))
    subsets = random_subsets(paths, sizes, per_size, seed)
    measured = output_losses(model, calib, subsets, batch_size, progress=progress).numpy()  # minutes on a CPU
    report = {"sizes": list(sizes), "per_size": per_size, "seed": seed, "calibration_size": int(calib.x_t.shape[0]),
              "subsets": [sorted(s) for s in subsets], "measured": measured.tolist(), "criteria": {}}
    size_of = np.array([len(s) for s in subsets])
    for name, s in scores.items():
        predicted = np.array([sum(s[p] for p in sub) for sub in subsets])
        per = {str(k): _fit(predicted[size_of == k], measured[size_of == k]) for k in sizes}
        report["criteria"][name] = {"predicted": predicted.tolist(), "stats": {**per, "all": _fit(predicted, measured)}}
    return report


def format_report(report: dict) -> str:
    """The statistics as a plain-text table (printed by prune.py and the benchmark)."""
    lines = [f"{'criterion':<12} {'|S|':>4} {'n':>4} {'pearson':>8} {'spearman':>9} {'slope':>10} {'intercept':>10}"]
    f = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for name, c in report["criteria"].items():
        for k, st in c["stats"].items():
            lines.append(f"{name:<12} {k:>4} {st['n']:>4} {f(st['pearson'], '8.3f')} {f(st['spearman'], '9.3f')} "
                         f"{f(st['slope'], '10.4g')} {f(st['intercept'], '10.3g')}")
    return "\n".join(lines)


DEFAULT_SUBSET_SIZES = (2, 4, 8)


def additivity_for_run(model: UNet, report: "LayerReport", spec: "LayerPruning", images: torch.Tensor, *,
                       schedule: Schedule, per_size: int, sizes: Sequence[int] = DEFAULT_SUBSET_SIZES,
                       cond: dict | None = None) -> dict:
    """The additivity report of ``report.criterion`` and of output-loss (the measured quantity's own score) on
    the unpruned ``model``, with the calibration set of ``spec`` (the one prune_layers used; an SD U-Net's
    latents with their forward keywords ``cond``). Sizes above the number of units are dropped."""
    calib = make_calibration(images, schedule, size=spec.calib_size, timesteps=spec.calib_timesteps, seed=spec.seed,
                             cond=cond)
    scores = {report.criterion: report.scores}
    if report.criterion != "output-loss":
        scores["output-loss"] = LAYER_CRITERIA["output-loss"](model, report.units, CriterionInputs(calib=calib))
    sizes = [k for k in sizes if k <= len(report.units)]
    return additivity_report(model, calib, scores, sizes=sizes, per_size=per_size, seed=spec.seed, progress=True)
