"""CompVis' class-conditional ImageNet LDM (latent-diffusion's cin256-v2, the ``ldm-cin256-v2`` preset of
models/pipelines/presets.py) at tiny widths, end to end: its original single file loads with the preset's
structure kept -- a VQ first stage with 3 levels (f4), 3 latent channels and 8192 codes, a class embedder of
1001 rows x 512 (class 1000 = "no class") read by the U-Net's cross-attention, one head -- the pipeline
samples with guidance, and Diff-Pruning's LDM recipe prunes it (pruning/self_sampled.py)."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import save_file

from diffusion.schedule import training_schedule
from models.pipelines.component import BUILDERS
from models.pipelines.presets import LDM_CIN256_V2
from models.pipelines.single_file import load_single_file, to_single_file
from models.pipelines.text_to_image import Request, generate
from pruning import ChannelPruning, prune
from pruning.self_sampled import self_sampled_batch


def tiny_layout() -> dict[str, dict]:
    """The preset with only the widths and the latent size shrunk (levels, blocks, attention placement, the
    VQ codebook and the class table as in cin256-v2)."""
    layout = copy.deepcopy(LDM_CIN256_V2)
    layout["unet"].update(block_out_channels=[32, 32, 64, 64], sample_size=8)
    layout["vqvae"].update(block_out_channels=[32, 32, 32], sample_size=32)
    return layout


@pytest.fixture(scope="module")
def cin(tmp_path_factory):
    """(pipeline loaded from the single file, the modules it was written from)."""
    root = tmp_path_factory.mktemp("cin256")
    layout = tiny_layout()
    torch.manual_seed(0)
    modules = {"unet": BUILDERS["UNet2DConditionModel"](layout["unet"]), "vae": BUILDERS["VQModel"](layout["vqvae"]),
               "class_embedder": BUILDERS["ClassEmbedder"](layout["class_embedder"])}
    original = to_single_file(modules, {"unet": layout["unet"], "vae": layout["vqvae"]})
    save_file({k: v.contiguous() for k, v in original.items()}, root / "model.safetensors")
    folder = root / "configs"  # a config folder: model_index.json, component configs, scheduler; no weights
    for name, config in layout.items():
        if name != "model_index":
            sub = folder / name
            sub.mkdir(parents=True)
            (sub / ("scheduler_config.json" if name == "scheduler" else "config.json")).write_text(json.dumps(config))
    (folder / "model_index.json").write_text(json.dumps(layout["model_index"]))
    return load_single_file(root / "model.safetensors", config=folder), modules, original


def test_the_single_file_has_cin256_v2s_names_and_loads_exactly(cin):
    pipe, modules, original = cin
    assert original["first_stage_model.quantize.embedding.weight"].shape == (8192, 3)
    assert original["cond_stage_model.embedding.weight"].shape == (1001, 512)
    assert original["model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"].shape == (32, 512)
    assert pipe.kind == "ldm" and type(pipe.vae).__name__ == "VQModel"
    assert (pipe.vae_scale, pipe.latent_channels) == (4, 3)  # f4, 3 latent channels
    assert pipe.num_classes == 1000 and pipe.has_unconditional and not pipe.has_text
    for name, module in modules.items():
        for k, v in module.state_dict().items():
            torch.testing.assert_close(getattr(pipe, name).state_dict()[k], v, atol=0, rtol=0)


def test_it_samples_a_class_with_guidance(cin):
    pipe = cin[0]
    images = generate(pipe, Request(class_label=7, guidance_scale=3.0, steps=2, scheduler="ddim"), range(2))
    assert images.shape == (2, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    other = generate(pipe, Request(class_label=8, guidance_scale=3.0, steps=2, scheduler="ddim"), range(2))
    assert (images - other).abs().max() > 0  # the class token reaches the U-Net


def test_the_ldm_script_recipe_prunes_it(cin):
    pipe = cin[0]
    unet = copy.deepcopy(pipe.unet)
    spec = ChannelPruning(method="diff-pruning", recipe="ldm-script", x0_steps=2, max_timesteps=10)
    data, record = self_sampled_batch(pipe, spec)
    assert data.x0.shape == (6, 3, 8, 8) and data.encoder_hidden_states.shape == (6, 1, 512)
    assert all(0 <= c < 1000 for c in record["class_labels"]) and len(set(record["class_labels"])) == 6
    pruned, report = prune(unet, unet.example_inputs(), spec, data=data, schedule=training_schedule(pipe.scheduler),
                           progress=False)
    assert report.params_after < report.params_before and report.timesteps.thr == 0.1
    assert pruned.conv_out.weight.shape[0] == 3
    # one head per attention (cin256-v2's num_heads 1): q, k, v narrow together, to even widths (round_to 2)
    attn = pruned.get_submodule("down_blocks.1.attentions.0.transformer_blocks.0.attn2")
    assert attn.heads == 1 and attn.to_q.weight.shape[0] == attn.to_k.weight.shape[0] == attn.to_v.weight.shape[0]
    assert attn.to_q.weight.shape[0] % 2 == 0 and attn.to_q.weight.shape[0] < 32
    assert attn.to_k.weight.shape[1] == 512  # the class token's width is an input, never pruned
    x, t = pruned.example_inputs()[:2]
    with torch.no_grad():
        out = pruned(x, t, encoder_hidden_states=data.encoder_hidden_states[:1])
    assert out.shape == x.shape and torch.isfinite(out).all()
