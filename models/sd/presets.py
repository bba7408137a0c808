"""Published U-Net configurations of the Stable Diffusion family, as their diffusers ``unet/config.json`` give them.

Written out as plain dicts (the hub files' fields; diffusers defaults left out where the files leave them out)
so that ``UNetConditionConfig.from_diffusers`` reads them exactly as it reads a downloaded file, traps included:
``attention_head_dim`` is the number of HEADS in every one of them.

    sd-v1.5          stable-diffusion-v1-5/stable-diffusion-v1-5 (= SD-v1.4's U-Net)      859,520,964 params
    sd-2.1           stabilityai/stable-diffusion-2-1 (768 px, v-prediction)            865,910,724
    sd-2.1-base      stabilityai/stable-diffusion-2-1-base (512 px)                     865,910,724
    sdxl-base        stabilityai/stable-diffusion-xl-base-1.0                         2,567,463,684
    bk-sdm-base      nota-ai/bk-sdm-base: one ResNet/attention pair per down block     579,384,964
                     (layers_per_block 1; up blocks keep 2 of 3)
    bk-sdm-small     nota-ai/bk-sdm-small: Base without the mid block                  482,346,884
    bk-sdm-tiny      nota-ai/bk-sdm-tiny: Small without the innermost level             323,384,964
                     (down_blocks.3 / up_blocks.0 of SD-v1.4, the 1280-wide ResNet-only stage)
    t2i-shapes       the embedded text-to-image teacher's U-Net (16x16x4 latents)          2,205,828

The BK-SDM structures are those of Kim et al. 2023 (arXiv 2305.15798, Sec. 3.1, Fig. 2) and their released
configs; the parameter counts above are the tests' known answers (tests/test_sd_unet.py).
"""
from __future__ import annotations

from typing import Any

from models.sd.config import UNetConditionConfig

_SD1 = {
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

_SD21_BASE = {
    **_SD1, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024, "dual_cross_attention": False,
    "num_class_embeds": None, "only_cross_attention": False, "upcast_attention": False, "use_linear_projection": True,
}

_SDXL_BASE = {
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280], "center_input_sample": False, "class_embed_type": None,
    "class_embeddings_concat": False, "conv_in_kernel": 3, "conv_out_kernel": 3, "cross_attention_dim": 2048,
    "cross_attention_norm": None, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "encoder_hid_dim": None, "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_only_cross_attention": None, "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05, "norm_num_groups": 32, "num_attention_heads": None, "num_class_embeds": None,
    "only_cross_attention": False, "out_channels": 4, "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": False, "resnet_time_scale_shift": "default",
    "sample_size": 128, "time_cond_proj_dim": None, "time_embedding_act_fn": None, "time_embedding_dim": None,
    "time_embedding_type": "positional", "timestep_post_act": None, "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "upcast_attention": None,
    "use_linear_projection": True,
}

_BK_BASE = {**_SD1, "layers_per_block": 1}
_BK_SMALL = {**_BK_BASE, "mid_block_type": None}
_BK_TINY = {
    **_BK_SMALL, "block_out_channels": [320, 640, 1280],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

# The embedded text-to-image teacher (checkpoints/t2i_shapes, docs/TEACHER.md): SD-1's block types at 1/10 of
# its widths, on 16x16x4 latents of the tiny VAE, cross-attending to the tiny CLIP's 64-wide text states.
_T2I_SHAPES = {
    **_SD1, "block_out_channels": [32, 64, 96], "layers_per_block": 1, "attention_head_dim": 4,
    "cross_attention_dim": 64, "norm_num_groups": 16, "sample_size": 16,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

DIFFUSERS_CONFIGS: dict[str, dict[str, Any]] = {
    "sd-v1.5": _SD1,
    "sd-2.1": {**_SD21_BASE, "sample_size": 96, "upcast_attention": True},
    "sd-2.1-base": _SD21_BASE,
    "sdxl-base": _SDXL_BASE,
    "bk-sdm-base": _BK_BASE,
    "bk-sdm-small": _BK_SMALL,
    "bk-sdm-tiny": _BK_TINY,
    "t2i-shapes": _T2I_SHAPES,
}


def preset(name: str) -> UNetConditionConfig:
    """The named published U-Net config; an unknown name is an error listing the known ones."""
    if name not in DIFFUSERS_CONFIGS:
        raise KeyError(f"unknown SD U-Net preset {name!r}; known presets: {sorted(DIFFUSERS_CONFIGS)}")
    return UNetConditionConfig.from_diffusers(DIFFUSERS_CONFIGS[name])


PRESETS: dict[str, UNetConditionConfig] = {name: preset(name) for name in DIFFUSERS_CONFIGS}
