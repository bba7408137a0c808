"""What stands in the latent U-Net where a layer-pruned network removed a unit (``UNetConditionConfig.removed``).

LAPTOP-Diff (Zhang et al. 2024, arXiv 2404.11098, Sec. 3) prunes whole layers. Every unit of the U-Net is
residual, ``out = shortcut(x) + branch(x)``, so removing one drops its branch and keeps its shortcut:

    ResnetBlock2D          shortcut = x, or conv_shortcut(x) (1x1) where the dense block has one
    Transformer2DModel     shortcut = x (its GroupNorm, proj_in, blocks and proj_out all go)
    BasicTransformerBlock  shortcut = h (all three sub-layers go)

A removed ResNet keeps ``conv_shortcut`` under its own name, so the smaller network's state dict is a subset
of the dense one's. Decoder ResNets read cat([h, skip]) and always own a shortcut, so removing one keeps the
skip's information flowing. Whether a shortcut exists is decided in ``__init__`` from the dense topology.
"""
from __future__ import annotations

import torch
from torch import nn


class RemovedResnet(nn.Module):
    """A ResnetBlock2D without its residual branch: ``x`` or ``conv_shortcut(x)``, divided by the output scale."""

    def __init__(self, *, in_channels: int, out_channels: int, shortcut: bool, output_scale_factor: float):
        super().__init__()
        if not shortcut and in_channels != out_channels:
            raise ValueError(f"a removed ResNet without a 1x1 shortcut passes its input on, so its widths must "
                             f"match: {in_channels} -> {out_channels}")
        self.output_scale_factor = output_scale_factor
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if shortcut else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return h if self.output_scale_factor == 1.0 else h / self.output_scale_factor


class RemovedTransformer2D(nn.Module):
    """A Transformer2DModel without its branch: the identity on the feature map."""

    def forward(self, x: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        return x


class RemovedTransformerBlock(nn.Module):
    """A BasicTransformerBlock without its three branches: the identity on the tokens."""

    def forward(self, h: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        return h
