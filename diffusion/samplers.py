"""Reverse-process samplers for an eps-prediction model: DDIM (Song et al. 2021) and ancestral DDPM (Ho et al. 2020).

Symbols (as in ``diffusion/ddpm.py``; code timesteps t = 0..T-1):

    x_t                     the image at step t; x_T ~ N(0, I) starts the chain
    eps_theta(x_t, t)       the model's noise prediction, ``model(x_t, t)`` with FLOAT timesteps (as the DDIM codebase)
    alpha_bar_t             ``schedule.alpha_bars[t]``, with alpha_bar_{-1} = 1 (the image itself)
    tau_1 < ... < tau_S     the DDIM sub-sequence of timesteps (``timesteps``, ascending, see ``ddim_timesteps``)
    sigma_t                 std of the fresh noise z ~ N(0, I) added at a step

Noise and reproducibility. Evaluation compares two models on the SAME initial noise (SSIM consistency)
and splits N samples into batches, shards and resumed runs. So the noise of sample i must not depend on
which other samples share its batch: ``IndexedNoise`` gives every sample index its own random stream,
from which x_T is the first draw and the per-step noise z the following ones. Sample i is then the same
whether generated alone, in any batch, in any process, on any device.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from diffusion.ddpm import predict_x0
from diffusion.schedule import Schedule

SAMPLERS = ("ddim", "ddpm")
SKIP_TYPES = ("uniform", "quad")
DDPM_VARIANCES = ("beta", "beta_tilde")

# Sample i of seed s draws from torch.Generator().manual_seed(s * NOISE_SEED_STRIDE + i). The stride is a
# prime above any index we generate, so (seed, index) pairs never share a stream while index < stride.
NOISE_SEED_STRIDE = 1_000_003

NoiseFn = Callable[[torch.Tensor], torch.Tensor]


class IndexedNoise:
    """Standard Gaussian noise with one random stream per sample index.

    Each index i owns a CPU ``torch.Generator`` seeded with ``seed * 1_000_003 + i``. Noise is drawn in
    float32 on the CPU, one sample at a time, and only then moved to the target device and dtype, so the
    numbers do not depend on batch composition, device or process. Draw order per sample: the first
    ``randn`` (x_T), then one draw per call of the object (the sampler's per-step noise).

    seed:    non-negative run seed.
    indices: the global sample indices of the batch, in batch order (each in [0, 1_000_003)).
    """

    def __init__(self, seed: int, indices: Sequence[int]):
        self.indices = [int(i) for i in indices]
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        bad = [i for i in self.indices if not 0 <= i < NOISE_SEED_STRIDE]
        if bad:
            raise ValueError(f"sample indices must lie in [0, {NOISE_SEED_STRIDE}), got {bad[:5]}")
        self.seed = int(seed)
        self.generators = [torch.Generator().manual_seed(self.seed * NOISE_SEED_STRIDE + i) for i in self.indices]

    def randn(self, shape_per_sample: Sequence[int], *, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The next draw of every sample's stream. Returns (B, *shape_per_sample), B = len(indices)."""
        shape = tuple(int(s) for s in shape_per_sample)
        z = torch.stack([torch.randn(shape, generator=g) for g in self.generators]) if self.generators \
            else torch.empty((0, *shape))
        return z.to(device=device, dtype=dtype)

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        """A ``noise_fn``: the next draw shaped like ``like`` (B, C, H, W), on its device and dtype."""
        if like.shape[0] != len(self.generators):
            raise ValueError(f"batch of {like.shape[0]} samples, but this IndexedNoise owns "
                             f"{len(self.generators)} indices")
        return self.randn(like.shape[1:], device=like.device, dtype=like.dtype)


def ddim_timesteps(num_steps: int, num_timesteps: int = 1000, skip_type: str = "uniform") -> list[int]:
    """The DDIM sub-sequence tau (ascending), defined as the DDIM codebase defines it.

    "uniform": range(0, T, T // num_steps). When T is not a multiple of num_steps this has MORE than
               num_steps entries (T=1000, 3 steps -> [0, 333, 666, 999]), exactly as the DDIM codebase.
    "quad":    int(s) for s in linspace(0, sqrt(0.8 T), num_steps)**2. The chain starts at int(0.8 T),
               and for many steps the small timesteps repeat (100 steps: 0, 0, 0, 0, 1, ...).
    Returns a list of int timesteps in [0, T).
    """
    if skip_type not in SKIP_TYPES:
        raise ValueError(f"skip_type must be one of {SKIP_TYPES}, got {skip_type!r}")
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be in [1, num_timesteps={num_timesteps}], got {num_steps}")
    if skip_type == "uniform":
        return list(range(0, num_timesteps, num_timesteps // num_steps))
    return [int(s) for s in np.linspace(0, np.sqrt(num_timesteps * 0.8), num_steps) ** 2]


def _check_timesteps(timesteps: Sequence[int], num_timesteps: int) -> list[int]:
    """Validate an ascending (repeats allowed) timestep list in [0, T)."""
    ts = [int(t) for t in timesteps]
    if not ts:
        raise ValueError("timesteps must not be empty")
    if any(not 0 <= t < num_timesteps for t in ts):
        raise ValueError(f"timesteps must lie in [0, {num_timesteps}), got min {min(ts)}, max {max(ts)}")
    if any(b < a for a, b in zip(ts, ts[1:])):
        # A decreasing pair would make 1 - alpha_bar_t / alpha_bar_next negative in eq. 16.
        raise ValueError("timesteps must be ascending (repeats allowed), as ddim_timesteps returns them")
    return ts


def ddim_sample(model: nn.Module, schedule: Schedule, x_T: torch.Tensor, timesteps: Sequence[int], *,
                eta: float = 0.0, noise_fn: NoiseFn | None = None, return_trajectory: bool = False,
                clip_x0: bool = False, progress: bool = False):
    """DDIM sampling (Song et al. 2021, eq. 12) from x_T down the ascending ``timesteps`` tau.

    Step tau_i -> tau_{i-1} (the previous entry, and -1 after tau_1, where alpha_bar_{-1} = 1):

        x0_pred  = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)                  "predicted x0", not clipped
        sigma_t  = eta sqrt((1 - alpha_bar_next) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_next)   (eq. 16)
        x_next   = sqrt(alpha_bar_next) x0_pred + sqrt(1 - alpha_bar_next - sigma_t^2) eps + sigma_t z

    clip_x0 clamps x0_pred to the data range [-1, 1] and re-derives eps from it (Ho et al.'s
    "clip_denoised"; the DDIM codebase does not clip, so the default is off). An under-trained model's small
    eps error at large t is multiplied by sqrt((1 - alpha_bar_t) / alpha_bar_t) (~150 at t = 999) in x0_pred;
    clipping keeps the chain in range.

    eta = 0 is the deterministic DDIM (noise_fn is then never called); eta = 1 is DDPM-like. A repeated
    timestep (t == t_next, "quad" skip) is computed with the same arithmetic, which returns x_t up to rounding.

    model:     eps_theta, called as model(x_t, t) with t a (B,) float tensor; caller sets eval mode / no_grad.
    x_T:       (B, C, H, W) initial noise.
    timesteps: ascending ints in [0, T) (repeats allowed).
    noise_fn:  z = noise_fn(x_t), standard Gaussian shaped like x_t (default torch.randn_like); pass an
               ``IndexedNoise`` for per-sample reproducibility.
    Returns x_0 (B, C, H, W), unclamped; with return_trajectory also ``xs`` = [x_T, ..., x_0] (S+1 tensors)
    and ``x0_preds`` (S tensors), both on the CPU.
    """
    ts = _check_timesteps(timesteps, schedule.num_timesteps)
    if not 0.0 <= eta <= 1.0:
        # eta > 1 makes 1 - alpha_bar_next - sigma_t^2 negative (Song et al. define eta in [0, 1]).
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    noise_fn = noise_fn or torch.randn_like
    B = x_T.shape[0]
    x_t = x_T
    xs, x0_preds = [x_T.detach().cpu()], []
    t_nexts = [-1] + ts[:-1]
    for t, t_next in tqdm(list(zip(reversed(ts), reversed(t_nexts))), desc="DDIM", disable=not progress):
        # Coefficients as Python floats from the float64 schedule; every sample of the batch shares t.
        alpha_bar_t = float(schedule.alpha_bar(torch.tensor(t)))
        alpha_bar_next = float(schedule.alpha_bar(torch.tensor(t_next)))
        eps = model(x_t, torch.full((B,), float(t), device=x_t.device))  # (B, C, H, W)
        x0_pred = predict_x0(x_t, eps, alpha_bar_t)
        if clip_x0:
            x0_pred, eps = _clip(x_t, x0_pred, alpha_bar_t)
        # Eq. 16; t == t_next gives 1 - alpha_bar_t / alpha_bar_next = 0 exactly, so no noise is added.
        sigma_t = eta * math.sqrt((1.0 - alpha_bar_next) / (1.0 - alpha_bar_t)) \
            * math.sqrt(1.0 - alpha_bar_t / alpha_bar_next)
        # "Direction pointing to x_t"; max() guards against rounding a hair below zero at eta = 1.
        dir_coef = math.sqrt(max(1.0 - alpha_bar_next - sigma_t ** 2, 0.0))
        x_t = math.sqrt(alpha_bar_next) * x0_pred + dir_coef * eps  # eq. 12
        if sigma_t > 0:
            x_t = x_t + sigma_t * noise_fn(x_t)
        if return_trajectory:
            xs.append(x_t.detach().cpu())
            x0_preds.append(x0_pred.detach().cpu())
    return (x_t, xs, x0_preds) if return_trajectory else x_t


def _clip(x_t: torch.Tensor, x0_pred: torch.Tensor, alpha_bar_t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clamp x0_pred to [-1, 1] and return it with the eps that, with x_t, implies it (inverse of eq. 4)."""
    x0_pred = x0_pred.clamp(-1.0, 1.0)
    return x0_pred, (x_t - math.sqrt(alpha_bar_t) * x0_pred) / math.sqrt(1.0 - alpha_bar_t)


def ddpm_sample(model: nn.Module, schedule: Schedule, x_T: torch.Tensor, *, variance: str = "beta",
                noise_fn: NoiseFn | None = None, clip_x0: bool = False, progress: bool = False) -> torch.Tensor:
    """Ancestral sampling over all T steps (Ho et al. 2020, Algorithm 2):

        x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta(x_t, t)) + sigma_t z,

    with z = 0 at the last step (code t = 0, paper t = 1) and sigma_t^2 = beta_t ("beta") or the posterior
    variance beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t ("beta_tilde"); Ho et al. Sec. 3.2
    report similar results for both. ``clip_x0`` clamps the implied x0 to [-1, 1] first (their
    "clip_denoised"); the mean is then the posterior mean mu_tilde(x_t, x0) of eq. 7.

    model:    eps_theta, called with (B,) float timesteps; caller sets eval mode / no_grad.
    x_T:      (B, C, H, W) initial noise.
    noise_fn: z = noise_fn(x_t) (default torch.randn_like); called T-1 times.
    Returns x_0 (B, C, H, W), unclamped.
    """
    if variance not in DDPM_VARIANCES:
        raise ValueError(f"variance must be one of {DDPM_VARIANCES}, got {variance!r}")
    noise_fn = noise_fn or torch.randn_like
    sigma2 = schedule.betas if variance == "beta" else schedule.posterior_variance  # (T,) float64
    B = x_T.shape[0]
    x_t = x_T
    for t in tqdm(range(schedule.num_timesteps - 1, -1, -1), desc="DDPM", disable=not progress):
        alpha_t, beta_t = float(schedule.alphas[t]), float(schedule.betas[t])
        alpha_bar_t = float(schedule.alpha_bars[t])
        eps = model(x_t, torch.full((B,), float(t), device=x_t.device))  # (B, C, H, W)
        if clip_x0:
            _, eps = _clip(x_t, predict_x0(x_t, eps, alpha_bar_t), alpha_bar_t)
        mean = (x_t - beta_t / math.sqrt(1.0 - alpha_bar_t) * eps) / math.sqrt(alpha_t)  # Algorithm 2, line 4
        x_t = mean + math.sqrt(float(sigma2[t])) * noise_fn(x_t) if t > 0 else mean
    return x_t


def sample(model: nn.Module, schedule: Schedule, *, indices: Sequence[int], seed: int,
           image_shape: Sequence[int], sampler: str = "ddim", steps: int | None = None,
           skip_type: str = "uniform", eta: float = 0.0, variance: str = "beta", batch_size: int = 64,
           device: torch.device | str = "cpu", clip_x0: bool = False, progress: bool = False) -> torch.Tensor:
    """Generate the samples with global ``indices`` of run ``seed``, batch by batch, under
    ``torch.inference_mode`` (no autograd bookkeeping at all; the returned tensor is an ordinary one).

    Sample i depends only on (model, seed, i, sampler settings): its x_T and step noise come from
    ``IndexedNoise(seed, [i])``, so any split of ``indices`` into batches, shards or resumed runs gives the
    same images, and two models given the same seed start from the same x_T. The caller puts the model on
    ``device`` and in eval mode. ``model`` may be a ``models.runtime.Runner`` (channels-last, compiled or
    bf16 forward).

    image_shape: (C, H, W).
    sampler:     "ddim" (``steps`` DDIM steps, default 100, with ``skip_type`` and ``eta``) or "ddpm" (all T
                 ancestral steps with ``variance``; ``steps`` must then be None or T).
    Returns (N, C, H, W) float32 on the CPU, clamped to [-1, 1].
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    T = schedule.num_timesteps
    if sampler == "ddim":
        timesteps = ddim_timesteps(100 if steps is None else steps, T, skip_type)
    elif steps not in (None, T):
        raise ValueError(f"the ddpm sampler runs all {T} steps; got steps={steps} (use sampler='ddim' for fewer)")
    indices = [int(i) for i in indices]
    out = [torch.empty((0, *image_shape))]
    for start in tqdm(range(0, len(indices), batch_size), desc="sampling", disable=not progress):
        noise = IndexedNoise(seed, indices[start:start + batch_size])
        with torch.inference_mode():
            x_T = noise.randn(image_shape, device=device)  # (b, C, H, W), the first draw of each stream
            if sampler == "ddim":
                x_0 = ddim_sample(model, schedule, x_T, timesteps, eta=eta, noise_fn=noise, clip_x0=clip_x0)
            else:
                x_0 = ddpm_sample(model, schedule, x_T, variance=variance, noise_fn=noise, clip_x0=clip_x0)
            out.append(x_0.clamp(-1.0, 1.0).float().cpu())
    # Outside inference mode: cat makes an ordinary tensor, which callers may modify in place or use in autograd.
    return torch.cat(out)
