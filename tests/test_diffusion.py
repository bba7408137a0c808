"""Tests of diffusion/: schedules, the forward process and its loss, and the samplers.

Known answers come from the golden files (the DDIM codebase's DDIM chain on a tiny DDPM U-Net), from
closed forms computed independently in float64 (Bayes' rule for the posterior), and from an oracle
denoiser whose exact output is known. Everything runs on the CPU in a few seconds.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from diffusion.ddpm import (HeldOutLoss, eps_loss, predict_x0, q_posterior, q_sample, sample_timesteps,
                            stratified_timesteps)
from diffusion.samplers import IndexedNoise, ddim_sample, ddim_timesteps, ddpm_sample, sample
from diffusion.schedule import DiffusionConfig, Schedule

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
GOLDEN_CONFIG = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), image_size=32, dropout=0.0)


@pytest.fixture(scope="module")
def golden():
    path = GOLDEN / "unet_tiny.pt"
    # Part of the repository (tests/data/golden/README.md): a missing file is a failure, never a skip.
    assert path.exists(), f"golden vectors not found at {path}"
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def golden_unet(golden):
    from models.ddpm.config import ModelConfig
    from models.ddpm.unet import UNet
    model = UNet(ModelConfig(**GOLDEN_CONFIG))
    model.load_state_dict(golden["state_dict_ddim_layout"], strict=True)
    return model.eval()


class StubEps(nn.Module):
    """A tiny per-sample eps model (a conv plus a timestep bias): fast, and no cross-sample mixing."""

    def __init__(self, channels: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * torch.tanh(self.conv(x)) + 0.1 * torch.sin(t / 100.0)[:, None, None, None]


class PointMassOracle(nn.Module):
    """The exact eps for data that is a point mass at c: x_t = sqrt(alpha_bar_t) c + sqrt(1 - alpha_bar_t) eps."""

    def __init__(self, schedule: Schedule, c: float):
        super().__init__()
        self.schedule, self.c = schedule, c

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha_bar_t = Schedule.at(self.schedule.alpha_bars, t.long(), x)
        return (x - alpha_bar_t.sqrt() * self.c) / (1.0 - alpha_bar_t).sqrt()


# ---------------------------------------------------------------------------------------------- schedules
def test_golden_betas_are_the_linear_schedule(golden):
    torch.testing.assert_close(Schedule(DiffusionConfig()).betas.float(), golden["betas"], rtol=1e-6, atol=1e-9)


def test_cosine_alpha_bar_decreasing_in_unit_interval():
    alpha_bars = Schedule(DiffusionConfig(schedule="cosine")).alpha_bars
    assert torch.all(alpha_bars > 0) and torch.all(alpha_bars <= 1)
    assert torch.all(alpha_bars[1:] < alpha_bars[:-1])


def test_ddim_timesteps_match_golden_sequences(golden):
    assert ddim_timesteps(10, 1000, "uniform") == list(golden["seq_uniform"])
    assert ddim_timesteps(10, 1000, "quad") == list(golden["seq_quad"])


def test_ddim_timesteps_codebase_quirks_and_errors():
    assert ddim_timesteps(3, 1000) == [0, 333, 666, 999]  # T // 3 stride gives 4 entries, as the DDIM codebase
    quad = ddim_timesteps(100, 1000, "quad")
    assert len(quad) == 100 and quad[:5] == [0, 0, 0, 0, 1] and quad[-1] == 800
    with pytest.raises(ValueError, match="skip_type"):
        ddim_timesteps(10, 1000, "linear")
    with pytest.raises(ValueError, match="num_steps"):
        ddim_timesteps(0, 1000)
    with pytest.raises(ValueError, match="num_steps"):
        ddim_timesteps(1001, 1000)


# ---------------------------------------------------------------------------------------------- forward process
def test_q_sample_moments():
    schedule = Schedule()
    g = torch.Generator().manual_seed(0)
    n = 20000
    x0 = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(1, 3, 2, 2).expand(n, 3, 2, 2)
    for t_int in (0, 250, 999):
        t = torch.full((n,), t_int)
        x_t = q_sample(schedule, x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
        alpha_bar_t = schedule.alpha_bars[t_int].item()
        var = 1 - alpha_bar_t
        # 6 standard errors: the mean has std sqrt(var/n), the sample variance about var*sqrt(2/n).
        assert torch.allclose(x_t.mean(0), math.sqrt(alpha_bar_t) * x0[0], atol=6 * math.sqrt(var / n))
        assert torch.allclose(x_t.var(0), torch.full_like(x0[0], var), atol=6 * var * math.sqrt(2 / n))


def test_q_posterior_matches_bayes_rule():
    schedule = Schedule()
    betas = schedule.betas.tolist()
    x0_val, x_t_val = 0.7, -0.3
    for t in (1, 10, 500, 999):
        # Independently in float64: prior q(x_{t-1} | x0) = N(sqrt(ab_prev) x0, 1 - ab_prev) (eq. 4), likelihood
        # q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t) (eq. 2); the product of Gaussians gives the posterior.
        alpha_bar_prev = math.prod(1 - b for b in betas[:t])
        alpha_t, beta_t = 1 - betas[t], betas[t]
        precision = 1 / (1 - alpha_bar_prev) + alpha_t / beta_t
        var = 1 / precision
        mean = var * (math.sqrt(alpha_bar_prev) * x0_val / (1 - alpha_bar_prev) + math.sqrt(alpha_t) * x_t_val / beta_t)
        x0 = torch.full((1, 1, 1, 1), x0_val, dtype=torch.float64)
        x_t = torch.full((1, 1, 1, 1), x_t_val, dtype=torch.float64)
        got_mean, got_var = q_posterior(schedule, x0, x_t, torch.tensor([t]))
        assert got_mean.item() == pytest.approx(mean, rel=1e-10, abs=1e-12)
        assert got_var.item() == pytest.approx(var, rel=1e-10)
    # t = 0: alpha_bar_{-1} = 1, so the posterior is the point x0.
    got_mean, got_var = q_posterior(schedule, x0, x_t, torch.tensor([0]))
    assert got_mean.item() == pytest.approx(x0_val) and got_var.item() == 0.0


def test_predict_x0_inverts_q_sample():
    schedule = Schedule()
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand((4, 3, 8, 8), generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 500, 999])
    torch.testing.assert_close(predict_x0(q_sample(schedule, x0, t, eps), eps, Schedule.at(schedule.alpha_bars, t, x0)), x0, rtol=0, atol=1e-10)


def test_eps_loss_sum_is_mean_times_pixels():
    schedule = Schedule()
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn((4, 3, 8, 8), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    t = torch.tensor([3, 100, 600, 999])
    model = StubEps()
    loss_sum = eps_loss(model, schedule, x0, t, eps, reduction="sum")
    loss_mean = eps_loss(model, schedule, x0, t, eps, reduction="mean")
    torch.testing.assert_close(loss_sum, loss_mean * 3 * 8 * 8)


@pytest.mark.parametrize("batch_size", [8, 9])
def test_antithetic_timesteps_pair_to_T_minus_1(batch_size):
    T = 1000
    t = sample_timesteps(batch_size, T, torch.Generator().manual_seed(3), antithetic=True)
    assert t.shape == (batch_size,) and t.min() >= 0 and t.max() < T
    n = batch_size // 2 + 1  # first n are the draws, the rest their mirrors T-1-t
    assert torch.all(t[: batch_size - n] + t[n:] == T - 1)


@pytest.mark.parametrize("n, T", [(10, 1000), (7, 1000), (1000, 1000), (16, 10)])
def test_stratified_timesteps_put_one_draw_in_each_bin(n, T):
    t = stratified_timesteps(n, T, torch.Generator().manual_seed(5))
    assert t.dtype == torch.int64 and t.shape == (n,)
    bins = torch.sort(t).values.double() * n / T  # draw i of the sorted list lies in bin [i, i+1) (up to flooring)
    assert torch.all(bins >= torch.arange(n) * 1.0 - n / T) and torch.all(bins < torch.arange(n) + 1.0)
    assert not torch.equal(t, torch.sort(t).values) or n == 1  # shuffled, not in bin order


def test_held_out_loss_deterministic_and_model_symmetric():
    schedule = Schedule()
    images = torch.rand((3, 3, 8, 8), generator=torch.Generator().manual_seed(4)) * 2 - 1
    a, b = HeldOutLoss(images, schedule, draws=2, seed=7), HeldOutLoss(images, schedule, draws=2, seed=7)
    assert torch.equal(a.t, b.t) and torch.equal(a.eps, b.eps)
    model = StubEps()
    assert a(model) == b(model) == a(copy.deepcopy(model))
    assert HeldOutLoss(images, schedule, draws=2, seed=8)(model) != a(model)


# ---------------------------------------------------------------------------------------------- samplers
@pytest.mark.parametrize("skip_type", ["uniform", "quad"])
def test_ddim_eta0_reproduces_golden(golden, golden_unet, skip_type):
    with torch.no_grad():
        x_0 = ddim_sample(golden_unet, Schedule(), golden["x_T"], ddim_timesteps(10, 1000, skip_type))
    expected = golden[f"ddim_eta0_{skip_type}_10"]  # (2, 3, 32, 32): the final x_0 of the chain only
    # |x_0| reaches ~240 for this untrained net, so float32 rounding alone gives ~1e-4 absolute; rtol covers it.
    torch.testing.assert_close(x_0, expected, rtol=1e-4, atol=1e-4)


def test_ddim_eta0_deterministic_and_ignores_noise():
    schedule, model = Schedule(), StubEps()
    x_T = IndexedNoise(0, [0, 1]).randn((3, 8, 8))
    ts = ddim_timesteps(10)

    def forbidden(like):
        raise AssertionError("eta = 0 must not draw noise")

    with torch.no_grad():
        first = ddim_sample(model, schedule, x_T, ts, noise_fn=forbidden)
        second = ddim_sample(model, schedule, x_T, ts, noise_fn=IndexedNoise(5, [0, 1]))
    assert torch.equal(first, second)


def test_ddim_trajectory_and_repeated_timesteps():
    schedule, model = Schedule(), StubEps()
    x_T = IndexedNoise(0, [0]).randn((3, 8, 8))
    quad = ddim_timesteps(100, 1000, "quad")
    with torch.no_grad():
        x_0, xs, x0_preds = ddim_sample(model, schedule, x_T, quad, return_trajectory=True)
        # A repeated timestep (t == t_next) maps x_t to itself up to rounding, so the de-duplicated chain agrees.
        dedup = ddim_sample(model, schedule, x_T, sorted(set(quad)))
    assert len(xs) == 101 and len(x0_preds) == 100 and torch.equal(xs[0], x_T) and torch.equal(xs[-1], x_0)
    torch.testing.assert_close(x_0, dedup, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampler,variance", [("ddim", "beta"), ("ddpm", "beta"), ("ddpm", "beta_tilde")])
def test_point_mass_oracle_returns_the_point(sampler, variance):
    # With the exact eps of a point mass at c, x0_pred = c at every step, and both samplers end exactly at c.
    schedule, c = Schedule(), 0.3
    oracle = PointMassOracle(schedule, c)
    x_T = IndexedNoise(0, [0, 1]).randn((1, 2, 2), dtype=torch.float64)
    noise = IndexedNoise(1, [0, 1])
    if sampler == "ddim":
        x_0 = ddim_sample(oracle, schedule, x_T, ddim_timesteps(20), eta=1.0, noise_fn=noise)
    else:
        x_0 = ddpm_sample(oracle, schedule, x_T, variance=variance, noise_fn=noise)
    torch.testing.assert_close(x_0, torch.full_like(x_0, c), rtol=0, atol=1e-6)


def test_indexed_noise_independent_of_batch():
    alone = IndexedNoise(3, [5])
    batch = IndexedNoise(3, [2, 5, 9])
    for _ in range(3):  # x_T and two step draws
        assert torch.equal(alone.randn((3, 4, 4))[0], batch.randn((3, 4, 4))[1])
    with pytest.raises(ValueError, match="indices"):
        IndexedNoise(0, [-1])


@pytest.mark.parametrize("sampler,eta", [("ddim", 1.0), ("ddpm", 0.0)])
def test_sample_is_reproducible_per_index(sampler, eta):
    schedule, model = Schedule(DiffusionConfig(num_timesteps=100)), StubEps()
    kw = dict(seed=11, image_shape=(3, 8, 8), sampler=sampler, eta=eta)
    steps = 10 if sampler == "ddim" else None
    alone = sample(model, schedule, indices=[5], steps=steps, **kw)
    batch = sample(model, schedule, indices=[2, 5, 9], steps=steps, batch_size=2, **kw)
    assert batch.shape == (3, 3, 8, 8) and batch.abs().max() <= 1
    torch.testing.assert_close(alone[0], batch[1], rtol=0, atol=1e-6)
    assert not torch.allclose(batch[0], batch[1])
    other_seed = sample(model, schedule, indices=[5], steps=steps, **{**kw, "seed": 12})
    assert not torch.allclose(alone, other_seed)


def test_sample_rejects_bad_arguments():
    schedule, model = Schedule(DiffusionConfig(num_timesteps=100)), StubEps()
    kw = dict(indices=[0], seed=0, image_shape=(3, 8, 8))
    with pytest.raises(ValueError, match="sampler"):
        sample(model, schedule, sampler="euler", **kw)
    with pytest.raises(ValueError, match="ddpm"):
        sample(model, schedule, sampler="ddpm", steps=10, **kw)
    with pytest.raises(ValueError, match="eta"):
        sample(model, schedule, eta=1.5, steps=5, **kw)


def test_clip_x0_keeps_the_chain_in_the_data_range():
    """A model whose eps is off by a constant bias sends unclipped DDIM far outside [-1, 1]; with clip_x0
    every x0 prediction is clamped (Ho et al.'s clip_denoised) and the sample stays in range."""
    from diffusion.samplers import ddim_sample, ddim_timesteps, ddpm_sample

    class Biased(torch.nn.Module):
        def forward(self, x, t):
            return x + 0.05  # x_t itself is a good eps guess at large t; the bias is the "error"

    schedule = Schedule()
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    seq = ddim_timesteps(20, 1000, "uniform")
    _, _, preds = ddim_sample(Biased(), schedule, x_T, seq, return_trajectory=True)
    assert max(p.abs().max() for p in preds) > 2.0
    out, _, preds = ddim_sample(Biased(), schedule, x_T, seq, return_trajectory=True, clip_x0=True)
    assert max(p.abs().max() for p in preds) <= 1.0 and out.abs().max() <= 1.0 + 1e-5
    assert ddpm_sample(Biased(), Schedule(DiffusionConfig(num_timesteps=50)), x_T, clip_x0=True,
                       noise_fn=torch.zeros_like).abs().max() <= 1.0 + 1e-5
