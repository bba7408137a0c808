"""Networks, grouped by model family, and every way to get one: ``load(source)`` and checkpoints.

    models/ddpm/     the pixel-space DDPM U-Net (Ho et al. 2020): config, blocks, unet, converters
    models/sd/       the conditional latent U-Net of Stable Diffusion
    models/vae/      the AutoencoderKL that maps images to latents and back
    models/clip/     CLIP's text and vision towers and its tokenizer
    models/pipelines/ diffusers pipeline folders and SD single files -> the latent family's parts
    checkpoint.py    diffprune's checkpoint format (atomic writes, weights_only loading)
    loading.py       ``load(source)``: presets, project, DDIM-codebase and diffusers checkpoints, hub names
    hub.py           downloads from the Hugging Face Hub and the DDIM codebase's table
    runtime.py       opt-in faster forwards (channels-last, torch.compile, bf16)

Networks that exist to compute a metric (FID's Inception, FD-shapes' classifier) live in metrics/.
``from models import load, UNet, ModelConfig, preset`` is the short way in for the DDPM family.
"""
from models.checkpoint import read_checkpoint, save_checkpoint
from models.ddpm import PRESETS, ModelConfig, UNet, preset
from models.loading import load, load_with_info

__all__ = ["UNet", "ModelConfig", "PRESETS", "preset", "load", "load_with_info", "save_checkpoint", "read_checkpoint"]
