"""DDIM for latent diffusion (Song et al. 2021, "Denoising Diffusion Implicit Models"), deterministic (eta = 0).

The DDPM family's own DDIM lives in ``diffusion/samplers.py`` (float64 schedule, the DDIM codebase's
timestep sub-sequences). This one follows the conventions that Stable Diffusion's scheduler_config.json
files assume (diffusers' ``DDIMScheduler``): float32 alphas_cumprod, "leading" spacing with a
``steps_offset`` (SD-1: 901, 801, ..., 1 for 10 steps), a previous timestep of t - T // S whatever the
spacing, and ``set_alpha_to_one`` deciding alpha_bar after the last step (1, or alpha_bar_0 as SD does).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from diffusion.schedulers.base import (Scheduler, SchedulerConfig, eps_from_output, leading_timesteps,
                                       trailing_timesteps, vp_coefficients, x0_from_output)


@dataclass(frozen=True)
class DDIMConfig(SchedulerConfig):
    """diffusers ``DDIMScheduler`` fields.

    set_alpha_to_one:  alpha_bar after the final step is 1 (True) or alpha_bar_0 (False, SD's choice).
    clip_sample:       clamp the x_0 estimate to [-clip_sample_range, clip_sample_range] (SD: False).
    """

    set_alpha_to_one: bool = True
    clip_sample: bool = True
    clip_sample_range: float = 1.0

    FIXED: ClassVar[dict[str, Any]] = {**SchedulerConfig.FIXED, "eta": 0.0}


class DDIM(Scheduler):
    """Deterministic DDIM over ``num_inference_steps`` steps."""

    CLASS_NAME: ClassVar[str] = "DDIMScheduler"
    config_class: ClassVar[type[SchedulerConfig]] = DDIMConfig

    def __init__(self, config: DDIMConfig, num_inference_steps: int):
        super().__init__(config, num_inference_steps)
        T, S = config.num_train_timesteps, num_inference_steps
        if config.timestep_spacing == "leading":
            ts = leading_timesteps(config, S)
        elif config.timestep_spacing == "linspace":
            ts = np.linspace(0, T - 1, S).round()[::-1].astype(np.int64)
        else:
            ts = trailing_timesteps(config, S)
        self.timesteps = torch.from_numpy(ts.copy())  # (S,) int64, highest first
        self.stride = T // S  # the previous timestep is t - stride, for every spacing
        # alpha_bar "at t = -1", used after the final step.
        self.final_alpha_bar = torch.tensor(1.0) if config.set_alpha_to_one else self.alphas_cumprod[0]

    def step(self, model_output: torch.Tensor, i: int, x: torch.Tensor) -> torch.Tensor:
        """One DDIM step from t = timesteps[i] to t_prev = t - T // S (Song et al. 2021, eq. 12, sigma_t = 0):

            x_prev = sqrt(alpha_bar_prev) x0_pred + sqrt(1 - alpha_bar_prev) eps_pred

        model_output, x: (B, C, H, W). Returns x at t_prev.
        """
        cfg = self.config
        t = int(self.timesteps[i])
        t_prev = t - self.stride
        alpha_bar = self.alphas_cumprod[t]
        alpha_bar_prev = self.alphas_cumprod[t_prev] if t_prev >= 0 else self.final_alpha_bar
        alpha_t, sigma_t = vp_coefficients(alpha_bar)
        x0_pred = x0_from_output(model_output, x, alpha_t, sigma_t, cfg.prediction_type)
        eps_pred = eps_from_output(model_output, x, alpha_t, sigma_t, cfg.prediction_type)
        if cfg.clip_sample:
            # Only x0_pred is clamped; eps_pred keeps the network's value (the reference's default).
            x0_pred = x0_pred.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
        alpha_prev, sigma_prev = vp_coefficients(alpha_bar_prev)
        return alpha_prev * x0_pred + sigma_prev * eps_pred  # eq. 12 with sigma_t = 0
