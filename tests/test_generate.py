"""generate.py and models/pipelines/text_to_image.py on a TINY random-weight pipeline folder: the command's
outputs, per-index reproducibility, every scheduler, class labels, and each bad input as one line before work."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from PIL import Image

import generate
from models.pipelines import load_pipeline
from models.pipelines.text_to_image import Request, generate as generate_images
from tiny_pipeline import MAX_TOKENS, write_tiny_pipeline


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {"text": write_tiny_pipeline(root / "text"), "class": write_tiny_pipeline(root / "class", text=False,
                                                                                      class_cond=True)}


@pytest.fixture(scope="module")
def pipe(folders):
    return load_pipeline(folders["text"])


def _cfg(model, tmp_path, **kw):
    return generate.GenerateConfig(model=str(model), out=str(tmp_path / "runs"), **{"steps": 2, **kw}, progress=False)


def test_main_writes_pngs_grid_and_timing(folders, tmp_path, capsys):
    run = generate.main(_cfg(folders["text"], tmp_path, prompt="a red circle", negative_prompt="blue",
                             num_images=3, batch_size=2, scheduler="dpmpp_2m"))
    pngs = sorted(p.name for p in run.glob("0*.png"))
    assert pngs == ["00000.png", "00001.png", "00002.png"] and (run / "grid.png").is_file()
    assert Image.open(run / "00000.png").size == (16, 16)  # sample_size 8 x VAE scale 2
    record = json.loads((run / "generate.json").read_text())
    assert record["kind"] == "sd1" and record["seconds_per_image"] > 0
    assert record["resolved"] == {"guidance": 7.5, "scheduler": "dpmpp_2m", "height_width": [16, 16]}  # what ran
    assert "s per image" in capsys.readouterr().out
    assert run.parent.name == "runs" and run.name.startswith("00001-")


def test_parse_args_builds_the_config():
    cfg = generate.parse_args(["--model", "m", "--prompt", "p", "--guidance", "3", "--steps", "5",
                               "--scheduler", "euler", "--num-images", "2", "--seed", "4"])
    assert (cfg.model, cfg.prompt, cfg.guidance, cfg.steps, cfg.scheduler, cfg.num_images, cfg.seed) == \
        ("m", "p", 3.0, 5, "euler", 2, 4)


def test_an_image_does_not_depend_on_its_batch(pipe):
    request = Request(prompt="red circle", guidance_scale=3.0, steps=2, seed=5, batch_size=3)
    together = generate_images(pipe, request, [0, 1, 2])
    alone = generate_images(pipe, Request(**{**request.__dict__, "batch_size": 1}), [2])
    torch.testing.assert_close(together[2:], alone, atol=1e-5, rtol=1e-5)
    assert together.shape == (3, 3, 16, 16) and 0 <= together.min() and together.max() <= 1
    other_seed = generate_images(pipe, Request(**{**request.__dict__, "seed": 6}), [2])
    assert not torch.allclose(other_seed, alone)


@pytest.mark.parametrize("scheduler", ["ddim", "dpmpp_2m", "euler", "pndm"])
def test_every_scheduler_runs(pipe, scheduler):
    images = generate_images(pipe, Request(prompt="circle", steps=2, scheduler=scheduler), [0])
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()


def test_guidance_one_runs_the_network_once_per_step(pipe, monkeypatch):
    calls = []
    forward = pipe.unet.forward
    monkeypatch.setattr(pipe.unet, "forward", lambda x, *a, **k: calls.append(x.shape[0]) or forward(x, *a, **k))
    generate_images(pipe, Request(prompt="circle", guidance_scale=1.0, steps=2, scheduler="ddim"), [0, 1])
    assert calls == [2, 2]
    calls.clear()
    generate_images(pipe, Request(prompt="circle", guidance_scale=2.0, steps=2, scheduler="ddim"), [0, 1])
    assert calls == [4, 4]  # [uncond; cond] in one forward


def test_class_conditional_pipeline(folders, tmp_path):
    run = generate.main(_cfg(folders["class"], tmp_path, class_label=7, num_images=1))
    assert (run / "00000.png").is_file()


def test_a_long_prompt_is_truncated_with_one_warning(pipe):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generate_images(pipe, Request(prompt="red " * 40, steps=1, batch_size=1), [0, 1])
    texts = [str(w.message) for w in caught if "truncated" in str(w.message)]
    assert len(texts) == 1 and "\n" not in texts[0] and f"up to {MAX_TOKENS} tokens" in texts[0]


@pytest.mark.parametrize("which, kw, match", [
    ("text", {"guidance": 0.5}, "guidance scale must be >= 1"),
    ("class", {"negative_prompt": "blurry", "class_label": 1}, "a negative prompt needs a text encoder"),
    ("class", {"class_label": 10}, r"class label 10 is out of range: the U-Net has 10 classes \(0..9\)"),
    ("class", {"class_label": 1, "guidance": 3.0}, "needs an unconditional input"),
    ("class", {}, "is class-conditional \\(10 classes\\): pass a class label"),
    ("text", {"class_label": 2}, "is not class-conditional"),
    # "leading" spacing above T / 3 steps starts from a half-noised x_T: wrong images, no other error
    ("text", {"steps": 600, "scheduler": "ddim"}, r"600 steps: .* partly noised image; use fewer steps \(500 steps"),
    ("text", {"steps": 5000}, "5000 steps: at most the schedule's 1000 timesteps"),
])
def test_bad_input_is_one_line_before_any_weight_is_read(folders, tmp_path, monkeypatch, which, kw, match):
    monkeypatch.setattr(generate, "load_latent", lambda *a, **k: pytest.fail("loaded weights"))
    with pytest.raises(ValueError, match=match) as err:
        generate.main(_cfg(folders[which], tmp_path, **kw))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_missing_component_through_the_command(folders, tmp_path, capsys):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(folders["text"], broken)
    shutil.rmtree(broken / "text_encoder")
    from common import cli
    status = cli.run(generate.main, generate.parse_args, ["--model", str(broken), "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.count("\n") == 0 and "component 'text_encoder' is missing" in err


def test_sdxl_pipeline_conditions_on_both_encoders(tmp_path, monkeypatch):
    folder = write_tiny_pipeline(tmp_path / "xl", sdxl=True)
    pipe = load_pipeline(folder)
    assert pipe.kind == "sdxl" and pipe.force_zeros_for_empty_prompt
    seen = []
    forward = pipe.unet.forward
    monkeypatch.setattr(pipe.unet, "forward", lambda x, t, **k: seen.append(k) or forward(x, t, **k))
    images = generate_images(pipe, Request(prompt="circle", guidance_scale=2.0, steps=1, height=16, width=16), [0])
    assert images.shape == (1, 3, 16, 16)
    k = seen[0]
    assert k["encoder_hidden_states"].shape == (2, MAX_TOKENS, 64)  # [uncond; cond], 32 + 32 channels
    assert k["added_cond_kwargs"]["text_embeds"].shape == (2, 24)
    assert k["added_cond_kwargs"]["time_ids"].tolist() == [[16, 16, 0, 0, 16, 16]] * 2
    # No negative prompt gives SDXL's zero unconditional embedding.
    assert k["encoder_hidden_states"][0].abs().sum() == 0 and k["added_cond_kwargs"]["text_embeds"][0].abs().sum() == 0


def test_a_pruned_unet_replaces_the_pipelines(folders, tmp_path):
    """--unet: a diffprune checkpoint whose model_config is a (layer-pruned) UNetConditionConfig."""
    from models.checkpoint import save_checkpoint
    from models.sd.config import UNetConditionConfig
    from models.sd.unet import UNet2DConditionModel
    from models.sd.wiring import removable_units
    config = UNetConditionConfig.from_diffusers(json.loads((folders["text"] / "unet" / "config.json").read_text()))
    pruned = config.with_removed([u for u in removable_units(config) if ".attentions." in u][:1])
    unet = UNet2DConditionModel(pruned)
    assert sum(p.numel() for p in unet.parameters()) < sum(p.numel() for p in UNet2DConditionModel(config).parameters())
    save_checkpoint(tmp_path / "pruned.pt", config=pruned, state_dict=unet.state_dict())
    run = generate.main(_cfg(folders["text"], tmp_path, prompt="circle", unet=str(tmp_path / "pruned.pt")))
    assert (run / "00000.png").is_file()
    assert json.loads((run / "generate.json").read_text())["unet"].endswith("pruned.pt")


def test_class_embedder_pipeline_guides_with_the_unconditional_class(tmp_path, monkeypatch):
    folder = write_tiny_pipeline(tmp_path / "cin", text=False, vq=True, class_embedder=True)
    pipe = load_pipeline(folder)
    seen = []
    forward = pipe.unet.forward
    monkeypatch.setattr(pipe.unet, "forward", lambda x, t, **k: seen.append(k) or forward(x, t, **k))
    images = generate_images(pipe, Request(class_label=3, guidance_scale=3.0, steps=2, scheduler="ddim"), [0])
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()
    states = seen[0]["encoder_hidden_states"]  # (2, 1, 32): [no class; class 3]
    emb = pipe.class_embedder.embedding.weight
    torch.testing.assert_close(states[:, 0], torch.stack([emb[10], emb[3]]))
    with pytest.raises(ValueError, match=r"class label 10 is out of range: the U-Net has 10 classes \(0..9\)"):
        generate.main(_cfg(folder, tmp_path, class_label=10))


def test_single_file_with_a_preset_is_checked_before_loading(tmp_path, monkeypatch):
    monkeypatch.setattr(generate, "load_latent", lambda *a, **k: pytest.fail("loaded weights"))
    (tmp_path / "model.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"class label 1000 is out of range: the U-Net has 1000 classes"):
        generate.main(_cfg(tmp_path / "model.ckpt", tmp_path, config="ldm-cin256-v2", class_label=1000))
    with pytest.raises(ValueError, match="a negative prompt needs a text encoder"):
        generate.main(_cfg(tmp_path / "model.ckpt", tmp_path, config="ldm-cin256-v2", class_label=1,
                           negative_prompt="x"))


def test_a_hub_pipeline_is_checked_on_its_configs_before_its_weights(folders, tmp_path, monkeypatch):
    asked = []

    def fetch(name, *, weights=True, variant=None, cache_dir=None):
        asked.append(weights)
        return folders["text"]

    monkeypatch.setattr(generate, "fetch_pipeline", fetch)
    monkeypatch.setattr(generate, "load_latent", lambda *a, **k: pytest.fail("loaded weights"))
    with pytest.raises(ValueError, match="is not class-conditional"):
        generate.main(_cfg("nota-ai/bk-sdm-small", tmp_path, class_label=3))
    assert asked == [False]


def test_a_half_precision_vae_with_force_upcast_decodes_in_float32(pipe):
    from models.pipelines.text_to_image import decode
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    reference = decode(pipe.vae, latents)
    pipe.vae.half()
    try:
        assert pipe.vae.config.force_upcast
        images = decode(pipe.vae, latents)
        assert next(pipe.vae.parameters()).dtype == torch.float16  # restored
        torch.testing.assert_close(images, reference, atol=2e-2, rtol=0)  # only the weights' rounding differs
    finally:
        pipe.vae.float()


def test_one_prompt_or_label_per_sample(pipe, folders):
    """generate(prompts=...): sample k gets prompts[k], the same image as asking for that prompt alone."""
    request = Request(guidance_scale=2.0, steps=1, batch_size=2)
    both = generate_images(pipe, request, [0, 1], prompts=["red circle", "blue square"])
    second = generate_images(pipe, Request(**{**request.__dict__, "prompt": "blue square"}), [1])
    torch.testing.assert_close(both[1:], second, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="1 prompts for 2 sample indices"):
        generate_images(pipe, request, [0, 1], prompts=["red circle"])
    labelled = load_pipeline(folders["class"])
    images = generate_images(labelled, Request(steps=1), [0, 1], class_labels=[2, 9])
    assert images.shape[0] == 2
    with pytest.raises(ValueError, match="class label 12 is out of range"):
        generate_images(labelled, Request(steps=1), [0, 1], class_labels=[2, 12])


def test_a_model_that_is_no_pipeline_and_flags_for_single_files_are_refused_before_loading(folders, tmp_path,
                                                                                          monkeypatch):
    from common.cli import UserError
    from tests.script_helpers import small_checkpoint

    monkeypatch.setattr(generate, "load_latent", lambda *a, **k: pytest.fail("loaded weights"))
    ddpm = small_checkpoint(tmp_path / "model.pt")  # a train.py / prune.py checkpoint, not a pipeline
    with pytest.raises(UserError, match="not a pipeline folder or an SD / LDM single file .* RUN/pipeline"):
        generate.main(_cfg(ddpm, tmp_path))
    with pytest.raises(UserError, match="a folder without model_index.json is not a pipeline"):
        generate.main(_cfg(folders["text"] / "unet", tmp_path))
    with pytest.raises(UserError, match="--ema and --config describe a single-file --model"):
        generate.main(_cfg(folders["text"], tmp_path, ema=True))
    with pytest.raises(UserError, match="--unet .*: no such file"):
        generate.main(_cfg(folders["text"], tmp_path, unet=str(tmp_path / "nope.pt")))
    with pytest.raises(UserError, match="not a conditional latent U-Net checkpoint"):
        generate.load_unet(str(ddpm), torch.float32)

