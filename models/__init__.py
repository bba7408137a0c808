"""The DDPM U-Net, its config and presets, and every way to get one: ``load(source)`` and checkpoints."""
from models.checkpoint import read_checkpoint, save_checkpoint
from models.config import PRESETS, ModelConfig, preset
from models.loading import load, load_with_info
from models.unet import UNet

__all__ = ["UNet", "ModelConfig", "PRESETS", "preset", "load", "load_with_info", "save_checkpoint", "read_checkpoint"]
