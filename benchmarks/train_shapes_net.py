"""Train ShapesNet (metrics/shapes_net.py), the feature network of FD-shapes, on the procedural shapes' attributes.

    python -m benchmarks.train_shapes_net --out checkpoints/shapes_net.pt   # the shipped checkpoint's command

Renders ``--train-images`` images of the shapes train split (data/procedural.py, seed 0, 32x32) with their
latent attributes once, then trains multi-label (cross-entropy on the shape count, binary cross-entropy on
kind, colour and (kind, colour) presence, MSE on the background colours' mean and difference) with Adam and a cosine learning
rate, on random horizontal and vertical flips (both leave every attribute unchanged). Deterministic on CPU
for a given seed and thread count. Reports the attribute accuracies on ``--val-images`` test-split images
and writes the checkpoint plus ``<out>.json`` (the command, the config, the accuracies, the wall time and the
library versions). An existing ``--out`` is never overwritten.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.runs import seed_everything
from data.procedural import ProceduralShapes
from models.checkpoint import environment
from metrics.shapes_net import (NUM_BACKGROUND_NAMES, NUM_TARGETS, TARGET_SLICES, ShapesNet,
                               ShapesNetConfig, attribute_targets, save_shapes_net)


def render_split(split: str, count: int, image_size: int, start: int = 0, *,
                 background_names: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 3, S, S) float in [0, 1], targets (N, NUM_TARGETS [+ 7])) of images start..start+count-1."""
    ds = ProceduralShapes(image_size=image_size, size=start + count, split=split)
    images, targets = [], []
    for i in range(start, start + count):
        img, attrs = ds.image_and_attributes(i)
        images.append(img)
        targets.append(attribute_targets(attrs, background_names=background_names))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    return x, torch.from_numpy(np.stack(targets))


def attribute_loss(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Multi-label loss: CE(count) + BCE(kinds, colours, pairs[, background names]) + MSE(background), each a
    per-item mean (background names only when the targets carry them)."""
    s = TARGET_SLICES
    loss = F.cross_entropy(pred[:, s["count"]], y[:, s["count"]].argmax(1))
    for key in ("kinds", "colours", "pairs") + (("background_names",) if y.shape[1] > NUM_TARGETS else ()):
        loss = loss + F.binary_cross_entropy_with_logits(pred[:, s[key]], y[:, s[key]])
    return loss + F.mse_loss(pred[:, s["background"]], y[:, s["background"]])


@torch.no_grad()
def attribute_accuracy(net: ShapesNet, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Accuracies on held-out data: count exact; kind/colour/pair sets exact and per flag; background RMSE (RGB units)."""
    net.eval()
    pred = torch.cat([net.heads(net(b)) for b in x.split(256)])
    s = TARGET_SLICES
    out = {"count_acc": (pred[:, s["count"]].argmax(1) == y[:, s["count"]].argmax(1)).float().mean().item()}
    for key in ("kinds", "colours", "pairs") + (("background_names",) if y.shape[1] > NUM_TARGETS else ()):
        exact = ((pred[:, s[key]] > 0).float() == y[:, s[key]]).all(dim=1)
        out[f"{key}_set_acc"] = exact.float().mean().item()
        out[f"{key}_flag_acc"] = ((pred[:, s[key]] > 0).float() == y[:, s[key]]).float().mean().item()
    err = (pred[:, s["background"]] - y[:, s["background"]]) * 0.2  # back to RGB units
    out["background_rmse"] = err.pow(2).mean().sqrt().item()
    # Chance levels: every flag at its training-set majority value, the background at its training mean.
    out["background_rmse_of_the_mean"] = ((y[:, s["background"]] - y[:, s["background"]].mean(0)) * 0.2).pow(2).mean().sqrt().item()
    return out


def main(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"train_shapes_net.py: --out {out} exists; remove it first or write to another file")
    if out.suffix != ".pt":
        raise SystemExit(f"train_shapes_net.py: --out must end in .pt, got {out}")
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    config = ShapesNetConfig(feature_dim=args.feature_dim, widths=tuple(args.widths),
                             background_names=NUM_BACKGROUND_NAMES if args.background_names else 0)
    start = time.perf_counter()
    names = bool(config.background_names)
    x_train, y_train = render_split("train", args.train_images, config.image_size, background_names=names)
    x_val, y_val = render_split("test", args.val_images, config.image_size, start=args.val_start,
                                background_names=names)
    print(f"[shapes_net] rendered {len(x_train)} train / {len(x_val)} val images in {time.perf_counter() - start:.1f} s")

    net = ShapesNet(config)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        net.train()
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))  # cosine decay to 0
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(x_train), (args.batch_size,), generator=gen)
        xb, yb = x_train[idx], y_train[idx]
        flips = torch.rand(2, args.batch_size, generator=gen) < 0.5
        xb = torch.where(flips[0, :, None, None, None], xb.flip(3), xb)
        xb = torch.where(flips[1, :, None, None, None], xb.flip(2), xb)
        loss = attribute_loss(net.heads(net(xb)), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"[shapes_net] step {step:5d}  loss {loss.item():.4f}  lr {lr:.2e}  "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
    wall = time.perf_counter() - start
    acc = attribute_accuracy(net, x_val, y_val)
    print("[shapes_net] held-out accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in acc.items()))
    meta = {"command": "python -m benchmarks.train_shapes_net " + shlex.join(args.argv),
            "args": {k: v for k, v in vars(args).items() if k != "argv"}, "config": config.to_dict(),
            "heldout_accuracy": acc, "wall_seconds": round(wall, 1), "environment": environment(),
            "data": {"train": f"ProceduralShapes(split='train', seed=0, image_size={config.image_size})[0:{args.train_images}]",
                     "val": f"ProceduralShapes(split='test', seed=0)[{args.val_start}:{args.val_start + args.val_images}]"}}
    save_shapes_net(out, net, meta)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"[shapes_net] wrote {out} and {out.with_suffix('.json')} ({wall:.0f} s)")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="checkpoint to write (.pt; never overwritten)")
    p.add_argument("--train-images", type=int, default=24000, help="train-split images rendered once [24000]")
    p.add_argument("--val-images", type=int, default=1024, help="held-out test-split images for the accuracies [1024]")
    p.add_argument("--val-start", type=int, default=50_000, help="first test index of those (far from FD's "
                                                                 "reference images) [50000]")
    p.add_argument("--steps", type=int, default=4000, help="Adam steps [4000]")
    p.add_argument("--batch-size", type=int, default=64, help="[64]")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate, cosine to 0 [2e-3]")
    p.add_argument("--feature-dim", type=int, default=64, help="feature dimension D [64]")
    p.add_argument("--widths", type=int, nargs=3, default=[16, 32, 48], help="conv widths [16 32 48]")
    p.add_argument("--background-names", action="store_true",
                   help="also train the background-name head (data/captions.py's names; metrics/attributes.py)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads [2]")
    p.add_argument("--seed", type=int, default=0, help="[0]")
    a = p.parse_args(argv)
    for name in ("train_images", "val_images", "steps", "batch_size", "feature_dim", "threads"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    a.argv = argv
    return a


if __name__ == "__main__":
    main(parse_args())
