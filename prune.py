"""Prune a pre-trained DDPM U-Net: Diff-Pruning (Fang, Ma & Wang 2023) and the baselines.

    python prune.py                                   # the embedded default: the shipped tiny teacher, shapes data
    python prune.py --model ddim_cifar10.ckpt --data cifar10 --data-root data/ --batch-size 128 --thr 0.05
    python prune.py --method magnitude --ratio 0.5
    python prune.py --method layer --criterion output-loss --target-params 0.3     # LAPTOP-Diff layer pruning

Writes a new numbered folder under runs/prune/ with the pruned checkpoint (config + per-layer widths +
plain state dict), report.json, the coupling groups (groups.txt), sample grids of the model before and
after pruning (deterministic DDIM from the same fixed noise) and, for the gradient methods, the plot of
L_t against t with the threshold marked. ``--method layer`` (LAPTOP-Diff, arXiv 2404.11098) removes whole
residual branches instead (pruning/layers/): the folder then holds pruned.pt, report.json, units.txt, the
additivity report (additivity.json, additivity.png) and the sample grids.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from common import cli
from common.defaults import RUNS_DIR, TEACHER_CHECKPOINT
from common.images import save_grid
from common.runs import new_run_dir, seed_everything, write_json
from data import build_dataset
from diffusion.samplers import sample
from diffusion.schedule import DiffusionConfig, Schedule
from metrics.macs import count_macs, format_count
from models.checkpoint import environment, save_checkpoint
from models.loading import load_with_info
from pruning.api import METHODS, check_arguments, prune
from pruning.importance import plot_timestep_losses
from pruning.layers import check_layer_arguments, check_target, prune_layers
from pruning.layers.additivity import format_report
from pruning.layers.criteria import DEFAULT_CALIB_SIZE, LAYER_CRITERIA
from pruning.layers.knapsack import SOLVERS
from pruning.layers.outputs import additivity_for_run, write_layer_run


@dataclass(frozen=True)
class PruneConfig:
    model: str = str(TEACHER_CHECKPOINT)  # preset, diffprune / DDIM-codebase checkpoint, diffusers folder, hub name
    preset: str | None = None             # DDIM-codebase state dicts: the preset they are read against
    norm_groups: int | None = None        # DDIM-codebase state dicts: GroupNorm groups (not in the weights)
    method: str = "diff-pruning"
    ratio: float = 0.3                    # per-group channel sparsity (the paper's ch_sparsity)
    thr: float = 0.05                     # stop at the first t with L_t < thr * L_max (paper: 0.05 CIFAR-10)
    scope: str = "local"                  # local (the paper) | global ranking
    scoring: str = "sequential"           # sequential (the paper's code: partly pruned net, its order) | dense
    attn_grouping: str = "joint"          # joint (q, k, v, proj_out's input: the paper's code) | split
    head_mode: str = "channels"           # channels | heads (remove whole attention heads)
    attn_scale: str | None = None         # pruned | dense softmax scale after pruning (None: the model's own)
    ignored: tuple[str, ...] = ()
    data: str = "shapes"
    data_root: str | None = None
    batch_size: int = 8                   # images of the ONE gradient batch (paper: 128 CIFAR-10, 64 CelebA)
    micro_batch: int = 64                 # samples per forward/backward of the gradient pass (memory budget)
    round_to: int | None = None           # keep pruned widths multiples of this (speed; local rule)
    max_timesteps: int | None = None
    num_samples: int = 16                 # before/after sample grids; 0 skips them
    sample_steps: int = 50
    clip_x0: bool = True                  # sample grids: clamp x0 predictions to [-1, 1] (Ho et al.)
    seed: int = 0
    out: str = str(RUNS_DIR / "prune")
    device: str = "cpu"
    criterion: str = "output-loss"        # --method layer: output-loss | random | handcrafted | taylor
    target_params: float | None = None    # fraction of the parameters to remove (instead of --ratio) ...
    target_macs: float | None = None      # ... or of the MACs (paper convention)
    solver: str | None = None             # knapsack | greedy | ranked (None: the criterion's own)
    calib_size: int = DEFAULT_CALIB_SIZE  # output-loss calibration triples (x0, t, eps)
    calib_timesteps: str = "stratified"   # stratified | uniform
    additivity_subsets: int = 20          # random unit subsets per size in additivity.json; 0 skips the report


def check_method_arguments(cfg: PruneConfig) -> None:
    """The method's settings, before anything is loaded."""
    if cfg.method == "layer":
        check_layer_arguments(cfg.criterion, cfg.target_params, cfg.target_macs, cfg.solver)
        if cfg.calib_size < 1 or cfg.additivity_subsets < 0:
            raise cli.UserError(f"--calib-size must be >= 1 and --additivity-subsets >= 0, got {cfg.calib_size} "
                                f"and {cfg.additivity_subsets}")
    else:
        check_arguments(cfg.method, cfg.ratio, cfg.thr, cfg.scope, max_timesteps=cfg.max_timesteps,
                        scoring=cfg.scoring, attn_grouping=cfg.attn_grouping, head_mode=cfg.head_mode,
                        target_params=cfg.target_params, target_macs=cfg.target_macs, micro_batch=cfg.micro_batch,
                        round_to=cfg.round_to)


def gradient_batch(cfg: PruneConfig, image_size: int) -> torch.Tensor:
    """One shuffled, randomly flipped batch of training images in [-1, 1] (the paper's x0)."""
    dataset = build_dataset(cfg.data, root=cfg.data_root, image_size=image_size, split="train")
    if len(dataset) < cfg.batch_size:
        raise ValueError(f"--batch-size {cfg.batch_size} exceeds the {len(dataset)} images of dataset {cfg.data!r}")
    g = torch.Generator().manual_seed(cfg.seed)
    idx = torch.randperm(len(dataset), generator=g)[:cfg.batch_size].tolist()
    x0 = torch.stack([dataset[i] for i in idx])
    flip = torch.rand(len(idx), generator=g) < 0.5
    return torch.where(flip[:, None, None, None], x0.flip(-1), x0)


def print_widths(before: dict[str, int], after: dict[str, int]) -> None:
    """Every prunable layer's output width before -> after (GroupNorm: its channels)."""
    print(f"{'layer':<44} {'before':>7}    {'after':>7}")
    for name, w in before.items():
        mark = "" if after.get(name) == w else "  *"
        print(f"{name:<44} {w:>7} -> {after.get(name, 0):>7}{mark}")


def main(cfg: PruneConfig) -> Path:
    """Prune ``cfg.model``; returns the run folder."""
    check_method_arguments(cfg)  # fail before loading anything
    for name in ("batch_size", "micro_batch", "sample_steps"):
        if getattr(cfg, name) < 1:
            raise cli.UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.num_samples < 0:
        raise cli.UserError(f"--num-samples must be >= 0 (0 skips the sample grids), got {cfg.num_samples}")
    cli.check_writable_dir(cfg.out, "--out")
    seed_everything(cfg.seed)
    start = time.perf_counter()
    model, info = load_with_info(cfg.model, ema=True, device=cfg.device, preset=cfg.preset,
                                 norm_groups=cfg.norm_groups)
    cli.print_load_notes(cfg.model, info, "prune")
    if cfg.method == "layer":  # an unreachable target fails before any sampling or scoring
        check_target(model, cfg.target_params, cfg.target_macs)
    if cfg.attn_scale is not None and hasattr(model, "config"):
        model.config = dataclasses.replace(model.config, attn_scale=cfg.attn_scale)
    c = model.config
    example = (torch.zeros(1, c.in_channels, c.image_size, c.image_size, device=cfg.device),
               torch.ones(1, device=cfg.device))
    macs_before = count_macs(model, example)
    schedule = Schedule(DiffusionConfig(loss_reduction="sum"))  # the paper's L_t sums over pixels
    fixed_noise = dict(indices=list(range(cfg.num_samples)), seed=cfg.seed, image_shape=(c.in_channels, c.image_size, c.image_size),
                       steps=cfg.sample_steps, batch_size=cfg.num_samples, device=cfg.device, clip_x0=cfg.clip_x0)
    # The data is read before any sampling: a bad --data / --data-root fails before minutes of work.
    x0 = gradient_batch(cfg, c.image_size).to(cfg.device) if cfg.method in ("taylor", "diff-pruning") else None
    # --method layer: calibration images for output-loss; taylor's one gradient batch is the first --batch-size.
    images = (gradient_batch(dataclasses.replace(cfg, batch_size=max(cfg.batch_size, cfg.calib_size)),
                             c.image_size).to(cfg.device) if cfg.method == "layer" else None)
    samples_before = sample(model.eval(), schedule, **fixed_noise) if cfg.num_samples else None
    if cfg.method == "layer":
        return prune_layers_run(cfg, model, info, schedule, fixed_noise, samples_before, start, images)

    model, report = prune(model, example, method=cfg.method, ratio=cfg.ratio, ignored=cfg.ignored, data=x0,
                          schedule=schedule, thr=cfg.thr, scope=cfg.scope, head_mode=cfg.head_mode,
                          scoring=cfg.scoring, attn_grouping=cfg.attn_grouping, target_params=cfg.target_params,
                          target_macs=cfg.target_macs, micro_batch=cfg.micro_batch, max_timesteps=cfg.max_timesteps,
                          seed=cfg.seed, round_to=cfg.round_to)
    macs_after = count_macs(model, example)
    samples_after = sample(model.eval(), schedule, **fixed_noise) if cfg.num_samples else None
    seconds = time.perf_counter() - start

    run = new_run_dir(cfg.out, f"{Path(cfg.model).stem}-{cfg.method}")
    summary = {**report.summary(), "config": dataclasses.asdict(cfg), "source": info, "environment": environment(),
               "macs_paper_before": macs_before.macs_paper, "macs_paper_after": macs_after.macs_paper,
               "macs_full_before": macs_before.macs_full, "macs_full_after": macs_after.macs_full,
               "seconds_total": seconds}
    save_checkpoint(run / "pruned.pt", config=model.config, state_dict=model.state_dict(),
                    meta={"prune_config": dataclasses.asdict(cfg), "source_model": cfg.model,
                          "method": cfg.method, "ratio": cfg.ratio})
    write_json(run / "report.json", {k: v for k, v in summary.items() if k != "source"} | {"source": {k: str(v) for k, v in info.items()}})
    (run / "groups.txt").write_text(report.groups_text + "\n")
    written = ["pruned.pt", "report.json", "groups.txt"]
    if cfg.num_samples:
        save_grid(samples_before, run / "samples_before.png", nrow=8, scale=2)
        save_grid(samples_after, run / "samples_after.png", nrow=8, scale=2)
        written += ["samples_before.png", "samples_after.png"]
    if report.timesteps is not None:
        plot_timestep_losses(report.timesteps, run / "timestep_losses.png")

    print_widths(report.widths_before, report.widths_after)
    print(f"\n#params {format_count(report.params_before)} -> {format_count(report.params_after)}   "
          f"MACs (paper convention) {format_count(macs_before.macs_paper)} -> {format_count(macs_after.macs_paper)}   "
          f"MACs (+attention matmuls) {format_count(macs_before.macs_full)} -> {format_count(macs_after.macs_full)}")
    if report.target is not None:
        tg = report.target
        print(f"target: remove {tg['target']:.1%} of the {tg['kind']} -> ratio {tg['ratio']:.4f} removes "
              f"{tg['achieved']:.2%}")
        if abs(tg["achieved"] - tg["target"]) > 0.01:
            print("  (the local rule applies one ratio to every group and GroupNorm blocks make its widths coarse; "
                  "--scope global reaches a target to within a percentage point)")
    if report.timesteps is not None:
        ts = report.timesteps
        stop = f"stopped at t={ts.stopped_at}" if ts.stopped_at is not None else "no t below the threshold"
        print(f"gradient over {len(ts.kept)} timesteps (t = 0..{ts.kept[-1] if ts.kept else '-'}; thr {ts.thr}, {stop})")
    timing = ", ".join(f"{k} {v:.2f}s" for k, v in report.seconds.items())
    print(f"time: {seconds:.1f}s in all ({timing})")
    print(f"\nwrote {run}/: {', '.join(written)}" + (", timestep_losses.png" if report.timesteps is not None else ""))
    model_arg = os.path.relpath(cfg.model) if Path(cfg.model).exists() else cfg.model  # short, copy-pasteable
    print("\nnext:")
    print(f"  python train.py --model {run / 'pruned.pt'} --steps 1000 --lr 5e-4 --loss-reduction mean "
          f"--ema-decay 0.999 --batch-size 32     # fine-tune (the teacher's recipe, under 10% of its steps)")
    print(f"  python evaluate.py {model_arg} {run / 'pruned.pt'} --reference {model_arg}     # compare with the original")
    return run


def prune_layers_run(cfg: PruneConfig, model, info: dict, schedule: Schedule, fixed_noise: dict,
                     samples_before: torch.Tensor | None, start: float, images: torch.Tensor) -> Path:
    """--method layer: score the units, remove the chosen ones (pruning/layers/api.py), write the run folder."""
    kw = dict(schedule=schedule, calib_size=cfg.calib_size, calib_timesteps=cfg.calib_timesteps, seed=cfg.seed)
    small, report = prune_layers(model, criterion=cfg.criterion, target_params=cfg.target_params,
                                 target_macs=cfg.target_macs, solver=cfg.solver, thr=cfg.thr, micro_batch=cfg.micro_batch,
                                 max_timesteps=cfg.max_timesteps,
                                 images=images[:cfg.batch_size] if cfg.criterion == "taylor" else images, **kw)
    additivity = None
    if cfg.additivity_subsets:
        additivity = additivity_for_run(model, report, images=images, per_size=cfg.additivity_subsets, **kw)
    samples_after = sample(small.eval(), schedule, **fixed_noise) if cfg.num_samples else None
    seconds = time.perf_counter() - start
    run = new_run_dir(cfg.out, f"{Path(cfg.model).stem}-layer-{cfg.criterion}")
    written = write_layer_run(run, small, report, additivity,
                              meta={"prune_config": dataclasses.asdict(cfg), "source_model": cfg.model,
                                    "method": "layer", "criterion": cfg.criterion},
                              extra={"config": dataclasses.asdict(cfg), "environment": environment(),
                                     "source": {k: str(v) for k, v in info.items()}, "seconds_total": seconds})
    if cfg.num_samples:
        save_grid(samples_before, run / "samples_before.png", nrow=8, scale=2)
        save_grid(samples_after, run / "samples_after.png", nrow=8, scale=2)
        written += ["samples_before.png", "samples_after.png"]
    print(report.table())
    if additivity is not None:
        print("\nadditivity: measured output loss L(S) of random unit subsets against the summed single-unit scores")
        print(format_report(additivity))
    print(f"time: {seconds:.1f}s in all ({', '.join(f'{k} {v:.2f}s' for k, v in report.seconds.items())})")
    print(f"\nwrote {run}/: {', '.join(written)}")
    print("\nnext:")
    print(f"  python train.py --model {run / 'pruned.pt'} --steps 1000 --lr 5e-4 --loss-reduction mean --ema-decay 0.999 "
          f"--batch-size 32 --distill feature-normalized --teacher {os.path.relpath(cfg.model) if Path(cfg.model).exists() else cfg.model}")
    return run


def build_parser() -> argparse.ArgumentParser:
    d = PruneConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_model_flags(p, default=d.model, help="model to prune: a preset, a diffprune / DDIM-codebase checkpoint, "
                        "a diffusers folder or a hub name such as google/ddpm-cifar10-32 (default: the shipped "
                        "tiny teacher)")
    p.add_argument("--method", choices=METHODS + ("layer",), default=d.method,
                   help=f"channel importance criterion, or 'layer': remove whole residual branches (LAPTOP-Diff) "
                        f"chosen by --criterion [default: {d.method}]")
    p.add_argument("--ratio", type=float, default=d.ratio,
                   help=f"channel sparsity per group, in [0, 1) (the paper's ch_sparsity) [default: {d.ratio}]")
    p.add_argument("--thr", type=float, default=d.thr,
                   help=f"Diff-Pruning's timestep threshold in [0, 1]: gradients over t up to the first "
                        f"L_t < thr * L_max [default: {d.thr}]")
    p.add_argument("--scope", choices=("local", "global"), default=d.scope,
                   help=f"remove the ratio from every group (local, the paper) or rank all channels together "
                        f"[default: {d.scope}]")
    p.add_argument("--scoring", choices=("sequential", "dense"), default=d.scoring,
                   help=f"score each group on the network the groups before it pruned, in the paper pruner's order "
                        f"(sequential, the paper's code), or every group on the dense network (order-free) "
                        f"[default: {d.scoring}]")
    p.add_argument("--attn-grouping", choices=("joint", "split"), default=d.attn_grouping,
                   help=f"attention: q, k, v and proj_out's input as one group (joint, the paper's code) or q/k "
                        f"apart from v (split) [default: {d.attn_grouping}]")
    p.add_argument("--head-mode", choices=("channels", "heads"), default=d.head_mode,
                   help=f"attention: remove channels from every head, or whole heads [default: {d.head_mode}]")
    p.add_argument("--attn-scale", choices=("pruned", "dense"), default=None,
                   help="softmax scale after pruning: from the pruned head width, or the dense one "
                        "[default: the model's own setting]")
    p.add_argument("--ignored", nargs="*", default=[], help="module paths whose output channels are kept")
    cli.add_data_flags(p, default=d.data, help="the gradient batch's data")
    p.add_argument("--batch-size", type=cli.positive_int, default=d.batch_size,
                   help=f"images of the one gradient batch (paper: 128 CIFAR-10) [default: {d.batch_size}]")
    p.add_argument("--micro-batch", type=cli.positive_int, default=d.micro_batch,
                   help=f"samples per forward/backward of the gradient pass: micro-batch // batch-size timesteps "
                        f"per pass, or parts of one timestep's batch (same result; memory) [default: {d.micro_batch}]")
    p.add_argument("--round-to", type=cli.positive_int, default=None,
                   help="keep every pruned width a multiple of N (GroupNorm groups and heads respected), for speed "
                        "[default: the paper's widths]")
    p.add_argument("--max-timesteps", type=cli.positive_int, default=None,
                   help="cap on the timesteps of the gradient pass [default: no cap]")
    p.add_argument("--num-samples", type=cli.nonnegative_int, default=d.num_samples,
                   help=f"images in the before/after sample grids; 0 skips the grids [default: {d.num_samples}]")
    p.add_argument("--sample-steps", type=cli.positive_int, default=d.sample_steps,
                   help=f"DDIM steps of the sample grids [default: {d.sample_steps}]")
    p.add_argument("--clip-x0", action=argparse.BooleanOptionalAction, default=d.clip_x0,
                   help="clamp x0 predictions to [-1, 1] in the sample grids")
    layer = p.add_argument_group("layer pruning (--method layer)")
    layer.add_argument("--criterion", choices=tuple(LAYER_CRITERIA), default=d.criterion,
                       help=f"unit score: output-loss (LAPTOP-Diff), random, handcrafted (BK-SDM-style rule) or "
                            f"taylor (Diff-Pruning's score summed per unit) [default: {d.criterion}]")
    p.add_argument("--target-params", type=float, default=None,
                   help="fraction of the parameters to remove, in (0, 1): channel methods find the --ratio that "
                        "reaches it by bisection; --method layer selects units to reach it")
    p.add_argument("--target-macs", type=float, default=None,
                   help="fraction of the MACs (paper convention) to remove, in (0, 1), as --target-params")
    layer.add_argument("--solver", choices=SOLVERS, default=None,
                       help="exact knapsack (minimum summed score), greedy by score per cost, or ranked by score "
                            "[default: knapsack; ranked for handcrafted]")
    layer.add_argument("--calib-size", type=cli.positive_int, default=d.calib_size,
                       help=f"output-loss calibration triples (x0, t, eps) [default: {d.calib_size}]")
    layer.add_argument("--calib-timesteps", choices=("stratified", "uniform"), default=d.calib_timesteps,
                       help=f"how the calibration timesteps are drawn [default: {d.calib_timesteps}]")
    layer.add_argument("--additivity-subsets", type=cli.nonnegative_int, default=d.additivity_subsets,
                       help=f"random unit subsets per size (2, 4, 8) in the additivity report; 0 skips it "
                            f"[default: {d.additivity_subsets}]")
    cli.add_run_flags(p, out=d.out, seed_help="seed of the gradient batch, the random criteria and the grids' noise")
    return p


def parse_args(argv: list[str] | None = None) -> PruneConfig:
    p = build_parser()
    a = p.parse_args(argv)
    args = vars(a)
    args.pop("debug")
    cfg = PruneConfig(**{**args, "ignored": tuple(a.ignored)})
    try:
        check_method_arguments(cfg)
    except ValueError as e:
        p.error(str(e))
    return cfg


if __name__ == "__main__":
    sys.exit(cli.run(main, parse_args))
