"""Export the DDPM U-Net as a folder: ``config.json`` + ``diffusion_pytorch_model.safetensors`` in diffusers' names.

    save_folder(model, "out/unet")       # any model, dense or pruned; models.load("out/unet") reads it back
    diffusers_config(model.config)       # the UNet2DModel config.json dict, or NotExpressible saying why

config.json always holds this project's full ``ModelConfig`` (with the width table and the removed units)
under ``_diffprune_config``; models.load reads that key first. Where the network is one that diffusers'
UNet2DModel can describe (a dense U-Net: widths follow from ``block_out_channels``, one ``layers_per_block``
for every level, one head width), the other keys are UNet2DModel's config and ``UNet2DModel.from_pretrained``
loads the same folder (diffusers ignores keys that start with "_"; checked with diffusers 0.42.1 by
benchmarks/check_diffusers_export.py). A channel-pruned U-Net has per-layer widths (conv1 of one ResBlock
narrower than conv2, q/k narrower than v, ...) and a layer-pruned one has levels with different block counts
and identity blocks; UNet2DModel's config has no field for either. Such a folder names the class ``DiffpruneUNet2DModel`` and
says why under ``_diffprune_note``; diffusers (0.42.1) then builds its default UNet2DModel and refuses the
weights at the first shape mismatch (checked by the same benchmark).

Tensor names: the inverse of models/ddpm/convert.py's table (attention 1x1 convs become Linear weights).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from models.ddpm.config import ModelConfig
from models.ddpm.convert import _ATTN, _RESNET, _TOP, attention_levels
from models.ddpm.unet import dense_widths

DIFFPRUNE_CONFIG = "_diffprune_config"
PRUNED_CLASS = "DiffpruneUNet2DModel"
WEIGHTS = "diffusion_pytorch_model.safetensors"


class NotExpressible(ValueError):
    """The network has structure that diffusers' UNet2DModel config cannot state."""


def diffusers_config(config: ModelConfig) -> dict[str, Any]:
    """UNet2DModel config.json keys for ``config``; NotExpressible listing every reason where there is none."""
    reasons = []
    pruned = {k: v for k, v in config.width_table.items() if dense_widths(config)[k] != v}
    if pruned:
        reasons.append(f"{len(pruned)} layer width(s) differ from the dense ones (e.g. {next(iter(pruned))}); "
                       "UNet2DModel derives every width from block_out_channels")
    if config.removed:
        reasons.append(f"{len(config.removed)} block(s) removed (e.g. {config.removed[0]}); UNet2DModel has one "
                       "layers_per_block for every level and no identity blocks")
    if not config.resamp_with_conv:
        reasons.append("resamp_with_conv=False (average-pool / no-conv resampling); UNet2DModel's are convs")
    levels = attention_levels(config)
    widths = [config.ch * m for m in config.ch_mult]
    attn_widths = sorted({widths[i] for i in levels} | {widths[-1]})
    if config.head_channels:
        head_dim = config.head_channels
    elif config.num_heads == 1 and len(attn_widths) == 1:
        head_dim = attn_widths[0]
    elif config.num_heads == 1:
        head_dim = None  # diffusers: one head as wide as each block
    elif len({w // config.num_heads for w in attn_widths}) == 1:
        head_dim = attn_widths[0] // config.num_heads
    else:
        head_dim = None
        reasons.append(f"num_heads={config.num_heads} at attention widths {attn_widths}: UNet2DModel fixes the head "
                       "width (attention_head_dim), not the head count")
    if reasons:
        raise NotExpressible("not expressible as a diffusers UNet2DModel: " + "; ".join(reasons))
    L = len(widths)
    return {
        "_class_name": "UNet2DModel", "sample_size": config.image_size, "in_channels": config.in_channels,
        "out_channels": config.out_channels, "center_input_sample": False, "time_embedding_type": "positional",
        "flip_sin_to_cos": config.flip_sin_to_cos, "freq_shift": config.freq_shift,
        "down_block_types": ["AttnDownBlock2D" if i in levels else "DownBlock2D" for i in range(L)],
        "up_block_types": ["AttnUpBlock2D" if i in levels else "UpBlock2D" for i in reversed(range(L))],
        "mid_block_type": "UNetMidBlock2D", "block_out_channels": widths, "layers_per_block": config.num_res_blocks,
        "mid_block_scale_factor": 1, "downsample_padding": config.downsample_padding, "downsample_type": "conv",
        "upsample_type": "conv", "dropout": config.dropout, "act_fn": "silu", "attention_head_dim": head_dim,
        "norm_num_groups": config.norm_groups, "norm_eps": config.norm_eps, "resnet_time_scale_shift": "default",
        "add_attention": True,
    }


_INV_RESNET = {v: k for k, v in _RESNET.items()}
_INV_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_INV_TOP = {v: k for k, v in _TOP.items()}


def _diffusers_module(module: str, num_levels: int) -> str:
    """diffusers name of one DDIM module path (the inverse of convert._rename_module)."""
    if module in _INV_TOP:
        return _INV_TOP[module]
    p = module.split(".")
    if p[0] == "mid":
        if p[1] == "attn_1":
            return f"mid_block.attentions.0.{_INV_ATTN[p[2]]}"
        return f"mid_block.resnets.{int(p[1][-1]) - 1}.{_INV_RESNET[p[2]]}"
    side, level = p[0], int(p[1])
    index = level if side == "down" else num_levels - 1 - level  # up.{l} is up_blocks.{L-1-l}
    if p[2] == "block":
        return f"{side}_blocks.{index}.resnets.{p[3]}.{_INV_RESNET[p[4]]}"
    if p[2] == "attn":
        return f"{side}_blocks.{index}.attentions.{p[3]}.{_INV_ATTN[p[4]]}"
    return f"{side}_blocks.{index}.{p[2]}rs.0.conv"  # downsample -> downsamplers, upsample -> upsamplers


def ddim_to_diffusers(state_dict: Mapping[str, torch.Tensor], num_levels: int) -> dict[str, torch.Tensor]:
    """Rename a DDIM-named state dict to UNet2DModel's names; attention 1x1 conv weights become Linear (o, i)."""
    out = {}
    for key, tensor in state_dict.items():
        module, _, param = key.rpartition(".")
        name = _diffusers_module(module, num_levels)
        if name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v", "0") and param == "weight" and tensor.dim() == 4:
            tensor = tensor[:, :, 0, 0]
        out[f"{name}.{param}"] = tensor.detach().contiguous()
    return out


def save_folder(model: nn.Module, folder: str | os.PathLike) -> Path:
    """Write ``model`` (a models.ddpm UNet, dense or pruned) as config.json + diffusion_pytorch_model.safetensors.

    Refuses an existing ``folder`` (nothing saved is overwritten); written under a temporary name and renamed,
    so a failure leaves no half folder. Returns the folder.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} exists; choose a new folder (nothing is overwritten)")
    config: ModelConfig = model.config
    try:
        cfg = diffusers_config(config)
    except NotExpressible as e:
        cfg = {"_class_name": PRUNED_CLASS, "_diffprune_note": str(e)}
    cfg[DIFFPRUNE_CONFIG] = config.to_dict()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_file(ddim_to_diffusers(model.state_dict(), len(config.ch_mult)), str(tmp / WEIGHTS))
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
