"""Layer-pruning units of the conditional latent U-Net (Stable Diffusion family, ``models/sd``).

LAPTOP-Diff (Zhang et al. 2024, arXiv 2404.11098, Sec. 3) prunes SD-v1.5's and SDXL's U-Nets by removing
residual branches, ``out = shortcut(x) + branch(x)`` with the shortcut kept (``models/sd/removed.py``):

    ResnetBlock2D           branch: norm1, conv1, time_emb_proj, norm2, conv2   shortcut: x or conv_shortcut(x)
    Transformer2DModel      branch: norm, proj_in, every block, proj_out         shortcut: x
    BasicTransformerBlock   branch: its three sub-layers (self-attn, cross-attn, GEGLU feed-forward)

``granularity`` says what an attention unit is: ``"transformer"`` (default) a whole Transformer2DModel, or
``"block"`` each BasicTransformerBlock inside one (SDXL stacks 2 and 10 per module at its two inner levels;
removing single transformer layers is the granularity of Segmind's SSD-1B / Vega, arXiv 2401.02677). The mid
block's two ResNets and its attention are units like the others; removing all three leaves the mid block the
identity, which is BK-SDM-Small's "no mid block" in parameters and in function (tests).

Every unit belongs to a *stage*: ``down_blocks.i``, ``mid_block`` or ``up_blocks.k``. Layer pruning keeps
at least one unit of every down and up stage: emptying one leaves a resolution level of bare resamplers and
skip concatenations, which no published SD compression does (BK-SDM-Tiny drops the innermost level as a
whole, a different architecture: ``pruning/layers/bksdm.py``). The mid block may go entirely.

The schedule of the SD family is the scaled-linear one (``latent_schedule``), so the calibration set
(x_t = sqrt(alpha_bar_t) z0 + sqrt(1 - alpha_bar_t) eps, with z0 the VAE latents) and the taylor pass read the
same alpha_bar_t the network was trained with.
"""
from __future__ import annotations

import os
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

from diffusion.guidance import check_condition_keys
from diffusion.schedule import Schedule, training_schedule
from diffusion.schedulers.base import SchedulerConfig
from metrics.macs import MacReport, count_macs
from models.sd.attention import BasicTransformerBlock
from models.sd.resnet import ResnetBlock2D
from models.sd.transformer import Transformer2DModel
from models.sd.unet import UNet2DConditionModel
from models.sd.wiring import topology

GRANULARITIES = ("transformer", "block")
# SD-v1/v2's training schedule (their scheduler_config.json): sqrt(beta) linear from 0.00085 to 0.012, T = 1000.
SD_SCHEDULER = SchedulerConfig(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
COUNTED = (nn.Conv2d, nn.Linear, nn.GroupNorm, nn.LayerNorm)  # modules whose MACs are the paper convention's


def is_sd(model: nn.Module) -> bool:
    """Whether ``model`` is the latent U-Net of the SD family (else the DDPM U-Net's code paths apply)."""
    return isinstance(model, UNet2DConditionModel)


def stage_of(path: str) -> str:
    """``down_blocks.1.resnets.0`` -> ``down_blocks.1``; ``mid_block.attentions.0`` -> ``mid_block``."""
    parts = path.split(".")
    return parts[0] if parts[0] == "mid_block" else ".".join(parts[:2])


def check_granularity(granularity: str) -> None:
    """A one-line error unless ``granularity`` is one of ``GRANULARITIES``."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")


def unit_paths(model: UNet2DConditionModel, granularity: str = "transformer") -> list[tuple[str, str]]:
    """(path, kind) of every unit ``model`` still has, in forward order; kinds: res, attn, block."""
    check_granularity(granularity)
    cfg = model.config
    removed = set(cfg.removed)
    out = []
    for kind, path, level in topology(cfg):
        if path in removed:
            continue
        if kind in ("res", "upres"):
            out.append((path, "res"))
        elif kind == "attn" and granularity == "transformer":
            out.append((path, "attn"))
        elif kind == "attn":
            blocks = [f"{path}.transformer_blocks.{b}" for b in range(cfg.transformer_layers_per_block[level])]
            out += [(b, "block") for b in blocks if b not in removed]
    return out


def all_unit_paths(model: UNet2DConditionModel) -> set[str]:
    """Every path a unit of either granularity may have in this topology (removed ones included)."""
    cfg = model.config
    paths = set()
    for kind, path, level in topology(cfg):
        if kind in ("res", "upres", "attn"):
            paths.add(path)
        if kind == "attn":
            paths |= {f"{path}.transformer_blocks.{b}" for b in range(cfg.transformer_layers_per_block[level])}
    return paths


def branch_parameters(block: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters of a unit's residual branch, by name relative to the unit (a ResNet's conv_shortcut
    stays: it is the shortcut)."""
    if isinstance(block, ResnetBlock2D):
        return {n: p for n, p in block.named_parameters() if not n.startswith("conv_shortcut.")}
    if isinstance(block, (Transformer2DModel, BasicTransformerBlock)):
        return dict(block.named_parameters())
    raise TypeError(f"{type(block).__name__} is not a removable unit (ResnetBlock2D, Transformer2DModel or "
                    "BasicTransformerBlock)")


def shortcut_output(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the unit returns with its branch removed (``models/sd/removed.py``)."""
    if isinstance(block, ResnetBlock2D):
        h = x if block.conv_shortcut is None else block.conv_shortcut(x)
        return h if block.output_scale_factor == 1.0 else h / block.output_scale_factor
    return x


def meta_macs(model: UNet2DConditionModel) -> MacReport:
    """``count_macs`` of a shape-only replica (same config: widths and removed units included) on the meta
    device: milliseconds even for SDXL, and the caller's weights are not touched."""
    with torch.device("meta"), torch.random.fork_rng(devices=[]):
        replica = UNet2DConditionModel(model.config)
    return count_macs(replica, replica.example_inputs())


def unit_costs(model: UNet2DConditionModel, paths: list[str], macs: MacReport) -> Iterator[tuple[int, int, int, bool]]:
    """(params, macs_paper, macs_full, shortcut) saved by removing each path, as ``units.Unit`` holds them."""
    for path in paths:
        block = model.get_submodule(path)
        keep = f"{path}.conv_shortcut"  # the shortcut survives removal, so its work is not saved
        inside = [k for k in macs.per_module if (k == path or k.startswith(path + ".")) and k != keep]
        full = sum(macs.per_module[k] for k in inside)
        # Functional products (q k^T, attn v) are booked on the Attention modules, which are no counted kind.
        paper = sum(macs.per_module[k] for k in inside if isinstance(model.get_submodule(k), COUNTED))
        shortcut = isinstance(block, ResnetBlock2D) and block.conv_shortcut is not None
        yield sum(p.numel() for p in branch_parameters(block).values()), paper, full, shortcut


def removed_config(model: UNet2DConditionModel, paths: list[str]):
    """The config with ``paths`` added to ``removed``; blocks inside a removed Transformer2D leave the list
    (the whole module is gone, models/sd/unet.py refuses both at once)."""
    removed = set(model.config.removed) | set(paths)
    removed = {p for p in removed if ".transformer_blocks." not in p or p.split(".transformer_blocks.")[0] not in removed}
    return model.config.with_removed(removed)


def rebuild(model: nn.Module, config, state: Mapping[str, torch.Tensor]) -> UNet2DConditionModel:
    """A new U-Net of ``config`` on ``model``'s device and dtype holding COPIES of ``state`` (its exact key
    set), in eval mode. Built on the meta device first: no default init of hundreds of millions of weights."""
    p = next(model.parameters())
    with torch.device("meta"):
        new = UNet2DConditionModel(config)
    new = new.to_empty(device=p.device).to(p.dtype)
    new.load_state_dict(state)  # strict: every key present, every shape equal
    return new.eval()


def remove_units(model: UNet2DConditionModel, paths: list[str]) -> UNet2DConditionModel:
    """A new U-Net equal to ``model`` with ``paths`` removed (``config.removed``); ``model`` is unchanged."""
    config = removed_config(model, paths)
    with torch.device("meta"):
        keys = UNet2DConditionModel(config).state_dict().keys()
    own = model.state_dict()
    return rebuild(model, config, {k: own[k] for k in keys})  # a subset of the same names and shapes


def latent_schedule(config: SchedulerConfig | None = None) -> Schedule:
    """The latent model's forward process (SD's scaled-linear one by default; diffusion/schedule.py)."""
    return training_schedule(config or SD_SCHEDULER, "mean")


def handcrafted_order(model: UNet2DConditionModel, units: list[str]) -> list[str]:
    """``units`` in the handcrafted rule's order (``criteria.py``), BK-SDM's removals first (Kim et al. 2023,
    arXiv 2305.15798, Sec. 3.1): the second (ResNet, attention) pair of every down block and the middle pair
    of every up block, innermost level first, decoder before encoder; then the mid block (attention, second
    ResNet, first); then every other unit, innermost level first, encoder before decoder. A Transformer2D
    stands for its BasicTransformerBlocks at block granularity."""
    cfg = model.config
    L = len(cfg.block_out_channels)
    pair = lambda stage, j: [f"{stage}.resnets.{j}", f"{stage}.attentions.{j}"]  # noqa: E731
    order: list[str] = []
    for level in range(L - 1, -1, -1):
        order += pair(f"up_blocks.{L - 1 - level}", 1)
    for level in range(L - 1, -1, -1):
        order += pair(f"down_blocks.{level}", 1)
    order += ["mid_block.attentions.0", "mid_block.resnets.1", "mid_block.resnets.0"]
    for level in range(L - 1, -1, -1):
        for stage, n in ((f"down_blocks.{level}", cfg.layers_per_block[level]),
                         (f"up_blocks.{L - 1 - level}", cfg.layers_per_block[level] + 1)):
            for j in range(n):
                order += pair(stage, j)
    out: list[str] = []
    for path in order:
        for u in units:
            if (u == path or u.startswith(path + ".transformer_blocks.")) and u not in out:
                out.append(u)
    return out + [u for u in units if u not in out]


# ---------------------------------------------------------------- the condition of a calibration set
def map_tensors(cond, fn):
    """``cond`` (a dict of tensors, possibly nested: SDXL's added_cond_kwargs) with ``fn`` applied to each."""
    if cond is None:
        return None
    return {k: map_tensors(v, fn) if isinstance(v, Mapping) else fn(v) for k, v in cond.items()}


def repeat_cond(cond, n: int):
    """Each tensor stacked n times along the batch: sample j * B + b is condition b (t-major replicas)."""
    return map_tensors(cond, lambda v: v.repeat(n, *([1] * (v.dim() - 1))))


def check_condition(model: UNet2DConditionModel, latents: torch.Tensor | None, cond) -> None:
    """Latents (N, in_channels, h, w), finite, and the forward keywords ``cond`` with N rows each: one-line
    errors naming the tensor, before any work."""
    cfg = model.config
    if latents is not None:
        if not isinstance(latents, torch.Tensor) or latents.dim() != 4 or latents.shape[1] != cfg.in_channels:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"latents must be a (N, {cfg.in_channels}, h, w) batch of clean latents, got {shape}")
        if latents.shape[0] == 0:
            raise ValueError("latents is empty: give at least one latent")
        device = next(model.parameters()).device
        if latents.device != device:
            raise ValueError(f"latents are on {latents.device} but the model on {device}; move one of them")
        if not bool(torch.isfinite(latents).all()):
            raise ValueError("latents hold non-finite values (nan or inf)")
    if cond is None:
        raise ValueError("an SD U-Net is scored on (latent, t, noise, condition): give cond={'encoder_hidden_states': "
                         "(N, M, D) prompt embeddings, ...}")
    check_condition_keys(cond)
    n = None if latents is None else latents.shape[0]
    for name, v in _flat(cond):
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"cond[{name!r}] must be a tensor, got {type(v).__name__}")
        if n is not None and (v.dim() == 0 or v.shape[0] != n):
            raise ValueError(f"cond[{name!r}] has shape {tuple(v.shape)}: it needs one row per latent ({n})")
    text = cond.get("encoder_hidden_states")
    if text is not None and (text.dim() != 3 or text.shape[-1] not in cfg.cross_attention_dim):
        raise ValueError(f"cond['encoder_hidden_states'] has shape {tuple(text.shape)}; this U-Net reads "
                         f"(N, M, {cfg.cross_attention_dim[0]}) prompt embeddings")


def prompt_conditions(pipe, prompts: str | os.PathLike | Sequence[str],
                      size: tuple[int, int] | None = None) -> dict:
    """The forward keywords ``cond`` of a calibration set from captions: a list, or a prompts file (one caption a
    line; an empty file is a one-line error). Encoded by the pipeline's text tower(s) as generation encodes
    them (``models/pipelines/text_to_image.py``; SDXL: both towers, pooled embedding and time ids at ``size``,
    default the U-Net's sample size in pixels). One row per caption, on the text encoder's device."""
    from metrics.t2i_evaluation import read_prompts  # the captions reader of evaluate.py --prompts
    from models.pipelines.text_to_image import text_conditioning

    if isinstance(prompts, (str, os.PathLike)):
        prompts = read_prompts(str(prompts))
    if not prompts:
        raise ValueError("no calibration captions: give at least one prompt")
    if not pipe.has_text:
        raise ValueError(f"the {pipe.kind} pipeline has no text encoder: its calibration condition is not a prompt")
    side = (pipe.unet.config.sample_size or 64) * pipe.vae_scale
    with torch.no_grad():
        return text_conditioning(pipe, list(prompts), size or (side, side)).kwargs()


def _flat(cond, prefix: str = ""):
    for k, v in cond.items():
        if isinstance(v, Mapping):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield prefix + k, v

