"""models.load on every supported on-disk format, checked against the golden eps of the reference U-Nets.

The golden file (tests/data/golden/unet_tiny.pt, see its README) holds ONE network in three tensor layouts
(DDIM codebase, current diffusers, legacy diffusers) and its output eps for fixed (x, t). Each test writes
the layout to a temporary file or folder in the real format (.ckpt, DataParallel prefix, DDIM training
list, diffusers folder with .safetensors or .bin) and checks that ``models.load`` reproduces eps.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import models
from models.ddpm.config import ModelConfig
from models.ddpm.convert import config_from_diffusers
from models.ddpm.unet import UNet

GOLDEN = Path(__file__).resolve().parent / "data" / "golden" / "unet_tiny.pt"

# The golden network (README: ch=32, ch_mult=(1,2), one ResBlock per level, attention at 16 px, GN(32, 1e-6)).
GOLDEN_CONFIG = ModelConfig(image_size=32, in_channels=3, out_channels=3, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                            attn_resolutions=(16,), dropout=0.0, num_heads=1, norm_groups=32, norm_eps=1e-6,
                            resamp_with_conv=True)

# What diffusers writes for that network (the google/ddpm-cifar10-32 config, shrunk to the golden sizes).
DIFFUSERS_CONFIG = {
    "_class_name": "UNet2DModel", "_diffusers_version": "0.0.4", "act_fn": "silu", "attention_head_dim": None,
    "block_out_channels": [32, 64], "center_input_sample": False, "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 1,
    "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
    "time_embedding_type": "positional", "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
}


@pytest.fixture(scope="module")
def golden():
    # Part of the repository (tests/data/golden/README.md): a missing file is a failure, never a skip.
    assert GOLDEN.is_file(), f"golden data not found at {GOLDEN} (tests/data/golden is part of the repository)"
    return torch.load(GOLDEN, map_location="cpu", weights_only=True)


def eps_of(model, golden) -> torch.Tensor:
    assert not model.training, "load() must return the model in eval mode"
    with torch.no_grad():
        return model(golden["x"], golden["t"].float())


def assert_golden(model, golden) -> None:
    err = (eps_of(model, golden) - golden["eps"]).abs().max().item()
    assert err < 1e-4, f"max |eps - golden eps| = {err}"


def write_diffusers(folder: Path, state_dict, *, weights: str, config=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or DIFFUSERS_CONFIG))
    tensors = {k: v.clone().contiguous() for k, v in state_dict.items()}
    if weights == "safetensors":
        save_file(tensors, str(folder / "diffusion_pytorch_model.safetensors"))
    else:
        torch.save(tensors, folder / "diffusion_pytorch_model.bin")
    return folder


# ----------------------------------------------------------------------------------------------- DDIM codebase
def test_ddim_plain_state_dict_infers_config_and_matches_golden(golden, tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save(golden["state_dict_ddim_layout"], path)
    model, info = models.load_with_info(path)
    assert info["format"] == "ddim" and info["ema"] is None
    assert info["config"] == GOLDEN_CONFIG
    assert any("16x16" in note for note in info["notes"]), "the image-size guess must be documented in the notes"
    assert_golden(model, golden)


def test_ddim_dataparallel_prefix(golden, tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"module." + k: v for k, v in golden["state_dict_ddim_layout"].items()}, path)
    assert_golden(models.load(path), golden)


def test_ddim_training_list_picks_ema_or_raw(golden, tmp_path):
    ema_sd = golden["state_dict_ddim_layout"]
    raw_sd = {k: v + 0.01 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1)) for k, v in ema_sd.items()}
    path = tmp_path / "ckpt.pth"
    torch.save([{"module." + k: v for k, v in raw_sd.items()}, {}, 0, 0, {"module." + k: v for k, v in ema_sd.items()}], path)

    model, info = models.load_with_info(path)
    assert info["ema"] is True
    assert_golden(model, golden)

    raw_model, raw_info = models.load_with_info(path, ema=False)
    assert raw_info["ema"] is False
    for k, v in raw_model.state_dict().items():
        assert torch.equal(v, raw_sd[k]), f"{k} is not the raw weight"
    assert not torch.allclose(eps_of(raw_model, golden), golden["eps"], atol=1e-4)


def test_ddim_with_preset_and_image_size_override(golden, tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save(golden["state_dict_ddim_layout"], path)
    with pytest.raises(ValueError, match=r"preset 'cifar10'.*ch: 32 vs 128"):
        models.load(path, preset="cifar10")
    # Same weights described for 64 px images: attention stays at level 1, so eps on the golden x is unchanged.
    model = models.load(path, image_size=64, norm_groups=32, dropout=0.1)
    assert model.config.attn_resolutions == (32,) and model.config.dropout == 0.1
    assert_golden(model, golden)


def test_ddim_file_of_a_preset_takes_what_the_weights_lack_from_it(tmp_path):
    # The tiny preset's 8 GroupNorm groups are not in the weights: without the preset the loader would
    # assume the DDPM's 32 and build a different function.
    torch.manual_seed(0)
    original = UNet(models.preset("tiny")).eval()
    path = tmp_path / "tiny_ddim.ckpt"
    torch.save(original.state_dict(), path)
    model = models.load(path, preset="tiny")
    assert model.config == models.preset("tiny")
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([250.0])
    with torch.no_grad():
        assert torch.equal(model(x, t), original(x, t))
    assert models.load(path).config.norm_groups == 32


# ----------------------------------------------------------------------------------------------- diffusers
@pytest.mark.parametrize("layout", ["state_dict_diffusers_layout", "state_dict_diffusers_legacy_layout"])
@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_diffusers_folder_matches_golden(golden, tmp_path, layout, weights):
    folder = write_diffusers(tmp_path / "unet", golden[layout], weights=weights)
    model, info = models.load_with_info(folder)
    assert info["format"] == "diffusers" and info["weights"].endswith(weights)
    assert info["config"] == GOLDEN_CONFIG
    assert_golden(model, golden)
    # The weights file itself, and a pipeline folder holding unet/, name the same model.
    assert_golden(models.load(folder / f"diffusion_pytorch_model.{weights}"), golden)
    (tmp_path / "model_index.json").write_text("{}")
    assert_golden(models.load(tmp_path), golden)


def test_diffusers_names_in_a_plain_file(golden, tmp_path):
    path = tmp_path / "diffusers_names.pt"
    torch.save(golden["state_dict_diffusers_legacy_layout"], path)
    model, info = models.load_with_info(path)
    assert info["format"] == "diffusers-state-dict" and info["config"] == GOLDEN_CONFIG
    assert_golden(model, golden)


# flip_sin_to_cos / freq_shift / downsample_padding=1 are supported (tests/test_diffusers_interop.py).
@pytest.mark.parametrize("key, value", [("time_embedding_type", "fourier"), ("downsample_padding", 2),
                                        ("resnet_time_scale_shift", "scale_shift"), ("made_up_key", 3)])
def test_diffusers_unsupported_setting_names_key_and_path(golden, tmp_path, key, value):
    folder = write_diffusers(tmp_path / "unet", golden["state_dict_diffusers_layout"], weights="safetensors",
                             config={**DIFFUSERS_CONFIG, key: value})
    with pytest.raises(ValueError) as err:
        models.load(folder)
    assert key in str(err.value) and str(folder / "config.json") in str(err.value)


def test_diffusers_heads_per_width():
    cfg = {**DIFFUSERS_CONFIG, "down_block_types": ["AttnDownBlock2D", "AttnDownBlock2D"],
           "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D"], "attention_head_dim": 16}
    config, _ = config_from_diffusers(cfg, source="cfg.json")  # 32 channels -> 2 heads, 64 -> 4 heads
    assert config.head_channels == 16 and models.UNet(config).widths()["mid.attn_1.heads"] == 4
    with pytest.raises(ValueError, match="attention_head_dim=24"):
        config_from_diffusers({**cfg, "attention_head_dim": 24}, source="cfg.json")
    config, _ = config_from_diffusers({**DIFFUSERS_CONFIG, "attention_head_dim": 32}, source="cfg.json")
    assert config.num_heads == 2 and config.attn_resolutions == (16,)


# ----------------------------------------------------------------------------------------------- diffprune format
def test_project_checkpoint_round_trip(golden, tmp_path):
    path = tmp_path / "ckpt.pt"
    raw = {k: v * 0.5 for k, v in golden["state_dict_ddim_layout"].items()}
    models.save_checkpoint(path, config=GOLDEN_CONFIG, state_dict=raw, ema_state_dict=golden["state_dict_ddim_layout"],
                           meta={"step": 7})
    model, info = models.load_with_info(path)
    assert info["format"] == "diffprune" and info["ema"] is True and info["meta"]["step"] == 7
    assert_golden(model, golden)
    raw_model = models.load(path, ema=False)
    assert all(torch.equal(v, raw[k]) for k, v in raw_model.state_dict().items())
    with pytest.raises(ValueError, match="norm_groups=8.*stores norm_groups=32"):
        models.load(path, norm_groups=8)


def test_project_checkpoint_with_nonuniform_widths_round_trips(tmp_path):
    widths = {"down.0.block.0.conv1": 20, "temb.dense.0": 50, "down.1.attn.0.q": 24, "down.1.attn.0.k": 24,
              "down.1.attn.0.v": 40}
    config = ModelConfig(image_size=32, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,),
                         dropout=0.0, norm_groups=4, widths=widths)
    torch.manual_seed(0)
    model = UNet(config).eval()
    path = tmp_path / "pruned.pt"
    models.save_checkpoint(path, config=config, state_dict=model.state_dict())
    loaded = models.load(path, preset=None)
    assert loaded.config == config
    assert {k: loaded.widths()[k] for k in widths} == widths
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3.0, 500.0])
    with torch.no_grad():
        assert torch.equal(loaded(x, t), model(x, t))


# ----------------------------------------------------------------------------------------------- presets
def test_preset_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, info = models.load_with_info("tiny")
    assert torch.equal(torch.get_rng_state(), before), "loading must not move the caller's RNG"
    b = models.load("tiny")
    c = models.load("tiny", seed=1)
    assert info["format"] == "preset" and "UNTRAINED" in info["weights"] and a.config == models.preset("tiny")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not torch.equal(a.conv_in.weight, c.conv_in.weight)


# ----------------------------------------------------------------------------------------------- errors
def _broken(golden, tmp_path, edit) -> Path:
    sd = dict(golden["state_dict_ddim_layout"])
    edit(sd)
    path = tmp_path / "broken.ckpt"
    torch.save(sd, path)
    return path


def test_missing_tensor_is_named(golden, tmp_path):
    path = _broken(golden, tmp_path, lambda sd: sd.pop("mid.attn_1.proj_out.bias"))
    with pytest.raises(ValueError, match=r"missing \(1\): mid\.attn_1\.proj_out\.bias"):
        models.load(path)


def test_misshaped_tensor_is_named(golden, tmp_path):
    path = _broken(golden, tmp_path, lambda sd: sd.__setitem__("up.1.block.0.conv2.bias", torch.zeros(65)))
    with pytest.raises(ValueError, match=r"mis-shaped \(1\): up\.1\.block\.0\.conv2\.bias: checkpoint \(65,\) vs model \(64,\)"):
        models.load(path)


def test_unexpected_tensor_is_named(golden, tmp_path):
    path = _broken(golden, tmp_path, lambda sd: sd.__setitem__("extra.weight", torch.zeros(3)))
    with pytest.raises(ValueError, match=r"unexpected \(1\): extra\.weight"):
        models.load(path)


def test_unknown_sources_name_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "model.ckpt"
    with pytest.raises(FileNotFoundError, match="nowhere/model.ckpt.*preset name"):
        models.load(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty is a folder without config.json"):
        models.load(tmp_path / "empty")
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot read .*notes.txt"):
        models.load(text)
    other = tmp_path / "other.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "epoch": 3}, other)
    with pytest.raises(ValueError, match="other.pt: not a recognised checkpoint.*epoch, model"):
        models.load(other)
