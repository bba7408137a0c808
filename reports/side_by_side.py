"""A labelled side-by-side grid: one row per model, the same noise in every column.

    python -m benchmarks.side_by_side checkpoints/tiny_shapes.pt runs/prune/00001-x/pruned.pt \\
        --labels teacher pruned --num 8 --out side_by_side.png

Column j of every row is sample j of ``diffusion.samplers.sample`` with one seed: the same x_T (and step
noise) for every model, so the rows differ only by the network. The sampling protocol is evaluate.py's
(metrics/protocols.py; default ``embedded``), so the images are the ones evaluate.py draws for indices 0..n-1.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from common.images import make_grid
from common.runs import atomic_path
from diffusion.samplers import sample
from diffusion.schedule import Schedule
from metrics.protocols import Protocol, resolve


def sample_rows(models: Sequence[torch.nn.Module], *, num: int, protocol: Protocol, schedule: Schedule | None = None,
                progress: bool = True) -> list[torch.Tensor]:
    """``num`` samples per model (each (num, C, H, W) in [-1, 1]) from the same per-index noise."""
    schedule = schedule or Schedule()
    s = protocol.sampler
    rows = []
    for i, model in enumerate(models):
        c = model.config
        if progress:
            print(f"[side_by_side] sampling model {i + 1}/{len(models)}: {num} images, {protocol.describe()}")
        rows.append(sample(model.eval(), schedule, indices=range(num), seed=s.seed,
                           image_shape=(c.in_channels, c.image_size, c.image_size), sampler=s.sampler,
                           steps=s.steps if s.sampler == "ddim" else None, skip_type=s.skip_type, eta=s.eta,
                           clip_x0=s.clip_x0, progress=progress))
    return rows


def labelled_grid(rows: Sequence[torch.Tensor], labels: Sequence[str], *, scale: int = 3) -> Image.Image:
    """Rows of images with their label in a left margin; every row must hold images of one size."""
    if len(rows) != len(labels):
        raise ValueError(f"{len(rows)} rows but {len(labels)} labels")
    strips = [make_grid(r, nrow=len(r)) for r in rows]  # (H', W', C) uint8 each
    if len({s.shape for s in strips}) != 1:
        raise ValueError(f"rows have different image sizes {[s.shape for s in strips]}; compare models of one size")
    strip = np.concatenate(strips, axis=0)
    img = Image.fromarray(strip if strip.shape[2] == 3 else strip[..., 0]).convert("RGB")
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    margin = 8 + 7 * max(len(label) for label in labels)  # the default bitmap font is ~6-7 px per character
    out = Image.new("RGB", (img.width + margin, img.height), "white")
    out.paste(img, (margin, 0))
    draw, row_h = ImageDraw.Draw(out), img.height // len(rows)
    for i, label in enumerate(labels):
        draw.text((4, i * row_h + row_h // 2 - 5), label, fill="black")
    return out


def main(argv: list[str] | None = None) -> Path:
    import argparse

    from metrics.protocols import DEFAULT, PROTOCOLS
    from models.loading import load

    p = argparse.ArgumentParser(prog="python -m benchmarks.side_by_side", description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="checkpoints / folders / presets, one row each (the teacher first)")
    p.add_argument("--labels", nargs="+", default=None, help="one label per model (default: the file names)")
    p.add_argument("--num", type=int, default=8, help="samples per row [default: 8]")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default=DEFAULT, help=f"[default: {DEFAULT}]")
    p.add_argument("--seed", type=int, default=0, help="noise seed (evaluate.py's --seed) [default: 0]")
    p.add_argument("--out", default="side_by_side.png", help="PNG to write (refused if it exists)")
    a = p.parse_args(argv)
    labels = a.labels or [Path(m).stem if Path(m).exists() else m for m in a.models]
    if len(labels) != len(a.models):
        p.error(f"--labels gives {len(labels)} labels for {len(a.models)} models")
    out = Path(a.out)
    if out.exists():
        p.error(f"{out} exists; nothing is overwritten")
    models = [load(m) for m in a.models]
    grid = labelled_grid(sample_rows(models, num=a.num, protocol=resolve(a.protocol, seed=a.seed)), labels)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        grid.save(tmp, format="PNG")
    print(f"[side_by_side] {out}")
    return out
