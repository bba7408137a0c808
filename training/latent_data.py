"""The latent family's data: VAE posteriors of the training images, computed once and cached (training/latent.py).

The VAE is frozen, so q(z|x) = N(mu, sigma^2) of every training image is the same at every step: it is encoded
once and kept under the run's cache folder, keyed by the VAE's weights (``parts_checksum``), and each step draws
z = mu + sigma n itself. A VQ first stage has no posterior: its unquantised z_e with sigma 0 (``posterior``).
The shapes' train split is cached whole (``cached_posterior``); a captioned folder is cached when it fits
(``folder_posterior``), else encoded per step (``encode_posterior``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.cli import UserError
from data.rendered import rendered_split, to_minus_one_one

ENCODE_BATCH = 16  # images per VAE encode (memory only: SD's VAE at 512 px holds GBs of activations)


def posterior(vae: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, sigma) of q(z|x): a KL autoencoder's posterior, or a VQ encoder's z_e with sigma 0 (the LDM trains
    on the unquantised z_e of its VQ first stage; models/pipelines/vq_model.py)."""
    q = vae.encode(x)
    if isinstance(q, torch.Tensor):
        return q, torch.zeros_like(q)
    return q.mean, q.std


@torch.no_grad()
def cached_posterior(vae: nn.Module, *, count: int, seed: int, cache_dir: Path, key: str) -> tuple:
    """(mu, sigma) of q(z|x), each (count, C, h, w) float32, and the CaptionAttributes of train images 0..count-1."""
    from common.runs import atomic_torch_save, build_lock

    images, attrs = rendered_split("train", count, seed=seed, cache_dir=cache_dir)
    path = cache_dir / f"t2i_latents_{key}_train_{count}_seed{seed}.pt"
    with build_lock(path):  # concurrent processes (a study's shards) encode it once
        if path.is_file():
            blob = torch.load(path, weights_only=True)
            return blob["mean"], blob["std"], attrs
        means, stds = [], []
        for batch in np.array_split(images, max(1, count // 256)):
            mean, std = posterior(vae, to_minus_one_one(batch))
            means.append(mean)
            stds.append(std)
        mean, std = torch.cat(means), torch.cat(stds)
        atomic_torch_save({"mean": mean, "std": std}, path)
    return mean, std, attrs


def open_captioned_folder(root: str | None, pixels: int):
    """The CaptionedFolder (data/captioned_folder.py) of ``--data folder --data-root root`` at ``pixels``."""
    from data.captioned_folder import CaptionedFolder

    if not root:
        raise UserError("--data folder needs --data-root: the folder of captioned images")
    try:
        return CaptionedFolder(root, image_size=pixels)
    except (OSError, ValueError) as e:
        raise UserError(f"--data-root {root}: {e}") from None


@torch.no_grad()
def encode_posterior(vae: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, sigma) of q(z|x) for images (N, 3, H, W) in [-1, 1], each (N, C, h, w) float32 on the VAE's device."""
    p = next(vae.parameters())
    means, stds = [], []
    for batch in images.split(ENCODE_BATCH):
        mean, std = posterior(vae, batch.to(p.device, p.dtype))
        means.append(mean.float())
        stds.append(std.float())
    return torch.cat(means), torch.cat(stds)


def folder_posterior(vae: nn.Module, folder, *, cache_dir: Path, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, sigma) of every image of a CaptionedFolder, each (N, C, h, w) float32 on the CPU, cached under
    ``cache_dir`` by ``key``. Building it decodes every image: an unreadable one raises OSError naming it."""
    from common.runs import atomic_torch_save, build_lock

    path = cache_dir / f"t2i_folder_latents_{key}.pt"
    with build_lock(path):  # concurrent processes encode the folder once
        if path.is_file():
            blob = torch.load(path, weights_only=True)
            return blob["mean"], blob["std"]
        means, stds = [], []
        for start in range(0, len(folder), 256):
            mean, std = encode_posterior(vae, folder.load(range(start, min(start + 256, len(folder)))))
            means.append(mean.cpu())
            stds.append(std.cpu())
        mean, std = torch.cat(means), torch.cat(stds)
        atomic_torch_save({"mean": mean, "std": std}, path)
    return mean, std
