"""The latent U-Net's topology, dense widths and wiring, worked out once from the config (never in ``forward``).

Layout (L levels; R_i = layers_per_block[i]; diffusers' module paths)::

    time_proj -> time_embedding.linear_{1,2}      sinusoid(block_out_channels[0]) -> MLP -> temb
    class_embedding                               Embedding(num_class_embeds, temb), added to temb
    add_time_proj -> add_embedding.linear_{1,2}   SDXL: MLP(cat(text_embeds, sinusoid(time_ids))), added to temb
    conv_in
    down_blocks.{i}.resnets.{j} [+ .attentions.{j}]   j < R_i; attention in CrossAttnDownBlock2D
    down_blocks.{i}.downsamplers.0                except at the last level
    mid_block.resnets.0, mid_block.attentions.0, mid_block.resnets.1     (absent when mid_block_type is None)
    up_blocks.{k}.resnets.{j} [+ .attentions.{j}]     level i = L-1-k, j < R_i + 1, each fed cat([h, skip])
    up_blocks.{k}.upsamplers.0                    except at the last up block
    conv_norm_out, conv_out

The encoder pushes conv_in's output, each (ResNet, attention) pair's output and each downsampler's output;
every decoder ResNet pops one. ``wire`` follows that push/pop order with a width lookup, so that the dense
network and any pruned one (config.widths, config.removed) are wired by the same few lines.

Width keys (``dense_widths``): ``time_embedding.linear_{1,2}``, ``add_embedding.linear_1``, ``conv_in``,
``<resnet>.conv1`` (also time_emb_proj and norm2), ``<resnet>.conv2`` (the block's output; conv_shortcut
follows it), ``<sampler>.conv``, ``<attention>.proj_in`` (the token width: to_out.0 and ff.net.2 follow it),
``<attention>.transformer_blocks.{b}.attn{1,2}.to_q`` (to_k follows it), ``...attn{1,2}.to_v``,
``...attn{1,2}.heads`` and ``...ff.net.0.proj`` (twice the GEGLU hidden width). proj_out always returns the
attention's input width (its residual add).
"""
from __future__ import annotations

from typing import Callable

from models.sd.config import UNetConditionConfig


def topology(cfg: UNetConditionConfig) -> list[tuple[str, str, int]]:
    """Every unit in forward order as (kind, path, level); kinds: res, upres, attn, down, up."""
    L = len(cfg.block_out_channels)
    out = []
    for i, kind in enumerate(cfg.down_block_types):
        for j in range(cfg.layers_per_block[i]):
            out.append(("res", f"down_blocks.{i}.resnets.{j}", i))
            if kind == "CrossAttnDownBlock2D":
                out.append(("attn", f"down_blocks.{i}.attentions.{j}", i))
        if i != L - 1:
            out.append(("down", f"down_blocks.{i}.downsamplers.0", i))
    if cfg.mid_block_type is not None:
        out += [("res", "mid_block.resnets.0", L - 1), ("attn", "mid_block.attentions.0", L - 1),
                ("res", "mid_block.resnets.1", L - 1)]
    for k, kind in enumerate(cfg.up_block_types):
        i = L - 1 - k
        for j in range(cfg.layers_per_block[i] + 1):
            out.append(("upres", f"up_blocks.{k}.resnets.{j}", i))
            if kind == "CrossAttnUpBlock2D":
                out.append(("attn", f"up_blocks.{k}.attentions.{j}", i))
        if k != L - 1:
            out.append(("up", f"up_blocks.{k}.upsamplers.0", i))
    return out


def dense_widths(cfg: UNetConditionConfig) -> dict[str, int]:
    """Output widths of the unpruned network (the default for every width key; module docstring)."""
    T = cfg.time_dim
    w = {"time_embedding.linear_1": T, "time_embedding.linear_2": T, "conv_in": cfg.block_out_channels[0]}
    if cfg.addition_embed_type == "text_time":
        w["add_embedding.linear_1"] = T
    for kind, path, level in topology(cfg):
        C = cfg.block_out_channels[level]
        if kind in ("res", "upres"):
            w[f"{path}.conv1"] = w[f"{path}.conv2"] = C
        elif kind in ("down", "up"):
            w[f"{path}.conv"] = C
        else:
            w[f"{path}.proj_in"] = C
            for b in range(cfg.transformer_layers_per_block[level]):
                for a in ("attn1", "attn2"):
                    w[f"{path}.transformer_blocks.{b}.{a}.to_q"] = C
                    w[f"{path}.transformer_blocks.{b}.{a}.to_v"] = C
                    w[f"{path}.transformer_blocks.{b}.{a}.heads"] = cfg.num_attention_heads[level]
                w[f"{path}.transformer_blocks.{b}.ff.net.0.proj"] = 2 * 4 * C  # GEGLU: value and gate halves
    return w


def removable_units(cfg: UNetConditionConfig) -> list[str]:
    """Paths a layer-pruned network may remove, in forward order: every ResNet, every Transformer2D, and every
    BasicTransformerBlock inside one (listed right after its Transformer2D)."""
    units = []
    for kind, path, level in topology(cfg):
        if kind in ("res", "upres"):
            units.append(path)
        elif kind == "attn":
            units.append(path)
            units += [f"{path}.transformer_blocks.{b}" for b in range(cfg.transformer_layers_per_block[level])]
    return units


def wire(cfg: UNetConditionConfig, width: Callable[[str], int], passthrough: frozenset[str] = frozenset()) -> dict[str, dict]:
    """Input/output widths of every unit, following the forward pass with the given width lookup.

    passthrough: removed units whose output is their input (a ResNet without a 1x1 shortcut, any attention).
    Returns path -> {"in", "out", ...}: ResNets add "mid"; attentions add "inner" and "blocks", a list of
    (attn1 (qk, v, heads), attn2 (qk, v, heads), ff hidden) per BasicTransformerBlock; "out" -> {"in"}.
    """
    plan: dict[str, dict] = {}
    cur = width("conv_in")
    skips = [cur]  # widths of the tensors the encoder pushes for the decoder
    for kind, path, level in topology(cfg):
        p: dict = {"in": cur + (skips.pop() if kind == "upres" else 0)}
        if path in passthrough:
            p["out"] = p["in"]
        elif kind in ("res", "upres"):
            p.update(mid=width(f"{path}.conv1"), out=width(f"{path}.conv2"))
        elif kind == "attn":
            blocks = []
            for b in range(cfg.transformer_layers_per_block[level]):
                tb = f"{path}.transformer_blocks.{b}"
                attn = [(width(f"{tb}.{a}.to_q"), width(f"{tb}.{a}.to_v"), width(f"{tb}.{a}.heads")) for a in ("attn1", "attn2")]
                blocks.append((attn[0], attn[1], width(f"{tb}.ff.net.0.proj")))
            p.update(inner=width(f"{path}.proj_in"), blocks=blocks, out=p["in"])
        else:
            p["out"] = width(f"{path}.conv")
        plan[path] = p
        cur = p["out"]
        # The encoder's skips: each (ResNet[, attention]) pair's output and each downsampler's output.
        if path.startswith("down_blocks") and not (kind == "res" and _attention_follows(cfg, level)):
            skips.append(cur)
    if skips != []:
        raise AssertionError(f"wiring left {len(skips)} skip tensors unused")  # a bug here, never bad input
    plan["out"] = {"in": cur}
    return plan


def _attention_follows(cfg: UNetConditionConfig, level: int) -> bool:
    """True where a down ResNet is followed by a Transformer2D (then the attention's output is the skip)."""
    return cfg.down_block_types[level] == "CrossAttnDownBlock2D"
