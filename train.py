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
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from common.ema import EMA
from common.images import save_grid
from common import cli
from common.cli import UserError, check_writable_dir
from common.runs import (RUN_MARKER, RunLock, mark_run, new_run_dir, read_run_marker, remove_stale_tmp,
                         seed_everything, write_json)
from data import DATASETS, build_dataset
from diffusion.ddpm import HeldOutLoss, eps_loss, sample_timesteps
from diffusion.distill import MODES as DISTILL_MODES, build_distiller, check_distill_arguments
from diffusion.schedule import DiffusionConfig, Schedule
from models.checkpoint import environment, read_checkpoint, save_checkpoint
from models.ddpm.config import ModelConfig
from models.loading import load_with_info
from models.runtime import Runner, RuntimeOptions
from models.ddpm.unet import UNet, count_parameters


@dataclass(frozen=True)
class TrainConfig:
    model: str = "tiny"            # preset name (from scratch) or a checkpoint / diffusers folder to fine-tune
    data: str = "shapes"           # shapes | cifar10 | folder
    data_root: str | None = None
    steps: int | None = 6000       # TOTAL steps; None only with resume: the run's own total
    batch_size: int = 32           # global batch, split evenly across processes
    lr: float = 2e-4
    optimizer: str = "adam"        # adam | adamw
    weight_decay: float = 0.0
    warmup: int = 0                # linear lr warm-up steps
    grad_clip: float = 1.0         # max grad norm; 0 disables clipping
    ema_decay: float = 0.9999
    ema_warmup: bool = True        # decay min(mu, (1+n)/(10+n)) at update n (latent-diffusion's LitEma)
    antithetic: bool = True        # t and T-1-t in one batch (DDIM codebase)
    random_flip: bool = True
    loss_reduction: str = "sum"    # sum over pixels (DDIM codebase) | mean
    dropout: float | None = None   # override the model's dropout (fine-tuning)
    preset: str | None = None      # DDIM-codebase state dicts: the preset they are read against
    norm_groups: int | None = None # DDIM-codebase state dicts: GroupNorm groups (not stored in the weights)
    seed: int = 0
    ckpt_every: int = 1000
    keep_every: int = 0            # also keep checkpoints/step_XXXXXXX.pt every N steps
    sample_every: int = 0          # sample grid (deterministic DDIM from fixed noise) every N steps
    sample_steps: int = 50
    log_every: int = 50
    heldout_images: int = 256      # held-out denoising loss at each checkpoint (0 disables)
    out: str = "runs/train"
    device: str = "cpu"
    channels_last: bool = False    # opt-in speed options of the forward/backward (models/runtime.py); same
    compile: bool = False          # function (bf16: to ~3 digits), so checkpoints and resume are unaffected
    bf16: bool = False
    distill: str = "none"          # none | output | feature | feature-normalized (diffusion/distill.py)
    teacher: str | None = None     # with --distill: the dense checkpoint to distil from (frozen, eval mode)
    lambda_task: float | None = None  # loss weights; None: the mode's defaults (diffusion/distill.py)
    lambda_out: float | None = None
    lambda_feat: float | None = None


OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


# ----------------------------------------------------------------------------------------------- helpers
def build_model(cfg: TrainConfig) -> tuple[UNet, str]:
    """A preset (seeded default init: training from scratch) or the EMA weights of any checkpoint the
    loader knows (diffprune, pruned ones included; DDIM codebase; diffusers), in train mode."""
    model, info = load_with_info(cfg.model, ema=True, dropout=cfg.dropout, seed=cfg.seed, preset=cfg.preset,
                                 norm_groups=cfg.norm_groups)
    cli.print_load_notes(cfg.model, info, "train")
    origin = f"{info['format']} {cfg.model}" + (" (random init: training from scratch)" if info["format"] == "preset" else "")
    return model.train(), origin


class BatchOrder:
    """Global batch indices of step s: epoch-wise permutations of the dataset, a pure function of (seed, s)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return self._perm

    def indices(self, step: int) -> list[int]:
        positions = range(step * self.batch_size, (step + 1) * self.batch_size)
        return [int(self._permutation(p // self.n)[p % self.n]) for p in positions]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Constant lr after a linear warm-up over ``cfg.warmup`` steps."""
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup > 0 else cfg.lr


def setup_distributed(device: str) -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size()


def check_ranks_in_sync(model: torch.nn.Module, step: int) -> None:
    """Every rank must hold identical weights; compare a per-tensor checksum across processes."""
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()])
    gathered = [torch.empty_like(sums) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, sums)
    worst = max((g - gathered[0]).abs().max().item() for g in gathered)
    if worst > 1e-6 * (1 + gathered[0].abs().max().item()):
        raise RuntimeError(f"data-parallel ranks diverged at step {step}: max checksum difference {worst:.3g}")
    if dist.get_rank() == 0:
        print(f"[train] step {step}: {dist.get_world_size()} ranks in sync (max checksum difference {worst:.1e})")


def sample_grid(model: UNet, schedule: Schedule, n: int, steps: int, seed: int, device: str) -> torch.Tensor:
    """n samples by deterministic DDIM (eta = 0, uniform skip, x0 clipped) from noise fixed by ``seed``."""
    from diffusion.samplers import ddim_sample, ddim_timesteps

    c = model.config
    x_T = torch.randn((n, c.in_channels, c.image_size, c.image_size), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        x0 = ddim_sample(model, schedule, x_T.to(device), ddim_timesteps(steps, schedule.num_timesteps, "uniform"),
                         eta=0.0, clip_x0=True)
    return x0.clamp(-1, 1).cpu()


# ----------------------------------------------------------------------------------------------- checks
def validate(cfg: TrainConfig) -> None:
    """Every cheap check of ``cfg``, before anything is loaded (the flags' argparse types repeat some of
    them for the command line; this covers configs built in Python)."""
    def need(ok: bool, flag: str, what: str, value) -> None:
        if not ok:
            raise UserError(f"--{flag} must be {what}, got {value!r}")

    if cfg.steps is not None:
        need(isinstance(cfg.steps, int) and cfg.steps >= 1, "steps", "an integer >= 1 (the total step count)", cfg.steps)
    for name in ("batch_size", "ckpt_every", "sample_steps", "log_every"):
        need(getattr(cfg, name) >= 1, name.replace("_", "-"), ">= 1", getattr(cfg, name))
    for name in ("warmup", "keep_every", "sample_every", "heldout_images"):
        need(getattr(cfg, name) >= 0, name.replace("_", "-"), ">= 0", getattr(cfg, name))
    need(math.isfinite(cfg.lr) and cfg.lr > 0, "lr", "a finite number > 0", cfg.lr)
    need(math.isfinite(cfg.grad_clip) and cfg.grad_clip >= 0, "grad-clip", ">= 0 (0 disables clipping)", cfg.grad_clip)
    need(0.0 <= cfg.ema_decay < 1.0, "ema-decay", "in [0, 1)", cfg.ema_decay)
    need(cfg.optimizer in OPTIMIZERS, "optimizer", f"one of {sorted(OPTIMIZERS)}", cfg.optimizer)
    need(cfg.loss_reduction in ("sum", "mean"), "loss-reduction", "sum or mean", cfg.loss_reduction)
    need(cfg.data in DATASETS, "data", f"one of {DATASETS}", cfg.data)
    need(cfg.dropout is None or 0.0 <= cfg.dropout < 1.0, "dropout", "in [0, 1)", cfg.dropout)
    try:
        check_distill_arguments(cfg.distill, cfg.teacher, distill_lambdas(cfg))
    except ValueError as e:
        raise UserError(str(e)) from None


def distill_lambdas(cfg: TrainConfig) -> dict[str, float | None]:
    return {"task": cfg.lambda_task, "out": cfg.lambda_out, "feat": cfg.lambda_feat}


def resolve_resume(resume: str | os.PathLike) -> tuple[Path, Path]:
    """(run folder, checkpoint) of ``--resume``: a run folder, or a checkpoint in its ``checkpoints/``.

    The run folder is the one whose ``run.json`` marker carries the checkpoint's run id. A checkpoint that
    was copied out of its run folder has no such folder and is refused: resuming it would write
    ``model.pt`` and ``config.json`` into whatever folder happens to sit two levels above it.
    """
    path = Path(resume)
    if path.is_dir():
        run_dir, ckpt = path, path / "checkpoints" / "latest.pt"
        if read_run_marker(run_dir) is None:
            raise UserError(f"--resume {path}: not a train.py run folder (no {RUN_MARKER})")
        if not ckpt.is_file():
            raise UserError(f"--resume {path}: the run has no checkpoint yet ({ckpt} does not exist); start it again")
        return run_dir, ckpt
    if not path.is_file():
        raise UserError(f"--resume {path}: no such run folder or checkpoint")
    run_dir = path.resolve().parent.parent
    if path.resolve().parent.name != "checkpoints" or read_run_marker(run_dir) is None:
        raise UserError(f"--resume {path}: this checkpoint is not inside the run folder that wrote it (no "
                        f"{RUN_MARKER} two levels up); resume the run folder itself, or fine-tune the file as a "
                        f"new run with --model {path}")
    return run_dir, path


def check_finite(tensors: dict[str, torch.Tensor], what: str) -> str | None:
    """The name of the first non-finite tensor of a state dict, as 'what name', or None."""
    for name, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            return f"{what} {name!r}"
    return None


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
    validate(cfg)
    rank, world = setup_distributed(cfg.device)
    device = cfg.device if not cfg.device.startswith("cuda") else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    ckpt = None
    if resume:
        run_dir, ckpt_path = resolve_resume(resume)
        if rank == 0:  # one writer per run folder; a kill leaves no stale lock (flock)
            locks.append(RunLock(run_dir, "resuming or training this run").acquire())
            for stale in remove_stale_tmp(run_dir / "checkpoints"):
                print(f"[train] removed {stale}, left by an interrupted checkpoint write")
        ckpt = read_checkpoint(ckpt_path)
        marker, meta = read_run_marker(run_dir), ckpt.get("meta", {})
        if meta.get("run_id") != marker["run_id"]:
            raise UserError(f"--resume {resume}: {ckpt_path} was written by another run than {run_dir} "
                            f"(run id {meta.get('run_id')!r} vs {marker['run_id']!r})")
        # A run saved before ``ema_warmup`` existed was started without the warm-up: it continues without it.
        saved = TrainConfig(**{"ema_warmup": False, **meta["train_config"]})
        cfg = dataclasses.replace(saved, steps=cfg.steps if cfg.steps is not None else saved.steps, device=cfg.device)
        start = int(ckpt["train_state"]["step"])
        if cfg.steps < start:
            raise UserError(f"--steps {cfg.steps} is the TOTAL number of steps, but {run_dir} is already at step "
                            f"{start}; pass a larger total to continue it")
        if cfg.steps == start:
            print(f"[train] {run_dir} already finished: it is at step {start} of --steps {cfg.steps}; nothing to do "
                  f"(pass a larger --steps to continue it)")
            return run_dir
    elif cfg.steps is None:
        raise UserError("--steps is required (the total number of steps) unless resuming")
    if cfg.batch_size % world:
        raise UserError(f"--batch-size {cfg.batch_size} is not divisible by the {world} processes")
    if rank == 0 and not resume:
        check_writable_dir(cfg.out, "--out")
    seed_everything(cfg.seed * 1000 + rank)  # dropout masks differ per rank; everything shared uses `g`

    if ckpt is not None:  # rebuild exactly what was saved; no architecture flags are re-read
        model = UNet(ModelConfig.from_dict(ckpt["model_config"]))
        model.load_state_dict(ckpt["state_dict"])
        origin = ckpt["meta"].get("origin", f"resumed from {resume}")
    else:
        model, origin = build_model(cfg)
    model.to(device).train()
    # The teacher is loaded and checked against the student's architecture before any training work.
    distiller = build_distiller(cfg.distill, cfg.teacher, model, lambdas=distill_lambdas(cfg), seed=cfg.seed,
                                device=device)
    params = list(model.parameters()) + ([] if distiller is None else list(distiller.parameters()))  # + 1x1 taps
    dataset = build_dataset(cfg.data, root=cfg.data_root, image_size=model.config.image_size, split="train")
    ema = EMA(model, cfg.ema_decay, warmup=cfg.ema_warmup)
    diffusion = DiffusionConfig(loss_reduction=cfg.loss_reduction)
    schedule = Schedule(diffusion)
    opt = OPTIMIZERS[cfg.optimizer](params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8,
                                    weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)  # timesteps, noise, flips: identical on every rank
    start = 0
    if ckpt is not None:
        ts = ckpt["train_state"]
        ema.load_state_dict(ckpt["ema_state_dict"], num_updates=int(ts["step"]))  # continues the EMA warm-up
        opt.load_state_dict(ts["optimizer"])
        if distiller is not None:
            distiller.load_state_dict(ts["distill"]["projections"])
            if distiller.teacher_checksum() != ts["distill"]["teacher_checksum"]:
                raise UserError(f"--resume {resume}: the teacher {cfg.teacher} is not the one this run distilled "
                                "from (its weights changed); an exact resume needs the same teacher")
        g.set_state(ts["generator"])
        torch.set_rng_state(ts["torch_rng"][rank] if rank < len(ts["torch_rng"]) else ts["torch_rng"][0])
        start = int(ts["step"])
        run_id = ckpt["meta"]["run_id"]
        del ckpt
    elif rank == 0:
        run_dir = new_run_dir(cfg.out, f"{Path(cfg.model).stem}-{cfg.data}")
        run_id = mark_run(run_dir, "train")
        locks.append(RunLock(run_dir, "training this run").acquire())
    if world > 1:  # rank 0 picked the folder; everyone uses it
        box = [(str(run_dir), run_id) if rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        run_dir, run_id = Path(box[0][0]), box[0][1]
    if cfg.channels_last:  # before DDP records the parameters' memory layout for its gradient buckets
        model.to(memory_format=torch.channels_last)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    # The training forward; ``model`` stays the plain module for checkpoints, EMA and the sample grids.
    forward = Runner(ddp, RuntimeOptions(channels_last=cfg.channels_last, compile=cfg.compile, bf16=cfg.bf16))

    order = BatchOrder(len(dataset), cfg.batch_size, cfg.seed)
    shard = slice(rank * cfg.batch_size // world, (rank + 1) * cfg.batch_size // world)
    heldout = None
    if cfg.heldout_images > 0 and cfg.data in ("shapes", "cifar10"):
        test = build_dataset(cfg.data, root=cfg.data_root, image_size=model.config.image_size, split="test")
        n = min(cfg.heldout_images, len(test))
        heldout = HeldOutLoss(torch.stack([test[i] for i in range(n)]), schedule, draws=4, seed=1234)

    ckpt_dir = run_dir / "checkpoints"
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"))
        write_json(run_dir / "config.json", {"train": dataclasses.asdict(cfg), "model": model.config.to_dict(),
                                             "diffusion": dataclasses.asdict(diffusion), "environment": environment(),
                                             "world_size": world, "origin": origin, "run_id": run_id})
        print(f"[train] {origin}: {count_parameters(model):,} params, run folder {run_dir}")

    def save(step: int, path: Path) -> None:
        rngs = [torch.get_rng_state()]
        if world > 1:
            rngs = [None] * world
            dist.all_gather_object(rngs, torch.get_rng_state())
        if rank == 0:
            train_state = {"step": step, "optimizer": opt.state_dict(), "generator": g.get_state(), "torch_rng": rngs}
            if distiller is not None:
                train_state["distill"] = {"projections": distiller.state_dict(),
                                          "teacher_checksum": distiller.teacher_checksum()}
            save_checkpoint(path, config=model.config, state_dict=model.state_dict(), ema_state_dict=ema.state_dict(),
                            train_state=train_state, meta={"train_config": dataclasses.asdict(cfg), "origin": origin,
                                                           "run_id": run_id, "verified_finite": True})

    def verify(step: int) -> float | None:
        """Stop the run unless the weights, the EMA weights and the held-out loss are finite; the held-out
        loss of the EMA weights, else None. Only a verified state is ever saved."""
        bad = check_finite(model.state_dict(), "weight") or check_finite(ema.state_dict(), "EMA weight")
        h = heldout(ema.model) if rank == 0 and heldout is not None and bad is None else None
        if h is not None and not math.isfinite(h):
            bad = f"held-out loss {h}"
        flag = torch.tensor([0.0 if bad is None else 1.0])
        if world > 1:  # every rank stops together (only rank 0 measures the held-out loss)
            dist.all_reduce(flag)
        if flag.item() > 0:
            stop(f"non-finite {bad or 'value on another rank'} at step {step}")
        return h

    def stop(what: str) -> None:
        good = f"{last_good} (step {last_good_step})" if last_good is not None else "none yet"
        raise FloatingPointError(f"{what}; training stopped, the last good checkpoint is {good}")

    last_good, last_good_step = (ckpt_dir / "latest.pt", start) if start else (None, None)
    t0 = time.time()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=rank != 0, desc="train")
    try:
        for step in bar:
            idx = order.indices(step)
            B = len(idx)
            t = sample_timesteps(B, schedule.num_timesteps, g, cfg.antithetic)
            c = model.config
            eps = torch.randn((B, c.in_channels, c.image_size, c.image_size), generator=g)
            # One flip mask for the GLOBAL batch from the shared generator, sliced by rank like the batch.
            flip = torch.rand(B, generator=g) < 0.5
            x0 = torch.stack([dataset[i] for i in idx[shard]])
            if cfg.random_flip:
                x0 = torch.where(flip[shard, None, None, None], x0.flip(-1), x0)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            if distiller is None:
                loss, terms = eps_loss(forward, schedule, x0.to(device), t[shard].to(device), eps[shard].to(device)), {}
            else:  # task + KD terms (diffusion/distill.py); every term is logged on its own
                loss, terms = distiller(forward, model, schedule, x0.to(device), t[shard].to(device),
                                        eps[shard].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if distiller is not None and world > 1:
                distiller.all_reduce_grads(world)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
            stats = torch.stack([loss.detach(), grad_norm.detach()]).float().cpu()
            if world > 1:
                dist.all_reduce(stats)
                stats /= world
            if not torch.isfinite(stats).all():  # stop before the bad update touches the weights
                stop(f"non-finite loss {stats[0].item()} at step {step}")
            opt.step()
            ema.update(model)
            done = step + 1
            if rank == 0 and (done % cfg.log_every == 0 or done == cfg.steps):
                writer.add_scalar("train/loss", stats[0].item(), done)
                writer.add_scalar("train/grad_norm", stats[1].item(), done)
                writer.add_scalar("train/lr", lr_at(step, cfg), done)
                for name, value in terms.items():  # rank 0's values of the task and distillation terms
                    writer.add_scalar(f"train/{name}", value, done)
                bar.set_postfix(loss=f"{stats[0].item():.4g}", gnorm=f"{stats[1].item():.3g}")
            if done % cfg.ckpt_every == 0 or done == cfg.steps:
                if world > 1:
                    check_ranks_in_sync(model, done)
                h = verify(done)
                save(done, ckpt_dir / "latest.pt")
                last_good, last_good_step = ckpt_dir / "latest.pt", done
                if cfg.keep_every and done % cfg.keep_every == 0:
                    save(done, ckpt_dir / f"step_{done:07d}.pt")
                if h is not None:
                    writer.add_scalar("eval/heldout_loss_ema", h, done)
                    print(f"[train] step {done}: held-out eps-MSE (EMA) {h:.5f}, {time.time() - t0:.0f} s")
            if rank == 0 and cfg.sample_every and (done % cfg.sample_every == 0 or done == cfg.steps):
                grid = sample_grid(ema.model, schedule, 64, cfg.sample_steps, cfg.seed + 12345, device)
                save_grid(grid, run_dir / "samples" / f"step_{done:07d}.png", nrow=8)
                writer.add_image("samples/ema", (grid[:64] + 1) / 2, done, dataformats="NCHW")
        if rank == 0:
            # The release file: weights only (no optimizer), same format, ready for prune.py / evaluate.py.
            save_checkpoint(run_dir / "model.pt", config=model.config, state_dict=model.state_dict(),
                            ema_state_dict=ema.state_dict(),
                            meta={"train_config": dataclasses.asdict(cfg), "origin": origin, "steps": cfg.steps,
                                  "run_id": run_id, "verified_finite": True,
                                  "wall_time_s": round(time.time() - t0, 1)})
            print(f"[train] done: {run_dir / 'model.pt'} (step {cfg.steps}, {time.time() - t0:.0f} s)")
    finally:
        if writer is not None:
            writer.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return run_dir


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], argument_default=argparse.SUPPRESS)
    p.add_argument("--model", help="preset name (train from scratch) or any checkpoint / diffusers folder / hub "
                                   f"name the loader reads (fine-tune) [default: {d.model}]")
    cli.add_loader_overrides(p)
    cli.add_data_flags(p, help="training data")
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
                   help=f"random horizontal flips [default: {d.random_flip}]")
    p.add_argument("--loss-reduction", choices=("sum", "mean"),
                   help=f"eps-MSE summed over pixels (DDIM codebase) or averaged (diffusers) [default: {d.loss_reduction}]")
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
    p.add_argument("--teacher", help="the dense checkpoint to distil from (any source models.load reads)")
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
    return TrainConfig(**args), None


if __name__ == "__main__":
    sys.exit(cli.run(main, parse_args))
