"""CLIP score: how well generated images match their prompts (Hessel et al. 2021, arXiv 2104.08718, eq. 1), and
CLIP's image preprocessing, written out.

For image I and caption c, with a CLIP model's projected embeddings E_I(I) and E_T(c):

    cos(I, c)  = E_I . E_T / (|E_I| |E_T|)
    CLIPScore  = 100 * max(cos, 0)     per pair, then the mean: torchmetrics' CLIPScore (Hessel et al. use
                                       w = 2.5 instead of 100)
    mean cos   = the mean of cos       what BK-SDM reports (0.2958 for SD-v1.4 with ViT-g/14; Kim et al.
                                       2023, arXiv 2305.15798): its src/eval_clip_score.py averages the
                                       cosines, neither scaled nor clipped

``clip_score`` returns both; say which one a number is. BK-SDM scores with open_clip's ViT-g-14 trained on
laion2b_s34b_b88k; ``KNOWN_CLIPS["ViT-g/14"]`` names that checkpoint's hub repository, which is in open_clip's
own format (models/clip/open_clip.py reads it). Not reproduced: open_clip's text cleaning with ftfy (the
tokenizer here normalises as transformers' does; the two differ on broken Unicode and HTML entities), its
zero padding (the causal mask makes padding irrelevant to the pooled EOS state) and torchvision's rounded
centre crop (identical to the floor used here on square images, such as BK-SDM's 256 x 256 ones).

Preprocessing (``preprocess``) is CLIP's (Radford et al. 2021; transformers' CLIPImageProcessor, open_clip's
``image_transform``): resize the shorter side to S with bicubic interpolation (PIL, on the 8-bit image),
centre-crop S x S, scale to [0, 1], normalise with CLIP's per-channel mean and std. S is the vision tower's
``image_size`` (224 for every hub model named here).

CLIP-shapes score (``--clip shapes``, ``LOCAL_CLIPS``): the same two numbers with the embedded text-to-image
world's tiny CLIP (benchmarks/train_t2i_clip.py; checkpoints/t2i_shapes/clip with the pipeline's BPE tokenizer,
checkpoints/t2i_shapes/tokenizer), the offline stand-in for CLIP score and PickScore on shapes captions. Its
vision tower's ``image_size`` is 32 and it was trained on 32 x 32 images normalised with CLIP's mean and std,
so ``preprocess`` at S = 32 is its own preprocessing: a 32 x 32 image passes the resize and crop unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from models.clip.tokenizer import CLIPTokenizer

# Per-channel mean and std of CLIP's training images (Radford et al.'s released preprocessing).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# CLIPs that ship with the repository, by short name: (model folder, tokenizer folder).
_T2I_SHAPES = Path(__file__).resolve().parents[1] / "checkpoints" / "t2i_shapes"
LOCAL_CLIPS = {"shapes": (_T2I_SHAPES / "clip", _T2I_SHAPES / "tokenizer")}


# --------------------------------------------------------------------------------------------- preprocessing
def to_pil(images) -> list[Image.Image]:
    """PIL RGB images from: a list of PIL images; a uint8 tensor/array (N, 3, H, W); a float tensor (N, 3, H, W)
    in [0, 1] (quantised to 8 bits as saving a PNG would: round(255 x), clipped)."""
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, (list, tuple)) and all(isinstance(im, Image.Image) for im in images):
        return [im.convert("RGB") for im in images]
    x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images).detach().cpu()
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"images must be PIL images or an (N, 3, H, W) tensor, got shape {tuple(x.shape)}")
    if x.is_floating_point():
        if x.min() < -1e-3 or x.max() > 1 + 1e-3:
            raise ValueError(f"float images must lie in [0, 1] (got [{x.min():.3f}, {x.max():.3f}]); map "
                             f"[-1, 1] model outputs with (x + 1) / 2 first")
        x = (x * 255).round().clamp(0, 255)
    arr = x.to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)
    return [Image.fromarray(a, mode="RGB") for a in arr]


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """Bicubic resize so that the shorter side is ``size``; the longer becomes int(size * long / short)."""
    w, h = image.size
    if w <= h:
        new = (size, int(size * h / w))
    else:
        new = (int(size * w / h), size)
    return image.resize(new, resample=Image.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """The central size x size square; an odd margin leaves the extra pixel at the bottom/right
    (transformers' floor((H - S) / 2); torchvision rounds instead, which differs by one pixel there)."""
    w, h = image.size
    top, left = (h - size) // 2, (w - size) // 2
    return image.crop((left, top, left + size, top + size))


def preprocess(images, *, size: int = 224, mean: Sequence[float] = CLIP_MEAN,
               std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """CLIP's input: (N, 3, size, size) float32, normalised. ``images`` as ``to_pil`` takes them."""
    out = []
    for im in to_pil(images):
        im = center_crop(resize_shorter_side(im, size), size)
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1))  # (3, S, S)
    x = torch.stack(out)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


# ------------------------------------------------------------------------------------------------- scoring
def tokenize_for(model, tokenizer: CLIPTokenizer, captions: Sequence[str]) -> torch.Tensor:
    """(N, L) ids no longer than the text tower's context (a long caption is truncated, with a warning)."""
    return tokenizer(list(captions), max_length=min(tokenizer.model_max_length,
                                                    model.config.text.max_position_embeddings))


@torch.no_grad()
def pair_cosines(model, tokenizer: CLIPTokenizer, images, captions: Sequence[str], *,
                 batch_size: int = 32, device: torch.device | str | None = None) -> torch.Tensor:
    """cos(E_I(image_i), E_T(caption_i)) for each pair i. Returns (N,) float32 on the CPU.

    model: a ``models.clip.CLIPModel`` (``models.clip.load.load_clip``); images: as ``to_pil`` takes them.
    """
    pil = to_pil(images)
    if len(pil) != len(captions):
        raise ValueError(f"{len(pil)} images but {len(captions)} captions; CLIP score needs one caption per image")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    size = model.config.vision.image_size
    out = []
    for start in range(0, len(pil), batch_size):
        pixels = preprocess(pil[start:start + batch_size], size=size).to(device, dtype)
        ids = tokenize_for(model, tokenizer, captions[start:start + batch_size]).to(device)
        image = F.normalize(model.image_embeds(pixels).float(), dim=-1)  # (b, P)
        text = F.normalize(model.text_embeds(ids).float(), dim=-1)  # (b, P)
        out.append((image * text).sum(-1).cpu())
    return torch.cat(out)


@dataclass(frozen=True)
class CLIPScore:
    """score: torchmetrics' convention, mean of 100 * max(cos, 0); mean_cosine: BK-SDM's; n: pairs."""

    score: float
    mean_cosine: float
    n: int


def clip_score(model, tokenizer: CLIPTokenizer, images, captions: Sequence[str], *, batch_size: int = 32,
               device: torch.device | str | None = None) -> CLIPScore:
    """CLIP score of images against their captions, in both conventions (module docstring)."""
    cos = pair_cosines(model, tokenizer, images, captions, batch_size=batch_size, device=device).double()
    return CLIPScore(score=float((100.0 * cos.clamp(min=0)).mean()), mean_cosine=float(cos.mean()), n=len(cos))


def load_clip_scorer(name: str = "ViT-g/14", *, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) by short name (``LOCAL_CLIPS``, ``models.clip.load.KNOWN_CLIPS``), hub id or local folder.

    Downloads once (the Hugging Face cache); offline without a cached copy it raises the one-line
    ``models.hub.HubDownloadError`` naming the URL and how to pass a folder instead. A ``LOCAL_CLIPS`` name
    whose folders are missing raises FileNotFoundError naming the folder.
    """
    from models.clip.load import load_clip_and_tokenizer
    if name in LOCAL_CLIPS:
        folder, tokenizer = LOCAL_CLIPS[name]
        for f in (folder, tokenizer):
            if not (f / ("config.json" if f == folder else "vocab.json")).is_file():
                raise FileNotFoundError(f"CLIP {name!r}: {f} is missing (the shapes CLIP ships there; "
                                        "benchmarks/train_t2i_clip.py trains it)")
        return load_clip_and_tokenizer(folder, tokenizer=tokenizer, kind="CLIPModel", dtype=dtype)
    return load_clip_and_tokenizer(name, kind="CLIPModel", dtype=dtype)
