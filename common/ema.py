"""Exponential moving average of model weights (Polyak averaging), as the DDPM and DDIM codebases keep it.

    shadow <- mu * shadow + (1 - mu) * theta        after every optimizer step, from step 0 (no warm-up)

The shadow is a full copy of the model, so it can be sampled from directly and saved as a state dict.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for shadow, param in zip(self.model.parameters(), model.parameters()):
            shadow.lerp_(param.detach(), 1.0 - self.decay)  # shadow + (1 - mu)(theta - shadow)
        for shadow, buf in zip(self.model.buffers(), model.buffers()):
            shadow.copy_(buf)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state_dict) -> None:
        self.model.load_state_dict(state_dict)
