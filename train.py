"""Train a DDPM U-Net from scratch, or fine-tune any checkpoint (pruned ones included).

    python train.py                                   # the tiny teacher on the procedural shapes data
    python train.py --model runs/prune/00001-.../pruned.pt --steps 2000 --lr 2e-4   # fine-tune a pruned model
    python train.py --resume runs/train/00001-.../checkpoints/latest.pt            # continue exactly
    torchrun --nproc_per_node 2 train.py ...          # data parallel (gloo on CPU, nccl on GPU)

The recipe follows the DDIM codebase and Diff-Pruning (ermongroup/ddim and VainF/Diff-Pruning's ddpm_exp,
configs/cifar10.yml and runners/diffusion.py): Adam, constant lr after an optional linear warm-up, grad-norm
clipping, EMA with the latent-diffusion warm-up (common/ema.py), antithetic timesteps, random flips,
eps-prediction loss summed over pixels.

Determinism: the data order, timesteps, noise and flips of step s are pure functions of (seed, s) and
of generator states saved in every checkpoint, and the GLOBAL batch is drawn identically on every rank
and then sliced, so an interrupted + resumed run ends with the same weights as an uninterrupted one, and
a 2-process run follows the 1-process run up to float summation order.

``_train`` reads as DiT's and nanoGPT's training scripts do, in three labelled phases: 1. set-up, 2. the
loop (``train_step``), 3. checkpointing (``checkpoint``). Config, state, data order and lr schedule live in
training/recipe.py, the data-parallel plumbing in common/distributed.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from common import cli
from common.allocator import retain_freed_memory
from common.cli import UserError, check_writable_dir
from common.distributed import Distributed, setup as setup_distributed
from common.ema import EMA
from common.images import save_grid
from common.runs import RunLock, mark_run, new_run_dir, seed_everything, write_json
from data import DATASETS
from diffusion.ddpm import HeldOutLoss, sample_timesteps
from models.checkpoint import environment, save_checkpoint
from models.ddpm.config import PRESETS
from models.ddpm.unet import count_parameters
from models.loading import load_with_info
from models.runtime import Runner, RuntimeOptions
from training.distill import MODES as DISTILL_MODES
from training.families import make_family, model_from_config
from training.latent import build_latent_model, is_latent_model, release_checkpoint
from training.recipe import (OPTIMIZERS, BatchOrder, Run, TrainConfig, TrainState, first_non_finite, lr_at, release_finished, report_heldout, validate, write_release)
from training.resume import open_resume
from training.teacher import build_train_distiller, default_teacher
from training.scalar_log import ScalarLog


def build_model(cfg: TrainConfig) -> tuple[torch.nn.Module, str, dict | None]:
    """A preset (seeded default init: training from scratch) or the EMA weights of any checkpoint the
    loader knows (diffprune, pruned ones included; DDIM codebase; diffusers), in train mode; and the frozen
    parts (VAE, text encoder) of a latent text-to-image model (training/latent.py), else None."""
    if is_latent_model(cfg.model):
        return build_latent_model(cfg.model, cfg.seed)
    model, info = load_with_info(cfg.model, ema=True, dropout=cfg.dropout, seed=cfg.seed, preset=cfg.preset,
                                 norm_groups=cfg.norm_groups)
    cli.print_load_notes(cfg.model, info, "train")
    origin = f"{info['format']} {cfg.model}" + (" (random init: training from scratch)" if info["format"] == "preset" else "")
    return model.train(), origin, None


# ----------------------------------------------------------------------------------------------- set-up
def build_state(cfg: TrainConfig, ckpt: dict | None, resume: str | None, device: str) -> tuple[TrainState, str, Any]:
    """Model, distiller, EMA, optimizer and generator, fresh or restored from ``ckpt``; and where the
    weights came from. A resumed model is rebuilt from its saved config: no architecture flag is re-read."""
    parts = None
    if ckpt is not None:
        model = model_from_config(ckpt["model_config"])
        model.load_state_dict(ckpt["state_dict"])
        origin = ckpt["meta"].get("origin", f"resumed from {resume}")
        if is_latent_model(cfg.model):  # the frozen parts are read again: they must be the run's own
            parts = build_latent_model(cfg.model, cfg.seed)[2]
    else:
        model, origin, parts = build_model(cfg)
    model.to(device).train()
    # The teacher is loaded and checked against the student's architecture before any training work.
    distiller = build_train_distiller(cfg, model, parts, device)  # DDPM: training/distill.py; latent: LatentKD
    params = list(model.parameters()) + ([] if distiller is None else list(distiller.parameters()))  # + 1x1 taps
    ema = EMA(model, cfg.ema_decay, warmup=cfg.ema_warmup)
    opt = OPTIMIZERS[cfg.optimizer](params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay)
    return TrainState(model, ema, opt, torch.Generator().manual_seed(cfg.seed), distiller), origin, parts


def restore(state: TrainState, ckpt: dict, cfg: TrainConfig, resume: str, rank: int) -> None:
    """Load the saved train_state into ``state``, refusing a teacher other than the one the run distilled from."""
    state.load(ckpt, rank)
    saved = ckpt["train_state"].get("distill", {}).get("teacher_checksum")
    if state.distiller is not None and state.distiller.teacher_checksum() != saved:
        raise UserError(f"--resume {resume}: the teacher {cfg.teacher} is not the one this run distilled "
                        "from (its weights changed); an exact resume needs the same teacher")


# ----------------------------------------------------------------------------------------------- one step
def train_step(state: TrainState, forward: Runner, family, x0: torch.Tensor, cond: dict, t: torch.Tensor,
               eps: torch.Tensor, lr: float, cfg: TrainConfig, ctx: Distributed) -> tuple[torch.Tensor, dict]:
    """One optimizer step on this rank's share (x0, condition, t, eps); returns ([loss, grad norm] averaged over
    ranks, the distillation terms). Stops before a non-finite loss or gradient reaches the weights."""
    for group in state.opt.param_groups:
        group["lr"] = lr
    if state.distiller is None:
        loss, terms = family.loss(forward, x0, t, eps, cond), {}
    else:  # task + KD terms (training/distill.py); every term is logged on its own
        loss, terms = state.distiller(forward, state.model, family.schedule, x0, t, eps, *([cond] if cond else []))
    state.opt.zero_grad(set_to_none=True)
    loss.backward()
    if state.distiller is not None and ctx.enabled:
        state.distiller.all_reduce_grads(ctx.world)
    params = [p for group in state.opt.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    stats = ctx.mean(torch.stack([loss.detach(), grad_norm.detach()]).float().cpu())
    if not torch.isfinite(stats).all():
        return stats, terms  # the caller stops the run; the bad update never touches the weights
    state.opt.step()
    state.ema.update(state.model)
    state.step += 1
    return stats, terms


# ----------------------------------------------------------------------------------------------- checkpoints
def save_state(state: TrainState, cfg: TrainConfig, run: Run, ctx: Distributed, path: Path) -> None:
    """A resumable checkpoint: weights, EMA, and the train_state (optimizer, step, every rank's RNG)."""
    rngs = ctx.gather(torch.get_rng_state())  # dropout masks differ per rank: each rank's RNG is saved
    if ctx.is_main:
        save_checkpoint(path, config=state.model.config, state_dict=state.model.state_dict(),
                        ema_state_dict=state.ema.state_dict(), train_state=state.train_state(rngs),
                        meta={"train_config": dataclasses.asdict(cfg), "origin": run.origin, "run_id": run.id,
                              "family": run.family,
                              "verified_finite": True})


def verify(state: TrainState, heldout: HeldOutLoss | None, run: Run, ctx: Distributed) -> float | None:
    """Stop the run unless the weights, the EMA weights and the held-out loss are finite; the held-out
    loss of the EMA weights, else None. Only a verified state is ever saved."""
    bad = (first_non_finite(state.model.state_dict(), "weight")
           or first_non_finite(state.ema.state_dict(), "EMA weight"))
    h = heldout(state.ema.model) if ctx.is_main and heldout is not None and bad is None else None
    if h is not None and not math.isfinite(h):
        bad = f"held-out loss {h}"
    if ctx.any(bad is not None):  # every rank stops together (only rank 0 measures the held-out loss)
        run.stop(f"non-finite {bad or 'value on another rank'} at step {state.step}")
    return h


def checkpoint(state: TrainState, cfg: TrainConfig, run: Run, ctx: Distributed, heldout: HeldOutLoss | None,
               t0: float) -> None:
    """At a checkpoint step: ranks in sync, state verified, latest.pt (and a kept step_N.pt) written."""
    ctx.check_same_weights(state.model, state.step)
    h = verify(state, heldout, run, ctx)
    ckpt_dir, done = run.dir / "checkpoints", state.step
    save_state(state, cfg, run, ctx, ckpt_dir / "latest.pt")
    run.last_good, run.last_good_step = ckpt_dir / "latest.pt", done
    if cfg.keep_every and done % cfg.keep_every == 0:
        save_state(state, cfg, run, ctx, ckpt_dir / f"step_{done:07d}.pt")
    report_heldout(run, state, heldout, h, cfg, t0)  # raw and EMA held-out loss; EMA-horizon warning at the end


# ----------------------------------------------------------------------------------------------- main
def main(cfg: TrainConfig, resume: str | None = None) -> Path:
    """Train per ``cfg``; returns the run folder.

    With ``resume`` (a run folder or a checkpoint inside its ``checkpoints/``) the run continues in its own
    folder with its saved config: only ``cfg.steps`` (the TOTAL step count; None keeps the run's own) and
    ``cfg.device`` are taken from ``cfg``. A run already at its total says so and returns.
    """
    locks: list[RunLock] = []  # the run folder's lock, held until main returns or raises
    try:
        return _train(cfg, resume, locks)
    finally:
        for lock in locks:
            lock.release()


def _train(cfg: TrainConfig, resume: str | None, locks: list) -> Path:
    # 1. Set-up: checks, processes, the run to continue, the state, the run folder.
    validate(cfg)
    ctx = setup_distributed(cfg.device)
    ckpt, run_dir = None, None
    if resume:
        cfg, ckpt, run_dir = open_resume(cfg, resume, ctx, locks)
        if cfg.steps == int(ckpt["train_state"]["step"]):  # at its total: the release file, or "finished"
            print(f"[train] {release_finished(run_dir, ckpt, cfg)}")
            if is_latent_model(cfg.model) and ctx.is_main and not (run_dir / "pipeline").exists():
                print(f"[train] wrote {release_checkpoint(run_dir, ckpt, cfg.model)} from the same checkpoint")
            return run_dir
    elif cfg.steps is None:
        raise UserError("--steps is required (the total number of steps) unless resuming")
    if cfg.batch_size % ctx.world:
        raise UserError(f"--batch-size {cfg.batch_size} is not divisible by the {ctx.world} processes")
    if ctx.is_main and not resume:
        check_writable_dir(cfg.out, "--out")
    seed_everything(cfg.seed * 1000 + ctx.rank)  # dropout masks differ per rank; everything shared uses state.g
    state, origin, parts = build_state(cfg, ckpt, resume, ctx.device)
    model, c = state.model, state.model.config
    family = make_family(cfg, model, parts, Path(cfg.out).parent / "cache")  # the dataset / latents, the schedule
    if ckpt is not None:
        restore(state, ckpt, cfg, resume, ctx.rank)
        saved, now = ckpt["meta"].get("family", {}), family.record()
        if saved.get("parts_checksum") != now.get("parts_checksum"):
            raise UserError(f"--resume {resume}: the frozen VAE / text encoder / class table of {cfg.model} changed "
                            "since the run started; an exact resume needs the same ones")
        if saved.get("data_checksum") != now.get("data_checksum"):  # a captioned folder (training/latent.py)
            raise UserError(f"--resume {resume}: the captioned images under --data-root {cfg.data_root} changed "
                            "since the run started (files, sizes or captions); an exact resume needs the same data")
        run_id = ckpt["meta"]["run_id"]
        del ckpt
    elif ctx.is_main:
        run_dir = new_run_dir(cfg.out, f"{Path(cfg.model).stem}-{cfg.data}")
        run_id = mark_run(run_dir, "train")
        locks.append(RunLock(run_dir, "training this run").acquire())
    run_dir, run_id = ctx.broadcast((str(run_dir), run_id) if ctx.is_main else None)  # rank 0 picked the folder
    run = Run(Path(run_dir), run_id, origin, family=family.record())
    if state.step:
        run.last_good, run.last_good_step = run.dir / "checkpoints" / "latest.pt", state.step
    if cfg.channels_last:  # before DDP records the parameters' memory layout for its gradient buckets
        model.to(memory_format=torch.channels_last)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if ctx.enabled else model
    forward = Runner(ddp, RuntimeOptions(channels_last=cfg.channels_last, compile=cfg.compile, bf16=cfg.bf16))
    order = BatchOrder(len(family), cfg.batch_size, cfg.seed)
    shard = slice(ctx.rank * cfg.batch_size // ctx.world, (ctx.rank + 1) * cfg.batch_size // ctx.world)
    heldout = family.heldout(cfg.heldout_images)
    if ctx.is_main:
        from torch.utils.tensorboard import SummaryWriter  # lazy: only rank 0 writes
        run.writer = ScalarLog(SummaryWriter(str(run.dir / "tb")), run.dir)  # + scalars.jsonl / scalars.csv
        write_json(run.dir / "config.json", {"train": dataclasses.asdict(cfg), "model": c.to_dict(),
                                             "family": family.record(), "environment": environment(),
                                             "world_size": ctx.world, "origin": origin, "run_id": run_id})
        print(f"[train] {origin}: {count_parameters(model):,} params, run folder {run.dir}")

    # 2. The loop: the GLOBAL batch of each step is drawn identically on every rank, then sliced.
    t0 = time.time()
    bar = tqdm(range(state.step, cfg.steps), initial=state.step, total=cfg.steps, disable=not ctx.is_main, desc="train")
    try:
        for step in bar:
            idx = order.indices(step)
            B = len(idx)
            t = sample_timesteps(B, family.schedule.num_timesteps, state.g, cfg.antithetic)
            eps = torch.randn((B, *family.shape), generator=state.g)
            x0, cond = family.batch(idx, shard, state.g, ctx.device)  # after t and eps: flips, captions, ...
            lr = lr_at(step, cfg.lr, cfg.warmup)
            stats, terms = train_step(state, forward, family, x0, cond, t[shard].to(ctx.device),
                                      eps[shard].to(ctx.device), lr, cfg, ctx)
            if state.step == step:  # the step was refused
                run.stop(f"non-finite loss {stats[0].item()} at step {step}")
            done = state.step
            if ctx.is_main and (done % cfg.log_every == 0 or done == cfg.steps):
                for name, value in {"loss": stats[0].item(), "grad_norm": stats[1].item(), "lr": lr, **terms}.items():
                    run.writer.add_scalar(f"train/{name}", value, done)  # terms: rank 0's task and KD terms
                bar.set_postfix(loss=f"{stats[0].item():.4g}", gnorm=f"{stats[1].item():.3g}")
            # 3. Checkpointing: verified state only; grids from the EMA weights.
            if done % cfg.ckpt_every == 0 or done == cfg.steps:
                checkpoint(state, cfg, run, ctx, heldout, t0)
            if ctx.is_main and cfg.sample_every and (done % cfg.sample_every == 0 or done == cfg.steps):
                grid = family.grid(state.ema.model, cfg.sample_steps, cfg.seed + 12345)
                save_grid(grid, run.dir / "samples" / f"step_{done:07d}.png", nrow=8)
                run.writer.add_image("samples/ema", (grid[:64] + 1) / 2, done, dataformats="NCHW")
        if ctx.is_main:
            # The release file: weights only (no optimizer), same format, ready for prune.py / evaluate.py.
            write_release(run.dir, config=c, state_dict=model.state_dict(), ema_state_dict=state.ema.state_dict(),
                          cfg=cfg, origin=origin, run_id=run_id, wall_time_s=round(time.time() - t0, 1))
            family.release(run.dir, state.ema.model)  # latent models: RUN/pipeline, the folder generate.py reads
            print(f"[train] done: {run.dir / 'model.pt'} (step {cfg.steps}, {time.time() - t0:.0f} s)")
    finally:
        if run.writer is not None:
            run.writer.close()
    ctx.barrier()
    ctx.close()
    return run.dir


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], argument_default=argparse.SUPPRESS)
    p.add_argument("--model", help="preset name (train from scratch; t2i-shapes: the embedded text-to-image U-Net, "
                                   "class-shapes: its class-conditional twin, labels = shape kind) or "
                                   "any checkpoint / diffusers or pipeline folder / hub name the loader reads "
                                   f"(fine-tune) [default: {d.model}]")
    cli.add_loader_overrides(p, PRESETS)
    cli.add_data_flags(p, DATASETS, help="training data")
    p.add_argument("--steps", type=cli.positive_int, help=f"TOTAL optimizer steps of the run, also when resuming "
                                                          f"[default: {d.steps}]")
    p.add_argument("--batch-size", type=cli.positive_int, help=f"global batch, split evenly across processes "
                                                               f"[default: {d.batch_size}]")
    p.add_argument("--lr", type=cli.finite_float, help=f"learning rate [default: {d.lr}]")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), help=f"[default: {d.optimizer}]")
    p.add_argument("--weight-decay", type=cli.finite_float, help=f"[default: {d.weight_decay}]")
    p.add_argument("--warmup", type=cli.nonnegative_int, help=f"linear lr warm-up steps [default: {d.warmup}]")
    p.add_argument("--grad-clip", type=cli.finite_float, help=f"max grad norm, 0 disables [default: {d.grad_clip}]")
    p.add_argument("--ema-decay", type=cli.finite_float, help=f"EMA decay mu in [0, 1) [default: {d.ema_decay}]")
    p.add_argument("--ema-warmup", action=argparse.BooleanOptionalAction,
                   help=f"EMA decay min(mu, (1+n)/(10+n)) at update n (common/ema.py) [default: {d.ema_warmup}]")
    p.add_argument("--antithetic", action=argparse.BooleanOptionalAction,
                   help=f"draw t and T-1-t in one batch (DDIM codebase) [default: {d.antithetic}]")
    p.add_argument("--random-flip", action=argparse.BooleanOptionalAction,
                   help="random horizontal flips [default: on for images, off for latent models]")
    p.add_argument("--loss-reduction", choices=("sum", "mean"),
                   help="eps-MSE summed over pixels (DDIM codebase) or averaged (diffusers) [default: sum for "
                        "images, mean for latent models]")
    p.add_argument("--caption-dropout", type=cli.finite_float,
                   help=f"latent text-to-image models: P(caption replaced by '') [default: {d.caption_dropout}]")
    p.add_argument("--dropout", type=cli.finite_float, help="override the model's dropout (fine-tuning)")
    p.add_argument("--ckpt-every", type=cli.positive_int,
                   help=f"write checkpoints/latest.pt every N steps [default: {d.ckpt_every}]")
    p.add_argument("--keep-every", type=cli.nonnegative_int,
                   help=f"also keep checkpoints/step_XXXXXXX.pt every N steps, 0 never [default: {d.keep_every}]")
    p.add_argument("--sample-every", type=cli.nonnegative_int,
                   help=f"sample grid every N steps, 0 never [default: {d.sample_every}]")
    p.add_argument("--sample-steps", type=cli.positive_int, help=f"DDIM steps of the grids [default: {d.sample_steps}]")
    p.add_argument("--log-every", type=cli.positive_int, help=f"TensorBoard scalars every N steps [default: {d.log_every}]")
    p.add_argument("--heldout-images", type=cli.nonnegative_int,
                   help=f"held-out images of the eps-MSE at each checkpoint, 0 disables [default: {d.heldout_images}]")
    cli.add_run_flags(p, out=d.out)
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format (models/runtime.py)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward (first step compiles)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast of the forward/backward (not exact)")
    p.add_argument("--distill", choices=DISTILL_MODES,
                   help="fine-tune with knowledge distillation from --teacher: output KD (0.3 task + 0.7 KD), "
                        "feature KD over the stage outputs (BK-SDM), or feature KD with each stage normalised by "
                        f"the teacher feature's squared norm (LAPTOP-Diff) [default: {d.distill}]")
    p.add_argument("--teacher", help="the dense checkpoint to distil from (any source models.load reads) [default: "
                                     "the root teacher of a pruned --model]")
    p.add_argument("--lambda-task", type=cli.finite_float, help="weight of the eps loss [default: 0.3 for output, 1 else]")
    p.add_argument("--lambda-out", type=cli.finite_float, help="weight of output KD [default: 0.7 for output, 1 else]")
    p.add_argument("--lambda-feat", type=cli.finite_float, help="weight of feature KD [default: 1]")
    p.add_argument("--resume", help="a run folder (or its checkpoints/latest.pt) to continue exactly, with its "
                                    "saved config; only --steps (the total) and --device may be given")
    return p


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, str | None]:
    """(config, resume) from the command line. With --resume only --steps and --device may be given: the
    run continues with the config it saved."""
    d = TrainConfig()
    p = build_parser()
    args = vars(p.parse_args(argv))
    args.pop("debug", None)
    resume = args.pop("resume", None)
    if resume:
        extra = sorted(set(args) - {"steps", "device"})
        if extra:
            p.error(f"--resume continues the run with its saved config; {', '.join('--' + k.replace('_', '-') for k in extra)} "
                    f"cannot be changed (fine-tune its model.pt as a new run with --model instead)")
        return TrainConfig(steps=args.get("steps"), device=args.get("device", d.device)), resume
    if args.get("distill", d.distill) != "none" and not args.get("teacher") and args.get("model"):
        args["teacher"] = default_teacher(args["model"])  # a pruned model's root teacher, a pruned pipeline's source
    return TrainConfig(**args), None


if __name__ == "__main__":
    retain_freed_memory()  # common/allocator.py: the passes reuse freed activation memory
    sys.exit(cli.run(main, parse_args))
