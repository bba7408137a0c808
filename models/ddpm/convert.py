"""Foreign DDPM U-Net checkpoints -> diffprune's tensor names (which are the DDIM codebase's) and a ModelConfig.

Two foreign layouts hold the U-Net of Ho et al. 2020:

* The DDIM codebase (ermongroup/ddim; the Diff-Pruning code reuses it). Its tensor names ARE ours, so
  only the container needs unpacking: a plain state dict (keys prefixed ``module.`` when it was saved
  from ``nn.DataParallel``) or the training list ``[model_sd, optimizer_sd, epoch, step, ema_sd]``.
  It stores no architecture, so ``infer_ddim_config`` reads it back from tensor names and shapes.
* diffusers' ``UNet2DModel`` (google/ddpm-cifar10-32 and its siblings): ``config.json`` plus weights
  under other names. ``config_from_diffusers`` maps the config, ``diffusers_to_ddim`` the names:

      diffusers (L levels)                      DDIM / diffprune
      time_embedding.linear_{1,2}               temb.dense.{0,1}
      conv_norm_out                             norm_out
      down_blocks.i.resnets.j                   down.i.block.j
      up_blocks.k.resnets.j                     up.{L-1-k}.block.j     (decoder numbered the other way)
        time_emb_proj / conv_shortcut             temb_proj / nin_shortcut
      {down,up}_blocks.i.attentions.j           down.i.attn.j / up.{L-1-i}.attn.j
        group_norm                                norm
        to_q|query, to_k|key, to_v|value          q, k, v      Linear (o, i) -> 1x1 conv (o, i, 1, 1)
        to_out.0|proj_attn                        proj_out     (query/.../proj_attn: older diffusers files)
      down_blocks.i.downsamplers.0.conv         down.i.downsample.conv
      up_blocks.k.upsamplers.0.conv             up.{L-1-k}.upsample.conv
      mid_block.resnets.{0,1} / .attentions.0   mid.block_{1,2} / mid.attn_1

Both layouts describe the same function once renamed (tests/test_loading.py checks this against the
golden eps of tests/data/golden/unet_tiny.pt). Exporting needs no converter: ``model.state_dict()`` is
already a DDIM-codebase state dict.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import torch

from models.ddpm.config import ModelConfig, preset

# The DDPM's GroupNorm: 32 groups, eps 1e-6 (DDIM codebase models/diffusion.py). Neither is stored in a
# DDIM-codebase checkpoint, so these are assumptions that a preset or an argument can override.
DDPM_NORM_GROUPS = 32
DDPM_NORM_EPS = 1e-6
# Every published DDPM puts its first attention layer at 16x16 pixels (CIFAR-10 32px at level 1,
# CelebA 64px at level 2, LSUN 256px at level 4); we use this to guess the image size of a bare state dict.
DDPM_FIRST_ATTN_RESOLUTION = 16


# ----------------------------------------------------------------------------------------------- DDIM containers
def is_tensor_dict(obj: Any) -> bool:
    """True for a non-empty mapping of str -> tensor (a state dict)."""
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Drop ``prefix`` when EVERY key has it (nn.DataParallel's ``module.``); otherwise return the dict as is,
    so that a partial prefix shows up as unexpected tensors in the fit check instead of being half-fixed."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def unpack_ddim_checkpoint(obj: Any, *, source: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """(raw weights, EMA weights or None) of a DDIM-codebase checkpoint object, prefixes stripped.

    Accepts a plain state dict (one set of weights: returned as raw, EMA None) or the DDIM training list
    ``[model_sd, optimizer_sd, epoch, step]`` with ``ema_sd`` appended when EMA was on (models/ema.py there).
    """
    if is_tensor_dict(obj):
        return strip_prefix(obj), None
    if isinstance(obj, (list, tuple)) and obj and is_tensor_dict(obj[0]):
        # The DDIM runner appends the EMA helper's state as the 5th element only when config.model.ema is on.
        ema = strip_prefix(obj[4]) if len(obj) >= 5 and is_tensor_dict(obj[4]) else None
        return strip_prefix(obj[0]), ema
    if isinstance(obj, Mapping):
        keys = sorted(map(str, obj))
        shown = ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else "")
        what = f"a dict whose entries are not all tensors (keys: {shown})"
    else:
        what = f"a {type(obj).__name__}"
    raise ValueError(f"{source}: not a recognised checkpoint: it holds {what}; expected a diffprune checkpoint, "
                     "a plain state dict, or the DDIM-codebase list [model, optimizer, epoch, step, ema]")


# ----------------------------------------------------------------------------------------------- diffusers names
def is_diffusers_naming(state_dict: Mapping[str, Any]) -> bool:
    """True when the tensors carry diffusers' UNet2DModel names (``down_blocks.*``, ``time_embedding.*``)."""
    return any(k.startswith(("down_blocks.", "up_blocks.", "mid_block.", "time_embedding.")) for k in state_dict)


_RESNET = {"norm1": "norm1", "conv1": "conv1", "time_emb_proj": "temb_proj", "norm2": "norm2", "conv2": "conv2",
           "conv_shortcut": "nin_shortcut"}
# Current diffusers names first, then the names of older checkpoint files (query/key/value/proj_attn).
_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
         "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}
_TOP = {"time_embedding.linear_1": "temb.dense.0", "time_embedding.linear_2": "temb.dense.1",
        "conv_in": "conv_in", "conv_norm_out": "norm_out", "conv_out": "conv_out"}


def _rename_module(module: str, num_levels: int) -> str | None:
    """DDIM name of one diffusers module path, or None when the path is not part of the DDPM U-Net."""
    if module in _TOP:
        return _TOP[module]
    m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", module)
    if m:
        side, i, kind, j, part = m.groups()
        level = int(i) if side == "down" else num_levels - 1 - int(i)  # up_blocks.k is up.{L-1-k}
        table, container = (_RESNET, "block") if kind == "resnets" else (_ATTN, "attn")
        return f"{side}.{level}.{container}.{j}.{table[part]}" if part in table else None
    m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", module)
    if m:
        return f"down.{m.group(1)}.downsample.conv"
    m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv", module)
    if m:
        return f"up.{num_levels - 1 - int(m.group(1))}.upsample.conv"
    m = re.fullmatch(r"mid_block\.resnets\.([01])\.(.+)", module)
    if m and m.group(2) in _RESNET:
        return f"mid.block_{int(m.group(1)) + 1}.{_RESNET[m.group(2)]}"
    m = re.fullmatch(r"mid_block\.attentions\.0\.(.+)", module)
    if m and m.group(1) in _ATTN:
        return f"mid.attn_1.{_ATTN[m.group(1)]}"
    return None


def diffusers_to_ddim(state_dict: Mapping[str, torch.Tensor], *, source: str,
                      num_levels: int | None = None) -> dict[str, torch.Tensor]:
    """Rename a UNet2DModel state dict (current or legacy attention names) to DDIM names.

    num_levels: len(block_out_channels); counted from the ``down_blocks.{i}`` keys when not given (it is
    needed because the decoder is numbered in the opposite direction). Attention Linear weights (o, i)
    become 1x1 conv weights (o, i, 1, 1). Any tensor that has no DDIM counterpart is an error naming it.
    """
    if num_levels is None:
        num_levels = 1 + max((int(k.split(".")[1]) for k in state_dict if k.startswith("down_blocks.")), default=-1)
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state_dict.items():
        module, _, param = key.rpartition(".")
        new = _rename_module(module, num_levels)
        if new is None or param not in ("weight", "bias"):
            unknown.append(key)
            continue
        if new.endswith((".q", ".k", ".v", ".proj_out")) and param == "weight" and tensor.dim() == 2:
            tensor = tensor[:, :, None, None]  # Linear over channels == 1x1 conv
        if new + "." + param in out:
            raise ValueError(f"{source}: tensors {key!r} and another one both map to {new}.{param} "
                             "(a file with both current and legacy attention names?)")
        out[new + "." + param] = tensor
    if unknown:
        shown = ", ".join(sorted(unknown)[:10]) + (f" ... and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        raise ValueError(f"{source}: {len(unknown)} tensor(s) have no counterpart in the DDPM U-Net: {shown}")
    return out


# ----------------------------------------------------------------------------------------------- architecture
def attention_levels(config: ModelConfig) -> tuple[int, ...]:
    """Indices i of the resolution levels that hold attention (resolution of level i = image_size / 2**i)."""
    return tuple(i for i in range(len(config.ch_mult)) if config.image_size // 2 ** i in config.attn_resolutions)


def with_image_size(config: ModelConfig, image_size: int) -> ModelConfig:
    """The same network (same attention LEVELS, hence the same weights) described for another image size."""
    levels = attention_levels(config)
    return dataclasses.replace(config, image_size=image_size,
                               attn_resolutions=tuple(image_size // 2 ** i for i in levels))


def topology_mismatches(config: ModelConfig, reference: ModelConfig) -> list[str]:
    """The architecture fields on which two configs disagree, as 'field: a vs b' strings.

    Compared: what the weights fix (channels, ch, ch_mult, num_res_blocks, attention levels, resampling
    convs) and num_heads. Not compared: image_size, norm_groups, norm_eps, dropout and the width table.
    """
    fields = {
        "in_channels": lambda c: c.in_channels, "out_channels": lambda c: c.out_channels, "ch": lambda c: c.ch,
        "ch_mult": lambda c: c.ch_mult, "num_res_blocks": lambda c: c.num_res_blocks,
        "attention levels": attention_levels, "resamp_with_conv": lambda c: c.resamp_with_conv,
        "num_heads": lambda c: c.num_heads,
    }
    return [f"{name}: {get(config)} vs {get(reference)}" for name, get in fields.items() if get(config) != get(reference)]


def infer_ddim_config(state_dict: Mapping[str, torch.Tensor], *, source: str, preset_name: str | None = None,
                      image_size: int | None = None, norm_groups: int | None = None,
                      dropout: float | None = None) -> tuple[ModelConfig, list[str]]:
    """Read the architecture of a DDIM-named state dict. Returns (config, notes on every assumption).

    From the weights:  ch = conv_in out channels; in/out_channels from conv_in / conv_out;
                       levels L from ``down.{i}``; num_res_blocks from ``down.0.block.{j}``;
                       ch_mult[i] = (down.{i}.block.0.conv1 out channels) / ch (must divide exactly);
                       attention levels = the i with ``down.{i}.attn.0``; resamp_with_conv from
                       ``down.0.downsample.conv``; num_heads = 1 (the DDIM code is single-head).
    Not in the weights (argument > ``preset_name`` > default):
        image_size   default 16 * 2**(first attention level), i.e. the first attention sits at 16x16 px
                     as in every published DDPM; an error when the network has no attention.
        norm_groups  default 32 (the DDPM's); norm_eps is always 1e-6 (the DDPM's).
        dropout      default 0.0 (it changes no weight, only training).
    attn_resolutions = image_size / 2**i for each attention level i. With ``preset_name``, the inferred
    architecture must equal the preset's (see ``topology_mismatches``) or this raises, naming the fields.
    """
    def shape(key: str) -> tuple[int, ...]:
        if key not in state_dict:
            raise ValueError(f"{source}: cannot infer the U-Net architecture: tensor {key!r} is missing "
                             "(is this a DDPM U-Net state dict?)")
        return tuple(state_dict[key].shape)

    ch, in_channels = shape("conv_in.weight")[:2]
    if shape("down.0.block.0.conv1.weight")[1] != ch:  # the first block reads conv_in's output: not a pruned width
        raise ValueError(f"{source}: shape mismatch: conv_in.weight {shape('conv_in.weight')} vs "
                         f"down.0.block.0.conv1.weight {shape('down.0.block.0.conv1.weight')}, which reads its output")
    out_channels = shape("conv_out.weight")[0]
    levels = sorted({int(k.split(".")[1]) for k in state_dict if re.match(r"down\.\d+\.", k)})
    if not levels or levels != list(range(len(levels))):
        raise ValueError(f"{source}: cannot infer the U-Net architecture: encoder levels down.{{i}} are {levels}, "
                         "expected 0, 1, ..., L-1")
    num_levels = len(levels)
    num_res_blocks = len({k.split(".")[3] for k in state_dict if k.startswith("down.0.block.")})
    ch_mult = []
    for i in range(num_levels):
        width = shape(f"down.{i}.block.0.conv1.weight")[0]
        if width % ch:
            raise ValueError(f"{source}: down.{i}.block.0.conv1 has {width} output channels, not a multiple of "
                             f"ch={ch} (conv_in's width), so no ch_mult describes it; a pruned network needs "
                             "its width table: save it as a diffprune checkpoint")
        ch_mult.append(width // ch)
    attn = [i for i in range(num_levels) if f"down.{i}.attn.0.q.weight" in state_dict]
    # With one level there is no resampling at all and the flag is irrelevant; keep the DDPM's True.
    resamp_with_conv = num_levels == 1 or "down.0.downsample.conv.weight" in state_dict

    ref = preset(preset_name) if preset_name is not None else None
    notes: list[str] = []

    def resolve(name: str, given: Any, default: Any, why: str) -> Any:
        if given is not None:
            notes.append(f"{name}={given} from the caller")
            return given
        if ref is not None:
            notes.append(f"{name}={getattr(ref, name)} from preset {preset_name!r}")
            return getattr(ref, name)
        notes.append(f"{name}={default}: {why}")
        return default

    if image_size is None and ref is None and not attn:
        raise ValueError(f"{source}: this U-Net has no attention layer, so its image size cannot be guessed "
                         "from the weights; pass image_size= or name a preset")
    guess = DDPM_FIRST_ATTN_RESOLUTION * 2 ** attn[0] if attn else None
    image_size = resolve("image_size", image_size, guess,
                         f"not stored; guessed so that the first attention level ({attn[0] if attn else None}) "
                         f"sits at {DDPM_FIRST_ATTN_RESOLUTION}x{DDPM_FIRST_ATTN_RESOLUTION} px as in the DDPM")
    norm_groups = resolve("norm_groups", norm_groups, DDPM_NORM_GROUPS,
                          "not stored, the DDPM's GroupNorm(32) assumed; pass --norm-groups (norm_groups=) "
                          "if the model used another count")
    dropout = resolve("dropout", dropout, 0.0, "not stored; it changes no weight")
    notes.append("num_heads=1: the DDIM codebase's attention is single-head")
    try:
        config = ModelConfig(image_size=image_size, in_channels=in_channels, out_channels=out_channels, ch=ch,
                             ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks,
                             attn_resolutions=tuple(image_size // 2 ** i for i in attn), dropout=dropout,
                             num_heads=1, norm_groups=norm_groups, norm_eps=DDPM_NORM_EPS,
                             resamp_with_conv=resamp_with_conv)
    except ValueError as e:
        raise ValueError(f"{source}: the inferred architecture is invalid: {e}") from e
    if ref is not None:
        problems = topology_mismatches(config, ref)
        if problems:
            raise ValueError(f"{source}: the checkpoint does not match preset {preset_name!r} "
                             f"(checkpoint vs preset): " + "; ".join(problems))
    return config, notes


# ----------------------------------------------------------------------------------------------- diffusers config
# UNet2DModel's constructor defaults: a key missing from config.json takes these values in diffusers.
DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0, "flip_sin_to_cos": True,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [224, 448, 672, 896], "layers_per_block": 2, "mid_block_scale_factor": 1,
    "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0,
    "act_fn": "silu", "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None,
    "norm_eps": 1e-5, "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None,
    "num_class_embeds": None, "num_train_timesteps": None,
}

# Settings under which UNet2DModel computes a function the DDPM U-Net cannot: (allowed values, why).
# flip_sin_to_cos, freq_shift and downsample_padding are NOT here: they are ModelConfig fields (the same
# network with another embedding layout or padding), mapped below.
_DIFFUSERS_REQUIRED: dict[str, tuple[tuple[Any, ...], str]] = {
    "center_input_sample": ((False,), "the DDPM feeds x_t unchanged"),
    "time_embedding_type": (("positional",), "the DDPM uses the sinusoidal embedding"),
    "mid_block_type": (("UNetMidBlock2D",), "the DDPM middle is ResBlock-attention-ResBlock"),
    "mid_block_scale_factor": ((1,), "the DDPM does not rescale the middle block's output"),
    "downsample_padding": ((0, 1), "only 0 (pad right/bottom, the DDPM) and 1 (diffusers) exist"),
    "downsample_type": (("conv",), "the DDPM downsamples with a strided conv"),
    "upsample_type": (("conv",), "the DDPM upsamples by nearest neighbour + conv"),
    "act_fn": (("silu",), "the DDPM uses SiLU (swish)"),
    "resnet_time_scale_shift": (("default",), "the DDPM adds the time embedding (no scale-shift)"),
    "add_attention": ((True,), "the DDPM has attention in its middle block"),
    "class_embed_type": ((None,), "class-conditional models are not supported"),
    "num_class_embeds": ((None,), "class-conditional models are not supported"),
}


def config_from_diffusers(cfg: Mapping[str, Any], *, source: str,
                          image_size: int | None = None) -> tuple[ModelConfig, list[str]]:
    """ModelConfig of a diffusers UNet2DModel ``config.json`` dict. Returns (config, notes).

    sample_size -> image_size (``image_size`` overrides it, keeping the attention levels);
    block_out_channels -> ch = [0], ch_mult = [i] / [0]; layers_per_block -> num_res_blocks;
    Attn{Down,Up}Block2D positions -> attn_resolutions; norm_num_groups, norm_eps -> norm_*; dropout;
    flip_sin_to_cos, freq_shift, downsample_padding -> the fields of the same names;
    attention_head_dim -> num_heads = channels // attention_head_dim where that is one count for every
    attention block, else head_channels = attention_head_dim (null: one head as wide as the block).
    Every setting that changes the function away from the DDPM U-Net, and every key this function does not
    know, is collected; one error lists them all ("unsupported UNet2DModel settings: a=..., b=...").
    """
    problems: list[str] = []

    def unsupported(key: str, value: Any, why: str) -> None:
        problems.append(f"{key}={value!r} ({why})")

    if cfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
        unsupported("_class_name", cfg["_class_name"], "only UNet2DModel holds the DDPM U-Net")
    unknown = sorted(k for k in cfg if not k.startswith("_") and k not in DIFFUSERS_DEFAULTS)
    for key in unknown:
        unsupported(key, cfg[key], "unknown key: diffprune cannot tell whether it changes the network")
    c = {**DIFFUSERS_DEFAULTS, **{k: v for k, v in cfg.items() if not k.startswith("_")}}
    for key, (allowed, why) in _DIFFUSERS_REQUIRED.items():
        if c[key] not in allowed:
            unsupported(key, c[key], f"needs {' or '.join(map(repr, allowed))}: {why}")
    if not isinstance(c["flip_sin_to_cos"], bool):
        unsupported("flip_sin_to_cos", c["flip_sin_to_cos"], "needs true or false")
    if not isinstance(c["freq_shift"], int) or isinstance(c["freq_shift"], bool):
        unsupported("freq_shift", c["freq_shift"], "needs an integer")

    channels = [int(w) for w in c["block_out_channels"]]
    down, up = list(c["down_block_types"]), list(c["up_block_types"])
    if not len(down) == len(up) == len(channels):
        unsupported("down_block_types", down, f"needs one down and one up block per entry of "
                    f"block_out_channels={channels} (up_block_types={up})")
    for key, types, allowed in (("down_block_types", down, ("DownBlock2D", "AttnDownBlock2D")),
                                ("up_block_types", up, ("UpBlock2D", "AttnUpBlock2D"))):
        bad = [t for t in types if t not in allowed]
        if bad:
            unsupported(key, types, f"blocks {bad} are not DDPM blocks (allowed: {list(allowed)})")
    attn = [i for i, t in enumerate(down) if t == "AttnDownBlock2D"]
    # The DDPM decoder mirrors the encoder: level i has attention on both sides or on neither.
    mirrored = [i for i, t in enumerate(reversed(up)) if t == "AttnUpBlock2D"]
    if attn != mirrored:
        unsupported("up_block_types", up, f"attention sits at encoder levels {attn} but at decoder levels "
                    f"{mirrored}; the DDPM U-Net mirrors them")
    ch = channels[0]
    if any(w % ch for w in channels):
        unsupported("block_out_channels", channels, f"every width must be a multiple of the first ({ch})")
    if c["time_embedding_dim"] not in (None, 4 * ch):
        unsupported("time_embedding_dim", c["time_embedding_dim"], f"the DDPM's is 4 * ch = {4 * ch}")
    if c["attn_norm_num_groups"] not in (None, c["norm_num_groups"]):
        unsupported("attn_norm_num_groups", c["attn_norm_num_groups"],
                    f"attention GroupNorm must use norm_num_groups={c['norm_num_groups']}")

    notes = []
    head_dim = c["attention_head_dim"]
    num_heads, head_channels = 1, 0  # null: diffusers uses one head as wide as the block
    if head_dim is not None:
        attn_widths = sorted({channels[i] for i in attn if i < len(channels)} | {channels[-1]})  # + middle block
        if any(w % int(head_dim) for w in attn_widths):
            unsupported("attention_head_dim", head_dim, f"does not divide the attention widths {attn_widths}")
        elif len({w // int(head_dim) for w in attn_widths}) == 1:
            num_heads = attn_widths[0] // int(head_dim)
        else:  # diffusers' default (8): the head count grows with the width, the head width is fixed
            head_channels = int(head_dim)
    notes.append(f"num_heads={num_heads}, head_channels={head_channels} from attention_head_dim={head_dim}")

    sample = c["sample_size"]
    if isinstance(sample, (list, tuple)):
        if len(sample) != 2 or sample[0] != sample[1]:
            unsupported("sample_size", sample, "the U-Net config describes square images only")
        sample = sample[0]
    if image_size is not None:
        notes.append(f"image_size={image_size} from the caller (config.json sample_size={sample})")
    elif sample is None:
        unsupported("sample_size", None, "the attention resolutions are unknown; pass image_size=")
    else:
        image_size = int(sample)
    if problems:
        raise ValueError(f"{source}: unsupported UNet2DModel settings ({len(problems)}): " + "; ".join(problems))
    try:
        config = ModelConfig(image_size=image_size, in_channels=int(c["in_channels"]),
                             out_channels=int(c["out_channels"]), ch=ch, ch_mult=tuple(w // ch for w in channels),
                             num_res_blocks=int(c["layers_per_block"]),
                             attn_resolutions=tuple(image_size // 2 ** i for i in attn), dropout=float(c["dropout"]),
                             num_heads=num_heads, norm_groups=int(c["norm_num_groups"]),
                             norm_eps=float(c["norm_eps"]), resamp_with_conv=True,
                             flip_sin_to_cos=c["flip_sin_to_cos"], freq_shift=c["freq_shift"],
                             downsample_padding=int(c["downsample_padding"]), head_channels=head_channels)
    except ValueError as e:
        raise ValueError(f"{source}: the config describes an invalid U-Net: {e}") from e
    return config, notes
