"""The original single-file layout (models/pipelines/original_layout.py, single_file.py): the table's names for
a tiny structure worked out by hand, a diffusers -> original -> diffusers round trip through a real file,
the legacy per-head qkv split, and the error for a file that does not fit."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from models.pipelines.original_layout import (Source, UNetStructure, apply, original_source, to_original,
                                              unet_prefix_table, vae_prefix_table)
from models.pipelines.single_file import load_single_file, to_single_file, unet_structure
from tiny_pipeline import tiny_configs, write_tiny_pipeline

# The tiny SD-1 U-Net: 2 levels, 2 resnets each; attention in down level 0 and up level 1 (CrossAttn...).
TINY = UNetStructure(layers_per_block=(2, 2), attn_down=(True, False), attn_up=(False, True))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(pipeline folder, loaded pipeline, its original-layout state dict), built once for this file."""
    from models.pipelines import load_pipeline
    folder = write_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "pipe")
    pipe = load_pipeline(folder)
    modules = {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder}
    return folder, modules, to_single_file(modules, tiny_configs())


def _orig(key, rows, **kw):
    return original_source(key, rows, prefix="model.diffusion_model.", **kw).key


def test_unet_names_worked_out_by_hand():
    rows = unet_prefix_table(TINY)
    expect = {
        "conv_in.weight": "input_blocks.0.0.weight",
        "time_embedding.linear_2.bias": "time_embed.2.bias",
        "down_blocks.0.resnets.1.time_emb_proj.weight": "input_blocks.2.0.emb_layers.1.weight",
        "down_blocks.0.attentions.0.proj_in.weight": "input_blocks.1.1.proj_in.weight",
        "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight":
            "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight",
        "down_blocks.0.downsamplers.0.conv.weight": "input_blocks.3.0.op.weight",
        "down_blocks.1.resnets.0.conv_shortcut.weight": "input_blocks.4.0.skip_connection.weight",
        "down_blocks.1.resnets.1.norm1.weight": "input_blocks.5.0.in_layers.0.weight",
        "mid_block.resnets.1.conv2.weight": "middle_block.2.out_layers.3.weight",
        "mid_block.attentions.0.norm.weight": "middle_block.1.norm.weight",
        "up_blocks.0.resnets.2.conv1.weight": "output_blocks.2.0.in_layers.2.weight",
        "up_blocks.0.upsamplers.0.conv.weight": "output_blocks.2.1.conv.weight",
        "up_blocks.1.resnets.0.norm2.bias": "output_blocks.3.0.out_layers.0.bias",
        "up_blocks.1.attentions.2.proj_out.bias": "output_blocks.5.1.proj_out.bias",
        "conv_norm_out.weight": "out.0.weight",
        "conv_out.bias": "out.2.bias",
    }
    for diffusers, original in expect.items():
        assert _orig(diffusers, rows) == "model.diffusion_model." + original, diffusers
    # SD-1 proper (4 levels, attention in the first three): the well-known positions.
    sd1 = UNetStructure(layers_per_block=(2,) * 4, attn_down=(True, True, True, False),
                        attn_up=(False, True, True, True))
    rows = unet_prefix_table(sd1)
    assert _orig("down_blocks.2.downsamplers.0.conv.weight", rows).endswith("input_blocks.9.0.op.weight")
    assert _orig("down_blocks.3.resnets.1.conv2.weight", rows).endswith("input_blocks.11.0.out_layers.3.weight")
    assert _orig("up_blocks.1.upsamplers.0.conv.weight", rows).endswith("output_blocks.5.2.conv.weight")
    assert _orig("up_blocks.3.attentions.2.proj_out.weight", rows).endswith("output_blocks.11.1.proj_out.weight")


def test_vae_names_and_attention_reshape():
    rows = vae_prefix_table(2)
    src = original_source("decoder.up_blocks.0.resnets.2.conv_shortcut.weight", rows, prefix="first_stage_model.")
    assert src == Source("first_stage_model.decoder.up.1.block.2.nin_shortcut.weight")
    src = original_source("encoder.mid_block.attentions.0.to_out.0.weight", rows, prefix="first_stage_model.")
    assert src.key == "first_stage_model.encoder.mid.attn_1.proj_out.weight" and src.op == "squeeze"
    assert original_source("encoder.mid_block.attentions.0.group_norm.weight", rows).key == "encoder.mid.attn_1.norm.weight"
    assert original_source("decoder.up_blocks.0.upsamplers.0.conv.bias", rows).key == "decoder.up.1.upsample.conv.bias"
    assert original_source("encoder.conv_norm_out.bias", rows).key == "encoder.norm_out.bias"
    w = torch.randn(8, 8, 1, 1)
    torch.testing.assert_close(apply(src, w), w[:, :, 0, 0])


def test_legacy_qkv_is_split_per_head():
    """LDM's AttentionBlock: qkv rows are [q_h, k_h, v_h] per head h (the legacy QKV order)."""
    structure = UNetStructure(layers_per_block=(1,), attn_down=(True,), attn_up=(True,), transformer=False,
                              head_dim=2)
    rows = unet_prefix_table(structure)
    C, heads = 4, 2
    q, k, v = (torch.randn(C, C) for _ in range(3))
    per_head = [torch.cat([q[2 * h:2 * h + 2], k[2 * h:2 * h + 2], v[2 * h:2 * h + 2]]) for h in range(heads)]
    qkv = torch.cat(per_head)[:, :, None]  # (3C, C, 1), a conv1d weight
    for name, want in (("to_q", q), ("to_k", k), ("to_v", v)):
        src = original_source(f"down_blocks.0.attentions.0.{name}.weight", rows, head_dim=2, shape=(C, C))
        assert src.key == "input_blocks.1.1.qkv.weight" and src.heads == heads
        torch.testing.assert_close(apply(src, qkv), want)
    sources = {f"a.{n}.weight": original_source(f"down_blocks.0.attentions.0.{n}.weight", rows, head_dim=2,
                                                 shape=(C, C)) for n in ("to_q", "to_k", "to_v")}
    back = to_original({"a.to_q.weight": q, "a.to_k.weight": k, "a.to_v.weight": v}, sources)
    torch.testing.assert_close(back["input_blocks.1.1.qkv.weight"], qkv)
    assert original_source("down_blocks.0.attentions.0.group_norm.bias", rows).key == "input_blocks.1.1.norm.bias"


def test_structure_from_a_diffusers_config():
    assert unet_structure(tiny_configs()["unet"]) == TINY


def test_single_file_round_trip(tmp_path, tiny):
    """Diffusers-named modules -> the original layout (inverse table) -> a .safetensors file -> loaded back."""
    folder, modules, original = tiny
    original = dict(original)
    assert "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight" in original
    assert original["first_stage_model.encoder.mid.attn_1.q.weight"].dim() == 4
    assert "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight" in original
    assert len(original) == sum(len(m.state_dict()) for m in modules.values())
    # Bookkeeping a real file carries, which the loader must ignore.
    original["betas"] = torch.zeros(1000)
    original["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(16)[None]
    path = tmp_path / "tiny-v1.safetensors"
    save_file({k: v.contiguous() for k, v in original.items()}, path)
    back = load_single_file(path, config=folder)
    assert back.kind == "sd1" and back.tokenizer is not None
    for name, module in modules.items():
        got = getattr(back, name).state_dict()
        for k, v in module.state_dict().items():
            torch.testing.assert_close(got[k], v, atol=0, rtol=0)


def test_single_file_that_does_not_fit(tmp_path, tiny):
    folder, _, original = tiny
    original = dict(original)
    del original["model.diffusion_model.out.2.bias"]
    original["model.diffusion_model.input_blocks.99.0.weight"] = torch.zeros(1)
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in original.items()}, path)
    with pytest.raises(ValueError, match=r"1 missing: model.diffusion_model.out.2.bias \(for conv_out.bias\); "
                                         r"1 unexpected: model.diffusion_model.input_blocks.99.0.weight"):
        load_single_file(path, config=folder)
    with pytest.raises(ValueError, match="no 'model.diffusion_model.\\*' tensors"):
        save_file({"x": torch.zeros(1)}, tmp_path / "other.safetensors")
        load_single_file(tmp_path / "other.safetensors", config=folder)


def test_ldm_single_file_with_a_vq_first_stage(tmp_path):
    """A CompVis LDM file: model.diffusion_model.* and a VQ first_stage_model.* (quantize.embedding kept)."""
    from models.pipelines import load_pipeline
    folder = write_tiny_pipeline(tmp_path / "ldm", text=False, vq=True)
    pipe = load_pipeline(folder)
    configs = tiny_configs(text=False)
    configs["vae"] = configs["vqvae"]
    original = to_single_file({"unet": pipe.unet, "vae": pipe.vae}, configs)
    assert "first_stage_model.quantize.embedding.weight" in original
    assert "first_stage_model.decoder.up.0.block.1.conv2.weight" in original
    save_file({k: v.contiguous() for k, v in original.items()}, tmp_path / "ldm.ckpt.safetensors")
    back = load_single_file(tmp_path / "ldm.ckpt.safetensors", config=folder)
    assert back.kind == "ldm" and type(back.vae).__name__ == "VQModel"
    for k, v in pipe.vae.state_dict().items():
        torch.testing.assert_close(back.vae.state_dict()[k], v, atol=0, rtol=0)


def test_class_embedder_ldm_single_file(tmp_path):
    """The ImageNet-LDM layout: cross-attention U-Net, VQ first stage, cond_stage_model.embedding.weight."""
    from models.pipelines import load_pipeline
    folder = write_tiny_pipeline(tmp_path / "cin", text=False, vq=True, class_embedder=True)
    pipe = load_pipeline(folder)
    configs = tiny_configs()
    configs["vae"] = configs["vqvae"]
    modules = {"unet": pipe.unet, "vae": pipe.vae, "class_embedder": pipe.class_embedder}
    original = to_single_file(modules, configs)
    assert original["cond_stage_model.embedding.weight"].shape == (11, 32)
    save_file({k: v.contiguous() for k, v in original.items()}, tmp_path / "cin.safetensors")
    back = load_single_file(tmp_path / "cin.safetensors", config=folder)
    assert back.kind == "ldm" and back.num_classes == 10 and back.has_unconditional
    for name, module in modules.items():
        for k, v in module.state_dict().items():
            torch.testing.assert_close(getattr(back, name).state_dict()[k], v, atol=0, rtol=0)


def test_cin256_v2_preset_builds_with_the_original_names():
    """Diff-Pruning's ImageNet LDM (latent-diffusion's cin256-v2.yaml) as a preset: the networks build (on the
    meta device) and the table gives the names its model.ckpt uses."""
    from models.pipelines.component import BUILDERS
    from models.pipelines.presets import LDM_CIN256_V2 as P
    from models.pipelines.single_file import plans
    from models.pipelines.weights import on_meta
    modules = {"unet": on_meta(BUILDERS["UNet2DConditionModel"], P["unet"]),
               "vae": on_meta(BUILDERS["VQModel"], P["vqvae"]),
               "class_embedder": on_meta(BUILDERS["ClassEmbedder"], P["class_embedder"])}
    states = {c: m.state_dict() for c, m in modules.items()}
    names = {src.key: tuple(states[c][k].shape)
             for c, plan in plans(modules, {"unet": P["unet"], "vae": P["vqvae"]}).items() for k, src in plan.items()}
    assert names["model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"] == (384, 512)
    assert names["model.diffusion_model.input_blocks.9.0.op.weight"] == (576, 576, 3, 3)
    assert names["model.diffusion_model.middle_block.1.proj_in.weight"] == (960, 960, 1, 1)
    assert names["model.diffusion_model.output_blocks.8.2.conv.weight"] == (384, 384, 3, 3)
    assert "model.diffusion_model.output_blocks.11.1.norm.weight" not in names  # level 0 has no attention
    assert names["first_stage_model.quantize.embedding.weight"] == (8192, 3)
    assert names["first_stage_model.decoder.up.2.block.2.conv2.weight"] == (512, 512, 3, 3)
    assert names["cond_stage_model.embedding.weight"] == (1001, 512)
    assert modules["class_embedder"].num_classes == 1000


def test_single_file_ema_weights(tmp_path, tiny):
    """LitEma's copy: model_ema.diffusion_modelinput_blocks00weight for model.diffusion_model.input_blocks.0.0.weight."""
    folder, modules, original = tiny
    original = dict(original)
    ema = {"model_ema." + k[len("model."):].replace(".", ""): v + 1 for k, v in original.items()
           if k.startswith("model.diffusion_model.")}
    assert "model_ema.diffusion_modelinput_blocks00weight" in ema
    save_file({k: v.contiguous() for k, v in {**original, **ema, "model_ema.decay": torch.tensor(0.9999)}.items()},
              tmp_path / "with_ema.safetensors")
    raw = load_single_file(tmp_path / "with_ema.safetensors", config=folder)
    averaged = load_single_file(tmp_path / "with_ema.safetensors", config=folder, ema=True)
    w = modules["unet"].state_dict()["conv_in.weight"]
    torch.testing.assert_close(raw.unet.state_dict()["conv_in.weight"], w)
    torch.testing.assert_close(averaged.unet.state_dict()["conv_in.weight"], w + 1)
    save_file({k: v.contiguous() for k, v in original.items()}, tmp_path / "no_ema.safetensors")
    with pytest.raises(ValueError, match="holds no EMA weights"):
        load_single_file(tmp_path / "no_ema.safetensors", config=folder, ema=True)
