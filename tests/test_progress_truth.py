"""Progress that tells the truth: the gradient pass's bar does not promise T=1000 timesteps when the
threshold ends the loop early, and a --max-timesteps cap is named as the reason the loop ended."""
from __future__ import annotations

import torch

from diffusion.schedule import Schedule
from models.ddpm.config import ModelConfig
from models.ddpm.unet import UNet
from pruning.importance import accumulate_gradients

SMALL = ModelConfig(image_size=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
                    norm_groups=2)


def _model():
    torch.manual_seed(0)
    return UNet(SMALL)


def test_cap_is_named_as_the_reason(capsys):
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    for micro_batch in (1, 8):  # the one-t loop and the chunked one
        report = accumulate_gradients(_model(), Schedule(), x0, thr=0.05, micro_batch=micro_batch, max_timesteps=3,
                                      generator=torch.Generator().manual_seed(0), progress=True)
        assert report.stopped_at is None and report.cap == 3
        assert "max-timesteps cap (3) stopped the loop" in report.stop_reason
    err = capsys.readouterr().err
    assert "/1000" not in err and "L_t/L_max" in err  # a counter with the running ratio, not a 1000-step bar


def test_threshold_stop_is_named():
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    report = accumulate_gradients(_model(), Schedule(), x0, thr=0.999, micro_batch=8, max_timesteps=50,
                                  generator=torch.Generator().manual_seed(0))
    assert report.stopped_at is not None and report.stop_reason.startswith(f"stopped at t={report.stopped_at}")


def test_additivity_subsets_show_progress(capsys):
    from pruning.layers.criteria import make_calibration, output_losses

    model = _model()
    calib = make_calibration(torch.rand(4, 3, 8, 8) * 2 - 1, Schedule(), size=4, seed=0)
    losses = output_losses(model, calib, [{"mid.attn_1"}, {"down.0.block.0"}, set()], batch_size=8, progress=True)
    assert losses.shape == (3,) and losses[2] == 0  # removing nothing changes nothing
    assert "unit subsets L(S)" in capsys.readouterr().err
