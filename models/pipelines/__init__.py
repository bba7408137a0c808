"""Latent diffusion pipelines (Stable Diffusion 1/2/XL, BK-SDM, class-conditional LDMs): loading and generation.

    original_layout.py  the table: original single-file names (model.diffusion_model.*, first_stage_model.*,
                        cond_stage_model.*) <-> diffusers names
    weights.py          lazy reading into meta-device modules; one error naming every mismatch
    component.py        one component folder (config.json + weights) -> UNet / VAE / CLIP text encoder
    pipeline.py         ``Pipeline`` and a whole pipeline folder (model_index.json)
    single_file.py      an original-layout SD-v1.x .ckpt/.safetensors -> ``Pipeline``
    hub.py              pipelines by hub name (the same cache and offline error as models/hub.py)
    text_to_image.py    prompt -> images: text encoding, guidance, a scheduler, the VAE decode
    save.py             a Pipeline -> a pipeline folder (pruned U-Nets included)
    vq_model.py, class_embedder.py, presets.py   the CompVis LDMs' VQ autoencoder, class token, cin256-v2 layout

``load_latent(source)`` takes any of these sources; ``models.load`` sends them here (``is_latent_source``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.pipelines.component import BUILDERS, class_name, load_component, read_config
from models.pipelines.hub import KNOWN_PIPELINES, fetch_pipeline
from models.pipelines.pipeline import KINDS, Pipeline, load_pipeline
from models.pipelines.save import save_component, save_pipeline
from models.pipelines.single_file import is_single_file, load_single_file


def _folder_kind(path: Path) -> str | None:
    """"pipeline" / "component" for a folder this package loads, else None (the DDPM family's, or unknown)."""
    if (path / "model_index.json").is_file():
        unet = path / "unet" / "config.json"
        vqvae = (path / "vqvae").is_dir()
        if vqvae or (unet.is_file() and class_name(read_config(unet.parent)) != "UNet2DModel"):
            return "pipeline"
        return None
    if (path / "config.json").is_file():
        try:
            return "component" if class_name(read_config(path)) in BUILDERS else None
        except (OSError, ValueError):
            return None
    return None


def is_latent_source(source: Any) -> bool:
    """Whether ``source`` is for this package: a known pipeline hub name, a pipeline or component folder of the
    latent family, or an original-layout SD single file."""
    if isinstance(source, str) and source in KNOWN_PIPELINES:
        return True
    if not isinstance(source, (str, os.PathLike)):
        return False
    path = Path(source)
    if path.is_dir():
        return _folder_kind(path) is not None
    return is_single_file(path)


def load_latent(source: str | os.PathLike, *, variant: str | None = None, dtype: torch.dtype | None = torch.float32,
                config: str | os.PathLike | None = None, ema: bool = False) -> Pipeline | nn.Module:
    """A ``Pipeline`` (pipeline folder, hub name, single file) or one module (component folder), in eval mode.

    variant: weight-file variant ("fp16"); dtype: the weights' dtype (None keeps the files'); config: for a
    single file, the folder, hub name or preset its architecture, tokenizer and scheduler come from; ema: for a
    single file, the U-Net's EMA copy (``model_ema.*``).
    """
    if isinstance(source, str) and source in KNOWN_PIPELINES and not Path(source).exists():
        return load_pipeline(fetch_pipeline(source, variant=variant), variant=variant, dtype=dtype)
    path = Path(source)
    if path.is_dir():
        if _folder_kind(path) == "component":
            return load_component(path, variant=variant, dtype=dtype)
        return load_pipeline(path, variant=variant, dtype=dtype)
    return load_single_file(path, config=config, dtype=dtype, ema=ema)


__all__ = ["Pipeline", "KINDS", "load_pipeline", "load_component", "load_single_file", "load_latent", "save_pipeline",
           "save_component",           "is_latent_source", "fetch_pipeline", "KNOWN_PIPELINES"]
