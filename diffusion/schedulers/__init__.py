"""Schedulers of the latent, conditional family (Stable Diffusion, LDM), one file per family:

    base.py        beta schedules ("linear", "scaled_linear"), shared config fields, eps/v conversions, the loop
    ddim.py        DDIM, eta = 0 (Song et al. 2021)
    dpm_solver.py  DPM-Solver++(2M) (Lu et al. 2022)
    euler.py       Euler on the sigma-frame ODE (Karras et al. 2022)
    pndm.py        PLMS (Liu et al. 2022), PNDM without PRK steps

A scheduler is chosen either by a diffusers ``scheduler_config.json`` dict (its ``_class_name``) or by a short
name (``SCHEDULERS``) applied to such a dict, the way a diffusers pipeline swaps its scheduler with
``from_config``: the fields the new family knows are taken from the dict, the rest get that family's defaults.

    config = scheduler_config(json.load(open("scheduler/scheduler_config.json")))           # the folder's own
    config = scheduler_config(d, name="dpmpp_2m")                                           # another family
    x0 = sample_loop(make_scheduler(config, 25), model_fn, x_T)

The DDPM family's DDIM/DDPM samplers (float64, the DDIM codebase's conventions) stay in ``diffusion/samplers.py``.
"""
from __future__ import annotations

from typing import Any

from diffusion.schedulers.base import (Scheduler, SchedulerConfig, make_alphas_cumprod, make_betas,
                                       sample_loop)
from diffusion.schedulers.ddim import DDIM, DDIMConfig
from diffusion.schedulers.dpm_solver import DPMSolverConfig, DPMSolverMultistep
from diffusion.schedulers.euler import EulerConfig, EulerDiscrete
from diffusion.schedulers.pndm import PNDM, PNDMConfig

# Short names (generate.py's --scheduler choices) -> scheduler classes.
SCHEDULERS: dict[str, type[Scheduler]] = {"ddim": DDIM, "dpmpp_2m": DPMSolverMultistep, "euler": EulerDiscrete,
                                          "pndm": PNDM}
BY_CLASS_NAME: dict[str, type[Scheduler]] = {cls.CLASS_NAME: cls for cls in SCHEDULERS.values()}
BY_CONFIG: dict[type[SchedulerConfig], type[Scheduler]] = {cls.config_class: cls for cls in SCHEDULERS.values()}


def scheduler_config(d: dict[str, Any], name: str | None = None) -> SchedulerConfig:
    """The frozen config of a diffusers scheduler_config.json dict.

    name=None: the family named by ``d["_class_name"]``; an unsupported class is a one-line error that lists
    the supported ones. name="ddim"/"dpmpp_2m"/"euler"/"pndm": that family, built from the same dict.
    """
    if name is not None:
        if name not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {name!r}; supported: {', '.join(SCHEDULERS)}")
        cls = SCHEDULERS[name]
        if cls.CLASS_NAME == "PNDMScheduler" and d.get("_class_name") != cls.CLASS_NAME:
            # another family's config says nothing of the PRK warm-up, which is not implemented here: PLMS,
            # as every Stable Diffusion PNDM config sets (diffusers would default to the warm-up)
            d = {"skip_prk_steps": True, **d}
    else:
        class_name = d.get("_class_name")
        if class_name not in BY_CLASS_NAME:
            raise ValueError(f"scheduler class {class_name!r} is not supported; supported: "
                             f"{', '.join(BY_CLASS_NAME)}")
        cls = BY_CLASS_NAME[class_name]
    return cls.config_class.from_diffusers(d)


def scheduler_name(config: SchedulerConfig) -> str:
    """The short name of a config's family ("ddim", ...)."""
    cls = BY_CONFIG[type(config)]
    return next(name for name, c in SCHEDULERS.items() if c is cls)


def check_sampling_steps(config: SchedulerConfig, num_steps: int) -> None:
    """A ValueError when ``num_steps`` exceeds the schedule or its timesteps do not run from the top of the
    schedule down (base.check_inference_timesteps), naming a count that works."""
    from diffusion.schedulers.base import check_inference_timesteps

    if num_steps > config.num_train_timesteps:
        raise ValueError(f"{num_steps} steps: at most the schedule's {config.num_train_timesteps} timesteps")
    check_inference_timesteps(config, make_scheduler(config, num_steps).timesteps, num_steps,
                              timesteps_of=lambda n: make_scheduler(config, n).timesteps)


def make_scheduler(config: SchedulerConfig, num_inference_steps: int) -> Scheduler:
    """A fresh scheduler (one sampling run) for ``config``'s family."""
    if type(config) not in BY_CONFIG:
        raise TypeError(f"no scheduler for config type {type(config).__name__}")
    return BY_CONFIG[type(config)](config, num_inference_steps)


def to_diffusers(config: SchedulerConfig) -> dict[str, Any]:
    """The scheduler_config.json dict of ``config`` (its family's diffusers class name included)."""
    return config.to_diffusers(BY_CONFIG[type(config)].CLASS_NAME)


__all__ = ["SCHEDULERS", "Scheduler", "SchedulerConfig", "DDIM", "DDIMConfig", "DPMSolverMultistep",
           "DPMSolverConfig", "EulerDiscrete", "EulerConfig", "PNDM", "PNDMConfig", "scheduler_config",
           "scheduler_name", "make_scheduler", "to_diffusers", "sample_loop", "make_betas", "make_alphas_cumprod"]
