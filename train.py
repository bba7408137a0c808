"""Train a DDPM U-Net from scratch, or fine-tune any checkpoint (pruned ones included).

    python train.py                                   # the tiny teacher on the procedural shapes data
    python train.py --model runs/prune/00001-.../pruned.pt --steps 2000 --lr 2e-4   # fine-tune a pruned model
    python train.py --resume runs/train/00001-.../checkpoints/latest.pt            # continue exactly
    torchrun --nproc_per_node 2 train.py ...          # data parallel (gloo on CPU, nccl on GPU)

The recipe follows the DDIM codebase / Diff-Pruning (diffpruning.md section 4): Adam, constant lr after
an optional linear warm-up, grad-norm clipping, EMA from step 0, antithetic timesteps, random flips,
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
from common.runs import new_run_dir, seed_everything, write_json
from data import build_dataset
from diffusion.ddpm import HeldOutLoss, eps_loss, sample_timesteps
from diffusion.schedule import DiffusionConfig, Schedule
from models.checkpoint import environment, read_checkpoint, save_checkpoint
from models.config import ModelConfig
from models.loading import load_with_info
from models.unet import UNet, count_parameters


@dataclass(frozen=True)
class TrainConfig:
    model: str = "tiny"            # preset name (from scratch) or a checkpoint / diffusers folder to fine-tune
    data: str = "shapes"           # shapes | cifar10 | folder
    data_root: str | None = None
    steps: int = 6000
    batch_size: int = 32           # global batch, split evenly across processes
    lr: float = 2e-4
    optimizer: str = "adam"        # adam | adamw
    weight_decay: float = 0.0
    warmup: int = 0                # linear lr warm-up steps
    grad_clip: float = 1.0         # max grad norm; 0 disables clipping
    ema_decay: float = 0.9999
    antithetic: bool = True        # t and T-1-t in one batch (DDIM codebase)
    random_flip: bool = True
    loss_reduction: str = "sum"    # sum over pixels (DDIM codebase) | mean
    dropout: float | None = None   # override the model's dropout (fine-tuning)
    seed: int = 0
    ckpt_every: int = 1000
    keep_every: int = 0            # also keep checkpoints/step_XXXXXXX.pt every N steps
    sample_every: int = 0          # sample grid (deterministic DDIM from fixed noise) every N steps
    sample_steps: int = 50
    log_every: int = 50
    heldout_images: int = 256      # held-out denoising loss at each checkpoint (0 disables)
    out: str = "runs/train"
    device: str = "cpu"


# ----------------------------------------------------------------------------------------------- helpers
def build_model(cfg: TrainConfig) -> tuple[UNet, str]:
    """A preset (seeded default init: training from scratch) or the EMA weights of any checkpoint the
    loader knows (diffprune, pruned ones included; DDIM codebase; diffusers), in train mode."""
    model, info = load_with_info(cfg.model, ema=True, dropout=cfg.dropout, seed=cfg.seed)
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


# ----------------------------------------------------------------------------------------------- main
def main(cfg: TrainConfig, resume: str | None = None) -> Path:
    """Train per ``cfg``; with ``resume``, continue that run in its folder. Returns the run folder."""
    rank, world = setup_distributed(cfg.device)
    device = cfg.device if not cfg.device.startswith("cuda") else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    if cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by the {world} processes")
    seed_everything(cfg.seed * 1000 + rank)  # dropout masks differ per rank; everything shared uses `g`

    ckpt = read_checkpoint(resume) if resume else None
    if ckpt is not None:  # rebuild exactly what was saved; no architecture flags are re-read
        model = UNet(ModelConfig.from_dict(ckpt["model_config"]))
        model.load_state_dict(ckpt["state_dict"])
        origin = f"resumed from {resume}"
    else:
        model, origin = build_model(cfg)
    model.to(device).train()
    ema = EMA(model, cfg.ema_decay)
    diffusion = DiffusionConfig(loss_reduction=cfg.loss_reduction)
    schedule = Schedule(diffusion)
    opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
    opt = opt_cls(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)  # timesteps, noise, flips: identical on every rank
    start = 0
    if ckpt is not None:
        ema.load_state_dict(ckpt["ema_state_dict"])
        ts = ckpt["train_state"]
        opt.load_state_dict(ts["optimizer"])
        g.set_state(ts["generator"])
        torch.set_rng_state(ts["torch_rng"][rank] if rank < len(ts["torch_rng"]) else ts["torch_rng"][0])
        start = int(ts["step"])
        run_dir = Path(resume).resolve().parent.parent
    elif rank == 0:
        run_dir = new_run_dir(cfg.out, f"{Path(cfg.model).stem}-{cfg.data}")
    if world > 1:  # rank 0 picked the folder; everyone uses it
        box = [str(run_dir) if rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        run_dir = Path(box[0])
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    dataset = build_dataset(cfg.data, root=cfg.data_root, image_size=model.config.image_size, split="train")
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
                                             "world_size": world, "origin": origin})
        print(f"[train] {origin}: {count_parameters(model):,} params, run folder {run_dir}")

    def save(step: int, path: Path) -> None:
        rngs = [torch.get_rng_state()]
        if world > 1:
            rngs = [None] * world
            dist.all_gather_object(rngs, torch.get_rng_state())
        if rank == 0:
            train_state = {"step": step, "optimizer": opt.state_dict(), "generator": g.get_state(), "torch_rng": rngs}
            save_checkpoint(path, config=model.config, state_dict=model.state_dict(), ema_state_dict=ema.state_dict(),
                            train_state=train_state, meta={"train_config": dataclasses.asdict(cfg), "origin": origin})

    last_good, t0 = ckpt_dir / "latest.pt", time.time()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=rank != 0, desc="train")
    for step in bar:
        idx = order.indices(step)
        B = len(idx)
        t = sample_timesteps(B, schedule.num_timesteps, g, cfg.antithetic)
        c = model.config
        eps = torch.randn((B, c.in_channels, c.image_size, c.image_size), generator=g)
        flip = torch.rand(B, generator=g) < 0.5
        x0 = torch.stack([dataset[i] for i in idx[shard]])
        if cfg.random_flip:
            x0 = torch.where(flip[shard, None, None, None], x0.flip(-1), x0)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = eps_loss(ddp, schedule, x0.to(device), t[shard].to(device), eps[shard].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        stats = torch.stack([loss.detach(), grad_norm.detach()]).float().cpu()
        if world > 1:
            dist.all_reduce(stats)
            stats /= world
        if not torch.isfinite(stats).all():  # stop before the bad update touches the weights
            raise FloatingPointError(f"non-finite loss {stats[0].item()} at step {step}; training stopped, "
                                     f"the last good checkpoint is {last_good if last_good.exists() else 'none yet'}")
        opt.step()
        ema.update(model)
        done = step + 1
        if rank == 0 and (done % cfg.log_every == 0 or done == cfg.steps):
            writer.add_scalar("train/loss", stats[0].item(), done)
            writer.add_scalar("train/grad_norm", stats[1].item(), done)
            writer.add_scalar("train/lr", lr_at(step, cfg), done)
            bar.set_postfix(loss=f"{stats[0].item():.4g}", gnorm=f"{stats[1].item():.3g}")
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            if world > 1:
                check_ranks_in_sync(model, done)
            save(done, ckpt_dir / "latest.pt")
            if cfg.keep_every and done % cfg.keep_every == 0:
                save(done, ckpt_dir / f"step_{done:07d}.pt")
            if rank == 0 and heldout is not None:
                h = heldout(ema.model)
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
                              "wall_time_s": round(time.time() - t0, 1)})
        writer.close()
        print(f"[train] done: {run_dir / 'model.pt'} ({time.time() - t0:.0f} s)")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return run_dir


def parse_args(argv=None) -> tuple[TrainConfig, str | None]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            if "None" in str(f.type):
                kind = float if "float" in str(f.type) else str
            p.add_argument(flag, type=kind, default=f.default)
    p.add_argument("--resume", default=None, help="a checkpoints/latest.pt to continue (its saved config wins; "
                                                  "only --steps may be raised)")
    args = vars(p.parse_args(argv))
    resume = args.pop("resume")
    cfg = TrainConfig(**args)
    if resume:  # the run's own config wins; only the step budget may come from the command line
        saved = TrainConfig(**read_checkpoint(resume)["meta"]["train_config"])
        steps_given = any(a == "--steps" or a.startswith("--steps=") for a in (argv if argv is not None else sys.argv))
        cfg = dataclasses.replace(saved, steps=cfg.steps if steps_given else saved.steps)
    if cfg.optimizer not in ("adam", "adamw"):
        p.error(f"--optimizer must be adam or adamw, got {cfg.optimizer!r}")
    return cfg, resume


if __name__ == "__main__":
    main(*parse_args())
