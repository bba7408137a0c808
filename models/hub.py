"""Pretrained DDPMs by name: ``load("google/ddpm-cifar10-32")`` or ``load("ddim:ema_cifar10")`` downloads once.

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

The DDIM codebase (ermongroup/ddim, ``functions/ckpt_util.py``) publishes the same DDPMs converted to its
own layout, the files Diff-Pruning's ``ddpm_exp`` code prunes; ``ddim:<name>`` (``DDIM_CHECKPOINTS``) fetches
one into ``<torch hub dir>/diffusion_models_converted/`` and checks its MD5 against the codebase's table
before it is used. Those files are plain state dicts, so the matching preset supplies what they do not
store (image size, GroupNorm groups, dropout).
"""
from __future__ import annotations

import hashlib
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


# name -> (URL, file path under the cache folder, MD5, preset): the DDIM codebase's published table.
_HEIBOX = "https://heibox.uni-heidelberg.de/f"
DDIM_CHECKPOINTS = {
    "cifar10": (f"{_HEIBOX}/869980b53bf5416c8a28/?dl=1", "diffusion_cifar10_model/model-790000.ckpt",
                "82ed3067fd1002f5cf4c339fb80c4669", "cifar10"),
    "ema_cifar10": (f"{_HEIBOX}/2e4f01e2d9ee49bab1d5/?dl=1", "ema_diffusion_cifar10_model/model-790000.ckpt",
                    "1fa350b952534ae442b1d5235cce5cd3", "cifar10"),
    "lsun_bedroom": (f"{_HEIBOX}/f179d4f21ebc4d43bbfe/?dl=1", "diffusion_lsun_bedroom_model/model-2388000.ckpt",
                     "f70280ac0e08b8e696f42cb8e948ff1c", "bedroom256"),
    "ema_lsun_bedroom": (f"{_HEIBOX}/b95206528f384185889b/?dl=1",
                         "ema_diffusion_lsun_bedroom_model/model-2388000.ckpt", "1921fa46b66a3665e450e42f36c2720f",
                         "bedroom256"),
    "lsun_church": (f"{_HEIBOX}/2711a6f712e34b06b9d8/?dl=1", "diffusion_lsun_church_model/model-4432000.ckpt",
                    "eb619b8a5ab95ef80f94ce8a5488dae3", "church256"),
    "ema_lsun_church": (f"{_HEIBOX}/44ccb50ef3c6436db52e/?dl=1", "ema_diffusion_lsun_church_model/model-4432000.ckpt",
                        "fdc68a23938c2397caba4a260bc2445f", "church256"),
}
DDIM_PREFIX = "ddim:"


class HubDownloadError(OSError):
    """A hub model could not be fetched (offline, unknown repository, no U-Net weights in it)."""


_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".json")


def looks_like_hub_name(source: object) -> bool:
    """"owner/name" with no path that exists locally and no checkpoint suffix: a Hugging Face repository id."""
    return (isinstance(source, str) and bool(_REPO_ID.match(source)) and not Path(source).exists()
            and not source.lower().endswith(_CHECKPOINT_SUFFIXES))


def _has_weights(folder: Path) -> bool:
    return any((folder / f).is_file() for f in _SAFETENSORS + _BIN)


def how_to_pass(repo: str) -> str:
    """The offline alternative every hub error ends with: fetch the folder elsewhere and pass it."""
    local = repo.split("/")[-1]
    return (f"download it on a machine with network access (`huggingface-cli download {repo} --local-dir "
            f"{local}`) and pass that folder, e.g. --model {local}")


def snapshot(repo: str, patterns: list[str], *, cache_dir: str | None = None, name: str | None = None) -> Path:
    """The files of hub repository ``repo`` matching ``patterns``, downloaded once into the cache; every
    failure (no huggingface_hub, offline, unknown repository, HTTP error) is one HubDownloadError line
    naming ``name`` (default ``repo``), the URL and the local alternative. Shared by every family's fetch."""
    name, url = name or repo, f"{HUB_URL}/{repo}"
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - it is in requirements.txt
        raise HubDownloadError(f"{name} names a model on {url}, which needs the huggingface_hub package "
                               f"(pip install huggingface_hub); or {how_to_pass(repo)}") from None
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns, cache_dir=cache_dir))
    except Exception as e:  # the hub raises many types; name them all
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise HubDownloadError(f"{name} is no local file or folder, and fetching it from {url} failed "
                               f"({type(e).__name__}: {reason}); {how_to_pass(repo)}") from None


def fetch(name: str, *, cache_dir: str | None = None) -> Path:
    """The local folder of hub model ``name`` (downloaded on first use). Raises HubDownloadError."""
    folder = snapshot(name, _CONFIGS + _SAFETENSORS, cache_dir=cache_dir)
    if not _has_weights(folder):  # an older repository with PyTorch .bin weights only
        folder = snapshot(name, _CONFIGS + _BIN, cache_dir=cache_dir)
    if not _has_weights(folder):
        raise HubDownloadError(f"{HUB_URL}/{name} holds no diffusers U-Net weights (expected one of "
                               f"{_SAFETENSORS + _BIN})")
    return folder


# ----------------------------------------------------------------------------------------------- DDIM codebase
def ddim_cache_folder() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "diffusion_models_converted"


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_ddim(source: str) -> tuple[Path, str]:
    """(local file, preset) of ``ddim:<name>``: cached, else downloaded; the MD5 is checked either way."""
    import torch

    name = source[len(DDIM_PREFIX):]
    if name not in DDIM_CHECKPOINTS:
        raise HubDownloadError(f"{source}: unknown DDIM-codebase checkpoint; known: "
                               f"{', '.join(DDIM_PREFIX + n for n in DDIM_CHECKPOINTS)}")
    url, relative, md5, preset = DDIM_CHECKPOINTS[name]
    path = ddim_cache_folder() / relative
    how = (f"download {url} on a machine with network access, check its MD5 is {md5}, and pass the file "
           f"(--model FILE --preset {preset}) or copy it to {path}")
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(path), progress=True)
        except Exception as e:  # offline, HTTP error: one message whatever the type
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise HubDownloadError(f"cannot fetch {source} from {url} ({type(e).__name__}: {reason}); {how}") from None
    found = _md5(path)
    if found != md5:
        path.unlink()  # never keep (or later reuse) a file that is not the published one
        raise HubDownloadError(f"{source}: the file from {url} has MD5 {found}, not the published {md5}; it was "
                               f"deleted. {how}")
    return path, preset
