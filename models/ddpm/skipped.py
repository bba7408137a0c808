"""What stands in the U-Net where a layer-pruned network has removed a unit (``ModelConfig.removed``).

LAPTOP-Diff (Zhang et al. 2024, arXiv 2404.11098, Sec. 3) prunes whole layers of the U-Net. Every block
of the DDPM U-Net is residual, ``out = shortcut(x) + branch(x)``, so removing a layer means dropping its
branch and keeping its shortcut:

    ResBlock    branch = norm1, conv1, temb_proj, norm2, conv2   shortcut = x, or nin_shortcut(x) (1x1 conv)
    AttnBlock   branch = norm, q, k, v, proj_out (attention)      shortcut = x

A removed ResBlock becomes ``ResShortcut`` (its ``nin_shortcut`` keeps its name, so the state dict of the
smaller network is a subset of the dense one's), a removed attention block becomes ``RemovedAttn``. Decoder
ResBlocks read ``cat([h, skip])`` and always own a 1x1 shortcut, so they are removable too: the shortcut then
mixes h and the skip tensor. Whether a shortcut exists is decided in ``__init__`` from the dense topology,
as for the full blocks; ``forward`` never looks at channel counts.
"""
from __future__ import annotations

import torch
from torch import nn


class ResShortcut(nn.Module):
    """A ResBlock whose residual branch was removed: ``x`` or ``nin_shortcut(x)``; ``temb`` is unused."""

    def __init__(self, *, in_ch: int, out_ch: int, shortcut: bool):
        super().__init__()
        if not shortcut and in_ch != out_ch:
            raise ValueError(f"a removed block without a 1x1 shortcut passes its input on, so its widths must "
                             f"match: {in_ch} -> {out_ch}")
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if shortcut else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return x if self.nin_shortcut is None else self.nin_shortcut(x)


class RemovedAttn(nn.Module):
    """An attention block whose branch was removed: the identity (its residual add leaves x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
