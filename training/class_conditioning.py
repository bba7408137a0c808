"""Class labels for train.py's latent family: the embedded class-conditional model and the ImageNet LDM's layout.

A class-conditional latent U-Net reads its label one of two ways (models/pipelines/text_to_image.py builds
both at sampling time):

    class token     the CompVis ImageNet LDM (cin256-v2): a ClassEmbedder maps y to one token
                    tau(y) = E[y] in R^{1 x D} that cross-attention reads (Rombach et al. 2022, arXiv
                    2112.10752, Sec. 3.3 and Tab. 13's "class-conditional, cross-attention"); its last row is
                    "no class", the unconditional input of classifier-free guidance
    num_class_embeds diffusers' class embedding, added to the time embedding; no unconditional row

``--model class-shapes`` is the embedded class-conditional model: the text-to-image teacher's U-Net
architecture (models/sd/presets.py ``t2i-shapes``: cross-attention at two levels and the mid block) and its
VAE, conditioned on the shape kind through a class token instead of a caption. Its labels:

    y = k  for a shapes image whose shapes are all of kind k (data/procedural.py SHAPES: disc, square,
           triangle, ring); images that mix kinds have no single label and are left out: of the 20,000
           train images 8,748 remain (2,063 discs, 2,214 squares, 2,297 triangles, 2,174 rings)
    y = 4  "no class" (the class-dropout input, as SD's empty caption)

Its class embedder is a fixed table drawn once from N(0, 1) with CLASS_EMBEDDER_SEED and frozen, as SD's
text encoder is frozen. The LDM trains its table jointly with the U-Net (latent-diffusion's cin256-v2 config,
``cond_stage_trainable: true``); with one token per class nothing is lost by freezing it: cross-attention over
a single token returns W_o W_v E[y] whatever the softmax, and W_v is trained, so any per-class vector of the
cross-attention output is reachable from linearly independent codes (5 random codes in 64 dimensions are).
A pipeline folder's own class_embedder/ (a pruned cin256 being fine-tuned) is frozen the same way.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from common.cli import UserError
from data.captions import CaptionAttributes
from data.procedural import SHAPES

CLASS_EMBEDDER_SEED = 0
# The single-kind images of the 20,000-image train split (training/latent.py TRAIN_IMAGES; counts in the module
# docstring): what a class-conditional calibration set or gradient batch can draw from at most.
SINGLE_KIND_TRAIN_IMAGES = 8748
SHAPES_CLASS_DIM = 64  # the t2i-shapes U-Net's cross_attention_dim (the tiny CLIP's width)


def shapes_class_embedder():
    """The class-shapes model's frozen class table: len(SHAPES) kinds + "no class", 64 wide, N(0, 1)."""
    from models.pipelines.class_embedder import ClassEmbedder, ClassEmbedderConfig

    config = ClassEmbedderConfig(n_classes=len(SHAPES) + 1, embed_dim=SHAPES_CLASS_DIM,
                                 unconditional_class=len(SHAPES))
    embedder = ClassEmbedder(config)
    g = torch.Generator().manual_seed(CLASS_EMBEDDER_SEED)
    with torch.no_grad():
        embedder.embedding.weight.copy_(torch.randn(embedder.embedding.weight.shape, generator=g))
    return embedder.eval().requires_grad_(False)


def shapes_class_labels(attrs: Sequence[CaptionAttributes]) -> tuple[list[int], list[int]]:
    """(rows, labels): the images whose shapes are all of one kind, and that kind (module docstring)."""
    rows, labels = [], []
    for i, a in enumerate(attrs):
        if len(a.kinds) == 1:
            rows.append(i)
            labels.append(next(iter(a.kinds)))
    return rows, labels


def check_class_pipeline(pipe, source: str) -> None:
    """A class-conditional model trained on the shapes needs a label for every kind, and its "no class" row (the
    class-dropout input) must not be one of them: labels 0..len(SHAPES)-1 are the kinds."""
    if pipe.num_classes < len(SHAPES):
        raise UserError(f"{source}: the model has {pipe.num_classes} classes, but the shapes data labels images by "
                        f"shape kind ({len(SHAPES)} classes: {', '.join(SHAPES)})")
    embedder = getattr(pipe, "class_embedder", None)
    unconditional = None if embedder is None else embedder.config.unconditional_class
    if unconditional is not None and unconditional < len(SHAPES):
        raise UserError(f"{source}: class_embedder's unconditional_class is {unconditional}, which is the label of "
                        f"the kind {SHAPES[unconditional]!r}; its \"no class\" row must lie outside the kinds' labels "
                        f"0..{len(SHAPES) - 1}")


def class_condition(pipe, labels: torch.Tensor, dropped: torch.Tensor) -> dict[str, Any]:
    """U-Net keyword inputs for class ``labels`` (B,), with the ``dropped`` rows (B,) bool set to "no class"
    (a class embedder's unconditional row; a num_class_embeds U-Net has none, so nothing is dropped)."""
    embedder = pipe.class_embedder
    if embedder is None:
        return {"class_labels": labels}
    if embedder.config.unconditional_class is not None:
        no_class = torch.full_like(labels, embedder.config.unconditional_class)
        labels = torch.where(dropped.to(labels.device), no_class, labels)
    with torch.no_grad():  # on the table's device (the frozen parts may live on another than the U-Net)
        return {"encoder_hidden_states": embedder(labels.to(embedder.embedding.weight.device))}
