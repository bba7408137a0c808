"""DPM-Solver++(2M): the second-order multistep solver of the data-prediction ODE (Lu et al. 2022,
"DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models", arXiv 2211.01095,
Algorithm 2), with the timesteps and final-step rule of diffusers' ``DPMSolverMultistepScheduler``.

Symbols (the paper's): x_t = alpha_t x_0 + sigma_t eps, lambda_t = log(alpha_t / sigma_t) (half the log-SNR),
x_theta(x_t, t) the data prediction, h_i = lambda_{t_i} - lambda_{t_{i-1}}.
The discrete VP model gives alpha_t = 1 / sqrt(sigma_VE^2 + 1) and sigma_t = sigma_VE alpha_t, with
sigma_VE = sqrt((1 - alpha_bar_t) / alpha_bar_t) interpolated at each inference timestep.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from diffusion.schedulers.base import (Scheduler, SchedulerConfig, interp_sigmas, sigma_ve, x0_from_output)

SOLVER_TYPES = ("midpoint", "heun")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")


@dataclass(frozen=True)
class DPMSolverConfig(SchedulerConfig):
    """diffusers ``DPMSolverMultistepScheduler`` fields (algorithm_type "dpmsolver++", solver_order 1 or 2).

    lower_order_final:  take a first-order last step when there are fewer than 15 steps (stabler for few steps).
    euler_at_final:     always take a first-order last step.
    final_sigmas_type:  the noise level after the last step: "zero" (the clean sample; the last step is then
                        first order, as lambda = +inf there) or "sigma_min" (sigma_VE at t = 0).
    solver_type:        how the second-order term is formed: "midpoint" (Algorithm 2) or "heun".
    """

    timestep_spacing: str = "linspace"
    solver_order: int = 2
    solver_type: str = "midpoint"
    lower_order_final: bool = True
    euler_at_final: bool = False
    final_sigmas_type: str = "zero"

    FIXED: ClassVar[dict[str, Any]] = {**SchedulerConfig.FIXED, "algorithm_type": "dpmsolver++",
                                       "variance_type": None, "lambda_min_clipped": float("-inf")}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.solver_order not in (1, 2):
            raise ValueError(f"DPMSolverConfig: solver_order {self.solver_order} is not supported; supported: 1, 2")
        if self.solver_type not in SOLVER_TYPES:
            raise ValueError(f"DPMSolverConfig: solver_type {self.solver_type!r} is not supported; "
                             f"supported: {', '.join(SOLVER_TYPES)}")
        if self.final_sigmas_type not in FINAL_SIGMAS_TYPES:
            raise ValueError(f"DPMSolverConfig: final_sigmas_type {self.final_sigmas_type!r} is not supported; "
                             f"supported: {', '.join(FINAL_SIGMAS_TYPES)}")


class DPMSolverMultistep(Scheduler):
    """DPM-Solver++(2M) over ``num_inference_steps`` steps; keeps the previous data prediction."""

    CLASS_NAME: ClassVar[str] = "DPMSolverMultistepScheduler"
    config_class: ClassVar[type[SchedulerConfig]] = DPMSolverConfig

    def __init__(self, config: DPMSolverConfig, num_inference_steps: int):
        super().__init__(config, num_inference_steps)
        T, S = config.num_train_timesteps, num_inference_steps
        # S + 1 points from T-1 down to 0, the last (t = 0) dropped: 10 steps -> 999, 899, ..., 100.
        if config.timestep_spacing == "linspace":
            ts = np.linspace(0, T - 1, S + 1).round()[::-1][:-1].astype(np.int64)
        elif config.timestep_spacing == "leading":
            ratio = T // (S + 1)
            ts = (np.arange(S + 1) * ratio).round()[::-1][:-1].astype(np.int64) + config.steps_offset
        else:
            ts = np.arange(T, 0, -T / S).round().astype(np.int64) - 1
        sigmas_ve = sigma_ve(self.alphas_cumprod)
        sigma_last = 0.0 if config.final_sigmas_type == "zero" else float(sigmas_ve[0])
        sigmas = np.concatenate([interp_sigmas(ts, sigmas_ve), [sigma_last]]).astype(np.float32)
        self.sigmas = torch.from_numpy(sigmas)  # sigma_VE at t_0 > t_1 > ... and after the last step, (S + 1,)
        self.timesteps = torch.from_numpy(ts.copy())  # (S,) int64
        self.previous_x0: torch.Tensor | None = None  # x_theta at the previous step
        self.steps_taken = 0

    def _alpha_sigma_lambda(self, j: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(alpha, sigma, lambda) at the j-th noise level (lambda = +inf where sigma_VE = 0)."""
        alpha = 1 / (self.sigmas[j] ** 2 + 1) ** 0.5
        sigma = self.sigmas[j] * alpha
        return alpha, sigma, torch.log(alpha) - torch.log(sigma)

    def step(self, model_output: torch.Tensor, i: int, x: torch.Tensor) -> torch.Tensor:
        """From x at t_i (noise level i) to noise level i + 1. Algorithm 2 of Lu et al. 2022:

            first step (and a low-order final step):
                x_{t_i} = sigma_{t_i}/sigma_{t_{i-1}} x - alpha_{t_i} (e^{-h_i} - 1) x_theta_{i-1}
            then, with r_i = h_{i-1} / h_i:
                D_i     = (1 + 1/(2 r_i)) x_theta_{i-1} - 1/(2 r_i) x_theta_{i-2}
                x_{t_i} = sigma_{t_i}/sigma_{t_{i-1}} x - alpha_{t_i} (e^{-h_i} - 1) D_i

        (the paper's i-1 is this call's current level, i its next). model_output, x: (B, C, H, W).
        """
        cfg, S = self.config, self.num_inference_steps
        is_last = i == S - 1
        # Fewer than 15 steps make the last second-order correction unstable; with a final sigma of zero the
        # correction is undefined (h = +inf, r = 0), so that case is always first order.
        first_order_final = is_last and (cfg.euler_at_final or (cfg.lower_order_final and S < 15)
                                         or cfg.final_sigmas_type == "zero")
        alpha_s, sigma_s, lambda_s = self._alpha_sigma_lambda(i)
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(i + 1)
        x0 = x0_from_output(model_output, x, alpha_s, sigma_s, cfg.prediction_type)  # x_theta(x, t_i)
        h = lambda_t - lambda_s
        first_order = cfg.solver_order == 1 or self.previous_x0 is None or first_order_final
        if first_order:
            # DPM-Solver++(1), the first update of Algorithm 2; it is DDIM written in lambda.
            x_next = (sigma_t / sigma_s) * x - alpha_t * (torch.exp(-h) - 1.0) * x0
        else:
            _, _, lambda_prev = self._alpha_sigma_lambda(i - 1)
            r = (lambda_s - lambda_prev) / h  # r_i = h_{i-1} / h_i
            D1 = (x0 - self.previous_x0) / r  # a finite difference of x_theta in lambda, scaled by h
            if cfg.solver_type == "midpoint":
                D = x0 + 0.5 * D1  # = (1 + 1/(2r)) x_theta_{i-1} - 1/(2r) x_theta_{i-2}   (Algorithm 2)
                x_next = (sigma_t / sigma_s) * x - alpha_t * (torch.exp(-h) - 1.0) * D
            else:
                # Heun-type second-order term: the exact integral of a linear-in-lambda x_theta.
                x_next = ((sigma_t / sigma_s) * x - alpha_t * (torch.exp(-h) - 1.0) * x0
                          + alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0) * D1)
        self.previous_x0 = x0
        self.steps_taken += 1
        return x_next
