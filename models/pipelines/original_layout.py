"""The original single-file layout of Stable Diffusion v1.x and CompVis LDM checkpoints, mapped to diffusers names.

CompVis' latent-diffusion / stable-diffusion code (``ldm/modules/diffusionmodules/openaimodel.py`` and
``model.py``) saves ONE state dict for the whole LatentDiffusion module:

    model.diffusion_model.*      the U-Net (openaimodel.UNetModel: input_blocks / middle_block / output_blocks)
    first_stage_model.*          the autoencoder (KL for SD, KL or VQ for LDM: encoder.down.{l}.block.{j} ...)
    cond_stage_model.transformer.*   SD-1's CLIP text encoder (transformers' CLIPTextModel names)
    model_ema.*, betas, alphas_cumprod, ...   EMA copies and schedule buffers: not network weights, ignored

Every mapping below is written diffusers name -> original name, and derived from the structure alone
(levels L, resnets per level n_l, which levels have attention). Index arithmetic, with n_l resnets per down
level l (0..L-1) and up level i = the down level L-1-i read backwards:

  UNET_TABLE (prefixes; the leaf names inside each block follow the block's leaf table)
    conv_in                             input_blocks.0.0
    time_embedding.linear_{1,2}         time_embed.{0,2}
    class_embedding                     label_emb                    (num_class_embeds: an nn.Embedding)
    add_embedding.linear_{1,2}          label_emb.0.{0,2}            (SDXL's text_time embedding)
    down_blocks.{l}.resnets.{j}         input_blocks.{k}.0           k = 1 + sum_{m<l} (n_m + 1) + j
    down_blocks.{l}.attentions.{j}      input_blocks.{k}.1
    down_blocks.{l}.downsamplers.0.conv input_blocks.{k'}.0.op       k' = 1 + sum_{m<=l} (n_m + 1) - 1, l < L-1
    mid_block.resnets.{0,1}             middle_block.{0,2}
    mid_block.attentions.0              middle_block.1
    up_blocks.{i}.resnets.{j}           output_blocks.{o}.0          o = sum_{m<i} (n_{L-1-m} + 1) + j, j <= n
    up_blocks.{i}.attentions.{j}        output_blocks.{o}.1
    up_blocks.{i}.upsamplers.0.conv     output_blocks.{o_last}.{1, or 2 with attention}.conv   (i < L-1)
    conv_norm_out, conv_out             out.0, out.2
  UNET_RESNET_LEAVES    norm1 in_layers.0, conv1 in_layers.2, time_emb_proj emb_layers.1, norm2 out_layers.0,
                        conv2 out_layers.3, conv_shortcut skip_connection
  Transformer2D blocks (SpatialTransformer): the same names in both layouts (norm, proj_in, transformer_blocks.*,
                        proj_out), proj_in/proj_out a 1x1 conv in SD-1 and Linear in SD-2, identical shapes.
  Legacy attention (LDM's AttentionBlock, UNet2DModel's attention): group_norm norm; to_q/to_k/to_v are
                        slices of qkv (a (3C, C, 1) conv1d, rows ordered per head as [q_h, k_h, v_h], the
                        "legacy" QKV order); to_out.0 proj_out ((C, C, 1) -> (C, C)).

  VAE_TABLE (first_stage_model.*; encoder and decoder)
    encoder.down_blocks.{l}.resnets.{j}          encoder.down.{l}.block.{j}
    encoder.down_blocks.{l}.downsamplers.0.conv  encoder.down.{l}.downsample.conv
    {encoder,decoder}.mid_block.resnets.{0,1}    {encoder,decoder}.mid.block_{1,2}
    {encoder,decoder}.mid_block.attentions.0     {encoder,decoder}.mid.attn_1
    {encoder,decoder}.conv_norm_out              {encoder,decoder}.norm_out
    decoder.up_blocks.{i}.resnets.{j}            decoder.up.{L-1-i}.block.{j}
    decoder.up_blocks.{i}.upsamplers.0.conv      decoder.up.{L-1-i}.upsample.conv
    conv_in, conv_out, quant_conv, post_quant_conv, quantize.embedding   unchanged
  VAE_RESNET_LEAVES     conv_shortcut nin_shortcut (norm1, conv1, norm2, conv2 unchanged)
  VAE_ATTENTION_LEAVES  group_norm norm, to_q q, to_k k, to_v v, to_out.0 proj_out; the original's are 1x1
                        convs, (C, C, 1, 1), diffusers' are Linear, (C, C): reshaped.

  Text encoder: cond_stage_model.transformer.{name} with name the transformers name; old files omit the
  ``text_model.`` level, which is then added. ``...embeddings.position_ids`` is a buffer: ignored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."

UNET_RESNET_LEAVES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                      "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_RESNET_LEAVES = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
                     "conv_shortcut": "nin_shortcut"}
VAE_ATTENTION_LEAVES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
LEGACY_ATTENTION_LEAVES = {"group_norm": "norm", "to_q": "qkv", "to_k": "qkv", "to_v": "qkv", "to_out.0": "proj_out"}
_QKV_PART = {"to_q": 0, "to_k": 1, "to_v": 2}


@dataclass(frozen=True)
class Source:
    """Where a diffusers tensor comes from in the original file, and how to turn it into the diffusers one.

    op: "copy"; "squeeze" (a 1x1 conv's (C, C, 1[, 1]) weight -> Linear (C, C)); "qkv" (rows ``part`` of
    q/k/v out of the legacy per-head-interleaved qkv with ``heads`` heads, then squeezed).
    """

    key: str
    op: str = "copy"
    part: int = 0
    heads: int = 1
    ndim: int = 0  # the original weight's dims for "squeeze"/"qkv": 4 (a Conv2d's) or 3 (a Conv1d's)


@dataclass(frozen=True)
class UNetStructure:
    """What the original U-Net layout depends on.

    layers_per_block: resnets per DOWN level (up levels have one more); attn_down/attn_up: per level, whether
    the blocks hold attention (up levels in diffusers order); mid: whether a middle block exists;
    transformer: SpatialTransformer attention (SD) vs legacy AttentionBlock (LDM's UNet2DModel), which needs
    ``head_dim`` (channels per head) to split qkv.
    """

    layers_per_block: tuple[int, ...]
    attn_down: tuple[bool, ...]
    attn_up: tuple[bool, ...]
    mid: bool = True
    transformer: bool = True
    head_dim: int = 0


def unet_prefix_table(s: UNetStructure) -> list[tuple[str, str, str]]:
    """(diffusers prefix, original prefix, block kind) rows of UNET_TABLE for this structure.
    kind: "resnet", "attention", "legacy_attention", or "plain" (leaves unchanged)."""
    attn = "attention" if s.transformer else "legacy_attention"
    rows = [("conv_in", "input_blocks.0.0", "plain"), ("time_embedding.linear_1", "time_embed.0", "plain"),
            ("time_embedding.linear_2", "time_embed.2", "plain"), ("class_embedding", "label_emb", "plain"),
            ("add_embedding.linear_1", "label_emb.0.0", "plain"), ("add_embedding.linear_2", "label_emb.0.2", "plain"),
            ("conv_norm_out", "out.0", "plain"), ("conv_out", "out.2", "plain")]
    L, k = len(s.layers_per_block), 1
    for l, n in enumerate(s.layers_per_block):
        for j in range(n):
            rows.append((f"down_blocks.{l}.resnets.{j}", f"input_blocks.{k}.0", "resnet"))
            if s.attn_down[l]:
                rows.append((f"down_blocks.{l}.attentions.{j}", f"input_blocks.{k}.1", attn))
            k += 1
        if l < L - 1:
            rows.append((f"down_blocks.{l}.downsamplers.0.conv", f"input_blocks.{k}.0.op", "plain"))
            k += 1
    if s.mid:
        rows += [("mid_block.resnets.0", "middle_block.0", "resnet"), ("mid_block.attentions.0", "middle_block.1", attn),
                 ("mid_block.resnets.1", "middle_block.2", "resnet")]
    o = 0
    for i, n in enumerate(reversed(s.layers_per_block)):
        for j in range(n + 1):
            rows.append((f"up_blocks.{i}.resnets.{j}", f"output_blocks.{o}.0", "resnet"))
            if s.attn_up[i]:
                rows.append((f"up_blocks.{i}.attentions.{j}", f"output_blocks.{o}.1", attn))
            if j == n and i < L - 1:
                slot = 2 if s.attn_up[i] else 1
                rows.append((f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks.{o}.{slot}.conv", "plain"))
            o += 1
    return rows


def vae_prefix_table(levels: int) -> list[tuple[str, str, str]]:
    """(diffusers prefix, original prefix, kind) rows of VAE_TABLE for an autoencoder with ``levels`` levels."""
    rows = [("encoder.conv_norm_out", "encoder.norm_out", "plain"), ("decoder.conv_norm_out", "decoder.norm_out", "plain")]
    for part in ("encoder", "decoder"):
        rows += [(f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", "vae_resnet"),
                 (f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", "vae_resnet"),
                 (f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", "vae_attention")]
    for l in range(levels):
        rows.append((f"encoder.down_blocks.{l}.resnets", f"encoder.down.{l}.block", "vae_resnets"))
        rows.append((f"encoder.down_blocks.{l}.downsamplers.0.conv", f"encoder.down.{l}.downsample.conv", "plain"))
        rows.append((f"decoder.up_blocks.{l}.resnets", f"decoder.up.{levels - 1 - l}.block", "vae_resnets"))
        rows.append((f"decoder.up_blocks.{l}.upsamplers.0.conv", f"decoder.up.{levels - 1 - l}.upsample.conv", "plain"))
    return rows


_LEAVES = {"resnet": UNET_RESNET_LEAVES, "vae_resnet": VAE_RESNET_LEAVES, "vae_attention": VAE_ATTENTION_LEAVES,
           "legacy_attention": LEGACY_ATTENTION_LEAVES}


def _match(key: str, rows: Sequence[tuple[str, str, str]]) -> tuple[str, str, str, str] | None:
    """The longest row whose diffusers prefix is a dotted prefix of ``key``: (diff prefix, orig prefix, kind, rest)."""
    best = None
    for d, o, kind in rows:
        if key.startswith(d + ".") and (best is None or len(d) > len(best[0])):
            best = (d, o, kind, key[len(d) + 1:])
    return best


def original_source(key: str, rows: Sequence[tuple[str, str, str]], *, prefix: str = "",
                    head_dim: int = 0, shape: Sequence[int] = ()) -> Source:
    """The original-layout Source of one diffusers tensor name (a name no row covers maps to itself).

    shape: the diffusers tensor's shape (needed for a legacy qkv split: C = shape[-1]).
    """
    m = _match(key, rows)
    if m is None:
        return Source(prefix + key)
    d, o, kind, rest = m
    if kind == "vae_resnets":  # "{j}.leaf..." under a list of resnets
        j, rest = rest.split(".", 1)
        o, kind = f"{o}.{j}", "vae_resnet"
    leaves = _LEAVES.get(kind)
    if leaves is None:
        return Source(f"{prefix}{o}.{rest}")
    for leaf, orig_leaf in leaves.items():
        if rest.startswith(leaf + "."):
            name = f"{prefix}{o}.{orig_leaf}.{rest[len(leaf) + 1:]}"
            is_weight = rest.endswith(".weight")
            if kind == "vae_attention" and leaf != "group_norm" and is_weight:
                return Source(name, "squeeze", ndim=4)
            if kind == "legacy_attention" and leaf in _QKV_PART:
                heads = max(int(shape[-1]) // head_dim, 1) if head_dim else 1
                return Source(name, "qkv", _QKV_PART[leaf], heads, ndim=3)
            if kind == "legacy_attention" and leaf == "to_out.0" and is_weight:
                return Source(name, "squeeze", ndim=3)
            return Source(name)
    return Source(f"{prefix}{o}.{rest}")


def text_source(key: str, original_keys: Sequence[str] | None = None) -> Source:
    """cond_stage_model.transformer.{key}; files written by older transformers lack the ``text_model.`` level."""
    name = TEXT_PREFIX + key
    if original_keys is not None and name not in original_keys and key.startswith("text_model."):
        return Source(TEXT_PREFIX + key[len("text_model."):])
    return Source(name)


def apply(source: Source, tensor: torch.Tensor) -> torch.Tensor:
    """The diffusers tensor from the original one (Source.op)."""
    if source.op == "copy":
        return tensor
    if source.op == "squeeze":
        return tensor.reshape(tensor.shape[0], tensor.shape[1]) if tensor.dim() > 2 else tensor
    three_c = tensor.shape[0]
    per_head = three_c // (3 * source.heads)
    rows = tensor.reshape(source.heads, 3, per_head, *tensor.shape[1:])[:, source.part]  # (heads, c, ...)
    rows = rows.reshape(three_c // 3, *tensor.shape[1:])
    return rows.reshape(rows.shape[0], -1) if rows.dim() > 1 else rows


def to_original(state_dict: dict[str, torch.Tensor], sources: dict[str, Source]) -> dict[str, torch.Tensor]:
    """The inverse of ``apply`` over a whole state dict: diffusers tensors -> the original file's tensors
    (1x1-conv shapes restored, q/k/v interleaved back into qkv). ``sources``: diffusers name -> Source."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[int, tuple[Source, torch.Tensor]]] = {}
    for name, tensor in state_dict.items():
        src = sources[name]
        if src.op == "copy":
            out[src.key] = tensor
        elif src.op == "squeeze":
            out[src.key] = tensor.reshape(*tensor.shape, *[1] * (src.ndim - 2))
        else:
            qkv.setdefault(src.key, {})[src.part] = (src, tensor)
    for key, parts in qkv.items():
        src = parts[0][0]
        q, k, v = (parts[p][1] for p in range(3))
        c = q.shape[0]
        stacked = torch.stack([t.reshape(src.heads, c // src.heads, *t.shape[1:]) for t in (q, k, v)], dim=1)
        stacked = stacked.reshape(3 * c, *q.shape[1:])
        out[key] = stacked.reshape(*stacked.shape, 1) if stacked.dim() == 2 else stacked  # weight (3C, C, 1)
    return out
