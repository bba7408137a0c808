"""Loading CLIP folders (config.json + safetensors / .bin) written here: names, variants, and the one-line error."""
import json

import pytest
import torch
from safetensors.torch import save_file

from models.clip import CLIPModel, CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionModelWithProjection
from models.clip.load import load_clip, load_clip_and_tokenizer, resolve
from tests.test_clip_tokenizer import write_folder as write_tokenizer

TEXT = {"vocab_size": 60, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "max_position_embeddings": 12, "hidden_act": "gelu", "bos_token_id": 58,
        "eos_token_id": 59, "pad_token_id": 59, "model_type": "clip_text_model"}
VISION = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
          "image_size": 16, "patch_size": 8, "model_type": "clip_vision_model"}
FULL = {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 8, "logit_scale_init_value": 2.6592,
        "text_config": TEXT, "vision_config": VISION, "transformers_version": "4.40.0", "torch_dtype": "float32"}


def random_state(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in module.state_dict().items()}


def write(folder, config, state, name="model.safetensors"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    if name.endswith(".safetensors"):
        save_file(state, str(folder / name))
    else:
        torch.save(state, folder / name)
    return folder


def reference_full():
    from models.clip.load import build_clip
    ref = build_clip("CLIPModel", FULL)
    ref.load_state_dict(random_state(ref))
    return ref.eval()


def test_full_clip_folder_loads_with_every_tensor(tmp_path):
    ref = reference_full()
    state = {k: v.half() for k, v in ref.state_dict().items()}  # an fp16 file, read into float32
    folder = write(tmp_path / "clip", FULL, state)
    model = load_clip(folder)
    assert isinstance(model, CLIPModel) and not model.training
    assert model.logit_scale.dtype == torch.float32 and model.config.text.projection_dim == 8
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k].float())
    text_only = load_clip(folder, kind="CLIPTextModelWithProjection")  # one tower out of a CLIPModel file
    assert isinstance(text_only, CLIPTextModelWithProjection) and text_only.text_projection.weight.shape == (8, 16)
    vision_only = load_clip(folder, kind="CLIPVisionModelWithProjection")
    pixels = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(vision_only(pixels), model.image_embeds(pixels))


def test_text_encoder_variants_bare_names_position_ids_and_bin(tmp_path):
    ref = CLIPTextModel(load_clip.__globals__["CLIPTextConfig"].from_transformers_config(TEXT))
    state = random_state(ref, seed=1)
    # transformers 5 writes a bare CLIPTextModel without "text_model."; older files carry position_ids.
    bare = {k[len("text_model."):]: v for k, v in state.items()}
    bare["embeddings.position_ids"] = torch.arange(12)[None]
    cfg = {**TEXT, "architectures": ["CLIPTextModel"]}
    a = load_clip(write(tmp_path / "bare", cfg, bare))
    b = load_clip(write(tmp_path / "bin", cfg, state, name="pytorch_model.bin"))
    ids = torch.tensor([[58, 3, 4, 59, 59]])
    ref.load_state_dict(state)
    with torch.no_grad():
        want = ref.eval()(ids).pooled
        torch.testing.assert_close(a(ids).pooled, want)
        torch.testing.assert_close(b(ids).pooled, want)
    # No architectures: the file's text_projection makes it a CLIPTextModelWithProjection.
    proj = {**state, "text_projection.weight": torch.randn(512, 16)}
    assert isinstance(load_clip(write(tmp_path / "noarch", TEXT, proj)), CLIPTextModelWithProjection)


def test_a_file_that_does_not_fit_is_named_in_one_error(tmp_path):
    ref = reference_full()
    state = dict(ref.state_dict())
    del state["text_model.final_layer_norm.bias"]
    state["vision_model.extra.weight"] = torch.zeros(3)
    state["visual_projection.weight"] = torch.zeros(8, 15)
    folder = write(tmp_path / "bad", FULL, state)
    with pytest.raises(ValueError) as err:
        load_clip(folder)
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("1 missing: text_model.final_layer_norm.bias", "1 unexpected: vision_model.extra.weight",
                 "visual_projection.weight (8, 15) vs visual_projection.weight (8, 16)"):
        assert part in msg


def test_unsupported_class_and_missing_folder(tmp_path):
    write(tmp_path / "v", {**VISION, "architectures": ["CLIPVisionModel"]}, {"x": torch.zeros(1)})
    with pytest.raises(ValueError, match="CLIPVisionModel.*supported: CLIPModel"):
        load_clip(tmp_path / "v")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        resolve(tmp_path / "absent")


def test_model_and_tokenizer_from_one_folder(tmp_path):
    ref = reference_full()
    folder = write(tmp_path / "clip", FULL, ref.state_dict())
    write_tokenizer(folder)
    model, tok = load_clip_and_tokenizer(folder)
    assert isinstance(model, CLIPModel) and tok.model_max_length == 77
    assert isinstance(load_clip(folder, kind="CLIPVisionModelWithProjection"), CLIPVisionModelWithProjection)


def test_open_clip_folder_reads_into_the_same_model(tmp_path):
    from models.clip.load import build_clip
    from models.clip.open_clip import config_from_open_clip, to_open_clip
    # open_clip's quick_gelu flag sets both towers' activation: GELU in both here.
    ref = build_clip("CLIPModel", {**FULL, "vision_config": {**VISION, "hidden_act": "gelu"}})
    ref.load_state_dict(random_state(ref))
    ref.eval()
    oc_cfg = {"model_cfg": {"embed_dim": 8, "quick_gelu": False,
                            "vision_cfg": {"image_size": 16, "layers": 1, "width": 16, "head_width": 8,
                                           "mlp_ratio": 2.0, "patch_size": 8},
                            "text_cfg": {"context_length": 12, "vocab_size": 60, "width": 16, "heads": 2,
                                         "layers": 2, "mlp_ratio": 2.0}},
              "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073]}}
    folder = tmp_path / "oc"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps(oc_cfg))
    oc_state = to_open_clip(ref.state_dict())
    assert oc_state["transformer.resblocks.0.attn.in_proj_weight"].shape == (48, 16)
    assert oc_state["visual.proj"].shape == (16, 8)
    save_file({k: v.contiguous() for k, v in oc_state.items()}, str(folder / "open_clip_model.safetensors"))
    model = load_clip(folder)
    ids = torch.tensor([[58, 3, 4, 59, 0, 0]])  # open_clip pools at argmax: EOS holds the largest id
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.text_embeds(ids), ref.text_embeds(ids))
        torch.testing.assert_close(model.image_embeds(pixels), ref.image_embeds(pixels))
    assert model.config.text.eos_token_id == 2  # transformers' argmax rule
    bad = {"model_cfg": {**oc_cfg["model_cfg"], "custom_text": True,
                         "text_cfg": {**oc_cfg["model_cfg"]["text_cfg"], "hf_model_name": "roberta", "pool_type": "last"}}}
    with pytest.raises(ValueError) as err:
        config_from_open_clip(bad)
    assert all(w in str(err.value) for w in ("custom_text=True", "text_cfg.hf_model_name", "pool_type='last'"))


def test_save_clip_round_trip_and_no_overwrite(tmp_path):
    from models.clip.load import save_clip
    ref = reference_full()
    save_clip(ref, tmp_path / "saved")
    back = load_clip(tmp_path / "saved")
    assert back.config == ref.config
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v)
    ids, pixels = torch.tensor([[58, 3, 59], [58, 59, 59]]), torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        logits = back.logits_per_text(ids, pixels)
        cos = torch.nn.functional.cosine_similarity(back.text_embeds(ids)[:, None], back.image_embeds(pixels)[None], -1)
    torch.testing.assert_close(logits, back.logit_scale.exp() * cos)
    with pytest.raises(FileExistsError, match="already exist"):
        save_clip(ref, tmp_path / "saved")
