"""Captioned shapes rendered once and cached on disk, for the text-to-image trainers (CLIP, VAE, U-Net).

Rendering a shapes image costs milliseconds (4x supersampling, data/procedural.py), so a trainer that draws
tens of thousands of batches renders its images once: ``rendered_split`` returns images start..start+count-1
of a split as uint8 (N, H, W, 3) with their CaptionAttributes, and keeps them in ``cache_dir`` under a name
that holds every parameter, so two trainers (or a resumed one) share the file. The cache is only a copy:
deleting it changes nothing but time.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from data.captions import CaptionAttributes, caption_attributes
from data.procedural import ProceduralShapes

CACHE_FORMAT = "diffprune-rendered-shapes-v1"


def _encode(attrs: list[CaptionAttributes]) -> tuple[np.ndarray, np.ndarray]:
    """CaptionAttributes -> fixed-size int arrays: shapes (N, 3, 2) padded with -1, background (N, 2) padded with -1."""
    shapes = np.full((len(attrs), 3, 2), -1, dtype=np.int8)
    background = np.full((len(attrs), 2), -1, dtype=np.int8)
    for i, a in enumerate(attrs):
        shapes[i, :a.count] = a.shapes
        background[i, :len(a.background)] = a.background
    return shapes, background


def _decode(shapes: np.ndarray, background: np.ndarray) -> list[CaptionAttributes]:
    return [CaptionAttributes(shapes=tuple((int(k), int(c)) for k, c in s if k >= 0),
                              background=tuple(int(b) for b in bg if b >= 0)) for s, bg in zip(shapes, background)]


def rendered_split(split: str, count: int, *, start: int = 0, image_size: int = 32, seed: int = 0,
                   cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, list[CaptionAttributes]]:
    """Images start..start+count-1 of (seed, split): (uint8 (count, S, S, 3), their CaptionAttributes)."""
    if cache_dir is None:
        return _render(split, count, start, image_size, seed)
    from common.runs import atomic_torch_save, build_lock

    path = Path(cache_dir) / f"shapes_{split}_seed{seed}_{image_size}px_{start}-{start + count}.pt"
    with build_lock(path):  # concurrent processes render it once: the others wait, then read the file
        if path.is_file():
            blob = torch.load(path, weights_only=True)
            if blob.get("format") != CACHE_FORMAT:
                raise ValueError(f"data/rendered.py: {path} is not a rendered-shapes cache; delete it")
            return blob["images"].numpy(), _decode(blob["shapes"].numpy(), blob["background"].numpy())
        images, attrs = _render(split, count, start, image_size, seed)
        shapes, background = _encode(attrs)
        atomic_torch_save({"format": CACHE_FORMAT, "images": torch.from_numpy(images),
                           "shapes": torch.from_numpy(shapes), "background": torch.from_numpy(background)}, path)
    return images, attrs


def _render(split: str, count: int, start: int, image_size: int, seed: int):
    ds = ProceduralShapes(image_size=image_size, size=start + count, seed=seed, split=split)
    images = np.empty((count, image_size, image_size, 3), dtype=np.uint8)
    attrs = []
    for j in range(count):
        images[j], a = ds.image_and_attributes(start + j)
        attrs.append(caption_attributes(a))
    return images, attrs


def to_minus_one_one(images_uint8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    x = torch.as_tensor(images_uint8)
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
