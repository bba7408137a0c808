"""Built-in pipeline layouts for original single files that no diffusers folder describes.

    pipe = load_single_file("cin256-v2/model.ckpt", config="ldm-cin256-v2")

``ldm-cin256-v2``: CompVis' class-conditional ImageNet LDM (latent-diffusion's
``configs/latent-diffusion/cin256-v2.yaml``, the starting point of Diff-Pruning's LDM experiments), written
as the diffusers configs of the same networks:

    unet_config      UNetModel: model_channels 192, channel_mult [1, 2, 3, 5], num_res_blocks 2, attention at
                     downsampling rates 8, 4, 2 (levels 1-3) as SpatialTransformer (depth 1, context 512),
                     num_heads 1, image_size 64, 3 channels
                     -> UNet2DConditionModel: block_out_channels [192, 384, 576, 960], CrossAttn blocks at
                        levels 1-3, cross_attention_dim 512, one head (the legacy ``attention_head_dim`` = 1)
    first_stage      VQModelInterface: embed_dim 3, n_embed 8192, ch 128, ch_mult [1, 2, 4], 2 res blocks,
                     no level attention -> VQModel (vq_embed_dim 3, latent_channels 3)
    cond_stage       ClassEmbedder(n_classes 1001, embed_dim 512); class 1000 is the unconditional one
    schedule         linear_start 0.0015, linear_end 0.0195 with latent-diffusion's "linear" schedule, i.e.
                     sqrt(beta) linear in t (= diffusers' "scaled_linear"); LatentDiffusion's scale_factor
                     is not set there, so 1.0; sampled with its DDIM sampler (timesteps 1, 1 + T/S, ...;
                     alpha_bar_0 after the last step: steps_offset 1, set_alpha_to_one False)
"""
from __future__ import annotations

from typing import Any

LDM_CIN256_V2: dict[str, dict[str, Any]] = {
    "model_index": {"_class_name": "LDMClassConditionalPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
                    "vqvae": ["diffusers", "VQModel"], "class_embedder": ["diffprune", "ClassEmbedder"],
                    "scheduler": ["diffusers", "DDIMScheduler"]},
    "unet": {"_class_name": "UNet2DConditionModel", "sample_size": 64, "in_channels": 3, "out_channels": 3,
             "block_out_channels": [192, 384, 576, 960], "layers_per_block": 2,
             "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                  "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
             "mid_block_type": "UNetMidBlock2DCrossAttn", "cross_attention_dim": 512, "attention_head_dim": 1,
             "norm_num_groups": 32, "flip_sin_to_cos": True, "freq_shift": 0},
    "vqvae": {"_class_name": "VQModel", "in_channels": 3, "out_channels": 3, "block_out_channels": [128, 256, 512],
              "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
              "layers_per_block": 2, "latent_channels": 3, "num_vq_embeddings": 8192, "vq_embed_dim": 3,
              "norm_num_groups": 32, "sample_size": 256, "scaling_factor": 1.0},
    "class_embedder": {"_class_name": "ClassEmbedder", "n_classes": 1001, "embed_dim": 512,
                       "unconditional_class": 1000},
    "scheduler": {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
                  "beta_start": 0.0015, "beta_end": 0.0195, "clip_sample": False, "set_alpha_to_one": False,
                  "steps_offset": 1, "timestep_spacing": "leading"},
}

PIPELINE_PRESETS: dict[str, dict[str, dict[str, Any]]] = {"ldm-cin256-v2": LDM_CIN256_V2}
