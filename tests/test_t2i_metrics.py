"""CLIP score and PickScore on the golden recipe-weight CLIP towers, checked against a computation by hand."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

import huggingface_hub
from metrics.clip_score import clip_score, load_clip_scorer, pair_cosines, preprocess
from metrics.pickscore import load_pickscore, pick_score, pick_scores, preference_probabilities
from models.clip import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig
from models.clip.tokenizer import CLIPTokenizer
from models.hub import HubDownloadError
from tests.golden_recipe import load_entry, recipe_state_dict
from tests.test_clip_load import write
from tests.test_clip_tokenizer import MERGES, VOCAB

MEAN, STD = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
# The golden text tower's vocabulary has 1000 rows with BOS 998 and EOS 999: move the tiny vocab's specials there.
TINY = {**{t: i for t, i in VOCAB.items() if not t.startswith("<|")}, "<|startoftext|>": 998, "<|endoftext|>": 999}


def golden_clip():
    t, v = load_entry("clip_text_proj"), load_entry("clip_vision_proj")
    cfg = CLIPConfig(text=CLIPTextConfig.from_transformers_config(t["config"]),
                     vision=CLIPVisionConfig.from_transformers_config(v["config"]), projection_dim=24)
    model = CLIPModel(cfg).eval()
    sd = {**recipe_state_dict(t["weights"]), **recipe_state_dict(v["weights"]),
          "logit_scale": torch.tensor(math.log(100.0))}
    model.load_state_dict(sd, strict=True)
    return model, CLIPTokenizer(TINY, MERGES)


def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)),   # portrait, 40 wide
            Image.fromarray(rng.integers(0, 256, (32, 45, 3), dtype=np.uint8))]   # landscape


def by_hand_pixels(im, size=32):
    w, h = im.size
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    a = np.asarray(im.resize((nw, nh), Image.BICUBIC), dtype=np.float64) / 255.0
    top, left = (nh - size) // 2, (nw - size) // 2
    a = (a[top:top + size, left:left + size] - MEAN) / STD
    return torch.tensor(a, dtype=torch.float32).permute(2, 0, 1)


def test_preprocess_is_clip_resize_crop_normalise():
    ims = images()
    want = torch.stack([by_hand_pixels(im) for im in ims])
    torch.testing.assert_close(preprocess(ims, size=32), want, atol=1e-5, rtol=0)
    # A uint8 tensor and a float tensor in [0, 1] are the same images.
    u8 = torch.tensor(np.stack([np.asarray(ims[0])] * 2)).permute(0, 3, 1, 2)
    torch.testing.assert_close(preprocess(u8, size=32), preprocess(u8.float() / 255, size=32))
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        preprocess(u8.float() / 127.5 - 1, size=32)


def test_clip_score_and_pickscore_by_hand():
    model, tok = golden_clip()
    ims, captions = images(), ["a photo", "photo photo!"]
    ids = torch.tensor([[998, TINY["a</w>"], TINY["photo</w>"], 999] + [999] * 12,
                        [998, TINY["photo</w>"], TINY["photo</w>"], TINY["!</w>"], 999] + [999] * 11])
    with torch.no_grad():
        e_t = model.text_projection(model.text_model.final_layer_norm(
            model.text_model.encoder(model.text_model.embeddings(ids), causal=True)[-1])[[0, 1], [3, 4]])
        e_i = model.image_embeds(torch.stack([by_hand_pixels(im) for im in ims]))
    cos = (e_t * e_i).sum(-1) / (e_t.norm(dim=-1) * e_i.norm(dim=-1))
    torch.testing.assert_close(pair_cosines(model, tok, ims, captions, batch_size=1), cos, atol=1e-5, rtol=0)
    s = clip_score(model, tok, ims, captions)
    assert s.n == 2 and s.mean_cosine == pytest.approx(float(cos.mean()), abs=1e-5)
    assert s.score == pytest.approx(float((100 * cos.clamp(min=0)).mean()), abs=1e-3)
    ps = pick_scores(model, tok, ims, captions)
    torch.testing.assert_close(ps, 100.0 * cos, atol=1e-3, rtol=0)  # logit_scale = ln 100
    assert pick_score(model, tok, ims, captions) == pytest.approx(float(ps.mean()), abs=1e-4)
    p = preference_probabilities(ps)
    torch.testing.assert_close(p, torch.softmax(100.0 * cos, 0), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="one caption per image"):
        pair_cosines(model, tok, ims, captions[:1])


def test_models_by_name_through_the_hub(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(HubDownloadError) as err:
        load_clip_scorer("ViT-g/14")
    assert "\n" not in str(err.value) and "laion/CLIP-ViT-g-14" in str(err.value)

    # A fake hub: PickScore's repository holds weights only, the processor's repository the tokenizer.
    model, _ = golden_clip()
    from tests.test_clip_tokenizer import write_folder as write_tokenizer
    full = {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 24,
            "text_config": {**model.config.text.to_dict(), "model_type": "clip_text_model"},
            "vision_config": {**model.config.vision.to_dict(), "model_type": "clip_vision_model"}}
    write(tmp_path / "pick", full, model.state_dict())
    write_tokenizer((tmp_path / "proc").mkdir() or tmp_path / "proc")
    calls = []

    def fake(repo, allow_patterns=None, cache_dir=None):
        calls.append((repo, tuple(allow_patterns)))
        return str(tmp_path / ("pick" if "PickScore" in repo else "proc"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    pick, tok = load_pickscore()
    repos = list(dict.fromkeys(c[0] for c in calls))
    assert repos == ["yuvalkirstain/PickScore_v1", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"]
    # Configs first, then the weights, which the tokenizer's repository is never asked for.
    assert calls[0][1] == calls[-1][1] and "model.safetensors" not in calls[0][1]
    assert "model.safetensors" in calls[1][1] and calls[-1][0] == repos[1]
    assert isinstance(pick, CLIPModel) and tok.bos_token_id == VOCAB["<|startoftext|>"]
