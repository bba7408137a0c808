"""The model families train.py trains, behind one small interface, so that the loop is written once.

    family = make_family(cfg, model, parts, cache_dir)
    x0, cond = family.batch(indices, shard, generator, device)    # this rank's share of the global batch
    loss = family.loss(forward, x0, t, eps, cond)                 # the eps-MSE of the family's forward process
    family.shape, family.schedule, family.heldout(n), family.grid(ema_model, steps, seed), family.release(...)

``ImageFamily``: the DDPM U-Net on an image dataset (pixel space, random flips, the DDIM codebase's objective).
``LatentFamily`` (training/latent.py): an SD-style conditional U-Net on VAE latents of captioned images (the
captioned shapes, or a captioned image folder: data/captioned_folder.py).
A family draws its per-step randomness (flips; caption variants, dropout, posterior noise) from the run's
generator AFTER the loop has drawn t and eps, for the global batch, so resume and data parallel stay exact.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from data import build_dataset, check_dataset
from diffusion.ddpm import HeldOutLoss, eps_loss
from diffusion.schedule import DiffusionConfig, Schedule
from models.ddpm.config import ModelConfig
from models.ddpm.unet import UNet
from models.sd.config import UNetConditionConfig
from models.sd.unet import UNet2DConditionModel


class ImageFamily:
    """The DDPM family: ``model(x_t, t)`` on images of ``cfg.data`` in [-1, 1]."""

    def __init__(self, model: UNet, *, data: str, data_root: str | None, loss_reduction: str | None,
                 random_flip: bool | None):
        c = model.config
        self.dataset = build_dataset(data, root=data_root, image_size=c.image_size, split="train")
        check_dataset(self.dataset)  # a truncated image fails now, naming the file, not at the step that draws it
        self.data, self.data_root = data, data_root
        self.schedule = Schedule(DiffusionConfig(loss_reduction=loss_reduction or "sum"))
        self.random_flip = True if random_flip is None else random_flip
        self.shape = (c.in_channels, c.image_size, c.image_size)

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, idx: list[int], shard: slice, g: torch.Generator, device: str) -> tuple[torch.Tensor, dict]:
        flip = torch.rand(len(idx), generator=g) < 0.5  # one flip mask for the global batch, sliced like it
        x0 = torch.stack([self.dataset[i] for i in idx[shard]])
        if self.random_flip:
            x0 = torch.where(flip[shard, None, None, None], x0.flip(-1), x0)
        return x0.to(device), {}

    def loss(self, forward, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, cond: dict) -> torch.Tensor:
        return eps_loss(forward, self.schedule, x0, t, eps)

    def heldout(self, images: int) -> HeldOutLoss | None:
        """The held-out eps-MSE measured at every checkpoint (datasets with a test split only)."""
        if images == 0 or self.data not in ("shapes", "cifar10"):
            return None
        test = build_dataset(self.data, root=self.data_root, image_size=self.shape[-1], split="test")
        n = min(images, len(test))
        return HeldOutLoss(torch.stack([test[i] for i in range(n)]), self.schedule, draws=4, seed=1234)

    def grid(self, ema_model: nn.Module, steps: int, seed: int) -> torch.Tensor:
        from training.recipe import sample_grid

        device = next(ema_model.parameters()).device
        return sample_grid(ema_model, self.schedule, 64, steps, seed, str(device))

    def release(self, run_dir: Path, ema_model: nn.Module) -> Path | None:
        return None  # model.pt is the whole release

    def record(self) -> dict[str, Any]:
        return {"family": "image", "data": self.data, "random_flip": self.random_flip,
                "diffusion": {k: getattr(self.schedule.config, k) for k in
                              ("num_timesteps", "schedule", "beta_start", "beta_end", "loss_reduction")}}


def is_latent_config(config: Any) -> bool:
    """Whether a checkpoint's ``model_config`` is a conditional latent U-Net's (models/sd: it has
    ``block_out_channels``) rather than a DDPM U-Net's (models/ddpm)."""
    return isinstance(config, dict) and "block_out_channels" in config


def config_from_dict(config: dict[str, Any]) -> UNetConditionConfig | ModelConfig:
    """The model config of either family from a checkpoint's ``model_config`` dict."""
    return UNetConditionConfig.from_dict(config) if is_latent_config(config) else ModelConfig.from_dict(config)


def model_from_config(config: dict[str, Any]) -> nn.Module:
    """A freshly built U-Net of either family from a checkpoint's ``model_config`` dict."""
    built = config_from_dict(config)
    return UNet2DConditionModel(built) if isinstance(built, UNetConditionConfig) else UNet(built)


def make_family(cfg, model: nn.Module, parts: dict | None, cache_dir: Path):
    """The family of ``model``: latent when ``parts`` (its frozen VAE / text encoder) are given."""
    if parts is None:
        return ImageFamily(model, data=cfg.data, data_root=cfg.data_root, loss_reduction=cfg.loss_reduction,
                           random_flip=cfg.random_flip)
    from training.latent import LatentFamily

    return LatentFamily(model, parts, caption_dropout=cfg.caption_dropout, loss_reduction=cfg.loss_reduction,
                        seed=cfg.seed, cache_dir=cache_dir, source=parts["source"], data=cfg.data,
                        data_root=cfg.data_root)
