"""The one input check of every pruning method, run before any work (``prune`` and ``prune_layers`` call it first).

What a method is given must describe the network it prunes, or the result is quietly wrong rather than an
error: magnitude pruning of a model with an inf weight writes the inf on, and a gradient pass on 16x16 or
64x64 images of a 32x32 model runs (the U-Net is convolutional) but keeps other channels. So, for every
method alike, and with the caller's model untouched:

    the model       every weight materialised (not on the meta device) and finite (``models/integrity.py``);
    example inputs  a non-empty tuple whose first entry is a batch, (B, C, H, W) for an image model;
    data / images   (B, C, H, W), B >= 1, finite, in [-1, 1] (x0 of the diffusion), with the channels and
                    resolution of the example inputs, on the model's device; eps: the shape of the data.

Each failure is a one-line ``ValueError`` naming the tensor, or both shapes.
"""
from __future__ import annotations

import torch
from torch import nn

from models.integrity import check_weights
from pruning.conditional import ConditionalBatch, check_conditional_batch


def _shape(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _device(model: nn.Module) -> torch.device | None:
    return next((p.device for p in model.parameters()), None)


def check_images(model: nn.Module, images: torch.Tensor, like: torch.Tensor, *, name: str = "data") -> None:
    """``images`` is a non-empty finite (B, C, H, W) batch in [-1, 1] whose (C, H, W) is ``like``'s (the example
    input of one forward pass) and which sits on ``model``'s device."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"{name} must be a (B, C, H, W) batch of images, got {_shape(images)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is empty: {_shape(images)}; give at least one image")
    if isinstance(like, torch.Tensor) and like.dim() == 4 and images.shape[1:] != like.shape[1:]:
        raise ValueError(f"{name} has shape {_shape(images)} but the model's example input is {_shape(like)}: "
                         f"images of another channel count or resolution would rank other channels than the "
                         f"model's own inputs; give {tuple(like.shape[1:])} images")
    device = _device(model)
    if device is not None and images.device != device:
        raise ValueError(f"{name} is on {images.device} but the model on {device}; move one of them")
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{name} holds non-finite values (nan or inf)")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1 - 1e-5 or hi > 1 + 1e-5:  # the diffusion was trained on x0 in [-1, 1]
        raise ValueError(f"{name} must be images scaled to [-1, 1] (x0 of the diffusion), got values in "
                         f"[{lo:.3g}, {hi:.3g}]; images in [0, 1] become 2 * x - 1")


def check_example_inputs(model: nn.Module, example_inputs: tuple, image_model: bool) -> None:
    if not isinstance(example_inputs, (tuple, list)) or not example_inputs:
        raise ValueError("example_inputs must be a non-empty tuple of the model's positional inputs, e.g. (x, t)")
    x = example_inputs[0]
    if isinstance(x, torch.Tensor) and (x.dim() < 2 or (image_model and x.dim() != 4)):
        raise ValueError(f"example_inputs[0] has shape {_shape(x)}: it needs a batch dimension, e.g. "
                         f"(1, C, H, W){' = x[None]' if x.dim() == 3 else ''}")


def check_channel_inputs(model: nn.Module, example_inputs: tuple, data: torch.Tensor | ConditionalBatch | None = None,
                         eps: torch.Tensor | None = None) -> None:
    """``pruning.prune``'s inputs (``data``/``eps`` only where the method reads them; None otherwise). ``data`` is
    a batch of images x0, or a ``ConditionalBatch`` of latents and conditions (pruning/conditional.py), which a
    model taking conditions beyond (x, t) (its example inputs say so) must be given."""
    check_weights(model, "the model to prune")
    # An image model (our U-Net's config, or image data for the gradient pass) reads (B, C, H, W).
    check_example_inputs(model, example_inputs,
                         hasattr(getattr(model, "config", None), "image_size") or data is not None)
    if isinstance(data, ConditionalBatch):
        check_conditional_batch(data, example_inputs[0], _device(model))
    elif data is not None:
        conditions = [x for x in example_inputs[2:] if x is not None]
        if conditions:
            raise ValueError(f"the model takes {len(conditions)} condition input(s) besides (x, t) (its example "
                             "inputs): give data=ConditionalBatch(x0, encoder_hidden_states=..., class_labels=..., "
                             "added_cond_kwargs=...) (pruning/conditional.py) so that L_t is the conditional loss")
        check_images(model, data, example_inputs[0], name="data")
    x0 = data.x0 if isinstance(data, ConditionalBatch) else data
    if eps is not None:
        if x0 is None or not isinstance(eps, torch.Tensor) or eps.shape != x0.shape:
            raise ValueError(f"eps must have the shape of data {_shape(x0) if x0 is not None else None}, "
                             f"got {_shape(eps) if isinstance(eps, torch.Tensor) else repr(eps)}")
        if not bool(torch.isfinite(eps).all()):
            raise ValueError("eps holds non-finite values (nan or inf)")


def check_layer_inputs(model: nn.Module, images: torch.Tensor | None = None, calib=None) -> None:
    """``pruning.layers.prune_layers``' inputs: the model, and its clean images or calibration set."""
    check_weights(model, "the model to prune")
    like = model.example_inputs()[0]
    if images is not None:
        check_images(model, images, like, name="images")
    if calib is not None and calib.x_t.shape[1:] != like.shape[1:]:
        raise ValueError(f"the calibration set has shape {_shape(calib.x_t)} but the model's example input is "
                         f"{_shape(like)}")
