"""The conditional latent U-Net's configuration: one frozen dataclass, read from a diffusers ``config.json``.

``UNetConditionConfig`` holds what the architecture of diffusers' ``UNet2DConditionModel`` depends on, for
the configurations Stable Diffusion v1/v2, SDXL, BK-SDM and class-conditional LDMs use, in a normalised
form: every per-level setting is a tuple with one entry per down block, and the number of attention heads
is stored under its real name (``num_attention_heads``).

The diffusers-config trap this resolves once, in ``from_diffusers``: SD-1/SD-2/SDXL configs write
``attention_head_dim`` but mean the NUMBER OF HEADS (diffusers itself reads ``num_attention_heads =
num_attention_heads or attention_head_dim``; huggingface/diffusers issue 2011). SD-v1.5's ``attention_head_dim=8``
is 8 heads of 40/80/160 channels, not heads of 8 channels.

As for the DDPM U-Net (models/ddpm/config.py), two fields describe a pruned network:

``widths``   (module path, width) pairs overriding the dense output width of a layer: a Conv2d/Linear by its
             diffusers path (``down_blocks.0.resnets.0.conv1``), or a head count (``<...>.attn1.heads``).
             The keys a network has are ``models.sd.unet.dense_widths(config)``. Empty = dense.
``removed``  block paths whose residual branch is removed (LAPTOP-Diff, arXiv 2404.11098, Sec. 3): a ResNet
             (``up_blocks.1.resnets.2``), a whole Transformer2D (``down_blocks.0.attentions.1``) or one
             BasicTransformerBlock in it (``mid_block.attentions.0.transformer_blocks.3``). See
             ``models/sd/removed.py``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
MID_BLOCK_TYPES = ("UNetMidBlock2DCrossAttn", None)
UP_BLOCK_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")

# diffusers config keys that change nothing in fp32 inference, or only matter for features we refuse elsewhere.
_IGNORED = {"upcast_attention", "addition_embed_type_num_heads"}
# diffusers config keys supported only at one value (or a set of equivalent ones): key -> accepted values.
_FIXED: dict[str, tuple] = {
    "act_fn": ("silu",),
    "only_cross_attention": (False,),
    "mid_block_only_cross_attention": (None, False),
    "dual_cross_attention": (False,),
    "class_embed_type": (None,),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "resnet_time_scale_shift": ("default",),
    "resnet_skip_time_act": (False,),
    "resnet_out_scale_factor": (1.0,),
    "time_embedding_type": ("positional",),
    "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,),
    "time_cond_proj_dim": (None,),
    "attention_type": ("default",),
    "class_embeddings_concat": (False,),
    "cross_attention_norm": (None,),
    "reverse_transformer_layers_per_block": (None,),
    "addition_embed_type": (None, "text_time"),
    "mid_block_type": MID_BLOCK_TYPES,
}
# diffusers keys read into a field of the same name (the rest are listed in _IGNORED / _FIXED or renamed).
_COPIED = ("in_channels", "out_channels", "center_input_sample", "flip_sin_to_cos", "freq_shift", "down_block_types",
           "mid_block_type", "up_block_types", "block_out_channels", "downsample_padding", "mid_block_scale_factor",
           "dropout", "norm_num_groups", "norm_eps", "use_linear_projection", "num_class_embeds",
           "addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim",
           "conv_in_kernel", "conv_out_kernel", "time_embedding_dim", "sample_size")
_PER_LEVEL = ("layers_per_block", "transformer_layers_per_block", "cross_attention_dim")
# diffusers' __init__ defaults, for keys a config.json may leave out.
_DIFFUSERS_DEFAULTS = {"down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                       "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                       "mid_block_type": "UNetMidBlock2DCrossAttn", "block_out_channels": (320, 640, 1280, 1280),
                       "layers_per_block": 2, "transformer_layers_per_block": 1, "cross_attention_dim": 1280,
                       "attention_head_dim": 8, "num_attention_heads": None}


@dataclass(frozen=True)
class UNetConditionConfig:
    """Hyper-parameters of a conditional latent U-Net (diffusers ``UNet2DConditionModel`` semantics).

    Per-level tuples have one entry per down block (level 0 = full resolution); the up path reads them
    reversed, as diffusers does.

    sample_size:                 the latent size the network was trained at (example inputs only; any size runs).
    in_channels, out_channels:  latent channels in and out (4 for SD).
    down_block_types:            per level, ``CrossAttnDownBlock2D`` (ResNet + Transformer2D pairs) or
                                 ``DownBlock2D`` (ResNets only); up_block_types likewise, innermost first.
    mid_block_type:              ``UNetMidBlock2DCrossAttn`` (ResNet, Transformer2D, ResNet) or None (no mid block).
    block_out_channels:          the width of each level.
    layers_per_block:            ResNets per down block; an up block has one more.
    transformer_layers_per_block: BasicTransformerBlocks per Transformer2D, per level.
    num_attention_heads:         heads per level (NOT diffusers' ``attention_head_dim``; see module docstring).
    cross_attention_dim:         width of encoder_hidden_states (the text encoder's), per level.
    use_linear_projection:       Transformer2D's proj_in/proj_out as Linear (SD-2, SDXL) or 1x1 conv (SD-1).
    norm_num_groups, norm_eps:   GroupNorm of ResNets and of the output (Transformer2D's GroupNorm uses 1e-6).
    flip_sin_to_cos, freq_shift: sinusoidal time embedding layout (cos first; frequency denominator half - shift).
    time_embedding_dim:          width of the time embedding; None = 4 * block_out_channels[0].
    downsample_padding:          padding of the stride-2 conv (0: pad right/bottom by one first).
    mid_block_scale_factor:      the mid block's ResNets divide their output by it.
    dropout:                     dropout in ResNets and attention (0 in every released SD config).
    center_input_sample:         x -> 2x - 1 before conv_in.
    conv_in_kernel, conv_out_kernel: kernel sizes of conv_in and conv_out (padding (k - 1) // 2).
    num_class_embeds:            class-conditional: an Embedding(num_class_embeds, time_dim) added to the time embedding.
    addition_embed_type:         None or "text_time" (SDXL): MLP of cat(text_embeds, sinusoid(time_ids)) added
                                 to the time embedding; addition_time_embed_dim is the sinusoid width per
                                 time id, projection_class_embeddings_input_dim the MLP's input width.
    widths, removed:             pruned structure (module docstring); empty = the dense network.
    """

    sample_size: int | None = None
    in_channels: int = 4
    out_channels: int = 4
    down_block_types: tuple[str, ...] = _DIFFUSERS_DEFAULTS["down_block_types"]
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple[str, ...] = _DIFFUSERS_DEFAULTS["up_block_types"]
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: tuple[int, ...] = (2, 2, 2, 2)
    transformer_layers_per_block: tuple[int, ...] = (1, 1, 1, 1)
    num_attention_heads: tuple[int, ...] = (8, 8, 8, 8)
    cross_attention_dim: tuple[int, ...] = (768, 768, 768, 768)
    use_linear_projection: bool = False
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    time_embedding_dim: int | None = None
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    dropout: float = 0.0
    center_input_sample: bool = False
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    num_class_embeds: int | None = None
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    projection_class_embeddings_input_dim: int | None = None
    widths: tuple[tuple[str, int], ...] = field(default=())
    removed: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        L = len(self.block_out_channels)
        tuples = ("down_block_types", "up_block_types", "block_out_channels", "sample_size") + _PER_LEVEL + ("num_attention_heads",)
        for name in tuples:  # lists (JSON, checkpoints) -> tuples, so the config stays hashable
            value = getattr(self, name)
            object.__setattr__(self, name, tuple(value) if isinstance(value, (list, tuple)) else value)
        pairs = self.widths.items() if isinstance(self.widths, Mapping) else self.widths
        object.__setattr__(self, "widths", tuple(sorted((str(k), int(v)) for k, v in pairs)))
        if isinstance(self.removed, str):  # a lone path would otherwise become a tuple of characters
            raise ValueError(f"invalid UNetConditionConfig: removed={self.removed!r} must be a list of block paths")
        object.__setattr__(self, "removed", tuple(sorted({str(p) for p in self.removed})))
        problems = []
        bad = [t for t in self.down_block_types if t not in DOWN_BLOCK_TYPES]
        if bad:
            problems.append(f"down_block_types {bad} unsupported; supported: {list(DOWN_BLOCK_TYPES)}")
        bad = [t for t in self.up_block_types if t not in UP_BLOCK_TYPES]
        if bad:
            problems.append(f"up_block_types {bad} unsupported; supported: {list(UP_BLOCK_TYPES)}")
        if self.mid_block_type not in MID_BLOCK_TYPES:
            problems.append(f"mid_block_type {self.mid_block_type!r} unsupported; supported: {list(MID_BLOCK_TYPES)}")
        if L < 1 or len(self.down_block_types) != L or len(self.up_block_types) != L:
            problems.append(f"{len(self.down_block_types)} down and {len(self.up_block_types)} up block types for "
                            f"{L} block_out_channels; they must be equal and at least 1")
        for name in _PER_LEVEL + ("num_attention_heads",):
            value = getattr(self, name)
            if not isinstance(value, tuple) or len(value) != L or any(int(v) < 1 for v in value):
                problems.append(f"{name}={value!r} must hold one positive int per level ({L})")
        for name in ("in_channels", "out_channels", "norm_num_groups", "conv_in_kernel", "conv_out_kernel"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout={self.dropout} must be in [0, 1)")
        if self.addition_embed_type == "text_time" and (not self.addition_time_embed_dim
                                                         or not self.projection_class_embeddings_input_dim):
            problems.append("addition_embed_type='text_time' needs addition_time_embed_dim and "
                            "projection_class_embeddings_input_dim")
        elif self.addition_embed_type not in (None, "text_time"):
            problems.append(f"addition_embed_type {self.addition_embed_type!r} unsupported; supported: [None, 'text_time']")
        if self.num_class_embeds is not None and int(self.num_class_embeds) < 1:
            problems.append(f"num_class_embeds={self.num_class_embeds} must be >= 1 or None")
        for name, width in self.widths:
            if width < 1:
                problems.append(f"width of {name!r} is {width}; every layer needs at least one channel")
        if problems:
            raise ValueError("invalid UNetConditionConfig: " + "; ".join(problems))

    # ------------------------------------------------------------------ derived
    @property
    def time_dim(self) -> int:
        """Width of the time embedding (the ResNets' temb input)."""
        return self.time_embedding_dim or 4 * self.block_out_channels[0]

    @property
    def width_table(self) -> dict[str, int]:
        """The explicit widths as a dict (empty for a dense model)."""
        return dict(self.widths)

    def with_widths(self, widths: Mapping[str, int]) -> "UNetConditionConfig":
        """A copy whose width table is ``widths`` (pruning surgery)."""
        return dataclasses.replace(self, widths=tuple(sorted(widths.items())))

    def with_removed(self, removed) -> "UNetConditionConfig":
        """A copy whose set of removed units is ``removed`` (layer pruning)."""
        return dataclasses.replace(self, removed=tuple(sorted(set(removed))))

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON- and ``weights_only``-safe dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = [list(x) if isinstance(x, tuple) else x for x in v]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "UNetConditionConfig":
        """Inverse of ``to_dict``; unknown keys are an error that names them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown UNetConditionConfig keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> "UNetConditionConfig":
        """Read a diffusers ``UNet2DConditionModel`` config dict (its ``config.json``).

        Keys starting with ``_`` (``_class_name``, ``_diffusers_version``, ...) are metadata. Every key this
        network does not implement, or implements only at some values, is checked, and ALL the problems are
        reported in one error naming each key, its value and the supported values.
        """
        supported = set(_COPIED) | set(_PER_LEVEL) | set(_IGNORED) | set(_FIXED) | {"attention_head_dim", "num_attention_heads"}
        problems = [f"unknown key {k!r}" for k in sorted(config) if not k.startswith("_") and k not in supported]
        for key, allowed in _FIXED.items():
            value = config.get(key)
            if key == "only_cross_attention" and isinstance(value, (list, tuple)) and not any(value):
                continue  # the per-level form, all False, is the default
            if key in config and value not in allowed:
                problems.append(f"{key}={config[key]!r} unsupported; supported: {list(allowed)}")
        for key, allowed in (("down_block_types", DOWN_BLOCK_TYPES), ("up_block_types", UP_BLOCK_TYPES)):
            bad = [t for t in config.get(key, ()) if t not in allowed]
            if bad:
                problems.append(f"{key} {bad} unsupported; supported: {list(allowed)}")
        if problems:
            raise ValueError("unsupported UNet2DConditionModel config: " + "; ".join(problems))

        c = {**_DIFFUSERS_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
        L = len(c["block_out_channels"])

        def per_level(key: str, value) -> tuple:
            if isinstance(value, (list, tuple)):
                if any(isinstance(v, (list, tuple)) for v in value):
                    raise ValueError(f"{key}={value!r}: per-layer nested lists are unsupported; give an int or one per level")
                if len(value) != L:
                    raise ValueError(f"{key}={value!r} has {len(value)} entries for {L} levels")
                return tuple(int(v) for v in value)
            return (int(value),) * L

        # The legacy naming (module docstring): without num_attention_heads, attention_head_dim is the head COUNT.
        heads_key = "num_attention_heads" if c["num_attention_heads"] is not None else "attention_head_dim"
        kwargs = {k: c[k] for k in _COPIED if k in c}
        for k in ("down_block_types", "up_block_types", "block_out_channels"):
            kwargs[k] = tuple(c[k])
        kwargs.update({k: per_level(k, c[k]) for k in _PER_LEVEL})
        kwargs["num_attention_heads"] = per_level(heads_key, c[heads_key])
        return cls(**kwargs)

    def to_diffusers(self) -> dict[str, Any]:
        """The diffusers ``config.json`` fields of the dense network (heads written as ``attention_head_dim``,
        the way released configs do). A pruned config (widths / removed) has no diffusers form: an error."""
        if self.widths or self.removed:
            raise ValueError("a pruned UNetConditionConfig (widths/removed) has no diffusers config.json form")
        d = {k: getattr(self, k) for k in _COPIED}
        d.update({k: list(getattr(self, k)) for k in _PER_LEVEL + ("down_block_types", "up_block_types", "block_out_channels")})
        d["attention_head_dim"] = list(self.num_attention_heads)
        d["_class_name"] = "UNet2DConditionModel"
        return d
