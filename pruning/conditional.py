"""The gradient batch of a conditional latent U-Net: clean latents x0 together with each sample's condition c.

The gradient methods (taylor, taylor-first-order, diff-pruning) accumulate G = sum_{t < T'} grad_theta L_t
(``pruning/importance.py``). For a text-to-image or class-conditional U-Net the loss is the conditional one the
network was trained on (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models",
eq. 3, the conditional L_LDM):

    L_t = E_b || eps_b - eps_theta(sqrt(abar_t) x0_b + sqrt(1 - abar_t) eps_b, t, c_b) ||^2

so every x0_b travels with its own c_b: the prompt embeddings (``encoder_hidden_states``), the class label, or
SDXL's ``added_cond_kwargs``. Diff-Pruning's threshold rule over t is unchanged (one noise draw, the same t
for the whole batch, stop at the first L_t < thr * max L). ``ConditionalBatch`` holds one such batch:

    data = ConditionalBatch(x0=latents, encoder_hidden_states=text)           # SD-1/2: (B, 4, h, w), (B, 77, D)
    model, report = prune(unet, unet.example_inputs(), ChannelPruning(method="diff-pruning"), data=data)

x0 are latents (the VAE's means times its scaling factor), not images: they are not range-checked.
The text encoder's outputs are inputs here, never pruned (``pruning/trace/tracer.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from diffusion.guidance import Conditioning


@dataclass(frozen=True)
class ConditionalBatch:
    """x0 (B, C, h, w) clean latents and the keyword inputs of ``unet(x_t, t, **...)`` for the same B samples:
    encoder_hidden_states (B, M, D), class_labels (B,) int64, added_cond_kwargs {"text_embeds": (B, E),
    "time_ids": (B, 6)}. Absent conditions are None."""

    x0: torch.Tensor
    encoder_hidden_states: torch.Tensor | None = None
    class_labels: torch.Tensor | None = None
    added_cond_kwargs: Mapping[str, torch.Tensor] | None = None

    @property
    def conditioning(self) -> Conditioning:
        """The condition as ``diffusion.guidance.Conditioning`` (its ``select`` takes rows of every tensor)."""
        added = None if self.added_cond_kwargs is None else dict(self.added_cond_kwargs)
        return Conditioning(encoder_hidden_states=self.encoder_hidden_states, added_cond_kwargs=added,
                            class_labels=self.class_labels)


def split_data(data: torch.Tensor | ConditionalBatch | None) -> tuple[torch.Tensor | None, Conditioning | None]:
    """(x0, condition or None) of what ``prune`` was given as ``data``."""
    if isinstance(data, ConditionalBatch):
        return data.x0, data.conditioning
    return data, None


def _named_tensors(batch: ConditionalBatch) -> list[tuple[str, torch.Tensor]]:
    out = [(name, getattr(batch, name)) for name in ("encoder_hidden_states", "class_labels")]
    out += [(f"added_cond_kwargs[{k!r}]", v) for k, v in (batch.added_cond_kwargs or {}).items()]
    return [(name, t) for name, t in out if t is not None]


def check_conditional_batch(batch: ConditionalBatch, like: torch.Tensor | None, device: torch.device | None) -> None:
    """One-line errors, before any work: x0 a finite (B, C, h, w) batch of the example input's (C, h, w); every
    condition a tensor with B rows, finite, on the model's device."""
    x0 = batch.x0
    if not isinstance(x0, torch.Tensor) or x0.dim() != 4 or x0.shape[0] == 0:
        shape = tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
        raise ValueError(f"data.x0 must be a non-empty (B, C, h, w) batch of latents, got {shape}")
    if isinstance(like, torch.Tensor) and like.dim() == 4 and x0.shape[1:] != like.shape[1:]:
        raise ValueError(f"data.x0 has shape {tuple(x0.shape)} but the model's example input is {tuple(like.shape)}; "
                         f"give {tuple(like.shape[1:])} latents")
    B = x0.shape[0]
    for name, t in [("x0", x0), *_named_tensors(batch)]:
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"data.{name} must be a tensor, got {type(t).__name__}")
        if t.dim() == 0 or t.shape[0] != B:
            raise ValueError(f"data.{name} has shape {tuple(t.shape)}: it needs one row per latent (B = {B})")
        if device is not None and t.device != device:
            raise ValueError(f"data.{name} is on {t.device} but the model on {device}; move one of them")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"data.{name} holds non-finite values (nan or inf)")
