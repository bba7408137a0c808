"""The conditional latent U-Net (models/sd): known answers from diffusers' UNet2DConditionModel (sd_family.pt),
the published preset sizes, the config reader's errors, and the pruned structure (widths, removed units)."""
from __future__ import annotations

import json

import pytest
import torch

from golden_recipe import load_entry, recipe_state_dict
from models.sd import UNet2DConditionModel, UNetConditionConfig
from models.sd.presets import DIFFUSERS_CONFIGS, PRESETS, preset
from models.sd.wiring import dense_widths, removable_units

# Parameter counts of the published U-Nets (diffusers UNet2DConditionModel built from their config.json).
PUBLISHED_PARAMS = {
    "sd-v1.5": 859_520_964, "sd-2.1": 865_910_724, "sd-2.1-base": 865_910_724, "sdxl-base": 2_567_463_684,
    "bk-sdm-base": 579_384_964, "bk-sdm-small": 482_346_884, "bk-sdm-tiny": 323_384_964,
}


def golden_model(name: str):
    """(model with recipe weights, entry) for a sd_family.pt U-Net entry."""
    entry = load_entry(name)
    model = UNet2DConditionModel(UNetConditionConfig.from_diffusers(entry["config"])).eval()
    model.load_state_dict(recipe_state_dict(entry["weights"]), strict=True)  # the reference's names, unchanged
    return model, entry


def golden_inputs(entry: dict) -> dict:
    added = {"text_embeds": entry["text_embeds"], "time_ids": entry["time_ids"]} if "text_embeds" in entry else None
    return dict(encoder_hidden_states=entry["encoder_hidden_states"], class_labels=entry.get("class_labels"),
                added_cond_kwargs=added)


@pytest.mark.parametrize("name", ["sd1", "sdxl", "class_cond"])
def test_golden_outputs(name):
    model, entry = golden_model(name)
    with torch.no_grad():
        out = model(entry["x"], entry["t"], **golden_inputs(entry))
    torch.testing.assert_close(out, entry["out"], atol=1e-4, rtol=1e-4)


def test_attention_head_dim_means_heads_in_sd1_configs():
    entry = load_entry("sd1")
    cfg = UNetConditionConfig.from_diffusers(entry["config"])
    assert entry["config"]["attention_head_dim"] == 2 and cfg.num_attention_heads == (2, 2)
    model, _ = golden_model("sd1")
    attn = model.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    assert attn.heads == 2 and attn.to_q.out_features // attn.heads == 16  # 2 heads of 16 channels
    # Read the other way (heads of 2 channels), the same weights give another function, far from the answer.
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "heads"):
                m.heads = m.to_q.out_features // 2
        out = model(entry["x"], entry["t"], **golden_inputs(entry))
    assert (out - entry["out"]).abs().max() > 1e-2


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_presets_have_published_sizes(name):
    with torch.device("meta"):
        model = UNet2DConditionModel(PRESETS[name])
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMS[name]


def test_bk_sdm_structures():
    base, small, tiny = preset("bk-sdm-base"), preset("bk-sdm-small"), preset("bk-sdm-tiny")
    assert base.layers_per_block == (1, 1, 1, 1) and base.mid_block_type == "UNetMidBlock2DCrossAttn"
    assert small.mid_block_type is None and tiny.block_out_channels == (320, 640, 1280)
    with torch.device("meta"):
        model = UNet2DConditionModel(tiny)
    assert model.mid_block is None and len(model.up_blocks[0].resnets) == 2 and len(model.up_blocks[0].attentions) == 2
    with pytest.raises(KeyError, match="known presets"):
        preset("sd-3")


def test_from_diffusers_reports_every_unsupported_key_at_once():
    bad = {**DIFFUSERS_CONFIGS["sd-v1.5"], "act_fn": "gelu", "class_embed_type": "timestep", "new_key": 1,
           "up_block_types": ["UpBlock2D", "SimpleCrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}
    with pytest.raises(ValueError) as e:
        UNetConditionConfig.from_diffusers(bad)
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("act_fn='gelu'", "['silu']", "class_embed_type", "'new_key'", "SimpleCrossAttnUpBlock2D",
                 "['CrossAttnUpBlock2D', 'UpBlock2D']"):
        assert part in msg, part
    with pytest.raises(ValueError, match="mid_block_type.*UNetMidBlock2DSimpleCrossAttn"):
        UNetConditionConfig.from_diffusers({**DIFFUSERS_CONFIGS["sd-v1.5"], "mid_block_type": "UNetMidBlock2DSimpleCrossAttn"})
    assert UNetConditionConfig.from_diffusers({**DIFFUSERS_CONFIGS["sd-v1.5"], "only_cross_attention": [False] * 4}) == PRESETS["sd-v1.5"]
    with pytest.raises(ValueError, match="only_cross_attention=\\[True, False\\]"):
        UNetConditionConfig.from_diffusers({**DIFFUSERS_CONFIGS["sd-v1.5"], "only_cross_attention": [True, False]})
    with pytest.raises(ValueError, match="attention_head_dim.*3 entries for 4 levels"):
        UNetConditionConfig.from_diffusers({**DIFFUSERS_CONFIGS["sd-v1.5"], "attention_head_dim": [5, 10, 20]})


def test_config_round_trips_and_writes_diffusers_form():
    cfg = PRESETS["sdxl-base"]
    back = UNetConditionConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and hash(back) == hash(cfg)
    assert UNetConditionConfig.from_diffusers(cfg.to_diffusers()) == cfg
    assert UNet2DConditionModel.from_diffusers_config(load_entry("sd1")["config"]).config.num_attention_heads == (2, 2)
    pruned = cfg.with_widths({"conv_in": 256}).with_removed(["up_blocks.0.resnets.2"])
    assert UNetConditionConfig.from_dict(json.loads(json.dumps(pruned.to_dict()))) == pruned
    with pytest.raises(ValueError, match="no diffusers config.json form"):
        pruned.to_diffusers()
    with pytest.raises(ValueError, match="unknown UNetConditionConfig keys \\['ch'\\]"):
        UNetConditionConfig.from_dict({**cfg.to_dict(), "ch": 3})


def tiny_config(**changes) -> UNetConditionConfig:
    return UNetConditionConfig.from_diffusers({**load_entry("sd1")["config"], **changes})


@pytest.mark.parametrize("name", ["sdxl", "class_cond", "bk-sdm-tiny"])
def test_dense_widths_read_back(name):
    cfg = PRESETS[name] if name in PRESETS else UNetConditionConfig.from_diffusers(load_entry(name)["config"])
    with torch.device("meta"):
        assert UNet2DConditionModel(cfg).widths() == dense_widths(cfg)


def test_pruned_widths_build_run_and_read_back():
    cfg = tiny_config()
    table = {"time_embedding.linear_1": 96, "conv_in": 24, "down_blocks.0.resnets.0.conv1": 16,
             # ResNets without a shortcut: their output must follow their input (conv_in)
             "down_blocks.0.resnets.0.conv2": 24, "down_blocks.0.resnets.1.conv2": 24,
             "down_blocks.0.attentions.0.proj_in": 16,
             "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": 8,
             "down_blocks.0.attentions.0.transformer_blocks.0.attn1.heads": 1,
             "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v": 12,
             "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj": 40,
             "up_blocks.1.resnets.2.conv2": 40}
    model = UNet2DConditionModel(cfg.with_widths(table))
    assert model.widths() == {**dense_widths(cfg), **table}
    assert UNet2DConditionModel(cfg).widths() == dense_widths(cfg)
    entry = load_entry("sd1")
    assert model(entry["x"], entry["t"], encoder_hidden_states=entry["encoder_hidden_states"]).shape == entry["x"].shape
    with pytest.raises(ValueError, match="down_blocks.0.resnets.0: conv2 width 32 != input width 24"):
        UNet2DConditionModel(cfg.with_widths({"conv_in": 24}))
    with pytest.raises(ValueError, match="names layers this U-Net does not have"):
        UNet2DConditionModel(cfg.with_widths({"down_blocks.7.resnets.0.conv1": 8}))


def test_removed_units_equal_zeroed_branches():
    """Removing a unit equals zeroing the last layer of its residual branch in the dense network."""
    dense, entry = golden_model("sd1")
    units = ["down_blocks.0.resnets.1", "down_blocks.1.resnets.0",  # without / with a 1x1 shortcut
             "up_blocks.1.attentions.0", "mid_block.attentions.0.transformer_blocks.0", "up_blocks.0.resnets.2"]
    assert set(units) <= set(removable_units(dense.config))
    sd = dense.state_dict()
    with torch.no_grad():
        for name in ("down_blocks.0.resnets.1.conv2", "down_blocks.1.resnets.0.conv2", "up_blocks.1.attentions.0.proj_out",
                     "up_blocks.0.resnets.2.conv2", *[f"mid_block.attentions.0.transformer_blocks.0.{p}" for p in
                                                      ("attn1.to_out.0", "attn2.to_out.0", "ff.net.2")]):
            dense.get_submodule(name).weight.zero_()
            dense.get_submodule(name).bias.zero_()
        removed = UNet2DConditionModel(dense.config.with_removed(units)).eval()
        kept = removed.state_dict()
        assert set(kept) < set(sd)
        assert "down_blocks.1.resnets.0.conv_shortcut.weight" in kept and "down_blocks.0.resnets.1.norm1.weight" not in kept
        removed.load_state_dict({k: sd[k] for k in kept})
        inputs = golden_inputs(entry)
        torch.testing.assert_close(removed(entry["x"], entry["t"], **inputs), dense(entry["x"], entry["t"], **inputs),
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="inside an attention it also removes"):
        UNet2DConditionModel(dense.config.with_removed(["mid_block.attentions.0", "mid_block.attentions.0.transformer_blocks.0"]))
    with pytest.raises(ValueError, match="names units this U-Net does not have"):
        UNet2DConditionModel(dense.config.with_removed(["down_blocks.0.resnets.5"]))


def test_bad_inputs_are_one_line_errors():
    model, entry = golden_model("class_cond")
    x, t, ctx = entry["x"], entry["t"], entry["encoder_hidden_states"]
    with pytest.raises(ValueError, match="class label out of range.*0..9"):
        model(x, t, encoder_hidden_states=ctx, class_labels=torch.tensor([3, 10]))
    with pytest.raises(ValueError, match="pass class_labels"):
        model(x, t, encoder_hidden_states=ctx)
    with pytest.raises(ValueError, match="pass encoder_hidden_states"):
        model(x, t, class_labels=entry["class_labels"])
    with pytest.raises(ValueError, match="expected \\(B, M, 24\\)"):
        model(x, t, encoder_hidden_states=torch.zeros(2, 5, 12), class_labels=entry["class_labels"])
    sdxl, e = golden_model("sdxl")
    with pytest.raises(ValueError, match="added_cond_kwargs needs \\['time_ids'\\]"):
        sdxl(e["x"], e["t"], encoder_hidden_states=e["encoder_hidden_states"], added_cond_kwargs={"text_embeds": e["text_embeds"]})


def test_odd_latents_scalar_timestep_and_example_inputs():
    model, entry = golden_model("sdxl")
    inputs = golden_inputs(entry)
    with torch.no_grad():
        out = model(torch.randn(2, 4, 9, 7), 500, **inputs)  # 9x7 halves to 5x4: upsampled back to the skip's size
        assert out.shape == (2, 4, 9, 7)
        same_t = model(entry["x"], torch.tensor(3), **inputs)[:1]
        torch.testing.assert_close(same_t, model(entry["x"][:1], entry["t"][:1], **{
            **inputs, "encoder_hidden_states": inputs["encoder_hidden_states"][:1],
            "added_cond_kwargs": {k: v[:1] for k, v in inputs["added_cond_kwargs"].items()}}), atol=1e-5, rtol=1e-5)
        example = model.example_inputs(batch=2)
        assert model(*example).shape == (2, 4, 8, 8)
        assert example[4]["text_embeds"].shape == (2, 16) and example[4]["time_ids"].shape == (2, 6)


@pytest.mark.parametrize("name", ["sdxl", "class_cond"])
def test_half_precision_network_runs(name):
    """Weights and inputs in bfloat16 (as a pipeline loaded with dtype=bfloat16 runs): the float32 sinusoids are
    cast like the reference's, and the result stays near the float32 answer."""
    model, entry = golden_model(name)
    inputs = golden_inputs(entry)
    half = {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()}
    if half["added_cond_kwargs"]:
        half["added_cond_kwargs"] = {k: v.to(torch.bfloat16) for k, v in half["added_cond_kwargs"].items()}
    with torch.no_grad():
        out = model.to(torch.bfloat16)(entry["x"].to(torch.bfloat16), entry["t"], **half)
    assert out.dtype == torch.bfloat16
    assert (out.float() - entry["out"]).abs().max() < 0.1 * entry["out"].abs().max()
