"""What ``prune.py --method layer`` adds to a run folder: the additivity report and the layer report files.

    pruned.pt         the layer-pruned model: config (with ``removed``) + widths + plain state dict
    report.json       ``LayerReport.summary()``: every unit with its cost and score, the removed ones, the totals
    units.txt         the same as a table
    additivity.json   ``additivity.additivity_report`` for the chosen criterion and output-loss
    additivity.png    its scatter plots
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from common.runs import write_json
from diffusion.schedule import Schedule
from models.checkpoint import save_checkpoint
from models.ddpm.unet import UNet
from pruning.layers.additivity import additivity_report, plot_report
from pruning.layers.api import LayerReport
from pruning.layers.criteria import LAYER_CRITERIA, CriterionInputs, make_calibration

DEFAULT_SUBSET_SIZES = (2, 4, 8)


def additivity_for_run(model: UNet, report: LayerReport, *, images: torch.Tensor, schedule: Schedule,
                       calib_size: int, calib_timesteps: str, seed: int, per_size: int,
                       sizes: Sequence[int] = DEFAULT_SUBSET_SIZES, thr: float = 0.05, micro_batch: int = 8,
                       max_timesteps: int | None = None) -> dict:
    """The additivity report of ``report.criterion`` and of output-loss (the measured quantity's own score),
    on the unpruned ``model``, with the calibration set prune_layers used. Sizes above the number of
    units are dropped."""
    calib = make_calibration(images, schedule, size=calib_size, timesteps=calib_timesteps, seed=seed)
    scores = {report.criterion: report.scores}
    if report.criterion != "output-loss":
        scores["output-loss"] = LAYER_CRITERIA["output-loss"](model, report.units, CriterionInputs(calib=calib))
    sizes = [k for k in sizes if k <= len(report.units)]
    return additivity_report(model, calib, scores, sizes=sizes, per_size=per_size, seed=seed)


def write_layer_run(run: Path, small: UNet, report: LayerReport, additivity: dict | None,
                    meta: Mapping[str, Any], extra: Mapping[str, Any]) -> list[str]:
    """Write the files of the module docstring into ``run``; returns their names."""
    save_checkpoint(run / "pruned.pt", config=small.config, state_dict=small.state_dict(),
                    meta={**dict(meta), "layer_report": report.summary()})
    write_json(run / "report.json", {**report.summary(), **dict(extra)})
    (run / "units.txt").write_text(report.table() + "\n")
    written = ["pruned.pt", "report.json", "units.txt"]
    if additivity is not None:
        write_json(run / "additivity.json", additivity)
        plot_report(additivity, run / "additivity.png")
        written += ["additivity.json", "additivity.png"]
    return written
