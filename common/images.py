"""Image grids and PNG writing for samples in [-1, 1]."""
from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image

from common.runs import atomic_path


def to_uint8_hwc(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C): clamp, (x + 1) / 2 * 255, round."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def make_grid(x: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile N images (N, C, H, W) in [-1, 1] into one uint8 (H', W', C) array, ``nrow`` per row."""
    imgs = to_uint8_hwc(x)
    n, h, w, c = imgs.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / nrow))
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(imgs):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = img
    return grid


def save_grid(x: torch.Tensor, path: str | os.PathLike, nrow: int | None = None, scale: int = 1) -> None:
    """Save a sample grid as PNG; ``scale`` enlarges small images with nearest-neighbour for viewing."""
    grid = make_grid(x, nrow)
    img = Image.fromarray(grid if grid.shape[2] == 3 else grid[..., 0])
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:  # a killed writer leaves the old file or none, never a 0-byte PNG
        img.save(tmp, format="PNG")
