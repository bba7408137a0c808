"""Train the tiny VAE of the embedded text-to-image world (32x32x3 -> 16x16x4 or 8x8x4); resumable; ships a diffusers folder.

    OMP_NUM_THREADS=2 nohup python -m benchmarks.train_t2i_vae --run runs/t2i_vae_16 --widths 32 64 --groups 16 \\
        --steps 2000 --threads 2 --ship checkpoints/t2i_shapes/vae_16x16 \\
        --results benchmarks/results/t2i_vae_16x16.json > runs/t2i_vae_16.log 2>&1 &   # the shipped VAE's command

(the folder was then moved to checkpoints/t2i_shapes/vae, the pipeline's vae/). The 16x16x4 latents keep the
shapes readable: attribute accuracy of reconstructions 0.77 against 0.82 for the real images, where a first
8x8x4 VAE kept 0.41 (benchmarks/results/t2i_vae_attributes.json, t2i_vae_8x8_attributes.json).

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
from pathlib import Path

import numpy as np
import torch

from common.resumable import add_run_args, may_ship, open_run, parse_run_args, resume, run_settings, train, write_record
from common.runs import write_text
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
    folder, state = open_run(args.run, run_settings(args))
    torch.manual_seed(args.seed)
    config = AutoencoderKLConfig(block_out_channels=tuple(args.widths), layers_per_block=args.layers,
                                 latent_channels=4, norm_num_groups=args.groups, sample_size=32)
    vae = AutoencoderKL(config)
    opt = torch.optim.Adam(vae.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    s = resume(folder, state, tag="vae", model=vae, optimizer=opt, generator=gen)
    cache = Path(args.cache)
    train_x = to_minus_one_one(rendered_split("train", args.train_images, cache_dir=cache)[0])
    test = to_minus_one_one(rendered_split("test", args.eval_images, cache_dir=cache)[0])
    print(f"[vae] data ready ({s.seconds():.0f} s); {sum(p.numel() for p in vae.parameters())} "
          f"parameters; latents {config.latent_channels}x{32 // config.downscale}x{32 // config.downscale}", flush=True)

    def step() -> dict:
        idx = torch.randint(len(train_x), (args.batch_size,), generator=gen)
        loss, l1, kl = vae_loss(vae, train_x[idx], kl_weight=args.kl_weight, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": round(loss.item(), 3), "l1_sum": round(l1.item(), 3), "kl": round(kl.item(), 1)}

    vae.train()
    if not train(s, args, step, lambda: evaluate(vae, test[:128], fd=False), evaluate_last=False):
        return
    wall = s.seconds()
    std = latent_std(vae, train_x[:args.scale_images], seed=args.seed)
    vae.config = config = dataclasses.replace(config, scaling_factor=round(1.0 / std, 5))
    final = evaluate(vae, test)
    final["latent_std"], final["scaling_factor"] = std, config.scaling_factor
    print("[vae] test split: " + json.dumps(final), flush=True)
    if args.ship and may_ship(Path(args.ship), "vae"):
        ship(vae, Path(args.ship))
        write_record(s, args, script="train_t2i_vae", out=Path(args.ship), wall=wall,
                     results={"test_split": final, "kl_weight": args.kl_weight})


def ship(vae: AutoencoderKL, out: Path) -> None:
    """diffusers' AutoencoderKL folder: diffusion_pytorch_model.safetensors and config.json."""
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in vae.state_dict().items()},
              str(out / "diffusion_pytorch_model.safetensors"))
    write_text(out / "config.json", json.dumps(vae.config.to_diffusers_config(), indent=2) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_args(p, repo=REPO, name="t2i_vae",
                 ship_help="diffusers AutoencoderKL folder to write when done (never overwritten)")
    p.add_argument("--batch-size", type=int, default=32, help="[32]")
    p.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate [1e-3]")
    p.add_argument("--kl-weight", type=float, default=1e-6, help="[1e-6, LDM's kl-f8]")
    p.add_argument("--widths", type=int, nargs="+", default=[32, 64, 64], help="block_out_channels [32 64 64]")
    p.add_argument("--layers", type=int, default=1, help="layers_per_block [1]")
    p.add_argument("--groups", type=int, default=16, help="norm_num_groups [16]")
    p.add_argument("--eval-images", type=int, default=512, help="test-split images for PSNR and FD [512]")
    p.add_argument("--scale-images", type=int, default=1024, help="train images for the latent std [1024]")
    a = parse_run_args(p, argv, positive=("batch_size", "layers", "groups", "eval_images", "scale_images"))
    if len(a.widths) not in (2, 3):
        p.error(f"--widths takes 3 levels (32 px -> 8x8 latents) or 2 (16x16 latents), got {a.widths}")
    return a


if __name__ == "__main__":
    main(parse_args())
