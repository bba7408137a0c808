"""Evaluate diffusion models as the Diff-Pruning paper does: params, MACs, latency, FID, SSIM consistency.

    python evaluate.py                                     # the embedded default: teacher + latest pruned run
    python evaluate.py A.pt B.pt --reference A.pt --num-samples 1000 --steps 100 --skip-type quad \\
        --fid-stats cifar10_train.npz --inception-weights pt_inception-2015-12-05-6726825d.pth
    python evaluate.py fid-stats IMAGE_DIR --out stats.npz [--inception-weights PATH]
    torchrun --nproc_per_node 4 evaluate.py ...            # sampling sharded by sample index, then gathered

Every sample is reproducible by its index (seeded per index), so sharded, resumed (``--resume DIR``) and
single-process runs write identical images, and SSIM pairs a model's sample i with the reference's
sample i: the same initial noise x_T.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from common.defaults import RUNS_DIR, TEACHER_CHECKPOINT, latest_pruned_checkpoint
from common.images import save_grid
from common.runs import new_run_dir, seed_everything, write_json
from data import build_dataset
from diffusion.ddpm import HeldOutLoss
from diffusion.schedule import Schedule
from metrics.evaluation import SamplerConfig, format_table, generate_samples, load_samples, measure_latency
from metrics.macs import count_macs
from models.checkpoint import environment
from models.loading import load_with_info


@dataclass(frozen=True)
class EvalConfig:
    models: tuple[str, ...] = ()
    reference: str | None = None      # SSIM consistency is measured against this model's samples
    num_samples: int = 64
    sampler: SamplerConfig = SamplerConfig()
    batch_size: int = 64
    fid_stats: str | None = None      # reference statistics .npz (keys mu, sigma)
    fid_data: str | None = None       # ... or an image folder to compute them from (cached in the run folder)
    inception_weights: str | None = None
    data: str = "shapes"              # held-out denoising loss data: shapes | cifar10 | folder
    data_root: str | None = None
    heldout_images: int = 256
    out: str = str(RUNS_DIR / "eval")
    device: str = "cpu"


def fid_reference(cfg: EvalConfig, run_dir: Path):
    """(inception, (mu, sigma)) or (None, reason) when FID cannot be computed."""
    if not (cfg.fid_stats or cfg.fid_data):
        return None, "no --fid-stats or --fid-data given"
    from metrics.fid import load_stats, save_stats, stats_for_folder
    from models.inception import InceptionWeightsUnavailable, load_fid_inception

    try:
        inception = load_fid_inception(cfg.inception_weights, device=cfg.device)
    except InceptionWeightsUnavailable as e:
        return None, f"FID Inception weights unavailable: {e}"
    if cfg.fid_stats:
        return inception, load_stats(cfg.fid_stats)
    cached = run_dir / "fid_reference_stats.npz"
    if not cached.exists():
        save_stats(cached, *stats_for_folder(cfg.fid_data, inception, device=cfg.device))
    return inception, load_stats(cached)


def heldout_loss_fn(cfg: EvalConfig, image_size: int, schedule: Schedule):
    """A HeldOutLoss over the first held-out images of ``cfg.data``, or (None, reason)."""
    if cfg.heldout_images <= 0:
        return None, "disabled (--heldout-images 0)"
    try:
        test = build_dataset(cfg.data, root=cfg.data_root, image_size=image_size, split="test")
    except (OSError, ValueError) as e:
        return None, f"held-out data unavailable: {e}"
    n = min(cfg.heldout_images, len(test))
    return HeldOutLoss(torch.stack([test[i] for i in range(n)]), schedule, draws=4, seed=1234), None


def main(cfg: EvalConfig, resume: str | None = None) -> Path:
    """Evaluate ``cfg.models``; returns the run folder holding report.json, samples/ and grids."""
    if not cfg.models:
        raise ValueError("no model to evaluate: pass checkpoints (or run prune.py first for the default)")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group(backend="nccl" if cfg.device.startswith("cuda") else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    seed_everything(cfg.sampler.seed)
    sources = list(dict.fromkeys((*cfg.models, *([cfg.reference] if cfg.reference else []))))
    loaded = {src: load_with_info(src, ema=True, device=cfg.device) for src in sources}  # fail before writing
    if resume:
        run_dir = Path(resume)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"--resume {run_dir}: no such evaluation folder")
    else:
        box = [str(new_run_dir(cfg.out, "eval")) if rank == 0 else None]
        if distributed:
            dist.broadcast_object_list(box, src=0)
        run_dir = Path(box[0])
    schedule = Schedule()
    names = {src: f"{i}-{Path(src).stem}" for i, src in enumerate(sources)}

    # 1. Sampling: every rank fills its share of every model's sample folder.
    timing = {}
    for src, name in names.items():
        model, _ = loaded[src]
        timing[src] = generate_samples(model, schedule, run_dir / name / "samples", num_samples=cfg.num_samples,
                                       cfg=cfg.sampler, batch_size=cfg.batch_size, device=cfg.device, rank=rank,
                                       world=world, progress=rank == 0)
    if distributed:
        dist.barrier()
    if rank != 0:
        dist.destroy_process_group()
        return run_dir

    # 2. Metrics, on rank 0, from the PNGs on disk (so resumed and sharded runs measure the same images).
    inception, fid_ref = fid_reference(cfg, run_dir)
    reference_images = load_samples(run_dir / names[cfg.reference] / "samples", cfg.num_samples) if cfg.reference else None
    rows, heldout_by_size = [], {}
    for src in cfg.models:
        model, info = loaded[src]
        name, folder = names[src], run_dir / names[src] / "samples"
        images = load_samples(folder, cfg.num_samples)  # (N, C, H, W) in [0, 1]
        save_grid(images[:64] * 2 - 1, run_dir / name / "grid.png", nrow=8, scale=2)
        c = model.config
        macs = count_macs(model, (torch.zeros(1, c.in_channels, c.image_size, c.image_size, device=cfg.device),
                                  torch.ones(1, device=cfg.device)))
        t = timing[src] if timing[src]["generated"] else measure_latency(model, schedule, cfg=cfg.sampler,
                                                                          batch=min(cfg.batch_size, 8), device=cfg.device)
        row = {"name": name, "source": src, "format": info["format"], "ema": info["ema"],
               "params": macs.params, "params_M": macs.params / 1e6, "macs_paper": macs.macs_paper,
               "macs_paper_G": macs.macs_paper / 1e9, "macs_full": macs.macs_full, "macs_full_G": macs.macs_full / 1e9,
               "seconds_per_image": t["seconds_per_image"], "seconds_per_step": t["seconds_per_step"],
               "model_calls_per_image": t["model_calls_per_image"], "num_samples": cfg.num_samples,
               "samples": str(folder), "grid": str(run_dir / name / "grid.png")}
        if inception is None:
            row.update(fid=None, fid_skipped=fid_ref)
        else:
            from metrics.fid import compute_stats, frechet_distance
            mu, sigma = compute_stats(images, inception, batch_size=50, device=cfg.device)
            row.update(fid=frechet_distance(mu, sigma, *fid_ref), fid_skipped=None)
        if reference_images is None:
            row.update(ssim_consistency=None, ssim_skipped="no --reference given")
        else:
            from metrics.ssim import consistency
            row.update(ssim_consistency=consistency(images, reference_images), ssim_skipped=None)
        if c.image_size not in heldout_by_size:  # one fixed set of triples shared by every model of a size
            heldout_by_size[c.image_size] = heldout_loss_fn(cfg, c.image_size, schedule)
        heldout, why = heldout_by_size[c.image_size]
        row.update(heldout_loss=heldout(model.eval(), batch_size=cfg.batch_size) if heldout else None, heldout_skipped=why)
        rows.append(row)

    report = {"config": dataclasses.asdict(cfg), "environment": environment(), "world_size": world,
              "reference": cfg.reference, "models": rows}
    write_json(run_dir / "report.json", report)
    print(format_table(rows))
    for r in rows:
        for key in ("fid_skipped", "ssim_skipped", "heldout_skipped"):
            if r.get(key):
                print(f"[evaluate] {r['name']}: {key.replace('_skipped', '')} skipped: {r[key]}")
    print(f"[evaluate] report: {run_dir / 'report.json'}")
    if distributed:
        dist.destroy_process_group()
    return run_dir


def fid_stats_main(argv: list[str]) -> None:
    """``evaluate.py fid-stats IMAGE_DIR --out stats.npz``: Inception statistics of an image folder."""
    p = argparse.ArgumentParser(prog="evaluate.py fid-stats", description=fid_stats_main.__doc__)
    p.add_argument("image_dir")
    p.add_argument("--out", required=True, help="the .npz to write (keys mu, sigma; pytorch-fid compatible)")
    p.add_argument("--inception-weights", default=None, help="pt_inception-2015-12-05-6726825d.pth (else cache/download)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    from metrics.fid import save_stats, stats_for_folder
    from models.inception import load_fid_inception

    inception = load_fid_inception(a.inception_weights, device=a.device)
    mu, sigma = stats_for_folder(a.image_dir, inception, batch_size=a.batch_size, device=a.device)
    save_stats(a.out, mu, sigma)
    print(f"[evaluate] wrote {a.out}: mu {mu.shape}, sigma {sigma.shape}")


def parse_args(argv: list[str] | None = None) -> tuple[EvalConfig, str | None]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="*", help="checkpoints / diffusers folders / presets (default: the shipped "
                                             "teacher and the latest runs/prune result)")
    p.add_argument("--reference", default=None, help="model whose samples SSIM compares against (default: the teacher "
                                                      "when evaluating the default)")
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim")
    p.add_argument("--steps", type=int, default=100, help="DDIM steps")
    p.add_argument("--skip-type", choices=("uniform", "quad"), default="uniform")
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clip-x0", action=argparse.BooleanOptionalAction, default=None,
                   help="clamp x0 predictions to [-1, 1] at every step (default: off, as the paper; on for the "
                        "embedded default, whose small teacher needs it)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--fid-stats", default=None)
    p.add_argument("--fid-data", default=None)
    p.add_argument("--inception-weights", default=None)
    p.add_argument("--data", choices=("shapes", "cifar10", "folder"), default="shapes")
    p.add_argument("--data-root", default=None)
    p.add_argument("--heldout-images", type=int, default=256)
    p.add_argument("--out", default=str(RUNS_DIR / "eval"))
    p.add_argument("--resume", default=None, help="an evaluation folder to complete (existing samples are kept)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    if a.num_samples < 2:
        p.error(f"--num-samples must be >= 2, got {a.num_samples}")
    models, reference = tuple(a.models), a.reference
    if not models:  # the embedded default: the shipped teacher and the most recent pruned model
        pruned = latest_pruned_checkpoint()
        models = (str(TEACHER_CHECKPOINT),) + ((str(pruned),) if pruned else ())
        reference = reference or str(TEACHER_CHECKPOINT)
        if pruned is None:
            print("[evaluate] no runs/prune/*/pruned.pt yet: evaluating the teacher only (run `python prune.py` first)")
    clip_x0 = a.clip_x0 if a.clip_x0 is not None else not a.models
    sampler = SamplerConfig(sampler=a.sampler, steps=a.steps, skip_type=a.skip_type, eta=a.eta, seed=a.seed,
                            clip_x0=clip_x0)
    cfg = EvalConfig(models=models, reference=reference, num_samples=a.num_samples, sampler=sampler,
                     batch_size=a.batch_size, fid_stats=a.fid_stats, fid_data=a.fid_data,
                     inception_weights=a.inception_weights, data=a.data, data_root=a.data_root,
                     heldout_images=a.heldout_images, out=a.out, device=a.device)
    return cfg, a.resume


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "fid-stats":
        fid_stats_main(sys.argv[2:])
    else:
        main(*parse_args())
