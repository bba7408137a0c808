"""Evaluate diffusion models as the Diff-Pruning paper does: params, MACs, latency, FID, SSIM consistency.

    python evaluate.py                                     # the embedded default: teacher + latest pruned run
    python evaluate.py A.pt B.pt --reference A.pt --num-samples 1000 --steps 100 --skip-type quad \\
        --fid-stats cifar10_train.npz --inception-weights pt_inception-2015-12-05-6726825d.pth
    python evaluate.py fid-stats IMAGE_DIR --out stats.npz [--inception-weights PATH]
    torchrun --nproc_per_node 4 evaluate.py ...            # sampling sharded by sample index, then gathered
    python evaluate.py --model PIPELINE --prompts captions.txt --clip ViT-g/14   # text-to-image: metrics/t2i_evaluation.py

Two subcommands: ``models`` (the default, so ``evaluate.py A.pt`` is ``evaluate.py models A.pt``) and
``fid-stats``. Every sample is reproducible by its index (seeded per index), so sharded, resumed
(``--resume DIR``) and single-process runs write identical images, and SSIM pairs a model's sample i with
the reference's sample i: the same initial noise x_T. A resumed folder is only completed by the same
weights with the same sampling settings (metrics/evaluation.py, ``claim_sample_folder``).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from common import cli
from common.allocator import retain_freed_memory
from common.cli import UserError
from common.defaults import RUNS_DIR, TEACHER_CHECKPOINT, latest_pruned_checkpoint
from common.distributed import Distributed, setup as setup_distributed
from common.images import save_grid
from common.runs import RUN_MARKER, RunLock, mark_run, new_run_dir, read_run_marker, seed_everything, write_json
from data import DATASETS, build_dataset
from diffusion.ddpm import HeldOutLoss
from diffusion.schedule import Schedule
from metrics.protocols import DEFAULT as DEFAULT_PROTOCOL, PROTOCOLS, resolve as resolve_protocol
from metrics.evaluation import (SamplerConfig, claim_sample_folder, format_table, generate_samples, load_samples,
                                measure_latency, remove_partial_samples, sampling_key)
from metrics import eval_run, t2i_evaluation as t2i
from metrics.fid_stats import FidStatsConfig, fid_stats
from metrics.macs import count_macs
from models.checkpoint import environment
from metrics.inception import FID_FEATURE_DIM, FID_WEIGHTS_HASH_PREFIX
from models.ddpm.config import PRESETS
from models.lineage import default_reference, label as lineage_label
from models.loading import load_with_info

@dataclass(frozen=True)
class EvalConfig:
    models: tuple[str, ...] = ()
    reference: str | None = None      # SSIM consistency is measured against this model's samples
    num_samples: int = 64
    sampler: SamplerConfig = SamplerConfig()
    protocol: str = "custom"          # the named protocol the sampler came from (metrics/protocols.py), described
    weights: str = "ema"              # "ema" or "raw": which weights of a checkpoint that has both
    labels: tuple[str, ...] = ()      # the table's model names, one per model (default: run folder + root teacher)
    batch_size: int = 64
    fid_stats: str | None = None      # reference statistics .npz (keys mu, sigma)
    fid_data: str | None = None       # ... or an image folder to compute them from (cached in the run folder)
    inception_weights: str | None = None
    data: str = "shapes"              # held-out denoising loss data: shapes | cifar10 | folder
    data_root: str | None = None
    heldout_images: int = 256
    preset: str | None = None         # DDIM-codebase state dicts: the preset they are read against
    norm_groups: int | None = None    # DDIM-codebase state dicts: GroupNorm groups (not in the weights)
    out: str = str(RUNS_DIR / "eval")
    device: str = "cpu"


# ----------------------------------------------------------------------------------------------- checks
def validate(cfg: EvalConfig) -> None:
    """The cheap checks, before any model is loaded or any sample drawn."""
    if not cfg.models:
        raise UserError("no model to evaluate: pass checkpoints (or run prune.py first for the default)")
    if cfg.num_samples < 2:
        raise UserError(f"--num-samples must be >= 2 (SSIM and FID need two), got {cfg.num_samples}")
    for bad, message in ((cfg.batch_size < 1, f"--batch-size must be >= 1, got {cfg.batch_size}"),
                         (cfg.heldout_images < 0, f"--heldout-images must be >= 0, got {cfg.heldout_images}"),
                         (cfg.sampler.sampler not in ("ddim", "ddpm"), f"--sampler must be ddim or ddpm, got {cfg.sampler.sampler!r}"),
                         (cfg.sampler.steps < 1, f"--steps must be >= 1, got {cfg.sampler.steps}"),
                         (not cfg.sampler.eta >= 0, f"--eta must be >= 0, got {cfg.sampler.eta}"),
                         (cfg.labels and len(cfg.labels) != len(cfg.models), f"--labels gives {len(cfg.labels)} names for {len(cfg.models)} models"),
                         (cfg.fid_stats and cfg.fid_data, "pass --fid-stats or --fid-data, not both"),
                         (cfg.fid_stats and not cfg.fid_stats.endswith(".npz"), f"--fid-stats must be an .npz file (keys mu, sigma), got {cfg.fid_stats!r}"),
                         (cfg.fid_data and not Path(cfg.fid_data).is_dir(), f"--fid-data {cfg.fid_data}: no such image folder")):
        if bad:
            raise UserError(message)
    if cfg.inception_weights and not Path(cfg.inception_weights).is_file():
        raise UserError(f"--inception-weights {cfg.inception_weights}: no such file")
    from models.pipelines import is_latent_source
    for src in (*cfg.models, *([cfg.reference] if cfg.reference else [])):
        if is_latent_source(src):  # this path samples pixel-space DDPMs; a pipeline has no pixel U-Net to sample
            raise UserError(f"{src} is a latent diffusion pipeline or component, not a DDPM: evaluate it with "
                            f"`python evaluate.py --model {src} --prompts FILE` (text-to-image) or "
                            f"`--class-labels N` (class-conditional)")


def fid_setup(cfg: EvalConfig):
    """(inception, (mu, sigma) or None, metric name, reason) for the FID asked for, all checked before any
    sampling. No FID asked for: (None, None, None, reason)."""
    if not (cfg.fid_stats or cfg.fid_data):
        return None, None, None, "no --fid-stats or --fid-data given"
    from metrics.fid import load_stats, stats_inception_sha256
    from metrics.inception import load_fid_inception

    stats = None
    if cfg.fid_stats:  # readable and the right shape before the Inception is even built
        stats = load_stats(cfg.fid_stats)
        if stats[0].shape != (FID_FEATURE_DIM,):
            raise UserError(f"--fid-stats {cfg.fid_stats}: mu has shape {stats[0].shape}, but FID statistics are "
                            f"{FID_FEATURE_DIM}-dimensional Inception pool3 features")
    # Asked for FID: weights that are missing or cannot be downloaded are an error now, not after sampling.
    inception = load_fid_inception(cfg.inception_weights, device=cfg.device)
    recorded = stats_inception_sha256(cfg.fid_stats) if cfg.fid_stats else None
    if recorded is not None and recorded != inception.weights_sha256:
        raise UserError(f"--fid-stats {cfg.fid_stats} was computed with other Inception weights (sha256 "
                        f"{recorded[:12]}...) than {inception.weights_path} ({inception.weights_sha256[:12]}...); "
                        "a distance between features of two networks means nothing")
    if inception.is_fid_release:
        return inception, stats, "fid", None
    message = (f"{inception.weights_path} is not the FID Inception release (sha256 {inception.weights_sha256[:12]}..., "
               f"the release's starts {FID_WEIGHTS_HASH_PREFIX}): the distance is reported as 'FD with custom Inception weights' "
               f"(fd_custom_inception), not as FID")
    warnings.warn(message, stacklevel=2)
    print(f"[evaluate] warning: {message}")
    return inception, stats, "fd_custom_inception", message


def heldout_loss_fn(cfg: EvalConfig, image_size: int, schedule: Schedule):
    """A HeldOutLoss over the first held-out images of ``cfg.data``, or (None, reason) when disabled.
    Data that cannot be read is an error (the user asked for it), raised before any sampling."""
    if cfg.heldout_images <= 0:
        return None, "disabled (--heldout-images 0)"
    test = build_dataset(cfg.data, root=cfg.data_root, image_size=image_size, split="test")
    n = min(cfg.heldout_images, len(test))
    return HeldOutLoss(torch.stack([test[i] for i in range(n)]), schedule, draws=4, seed=1234), None


def fd_shapes_reference(cfg: EvalConfig, image_size: int, in_channels: int):
    """FD-shapes' real side (metrics/fd_shapes.py: ShapesNet features of held-out shapes images) for models
    of this shape, or (None, reason) where it does not apply. Built before any sampling."""
    if cfg.data != "shapes":
        return None, f"FD-shapes is defined on the procedural shapes data only (--data {cfg.data})"
    from metrics.fd_shapes import FDShapesReference
    from metrics.shapes_net import load_shapes_net

    net = load_shapes_net(device=cfg.device)
    if (in_channels, image_size) != (3, net.config.image_size):
        return None, (f"ShapesNet takes 3x{net.config.image_size}x{net.config.image_size} images, the model samples "
                      f"{in_channels}x{image_size}x{image_size}")
    return FDShapesReference.build(image_size=image_size, net=net, device=cfg.device), None


# ----------------------------------------------------------------------------------------------- main
def main(cfg: EvalConfig, resume: str | None = None) -> Path:
    """Evaluate ``cfg.models``; returns the run folder holding report.json, samples/ and grids."""
    validate(cfg)
    if resume and not Path(resume).is_dir():
        raise FileNotFoundError(f"--resume {resume}: no such evaluation folder")
    if resume and (read_run_marker(resume) or {}).get("kind") != "eval":
        raise UserError(f"--resume {resume}: not an evaluate.py run folder (no {RUN_MARKER} of kind 'eval')")
    if not resume:
        cli.check_writable_dir(cfg.out, "--out")
    ctx = setup_distributed(cfg.device)  # under torchrun: one share of the samples per process
    cfg, rank = dataclasses.replace(cfg, device=ctx.device), ctx.rank
    seed_everything(cfg.sampler.seed)
    sources = list(dict.fromkeys((*cfg.models, *([cfg.reference] if cfg.reference else []))))
    loaded = {}
    for src in sources:  # every model loads before anything is written
        loaded[src] = load_with_info(src, ema=cfg.weights == "ema", device=cfg.device, preset=cfg.preset, norm_groups=cfg.norm_groups)
        if rank == 0:
            cli.print_load_notes(src, loaded[src][1], "evaluate")
    eval_run.check_loaded({s: m for s, (m, _) in loaded.items()}, cfg.reference, cfg.num_samples, cfg.out)
    inception, fid_stats, fid_name, fid_why = fid_setup(cfg) if rank == 0 else (None, None, None, None)
    schedule = Schedule()
    names = {src: f"{i}-{Path(src).stem}" for i, src in enumerate(sources)}
    keys = {src: sampling_key(loaded[src][0], schedule, cfg.sampler) for src in sources}
    heldout_by_size = {}  # the held-out data is read now: a bad --data / --data-root fails before sampling
    for src in cfg.models:
        size = loaded[src][0].config.image_size
        if size not in heldout_by_size:
            heldout_by_size[size] = heldout_loss_fn(cfg, size, schedule)
    fd_shapes_by_shape = {}
    for src in cfg.models if rank == 0 else ():
        c = loaded[src][0].config
        if (c.image_size, c.in_channels) not in fd_shapes_by_shape:
            fd_shapes_by_shape[c.image_size, c.in_channels] = fd_shapes_reference(cfg, c.image_size, c.in_channels)
    run_dir = Path(resume) if resume else Path(ctx.broadcast(str(new_run_dir(cfg.out, "eval")) if rank == 0 else None))
    if rank == 0 and not resume:
        mark_run(run_dir, "eval")
    lock = RunLock(run_dir, "evaluating into this folder").acquire() if rank == 0 else None
    try:  # before any sampling: the same evaluation (models by weights, settings) as the folder's, or an error
        if ctx.broadcast(eval_run.claim_run(run_dir, eval_run.identity(cfg, keys), names, keys, resume=bool(resume))
                         if rank == 0 else None):  # finished (claim_run said so): its report stands as written
            return ctx.close() or run_dir
        return _evaluate(cfg, run_dir, loaded, names, keys, schedule, inception, fid_stats, fid_name, fid_why,
                         heldout_by_size, ctx, fd_shapes_by_shape)
    finally:
        if lock is not None:
            lock.release()


def _evaluate(cfg, run_dir, loaded, names, keys, schedule, inception, fid_stats, fid_name, fid_why,
              heldout_by_size, ctx: Distributed, fd_shapes_by_shape=None) -> Path:
    rank = ctx.rank
    # 0. FID reference statistics of --fid-data, before any sampling (an unreadable image fails now).
    if rank == 0 and inception is not None and fid_stats is None:
        from metrics.fid import cached_folder_stats  # keyed by the folder and the weights: a rerun reads it
        fid_stats = cached_folder_stats(cfg.fid_data, inception, run_dir / "fid_reference_stats.npz", device=cfg.device)
    # 1. Sampling: every rank fills its share of every model's sample folder.
    if rank == 0:
        for src, name in names.items():
            folder = run_dir / name / "samples"
            claim_sample_folder(folder, keys[src])
            remove_partial_samples(folder)
    ctx.barrier()
    timing = {}
    for src, name in names.items():
        model, _ = loaded[src]
        timing[src] = generate_samples(model, schedule, run_dir / name / "samples", num_samples=cfg.num_samples,
                                       cfg=cfg.sampler, batch_size=cfg.batch_size, device=cfg.device, rank=rank,
                                       world=ctx.world, progress=rank == 0)
    ctx.barrier()
    if rank != 0:
        ctx.close()
        return run_dir

    # 2. Metrics, on rank 0, from the PNGs on disk (so resumed and sharded runs measure the same images).
    reference_images = load_samples(run_dir / names[cfg.reference] / "samples", cfg.num_samples) if cfg.reference else None
    rows = []
    for src in cfg.models:
        model, info = loaded[src]
        name, folder = names[src], run_dir / names[src] / "samples"
        images = load_samples(folder, cfg.num_samples)  # (N, C, H, W) in [0, 1]
        save_grid(images[:64] * 2 - 1, run_dir / name / "grid.png", nrow=8, scale=2)
        c = model.config
        macs = count_macs(model, model.example_inputs())
        t = timing[src] if timing[src]["generated"] else measure_latency(model, schedule, cfg=cfg.sampler,
                                                                          batch=min(cfg.batch_size, 8), device=cfg.device)
        row = {"name": name, "label": dict(zip(cfg.models, cfg.labels)).get(src) or lineage_label(src), "source": src, "format": info["format"], "ema": info["ema"],
               "weights_sha256": keys[src]["weights_sha256"],
               "params": macs.params, "params_M": macs.params / 1e6, "macs_paper": macs.macs_paper,
               "macs_paper_G": macs.macs_paper / 1e9, "macs_full": macs.macs_full, "macs_full_G": macs.macs_full / 1e9,
               "seconds_per_image": t["seconds_per_image"], "seconds_per_step": t["seconds_per_step"],
               "model_calls_per_image": t["model_calls_per_image"], "num_samples": cfg.num_samples,
               "samples": str(folder), "grid": str(run_dir / name / "grid.png"), "fid": None}
        if inception is None:
            row.update(fid_skipped=fid_why)
        else:
            from metrics.fid import compute_stats, frechet_distance
            mu, sigma = compute_stats(images, inception, batch_size=50, device=cfg.device)
            row.update({fid_name: frechet_distance(mu, sigma, *fid_stats), "fid_skipped": fid_why,
                        "inception_weights_sha256": inception.weights_sha256})
        if reference_images is None:
            row.update(ssim_consistency=None, ssim_skipped="no --reference given")
        else:
            from metrics.ssim import consistency
            row.update(ssim_consistency=consistency(images, reference_images), ssim_skipped=None)
        fd_ref, fd_why = (fd_shapes_by_shape or {}).get((c.image_size, c.in_channels), (None, "not computed"))
        row.update(fd_ref.measure(images, device=cfg.device) if fd_ref else {"fd_shapes": None, "kid_shapes": None},
                   fd_shapes_skipped=fd_why)
        heldout, why = heldout_by_size[c.image_size]  # one fixed set of triples shared by every model of a size
        row.update(heldout_loss=heldout(model.eval(), batch_size=cfg.batch_size) if heldout else None, heldout_skipped=why)
        rows.append(row)

    report = {"config": dataclasses.asdict(cfg), "environment": environment(), "world_size": ctx.world,
              "protocol": cfg.protocol, "reference": cfg.reference, "models": rows}
    write_json(run_dir / "report.json", report)
    print(f"[evaluate] sampling protocol: {cfg.protocol}")
    print(format_table(rows))
    for r in rows:
        for key in ("fid_skipped", "ssim_skipped", "heldout_skipped", "fd_shapes_skipped"):
            if r.get(key):
                print(f"[evaluate] {r['name']}: {key.replace('_skipped', '')}: {r[key]}")
    print(f"[evaluate] report: {run_dir / 'report.json'}")
    ctx.close()
    return run_dir


def run_command(cfg: EvalConfig | FidStatsConfig, resume: str | None = None):
    """What ``python evaluate.py ...`` runs: one of the two subcommands."""
    if isinstance(cfg, t2i.T2IEvalConfig):  # a conditional latent pipeline from prompts / class labels
        return t2i.evaluate_pipeline(cfg)
    return fid_stats(cfg) if isinstance(cfg, FidStatsConfig) else main(cfg, resume)


# ----------------------------------------------------------------------------------------------- command line
COMMANDS = ("models", "fid-stats")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.split("\n")[0],
                                epilog="`evaluate.py A.pt B.pt ...` is short for `evaluate.py models A.pt B.pt ...`")
    sub = p.add_subparsers(dest="command", metavar="{models,fid-stats}")
    m = sub.add_parser("models", help="evaluate models (the default subcommand)",
                       description="Evaluate models: params, MACs, latency, FID, SSIM consistency, held-out loss.")
    m.add_argument("models", nargs="*", help="checkpoints / diffusers folders / presets / hub names (default: the "
                                             "shipped teacher and the latest runs/prune result)")
    cli.add_loader_overrides(m, PRESETS)
    m.add_argument("--reference", default=None, help="SSIM's reference model [default: the first pruned model's root teacher]")
    m.add_argument("--num-samples", type=cli.positive_int, default=64, help="samples per model, >= 2 [default: 64]")
    m.add_argument("--protocol", choices=sorted(PROTOCOLS), default=DEFAULT_PROTOCOL,
                   help=f"named sampling settings, one default however invoked (metrics/protocols.py) [default: {DEFAULT_PROTOCOL}]")
    m.add_argument("--sampler", choices=("ddim", "ddpm"), default=None, help="override: DDIM, or ancestral DDPM")
    m.add_argument("--steps", type=cli.int_in_range(1, Schedule().num_timesteps, "the schedule's timesteps"),
                   default=None, help="override: DDIM steps")
    m.add_argument("--skip-type", choices=("uniform", "quad"), default=None, help="override: DDIM timestep spacing")
    m.add_argument("--eta", type=cli.finite_float, default=None, help="override: DDIM eta, >= 0 (0 is deterministic)")
    m.add_argument("--clip-x0", action=argparse.BooleanOptionalAction, default=None, help="override: clamp x0 to [-1, 1]")
    m.add_argument("--weights", choices=("ema", "raw"), default="ema", help="which weights of a checkpoint [default: ema]")
    m.add_argument("--labels", nargs="+", default=None, help="table names, one per model [default: run folder + root teacher]")
    m.add_argument("--batch-size", type=cli.positive_int, default=64, help="sampling batch [default: 64]")
    m.add_argument("--fid-stats", type=cli.npz_path, default=None,
                   help="reference FID statistics (.npz with mu, sigma; e.g. from `evaluate.py fid-stats`)")
    m.add_argument("--fid-data", default=None, help="... or an image folder to compute them from")
    m.add_argument("--inception-weights", default=None,
                   help="pt_inception-2015-12-05-6726825d.pth (default: the torch hub cache, else downloaded). "
                        "Other weights give 'FD with custom Inception weights', not FID")
    cli.add_data_flags(m, DATASETS, help="held-out loss data")
    m.add_argument("--heldout-images", type=cli.nonnegative_int, default=256,
                   help="held-out images of the eps-MSE, 0 disables [default: 256]")
    m.add_argument("--resume", default=None, help="an evaluation folder to complete: existing samples are kept when "
                                                  "they were drawn by the same weights with the same settings")
    cli.add_run_flags(m, out=str(RUNS_DIR / "eval"), seed_help="seed of every sample's noise (by index)")

    f = sub.add_parser("fid-stats", help="Inception statistics (mu, sigma) of an image folder",
                       description="Inception statistics of an image folder, pytorch-fid compatible .npz.")
    f.add_argument("image_dir", help="folder of PNG/JPEG images (searched recursively)")
    f.add_argument("--out", type=cli.npz_path, required=True, help="the .npz to write (keys mu, sigma)")
    f.add_argument("--inception-weights", default=None,
                   help="pt_inception-2015-12-05-6726825d.pth (default: the torch hub cache, else downloaded)")
    f.add_argument("--batch-size", type=cli.positive_int, default=50, help="Inception batch [default: 50]")
    f.add_argument("--device", type=cli.device_name, default="cpu", help="torch device [default: cpu]")
    cli.add_debug_flag(f)
    return p


def parse_args(argv: list[str] | None = None) -> tuple[EvalConfig | FidStatsConfig, str | None]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if t2i.routes_here(argv):
        return t2i.parse_args(argv), None  # --prompts / --class-labels / --model: metrics/t2i_evaluation.py
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["models", *argv]  # the default subcommand
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.command == "fid-stats":
        return FidStatsConfig(image_dir=a.image_dir, out=a.out, inception_weights=a.inception_weights,
                              batch_size=a.batch_size, device=a.device), None
    if a.num_samples < 2:
        parser.error(f"--num-samples must be >= 2 (SSIM and FID need two), got {a.num_samples}")
    models, reference = tuple(a.models), a.reference or default_reference(a.models)  # the root teacher, if any
    if not models:  # the embedded default: the shipped teacher and the most recent pruned model
        pruned = latest_pruned_checkpoint()
        models = (str(TEACHER_CHECKPOINT),) + ((str(pruned),) if pruned else ())
        reference = reference or str(TEACHER_CHECKPOINT)
        if pruned is None:
            print("[evaluate] no runs/prune/*/pruned.pt yet: evaluating the teacher only (run `python prune.py` first)")
    # One protocol whatever the models: no-argument and explicit runs of the same models measure the same.
    protocol = resolve_protocol(a.protocol, seed=a.seed, sampler=a.sampler, steps=a.steps, skip_type=a.skip_type,
                                eta=a.eta, clip_x0=a.clip_x0)
    sampler = protocol.sampler
    cfg = EvalConfig(models=models, reference=reference, num_samples=a.num_samples, sampler=sampler,
                     protocol=protocol.describe(), weights=a.weights, labels=tuple(a.labels or ()),
                     batch_size=a.batch_size, fid_stats=a.fid_stats, fid_data=a.fid_data,
                     inception_weights=a.inception_weights, data=a.data, data_root=a.data_root,
                     heldout_images=a.heldout_images, preset=a.preset, norm_groups=a.norm_groups, out=a.out,
                     device=a.device)
    return cfg, a.resume


if __name__ == "__main__":
    retain_freed_memory()  # common/allocator.py: the passes reuse freed activation memory
    sys.exit(cli.run(run_command, parse_args))
