"""Loading (and writing) the original single-file layout of SD-v1.x and CompVis LDM ``.ckpt`` / ``.safetensors``.

    pipe = load_single_file("v1-5-pruned-emaonly.safetensors", config="sd15-configs/")

The file holds the weights only (models/pipelines/original_layout.py has the table of its names); the
architecture, the tokenizer and the scheduler come from ``config``: a diffusers pipeline folder (weights not
needed: model_index.json, {unet,vae,text_encoder}/config.json, tokenizer/, scheduler/), or a hub name
whose configs are fetched (``models.hub``; by default SD-v1.5's). Every module is built on the meta device
and read tensor by tensor from the file; a file that does not fit names its missing, unexpected and
mis-shaped tensors per component.

CompVis LDMs: the first stage may be a VQ autoencoder (the config folder's vqvae/, a VQModel: the same
encoder/decoder names plus quantize.embedding); the U-Net must be one this project builds from the config
(UNet2DConditionModel: SD-style, unconditional or class-conditional through num_class_embeds); the
ImageNet LDM's cond_stage_model is a ClassEmbedder (class_embedder/, models/pipelines/class_embedder.py).
LDMs conditioned by BERT (txt2img-1p4B) are not supported.

EMA: files with a ``model_ema.*`` copy store it with the dots removed from the names; ``ema=True`` loads the
U-Net from it, the default the raw weights (``model.diffusion_model.*``; SD's "-emaonly" files hold the EMA
weights there already).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffusion.schedulers import scheduler_config
from models.pipelines.component import BUILDERS, class_name, read_config
from models.pipelines.original_layout import (TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX, Source, UNetStructure,
                                              original_source, text_source, to_original, unet_prefix_table,
                                              vae_prefix_table)
from models.pipelines.pipeline import SCHEDULER_FILE, Pipeline, listed_components, pipeline_kind, read_model_index
from models.pipelines.presets import PIPELINE_PRESETS
from models.pipelines.weights import WeightFile, assign_weights, on_meta, open_weights

DEFAULT_CONFIG = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth")
# Parts of names in a single file that are not network weights (schedule buffers, the VAE's training loss).
IGNORED = ("position_ids", "first_stage_model.loss.")


def unet_structure(config: dict[str, Any]) -> UNetStructure:
    """The original-layout structure of a diffusers U-Net config (UNet2DConditionModel or UNet2DModel)."""
    levels = len(config["block_out_channels"])
    per_level = config.get("layers_per_block", 2)
    layers = tuple(per_level) if isinstance(per_level, list) else (int(per_level),) * levels
    conditional = class_name(config) != "UNet2DModel"
    return UNetStructure(layers_per_block=layers,
                         attn_down=tuple("Attn" in t for t in config["down_block_types"]),
                         attn_up=tuple("Attn" in t for t in config["up_block_types"]),
                         mid=config.get("mid_block_type", "UNetMidBlock2DCrossAttn") is not None,
                         transformer=conditional,
                         head_dim=0 if conditional else int(config.get("attention_head_dim") or 8))


def plans(modules: dict[str, nn.Module], configs: dict[str, dict], file_keys: list[str] | None = None
          ) -> dict[str, dict[str, Source]]:
    """{component: {diffusers name: Source in the single file}} for unet, vae and text_encoder."""
    out: dict[str, dict[str, Source]] = {}
    if "unet" in modules:
        s = unet_structure(configs["unet"])
        rows = unet_prefix_table(s)
        out["unet"] = {k: original_source(k, rows, prefix=UNET_PREFIX, head_dim=s.head_dim, shape=tuple(v.shape))
                       for k, v in modules["unet"].state_dict(keep_vars=True).items()}
    if "vae" in modules:
        rows = vae_prefix_table(len(configs["vae"]["block_out_channels"]))
        out["vae"] = {k: original_source(k, rows, prefix=VAE_PREFIX)
                      for k in modules["vae"].state_dict(keep_vars=True)}
    if "text_encoder" in modules:
        keys = set(file_keys) if file_keys is not None else None
        out["text_encoder"] = {k: text_source(k, keys) for k in modules["text_encoder"].state_dict(keep_vars=True)}
    if "class_embedder" in modules:  # latent-diffusion's ClassEmbedder: cond_stage_model.embedding.weight
        out["class_embedder"] = {k: Source(CLASS_PREFIX + k) for k in modules["class_embedder"].state_dict()}
    return out


CLASS_PREFIX = "cond_stage_model."
PREFIXES = {"unet": UNET_PREFIX, "vae": VAE_PREFIX, "text_encoder": TEXT_PREFIX, "class_embedder": CLASS_PREFIX}


def to_single_file(modules: dict[str, nn.Module], configs: dict[str, dict]) -> dict[str, torch.Tensor]:
    """The original-layout state dict of diffusers-named modules (the inverse of ``load_single_file``)."""
    out: dict[str, torch.Tensor] = {}
    for name, plan in plans(modules, configs).items():
        out.update(to_original(modules[name].state_dict(), plan))
    return out


def _layout(config: str | os.PathLike | None) -> tuple[dict[str, dict], Path | None, str]:
    """({"model_index": ..., component: config dict, "scheduler": ...}, tokenizer folder or None, description)
    of a pipeline preset name (models/pipelines/presets.py), a pipeline folder, or a hub name."""
    config = DEFAULT_CONFIG if config is None else config
    if isinstance(config, str) and config in PIPELINE_PRESETS:
        return PIPELINE_PRESETS[config], None, f"preset {config}"
    folder = Path(config)
    if not folder.is_dir():
        from models.hub import looks_like_hub_name
        if not looks_like_hub_name(str(config)):
            raise FileNotFoundError(f"config {config}: no such folder (pass a diffusers pipeline folder, a hub name "
                                    f"or a preset: {', '.join(PIPELINE_PRESETS)})")
        from models.pipelines.hub import fetch_pipeline
        folder = fetch_pipeline(str(config), weights=False)
    index = read_model_index(folder)
    layout = {"model_index": index, "scheduler": json.loads((folder / "scheduler" / SCHEDULER_FILE).read_text())}
    for name in listed_components(index):
        if (folder / name / "config.json").is_file():
            layout[name] = read_config(folder / name)
    return layout, (folder / "tokenizer" if (folder / "tokenizer").is_dir() else None), str(folder)


EMA_PREFIX = "model_ema."


def ema_source(src: Source) -> Source:
    """The EMA copy of a U-Net tensor: LitEma stores ``model.diffusion_model.a.b.c`` as
    ``model_ema.diffusion_modelabc`` (the parameter's name below ``model.`` with its dots removed)."""
    return Source(EMA_PREFIX + src.key[len("model."):].replace(".", ""), src.op, src.part, src.heads, src.ndim)


def load_single_file(path: str | os.PathLike, *, config: str | os.PathLike | None = None,
                     dtype: torch.dtype | None = torch.float32, ema: bool = False) -> Pipeline:
    """A ``Pipeline`` from an original-layout SD-v1.x / LDM file; ``config`` as in the module docstring.
    ema: take the U-Net's EMA weights (``model_ema.*``; an error where the file has none) instead of
    ``model.diffusion_model.*`` (SD's "-emaonly" files hold the EMA weights there already)."""
    from models.clip.tokenizer import CLIPTokenizer

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    layout, tokenizer_folder, where = _layout(config)
    listed = listed_components(layout["model_index"])
    kind = pipeline_kind(listed, layout.get("unet"))
    if kind == "sdxl":
        raise ValueError(f"{path}: single-file SDXL checkpoints are not supported (use the diffusers folder)")
    # The autoencoder is first_stage_model.* whether the layout calls it vae (KL) or vqvae (VQ, the LDMs').
    folders = {"unet": "unet", "vae": "vae" if "vae" in listed else "vqvae", "text_encoder": "text_encoder",
               "class_embedder": "class_embedder"}
    names = [n for n in folders if folders[n] in listed]
    missing = [folders[n] for n in names if folders[n] not in layout]
    if missing:
        raise FileNotFoundError(f"config {where}: component(s) {missing} have no config.json")
    configs = {n: layout[folders[n]] for n in names}
    for n in names:
        if class_name(configs[n]) not in BUILDERS:
            raise ValueError(f"config {where}: the {folders[n]} class {class_name(configs[n])!r} is not supported in "
                             f"a single file; supported: {', '.join(BUILDERS)}")
    scheduler_config(layout["scheduler"])
    source = open_weights(path)
    if not any(k.startswith(UNET_PREFIX) for k in source.keys()):
        raise ValueError(f"{path}: no '{UNET_PREFIX}*' tensors: not an original-layout SD/LDM checkpoint "
                         f"(a diffusers folder loads with load_pipeline)")
    if ema and not any(k.startswith(EMA_PREFIX + "diffusion_model") for k in source.keys()):
        raise ValueError(f"{path}: ema=True, but the file holds no EMA weights ({EMA_PREFIX}*)")
    modules = {n: on_meta(BUILDERS[class_name(configs[n])], configs[n]) for n in names}
    for n, plan in plans(modules, configs, source.keys()).items():
        prefix = PREFIXES[n]
        if n == "unet" and ema:
            plan, prefix = {k: ema_source(v) for k, v in plan.items()}, EMA_PREFIX + "diffusion_model"
        assign_weights(modules[n], plan, source, what=f"the {n}{' (EMA)' if n == 'unet' and ema else ''} of {where}",
                       dtype=dtype, expected_prefixes=(prefix,), ignore=IGNORED)
    tokenizer = CLIPTokenizer.from_folder(tokenizer_folder) if "tokenizer" in listed and tokenizer_folder else None
    return Pipeline(kind=kind, scheduler=layout["scheduler"], source=str(path), tokenizer=tokenizer, **modules)


def is_single_file(source: str | os.PathLike) -> bool:
    """A file (not a folder) with a single-file suffix whose names start with model.diffusion_model."""
    import zipfile
    path = Path(source)
    if not path.is_file() or path.suffix not in SINGLE_FILE_SUFFIXES:
        return False
    # A probe, called on every file models.load sees: torch files are looked into only in the zip format
    # (memory-mapped, cheap; SD and LDM checkpoints are zips), and any failure means "not one of ours".
    if path.suffix != ".safetensors" and not zipfile.is_zipfile(path):
        return False
    try:
        return any(k.startswith(UNET_PREFIX) for k in WeightFile([path]).keys())
    except Exception:
        return False
