"""Removable units of the U-Net for layer pruning (LAPTOP-Diff, Zhang et al. 2024, arXiv 2404.11098, Sec. 3).

A *unit* is one residual branch: a ResBlock's (norm1, conv1, temb_proj, norm2, conv2) or an attention
block's (norm, q, k, v, proj_out) in the DDPM U-Net (``models/ddpm``); a ResnetBlock2D, a Transformer2DModel
or one BasicTransformerBlock in the latent U-Net of the SD family (``models/sd``, units in
``pruning/layers/sd.py``). Removing unit i keeps its shortcut (``models/ddpm/skipped.py``,
``models/sd/removed.py``), so

    eps_theta^(-S)(x_t, t)     the network with every unit of S removed

is a network of the same topology with fewer parameters. Two ways to get it, which agree exactly:

``mask_units``    forward hooks that replace a unit's output by its shortcut *per sample*: replica r of a
                  batch can run with unit set S_r removed while the other replicas run with other sets, so
                  the scores of all units (or the losses of many subsets) come from batched forward passes
                  of ONE model (``pruning/layers/criteria.py``).
``remove_units``  a new, smaller ``UNet`` whose ``config.removed`` lists the units: the layer-pruned network
                  that is saved (config + widths + plain state dict) and rebuilt by ``models.load``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

import torch
from torch import nn

from metrics.macs import MacReport, count_macs
from models.ddpm.blocks import AttnBlock, ResBlock
from models.ddpm.unet import UNet, removable_units
from pruning.layers import sd

# The parameters of a ResBlock that belong to its branch; everything else of the block (nin_shortcut) stays.
RES_BRANCH = ("norm1", "conv1", "temb_proj", "norm2", "conv2")


@dataclass(frozen=True)
class Unit:
    """One removable residual branch and what removing it saves (batch-1 MACs, both conventions of
    ``metrics/macs.py``)."""

    path: str
    kind: str            # "res" | "attn" (| "block": one BasicTransformerBlock of an SD U-Net)
    params: int
    macs_paper: int
    macs_full: int
    shortcut: bool       # a ResBlock with a 1x1 nin_shortcut (kept when the branch is removed)
    stage: str | None = None  # SD: the down/up block it belongs to, one unit of which must stay (sd.py); DDPM: None

    def cost(self, what: str) -> int:
        """The saving that a target counts: "params" or "macs" (paper convention)."""
        return {"params": self.params, "macs": self.macs_paper}[what]


def _check_unet(model: nn.Module) -> None:
    if not isinstance(model, UNet) and not sd.is_sd(model):
        raise TypeError(f"layer pruning needs this project's UNet (models/ddpm/unet.py) or UNet2DConditionModel "
                        f"(models/sd/unet.py), got {type(model).__name__}")


def model_macs(model: nn.Module) -> MacReport:
    """``count_macs`` at the model's example inputs (an SD U-Net: on a meta-device replica, shapes only)."""
    return sd.meta_macs(model) if sd.is_sd(model) else count_macs(model, model.example_inputs())


def branch_parameters(block: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters of a block's residual branch, by name relative to the block."""
    if not isinstance(block, (ResBlock, AttnBlock)):
        return sd.branch_parameters(block)
    if isinstance(block, ResBlock):
        return {f"{m}.{n}": p for m in RES_BRANCH for n, p in getattr(block, m).named_parameters()}
    if isinstance(block, AttnBlock):
        return dict(block.named_parameters())
    raise TypeError(f"{type(block).__name__} is not a removable unit (ResBlock or AttnBlock)")


def find_units(model: UNet, granularity: str = "transformer") -> list[Unit]:
    """Every unit ``model`` still has (a layer-pruned model's removed units are not listed), in forward
    order, with its parameter and MAC savings measured on the model as it is (channel-pruned widths included).
    granularity: an SD U-Net's attention unit, a whole Transformer2D or each BasicTransformerBlock (sd.py);
    the DDPM U-Net has one kind of attention unit and takes "transformer" only."""
    _check_unet(model)
    sd.check_granularity(granularity)
    if sd.is_sd(model):
        pairs = sd.unit_paths(model, granularity)
        costs = sd.unit_costs(model, [p for p, _ in pairs], sd.meta_macs(model))
        return [Unit(path=p, kind=k, params=params, macs_paper=paper, macs_full=full, shortcut=shortcut,
                     stage=sd.stage_of(p)) for (p, k), (params, paper, full, shortcut) in zip(pairs, costs)]
    if granularity != "transformer":
        raise ValueError(f"granularity {granularity!r} applies to SD U-Nets (Transformer2D stacks); the DDPM U-Net's "
                         "attention blocks are single units")
    c = model.config
    macs = count_macs(model, model.example_inputs())
    units = []
    for path in removable_units(c):
        if path in c.removed:
            continue
        block = model.get_submodule(path)
        inside = [k for k in macs.per_module if k == path or k.startswith(path + ".")]
        keep = {f"{path}.nin_shortcut"}  # the shortcut survives removal, so its work is not saved
        full = sum(macs.per_module[k] for k in inside if k not in keep)
        matmul = 0
        if isinstance(block, AttnBlock):  # functional products (q^T k, w v) are booked on the block itself
            matmul = macs.per_module.get(path, 0)
        shortcut = isinstance(block, ResBlock) and block.nin_shortcut is not None
        units.append(Unit(path=path, kind="attn" if isinstance(block, AttnBlock) else "res",
                          params=sum(p.numel() for p in branch_parameters(block).values()),
                          macs_paper=full - matmul, macs_full=full, shortcut=shortcut))
    return units


def check_unit_paths(model: UNet, paths: Iterable[str]) -> list[str]:
    """``paths`` as a list, after checking each is a unit ``model`` still has; the error names the bad one."""
    _check_unet(model)
    paths = list(paths)
    units = sorted(sd.all_unit_paths(model)) if sd.is_sd(model) else removable_units(model.config)
    for p in paths:
        if p in model.config.removed or p.split(".transformer_blocks.")[0] in model.config.removed:
            raise ValueError(f"unit {p!r} is already removed from this model")
        if p not in units:
            raise ValueError(f"{p!r} is not a removable unit of this U-Net; its units are e.g. {units[:6]}")
    if len(set(paths)) != len(paths):
        raise ValueError(f"units listed twice: {sorted({p for p in paths if paths.count(p) > 1})}")
    return paths


def shortcut_output(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the block returns with its branch removed (``models/ddpm/skipped.py``): x, or nin_shortcut(x)."""
    if not isinstance(block, (ResBlock, AttnBlock)):
        return sd.shortcut_output(block, x)
    if isinstance(block, ResBlock) and block.nin_shortcut is not None:
        return block.nin_shortcut(x)
    return x


@contextlib.contextmanager
def mask_units(model: UNet, masks: Mapping[str, torch.Tensor]) -> Iterator[UNet]:
    """Within the context, unit ``path`` is removed for the samples where ``masks[path]`` (a (B,) bool
    tensor) is True: its output is replaced by its shortcut output. The hooks go when the context ends."""
    check_unit_paths(model, masks)
    handles = []

    def hook_for(mask: torch.Tensor):
        def hook(block: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            if mask.shape != (out.shape[0],):
                raise ValueError(f"mask of shape {tuple(mask.shape)} for a batch of {out.shape[0]}")
            m = mask.to(out.device).view(-1, *([1] * (out.dim() - 1)))  # (B, C, H, W) maps, (B, N, D) tokens
            return torch.where(m, shortcut_output(block, args[0]), out)
        return hook

    try:
        for path, mask in masks.items():
            handles.append(model.get_submodule(path).register_forward_hook(hook_for(mask.bool())))
        yield model
    finally:
        for h in handles:
            h.remove()


def remove_units(model: UNet, paths: Iterable[str]) -> UNet:
    """A new UNet equal to ``model`` with the units ``paths`` removed (added to ``config.removed``), on the
    same device, in eval mode. ``model`` itself is left as it was. Widths of the removed branches leave the
    width table; everything else (channel-pruned widths included) is kept."""
    paths = check_unit_paths(model, paths)
    if sd.is_sd(model):
        return sd.remove_units(model, paths)
    config = model.config.with_removed(set(model.config.removed) | set(paths))
    with torch.random.fork_rng(devices=[]):  # construction draws a default init we overwrite: keep the caller's RNG
        new = UNet(config)
    readback = new.widths()
    config = config.with_widths({k: v for k, v in model.config.width_table.items() if k in readback})
    with torch.random.fork_rng(devices=[]):
        new = UNet(config)
    own = model.state_dict()
    new.load_state_dict({k: own[k] for k in new.state_dict()})  # a subset of the same names and shapes
    device = next(model.parameters()).device
    return new.to(device).eval()
