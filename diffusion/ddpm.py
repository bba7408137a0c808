"""The DDPM forward process and its training objective (Ho et al. 2020).

Symbol table (code name == paper symbol):

    x0, x_t                   clean image, noisy image at step t (images scaled to [-1, 1])
    eps                       standard Gaussian noise, eps ~ N(0, I)
    eps_theta(x_t, t)         the network's prediction of eps (``model(x_t, t)``)
    alpha_bar_t               ``schedule.alpha_bars[t]``
    L_simple                  E_{t, x0, eps} || eps - eps_theta(sqrt(alpha_bar_t) x0 + sqrt(1-alpha_bar_t) eps, t) ||^2  (eq. 14)

The squared norm is reduced over pixels either by "sum" (the DDIM codebase and Diff-Pruning; the loss
of one CIFAR image is then ~3072x the mean, which makes grad-norm clipping at 1.0 strong) or by "mean"
(diffusers); ``DiffusionConfig.loss_reduction`` chooses. Both are averaged over the batch.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from diffusion.schedule import Schedule


def q_sample(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Sample x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x0, (1 - alpha_bar_t) I)   (Ho et al. eq. 4).

    x0, eps: (B, C, H, W); t: (B,) integer timesteps. Returns x_t (B, C, H, W).
    """
    alpha_bar_t = Schedule.at(schedule.alpha_bars, t, x0)
    return alpha_bar_t.sqrt() * x0 + (1.0 - alpha_bar_t).sqrt() * eps


def q_posterior(schedule: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
    """Mean and variance of q(x_{t-1} | x_t, x_0)   (Ho et al. eq. 6-7).

    mu_tilde = beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t) x0 + (1 - alpha_bar_{t-1}) sqrt(alpha_t) / (1 - alpha_bar_t) x_t
    beta_tilde = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t
    """
    mean = Schedule.at(schedule.posterior_coef_x0, t, x_t) * x0 + Schedule.at(schedule.posterior_coef_xt, t, x_t) * x_t
    return mean, Schedule.at(schedule.posterior_variance, t, x_t)


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: float | torch.Tensor) -> torch.Tensor:
    """Invert eq. 4 for x0 given a noise estimate: x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t).

    x_t, eps: (B, C, H, W). alpha_bar_t: a Python float (samplers: one t for the whole batch, computed in
    float64 before it meets the tensor) or a tensor broadcastable to x_t (``Schedule.at(schedule.alpha_bars, t, x_t)``).
    """
    if isinstance(alpha_bar_t, torch.Tensor):
        return (x_t - (1.0 - alpha_bar_t).sqrt() * eps) / alpha_bar_t.sqrt()
    return (x_t - math.sqrt(1.0 - alpha_bar_t) * eps) / math.sqrt(alpha_bar_t)


def eps_loss_per_sample(model: nn.Module, schedule: Schedule, x0: torch.Tensor, t: torch.Tensor,
                        eps: torch.Tensor, reduction: str | None = None) -> torch.Tensor:
    """|| eps - eps_theta(x_t, t) ||^2 for each sample (Ho et al. eq. 14), reduced over C, H, W.

    reduction: "sum" or "mean" over pixels (default: the schedule's ``loss_reduction``). The model is
    called with float timesteps, as the DDIM codebase does. Returns (B,).
    """
    reduction = reduction or schedule.config.loss_reduction
    x_t = q_sample(schedule, x0, t, eps)
    err = (eps - model(x_t, t.float())) ** 2  # (B, C, H, W)
    return err.sum(dim=(1, 2, 3)) if reduction == "sum" else err.mean(dim=(1, 2, 3))


def eps_loss(model: nn.Module, schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
             reduction: str | None = None) -> torch.Tensor:
    """L_simple on a batch: the per-sample loss averaged over the batch (a scalar)."""
    return eps_loss_per_sample(model, schedule, x0, t, eps, reduction).mean()


def sample_timesteps(batch_size: int, num_timesteps: int, generator: torch.Generator, antithetic: bool = True) -> torch.Tensor:
    """Training timesteps. Antithetic (the DDIM codebase): draw B/2+1 values t and use [t, T-1-t][:B],
    which lowers the variance of the batch loss; otherwise i.i.d. uniform on {0, ..., T-1}."""
    if not antithetic:
        return torch.randint(0, num_timesteps, (batch_size,), generator=generator)
    t = torch.randint(0, num_timesteps, (batch_size // 2 + 1,), generator=generator)
    return torch.cat([t, num_timesteps - 1 - t])[:batch_size]


def stratified_timesteps(n: int, num_timesteps: int, generator: torch.Generator) -> torch.Tensor:
    """n integer timesteps, one uniform draw inside each of n equal bins of [0, T), in shuffled order, so
    every part of the chain is represented (held-out losses, layer-pruning calibration). Returns (n,) int64.
    Draws n float64 uniforms, then one permutation, from ``generator``."""
    u = (torch.arange(n, dtype=torch.float64) + torch.rand(n, generator=generator, dtype=torch.float64)) / n
    return (u * num_timesteps).long().clamp_(0, num_timesteps - 1)[torch.randperm(n, generator=generator)]


class HeldOutLoss:
    """The held-out denoising loss: eps-MSE over a FIXED, seeded set of (x0, t, eps) triples.

    A quality metric that needs no external weights: two models evaluated with the same HeldOutLoss see
    exactly the same noisy inputs. The triples are drawn once from ``seed``: images are the first
    ``num_images`` of ``images`` (held-out data), each paired with ``draws`` timesteps spread over
    [0, T) by stratified sampling and fresh noise. The reported value uses the "mean" reduction
    (per-pixel MSE), so it is comparable across resolutions.
    """

    def __init__(self, images: torch.Tensor, schedule: Schedule, *, draws: int = 4, seed: int = 0):
        if images.dim() != 4 or images.shape[0] == 0:
            raise ValueError(f"held-out images must be a non-empty (N, C, H, W) batch, got shape {tuple(images.shape)}")
        g = torch.Generator().manual_seed(seed)
        n, T = images.shape[0], schedule.num_timesteps
        self.schedule = schedule
        self.x0 = images.repeat(draws, 1, 1, 1)  # (N*draws, C, H, W)
        self.t = stratified_timesteps(n * draws, T, g)  # (N*draws,)
        self.eps = torch.randn(self.x0.shape, generator=g)

    @torch.no_grad()
    def __call__(self, model: nn.Module, batch_size: int = 64) -> float:
        """Mean per-pixel eps-MSE of ``model`` (put in eval mode by the caller) over all triples."""
        device = next(model.parameters()).device
        total = 0.0
        for i in range(0, self.x0.shape[0], batch_size):
            sl = slice(i, i + batch_size)
            per = eps_loss_per_sample(model, self.schedule, self.x0[sl].to(device), self.t[sl].to(device),
                                      self.eps[sl].to(device), reduction="mean")
            total += per.double().sum().item()
        return total / self.x0.shape[0]
