"""Euler's method on the probability-flow ODE in the sigma frame (Karras et al. 2022, "Elucidating the Design
Space of Diffusion-Based Generative Models", arXiv 2206.00364, Algorithm 2 with S_churn = 0, i.e. its
deterministic first-order sampler), with the discrete sigmas of a VP model (diffusers' ``EulerDiscreteScheduler``,
Karras sigmas off).

A VP model's x_t = alpha_t (x_0 + sigma eps) with sigma = sigma_VE = sqrt((1 - alpha_bar_t) / alpha_bar_t).
The scheduler's state is the VE variable x = x_t / alpha_t, whose ODE is (Karras et al. eq. 1 with the score of
eq. 3 and sigma(t) = t)

    dx / dsigma = (x - D(x; sigma)) / sigma,      D = the denoised estimate of x_0.

The network was trained on VP inputs, so ``scale_model_input`` hands it x / sqrt(sigma^2 + 1) = x_t
(alpha_t = 1 / sqrt(sigma^2 + 1)), and the start x_T is unit noise times ``init_noise_sigma``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from diffusion.schedulers.base import (Scheduler, SchedulerConfig, interp_sigmas, leading_timesteps,
                                       sigma_ve)


@dataclass(frozen=True)
class EulerConfig(SchedulerConfig):
    """diffusers ``EulerDiscreteScheduler`` fields. Only its defaults for the sigma options are implemented:
    linear interpolation of sigma_VE over t, discrete timesteps, a final sigma of zero."""

    timestep_spacing: str = "linspace"  # diffusers' default for this family (DDIM's and PNDM's is "leading")
    FIXED: ClassVar[dict[str, Any]] = {**SchedulerConfig.FIXED, "interpolation_type": "linear",
                                       "timestep_type": "discrete", "final_sigmas_type": "zero",
                                       "sigma_min": None, "sigma_max": None}


class EulerDiscrete(Scheduler):
    """Deterministic Euler over ``num_inference_steps`` steps.

    timesteps: (S,) float32 -- with "linspace" spacing they are NOT rounded (999, 888, ..., 0 for 10 steps),
               and the network receives the fractional values.
    sigmas:    (S + 1,) float32, sigma_VE at each timestep, then 0.
    """

    CLASS_NAME: ClassVar[str] = "EulerDiscreteScheduler"
    config_class: ClassVar[type[SchedulerConfig]] = EulerConfig

    def __init__(self, config: EulerConfig, num_inference_steps: int):
        super().__init__(config, num_inference_steps)
        T, S = config.num_train_timesteps, num_inference_steps
        if config.timestep_spacing == "linspace":
            ts = np.linspace(0, T - 1, S, dtype=np.float32)[::-1]
        elif config.timestep_spacing == "leading":
            ts = leading_timesteps(config, S).astype(np.float32)
        else:
            # "trailing" here keeps steps_offset out and rounds, then subtracts 1 (the reference's choice).
            ts = (np.arange(T, 0, -T / S).round() - 1).astype(np.float32)
        sigmas = interp_sigmas(ts, sigma_ve(self.alphas_cumprod))
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))  # (S + 1,)
        self.timesteps = torch.from_numpy(ts.copy())  # (S,) float32
        sigma_max = float(self.sigmas.max())
        # x_T's std: with "leading" spacing the reference adds the unit variance of the data (sqrt(sigma^2 + 1));
        # with "linspace"/"trailing" it uses sigma_max alone. The two differ by 0.2% at SD's sigma_max = 14.6.
        if config.timestep_spacing in ("linspace", "trailing"):
            self.init_noise_sigma = sigma_max
        else:
            self.init_noise_sigma = (sigma_max ** 2 + 1) ** 0.5

    def scale_model_input(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """x / sqrt(sigma_i^2 + 1): the VE state back to the VP input x_t the network was trained on."""
        return x / (self.sigmas[i] ** 2 + 1) ** 0.5

    def step(self, model_output: torch.Tensor, i: int, x: torch.Tensor) -> torch.Tensor:
        """One Euler step from sigma_i to sigma_{i+1} (Karras et al. 2022, Algorithm 2, lines 7-8, gamma = 0):

            D        = x - sigma eps                                   ("epsilon")
                     = x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) v  ("v_prediction")
            d        = (x - D) / sigma
            x_next   = x + (sigma_{i+1} - sigma_i) d

        model_output, x: (B, C, H, W). Returns x at sigma_{i+1} (the sample itself after the last step).
        """
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        x = x.float()  # the reference steps in float32 whatever the network's dtype
        if self.config.prediction_type == "epsilon":
            denoised = x - sigma * model_output
        else:
            denoised = x / (sigma ** 2 + 1) - sigma / (sigma ** 2 + 1) ** 0.5 * model_output
        d = (x - denoised) / sigma
        return x + (sigma_next - sigma) * d
