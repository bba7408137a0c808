"""The pixel-space DDPM U-Net of Ho et al. 2020 (arXiv 2006.11239), in the DDIM codebase's module names.

    config.py    ModelConfig (frozen): hyper-parameters, presets, the per-layer width table of a pruned net
    blocks.py    TimeEmbedding, ResBlock, AttnBlock, Downsample, Upsample
    unet.py      UNet(config): the network, built from the width table; removable_units for layer pruning
    skipped.py   what stands where layer pruning removed a unit (ResShortcut, RemovedAttn)
    convert.py   DDIM-codebase and diffusers checkpoints -> our tensor names and a ModelConfig

Loading from any source (presets, checkpoints, hub names) is family-independent plumbing in models/loading.py.
"""
from models.ddpm.config import PRESETS, ModelConfig, preset
from models.ddpm.unet import UNet

__all__ = ["UNet", "ModelConfig", "PRESETS", "preset"]
