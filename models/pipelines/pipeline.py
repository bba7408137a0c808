"""A whole text-to-image (or class-conditional / unconditional latent) pipeline: its parts and its kind.

    pipe = load_pipeline("stable-diffusion-v1-5/")          # a diffusers pipeline folder (model_index.json)
    pipe.kind                                                # "sd1", "sd2", "sdxl" or "ldm"

A diffusers pipeline folder holds ``model_index.json`` ({component: [library, class]}) and one subfolder per
component. Which components a pipeline needs (``REQUIRED``):

    sd1 / sd2   unet/ vae/ text_encoder/ tokenizer/ scheduler/      (StableDiffusionPipeline)
    sdxl        the same plus text_encoder_2/ tokenizer_2/            (StableDiffusionXLPipeline)
    ldm         unet/ vae/ (or vqvae/, a VQModel) scheduler/, no text: unconditional, class-conditional through
                the U-Net's num_class_embeds, or through class_embedder/ (cross-attention to a class token,
                the CompVis ImageNet LDM's way: models/pipelines/class_embedder.py)

sd2 is told from sd1 by the U-Net's cross_attention_dim (1024, OpenCLIP-H) -- the same code serves both:
diffusers' SD-2 text_encoder folder already stops one layer early (the original's "penultimate" layer).
Components a pipeline may list but generation never uses (safety_checker, feature_extractor,
image_encoder) are not loaded. A listed-but-absent folder, or a required component that model_index.json
does not list, is a one-line error naming it, raised before any weight is read.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffusion.schedulers import SchedulerConfig, scheduler_config
from models.pipelines.component import (DDPM_CLASSES, SUPPORTED, class_name, load_component, read_config,
                                        weight_file)

KINDS = ("sd1", "sd2", "sdxl", "ldm")
REQUIRED = {"sd1": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
            "sd2": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
            "sdxl": ("unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"),
            "ldm": ("unet", "vae", "scheduler")}  # "vae" stands for "vqvae" where the folder has that instead
AUTOENCODERS = ("vae", "vqvae")
UNUSED = ("safety_checker", "feature_extractor", "image_encoder")
SCHEDULER_FILE = "scheduler_config.json"


@dataclass(frozen=True)
class Pipeline:
    """The parts of a latent diffusion pipeline (modules in eval mode).

    scheduler: the raw scheduler_config.json dict -- ``scheduler_config(pipe.scheduler, name)`` builds the
               folder's own family (name=None) or another one from it, as diffusers' ``from_config`` does.
    force_zeros_for_empty_prompt: SDXL's rule, the unconditional embedding of an empty negative prompt is 0.
    """

    kind: str
    unet: nn.Module
    vae: nn.Module
    scheduler: dict[str, Any]
    text_encoder: nn.Module | None = None
    tokenizer: Any = None
    text_encoder_2: nn.Module | None = None
    tokenizer_2: Any = None
    class_embedder: nn.Module | None = None
    source: str = ""
    force_zeros_for_empty_prompt: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"pipeline kind {self.kind!r} is not one of {KINDS}")

    def scheduler_config(self, name: str | None = None) -> SchedulerConfig:
        return scheduler_config(self.scheduler, name)

    @property
    def has_text(self) -> bool:
        return self.text_encoder is not None

    @property
    def num_classes(self) -> int:
        """The class labels the pipeline takes (0: not class-conditional): the class embedder's classes, else
        the U-Net's num_class_embeds."""
        if self.class_embedder is not None:
            return int(self.class_embedder.num_classes)
        config = getattr(self.unet, "config", None)
        return int(getattr(config, "num_class_embeds", None) or 0)

    @property
    def has_unconditional(self) -> bool:
        """Whether classifier-free guidance has an unconditional input: the empty prompt or the "no class" row."""
        if self.class_embedder is not None:
            return self.class_embedder.config.unconditional_class is not None
        return self.has_text

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def vae_scale(self) -> int:
        """Pixels per latent along each side (2 ** (levels - 1); 8 for SD's VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def modules(self) -> dict[str, nn.Module]:
        return {name: m for name in ("unet", "vae", "text_encoder", "text_encoder_2", "class_embedder")
                if isinstance(m := getattr(self, name), nn.Module)}

    def to(self, device: torch.device | str) -> "Pipeline":
        for m in self.modules().values():
            m.to(device)
        return self


def read_model_index(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / "model_index.json"
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder}: no model_index.json (not a diffusers pipeline folder)") from None
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(index, dict):
        raise ValueError(f"{path}: holds a {type(index).__name__}, not a JSON object")
    return index


def listed_components(index: dict[str, Any]) -> dict[str, str]:
    """{component: class} of the entries that model_index.json lists with a class (not [null, null])."""
    out = {}
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or len(value) != 2:
            continue
        if value[1] is not None:
            out[name] = str(value[1])
    return out


def pipeline_kind(listed: dict[str, str], unet_config: dict | None) -> str:
    """"sdxl" with a second text encoder, "ldm" without text, else "sd2" for 1024-wide cross-attention, "sd1"."""
    if "text_encoder_2" in listed or "tokenizer_2" in listed:
        return "sdxl"
    if "text_encoder" not in listed and "tokenizer" not in listed:
        return "ldm"
    unet_config = unet_config or {}
    cross = unet_config.get("_diffprune_config", unet_config).get("cross_attention_dim")
    cross = cross[0] if isinstance(cross, (list, tuple)) and cross else cross  # per level in a pruned config
    return "sd2" if cross == 1024 else "sd1"


def check_pipeline_folder(folder: str | os.PathLike) -> tuple[str, dict[str, str]]:
    """(kind, listed components) of a pipeline folder, or a one-line error naming the first missing component."""
    folder = Path(folder)
    index = read_model_index(folder)
    listed = listed_components(index)
    unet_config = folder / "unet" / "config.json"
    kind = pipeline_kind(listed, read_config(unet_config.parent) if unet_config.is_file() else None)
    for name in REQUIRED[kind]:
        if name == "vae" and "vae" not in listed and "vqvae" in listed:
            name = "vqvae"
        if name not in listed:
            raise ValueError(f"{folder}/model_index.json: the {kind} pipeline needs component {name!r}, "
                             f"which it does not list")
        sub = folder / name
        # A tokenizer folder holds vocab.json + merges.txt, or (written by transformers 5) tokenizer.json alone.
        probes = ([sub / "vocab.json", sub / "tokenizer.json"] if name.startswith("tokenizer") else
                  [sub / (SCHEDULER_FILE if name == "scheduler" else "config.json")])
        if not any(p.is_file() for p in probes):
            raise FileNotFoundError(f"{folder}: component {name!r} is missing ({probes[0]} not found)")
    return kind, listed


def load_pipeline(folder: str | os.PathLike, *, variant: str | None = None,
                  dtype: torch.dtype | None = torch.float32) -> Pipeline:
    """Every part of a diffusers pipeline folder (module docstring). dtype/variant as ``load_component``."""
    from models.clip.tokenizer import CLIPTokenizer

    folder = Path(folder)
    kind, listed = check_pipeline_folder(folder)
    scheduler = json.loads((folder / "scheduler" / SCHEDULER_FILE).read_text())
    scheduler_config(scheduler)  # an unsupported scheduler class fails here, before any weight is read
    for name in ("unet", "vae", "vqvae", "text_encoder", "text_encoder_2", "class_embedder"):
        if name in listed:  # unsupported classes fail here too, before any weight is read
            found = class_name(read_config(folder / name))
            if found not in SUPPORTED:
                raise ValueError(f"{folder / name / 'config.json'}: class {found!r} is not supported; "
                                 f"supported: {', '.join(SUPPORTED)}")
            if found not in DDPM_CLASSES:
                weight_file(folder / name, variant)  # a component without weights fails here
    parts: dict[str, Any] = {}
    for name in ("unet", "vae", "vqvae", "text_encoder", "text_encoder_2", "class_embedder"):
        if name in listed:  # the autoencoder is ``vae`` whichever folder it came from
            parts["vae" if name == "vqvae" else name] = load_component(folder / name, variant=variant, dtype=dtype)
    for name in ("tokenizer", "tokenizer_2"):
        if name in listed:
            parts[name] = CLIPTokenizer.from_folder(folder / name)
    index = read_model_index(folder)
    return Pipeline(kind=kind, scheduler=scheduler, source=str(folder),
                    force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", kind == "sdxl")),
                    **parts)
