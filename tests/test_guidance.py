"""Classifier-free guidance (diffusion/guidance.py): the batched pass equals two separate passes mixed by
Ho & Salimans' eq. 6, s = 1 skips the unconditional pass, s < 1 is refused, and the initial latents of a
sample index do not depend on its batch."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from diffusion.guidance import (Conditioning, GuidedDenoiser, check_guidance_scale, classifier_free_guidance,
                                initial_latents)
from diffusion.samplers import IndexedNoise
from diffusion.schedulers import make_scheduler, sample_loop, scheduler_config


class ToyUNet(nn.Module):
    """out = conv(x) + mean of the text tokens (per channel) + 0.01 t + label and text_embeds terms."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(4, 4, 1)
        self.proj = nn.Linear(6, 4)
        self.calls: list[int] = []

    def forward(self, x, t, *, encoder_hidden_states=None, added_cond_kwargs=None, class_labels=None):
        self.calls.append(x.shape[0])
        assert t.shape == (x.shape[0],)
        out = self.conv(x) + 0.01 * t.float().view(-1, 1, 1, 1)
        if encoder_hidden_states is not None:
            out = out + self.proj(encoder_hidden_states.mean(1)).view(-1, 4, 1, 1)
        if added_cond_kwargs is not None:
            out = out + added_cond_kwargs["text_embeds"].sum(1).view(-1, 1, 1, 1)
        if class_labels is not None:
            out = out + class_labels.float().view(-1, 1, 1, 1)
        return out


def _conds(B=2):
    g = torch.Generator().manual_seed(1)
    cond = Conditioning(torch.randn(B, 3, 6, generator=g), {"text_embeds": torch.randn(B, 5, generator=g),
                                                            "time_ids": torch.randn(B, 6, generator=g)})
    uncond = Conditioning(torch.randn(B, 3, 6, generator=g), {"text_embeds": torch.randn(B, 5, generator=g),
                                                              "time_ids": torch.randn(B, 6, generator=g)})
    return cond, uncond


def test_batched_guidance_equals_two_passes_mixed_by_eq6():
    unet = ToyUNet()
    cond, uncond = _conds()
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor(901)
    with torch.no_grad():
        guided = GuidedDenoiser(unet, cond, uncond, scale=7.5)(x, t)
        assert unet.calls == [4]  # one forward over [uncond; cond]
        tt = torch.full((2,), 901)
        e_c, e_u = unet(x, tt, **cond.kwargs()), unet(x, tt, **uncond.kwargs())
    # Ho & Salimans' own form: (1 + w) eps(z, c) - w eps(z), w = s - 1.
    w = 6.5
    torch.testing.assert_close(guided, (1 + w) * e_c - w * e_u, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(classifier_free_guidance(e_u, e_c, 1.0), e_c)


def test_scale_one_skips_the_unconditional_pass():
    unet = ToyUNet()
    cond, _ = _conds()
    x = torch.randn(2, 4, 8, 8)
    denoiser = GuidedDenoiser(unet, cond, None, scale=1.0)
    with torch.no_grad():
        out = denoiser(x, torch.tensor(1))
        torch.testing.assert_close(out, unet(x, torch.full((2,), 1), **cond.kwargs()))
    assert unet.calls[0] == 2 and denoiser.forwards == 1


@pytest.mark.parametrize("scale", [0.5, 0.0, -1.0, float("nan")])
def test_scale_below_one_is_an_error(scale):
    with pytest.raises(ValueError, match="guidance scale must be >= 1"):
        check_guidance_scale(scale)
    with pytest.raises(ValueError, match="guidance scale must be >= 1"):
        GuidedDenoiser(ToyUNet(), Conditioning(), Conditioning(), scale=scale)


def test_guidance_without_unconditional_inputs_is_an_error():
    with pytest.raises(ValueError, match="needs unconditional inputs"):
        GuidedDenoiser(ToyUNet(), Conditioning(), None, scale=2.0)


def test_class_labels_and_half_precision_pass_through():
    unet = ToyUNet().to(torch.bfloat16)
    cond = Conditioning(class_labels=torch.tensor([3, 7]))
    x = torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        out = GuidedDenoiser(unet, cond)(x, torch.tensor(5.5))
    assert out.dtype == torch.float32
    assert (out[1] - out[0]).mean().item() == pytest.approx(4.0, abs=0.2)  # labels 7 - 3, up to bf16 and conv


def test_select_takes_rows_of_every_input():
    cond, _ = _conds(B=3)
    sub = cond.select([2])
    torch.testing.assert_close(sub.encoder_hidden_states, cond.encoder_hidden_states[2:3])
    torch.testing.assert_close(sub.added_cond_kwargs["time_ids"], cond.added_cond_kwargs["time_ids"][2:3])


def test_initial_latents_depend_only_on_seed_and_index():
    full = initial_latents(7, [0, 1, 2, 3], (4, 8, 8))
    alone = initial_latents(7, [2], (4, 8, 8))
    torch.testing.assert_close(full[2:3], alone, atol=0, rtol=0)
    # The same stream as the DDPM samplers' x_T for that index.
    torch.testing.assert_close(alone, IndexedNoise(7, [2]).randn((4, 8, 8)), atol=0, rtol=0)
    assert not torch.equal(initial_latents(8, [2], (4, 8, 8)), alone)


def test_a_guided_trajectory_is_the_same_in_any_batch():
    """Sample 1 generated in a batch of three equals sample 1 generated alone (same prompt rows)."""
    unet = ToyUNet()
    cond, uncond = _conds(B=3)
    config = scheduler_config({"_class_name": "DPMSolverMultistepScheduler", "beta_schedule": "scaled_linear",
                               "beta_start": 0.00085, "beta_end": 0.012})
    with torch.no_grad():
        batch = sample_loop(make_scheduler(config, 4), GuidedDenoiser(unet, cond, uncond, 3.0),
                            initial_latents(0, [0, 1, 2], (4, 4, 4)))
        one = sample_loop(make_scheduler(config, 4), GuidedDenoiser(unet, cond.select([1]), uncond.select([1]), 3.0),
                          initial_latents(0, [1], (4, 4, 4)))
    torch.testing.assert_close(batch[1:2], one, atol=1e-5, rtol=1e-5)
