"""Pretrained DDPMs by name: ``load("google/ddpm-cifar10-32")`` downloads once into the standard cache.

The checkpoints the papers start from are the DDPMs of Ho et al. 2020 (arXiv 2006.11239) as Google published
them on the Hugging Face Hub in the diffusers layout; Diff-Pruning (arXiv 2305.10924, section 5.1) prunes
``google/ddpm-cifar10-32``, ``google/ddpm-ema-church-256`` and ``google/ddpm-ema-bedroom-256``:

    KNOWN_MODELS   name -> what it is (the names a user is most likely to want; any "owner/name" repo
                   holding a diffusers UNet2DModel works the same way)

``fetch(name)`` calls ``huggingface_hub.snapshot_download``, which keeps files in the standard Hugging Face
cache (``$HF_HOME/hub``, by default ``~/.cache/huggingface/hub``), verifies them against the Hub's
checksums and reuses them on every later call, offline included. Only the U-Net's ``config.json`` and
weights are fetched (safetensors when the repository has them, else the ``.bin``). Without network access
and without a cached copy, the error names the URL and how to pass a local folder instead.
"""
from __future__ import annotations

import re
from pathlib import Path

HUB_URL = "https://huggingface.co"

KNOWN_MODELS = {
    "google/ddpm-cifar10-32": "CIFAR-10 32x32 DDPM (35.7M params; Diff-Pruning's CIFAR-10 starting point)",
    "google/ddpm-ema-church-256": "LSUN Church 256x256 DDPM, EMA weights",
    "google/ddpm-ema-bedroom-256": "LSUN Bedroom 256x256 DDPM, EMA weights",
    "google/ddpm-ema-cat-256": "LSUN Cat 256x256 DDPM, EMA weights",
    "google/ddpm-ema-celebahq-256": "CelebA-HQ 256x256 DDPM, EMA weights",
}

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CONFIGS = ["config.json", "unet/config.json", "model_index.json"]
_SAFETENSORS = ["diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors"]
_BIN = ["diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.bin"]


class HubDownloadError(OSError):
    """A hub model could not be fetched (offline, unknown repository, no U-Net weights in it)."""


_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".json")


def looks_like_hub_name(source: object) -> bool:
    """"owner/name" with no path that exists locally and no checkpoint suffix: a Hugging Face repository id."""
    return (isinstance(source, str) and bool(_REPO_ID.match(source)) and not Path(source).exists()
            and not source.lower().endswith(_CHECKPOINT_SUFFIXES))


def _has_weights(folder: Path) -> bool:
    return any((folder / f).is_file() for f in _SAFETENSORS + _BIN)


def fetch(name: str, *, cache_dir: str | None = None) -> Path:
    """The local folder of hub model ``name`` (downloaded on first use). Raises HubDownloadError."""
    url = f"{HUB_URL}/{name}"
    how = (f"download it on a machine with network access (`huggingface-cli download {name} --local-dir "
           f"{name.split('/')[-1]}`) and pass that folder, e.g. --model {name.split('/')[-1]}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - it is in requirements.txt
        raise HubDownloadError(f"--model {name} names a model on {url}, which needs the huggingface_hub package "
                               f"(pip install huggingface_hub); or {how}") from None
    try:
        folder = Path(snapshot_download(name, allow_patterns=_CONFIGS + _SAFETENSORS, cache_dir=cache_dir))
        if not _has_weights(folder):  # an older repository with PyTorch .bin weights only
            folder = Path(snapshot_download(name, allow_patterns=_CONFIGS + _BIN, cache_dir=cache_dir))
    except Exception as e:  # offline, unknown repository, HTTP error: the hub raises many types; name them all
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise HubDownloadError(f"{name} is no local file or folder, and fetching it from {url} failed "
                               f"({type(e).__name__}: {reason}); {how}") from None
    if not _has_weights(folder):
        raise HubDownloadError(f"{url} holds no diffusers U-Net weights (expected one of {_SAFETENSORS + _BIN})")
    return folder
