"""Noise schedules: beta_t for t = 0..T-1 and the quantities derived from it.

Symbols (Ho et al. 2020, "Denoising Diffusion Probabilistic Models"; code indices t = 0..T-1):

    beta_t            variance of step t of the forward process q(x_t | x_{t-1})      (eq. 2)
    alpha_t           1 - beta_t
    alpha_bar_t       prod_{s<=t} alpha_s, so q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)  (eq. 4)

The DDPM paper numbers steps 1..T; like the DDIM codebase and diffusers we number them 0..T-1, so
paper step t is code index t-1. A schedule must not be changed once checkpoints were trained with it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULES = ("linear", "cosine", "scaled_linear")


@dataclass(frozen=True)
class DiffusionConfig:
    """The forward process. ``loss_reduction`` says how the eps-MSE is reduced over pixels:
    "sum" (the DDIM codebase and Diff-Pruning: sum over C,H,W, mean over the batch) or
    "mean" (diffusers / improved-diffusion: mean over every element)."""

    num_timesteps: int = 1000
    schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    loss_reduction: str = "sum"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown beta schedule {self.schedule!r}; choose one of {SCHEDULES}")
        if self.loss_reduction not in ("sum", "mean"):
            raise ValueError(f"loss_reduction must be 'sum' or 'mean', got {self.loss_reduction!r}")
        if self.num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {self.num_timesteps}")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """beta_t linear in t from beta_start to beta_end (Ho et al. 2020, Sec. 4). Computed in float64."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = f(t)/f(0), f(t) = cos((t/T + s)/(1 + s) * pi/2)^2,
    beta_t = 1 - alpha_bar(t+1)/alpha_bar(t), clipped at max_beta to avoid a singularity at t = T."""
    def f(t: float) -> float:
        return math.cos((t / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2
    betas = [min(1 - f(t + 1) / f(t), max_beta) for t in range(num_timesteps)]
    return torch.tensor(betas, dtype=torch.float64)


class Schedule:
    """Precomputed schedule tensors (float64 internally; ``at`` gathers float32 per-sample factors)."""

    def __init__(self, config: DiffusionConfig = DiffusionConfig()):
        self.config = config
        if config.schedule == "linear":
            betas = linear_betas(config.num_timesteps, config.beta_start, config.beta_end)
        elif config.schedule == "scaled_linear":  # latent diffusion / Stable Diffusion: sqrt(beta_t) linear in t
            betas = linear_betas(config.num_timesteps, config.beta_start ** 0.5, config.beta_end ** 0.5) ** 2
        else:
            betas = cosine_betas(config.num_timesteps)
        self.num_timesteps = config.num_timesteps
        self.betas = betas  # beta_t, (T,)
        self.alphas = 1.0 - betas  # alpha_t
        self.alpha_bars = torch.cumprod(self.alphas, dim=0)  # alpha_bar_t
        # alpha_bar_{t-1}, with alpha_bar_{-1} = 1 (no noise before the first step)
        self.alpha_bars_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bars[:-1]])
        # Posterior q(x_{t-1} | x_t, x_0) = N(mu_tilde, beta_tilde I), Ho et al. eq. 6-7
        self.posterior_variance = betas * (1.0 - self.alpha_bars_prev) / (1.0 - self.alpha_bars)  # beta_tilde_t
        self.posterior_coef_x0 = betas * self.alpha_bars_prev.sqrt() / (1.0 - self.alpha_bars)
        self.posterior_coef_xt = (1.0 - self.alpha_bars_prev) * self.alphas.sqrt() / (1.0 - self.alpha_bars)

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_bar_t for integer timesteps t (any shape), with alpha_bar_{-1} = 1 (DDIM's last step)."""
        t = t.long()
        padded = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bars])
        return padded.to(t.device)[t + 1]

    @staticmethod
    def at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t] reshaped to (B, 1, 1, 1) to broadcast over an image batch ``like``."""
        out = values.to(like.device)[t.long()].to(like.dtype)
        return out.reshape(-1, *([1] * (like.dim() - 1)))


def training_schedule(scheduler, loss_reduction: str = "mean", *, source: str = "scheduler") -> Schedule:
    """The forward process a pipeline's scheduler config describes (a ``diffusion.schedulers`` SchedulerConfig
    or its scheduler_config.json dict): the schedule an SD-family U-Net was trained with (SD: scaled_linear,
    beta 0.00085..0.012, T = 1000). Only the eps-prediction, linear / scaled_linear case is a training schedule
    here; anything else is a one-line ValueError naming ``source``."""
    from diffusion.schedulers.base import SchedulerConfig

    config = scheduler if isinstance(scheduler, SchedulerConfig) else SchedulerConfig.from_diffusers(dict(scheduler))
    if config.prediction_type != "epsilon" or config.beta_schedule not in ("linear", "scaled_linear") \
            or config.trained_betas is not None:
        raise ValueError(f"{source}: supported are eps prediction with a linear or scaled_linear beta schedule, not "
                         f"prediction_type={config.prediction_type!r}, beta_schedule={config.beta_schedule!r}"
                         + (" with trained_betas" if config.trained_betas is not None else ""))
    return Schedule(DiffusionConfig(num_timesteps=config.num_train_timesteps, schedule=config.beta_schedule,
                                    beta_start=config.beta_start, beta_end=config.beta_end,
                                    loss_reduction=loss_reduction))
