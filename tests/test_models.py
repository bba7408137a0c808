"""The U-Net: preset sizes, explicit widths, construction errors, the timestep embedding."""
from __future__ import annotations

import math

import pytest
import torch

from models.ddpm.blocks import timestep_embedding
from models.ddpm.config import PRESETS, ModelConfig, preset
from models.ddpm.unet import UNet, count_parameters, dense_widths

SMALL = ModelConfig(image_size=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0, norm_groups=2)


@pytest.mark.parametrize("name, params", [("cifar10", 35_746_307), ("celeba64", 78_700_803), ("church256", 113_673_219),
                                          ("bedroom256", 113_673_219)])
def test_preset_parameter_counts(name, params):
    assert count_parameters(UNet(preset(name))) == params


def test_unknown_preset_is_named():
    with pytest.raises(KeyError, match="nosuch"):
        preset("nosuch")


def test_forward_shape_and_float_timesteps():
    model = UNet(PRESETS["tiny"]).eval()
    x = torch.randn(2, 3, 32, 32)
    out = model(x, torch.tensor([3.5, 999.0]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    # A scalar t is broadcast over the batch.
    torch.testing.assert_close(model(x, torch.tensor(7.0)), model(x, torch.tensor([7.0, 7.0])))


def test_example_inputs_follow_the_config():
    config = ModelConfig(image_size=8, in_channels=1, out_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                         attn_resolutions=(4,), dropout=0.0, norm_groups=2)
    model = UNet(config).eval()
    x, t = model.example_inputs(batch=3)
    assert x.shape == (3, 1, 8, 8) and t.shape == (3,) and x.dtype == t.dtype == torch.float32
    assert model(x, t).shape == x.shape
    assert model.to("meta").example_inputs()[0].device.type == "meta"  # follows the model's device


def test_timestep_embedding_closed_form():
    dim, t = 8, torch.tensor([0.0, 10.0])
    emb = timestep_embedding(t, dim)
    freqs = [math.exp(-math.log(10000) * i / 3) for i in range(4)]  # half - 1 = 3
    expected = [[math.sin(tt * f) for f in freqs] + [math.cos(tt * f) for f in freqs] for tt in (0.0, 10.0)]
    torch.testing.assert_close(emb, torch.tensor(expected), rtol=1e-5, atol=1e-6)
    assert timestep_embedding(t, 9).shape == (2, 9)  # odd dims are zero-padded


def test_dense_widths_are_read_back():
    for name in ("tiny", "cifar10"):
        config = PRESETS[name]
        assert UNet(config).widths() == dense_widths(config)


def test_nonuniform_widths_round_trip_through_config_and_state_dict():
    widths = {"conv_in": 6, "down.0.block.0.conv1": 4, "down.0.block.0.conv2": 6, "temb.dense.0": 13,
              "temb.dense.1": 11, "down.1.attn.0.q": 5, "down.1.attn.0.k": 5, "down.1.attn.0.v": 7,
              "down.0.downsample.conv": 10, "up.1.upsample.conv": 4, "up.0.block.1.conv2": 6}
    config = ModelConfig.from_dict({**SMALL.to_dict(), "widths": widths})
    torch.manual_seed(0)
    model = UNet(config).eval()
    for name, width in widths.items():
        assert model.widths()[name] == width, name
    assert model.get_submodule("down.0.block.0.temb_proj").in_features == 11
    assert model.get_submodule("down.1.block.0.conv1").in_channels == 10  # the downsample's output
    # Rebuild from the plain dict form (what a checkpoint stores) + a plain state dict.
    clone = UNet(ModelConfig.from_dict(config.to_dict()))
    clone.load_state_dict(model.state_dict())
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1.0, 500.0])
    torch.testing.assert_close(clone.eval()(x, t), model(x, t))


def test_widths_that_break_a_residual_or_norm_are_named():
    with pytest.raises(ValueError, match=r"down\.0\.block\.0\.conv2 width 6 != block input width 8"):
        UNet(ModelConfig.from_dict({**SMALL.to_dict(), "widths": {"down.0.block.0.conv2": 6}}))
    with pytest.raises(ValueError, match=r"down\.1\.attn\.0.*q width 6 != k width 4"):
        UNet(ModelConfig.from_dict({**SMALL.to_dict(), "widths": {"down.1.attn.0.q": 6, "down.1.attn.0.k": 4}}))
    with pytest.raises(ValueError, match=r"down\.0\.block\.0.*divisible by num_groups"):
        UNet(ModelConfig.from_dict({**SMALL.to_dict(), "widths": {"down.0.block.0.conv1": 5}}))
    with pytest.raises(ValueError, match=r"does not have.*down\.9\.block\.0\.conv1"):
        UNet(ModelConfig.from_dict({**SMALL.to_dict(), "widths": {"down.9.block.0.conv1": 4}}))


def test_config_validation_and_unknown_keys():
    with pytest.raises(ValueError, match="unknown ModelConfig keys"):
        ModelConfig.from_dict({**SMALL.to_dict(), "chanels": 3})
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(dropout=1.5)
    with pytest.raises(ValueError, match="image_size=30"):
        ModelConfig(image_size=30, ch_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="attn_scale"):
        ModelConfig(attn_scale="sometimes")


def test_attention_scale_follows_the_config():
    widths = {"down.1.attn.0.q": 4, "down.1.attn.0.k": 4}
    pruned = UNet(ModelConfig.from_dict({**SMALL.to_dict(), "widths": widths}))
    kept = UNet(ModelConfig.from_dict({**SMALL.to_dict(), "widths": widths, "attn_scale": "dense"}))
    assert pruned.get_submodule("down.1.attn.0").scale == pytest.approx(4 ** -0.5)
    assert kept.get_submodule("down.1.attn.0").scale == pytest.approx(16 ** -0.5)  # dense width ch * 2 = 16


def test_multi_head_attention_matches_per_head_reference():
    config = ModelConfig(image_size=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), num_heads=4,
                         dropout=0.0, norm_groups=2)
    attn = UNet(config).get_submodule("down.1.attn.0").eval()
    x = torch.randn(1, 16, 8, 8)
    h = attn.norm(x)
    q, k, v = (m(h).reshape(4, 4, 64) for m in (attn.q, attn.k, attn.v))  # (heads, d, N)
    heads = [v[i] @ torch.softmax(q[i].T @ k[i] / 2.0, dim=-1).T for i in range(4)]  # scale 1/sqrt(4)
    expected = x + attn.proj_out(torch.cat(heads).reshape(1, 16, 8, 8))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-5)
