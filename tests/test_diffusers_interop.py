"""diffusers' UNet2DModel with its DEFAULT settings (flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
attention_head_dim=8: the layout of CompVis' LDM U-Nets) loads as the DDPM U-Net and computes what diffusers does.

tests/data/diffusers_default_unet/ was written by diffusers 0.42.1 in the reference environment
(benchmarks/make_diffusers_default_unet.py, which needs diffusers): a 45k-parameter UNet2DModel with random
weights, saved by save_pretrained, and its output on two inputs (known_answer.safetensors).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import models
from models.ddpm.convert import DIFFUSERS_DEFAULTS, config_from_diffusers

REF = Path(__file__).parent / "data" / "diffusers_default_unet"


def test_default_settings_load_and_match_diffusers():
    model = models.load(REF)
    c = model.config
    assert (c.flip_sin_to_cos, c.freq_shift, c.downsample_padding, c.head_channels) == (True, 0, 1, 8)
    ka = load_file(REF / "known_answer.safetensors")
    with torch.no_grad():
        eps = model(ka["x"], ka["t"])
    assert (eps - ka["eps"]).abs().max() < 1e-5  # diffusers' output; measured 3.0e-7
    # Each setting matters: the DDPM's embedding or padding gives another function.
    for field, ddpm in (("flip_sin_to_cos", False), ("freq_shift", 1), ("downsample_padding", 0)):
        other = models.UNet(c.__class__(**{**c.__dict__, field: ddpm})).eval()
        other.load_state_dict(model.state_dict())
        with torch.no_grad():
            assert (other(ka["x"], ka["t"]) - ka["eps"]).abs().max() > 1e-3, field


def test_every_unsupported_key_is_reported_at_once():
    cfg = {**json.loads((REF / "config.json").read_text()), "time_embedding_type": "fourier",
           "resnet_time_scale_shift": "scale_shift", "made_up_key": 3, "upsample_type": "resnet"}
    with pytest.raises(ValueError) as err:
        config_from_diffusers(cfg, source="cfg.json")
    msg = str(err.value)
    assert "4" in msg.split(":")[1] and "\n" not in msg
    for key in ("time_embedding_type", "resnet_time_scale_shift", "made_up_key", "upsample_type"):
        assert key in msg


def test_ldm_celebahq_layout_is_accepted():
    # CompVis/ldm-celebahq-256's unet/ is a UNet2DModel on 64x64 latents with diffusers' default embedding
    # and padding; the default 224..896 widths with attention_head_dim 8 give 28..112 heads.
    config, _ = config_from_diffusers({**DIFFUSERS_DEFAULTS, "sample_size": 64}, source="cfg.json")
    assert config.head_channels == 8 and config.ch_mult == (1, 2, 3, 4) and config.flip_sin_to_cos


@pytest.mark.slow  # 10 s at load average 11 on 2 cores (includes importing pruning/)
def test_pruning_keeps_the_embedding_settings(tmp_path):
    from pruning import prune
    model = models.load(REF)
    pruned, _ = prune(model, model.example_inputs(), method="magnitude", ratio=0.3)
    assert pruned.config.freq_shift == 0 and pruned.config.downsample_padding == 1
    again = models.UNet(pruned.config)
    again.load_state_dict(pruned.state_dict())
    x, t = model.example_inputs(2)
    with torch.no_grad():
        assert torch.equal(again.eval()(x, t), pruned.eval()(x, t))


def _same_function(a, b):
    x, t = a.example_inputs(2)
    x = torch.randn_like(x)
    with torch.no_grad():
        return torch.equal(a.eval()(x, t + 17), b.eval()(x, t + 17))


def test_export_round_trip_dense_and_pruned(tmp_path):
    from models.ddpm.export import NotExpressible, diffusers_config, save_folder
    from pruning import prune
    dense = models.load(REF)
    save_folder(dense, tmp_path / "dense")
    cfg = json.loads((tmp_path / "dense" / "config.json").read_text())
    assert cfg["_class_name"] == "UNet2DModel" and cfg["flip_sin_to_cos"] is True
    # The diffusers keys alone describe the same network (what from_pretrained reads).
    assert config_from_diffusers({k: v for k, v in cfg.items() if not k.startswith("_")} | {"_class_name": "UNet2DModel"},
                                 source="x")[0] == dense.config
    assert _same_function(models.load(tmp_path / "dense"), dense)
    pruned, _ = prune(models.load(REF), dense.example_inputs(), method="magnitude", ratio=0.3)
    with pytest.raises(NotExpressible, match="layer width"):
        diffusers_config(pruned.config)
    save_folder(pruned, tmp_path / "pruned")
    back = models.load(tmp_path / "pruned")
    assert back.config == pruned.config and _same_function(back, pruned)
    assert json.loads((tmp_path / "pruned" / "config.json").read_text())["_class_name"] == "DiffpruneUNet2DModel"
    with pytest.raises(FileExistsError):
        save_folder(pruned, tmp_path / "pruned")
