"""The pieces of a DDPM training run that are not the loop itself: its config, state, data order, lr, grids.

train.py reads top to bottom as set-up, loop and checkpointing. What it calls from here is pure (a function
of its arguments and of the generators it is given), which is what makes a resumed run exact:

    TrainConfig    the recipe, frozen, saved in every checkpoint (``validate`` checks it before any work)
    TrainState     what a step changes and a checkpoint saves: model, EMA, optimizer, generator, distiller
    Run            where the run writes, and the last verified checkpoint a stop message names
    BatchOrder     global batch indices of step s, epoch-wise permutations seeded by (seed, epoch)
    lr_at          constant lr after a linear warm-up (the DDIM codebase's schedule, warm-up optional)
    first_non_finite  the first NaN/inf tensor of a state dict, named, for a one-line stop message
    write_release  the run's model.pt (weights only); ``release_finished`` for a resumed run at its total
    sample_grid    deterministic DDIM samples from noise fixed by a seed, for the run's progress grids
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from common.cli import UserError
from common.ema import EMA
from data import DATASETS
from diffusion.samplers import ddim_sample, ddim_timesteps
from diffusion.schedule import DiffusionConfig, Schedule
from models.checkpoint import read_checkpoint, save_checkpoint
from models.ddpm.config import ModelConfig
from training.distill import Distiller, check_distill_arguments


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
    random_flip: bool | None = None  # None: the family's default (images: True; cached latents: no flips)
    loss_reduction: str | None = None  # sum over pixels (DDIM codebase) | mean; None: the family's (sum | mean)
    caption_dropout: float = 0.1   # latent text-to-image models: P(caption -> "") for classifier-free guidance
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
    distill: str = "none"          # none | output | feature | feature-normalized (training/distill.py)
    teacher: str | None = None     # with --distill: the dense checkpoint to distil from (frozen, eval mode)
    lambda_task: float | None = None  # loss weights; None: the mode's defaults (training/distill.py)
    lambda_out: float | None = None
    lambda_feat: float | None = None


OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


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
    need(cfg.sample_steps <= DiffusionConfig.num_timesteps, "sample-steps",  # DDIM skips within the schedule
         f"<= the schedule's {DiffusionConfig.num_timesteps} timesteps", cfg.sample_steps)
    for name in ("warmup", "keep_every", "sample_every", "heldout_images"):
        need(getattr(cfg, name) >= 0, name.replace("_", "-"), ">= 0", getattr(cfg, name))
    need(math.isfinite(cfg.lr) and cfg.lr > 0, "lr", "a finite number > 0", cfg.lr)
    need(math.isfinite(cfg.grad_clip) and cfg.grad_clip >= 0, "grad-clip", ">= 0 (0 disables clipping)", cfg.grad_clip)
    need(0.0 <= cfg.ema_decay < 1.0, "ema-decay", "in [0, 1)", cfg.ema_decay)
    need(cfg.optimizer in OPTIMIZERS, "optimizer", f"one of {sorted(OPTIMIZERS)}", cfg.optimizer)
    need(cfg.loss_reduction in (None, "sum", "mean"), "loss-reduction", "sum or mean", cfg.loss_reduction)
    need(0.0 <= cfg.caption_dropout < 1.0, "caption-dropout", "in [0, 1)", cfg.caption_dropout)
    from training.latent import is_latent_model

    if is_latent_model(cfg.model):  # training/latent.py: captioned shapes or a captioned folder as latents, no flips
        need(cfg.data in ("shapes", "folder"), "data", "shapes (the captioned shapes) or folder (captioned images "
             "under --data-root) for a latent text-to-image model", cfg.data)
        need(cfg.data != "folder" or bool(cfg.data_root) and Path(cfg.data_root).is_dir(), "data-root",
             "an existing folder of captioned images with --data folder", cfg.data_root)
        # the DDPM family's overrides: a latent U-Net keeps its own config (training/latent.py reads none of them)
        for flag, value in (("dropout", cfg.dropout), ("preset", cfg.preset), ("norm-groups", cfg.norm_groups)):
            need(value is None, flag, "unset for a latent model (it applies to DDPM checkpoints only)", value)
        need(not cfg.random_flip, "random-flip", "off for a latent model (cached latents are not flipped)",
             cfg.random_flip)
        need(cfg.distill == "none" or cfg.loss_reduction in (None, "mean"), "loss-reduction", "mean with --distill "
             "for a latent model (training/distill_latent.py's MSEs are means)", cfg.loss_reduction)
    need(cfg.data in DATASETS, "data", f"one of {DATASETS}", cfg.data)
    need(cfg.dropout is None or 0.0 <= cfg.dropout < 1.0, "dropout", "in [0, 1)", cfg.dropout)
    try:
        check_distill_arguments(cfg.distill, cfg.teacher, distill_lambdas(cfg))
    except ValueError as e:
        raise UserError(str(e)) from None
    if cfg.distill != "none":  # a DDPM student with an SD teacher or the reverse: before anything is loaded
        from training.teacher import check_families

        check_families(cfg.model, cfg.teacher)


def distill_lambdas(cfg: TrainConfig) -> dict[str, float | None]:
    return {"task": cfg.lambda_task, "out": cfg.lambda_out, "feat": cfg.lambda_feat}


@dataclass
class TrainState:
    """Everything a training step changes, and so everything a checkpoint saves and a resume restores."""

    model: nn.Module                  # the plain module (never DDP or compiled): checkpoints, EMA, grids
    ema: EMA
    opt: torch.optim.Optimizer
    g: torch.Generator                # timesteps, noise, flips: identical on every rank
    distiller: Distiller | None       # knowledge distillation (its 1x1 projections train too)
    step: int = 0                     # optimizer steps taken

    def train_state(self, torch_rngs: list[torch.Tensor]) -> dict[str, Any]:
        """The checkpoint's ``train_state``: step, optimizer, shared generator and every rank's torch RNG."""
        out = {"step": self.step, "optimizer": self.opt.state_dict(), "generator": self.g.get_state(),
               "torch_rng": torch_rngs}
        if self.distiller is not None:
            out["distill"] = {"projections": self.distiller.state_dict(),
                              "teacher_checksum": self.distiller.teacher_checksum()}
        return out

    def load(self, ckpt: Mapping[str, Any], rank: int) -> None:
        """Restore a checkpoint's EMA weights and ``train_state`` into this (freshly built) state, and rank
        ``rank``'s torch RNG (dropout masks). The distiller's teacher is the caller's to check."""
        ts = ckpt["train_state"]
        self.ema.load_state_dict(ckpt["ema_state_dict"], num_updates=int(ts["step"]))  # continues the EMA warm-up
        self.opt.load_state_dict(ts["optimizer"])
        if self.distiller is not None:
            self.distiller.load_state_dict(ts["distill"]["projections"])
        self.g.set_state(ts["generator"])
        torch.set_rng_state(ts["torch_rng"][rank] if rank < len(ts["torch_rng"]) else ts["torch_rng"][0])
        self.step = int(ts["step"])


@dataclass
class Run:
    """Where the run writes: its folder and id, what it started from, and the last verified checkpoint."""

    dir: Path
    id: str
    origin: str
    family: dict | None = None        # training/families.py: what the family records (checked on resume)
    writer: Any = None                # TensorBoard, rank 0 only
    last_good: Path | None = None
    last_good_step: int | None = None

    def stop(self, what: str) -> None:
        good = f"{self.last_good} (step {self.last_good_step})" if self.last_good is not None else "none yet"
        raise FloatingPointError(f"{what}; training stopped, the last good checkpoint is {good}")


class BatchOrder:
    """Global batch indices of step s: epoch-wise permutations of the dataset, a pure function of (seed, s).

    Every rank builds the same order and takes its own slice of each global batch, so the data a step sees
    does not depend on the number of processes, and a resumed run continues the same sequence."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return self._perm

    def indices(self, step: int) -> list[int]:
        """The ``batch_size`` dataset indices of global step ``step`` (0-based)."""
        positions = range(step * self.batch_size, (step + 1) * self.batch_size)
        return [int(self._permutation(p // self.n)[p % self.n]) for p in positions]


def lr_at(step: int, lr: float, warmup: int) -> float:
    """Constant ``lr`` after a linear warm-up over ``warmup`` steps (0: no warm-up). ``step`` is 0-based."""
    return lr * min(1.0, (step + 1) / warmup) if warmup > 0 else lr


def first_non_finite(tensors: Mapping[str, torch.Tensor], what: str) -> str | None:
    """'<what> <name>' of the first floating-point tensor holding a NaN or inf, or None when all are finite."""
    for name, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            return f"{what} {name!r}"
    return None


RELEASE = "model.pt"  # the run's release file: weights only (no optimizer), ready for prune.py / evaluate.py


def write_release(run_dir: Path, *, config: ModelConfig, state_dict: Mapping[str, torch.Tensor],
                  ema_state_dict: Mapping[str, torch.Tensor], cfg: TrainConfig, origin: str, run_id: str,
                  wall_time_s: float | None) -> Path:
    """Write ``run_dir/model.pt`` from verified weights (the loop's, or the last verified checkpoint's)."""
    path = Path(run_dir) / RELEASE
    save_checkpoint(path, config=config, state_dict=state_dict, ema_state_dict=ema_state_dict,
                    meta={"train_config": dataclasses.asdict(cfg), "origin": origin, "steps": cfg.steps,
                          "run_id": run_id, "verified_finite": True, "wall_time_s": wall_time_s})
    return path


def release_finished(run_dir: Path, ckpt: Mapping[str, Any], cfg: TrainConfig) -> str:
    """A resumed run whose checkpoint is already at the total ``cfg.steps``: its model.pt, written from that
    checkpoint when the release is missing (killed between the checkpoint and the release, or resumed with
    --steps lowered to the step it reached). Never overwrites a release; returns what to print."""
    path, step = Path(run_dir) / RELEASE, int(ckpt["train_state"]["step"])
    if path.exists():
        released = read_checkpoint(path)["meta"].get("steps")
        if released != step:
            raise UserError(f"{path} holds step {released} but the run's last checkpoint is step {step}; it is not "
                            f"rewritten: pass a larger --steps to continue the run")
        return f"{run_dir} already finished: it is at step {step} of --steps {cfg.steps}; nothing to do (pass a " \
               f"larger --steps to continue it)"
    bad = first_non_finite(ckpt["state_dict"], "weight") or first_non_finite(ckpt["ema_state_dict"], "EMA weight")
    if bad:  # checkpoints are verified before they are written: this one was damaged since
        raise UserError(f"{run_dir}: the checkpoint of step {step} holds non-finite values in {bad}; no model.pt")
    meta = ckpt["meta"]
    from training.families import config_from_dict

    write_release(run_dir, config=config_from_dict(ckpt["model_config"]), state_dict=ckpt["state_dict"],
                  ema_state_dict=ckpt["ema_state_dict"], cfg=cfg, origin=meta.get("origin", "resumed"),
                  run_id=meta["run_id"], wall_time_s=None)
    return f"{run_dir} is at step {step} = --steps {cfg.steps}: wrote {path} (step {step}) from its last checkpoint"


@torch.no_grad()
def sample_grid(model: nn.Module, schedule: Schedule, n: int, steps: int, seed: int, device: str) -> torch.Tensor:
    """n samples by deterministic DDIM (eta = 0, uniform skip, x0 clipped) from noise fixed by ``seed``.

    ``model`` needs a ``config`` with in_channels and image_size (the DDPM U-Net's). Returns (n, C, H, W)
    in [-1, 1] on the CPU: the same images at every call for the same weights."""
    c = model.config
    x_T = torch.randn((n, c.in_channels, c.image_size, c.image_size), generator=torch.Generator().manual_seed(seed))
    x0 = ddim_sample(model, schedule, x_T.to(device), ddim_timesteps(steps, schedule.num_timesteps, "uniform"),
                     eta=0.0, clip_x0=True)
    return x0.clamp(-1, 1).cpu()


def ema_horizon_warning(steps: int, decay: float, warmup: bool) -> str | None:
    """A warning when a run is far shorter than the EMA's horizon 1/(1 - decay) (its averaging window in steps):
    the EMA weights then still hold mostly the starting weights. None when the run is long enough."""
    horizon = 1.0 / (1.0 - decay) if decay < 1 else float("inf")
    # Without warm-up the starting weights keep mu^n ~ exp(-n / horizon) of the average: > 0.78 below n = horizon / 4.
    if steps * 4 >= horizon:
        return None
    how = "even with the warm-up (decay min(mu, (1+n)/(10+n)))" if warmup else "(no warm-up)"
    return (f"{steps} steps is far below the EMA horizon 1/(1-{decay:g}) = {horizon:.0f} steps {how}: the EMA weights "
            "are still close to the starting weights; compare the raw held-out loss, evaluate with --weights raw, "
            "or lower --ema-decay")


def report_heldout(run: Run, state: TrainState, heldout, h_ema: float | None, cfg: TrainConfig, t0: float) -> None:
    """At a checkpoint: log and print the held-out eps-MSE of the EMA weights (``h_ema``, measured by verify) AND
    of the raw weights, so a short fine-tune whose EMA has not moved yet is visible; at the last step, warn when
    the run was far shorter than the EMA horizon."""
    import time

    if h_ema is None:
        return
    done = state.step
    was_training = state.model.training
    h_raw = heldout(state.model.eval())  # eval mode (dropout off) like the EMA copy; no RNG is drawn
    state.model.train(was_training)
    run.writer.add_scalar("eval/heldout_loss_ema", h_ema, done)
    run.writer.add_scalar("eval/heldout_loss_raw", h_raw, done)
    print(f"[train] step {done}: held-out eps-MSE EMA {h_ema:.5f}, raw {h_raw:.5f}, {time.time() - t0:.0f} s")
    warning = ema_horizon_warning(cfg.steps, cfg.ema_decay, cfg.ema_warmup) if done == cfg.steps else None
    if warning:
        print(f"[train] warning: {warning}")
