"""Classifier-free guidance for conditional latent U-Nets, and the reproducible initial latent noise.

Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", arXiv 2207.12598, eq. 6)
mixes the conditional and the unconditional prediction of ONE network:

    eps~(z, c) = (1 + w) eps(z, c) - w eps(z)                       (their eq. 6, guidance strength w)
               = eps_uncond + s (eps_cond - eps_uncond)             with s = 1 + w (the "guidance scale")

so s = 1 is the plain conditional model (no unconditional pass is run) and s < 1 (w < 0) would push away from
the condition: refused. Stable Diffusion's "unconditional" input is the text encoding of the empty prompt,
or of the negative prompt when one is given; the two halves run as one batch [uncond; cond] in one forward.
The same mix applies to a v-prediction network's v (linear in eps at fixed x_t).

Initial noise: latent sample i of run ``seed`` is the first draw of ``IndexedNoise(seed, [i])`` (the DDPM
samplers' per-index streams, ``diffusion/samplers.py``), so an image does not depend on the batch it is drawn in
and an original and a pruned pipeline start from the same x_T.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Mapping, Sequence

import torch
from torch import nn

from diffusion.samplers import IndexedNoise


def check_guidance_scale(scale: float) -> float:
    """The scale s as a float; s < 1 is a one-line error (s = 1 means no guidance)."""
    scale = float(scale)
    if not scale >= 1.0:  # also catches NaN
        raise ValueError(f"guidance scale must be >= 1 (1 = no guidance, SD's default 7.5), got {scale}")
    return scale


def classifier_free_guidance(out_uncond: torch.Tensor, out_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """eps_uncond + s (eps_cond - eps_uncond) (Ho & Salimans 2022, eq. 6 with w = s - 1). Shapes (B, C, H, W)."""
    return out_uncond + scale * (out_cond - out_uncond)


@dataclass
class Conditioning:
    """What a conditional U-Net receives besides (x, t), for a batch of B samples.

    encoder_hidden_states: (B, L, D) text encoding for cross-attention, or None.
    added_cond_kwargs:     SDXL's {"text_embeds": (B, P), "time_ids": (B, 6)}, or None.
    class_labels:          (B,) int64 class ids (num_class_embeds models), or None.
    """

    encoder_hidden_states: torch.Tensor | None = None
    added_cond_kwargs: dict[str, torch.Tensor] | None = None
    class_labels: torch.Tensor | None = None

    def kwargs(self) -> dict:
        """Keyword arguments for ``unet(x, t, **kwargs)`` (only the present ones)."""
        out: dict = {}
        if self.encoder_hidden_states is not None:
            out["encoder_hidden_states"] = self.encoder_hidden_states
        if self.added_cond_kwargs is not None:
            out["added_cond_kwargs"] = self.added_cond_kwargs
        if self.class_labels is not None:
            out["class_labels"] = self.class_labels
        return out

    def select(self, rows: Sequence[int] | slice) -> "Conditioning":
        """The conditioning of a sub-batch (rows of every tensor)."""
        take = (lambda v: v[rows]) if isinstance(rows, slice) else (lambda v: v[list(rows)])
        return Conditioning(
            None if self.encoder_hidden_states is None else take(self.encoder_hidden_states),
            None if self.added_cond_kwargs is None else {k: take(v) for k, v in self.added_cond_kwargs.items()},
            None if self.class_labels is None else take(self.class_labels))


# The keyword inputs of a conditional U-Net besides (x, t), by name: the fields of ``Conditioning``.
CONDITION_KEYS = tuple(f.name for f in fields(Conditioning))


def check_condition_keys(cond: Mapping) -> None:
    """A one-line error naming every key of ``cond`` (U-Net keyword inputs) that is not in ``CONDITION_KEYS``."""
    unknown = sorted(set(cond) - set(CONDITION_KEYS))
    if unknown:
        raise ValueError(f"cond has keys {unknown} the U-Net does not take; known: {sorted(CONDITION_KEYS)}")


def _cat(a: Conditioning, b: Conditioning) -> dict:
    """The keyword arguments of the batch [a; b] (both must hold the same kinds of inputs)."""
    ka, kb = a.kwargs(), b.kwargs()
    if set(ka) != set(kb):
        raise ValueError(f"conditional and unconditional inputs differ in kind: {sorted(ka)} vs {sorted(kb)}")
    out = {}
    for key, va in ka.items():
        vb = kb[key]
        if isinstance(va, dict):
            out[key] = {k: torch.cat([va[k], vb[k]]) for k in va}
        else:
            out[key] = torch.cat([va, vb])
    return out


class GuidedDenoiser:
    """``model_fn(x_in, t)`` for ``diffusion.schedulers.sample_loop``: the U-Net's output under guidance.

    unet:   called as unet(x, t, **Conditioning.kwargs()) with t a (B,) tensor; returns (B, C, H, W).
    cond:   the conditional inputs; uncond: the unconditional ones (same B), needed when scale > 1.
    scale:  the guidance scale s >= 1; s = 1 runs only the conditional batch.
    The latents are cast to the U-Net's parameter dtype for the forward and the output back to x_in's dtype,
    so a half-precision U-Net works with a float32 scheduler.
    """

    def __init__(self, unet: nn.Module, cond: Conditioning, uncond: Conditioning | None = None,
                 scale: float = 1.0):
        self.scale = check_guidance_scale(scale)
        if self.scale > 1.0 and uncond is None:
            raise ValueError(f"guidance scale {self.scale} needs unconditional inputs (an empty or negative prompt)")
        self.unet, self.cond, self.uncond = unet, cond, uncond
        self.dtype = next((p.dtype for p in unet.parameters()), torch.float32) if isinstance(unet, nn.Module) \
            else torch.float32
        self.forwards = 0  # how many network calls were made (tests check that s = 1 skips the second half)

    def __call__(self, x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        B = x_in.shape[0]
        if self.scale == 1.0:
            self.forwards += 1
            out = self.unet(x_in.to(self.dtype), self._timesteps(t, B, x_in), **self.cond.kwargs())
            return out.to(x_in.dtype)
        x2 = torch.cat([x_in, x_in]).to(self.dtype)  # (2B, C, H, W): [uncond; cond] in one forward
        self.forwards += 1
        out = self.unet(x2, self._timesteps(t, 2 * B, x_in), **_cat(self.uncond, self.cond))
        out_uncond, out_cond = out.to(x_in.dtype).chunk(2)
        return classifier_free_guidance(out_uncond, out_cond, self.scale)

    @staticmethod
    def _timesteps(t: torch.Tensor, n: int, like: torch.Tensor) -> torch.Tensor:
        """The scheduler's scalar timestep as an (n,) tensor on the latents' device (its dtype kept:
        int64 for DDIM/DPM/PNDM, float32 for Euler's fractional timesteps)."""
        t = torch.as_tensor(t)
        return t.reshape(-1).expand(n).to(like.device) if t.numel() == 1 else t.to(like.device)


def initial_latents(seed: int, indices: Sequence[int], latent_shape: Sequence[int], *,
                    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Unit Gaussian x_T for the samples with global ``indices`` of run ``seed``: (N, *latent_shape).

    Sample i is the first draw of its own stream (``IndexedNoise``), so it is the same whatever batch it is
    drawn in; schedulers scale it by their ``init_noise_sigma`` themselves.
    """
    return IndexedNoise(seed, indices).randn(latent_shape, device=device, dtype=dtype)
