"""Stable Diffusion's first stage: the KL autoencoder (diffusers' AutoencoderKL semantics and names)."""
from models.vae.autoencoder import AutoencoderKL, DiagonalGaussian
from models.vae.config import SD_VAE, SDXL_VAE, AutoencoderKLConfig

__all__ = ["AutoencoderKL", "AutoencoderKLConfig", "DiagonalGaussian", "SD_VAE", "SDXL_VAE"]
