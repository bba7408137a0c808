"""Pipelines by hub name: ``load("stabilityai/stable-diffusion-2-1-base")`` downloads once, then reads the folder.

The U-Net-only download of the DDPM family lives in models/hub.py; this is its pipeline counterpart, with the
same cache (``huggingface_hub.snapshot_download``), the same one-line error when offline
(``models.hub.HubDownloadError``), and only the files generation reads: model_index.json, every component's
config, the tokenizers, the scheduler config and the U-Net/VAE/text-encoder weights (safetensors; the
``variant`` files, e.g. fp16, when asked for). KNOWN_PIPELINES are the ones the papers use.
"""
from __future__ import annotations

from pathlib import Path

from models.hub import HUB_URL, HubDownloadError, snapshot

KNOWN_PIPELINES = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "SD-v1.5 (LAPTOP-Diff's and BK-SDM's starting point)",
    "stabilityai/stable-diffusion-2-1-base": "SD-2.1-base, 512 px, eps-prediction",
    "stabilityai/stable-diffusion-xl-base-1.0": "SDXL base 1.0 (LAPTOP-Diff prunes its U-Net)",
    "nota-ai/bk-sdm-small": "BK-SDM-Small: SD-v1.4 with blocks and the mid-block removed (Kim et al. 2023)",
    "CompVis/ldm-celebahq-256": "unconditional LDM, CelebA-HQ 256 (VQModel autoencoder; its U-Net needs the DDPM loader to accept LDM settings)",
}
COMPONENTS = ("unet", "vae", "vqvae", "text_encoder", "text_encoder_2")
CONFIG_PATTERNS = ["model_index.json", "*/config.json", "scheduler/scheduler_config.json", "tokenizer/*",
                   "tokenizer_2/*", "vqvae/config.json"]


def weight_patterns(variant: str | None) -> list[str]:
    tag = f".{variant}" if variant else ""
    return [f"{c}/{stem}{tag}.safetensors" for c in COMPONENTS for stem in ("diffusion_pytorch_model", "model")]


def fetch_pipeline(name: str, *, weights: bool = True, variant: str | None = None,
                   cache_dir: str | None = None) -> Path:
    """The local folder of hub pipeline ``name`` (configs only with weights=False). Raises HubDownloadError."""
    patterns = CONFIG_PATTERNS + (weight_patterns(variant) if weights else [])
    folder = snapshot(name, patterns, cache_dir=cache_dir)
    if not (folder / "model_index.json").is_file():
        raise HubDownloadError(f"{HUB_URL}/{name} holds no model_index.json: not a diffusers pipeline repository")
    return folder
