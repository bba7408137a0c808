"""What every latent-diffusion scheduler shares: the beta schedule, the config fields, the sampling loop.

Symbols (Ho et al. 2020 and the DDIM paper; code timesteps t = 0..T-1, as in ``diffusion/schedule.py``):

    alpha_bar_t        ``alphas_cumprod[t]``, so x_t = alpha_t x_0 + sigma_t eps with
    alpha_t, sigma_t   the VP coefficients sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t)  (DPM-Solver's notation)
    sigma_VE           sigma_t / alpha_t = sqrt((1 - alpha_bar_t) / alpha_bar_t), the noise level of x_t / alpha_t
                       (Karras et al. 2022; the Euler scheduler works in this frame)

A scheduler object is made for ONE sampling run: ``Scheduler(config, num_inference_steps)`` fixes its
``timesteps`` (the values handed to the network, highest first) and holds whatever history a multistep
method keeps, so two runs never share state. ``sample_loop`` is the generic loop:

    x = x_T * init_noise_sigma
    for i, t in enumerate(timesteps):  x = step(model(scale_model_input(x, i), t), i, x)

Arithmetic is float32 on torch tensors, as the reference implementation (diffusers) does it: the networks
were trained against those float32 alphas_cumprod; the golden trajectories of tests/test_schedulers.py
match the reference to 1.2e-5 or better (samples up to |x| = 52, i.e. ~2e-7 relative).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from tqdm import tqdm

BETA_SCHEDULES = ("linear", "scaled_linear")
PREDICTION_TYPES = ("epsilon", "v_prediction")
TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")

# Keys of a diffusers scheduler_config.json that carry bookkeeping, never behaviour.
_BOOKKEEPING_KEYS = ("_class_name", "_diffusers_version", "_use_default_values", "_name_or_path")


@dataclass(frozen=True)
class SchedulerConfig:
    """Fields every scheduler reads (diffusers' scheduler_config.json names and defaults).

    beta_schedule: "linear" (beta_t linear in t) or "scaled_linear" (sqrt(beta_t) linear in t: SD's schedule).
    trained_betas: an explicit beta list (T values) that overrides the two above when given.
    timestep_spacing / steps_offset: how the inference timesteps are picked (see each scheduler).
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    steps_offset: int = 0

    # Keys this implementation understands only at the value given here (diffusers' default); any other value
    # is refused by name rather than silently ignored. Subclasses extend it.
    FIXED: ClassVar[dict[str, Any]] = {"rescale_betas_zero_snr": False, "thresholding": False,
                                       "use_karras_sigmas": False, "use_exponential_sigmas": False,
                                       "use_beta_sigmas": False, "use_lu_lambdas": False, "use_flow_sigmas": False,
                                       "use_dynamic_shifting": False}

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"{name}: beta_schedule {self.beta_schedule!r} is not supported; "
                             f"supported: {', '.join(BETA_SCHEDULES)}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"{name}: prediction_type {self.prediction_type!r} is not supported; "
                             f"supported: {', '.join(PREDICTION_TYPES)}")
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"{name}: timestep_spacing {self.timestep_spacing!r} is not supported; "
                             f"supported: {', '.join(TIMESTEP_SPACINGS)}")
        if self.num_train_timesteps < 1:
            raise ValueError(f"{name}: num_train_timesteps must be >= 1, got {self.num_train_timesteps}")
        if self.trained_betas is not None and len(self.trained_betas) != self.num_train_timesteps:
            raise ValueError(f"{name}: trained_betas has {len(self.trained_betas)} values, "
                             f"num_train_timesteps is {self.num_train_timesteps}")
        if self.trained_betas is None and not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(f"{name}: need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")

    @classmethod
    def from_diffusers(cls, d: dict[str, Any]) -> "SchedulerConfig":
        """Build from a diffusers scheduler_config.json dict. Keys this class has no field for are ignored
        (diffusers itself passes one scheduler's config to another family this way); keys in ``FIXED`` with
        another value are refused, naming the key."""
        # Keys diffusers marks as "took the default" are dropped, as its from_config does: a config written by
        # one family then gets the other family's defaults for them (e.g. Euler's timestep_spacing).
        d = {k: v for k, v in d.items() if k not in d.get("_use_default_values", ())}
        for key, default in cls.FIXED.items():
            if key in d and d[key] != default and d[key] is not None:
                raise ValueError(f"{cls.__name__}: {key}={d[key]!r} is not supported (only {default!r})")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()
                  if k in names and k not in _BOOKKEEPING_KEYS}
        return cls(**kwargs)

    def to_diffusers(self, class_name: str) -> dict[str, Any]:
        """The diffusers scheduler_config.json dict of this config (``_class_name`` first)."""
        out: dict[str, Any] = {"_class_name": class_name}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def with_fields(self, **changes: Any) -> "SchedulerConfig":
        return dataclasses.replace(self, **changes)


def make_betas(config: SchedulerConfig) -> torch.Tensor:
    """beta_t, (T,) float32.

    "linear":        linspace(beta_start, beta_end, T)                    (Ho et al. 2020, Sec. 4)
    "scaled_linear": linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2   (the latent-diffusion / SD schedule)
    """
    T = config.num_train_timesteps
    if config.trained_betas is not None:
        return torch.tensor(config.trained_betas, dtype=torch.float32)
    if config.beta_schedule == "linear":
        return torch.linspace(config.beta_start, config.beta_end, T, dtype=torch.float32)
    # The square root is taken in float64 by Python, the linspace runs in float32, as in the reference.
    return torch.linspace(config.beta_start ** 0.5, config.beta_end ** 0.5, T, dtype=torch.float32) ** 2


def make_alphas_cumprod(config: SchedulerConfig) -> torch.Tensor:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s), (T,) float32."""
    return torch.cumprod(1.0 - make_betas(config), dim=0)


def leading_timesteps(config: SchedulerConfig, num_steps: int) -> np.ndarray:
    """"leading" spacing: 0, r, 2r, ... (r = T // num_steps), highest first, plus ``steps_offset``.
    SD-1's configs use it with steps_offset 1, so 10 steps are 901, 801, ..., 1."""
    ratio = config.num_train_timesteps // num_steps
    return (np.arange(num_steps) * ratio).round()[::-1].astype(np.int64) + config.steps_offset


def trailing_timesteps(config: SchedulerConfig, num_steps: int) -> np.ndarray:
    """"trailing" spacing: T-1, T-1-T/n, ... rounded, highest first (Lin et al. 2023, Table 2)."""
    T = config.num_train_timesteps
    return (np.round(np.arange(T, 0, -T / num_steps)) - 1).astype(np.int64)


def check_num_steps(config: SchedulerConfig, num_steps: int) -> None:
    if not 1 <= num_steps <= config.num_train_timesteps:
        raise ValueError(f"num_inference_steps must be in [1, {config.num_train_timesteps}], got {num_steps}")


def timesteps_problem(config: SchedulerConfig, timesteps, num_steps: int) -> str | None:
    """Why these inference timesteps would not sample from the top of the schedule down, or None."""
    ts = [int(t) for t in timesteps]
    T = config.num_train_timesteps
    # The top must reach 0.8 T, or for very few steps the top their spacing is made for, T - T / n (2
    # "leading" steps start at 501 by design). PLMS repeats one timestep by design, so a repeat is a problem
    # only when steps are lost to it.
    lowest = min(0.8 * T, T - T / num_steps - 1)
    return ("the first timestep is beyond the schedule" if ts[0] > T - 1 else
            "sampling would start from a partly noised image" if ts[0] < lowest else
            "the timesteps repeat" if len(set(ts)) < num_steps else None)


def check_inference_timesteps(config: SchedulerConfig, timesteps, num_steps: int,
                              timesteps_of: Callable[[int], Any] | None = None) -> None:
    """A ValueError when ``num_steps`` gives timesteps that do not sample from the top of the schedule down.

    The "leading" spacing rounds T // n down, so above about T / 3 steps it begins sampling from a half-noised
    x_T (T = 1000: 400 DDIM steps start at t = 799, 600 at 600; diffusers behaves the same; refused below 0.8 T), and with the SD configs'
    steps_offset of 1 its first timestep can pass T - 1 (999 steps: t = 1000), or repeat one (a zero DPM-Solver
    step: NaN). Each of these makes wrong images without any other error, so they are refused."""
    problem = timesteps_problem(config, timesteps, num_steps)
    if problem:
        ts, T = [int(t) for t in timesteps[:2]], config.num_train_timesteps
        # the largest count below num_steps that samples correctly (not every smaller one does)
        safe = next((n for n in range(num_steps - 1, 0, -1) if timesteps_of is not None
                     and timesteps_problem(config, timesteps_of(n), n) is None), None)
        raise ValueError(f"{num_steps} steps: the {config.timestep_spacing!r} spacing gives timesteps "
                         f"{', '.join(map(str, ts))}, ... of {T}: {problem}; use fewer steps"
                         + (f" ({safe} steps work here, for one)" if safe else ""))


def x0_from_output(model_output: torch.Tensor, x_t: torch.Tensor, alpha_t, sigma_t, prediction_type: str):
    """The network's x_0 estimate from its output, with x_t = alpha_t x_0 + sigma_t eps (VP coefficients).

    "epsilon":      x_0 = (x_t - sigma_t eps) / alpha_t
    "v_prediction": v = alpha_t eps - sigma_t x_0 (Salimans & Ho 2022, Sec. 4), so x_0 = alpha_t x_t - sigma_t v
                    (alpha_t^2 + sigma_t^2 = 1).
    """
    if prediction_type == "epsilon":
        return (x_t - sigma_t * model_output) / alpha_t
    return alpha_t * x_t - sigma_t * model_output


def eps_from_output(model_output: torch.Tensor, x_t: torch.Tensor, alpha_t, sigma_t, prediction_type: str):
    """The network's eps estimate; for v-prediction eps = alpha_t v + sigma_t x_t."""
    if prediction_type == "epsilon":
        return model_output
    return alpha_t * model_output + sigma_t * x_t


class Scheduler:
    """One sampling run of a scheduler family (subclasses fill ``timesteps`` and ``step``).

    timesteps:        (S,) tensor of the values the network receives, highest first (int64, or float32 for Euler).
    init_noise_sigma: x_T ~ N(0, init_noise_sigma^2 I); ``sample_loop`` multiplies unit noise by it.
    """

    CLASS_NAME: ClassVar[str] = ""
    config_class: ClassVar[type[SchedulerConfig]] = SchedulerConfig

    def __init__(self, config: SchedulerConfig, num_inference_steps: int):
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, "
                            f"got {type(config).__name__}")
        check_num_steps(config, num_inference_steps)
        self.config = config
        self.num_inference_steps = int(num_inference_steps)
        self.alphas_cumprod = make_alphas_cumprod(config)  # alpha_bar_t, (T,) float32
        self.init_noise_sigma: float = 1.0
        self.timesteps: torch.Tensor = torch.empty(0)

    def scale_model_input(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """What the network sees at step i (identity except for the sigma-frame Euler scheduler)."""
        return x

    def step(self, model_output: torch.Tensor, i: int, x: torch.Tensor) -> torch.Tensor:
        """x at timesteps[i] and the network's output there -> x at the next timestep (the image after the last)."""
        raise NotImplementedError


ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sample_loop(scheduler: Scheduler, model_fn: ModelFn, x_T: torch.Tensor, *, progress: bool = False,
                desc: str = "denoising") -> torch.Tensor:
    """Run the whole reverse process from unit Gaussian noise ``x_T`` (B, C, H, W).

    model_fn(x_in, t) gets the scaled input and the timestep ``t`` (a 0-dim tensor, the scheduler's own dtype)
    and returns the network's output shaped like x_in (eps or v, with guidance already applied).
    Returns the final sample (B, C, H, W) in x_T's dtype.
    """
    x = x_T * scheduler.init_noise_sigma
    for i, t in enumerate(tqdm(scheduler.timesteps, desc=desc, disable=not progress)):
        x = scheduler.step(model_fn(scheduler.scale_model_input(x, i), t), i, x)
    return x


def vp_coefficients(alpha_bar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_t, sigma_t) = (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t))."""
    return alpha_bar ** 0.5, (1 - alpha_bar) ** 0.5


def sigma_ve(alphas_cumprod: torch.Tensor) -> np.ndarray:
    """sigma_VE = sqrt((1 - alpha_bar_t) / alpha_bar_t) for every training timestep, (T,) float32 numpy."""
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).numpy()


def interp_sigmas(timesteps: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """sigma_VE at (possibly fractional) timesteps by linear interpolation over t = 0..T-1."""
    return np.interp(timesteps, np.arange(len(sigmas)), sigmas)

