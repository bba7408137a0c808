"""Loading the latent family (models/pipelines/): component folders (safetensors, .bin, fp16 variant, shards,
legacy attention names), whole pipeline folders, and the one-line errors for files that do not fit."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from golden_recipe import load_entry, recipe_state_dict
from models.pipelines import Pipeline, is_latent_source, load_component, load_latent, load_pipeline
from models.pipelines.weights import on_meta
from tiny_pipeline import write_tiny_pipeline


def _unet_folder(tmp_path, name="unet"):
    """The golden SD-1-style U-Net as a diffusers component folder (recipe weights). Returns (folder, entry, sd)."""
    entry = load_entry("sd1")
    config = json.loads(json.dumps(entry["config"], default=list))
    config["_class_name"] = "UNet2DConditionModel"
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder, entry, recipe_state_dict(entry["weights"])


def _golden_out(module, entry):
    with torch.no_grad():
        return module(entry["x"], entry["t"], encoder_hidden_states=entry["encoder_hidden_states"])


def test_component_folder_matches_the_golden_output(tmp_path):
    folder, entry, sd = _unet_folder(tmp_path)
    save_file(sd, folder / "diffusion_pytorch_model.safetensors")
    unet = load_component(folder)
    assert not any(p.is_meta for p in unet.parameters()) and not unet.training
    torch.testing.assert_close(_golden_out(unet, entry), entry["out"], atol=1e-4, rtol=1e-4)


def test_bin_variant_and_sharded_files_load_the_same_weights(tmp_path):
    folder, entry, sd = _unet_folder(tmp_path)
    torch.save(sd, folder / "diffusion_pytorch_model.bin")
    ref = load_component(folder).state_dict()
    # fp16 variant: chosen by variant="fp16" (and taken when it is the only file), cast to float32.
    save_file({k: v.half() for k, v in sd.items()}, folder / "diffusion_pytorch_model.fp16.safetensors")
    half = load_component(folder, variant="fp16")
    assert all(v.dtype == torch.float32 for v in half.state_dict().values())
    torch.testing.assert_close(half.state_dict()["conv_in.weight"], ref["conv_in.weight"], atol=1e-3, rtol=1e-3)
    kept = load_component(folder, variant="fp16", dtype=None)
    assert next(kept.parameters()).dtype == torch.float16
    # Two shards and their index.
    sharded, _, _ = _unet_folder(tmp_path, "sharded")
    names = sorted(sd)
    shards = {"a.safetensors": names[: len(names) // 2], "b.safetensors": names[len(names) // 2:]}
    for file, keys in shards.items():
        save_file({k: sd[k] for k in keys}, sharded / file)
    index = {"weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (sharded / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    for k, v in load_component(sharded).state_dict().items():
        torch.testing.assert_close(v, ref[k], atol=0, rtol=0)


def test_a_misfit_file_names_missing_unexpected_and_misshaped_in_one_line(tmp_path):
    folder, _, sd = _unet_folder(tmp_path)
    sd = dict(sd)
    del sd["conv_out.bias"]
    sd["extra.weight"] = torch.zeros(3)
    sd["conv_in.weight"] = torch.zeros(5, 4, 3, 3)
    save_file(sd, folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError) as err:
        load_component(folder)
    msg = str(err.value)
    assert "\n" not in msg
    assert "1 missing: conv_out.bias" in msg and "1 unexpected: extra.weight" in msg
    assert "mis-shaped (file vs model): conv_in.weight (5, 4, 3, 3) vs conv_in.weight (32, 4, 3, 3)" in msg


def test_unsupported_class_and_missing_weights_are_named(tmp_path):
    folder, _, _ = _unet_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="no weight file"):
        load_component(folder)
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet3DConditionModel"}))
    with pytest.raises(ValueError, match="class 'UNet3DConditionModel' is not supported; supported: "
                                         "UNet2DConditionModel, AutoencoderKL, VQModel, ClassEmbedder, CLIPTextModel"):
        load_component(folder)


def test_vae_with_legacy_attention_names(tmp_path):
    """Older diffusers VAE files: query/key/value/proj_attn instead of to_q/to_k/to_v/to_out.0."""
    entry = load_entry("vae")
    sd = recipe_state_dict(entry["weights"])
    legacy = {}
    for k, v in sd.items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            k = k.replace(f".{new}.", f".{old}.")
        legacy[k] = v
    assert legacy.keys() != sd.keys()
    folder = tmp_path / "vae"
    folder.mkdir()
    config = json.loads(json.dumps(entry["config"], default=list))
    (folder / "config.json").write_text(json.dumps({**config, "_class_name": "AutoencoderKL"}))
    save_file(legacy, folder / "diffusion_pytorch_model.safetensors")
    vae = load_component(folder)
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(entry["z"]), entry["decoded"], atol=1e-4, rtol=1e-4)


def test_meta_construction_allocates_nothing():
    from models.pipelines.component import BUILDERS
    entry = load_entry("sd1")
    config = {**json.loads(json.dumps(entry["config"], default=list)), "_class_name": "UNet2DConditionModel"}
    unet = on_meta(BUILDERS["UNet2DConditionModel"], config)
    assert all(p.is_meta for p in unet.parameters())


def test_pipeline_folder(tmp_path):
    folder = write_tiny_pipeline(tmp_path / "pipe")
    assert is_latent_source(folder) and is_latent_source(folder / "unet")
    pipe = load_latent(folder)
    assert isinstance(pipe, Pipeline) and pipe.kind == "sd1" and pipe.has_text and pipe.num_classes == 0
    assert type(pipe.unet).__name__ == "UNet2DConditionModel" and type(pipe.vae).__name__ == "AutoencoderKL"
    assert pipe.tokenizer.model_max_length == 16 and pipe.scheduler["_class_name"] == "PNDMScheduler"
    with pytest.raises(Exception):
        pipe.kind = "sdxl"  # frozen


def test_pipeline_folder_with_only_fp16_files(tmp_path):
    folder = write_tiny_pipeline(tmp_path / "pipe", variant="fp16")
    pipe = load_pipeline(folder)  # the lone variant files are taken
    assert next(pipe.unet.parameters()).dtype == torch.float32


@pytest.mark.parametrize("damage, match", [
    (lambda f: shutil.rmtree(f / "vae"), "component 'vae' is missing"),
    (lambda f: shutil.rmtree(f / "tokenizer"), "component 'tokenizer' is missing"),
    (lambda f: (f / "model_index.json").write_text(json.dumps(
        {k: v for k, v in json.loads((f / "model_index.json").read_text()).items() if k != "scheduler"})),
     "needs component 'scheduler'"),
    (lambda f: (f / "unet" / "diffusion_pytorch_model.safetensors").unlink(), "no weight file"),
    (lambda f: (f / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "LMSDiscreteScheduler"})),
     "scheduler class 'LMSDiscreteScheduler' is not supported"),
])
def test_a_broken_pipeline_folder_is_one_line_before_any_weight_is_read(tmp_path, damage, match, monkeypatch):
    folder = write_tiny_pipeline(tmp_path / "pipe")
    damage(folder)
    import models.pipelines.pipeline as pipeline_module
    monkeypatch.setattr(pipeline_module, "load_component", lambda *a, **k: pytest.fail("read weights"))
    with pytest.raises((ValueError, FileNotFoundError), match=match) as err:
        load_pipeline(folder)
    assert "\n" not in str(err.value)


def test_vq_model_matches_the_reference(tmp_path):
    """tests/data/reference/vq_model_tiny.pt: diffusers' VQModel with recipe weights (benchmarks/make_vq_reference.py)."""
    from pathlib import Path
    ref = torch.load(Path(__file__).parent / "data" / "reference" / "vq_model_tiny.pt", weights_only=True)
    folder = tmp_path / "vqvae"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(ref["config"]))
    save_file(recipe_state_dict({"keys": ref["keys"], "shapes": ref["shapes"], "recipe_seed": ref["recipe_seed"]}),
              folder / "diffusion_pytorch_model.safetensors")
    vq = load_component(folder)
    assert type(vq).__name__ == "VQModel"
    with torch.no_grad():
        torch.testing.assert_close(vq.encode(ref["x"]), ref["z"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(vq.decode(ref["z"]), ref["decoded"], atol=1e-4, rtol=1e-4)


def test_ldm_pipeline_with_a_vq_autoencoder(tmp_path):
    from models.pipelines.text_to_image import Request, generate
    folder = write_tiny_pipeline(tmp_path / "ldm", text=False, vq=True)
    pipe = load_pipeline(folder)
    assert pipe.kind == "ldm" and not pipe.has_text and type(pipe.vae).__name__ == "VQModel"
    images = generate(pipe, Request(steps=2, scheduler="ddim"), [0, 1])
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    shutil.rmtree(folder / "vqvae")
    with pytest.raises(FileNotFoundError, match="component 'vqvae' is missing"):
        load_pipeline(folder)


def test_hub_names_go_through_the_cache_and_fail_offline_in_one_line(tmp_path, monkeypatch):
    import huggingface_hub

    from models.hub import HubDownloadError
    from models.pipelines import KNOWN_PIPELINES, hub
    for name in ("stable-diffusion-v1-5/stable-diffusion-v1-5", "stabilityai/stable-diffusion-2-1-base",
                 "stabilityai/stable-diffusion-xl-base-1.0", "nota-ai/bk-sdm-small", "CompVis/ldm-celebahq-256"):
        assert name in KNOWN_PIPELINES and is_latent_source(name)
    folder = write_tiny_pipeline(tmp_path / "cached")
    asked = {}

    def fake_download(name, *, allow_patterns, cache_dir=None):
        asked.update(name=name, patterns=allow_patterns)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    pipe = load_latent("nota-ai/bk-sdm-small")
    assert pipe.kind == "sd1" and asked["name"] == "nota-ai/bk-sdm-small"
    assert "unet/diffusion_pytorch_model.safetensors" in asked["patterns"] and "tokenizer/*" in asked["patterns"]
    hub.fetch_pipeline("nota-ai/bk-sdm-small", variant="fp16")
    assert "vae/diffusion_pytorch_model.fp16.safetensors" in asked["patterns"]

    def offline(name, **kw):
        raise OSError("We couldn't connect to 'https://huggingface.co'\nsecond line")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(HubDownloadError) as err:
        load_latent("stabilityai/stable-diffusion-2-1-base")
    assert "\n" not in str(err.value) and "https://huggingface.co/stabilityai/stable-diffusion-2-1-base" in str(err.value)


def test_models_load_dispatches_latent_sources(tmp_path):
    from models import load, load_with_info
    folder = write_tiny_pipeline(tmp_path / "pipe")
    pipe, info = load_with_info(folder)
    assert isinstance(pipe, Pipeline) and info["format"] == "latent" and info["kind"] == "sd1"
    assert type(load(folder / "vae")).__name__ == "AutoencoderKL"
    assert type(load("tiny")).__name__ == "UNet"  # the DDPM family is untouched


def test_clip_text_weights_without_the_text_model_level(tmp_path):
    """transformers 5 saves CLIPTextModel as embeddings.* / encoder.* (no ``text_model.``); both load the same."""
    folder = write_tiny_pipeline(tmp_path / "pipe")
    from safetensors.torch import load_file
    te = folder / "text_encoder"
    sd = load_file(te / "model.safetensors")
    ref = load_component(te).state_dict()
    save_file({k.removeprefix("text_model."): v for k, v in sd.items()}, te / "model.safetensors")
    for k, v in load_component(te).state_dict().items():
        torch.testing.assert_close(v, ref[k], atol=0, rtol=0)


def test_tokenizer_folder_with_tokenizer_json_only(tmp_path):
    """transformers 5 writes a CLIP tokenizer as tokenizer.json + tokenizer_config.json only."""
    folder = write_tiny_pipeline(tmp_path / "pipe")
    tok = folder / "tokenizer"
    vocab = json.loads((tok / "vocab.json").read_text())
    merges = [line.split() for line in (tok / "merges.txt").read_text().splitlines()[1:] if line]
    (tok / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": merges,
                                                              "end_of_word_suffix": "</w>"}}))
    (tok / "vocab.json").unlink()
    (tok / "merges.txt").unlink()
    pipe = load_pipeline(folder)
    assert pipe.tokenizer(["red circle"]).shape == (1, 16)
