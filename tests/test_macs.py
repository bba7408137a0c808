"""Known answers for metrics/macs.py: the Diff-Pruning reference counts of the presets, hand-counted toy nets,
the attention term of macs_full, and a U-Net with a non-uniform width table (a stand-in for a pruned model).

The large presets are built on the meta device: the counter only reads shapes, so the 256x256 LSUN U-Net
counts in well under a second instead of ~10 s of CPU convolutions.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metrics.macs import KINDS, PAPER_KINDS, ROOT, count_macs, format_count
from models.ddpm.blocks import AttnBlock
from models.ddpm.config import PRESETS
from models.ddpm.unet import UNet

# (params, macs_paper) as Torch-Pruning's counter reports them for the DDIM U-Net (the author's log, VainF/Diff-Pruning issue #4).
REFERENCE = {
    "cifar10": (35_746_307, 6_065_456_000),  # 35.7463M, 6.0655G
    "celeba64": (78_700_803, 23_922_959_232),  # 78.701M, 23.923G
    "church256": (113_673_219, 248_691_174_144),  # 113.673M, 248.69G
}


def unet_inputs(cfg, device=None):
    s = cfg.image_size
    return torch.randn(1, cfg.in_channels, s, s, device=device), torch.ones(1, device=device)


def conv_macs(k: int, c_in: int, c_out: int, hw: int) -> int:
    """k*k*C_in*C_out*H*W for the weights plus C_out*H*W for the bias."""
    return k * k * c_in * c_out * hw + c_out * hw


def test_cifar10_reference_counts_on_cpu():
    torch.manual_seed(0)
    cfg = PRESETS["cifar10"]
    report = count_macs(UNet(cfg), unet_inputs(cfg))
    assert (report.params, report.macs_paper) == REFERENCE["cifar10"]
    assert format_count(report.params) == "35.75M"
    assert format_count(report.macs_paper) == "6.07G"
    assert format_count(report.macs_paper, digits=4) == "6.0655G"
    assert report.uncounted == ()


@pytest.mark.parametrize("name", ["celeba64", "church256"])
def test_large_preset_reference_counts_on_meta(name):
    cfg = PRESETS[name]
    with torch.device("meta"):
        report = count_macs(UNet(cfg), unet_inputs(cfg))
    assert (report.params, report.macs_paper) == REFERENCE[name]


def test_meta_and_cpu_reports_agree():
    cfg = PRESETS["tiny"]
    cpu = count_macs(UNet(cfg), unet_inputs(cfg))
    with torch.device("meta"):
        meta = count_macs(UNet(cfg), unet_inputs(cfg))
    assert cpu == meta


def test_totals_are_sums_of_the_breakdowns():
    cfg = PRESETS["tiny"]
    report = count_macs(UNet(cfg), unet_inputs(cfg))
    assert set(report.per_kind) == set(KINDS)
    assert report.macs_paper == sum(report.per_kind[k] for k in PAPER_KINDS)
    assert report.macs_full == sum(report.per_kind.values()) == sum(report.per_module.values())
    assert report.per_kind["matmul"] > 0 and report.per_kind["upsample"] == 0  # F.interpolate is free


class ConvLinearMatmul(nn.Module):
    """Conv2d(3->8, 3x3) on 10x10 -> spatial mean -> Linear(8->5) -> @ a (5, 7) parameter."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)
        self.proj = nn.Parameter(torch.randn(5, 7))  # used functionally: only macs_full sees its matmul

    def forward(self, x):
        h = self.conv(x).mean(dim=(2, 3))  # (1, 8)
        return self.fc(h) @ self.proj  # (1, 5) @ (5, 7)


def test_hand_counted_conv_linear_matmul():
    report = count_macs(ConvLinearMatmul(), torch.randn(1, 3, 10, 10))
    conv = 3 * 3 * 3 * 8 * 100 + 8 * 100  # 22,400
    fc = 8 * 5 + 5  # 45; the F.linear inside nn.Linear is not counted a second time
    matmul = 5 * 7  # 35
    assert report.params == (3 * 8 * 9 + 8) + (8 * 5 + 5) + 5 * 7
    assert report.per_module == {"conv": conv, "fc": fc, ROOT: matmul}
    assert report.macs_paper == conv + fc
    assert report.macs_full == conv + fc + matmul
    assert report.uncounted == (f"{ROOT} (ConvLinearMatmul, 35 params)",)


@pytest.mark.parametrize("num_heads", [1, 4])
def test_attention_matmuls_in_macs_full(num_heads):
    # N = 8*8 = 64 positions, q/k width 32, v width 48: q^T k costs N*N*32, attn @ v costs N*N*48,
    # whatever the split into heads (nh * N * N * d with d = width / nh).
    block = AttnBlock(ch=64, qk_ch=32, v_ch=48, num_heads=num_heads, scale=1.0, norm_groups=8, norm_eps=1e-6)
    report = count_macs(block, torch.randn(1, 64, 8, 8))
    n = 64
    assert report.per_kind["matmul"] == n * n * 32 + n * n * 48
    assert report.per_module[ROOT] == n * n * (32 + 48)
    assert report.macs_full - report.macs_paper == n * n * (32 + 48)
    assert report.per_module["q"] == conv_macs(1, 64, 32, n)
    assert report.per_module["norm"] == 2 * 64 * n


class SDPA(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def test_scaled_dot_product_attention():
    q, k, v = torch.randn(1, 2, 10, 4), torch.randn(1, 2, 12, 4), torch.randn(1, 2, 12, 6)
    report = count_macs(SDPA(), (q, k, v))
    assert report.macs_full == 2 * 10 * 12 * 4 + 2 * 10 * 12 * 6
    assert report.macs_paper == 0


class NormAndEmbedding(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(4)
        self.emb = nn.Embedding(10, 4)

    def forward(self, x):
        return self.bn(x) + self.emb.weight[0][:, None, None]


def test_batchnorm_counted_and_unknown_parameterised_modules_listed():
    model = NormAndEmbedding().train()
    report = count_macs(model, torch.randn(1, 4, 5, 5))
    assert report.per_module == {"bn": 2 * 4 * 25}
    assert report.params == 8 + 40
    assert report.uncounted == ("emb (Embedding, 40 params)",)
    assert model.training and model.bn.training  # flags restored after the eval-mode pass
    assert "not counted: emb" in report.summary()


def test_batch_larger_than_one_is_rejected():
    with pytest.raises(ValueError, match="batch size 2"):
        count_macs(nn.Linear(3, 3), torch.randn(2, 3))


def test_non_uniform_width_table_matches_hand_counts():
    # A "pruned" tiny U-Net (ch 32, ch_mult (1, 2, 2), one ResBlock per level, attention at 16x16, 8 GN groups)
    # whose hidden widths all differ from the dense ones.
    widths = {"temb.dense.0": 72, "temb.dense.1": 100, "down.0.block.0.conv1": 24, "down.1.block.0.conv1": 40,
              "down.1.attn.0.q": 20, "down.1.attn.0.k": 20, "down.1.attn.0.v": 44, "mid.block_1.conv1": 56,
              "up.0.block.1.conv1": 16}
    cfg = PRESETS["tiny"].with_widths(widths)
    model = UNet(cfg)
    assert {k: model.widths()[k] for k in widths if not k.endswith("heads")} == widths
    m = count_macs(model, unet_inputs(cfg)).per_module
    hw32, hw16, hw8 = 32 * 32, 16 * 16, 8 * 8
    assert m["temb.dense.0"] == 32 * 72 + 72
    assert m["temb.dense.1"] == 72 * 100 + 100
    assert m["conv_in"] == conv_macs(3, 3, 32, hw32)
    assert m["down.0.block.0.conv1"] == conv_macs(3, 32, 24, hw32)
    assert m["down.0.block.0.conv2"] == conv_macs(3, 24, 32, hw32)
    assert m["down.0.block.0.temb_proj"] == 100 * 24 + 24
    assert m["down.0.downsample.conv"] == conv_macs(3, 32, 32, hw16)  # stride 2 on the padded 33x33
    assert m["down.1.block.0.conv1"] == conv_macs(3, 32, 40, hw16)
    assert m["down.1.block.0.norm2"] == 2 * 40 * hw16
    assert m["down.1.block.0.nin_shortcut"] == conv_macs(1, 32, 64, hw16)
    assert m["down.1.attn.0.q"] == conv_macs(1, 64, 20, hw16)
    assert m["down.1.attn.0.v"] == conv_macs(1, 64, 44, hw16)
    assert m["down.1.attn.0.proj_out"] == conv_macs(1, 44, 64, hw16)
    assert m["down.1.attn.0"] == hw16 * hw16 * (20 + 44)  # q^T k and attn @ v
    assert m["mid.block_1.conv1"] == conv_macs(3, 64, 56, hw8)
    assert m["up.0.block.1.conv1"] == conv_macs(3, 32 + 32, 16, hw32)  # cat([h, conv_in output])
    assert m["up.0.block.1.conv2"] == conv_macs(3, 16, 32, hw32)


def test_format_count():
    assert format_count(999) == "999"
    assert format_count(1500) == "1.50K"
    assert format_count(19_851_200) == "19.85M"
    assert format_count(3_392_800_000) == "3.39G"
    assert format_count(248_691_174_144, digits=2) == "248.69G"
