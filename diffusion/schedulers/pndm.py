"""PNDM's pseudo linear multistep method, PLMS (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion
Models on Manifolds", arXiv 2202.09778), in the form SD-1's default scheduler config runs it
(diffusers' ``PNDMScheduler`` with ``skip_prk_steps``: no Runge-Kutta warm-up).

Two pieces from the paper:

* the transfer part phi, which moves x_t to x_{t-delta} along a given noise estimate eps:

      phi(x_t, eps, t, t-delta) = sqrt(alpha_bar_{t-delta} / alpha_bar_t) x_t
          - (alpha_bar_{t-delta} - alpha_bar_t) eps
            / (alpha_bar_t sqrt(1 - alpha_bar_{t-delta}) + sqrt(alpha_bar_t (1 - alpha_bar_t) alpha_bar_{t-delta}))

* the gradient part: eps' is the 4th-order Adams-Bashforth combination of the last four network outputs,

      eps' = (55 e_t - 59 e_{t+delta} + 37 e_{t+2 delta} - 9 e_{t+3 delta}) / 24,

  with lower orders (1, 2, 3) while fewer outputs exist.

The warm-up without PRK steps (the reference's, which the golden trajectory pins down): step 0 moves t_0 ->
t_0 - delta with e_{t_0} alone; step 1 calls the network AGAIN at t_0 - delta on that result, then redoes the
move t_0 -> t_0 - delta from the original x with the average (e_{t_0} + e') / 2 (a Heun-like second-order
step), and e' is discarded. So the timestep list has S + 1 entries with the second one repeated
(SD-1, 10 steps: 901, 801, 801, 701, ..., 1), and the network runs S + 1 times.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from diffusion.schedulers.base import Scheduler, SchedulerConfig, leading_timesteps


@dataclass(frozen=True)
class PNDMConfig(SchedulerConfig):
    """diffusers ``PNDMScheduler`` fields. ``skip_prk_steps`` must be True (the PRK warm-up is not implemented;
    every Stable Diffusion config sets it). ``set_alpha_to_one`` as in DDIM (SD: False). A diffusers config
    that omits a field gets diffusers' default, which for ``skip_prk_steps`` is False."""

    skip_prk_steps: bool = True
    set_alpha_to_one: bool = False

    @classmethod
    def from_diffusers(cls, d: dict[str, Any]) -> "PNDMConfig":
        # diffusers defaults skip_prk_steps to False: a config that omits it asks for the PRK warm-up.
        return super().from_diffusers({"skip_prk_steps": False, **d})  # type: ignore[return-value]

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.skip_prk_steps:
            raise ValueError("PNDMConfig: skip_prk_steps=False (the pseudo Runge-Kutta warm-up) is not supported; "
                             "set skip_prk_steps to true (PLMS, as the Stable Diffusion configs do)")


class PNDM(Scheduler):
    """PLMS over ``num_inference_steps`` steps (``timesteps`` has one more entry: the repeated warm-up step)."""

    CLASS_NAME: ClassVar[str] = "PNDMScheduler"
    config_class: ClassVar[type[SchedulerConfig]] = PNDMConfig

    def __init__(self, config: PNDMConfig, num_inference_steps: int):
        super().__init__(config, num_inference_steps)
        T, S = config.num_train_timesteps, num_inference_steps
        if config.timestep_spacing == "leading":
            ts = leading_timesteps(config, S)[::-1]
        elif config.timestep_spacing == "linspace":
            ts = np.linspace(0, T - 1, S).round().astype(np.int64)
        else:
            ts = np.round(np.arange(T, 0, -T / S))[::-1].astype(np.int64) - 1
        # ts ascending; repeat the second-highest timestep: [t_1, ..., t_{S-1}, t_{S-1}, t_S], then highest first.
        ts = np.concatenate([ts[:-1], ts[-2:-1], ts[-1:]])[::-1]
        self.timesteps = torch.from_numpy(ts.copy())  # (S + 1,) int64
        self.delta = T // S  # every move goes from t to t - delta (also with "linspace" spacing)
        self.final_alpha_bar = torch.tensor(1.0) if config.set_alpha_to_one else self.alphas_cumprod[0]
        self.outputs: list[torch.Tensor] = []  # e_t of the past steps, newest last (at most 4)
        self.x_start: torch.Tensor | None = None  # x at t_0, kept for the warm-up's second pass

    def _alpha_bar(self, t: int) -> torch.Tensor:
        return self.alphas_cumprod[t] if t >= 0 else self.final_alpha_bar

    def transfer(self, x: torch.Tensor, model_output: torch.Tensor, t: int, t_prev: int) -> torch.Tensor:
        """phi(x_t, eps, t, t_prev) of Liu et al. 2022 (module docstring); for v-prediction the combined
        output is turned into eps with the current x first: eps = sqrt(alpha_bar_t) v + sqrt(1 - alpha_bar_t) x_t."""
        a, a_prev = self._alpha_bar(t), self._alpha_bar(t_prev)
        eps = model_output
        if self.config.prediction_type == "v_prediction":
            eps = a ** 0.5 * model_output + (1 - a) ** 0.5 * x
        denom = a * (1 - a_prev) ** 0.5 + (a * (1 - a) * a_prev) ** 0.5
        return (a_prev / a) ** 0.5 * x - (a_prev - a) * eps / denom

    def step(self, model_output: torch.Tensor, i: int, x: torch.Tensor) -> torch.Tensor:
        """Step i (of S + 1). model_output, x: (B, C, H, W). Returns x at the next timestep."""
        t = int(self.timesteps[i])
        if i == 1:
            # The warm-up's second pass: redo t_0 -> t_0 - delta from x_start with the averaged output.
            e = (model_output + self.outputs[-1]) / 2
            x, self.x_start = self.x_start, None
            return self.transfer(x, e, t + self.delta, t)
        self.outputs = self.outputs[-3:] + [model_output]
        es = self.outputs[::-1]  # e_t, e_{t+delta}, ...
        if len(es) == 1:
            e = es[0]
            self.x_start = x
        elif len(es) == 2:
            e = (3 * es[0] - es[1]) / 2
        elif len(es) == 3:
            e = (23 * es[0] - 16 * es[1] + 5 * es[2]) / 12
        else:
            e = (55 * es[0] - 59 * es[1] + 37 * es[2] - 9 * es[3]) / 24  # the PLMS formula
        return self.transfer(x, e, t, t - self.delta)
