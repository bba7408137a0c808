"""The KL autoencoder: the reference's known answers (sd_family.pt "vae"), config parsing and its errors."""
import json

import pytest
import torch

from models.vae import SD_VAE, AutoencoderKL, AutoencoderKLConfig
from tests.golden_recipe import load_entry, recipe_state_dict


def golden_vae():
    entry = load_entry("vae")
    vae = AutoencoderKL.from_diffusers_config(entry["config"])
    # strict=True: every diffusers name exists here and nothing else does.
    vae.load_state_dict(recipe_state_dict(entry["weights"]), strict=True)
    return vae.eval(), entry


def test_vae_matches_reference_encode_and_decode():
    vae, e = golden_vae()
    with torch.no_grad():
        q = vae.encode(e["image"])
        torch.testing.assert_close(q.mean, e["latent_mean"], atol=1e-4, rtol=0)
        torch.testing.assert_close(q.logvar, e["latent_logvar"], atol=1e-4, rtol=0)
        torch.testing.assert_close(vae.decode(e["z"]), e["decoded"], atol=1e-4, rtol=0)


def test_state_dict_names_are_diffusers():
    vae, e = golden_vae()
    assert list(vae.state_dict()) == list(e["weights"]["keys"])  # same names, same order


def test_posterior_sample_kl_and_latent_scaling():
    vae, e = golden_vae()
    with torch.no_grad():
        q = vae.encode(e["image"])
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    z = q.sample(g1)
    torch.testing.assert_close(z, q.sample(g2))  # reproducible from the generator
    eps = torch.randn(q.mean.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(z, q.mean + torch.exp(0.5 * q.logvar) * eps)
    # KL of N(mean, var) to N(0, 1), by hand on one element summed
    kl = 0.5 * (q.mean ** 2 + q.logvar.exp() - 1 - q.logvar).flatten(1).sum(1)
    torch.testing.assert_close(q.kl(), kl)
    lat = vae.to_latent(z)
    torch.testing.assert_close(lat, z * 0.18215)
    torch.testing.assert_close(vae.from_latent(lat), z)


def test_logvar_is_clamped():
    cfg = AutoencoderKLConfig(block_out_channels=(8,), norm_num_groups=4, latent_channels=2)
    vae = AutoencoderKL(cfg).eval()
    with torch.no_grad():
        vae.quant_conv.weight.zero_()
        vae.quant_conv.bias.copy_(torch.tensor([0.0, 0.0, 100.0, -100.0]))
        q = vae.encode(torch.zeros(1, 3, 4, 4))
    assert q.logvar[0, 0].max() == 20.0 and q.logvar[0, 1].min() == -30.0


def test_shift_factor_and_round_trip_of_config():
    cfg = AutoencoderKLConfig(block_out_channels=(8, 16), norm_num_groups=4, scaling_factor=0.5, shift_factor=0.1)
    vae = AutoencoderKL(cfg)
    z = torch.randn(1, 4, 2, 2)
    torch.testing.assert_close(vae.to_latent(z), (z - 0.1) * 0.5)
    d = json.loads(json.dumps(cfg.to_diffusers_config()))
    assert AutoencoderKLConfig.from_diffusers_config(d) == cfg
    assert AutoencoderKLConfig.from_dict(cfg.to_dict()) == cfg
    assert AutoencoderKL(cfg).decode(torch.zeros(1, 4, 3, 5)).shape == (1, 3, 6, 10)


def test_sd_vae_size():
    # 83,653,863: what diffusers 0.42 counts for AutoencoderKL built from the SD vae/config.json (a separate environment with the reference libraries).
    with torch.device("meta"):
        vae = AutoencoderKL(SD_VAE)
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863


def test_unsupported_config_lists_every_problem_in_one_line():
    d = {"_class_name": "AutoencoderKL", "block_out_channels": [8, 16], "norm_num_groups": 4,
         "down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"], "act_fn": "gelu", "norm_type": "spatial"}
    with pytest.raises(ValueError) as err:
        AutoencoderKLConfig.from_diffusers_config(d, source="vae/config.json")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("vae/config.json")
    for word in ("AttnDownEncoderBlock2D", "gelu", "norm_type"):
        assert word in msg
    with pytest.raises(ValueError, match="multiples of norm_num_groups"):
        AutoencoderKLConfig(block_out_channels=(10,), norm_num_groups=4)


def test_bad_input_shape_is_named():
    vae = AutoencoderKL(AutoencoderKLConfig(block_out_channels=(8, 16), norm_num_groups=4))
    with pytest.raises(ValueError, match="multiples of 2"):
        vae.encode(torch.zeros(1, 3, 5, 4))
    with pytest.raises(ValueError, match="decode"):
        vae.decode(torch.zeros(1, 3, 4, 4))
