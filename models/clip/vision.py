"""CLIP's vision tower with its projection (Radford et al. 2021, arXiv 2103.00020, Sec. 2.4; a ViT, Dosovitskiy
et al. 2021, arXiv 2010.11929, eq. 1-4), and the two towers together (``CLIPModel``).

    patches   = patch_embedding(pixels)  conv P x P, stride P, no bias    (B, N, D), N = (S / P)^2
    h_0       = [class_embedding; patches] + position_embedding(0 .. N)   (B, N+1, D)
    h_0      <- pre_layrnorm(h_0)           (transformers' spelling of the name)
    h_N       = encoder(h_0), no mask
    pooled    = post_layernorm(h_N[:, 0])   the class token
    image_embeds = visual_projection(pooled)   (no bias)

``pixel_values`` are already resized, cropped and normalised (metrics/clip_score.py ``preprocess``).
CLIP score and PickScore compare ``image_embeds`` with the text tower's ``text_embeds`` by cosine.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.clip.config import CLIPConfig, CLIPVisionConfig
from models.clip.encoder import Encoder
from models.clip.text import TextTransformer, encode_text


class VisionEmbeddings(nn.Module):
    """Patch embedding, class token and learned positions (names as transformers' CLIPVisionEmbeddings)."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        c = config
        self.class_embedding = nn.Parameter(torch.zeros(c.hidden_size))
        self.patch_embedding = nn.Conv2d(c.num_channels, c.hidden_size, c.patch_size, stride=c.patch_size, bias=False)
        self.position_embedding = nn.Embedding(c.num_positions, c.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)  # (B, N, D), row-major patches
        cls = self.class_embedding.expand(patches.shape[0], 1, -1).to(patches.dtype)  # (B, 1, D)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight[None]  # (B, N+1, D)


class VisionTransformer(nn.Module):
    """Embeddings, pre-LayerNorm, encoder, post-LayerNorm (transformers' CLIPVisionTransformer)."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        c = config
        self.embeddings = VisionEmbeddings(c)
        self.pre_layrnorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.encoder = Encoder(dim=c.hidden_size, hidden=c.intermediate_size, heads=c.num_attention_heads,
                               num_layers=c.num_hidden_layers, act=c.hidden_act, eps=c.layer_norm_eps,
                               dropout=c.attention_dropout)
        self.post_layernorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values: (B, C, S, S). Returns the pooled class-token state (B, D)."""
        h = self.encoder(self.pre_layrnorm(self.embeddings(pixel_values)))[-1]  # (B, N+1, D)
        return self.post_layernorm(h[:, 0])


class CLIPVisionModelWithProjection(nn.Module):
    """``vision_model.*`` and ``visual_projection``; ``forward`` returns image_embeds (B, projection_dim)."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.config = config
        self.vision_model = VisionTransformer(config)
        self.visual_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        _check_pixels(pixel_values, self.config)
        return self.visual_projection(self.vision_model(pixel_values))


def _check_pixels(pixel_values: torch.Tensor, c: CLIPVisionConfig) -> None:
    if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (c.num_channels, c.image_size, c.image_size):
        raise ValueError(f"CLIP vision tower: pixel_values must be (B, {c.num_channels}, {c.image_size}, "
                         f"{c.image_size}) (resize and crop first), got {tuple(pixel_values.shape)}")


class CLIPModel(nn.Module):
    """Both towers, their projections and the learned temperature (transformers' CLIPModel names:
    ``text_model.*``, ``vision_model.*``, ``text_projection``, ``visual_projection``, ``logit_scale``).

    logit_scale holds log(1 / tau); the contrastive logits are exp(logit_scale) * cos (Radford et al.,
    Fig. 3), which is also PickScore's score (Kirstain et al. 2023, arXiv 2305.01569, Sec. 4).
    """

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        self.text_model = TextTransformer(config.text)
        self.vision_model = VisionTransformer(config.vision)
        self.visual_projection = nn.Linear(config.vision.hidden_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(config.text.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))

    def text_embeds(self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) token ids -> (B, P) projected text embeddings (not normalised)."""
        pooled = encode_text(self.text_model, self.config.text, input_ids, attention_mask=attention_mask).pooled
        return self.text_projection(pooled)

    def image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) preprocessed pixels -> (B, P) projected image embeddings (not normalised)."""
        _check_pixels(pixel_values, self.config.vision)
        return self.visual_projection(self.vision_model(pixel_values))

    def logits_per_text(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, *,
                        attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """exp(logit_scale) * cos(text_i, image_j): (B_text, B_image), the logits of CLIP's symmetric
        contrastive loss (Radford et al., Fig. 3: cross-entropy over rows and over columns, label i = i)."""
        t = F.normalize(self.text_embeds(input_ids, attention_mask=attention_mask), dim=-1)
        i = F.normalize(self.image_embeds(pixel_values), dim=-1)
        return self.logit_scale.exp() * t @ i.T

    def cosine(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """cos(text_embeds[i], image_embeds[i]) for paired rows i. Returns (B,)."""
        return F.cosine_similarity(self.text_embeds(input_ids), self.image_embeds(pixel_values), dim=-1)
