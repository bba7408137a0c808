"""PickScore: a CLIP-H/14 fine-tuned on human preferences (Kirstain et al. 2023, "Pick-a-Pic", arXiv 2305.01569,
Sec. 4), the metric LAPTOP-Diff (arXiv 2404.11098) compares pruned SD-v1.5 and SDXL U-Nets with.

For prompt c and image I, with the fine-tuned model's projected embeddings and learned temperature:

    PickScore(c, I) = exp(logit_scale) * cos(E_T(c), E_I(I))         (about 100 * cos: logit_scale ~ ln 100)

The scores of several images for one prompt, softmaxed, give the preference probabilities; a model's
PickScore is the mean over its (prompt, image) pairs. The weights are ``yuvalkirstain/PickScore_v1`` (a
transformers CLIPModel); the reference code preprocesses and tokenizes with the processor of
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``: CLIP's preprocessing at 224 px (metrics/clip_score.py
``preprocess``) and CLIP's BPE tokenizer, truncated to 77 tokens.
"""
from __future__ import annotations

from typing import Sequence

import torch

from metrics.clip_score import pair_cosines
from models.clip.tokenizer import CLIPTokenizer

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


@torch.no_grad()
def pick_scores(model, tokenizer: CLIPTokenizer, images, prompts: Sequence[str], *, batch_size: int = 32,
                device: torch.device | str | None = None) -> torch.Tensor:
    """PickScore of each (prompts[i], images[i]) pair. Returns (N,) float32.

    model: a ``models.clip.CLIPModel`` with PickScore's weights (``load_pickscore``); images: PIL images or
    an (N, 3, H, W) tensor (uint8, or float in [0, 1]).
    """
    cos = pair_cosines(model, tokenizer, images, prompts, batch_size=batch_size, device=device)
    return model.logit_scale.detach().float().exp().cpu() * cos


def pick_score(model, tokenizer: CLIPTokenizer, images, prompts: Sequence[str], **kw) -> float:
    """The mean PickScore over the pairs (LAPTOP-Diff's figure for a model)."""
    return float(pick_scores(model, tokenizer, images, prompts, **kw).double().mean())


def preference_probabilities(scores: torch.Tensor) -> torch.Tensor:
    """softmax over the images of one prompt: (K,) PickScores -> (K,) probabilities (Kirstain et al., Sec. 4)."""
    return torch.softmax(scores.double(), dim=-1).float()


def load_pickscore(model: str = PICKSCORE_MODEL, *, tokenizer: str = PICKSCORE_PROCESSOR,
                   dtype: torch.dtype = torch.float32):
    """(model, tokenizer): PickScore's weights and the ViT-H/14 processor's tokenizer, by hub name or folder.

    Downloads once into the Hugging Face cache; offline without a cached copy, the one-line
    ``models.hub.HubDownloadError`` names the URL and how to pass local folders instead.
    """
    from models.clip.load import load_clip_and_tokenizer
    return load_clip_and_tokenizer(model, tokenizer=tokenizer, kind="CLIPModel", dtype=dtype)
