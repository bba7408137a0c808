"""CLIP's text tower: the text encoders of Stable Diffusion (Radford et al. 2021, arXiv 2103.00020, Sec. 2.4).

    h_0 = token_embedding(ids) + position_embedding(0 .. L-1)          (B, L, D)
    h_i = EncoderLayer_i(h_{i-1}) with a causal mask, i = 1 .. N       (encoder.py)
    last_hidden_state        = final_layer_norm(h_N)       SD-1 conditions on this
    penultimate_hidden_state = h_{N-1}, NO final LayerNorm SD-2 and SDXL condition on this
    pooled                   = last_hidden_state at the EOS token of each row
    text_embeds              = text_projection(pooled)     (no bias; CLIPTextModelWithProjection, SDXL's
                                                            second encoder's ``text_embeds``, CLIP score)

Where the EOS token is: configs written before transformers PR #24773 say ``eos_token_id: 2`` (wrong for
CLIP's vocabulary) and the reference then takes argmax(input_ids), which finds EOS because 49407 is the
largest id; any other ``eos_token_id`` means the FIRST position holding it (padding may repeat it).

State-dict names are transformers' hub names: ``text_model.embeddings.token_embedding.weight``,
``text_model.encoder.layers.N.self_attn.q_proj.weight``, ``text_model.final_layer_norm.weight``,
``text_projection.weight``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.clip.config import CLIPTextConfig
from models.clip.encoder import Encoder

LEGACY_EOS_ID = 2


@dataclass
class CLIPTextOutput:
    """last_hidden_state, penultimate_hidden_state: (B, L, D); pooled: (B, D); text_embeds: (B, P) or None.

    hidden_states: [h_0, ..., h_N] (B, L, D) each, when asked for (``output_hidden_states=True``); SD
    pipelines' ``clip_skip`` reads hidden_states[-(clip_skip + 1)].
    """

    last_hidden_state: torch.Tensor
    penultimate_hidden_state: torch.Tensor
    pooled: torch.Tensor
    text_embeds: torch.Tensor | None = None
    hidden_states: list[torch.Tensor] | None = None


class TextEmbeddings(nn.Module):
    """Token plus learned absolute position embeddings (names as transformers' CLIPTextEmbeddings)."""

    def __init__(self, *, vocab_size: int, max_positions: int, dim: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.position_embedding = nn.Embedding(max_positions, dim)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        L = input_ids.shape[1]
        # Positions are computed, not a buffer: a meta-built model then needs no buffer re-initialised.
        positions = torch.arange(L, device=input_ids.device)
        return self.token_embedding(input_ids) + self.position_embedding(positions)[None]  # (B, L, D)


class TextTransformer(nn.Module):
    """Embeddings, the causal encoder and the final LayerNorm (transformers' CLIPTextTransformer)."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        c = config
        self.embeddings = TextEmbeddings(vocab_size=c.vocab_size, max_positions=c.max_position_embeddings,
                                         dim=c.hidden_size)
        self.encoder = Encoder(dim=c.hidden_size, hidden=c.intermediate_size, heads=c.num_attention_heads,
                               num_layers=c.num_hidden_layers, act=c.hidden_act, eps=c.layer_norm_eps,
                               dropout=c.attention_dropout)
        self.final_layer_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)


def encode_text(tower: TextTransformer, config: CLIPTextConfig, input_ids: torch.Tensor, *,
                attention_mask: torch.Tensor | None = None, output_hidden_states: bool = False) -> CLIPTextOutput:
    """Run the text tower: the module docstring's equations. (CLIPModel shares this with CLIPTextModel.)

    input_ids: (B, L) with L <= max_position_embeddings; attention_mask: (B, L), 1 = a real token. The SD
    pipelines pass no attention_mask (the causal mask alone keeps padding after EOS from reaching the
    tokens before it); a CLIP trained with one can pass it.
    """
    if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"CLIP text encoder: input_ids must be an integer (B, L) tensor, got "
                         f"{input_ids.dtype} {tuple(input_ids.shape)}")
    B, L = input_ids.shape
    if L > config.max_position_embeddings:
        raise ValueError(f"CLIP text encoder: {L} tokens exceed max_position_embeddings="
                         f"{config.max_position_embeddings}; truncate (the tokenizer does)")
    mask = None
    if attention_mask is not None:
        causal = torch.ones(L, L, dtype=torch.bool, device=input_ids.device).tril()
        mask = causal[None, None] & attention_mask.bool()[:, None, None, :]  # (B, 1, L, L): "may attend"
    states = tower.encoder(tower.embeddings(input_ids), mask=mask, causal=True)
    last = tower.final_layer_norm(states[-1])  # (B, L, D)
    pooled = last[torch.arange(B, device=last.device), eos_positions(input_ids, config.eos_token_id)]  # (B, D)
    return CLIPTextOutput(last_hidden_state=last, penultimate_hidden_state=states[-2], pooled=pooled,
                          hidden_states=states if output_hidden_states else None)


def eos_positions(input_ids: torch.Tensor, eos: int) -> torch.Tensor:
    """(B,) index of the token whose state is pooled; see the module docstring for the two rules."""
    if eos == LEGACY_EOS_ID:
        return input_ids.argmax(dim=-1)  # first occurrence of the largest id
    is_eos = input_ids == eos
    found = is_eos.any(dim=-1)
    if not bool(found.all()):
        rows = [i for i, ok in enumerate(found.tolist()) if not ok]
        raise ValueError(f"CLIP text encoder: rows {rows} of input_ids hold no EOS token (id {eos}); "
                         f"tokenize with the model's tokenizer, which appends it")
    return is_eos.int().argmax(dim=-1)  # the first EOS position


class CLIPTextModel(nn.Module):
    """The text encoder of SD-1 / SD-2 and SDXL's first (``text_model.*`` names). See the module docstring."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.config = config
        self.text_model = TextTransformer(config)

    def forward(self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False) -> CLIPTextOutput:
        """input_ids: (B, L); attention_mask: (B, L) or None (``encode_text``)."""
        return encode_text(self.text_model, self.config, input_ids, attention_mask=attention_mask,
                           output_hidden_states=output_hidden_states)


class CLIPTextModelWithProjection(CLIPTextModel):
    """CLIPTextModel plus ``text_projection`` (D -> projection_dim, no bias): SDXL's second text encoder."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__(config)
        self.text_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)

    def forward(self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False) -> CLIPTextOutput:
        out = super().forward(input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states)
        out.text_embeds = self.text_projection(out.pooled)  # (B, P)
        return out
