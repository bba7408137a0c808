"""Write a RANDOM-WEIGHT Stable Diffusion pipeline folder with diffusers' own classes and ``save_pretrained``.

    /tmp/dvenv/bin/python benchmarks/make_random_sd_folder.py --kind sd15 --out /tmp/sd15_s8 --sample-size 8
    /tmp/dvenv/bin/python benchmarks/make_random_sd_folder.py --kind sd15 --out /tmp/sd15_full
    /tmp/dvenv/bin/python benchmarks/make_random_sd_folder.py --kind sdxl --out /tmp/sdxl_s8 --sample-size 8 --dtype float16

What full-scale pruning runs are measured on (docs/RECIPES.md, "Every method on random-weight SD-v1.5 /
SDXL-base folders"): a folder with the real file
layout of the hub's SD-v1.5 / SDXL-base folders (model_index.json, unet/ vae/ text_encoder/ [text_encoder_2/]
config.json + safetensors, tokenizer/ [tokenizer_2/], scheduler/) written by diffusers and transformers
themselves, so that prune.py meets what it will meet on the real weights -- every channel width, layer count,
head dim and cross-attention width of the real architecture -- without downloading them. Weights are the
libraries' default init (quality meaningless). ``--sample-size`` shrinks only the latent (and so the VAE's
pixel) size that the configs record, to keep CPU runs short; every weight shape stays the real one.

NEEDS diffusers and transformers, which the project never depends on: run it with the python of a SEPARATE
environment (python3 -m venv /tmp/dvenv && /tmp/dvenv/bin/pip install torch==2.13.0 diffusers transformers
safetensors accelerate). Of this project it imports only the tokenizer's byte table (torch and the
standard library).

The tokenizer cannot be the real one (its 49,408-token vocabulary is not downloaded here): it is a made-up
byte-level BPE vocabulary (the 256 byte characters, the same with "</w>", a few merges, CLIP's two special
tokens) that transformers' CLIPTokenizer reads and saves in its own layout.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

# The configs of the hub's folders (stable-diffusion-v1-5/stable-diffusion-v1-5, stabilityai/stable-diffusion-
# xl-base-1.0), as their config.json files give them; only sample_size is changed by --sample-size.
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                 cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5,
                 flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, act_fn="silu",
                 center_input_sample=False, mid_block_scale_factor=1)
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                 cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, norm_num_groups=32,
                 flip_sin_to_cos=True, freq_shift=0, act_fn="silu", upcast_attention=False)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
           block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, act_fn="silu", sample_size=512)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
              layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1)
CLIP_BIGG = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                 num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
                 layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1)
SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                steps_offset=1)
MERGES = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("r", "e"), ("o", "n</w>")]


def byte_chars() -> list[str]:
    """GPT-2's byte -> printable character table in byte order (what CLIP's vocabulary is spelt in): the
    project's own tokenizer's table, so the made-up vocabulary is spelt as models/clip/tokenizer.py reads it."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from another environment
    from models.clip.tokenizer import BYTE_TO_CHAR

    return [BYTE_TO_CHAR[b] for b in range(256)]


def make_tokenizer(pad_token: str):
    """transformers' CLIPTokenizer over the made-up vocabulary (module docstring), 77 positions, read from the
    hub's tokenizer files (vocab.json, merges.txt, tokenizer_config.json) as ``from_pretrained`` reads them."""
    from transformers import CLIPTokenizer

    chars = byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + [a + b for a, b in MERGES] + ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "pad_token": pad_token,
             "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    if len(tokenizer) != len(tokens):  # a library version that ignored the files would tokenize to nothing
        raise RuntimeError(f"CLIPTokenizer read {len(tokenizer)} tokens of the {len(tokens)} written")
    return tokenizer


def build(kind: str, sample_size: int | None):
    """The diffusers pipeline object of ``kind`` with default-initialised weights."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet_config = dict(SD15_UNET if kind == "sd15" else SDXL_UNET)
    vae_config = dict(VAE)
    if sample_size is not None:
        unet_config["sample_size"] = sample_size
        vae_config["sample_size"] = sample_size * 8  # SD's VAE: 8 pixels per latent along each side
    if kind == "sdxl":
        vae_config.update(scaling_factor=0.13025, force_upcast=True)
    unet = diffusers.UNet2DConditionModel(**unet_config)
    vae = diffusers.AutoencoderKL(**vae_config)
    text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_L))
    if kind == "sd15":
        scheduler = diffusers.PNDMScheduler(**SD_BETAS, skip_prk_steps=True, set_alpha_to_one=False)
        return diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=make_tokenizer(
            "<|endoftext|>"), unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
    scheduler = diffusers.EulerDiscreteScheduler(**SD_BETAS, interpolation_type="linear", prediction_type="epsilon",
                                                 timestep_spacing="leading", use_karras_sigmas=False)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG))
    return diffusers.StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                               tokenizer=make_tokenizer("<|endoftext|>"), tokenizer_2=make_tokenizer("!"),
                                               unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--kind", choices=("sd15", "sdxl"), required=True)
    p.add_argument("--out", required=True, help="the pipeline folder to write (must not exist)")
    p.add_argument("--sample-size", type=int, default=None,
                   help="the U-Net's latent size (default the real one: 64 for sd15, 128 for sdxl)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="the weights' dtype in the files; float16 halves the files and the memory of writing them "
                        "(SDXL: 7 GB instead of 14 GB); the project's loader reads either into float32")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        sys.exit(f"--out {out}: exists; give a new folder")
    import torch

    torch.manual_seed(args.seed)
    torch.set_default_dtype(getattr(torch, args.dtype))  # the modules are built in it: no float32 copy first
    pipe = build(args.kind, args.sample_size)
    pipe.save_pretrained(out)  # safetensors, the hub's layout
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in pipe.components.items()
              if isinstance(m, torch.nn.Module)}
    print(f"wrote {out}: " + ", ".join(f"{k} {v / 1e6:.1f}M params" for k, v in counts.items()))
    return out


if __name__ == "__main__":
    main()
