"""MACs and params of the latent U-Net's modules (models/sd) in both conventions of metrics/macs.py, against
hand counts on a one-level U-Net, and the published BK-SDM U-Net MACs for the full-size presets (meta device)."""
from __future__ import annotations

import pytest
import torch

from metrics.macs import count_macs, format_count
from models.sd import UNet2DConditionModel, UNetConditionConfig
from models.sd.presets import PRESETS

# One level, one ResNet + Transformer2D down, two up, no mid block: 8 channels, 2 heads, text width 6.
C, T, H, W, M, E = 8, 32, 4, 4, 3, 6
N = H * W
TINY = dict(block_out_channels=[C], down_block_types=["CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D"],
            mid_block_type=None, layers_per_block=1, attention_head_dim=2, cross_attention_dim=E, norm_num_groups=4,
            sample_size=H)


def conv(c_in, c_out, k=3):
    """A k x k conv with bias over the N positions: weights k*k*C_in per output element, plus the bias."""
    return N * c_out * c_in * k * k + N * c_out


def resnet(c_in, c_out, shortcut):
    return (2 * c_in * N + conv(c_in, c_out) + (c_out * T + c_out) + 2 * c_out * N + conv(c_out, c_out)
            + (conv(c_in, c_out, k=1) if shortcut else 0))


def transformer():
    """The same for 1x1-conv and Linear projections: GroupNorm, proj_in, one block (LN, self-attn, LN, cross-attn, LN, GEGLU FF), proj_out. D = inner = C, F = 4D.
    Returns (paper, attention products): to_q/k/v have no bias, to_out.0 and the FF layers have one."""
    D, F = C, 4 * C
    proj = N * D * C + N * D  # 1x1 conv and Linear on N tokens count alike
    self_attn = 3 * N * D * D + (N * D * D + N * D)
    cross_attn = N * D * D + 2 * M * D * E + (N * D * D + N * D)
    ff = (N * 2 * F * D + N * 2 * F) + (N * D * F + N * D)
    paper = 2 * C * N + proj + 3 * (2 * N * D) + self_attn + cross_attn + ff + proj
    # q k^T and attn @ v: heads * L * S * (d_qk + d_v) = L * S * 2D, with S = N (self) and M (cross).
    return paper, N * N * 2 * D + N * M * 2 * D


@pytest.mark.parametrize("linear", [False, True])
def test_tiny_unet_hand_count(linear):
    cfg = UNetConditionConfig.from_diffusers({**TINY, "use_linear_projection": linear})
    model = UNet2DConditionModel(cfg)
    report = count_macs(model, model.example_inputs(tokens=M))
    attn_paper, attn_products = transformer()
    time_mlp = (T * C + T) + (T * T + T)
    expected = (time_mlp + conv(4, C) + resnet(C, C, False) + 2 * resnet(2 * C, C, True) + 3 * attn_paper
                + 2 * C * N + conv(C, 4))
    assert report.macs_paper == expected
    assert report.macs_full - report.macs_paper == report.per_kind["matmul"] == 3 * attn_products
    assert report.params == sum(p.numel() for p in model.parameters())
    assert report.uncounted == ()
    block = "down_blocks.0.attentions.0.transformer_blocks.0"
    assert report.per_module[f"{block}.attn2"] == N * M * 2 * C  # cross-attention products booked on attn2
    assert report.per_module[f"{block}.ff.net.0.proj"] == N * 2 * 4 * C * C + N * 2 * 4 * C  # GEGLU's doubled Linear


def test_class_and_sdxl_embeddings_counted():
    cls = UNetConditionConfig.from_diffusers({**TINY, "num_class_embeds": 5})
    model = UNet2DConditionModel(cls)
    plain = count_macs(UNet2DConditionModel(UNetConditionConfig.from_diffusers(TINY)), model.example_inputs(tokens=M)[:3])
    report = count_macs(model, model.example_inputs(tokens=M))
    assert report.uncounted == () and report.macs_paper == plain.macs_paper  # the class lookup is free
    assert report.params == plain.params + 5 * T
    xl = UNetConditionConfig.from_diffusers({**TINY, "addition_embed_type": "text_time", "addition_time_embed_dim": 4,
                                             "projection_class_embeddings_input_dim": 10 + 6 * 4})
    model = UNet2DConditionModel(xl)
    report = count_macs(model, model.example_inputs(tokens=M))
    assert report.per_module["add_embedding.linear_1"] == T * 34 + T and report.per_module["add_embedding.linear_2"] == T * T + T


# BK-SDM (Kim et al. 2023, arXiv 2305.15798) reports the U-Net MACs of one forward pass (64x64 latents, batch 1).
PUBLISHED_MACS = {"sd-v1.5": "339G", "bk-sdm-base": "224G", "bk-sdm-small": "218G", "bk-sdm-tiny": "205G"}


@pytest.mark.parametrize("name", sorted(PUBLISHED_MACS))
def test_published_unet_macs(name):
    with torch.device("meta"):
        model = UNet2DConditionModel(PRESETS[name])
        report = count_macs(model, model.example_inputs())
    assert format_count(report.macs_paper, digits=0) == PUBLISHED_MACS[name]
    assert report.macs_full > report.macs_paper and report.uncounted == ()
