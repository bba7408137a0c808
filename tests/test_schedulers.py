"""The latent family's schedulers (diffusion/schedulers/): known trajectories, exactness on an oracle, bad configs.

Known answers: tests/data/golden/sd_family.pt entry ``schedulers`` (made by diffusers 0.42.1): from ``x_T``
(2,4,8,8), 10 steps, SD's scaled_linear betas, the stand-in network
``model_output = 0.1 * scale_model_input(x, t) + 0.001 * t``; per scheduler its config, timesteps and final x0.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion.schedulers import (SCHEDULERS, DDIMConfig, DPMSolverConfig, EulerConfig, PNDMConfig,
                                  make_alphas_cumprod, make_betas, make_scheduler, sample_loop,
                                  scheduler_config, scheduler_name, to_diffusers)
from diffusion.schedulers.base import eps_from_output, x0_from_output

SD_FAMILY = Path(__file__).resolve().parent / "data" / "golden" / "sd_family.pt"
FAMILY = {"ddim": "ddim", "ddim_v": "ddim", "dpmpp_2m": "dpmpp_2m", "euler": "euler", "pndm": "pndm"}


@pytest.fixture(scope="module")
def golden():
    # Part of the repository (tests/data/golden/README.md): a missing file is a failure, never a skip.
    assert SD_FAMILY.is_file(), f"golden vectors not found at {SD_FAMILY}"
    return torch.load(SD_FAMILY, weights_only=True)["schedulers"]


@pytest.mark.parametrize("entry", list(FAMILY))
def test_golden_trajectory(golden, entry):
    """Timesteps exactly and the final sample to 1e-4 (values reach |x| ~ 50, so this is ~2e-6 relative)."""
    g = golden[entry]
    config = scheduler_config(g["config"], FAMILY[entry])
    scheduler = make_scheduler(config, 10)
    assert scheduler.timesteps.dtype == g["timesteps"].dtype
    assert torch.equal(scheduler.timesteps, g["timesteps"])
    x0 = sample_loop(scheduler, lambda x, t: 0.1 * x + 0.001 * t, golden["x_T"])
    torch.testing.assert_close(x0, g["x0"], atol=1e-4, rtol=0)


def test_golden_model_is_the_documented_stand_in(golden):
    assert golden["model"] == "0.1 * scale_model_input(x, t) + 0.001 * t"


def test_pndm_repeats_the_warm_up_timestep():
    s = make_scheduler(PNDMConfig(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                  steps_offset=1), 4)
    assert s.timesteps.tolist() == [751, 501, 501, 251, 1]


def test_scaled_linear_betas_are_squares_of_a_linspace():
    cfg = DDIMConfig(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    betas = make_betas(cfg).double()
    root = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000)
    np.testing.assert_allclose(betas.numpy(), root ** 2, rtol=1e-6)
    assert betas[0].item() == pytest.approx(0.00085, rel=1e-6) and betas[-1].item() == pytest.approx(0.012, rel=1e-6)
    lin = make_betas(DDIMConfig(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)).double()
    np.testing.assert_allclose(lin.numpy(), np.linspace(1e-4, 0.02, 1000), rtol=1e-6)
    np.testing.assert_allclose(make_alphas_cumprod(cfg).double().numpy(), np.cumprod(1 - root ** 2), rtol=1e-5)


def test_v_and_eps_conversions_invert_the_forward_process():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    a, s = torch.tensor(0.6), torch.tensor(0.8)  # alpha^2 + sigma^2 = 1
    x_t = a * x0 + s * eps
    v = a * eps - s * x0  # Salimans & Ho 2022
    for output, kind in ((eps, "epsilon"), (v, "v_prediction")):
        torch.testing.assert_close(x0_from_output(output, x_t, a, s, kind), x0)
        torch.testing.assert_close(eps_from_output(output, x_t, a, s, kind), eps)


# PLMS with v-prediction is left out, kept as the reference has it: it combines the raw v outputs of different
# timesteps (v = alpha_t eps - sigma_t x_0 changes with t even on an exact path) before converting them to eps.
@pytest.mark.parametrize("name, prediction_type", [(n, p) for n in SCHEDULERS for p in ("epsilon", "v_prediction")
                                                   if (n, p) != ("pndm", "v_prediction")])
def test_oracle_network_lands_on_its_x0(name, prediction_type):
    """A network that always implies the same x_0 makes the ODE's solution a straight line in each solver's
    variables, so every scheduler must end on that x_0 (alpha_bar = 1 after the last step)."""
    d = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": prediction_type,
         "set_alpha_to_one": True, "steps_offset": 1, "timestep_spacing": "leading", "clip_sample": False,
         "skip_prk_steps": True}
    config = scheduler_config(d, name)
    scheduler = make_scheduler(config, 7)
    alphas_cumprod = scheduler.alphas_cumprod
    target = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))

    def oracle(x_in, t):
        a, s = alphas_cumprod[int(t)] ** 0.5, (1 - alphas_cumprod[int(t)]) ** 0.5
        eps = (x_in - a * target) / s
        return eps if prediction_type == "epsilon" else a * eps - s * target

    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(sample_loop(scheduler, oracle, x_T), target, atol=2e-4, rtol=1e-4)


def test_euler_scales_its_input_and_its_start():
    cfg = EulerConfig(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="linspace")
    s = make_scheduler(cfg, 10)
    acp = s.alphas_cumprod
    sigma_max = ((1 - acp[-1]) / acp[-1]) ** 0.5
    assert s.init_noise_sigma == pytest.approx(float(sigma_max), rel=1e-6)
    assert s.sigmas[-1] == 0 and len(s.sigmas) == 11
    x = torch.ones(1, 1, 2, 2)
    torch.testing.assert_close(s.scale_model_input(x, 0), x / (sigma_max ** 2 + 1) ** 0.5)
    leading = make_scheduler(EulerConfig(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                         timestep_spacing="leading", steps_offset=1), 10)
    top = float(leading.sigmas[0])
    assert leading.init_noise_sigma == pytest.approx((top ** 2 + 1) ** 0.5)


def test_dpm_solver_last_step_is_first_order_and_clean():
    """With final sigma zero the last update is x = x_theta: the network's data prediction itself."""
    s = make_scheduler(DPMSolverConfig(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012), 3)
    x = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(3))
    for i in range(2):
        x = s.step(0.1 * x, i, x)
    out = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(4))
    acp = s.alphas_cumprod[int(s.timesteps[2])]
    expected = (x - (1 - acp) ** 0.5 * out) / acp ** 0.5
    torch.testing.assert_close(s.step(out, 2, x), expected, atol=1e-5, rtol=1e-5)


def test_config_round_trips_through_the_diffusers_dict():
    for name, cls in (("ddim", DDIMConfig), ("dpmpp_2m", DPMSolverConfig), ("euler", EulerConfig),
                      ("pndm", PNDMConfig)):
        config = cls(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)
        d = to_diffusers(config)
        assert scheduler_config(d) == config and scheduler_name(config) == name


def test_switching_family_keeps_the_schedule_and_takes_the_new_defaults():
    sd15 = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
            "clip_sample": False, "trained_betas": None}
    ddim = scheduler_config(sd15, "ddim")
    assert isinstance(ddim, DDIMConfig) and ddim.clip_sample is False and ddim.steps_offset == 1
    dpm = scheduler_config(sd15, "dpmpp_2m")
    assert dpm.timestep_spacing == "linspace" and dpm.beta_schedule == "scaled_linear"


def test_unsupported_class_lists_the_supported_ones():
    with pytest.raises(ValueError, match=r"'LMSDiscreteScheduler' is not supported; supported: DDIMScheduler, "
                                         r"DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler"):
        scheduler_config({"_class_name": "LMSDiscreteScheduler"})
    with pytest.raises(ValueError, match="unknown scheduler 'heun'"):
        scheduler_config({}, "heun")


@pytest.mark.parametrize("d, match", [
    ({"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": True}, "use_karras_sigmas=True is not supported"),
    ({"_class_name": "DDIMScheduler", "thresholding": True}, "thresholding=True is not supported"),
    ({"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++"}, "algorithm_type"),
    ({"_class_name": "DPMSolverMultistepScheduler", "solver_order": 3}, "solver_order 3 is not supported"),
    ({"_class_name": "PNDMScheduler"}, "skip_prk_steps=False"),
    ({"_class_name": "DDIMScheduler", "beta_schedule": "squaredcos_cap_v2"}, "beta_schedule 'squaredcos_cap_v2'"),
    ({"_class_name": "DDIMScheduler", "prediction_type": "sample"}, "prediction_type 'sample'"),
])
def test_unsupported_settings_are_named(d, match):
    with pytest.raises(ValueError, match=match):
        scheduler_config(d)


def test_each_run_has_its_own_state():
    cfg = scheduler_config({"_class_name": "PNDMScheduler", "skip_prk_steps": True})
    x_T = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    runs = [sample_loop(make_scheduler(cfg, 5), lambda x, t: 0.1 * x, x_T) for _ in range(2)]
    torch.testing.assert_close(runs[0], runs[1], atol=0, rtol=0)
    with pytest.raises(ValueError, match="num_inference_steps must be in"):
        make_scheduler(cfg, 0)


def test_family_defaults_are_the_references():
    """A config dict that omits a field gets the family's own default, as diffusers' from_config does."""
    assert scheduler_config({}, "euler").timestep_spacing == "linspace"
    assert scheduler_config({}, "dpmpp_2m").timestep_spacing == "linspace"
    assert scheduler_config({}, "ddim").timestep_spacing == "leading"
    assert scheduler_config({"skip_prk_steps": True}, "pndm").timestep_spacing == "leading"
    assert scheduler_config({}, "ddim").set_alpha_to_one is True
    assert scheduler_config({"skip_prk_steps": True}, "pndm").set_alpha_to_one is False
    # switched to from another family's config (the shipped pipeline's DPM-Solver one): PLMS, not the refused PRK
    assert scheduler_config({"_class_name": "DPMSolverMultistepScheduler"}, "pndm").skip_prk_steps is True


def test_keys_marked_as_defaults_take_the_new_familys_defaults():
    d = {"_class_name": "DDIMScheduler", "timestep_spacing": "leading", "steps_offset": 1,
         "_use_default_values": ["timestep_spacing"]}
    assert scheduler_config(d, "euler").timestep_spacing == "linspace"
    assert scheduler_config(d, "euler").steps_offset == 1
    assert scheduler_config({**d, "_use_default_values": []}, "euler").timestep_spacing == "leading"
