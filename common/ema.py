"""Exponential moving average of model weights (Polyak averaging), with the latent-diffusion warm-up.

    mu_n   = min(mu, (1 + n) / (10 + n))                 at update n = 1, 2, ... (warm-up, the default)
    shadow <- mu_n * shadow + (1 - mu_n) * theta        after every optimizer step

The warm-up is the one of the latent-diffusion codebase's ``LitEma`` (CompVis/latent-diffusion,
ldm/modules/ema.py: num_updates is incremented before the decay is computed, so the first update uses
2/11). Without it (``warmup=False``, the DDPM / DDIM codebases' EMA) the shadow keeps mu^n of the starting
weights after n updates: 0.99^200 = 13% after a 200-step fine-tune, which penalises a poor starting point
(a freshly pruned or re-initialised model) for as long as the budget lasts. With it, the weight of the
starting point after n updates is prod_{k=1..n} mu_k = 10! (n+1)! / (n+10)! while mu_k < mu: 5e-15 at
n = 200, so the shadow is an average over the recent weights only.

The shadow is a full copy of the model, so it can be sampled from directly and saved as a state dict. The
update count ``num_updates`` is NOT part of that state dict (it must load into a plain model); a resumed run
sets it to the number of optimizer steps already taken (one update per step), which makes the resume exact.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float, *, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0  # n: updates applied so far (= optimizer steps taken)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """mu_n of the NEXT update (n = num_updates + 1), the module docstring's formula."""
        if not self.warmup:
            return self.decay
        n = self.num_updates + 1
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        mu = self.current_decay()
        for shadow, param in zip(self.model.parameters(), model.parameters()):
            shadow.lerp_(param.detach(), 1.0 - mu)  # shadow + (1 - mu_n)(theta - shadow)
        for shadow, buf in zip(self.model.buffers(), model.buffers()):
            shadow.copy_(buf)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state_dict, num_updates: int | None = None) -> None:
        """Load the shadow weights; ``num_updates`` (the steps already taken) continues the warm-up exactly."""
        self.model.load_state_dict(state_dict)
        if num_updates is not None:
            if num_updates < 0:
                raise ValueError(f"EMA num_updates must be >= 0, got {num_updates}")
            self.num_updates = int(num_updates)
