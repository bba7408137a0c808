"""Stable Diffusion's conditional latent U-Net (diffusers ``UNet2DConditionModel`` semantics and names)."""
from models.sd.config import UNetConditionConfig
from models.sd.presets import DIFFUSERS_CONFIGS, PRESETS, preset
from models.sd.unet import UNet2DConditionModel

__all__ = ["UNetConditionConfig", "UNet2DConditionModel", "DIFFUSERS_CONFIGS", "PRESETS", "preset"]
