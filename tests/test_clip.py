"""CLIP towers: the reference's known answers (sd_family.pt clip_*), pooling rules, configs and their errors."""
import dataclasses

import pytest
import torch

from models.clip import (CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection,
                         CLIPVisionConfig, CLIPVisionModelWithProjection)
from tests.golden_recipe import load_entry, recipe_state_dict


def golden(name, cls, config_cls):
    entry = load_entry(name)
    model = cls(config_cls.from_transformers_config(entry["config"])).eval()
    sd = recipe_state_dict(entry["weights"])
    # transformers 5 saves a bare CLIPTextModel without the "text_model." prefix its hub files have.
    if not any(k.startswith("text_model.") or k.startswith("vision_model.") for k in sd):
        sd = {"text_model." + k: v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True)
    return model, entry


def close(a, b):
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_text_model_matches_reference():
    model, e = golden("clip_text", CLIPTextModel, CLIPTextConfig)
    with torch.no_grad():
        out = model(e["input_ids"])
    close(out.last_hidden_state, e["last_hidden_state"])
    close(out.penultimate_hidden_state, e["penultimate_hidden_state"])  # no final LayerNorm on it
    close(out.pooled, e["pooled"])
    assert out.text_embeds is None


def test_text_model_with_projection_matches_reference():
    model, e = golden("clip_text_proj", CLIPTextModelWithProjection, CLIPTextConfig)
    assert model.config.hidden_act == "gelu"
    with torch.no_grad():
        out = model(e["input_ids"], output_hidden_states=True)
    close(out.last_hidden_state, e["last_hidden_state"])
    close(out.penultimate_hidden_state, e["penultimate_hidden_state"])
    close(out.text_embeds, e["text_embeds"])
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    close(out.hidden_states[-2], out.penultimate_hidden_state)
    close(model.text_model.final_layer_norm(out.hidden_states[-1]), out.last_hidden_state)


def test_vision_model_with_projection_matches_reference():
    model, e = golden("clip_vision_proj", CLIPVisionModelWithProjection, CLIPVisionConfig)
    with torch.no_grad():
        close(model(e["pixel_values"]), e["image_embeds"])
    with pytest.raises(ValueError, match="resize and crop"):
        model(torch.zeros(1, 3, 16, 16))


def test_full_clip_model_shares_the_towers_semantics():
    t, et = golden("clip_text_proj", CLIPTextModelWithProjection, CLIPTextConfig)
    v, ev = golden("clip_vision_proj", CLIPVisionModelWithProjection, CLIPVisionConfig)
    cfg = CLIPConfig(text=t.config, vision=v.config, projection_dim=24)
    full = CLIPModel(cfg).eval()
    sd = {**t.state_dict(), **v.state_dict(), "logit_scale": torch.tensor(2.0)}
    full.load_state_dict(sd, strict=True)
    with torch.no_grad():
        close(full.text_embeds(et["input_ids"]), et["text_embeds"])
        close(full.image_embeds(ev["pixel_values"]), ev["image_embeds"])
        cos = full.cosine(et["input_ids"], ev["pixel_values"])
    a, b = et["text_embeds"], ev["image_embeds"]
    close(cos, (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)))


def tiny_text(**kw):
    cfg = CLIPTextConfig(vocab_size=50, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=10, **kw)
    torch.manual_seed(0)
    return CLIPTextModel(cfg).eval()


def test_pooling_rules_first_eos_and_legacy_argmax():
    model = tiny_text(bos_token_id=48, eos_token_id=49, pad_token_id=0)
    ids = torch.tensor([[48, 5, 49, 0, 0], [48, 5, 6, 49, 49]])
    assert model.text_model is not None
    with torch.no_grad():
        out = model(ids)
    close(out.pooled, out.last_hidden_state[[0, 1], [2, 3]])
    legacy = tiny_text(eos_token_id=2)  # configs before transformers PR 24773: argmax of the ids
    legacy.load_state_dict(model.state_dict())
    with torch.no_grad():
        close(legacy(ids).pooled, out.pooled)
    with pytest.raises(ValueError, match=r"rows \[0\]"):
        model(torch.tensor([[48, 5, 6]]))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.full((1, 11), 49))


def test_causal_mask_and_attention_mask():
    model = tiny_text(eos_token_id=49)
    a = torch.tensor([[48, 5, 49, 7, 8]])
    b = torch.tensor([[48, 5, 49, 30, 31]])
    with torch.no_grad():
        ha, hb = model(a).last_hidden_state, model(b).last_hidden_state
        close(ha[:, :3], hb[:, :3])  # later tokens never reach earlier ones
        assert not torch.allclose(ha[:, 3:], hb[:, 3:])
        # A padding mask changes only the positions from the masked key on, and all-ones equals no mask.
        close(model(a, attention_mask=torch.ones(1, 5)).last_hidden_state, ha)
        m = model(a, attention_mask=torch.tensor([[1, 1, 1, 0, 1]])).last_hidden_state
        close(m[:, :3], ha[:, :3])
        assert not torch.allclose(m[:, 4], ha[:, 4])


def test_state_dict_names_are_transformers():
    text = CLIPTextModelWithProjection(CLIPTextConfig(num_hidden_layers=1, hidden_size=8, intermediate_size=8,
                                                      num_attention_heads=2, projection_dim=4, vocab_size=10))
    names = list(text.state_dict())
    assert names[:3] == ["text_model.embeddings.token_embedding.weight",
                         "text_model.embeddings.position_embedding.weight",
                         "text_model.encoder.layers.0.self_attn.k_proj.weight"]
    assert names[-3:] == ["text_model.final_layer_norm.weight", "text_model.final_layer_norm.bias",
                          "text_projection.weight"]


def test_sd_text_encoder_sizes():
    # Counts of the published encoders, computed by transformers 5.25 from the same configs (a separate environment with the reference libraries).
    sd1 = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, projection_dim=768)
    bigg = CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                          projection_dim=1280, hidden_act="gelu")
    with torch.device("meta"):
        n1 = sum(p.numel() for p in CLIPTextModel(sd1).parameters())
        n2 = sum(p.numel() for p in CLIPTextModelWithProjection(bigg).parameters())
    assert (n1, n2) == (123_060_480, 694_659_840)


def test_configs_from_transformers_dicts_and_errors():
    full = {"model_type": "clip", "projection_dim": 16, "logit_scale_init_value": 2.6592, "torch_dtype": "float32",
            "text_config": {"hidden_size": 32, "num_attention_heads": 4, "hidden_act": "gelu", "do_sample": False,
                            "pad_token_id": None},
            "vision_config": {"hidden_size": 48, "num_attention_heads": 4, "patch_size": 14, "image_size": 224}}
    cfg = CLIPConfig.from_transformers_config(full)
    assert cfg.text.projection_dim == cfg.vision.projection_dim == 16 and cfg.text.pad_token_id == 1
    assert CLIPTextConfig.from_transformers_config(full) == dataclasses.replace(cfg.text, projection_dim=512)
    assert cfg.vision.num_positions == 257
    assert CLIPConfig.from_dict(cfg.to_dict()) == cfg
    bad = {"model_type": "siglip_text_model", "hidden_act": "relu", "rope_theta": 1.0}
    with pytest.raises(ValueError) as err:
        CLIPTextConfig.from_transformers_config(bad, source="text_encoder/config.json")
    msg = str(err.value)
    assert msg.startswith("text_encoder/config.json") and "\n" not in msg
    assert all(w in msg for w in ("siglip_text_model", "relu", "rope_theta"))
    with pytest.raises(ValueError, match="not divisible"):
        CLIPTextConfig(hidden_size=10, num_attention_heads=4)
    with pytest.raises(ValueError, match="not a CLIPModel config"):
        CLIPConfig.from_transformers_config({"hidden_size": 8})


def test_legacy_config_dict_decides_like_transformers():
    # transformers 4.1x configs: text_config_dict overrides text_config (absent fields at the defaults).
    d = {"model_type": "clip", "projection_dim": 16,
         "text_config": {"hidden_size": 512, "hidden_act": "gelu", "num_attention_heads": 8},
         "text_config_dict": {"hidden_size": 64, "num_attention_heads": 4},
         "vision_config": {"hidden_size": 32, "num_attention_heads": 4}, "vision_config_dict": None,
         "_commit_hash": "abc"}
    cfg = CLIPConfig.from_transformers_config(d)
    assert (cfg.text.hidden_size, cfg.text.hidden_act, cfg.vision.hidden_size) == (64, "quick_gelu", 32)
