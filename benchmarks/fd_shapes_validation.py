"""Validate FD-shapes and KID-shapes the way Heusel et al. 2017 (Sec. 4 / Fig. 1 and their appendix) validated
FID: the distance between two sets of real images (the noise floor), and its rise under increasing disturbances.

    python -m benchmarks.fd_shapes_validation

The reference is metrics/fd_shapes.py's: ShapesNet features (checkpoints/shapes_net.pt) of the shapes test
split [0, 2048). The compared sets come from the test split after it, [2048, 2048 + --pool), so they are
disjoint from the reference:
- noise floor: FD-shapes and KID of disjoint real sets of each size in --sizes (as many as the pool holds, at
  most --max-sets), mean and spread;
- disturbances of one real set of --disturb-size images: additive Gaussian noise (std in [0, 1] pixel units),
  Gaussian blur (std in pixels) and a colour shift (+delta to red, -delta to blue); each disturbed image is
  clamped to [0, 1] and quantised to uint8, as a generated sample is when it is saved as a PNG.
Every FD-shapes series is checked for a monotone rise with the level. Writes
benchmarks/results/fd_shapes_validation.json and .md (with the command, the wall time and the versions).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from metrics.fd_shapes import (REFERENCE_IMAGES, FDShapesReference, fd_from_features, kid_from_features,
                               real_images, shapes_features)
from models.checkpoint import environment
from metrics.shapes_net import load_shapes_net

RESULTS = Path(__file__).resolve().parent / "results"
LEVELS = {
    "gaussian_noise_std": [0.0, 0.01, 0.02, 0.05, 0.1, 0.2],
    "gaussian_blur_sigma_px": [0.0, 0.5, 0.75, 1.0, 1.5, 2.0],
    "colour_shift_delta": [0.0, 0.02, 0.05, 0.1, 0.2, 0.3],
}


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) with std ``sigma`` pixels (radius 3 sigma, reflect padding)."""
    if sigma <= 0:
        return x
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-taps ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def disturb(x: torch.Tensor, kind: str, level: float, seed: int) -> torch.Tensor:
    """One disturbance of images (N, 3, H, W) in [0, 1], then clamped and quantised to uint8 levels."""
    if kind == "gaussian_noise_std":
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
        y = x + level * noise
    elif kind == "gaussian_blur_sigma_px":
        y = gaussian_blur(x, level)
    elif kind == "colour_shift_delta":
        y = x + torch.tensor([level, 0.0, -level], dtype=x.dtype).view(1, 3, 1, 1)
    else:
        raise ValueError(f"unknown disturbance {kind!r}")
    return torch.round(y.clamp(0, 1) * 255) / 255


def summary(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "values": [float(v) for v in values]}


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    net = load_shapes_net(args.checkpoint)
    ref = FDShapesReference.build(image_size=net.config.image_size, net=net)
    pool = real_images(args.pool, image_size=net.config.image_size, start=REFERENCE_IMAGES)
    pool_feats = shapes_features(pool, net)
    print(f"[fd_shapes] reference {ref.description}; pool [{REFERENCE_IMAGES}, {REFERENCE_IMAGES + args.pool}) "
          f"embedded in {time.perf_counter() - start:.0f} s")

    floor = {}
    for n in args.sizes:
        sets = min(args.max_sets, args.pool // n)
        if sets < 1:
            raise SystemExit(f"fd_shapes_validation.py: --pool {args.pool} holds no set of {n} images")
        fds, kids = [], []
        for k in range(sets):
            feats = pool_feats[k * n:(k + 1) * n]
            fds.append(fd_from_features(feats, ref.features))
            kids.append(kid_from_features(feats, ref.features)[0])
        floor[str(n)] = {"sets": sets, "fd_shapes": summary(fds), "kid_shapes": summary(kids)}
        print(f"[fd_shapes] floor N={n:5d} ({sets} disjoint sets): FD-shapes {np.mean(fds):.4f} "
              f"(sd {np.std(fds, ddof=1) if sets > 1 else float('nan'):.4f}), KID {np.mean(kids):.5f}")

    base = pool[:args.disturb_size]
    disturbances = {}
    for kind, levels in LEVELS.items():
        rows = []
        for i, level in enumerate(levels):
            feats = shapes_features(disturb(base, kind, level, seed=1000 + i), net)
            kid_mean, kid_std = kid_from_features(feats, ref.features)
            rows.append({"level": level, "fd_shapes": fd_from_features(feats, ref.features),
                         "kid_shapes": kid_mean, "kid_shapes_std": kid_std})
            print(f"[fd_shapes] {kind} {level:<5g}: FD-shapes {rows[-1]['fd_shapes']:.4f}  KID {kid_mean:.5f}")
        fd_series = [r["fd_shapes"] for r in rows]
        kid_series = [r["kid_shapes"] for r in rows]
        disturbances[kind] = {"rows": rows,
                              "fd_monotone": bool(all(b > a for a, b in zip(fd_series, fd_series[1:]))),
                              "kid_monotone": bool(all(b > a for a, b in zip(kid_series, kid_series[1:])))}
    wall = time.perf_counter() - start
    result = {"command": ("python -m benchmarks.fd_shapes_validation " + shlex.join(args.argv)).strip(),
              "args": {k: v for k, v in vars(args).items() if k != "argv"},
              "shapes_net_sha256": net.weights_sha256, "reference": ref.description,
              "pool": f"shapes test split (seed 0) [{REFERENCE_IMAGES}, {REFERENCE_IMAGES + args.pool})",
              "feature_dim": net.config.feature_dim, "noise_floor": floor, "disturbance_size": args.disturb_size,
              "disturbances": disturbances, "wall_seconds": round(wall, 1), "threads": args.threads,
              "environment": environment()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(f"[fd_shapes] wrote {out} and {out.with_suffix('.md')} ({wall:.0f} s)")
    return result


def markdown(r: dict) -> str:
    lines = ["# FD-shapes validation\n", f"`{r['command']}` ({r['wall_seconds']:.0f} s wall, {r['threads']} CPU "
             f"threads; torch {r['environment']['torch']}). ShapesNet sha256 `{r['shapes_net_sha256'][:16]}...`, "
             f"D = {r['feature_dim']}. Reference: {r['reference']}; compared sets: {r['pool']}.\n",
             "## Noise floor: disjoint real sets against the reference\n",
             "| N | sets | FD-shapes mean | FD-shapes sd | KID mean | KID sd |", "|---|---|---|---|---|---|"]
    for n, f in r["noise_floor"].items():
        sd = lambda s: f"{s:.4f}" if s is not None else "-"  # noqa: E731
        lines.append(f"| {n} | {f['sets']} | {f['fd_shapes']['mean']:.4f} | {sd(f['fd_shapes']['std'])} | "
                     f"{f['kid_shapes']['mean']:.5f} | {sd(f['kid_shapes']['std'])} |")
    lines += ["", f"## Disturbances of one real set of {r['disturbance_size']} images\n"]
    for kind, d in r["disturbances"].items():
        lines.append(f"**{kind}** (FD monotone: {d['fd_monotone']}, KID monotone: {d['kid_monotone']})\n")
        lines.append("| level | " + " | ".join(f"{row['level']:g}" for row in d["rows"]) + " |")
        lines.append("|---" * (len(d["rows"]) + 1) + "|")
        lines.append("| FD-shapes | " + " | ".join(f"{row['fd_shapes']:.3f}" for row in d["rows"]) + " |")
        lines.append("| KID | " + " | ".join(f"{row['kid_shapes']:.4f}" for row in d["rows"]) + " |\n")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None, help="ShapesNet checkpoint [checkpoints/shapes_net.pt]")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 1024], help="sample sizes N [64 128 256 1024]")
    p.add_argument("--pool", type=int, default=4096, help="real test images after the reference [4096]")
    p.add_argument("--max-sets", type=int, default=8, help="disjoint sets per size, at most [8]")
    p.add_argument("--disturb-size", type=int, default=1024, help="images of the disturbed set [1024]")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads [2]")
    p.add_argument("--out", default=str(RESULTS / "fd_shapes_validation.json"), help="result .json (and .md)")
    a = p.parse_args(argv)
    if min(a.sizes) < 2 or a.disturb_size < 2 or a.disturb_size > a.pool:
        p.error("--sizes and --disturb-size must be >= 2, and --disturb-size at most --pool")
    a.argv = argv
    return a


if __name__ == "__main__":
    main(parse_args())
