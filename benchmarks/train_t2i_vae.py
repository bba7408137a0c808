"""Train the tiny VAE of the embedded text-to-image world (32x32x3 -> 8x8x4); resumable; ships a diffusers folder.

    OMP_NUM_THREADS=1 nohup python -m benchmarks.train_t2i_vae --run runs/t2i_vae \\
        --ship checkpoints/t2i_shapes/vae > runs/t2i_vae.log 2>&1 &        # the shipped model's command

The network is models/vae's AutoencoderKL (diffusers' semantics and names) at a small width: three levels
(``--widths``), so 32 px images become 8x8 latents with 4 channels (two levels: 16x16). The loss is the KL-regularised
autoencoder's of Rombach et al. 2022 (arXiv 2112.10752, Sec. 3 and Appendix G) without its perceptual and
adversarial terms, which these flat-coloured images do not need:

    L = sum_pixels |x - D(z)| + kl_weight * KL(q(z|x) || N(0, I)),   z ~ q(z|x) (reparameterised),

both summed per image and averaged over the batch (the reference sums too; kl_weight 1e-6 is its kl-f8
setting, ``--kl-weight``). After training the scaling factor is set as the LDM code computes it: 1 / std of
the sampled latents of training images (there, of the first batch; here of ``--scale-images`` images), so the
diffusion model sees latents of unit variance. Reported on the test split: reconstruction PSNR (of the
posterior mean, images in [0, 1]) and FD-shapes between the reconstructions and the images they came from
(metrics/fd_shapes.py, the shipped ShapesNet). No flips or other augmentation. Re-running resumes ``--run``;
when complete, ``--ship`` writes config.json + diffusion_pytorch_model.safetensors (never over an existing
folder) and benchmarks/results/t2i_vae.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common.resumable import machine, open_run, save_state, warmup_cosine
from data.rendered import rendered_split, to_minus_one_one
from models.vae import AutoencoderKL, AutoencoderKLConfig

REPO = Path(__file__).resolve().parents[1]


def vae_loss(vae: AutoencoderKL, x: torch.Tensor, *, kl_weight: float, generator: torch.Generator) -> tuple:
    """(loss, L1 per image, KL per image) for a batch x (B, 3, H, W) in [-1, 1]; see the module docstring."""
    q = vae.encode(x)
    recon = vae.decode(q.sample(generator))
    l1 = (x - recon).abs().sum(dim=(1, 2, 3)).mean()
    kl = q.kl().mean()
    return l1 + kl_weight * kl, l1, kl


@torch.no_grad()
def evaluate(vae: AutoencoderKL, images: torch.Tensor, *, fd: bool = True) -> dict:
    """PSNR (dB, images in [0, 1], mean over images) of decode(mean of q(z|x)), and FD-shapes of the
    reconstructions against their originals."""
    vae.eval()
    recon = torch.cat([vae(b).clamp(-1, 1) for b in images.split(128)])
    a, b = (images + 1) / 2, (recon + 1) / 2
    mse = (a - b).pow(2).mean(dim=(1, 2, 3))
    out = {"images": len(images), "psnr_db": (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean().item(),
           "mse": mse.mean().item()}
    if fd:
        from metrics.fd_shapes import fd_from_features, shapes_features
        from metrics.shapes_net import load_shapes_net

        net = load_shapes_net()
        out["fd_shapes_recon_vs_originals"] = fd_from_features(shapes_features(a, net), shapes_features(b, net))
    vae.train()
    return out


@torch.no_grad()
def latent_std(vae: AutoencoderKL, images: torch.Tensor, *, seed: int) -> float:
    """std of z ~ q(z|x) over all elements of the given images' latents (LDM's scale_factor = 1 / this)."""
    vae.eval()
    gen = torch.Generator().manual_seed(seed)
    z = torch.cat([vae.encode(b).sample(gen) for b in images.split(128)])
    vae.train()
    return z.flatten().std().item()


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    session_only = ("argv", "ship", "results", "threads", "stop_after", "cache")  # may change between sessions
    settings = {k: v for k, v in vars(args).items() if k not in session_only}
    folder, state = open_run(args.run, settings)
    torch.manual_seed(args.seed)
    config = AutoencoderKLConfig(block_out_channels=tuple(args.widths), layers_per_block=args.layers,
                                 latent_channels=4, norm_num_groups=args.groups, sample_size=32)
    vae = AutoencoderKL(config)
    opt = torch.optim.Adam(vae.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    step, wall, curve = 0, 0.0, []
    if state is not None:
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        step, wall, curve = int(state["step"]), float(state["wall_seconds"]), json.loads(state["curve"])
        print(f"[vae] resumed {folder} at step {step}", flush=True)
    cache = Path(args.cache)
    start = time.perf_counter() - wall
    train = to_minus_one_one(rendered_split("train", args.train_images, cache_dir=cache)[0])
    test = to_minus_one_one(rendered_split("test", args.eval_images, cache_dir=cache)[0])
    print(f"[vae] data ready ({time.perf_counter() - start:.0f} s); {sum(p.numel() for p in vae.parameters())} "
          f"parameters; latents {config.latent_channels}x{32 // config.downscale}x{32 // config.downscale}", flush=True)

    vae.train()
    stop = min(args.steps, args.stop_after or args.steps)
    while step < stop:
        lr = warmup_cosine(step, total=args.steps, peak=args.lr, warmup=args.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(train), (args.batch_size,), generator=gen)
        loss, l1, kl = vae_loss(vae, train[idx], kl_weight=args.kl_weight, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % args.log_every == 0 or step == stop:
            entry = {"step": step, "loss": round(loss.item(), 3), "l1_sum": round(l1.item(), 3),
                     "kl": round(kl.item(), 1), "seconds": round(time.perf_counter() - start, 1)}
            if step % args.eval_every == 0:
                entry.update(evaluate(vae, test[:128], fd=False))
            curve.append(entry)
            print("[vae] " + json.dumps(entry), flush=True)
            save_state(folder, {"model": vae.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
                                "step": step, "wall_seconds": time.perf_counter() - start, "curve": json.dumps(curve)})
    if step < args.steps:
        print(f"[vae] stopped at step {step} of {args.steps} (--stop-after); rerun the command to continue", flush=True)
        return
    wall = time.perf_counter() - start
    std = latent_std(vae, train[:args.scale_images], seed=args.seed)
    vae.config = config = dataclasses.replace(config, scaling_factor=round(1.0 / std, 5))
    final = evaluate(vae, test)
    final["latent_std"], final["scaling_factor"] = std, config.scaling_factor
    print("[vae] test split: " + json.dumps(final), flush=True)
    if args.ship:
        ship(vae, Path(args.ship), args, final, curve, wall)


def ship(vae: AutoencoderKL, out: Path, args: argparse.Namespace, final: dict, curve: list, wall: float) -> None:
    from safetensors.torch import save_file

    if out.exists():
        print(f"[vae] {out} exists; not overwritten (remove it to ship this run)", flush=True)
        return
    out.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in vae.state_dict().items()},
              str(out / "diffusion_pytorch_model.safetensors"))
    (out / "config.json").write_text(json.dumps(vae.config.to_diffusers_config(), indent=2) + "\n")
    result = {"command": "OMP_NUM_THREADS=1 python -m benchmarks.train_t2i_vae " + shlex.join(args.argv),
              "folder": str(out), "test_split": final,
              "kl_weight": args.kl_weight, "parameters": sum(p.numel() for p in vae.parameters()),
              "wall_seconds": round(wall, 1),
              "wall_note": "summed over resumed sessions, on a CPU shared with other jobs (see load_average_1m)",
              "machine": machine(), "settings": {k: v for k, v in vars(args).items() if k != "argv"}, "curve": curve}
    results = Path(args.results)
    results.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[vae] shipped {out} and {results}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="run folder (state.pt, args.json); rerun to resume")
    p.add_argument("--ship", default=None, help="diffusers AutoencoderKL folder to write when done (never overwritten)")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "t2i_vae.json"),
                   help="results JSON written with --ship [benchmarks/results/t2i_vae.json]")
    p.add_argument("--steps", type=int, default=3000, help="[3000]")
    p.add_argument("--batch-size", type=int, default=32, help="[32]")
    p.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate [1e-3]")
    p.add_argument("--warmup", type=int, default=100, help="[100]")
    p.add_argument("--kl-weight", type=float, default=1e-6, help="[1e-6, LDM's kl-f8]")
    p.add_argument("--widths", type=int, nargs="+", default=[32, 64, 64], help="block_out_channels [32 64 64]")
    p.add_argument("--layers", type=int, default=1, help="layers_per_block [1]")
    p.add_argument("--groups", type=int, default=16, help="norm_num_groups [16]")
    p.add_argument("--train-images", type=int, default=20000, help="[20000]")
    p.add_argument("--eval-images", type=int, default=512, help="test-split images for PSNR and FD [512]")
    p.add_argument("--scale-images", type=int, default=1024, help="train images for the latent std [1024]")
    p.add_argument("--log-every", type=int, default=50, help="[50]")
    p.add_argument("--eval-every", type=int, default=500, help="[500]")
    p.add_argument("--stop-after", type=int, default=None, help="end this session at that step (resume later)")
    p.add_argument("--cache", default=str(REPO / "runs" / "t2i_cache"), help="rendered-images cache folder")
    p.add_argument("--threads", type=int, default=1, help="[1]")
    p.add_argument("--seed", type=int, default=0, help="[0]")
    a = p.parse_args(argv)
    for name in ("steps", "batch_size", "layers", "groups", "train_images", "eval_images", "scale_images",
                 "log_every", "eval_every"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if len(a.widths) not in (2, 3):
        p.error(f"--widths takes 3 levels (32 px -> 8x8 latents) or 2 (16x16 latents), got {a.widths}")
    if a.eval_every % a.log_every:
        p.error("--eval-every must be a multiple of --log-every")
    a.argv = argv
    return a


if __name__ == "__main__":
    main(parse_args())
