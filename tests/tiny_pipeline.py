"""Write a TINY random-weight diffusers pipeline folder (not a test file; tests import it).

The configs are the tiny ones of tests/data/golden/sd_family.pt (the SD-1-style U-Net, the 2-level VAE, the
3-layer CLIP text tower), with the U-Net's cross-attention width set to the text tower's (32); or, with
``class_cond``, the golden class-conditional U-Net (10 classes) with its cross-attention blocks replaced by
plain ones (an LDM without text). The tokenizer is a made-up byte-level BPE vocabulary of 1000 tokens
(256 byte characters, the same with "</w>", a few merges, fillers; BOS 998, EOS 999 = the padding) with
model_max_length 16 = the text tower's positions. Weights: the project's own modules, seeded default init.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from models.clip.tokenizer import BYTE_TO_CHAR

SD_FAMILY = Path(__file__).parent / "data" / "golden" / "sd_family.pt"
MAX_TOKENS = 16
MERGES = [("r", "e</w>"), ("e", "d</w>"), ("c", "i"), ("ci", "r"), ("cir", "c"), ("l", "e</w>")]


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda v: list(v) if isinstance(v, tuple) else str(v)))


def tiny_configs(class_cond: bool = False, text: bool = True, sdxl: bool = False) -> dict[str, dict]:
    golden = torch.load(SD_FAMILY, weights_only=True)
    unet = _jsonable(golden["sdxl" if sdxl else "class_cond" if class_cond else "sd1"]["config"])
    unet.pop("_use_default_values", None)
    unet.update(_class_name="UNet2DConditionModel", cross_attention_dim=32)
    if sdxl:  # two 32-wide text towers side by side; text_embeds (24) + 6 time ids x 8
        unet.update(cross_attention_dim=64, projection_class_embeddings_input_dim=24 + 6 * 8)
    if not text:  # an LDM without text: no cross-attention anywhere
        unet.update(down_block_types=["DownBlock2D"] * 2, up_block_types=["UpBlock2D"] * 2, mid_block_type=None)
    vae = _jsonable(golden["vae"]["config"])
    vae.pop("_use_default_values", None)
    vae["_class_name"] = "AutoencoderKL"
    text_config = _jsonable(golden["clip_text"]["config"])
    text_config["architectures"] = ["CLIPTextModel"]
    scheduler = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
                 "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "set_alpha_to_one": False,
                 "skip_prk_steps": True, "steps_offset": 1, "clip_sample": False, "trained_betas": None}
    vq = {"_class_name": "VQModel", "block_out_channels": [16, 32], "down_block_types": ["DownEncoderBlock2D"] * 2,
          "up_block_types": ["UpDecoderBlock2D"] * 2, "layers_per_block": 1, "latent_channels": 4,
          "num_vq_embeddings": 64, "norm_num_groups": 8, "sample_size": 16}
    text_2 = _jsonable(golden["clip_text_proj"]["config"])
    text_2["architectures"] = ["CLIPTextModelWithProjection"]
    return {"unet": unet, "vae": vae, "vqvae": vq, "text_encoder": text_config, "text_encoder_2": text_2,
            "scheduler": scheduler}


def write_tokenizer(folder: Path) -> None:
    chars = [BYTE_TO_CHAR[b] for b in range(256)]
    tokens = chars + [c + "</w>" for c in chars] + [a + b for a, b in MERGES]
    tokens += [f"<filler{i}>" for i in range(998 - len(tokens))]
    vocab = {t: i for i, t in enumerate(tokens)}
    vocab.update({"<|startoftext|>": 998, "<|endoftext|>": 999})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": MAX_TOKENS,
                                                              "pad_token": "<|endoftext|>"}))


def write_tiny_pipeline(folder: str | Path, *, text: bool = True, class_cond: bool = False, vq: bool = False,
                        sdxl: bool = False, class_embedder: bool = False, seed: int = 0,
                        variant: str | None = None, sample_size: int | None = None) -> Path:
    """A pipeline folder: model_index.json, unet/, vae/ (vqvae/ with ``vq``), scheduler/, and with ``text``
    text_encoder/ + tokenizer/; ``sdxl`` adds text_encoder_2/ + tokenizer_2/ (SDXL's layout); ``class_embedder``
    (with text=False) is the ImageNet LDM's layout: a cross-attention U-Net and class_embedder/ (10 classes +
    the unconditional row, 32 wide). variant "fp16" writes half-precision ``*.fp16.safetensors`` files only.
    sample_size: the U-Net's latent size instead of the golden config's (16: the 32 px shapes' latents)."""
    from models.pipelines.vq_model import VQModel
    from models.clip import CLIPTextConfig, CLIPTextModel
    from models.sd.config import UNetConditionConfig
    from models.sd.unet import UNet2DConditionModel
    from models.vae import AutoencoderKL

    folder = Path(folder)
    from models.clip import CLIPTextModelWithProjection
    from models.pipelines.class_embedder import ClassEmbedder, ClassEmbedderConfig
    configs = tiny_configs(class_cond, text or class_embedder, sdxl)  # the class token needs cross-attention
    configs["class_embedder"] = ClassEmbedderConfig(n_classes=11, embed_dim=32, unconditional_class=10).to_dict()
    if sample_size is not None:
        configs["unet"]["sample_size"] = sample_size
    torch.manual_seed(seed)
    modules = {"unet": UNet2DConditionModel(UNetConditionConfig.from_diffusers(configs["unet"]))}
    if vq:
        modules["vqvae"] = VQModel.from_diffusers_config(configs["vqvae"])
    else:
        modules["vae"] = AutoencoderKL.from_diffusers_config(configs["vae"])
    if text:
        modules["text_encoder"] = CLIPTextModel(CLIPTextConfig.from_transformers_config(configs["text_encoder"]))
    if class_embedder:
        modules["class_embedder"] = ClassEmbedder(ClassEmbedderConfig.from_dict(configs["class_embedder"]))
    if sdxl:
        modules["text_encoder_2"] = CLIPTextModelWithProjection(
            CLIPTextConfig.from_transformers_config(configs["text_encoder_2"]))
    index = {"_class_name": "StableDiffusionPipeline" if text else "LDMPipeline", "scheduler": ["diffusers", "PNDMScheduler"],
             "unet": ["diffusers", "UNet2DConditionModel"],
             **({"vqvae": ["diffusers", "VQModel"]} if vq else {"vae": ["diffusers", "AutoencoderKL"]}),
             "safety_checker": [None, None]}
    tag = f".{variant}" if variant else ""
    for name, module in modules.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "config.json").write_text(json.dumps(configs[name]))
        stem = "model" if name.startswith("text_encoder") else "diffusion_pytorch_model"
        state = {k: (v.half() if variant == "fp16" else v).contiguous() for k, v in module.state_dict().items()}
        save_file(state, folder / name / f"{stem}{tag}.safetensors")
    if text:
        index.update(text_encoder=["transformers", "CLIPTextModel"], tokenizer=["transformers", "CLIPTokenizer"])
        write_tokenizer(folder / "tokenizer")
    if class_embedder:
        index.update(_class_name="LDMClassConditionalPipeline", class_embedder=["diffprune", "ClassEmbedder"])
    if sdxl:
        index.pop("safety_checker")
        index.update(_class_name="StableDiffusionXLPipeline", force_zeros_for_empty_prompt=True,
                     text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                     tokenizer_2=["transformers", "CLIPTokenizer"])
        write_tokenizer(folder / "tokenizer_2")
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(configs["scheduler"]))
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder
