"""Tests of pruning/trace/ (tracer.py + grouping.py): the traced coupling groups against hand-written
expectations, on our U-Net and on an independently written token-attention / FiLM U-Net; the CIFAR-10
U-Net's groups and the two GroupNorms the paper's code regroups. (tests/test_tracer_errors.py: what the
tracer refuses or protects, and the gaps found in review.)
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.ddpm.config import ModelConfig, preset
from models.ddpm.unet import UNet
from pruning.trace.grouping import analyze, build_groups
from pruning.groups import describe


def m(module: str, role: str, offset: int = 0) -> tuple[str, str, int]:
    return (module, role, offset)


def G(size, members, blocks=1, heads=(), protected=""):
    """An expected group: members as (module, role, offset); ``protected`` a substring of the reason."""
    return dict(size=size, members=set(members), blocks=blocks, heads=set(heads), protected=protected)


def assert_groups(groups, expected):
    assert len(groups) == len(expected), describe(groups)
    for i, (g, e) in enumerate(zip(groups, expected)):
        where = f"group {i} ({g.name}):\n{describe([g])}"
        members = [(x.module, x.role, x.offset) for x in g.members]
        assert len(members) == len(set(members)), where
        assert set(members) == e["members"], where
        assert (g.size, g.blocks, set(g.heads)) == (e["size"], e["blocks"], e["heads"]), where
        assert (e["protected"] in g.protected) if e["protected"] else g.prunable, where


def resblock_mid(path, size, blocks):
    """{conv1 out, temb_proj out, norm2, conv2 in}: the channels between a ResBlock's two convs."""
    return G(size, [m(f"{path}.conv1", "out"), m(f"{path}.temb_proj", "out"), m(f"{path}.norm2", "norm"),
                    m(f"{path}.conv2", "in")], blocks=blocks)


def consumer(path, offset=0, shortcut=True):
    """The input side of a ResBlock: norm1, conv1 in (and the 1x1 shortcut's in)."""
    out = [m(f"{path}.norm1", "norm", offset), m(f"{path}.conv1", "in", offset)]
    return out + ([m(f"{path}.nin_shortcut", "in", offset)] if shortcut else [])


def attn_stream(path):
    """An attention block on the residual stream: norm, q/k/v inputs, proj_out output."""
    return [m(f"{path}.norm", "norm"), m(f"{path}.q", "in"), m(f"{path}.k", "in"), m(f"{path}.v", "in"),
            m(f"{path}.proj_out", "out")]


def attn_heads(path, qk, v, heads):
    """q, k coupled through their dot product; v with proj_out's input; never the three together."""
    return [G(qk, [m(f"{path}.q", "out"), m(f"{path}.k", "out")], blocks=heads, heads=[(path, "qk", heads)]),
            G(v, [m(f"{path}.v", "out"), m(f"{path}.proj_out", "in")], blocks=heads, heads=[(path, "v", heads)])]


# ---------------------------------------------------------------------------------------------------
# Our U-Net, small: levels of 8 and 16 channels (16x16, 8x8), attention with 2 heads at 8x8, GroupNorm(2)

SMALL = ModelConfig(image_size=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0,
                    norm_groups=2, num_heads=2)


@pytest.fixture(scope="module")
def small_analysis():
    torch.manual_seed(0)
    return analyze(UNet(SMALL), (torch.randn(1, 3, 16, 16), torch.tensor([10])))


def test_small_unet_groups_equal_hand_written_expectation(small_analysis):
    # Skips pushed by the encoder: conv_in (8), down.0.block.0 (8), down.0.downsample (8), down.1.attn.0 (16);
    # popped by up.1.block.0, up.1.block.1, up.0.block.0, up.0.block.1. Residual ResBlocks without a shortcut
    # (down.0.block.0, mid.*) keep their input's channel space.
    temb_users = ["down.0.block.0", "down.1.block.0", "mid.block_1", "mid.block_2",
                  "up.1.block.0", "up.1.block.1", "up.0.block.0", "up.0.block.1"]
    expected = [
        G(3, [m("conv_in", "in")], protected="network input"),
        G(8, [m("temb.dense.0", "in")], protected="no prunable producer"),  # the sinusoidal embedding
        G(32, [m("temb.dense.0", "out"), m("temb.dense.1", "in")]),
        G(32, [m("temb.dense.1", "out")] + [m(f"{p}.temb_proj", "in") for p in temb_users]),
        # Level-0 residual stream: conv_in, down.0.block.0, and its two decoder skips (at offsets 16 and 8).
        # up.0.block.0.norm1 has 24 = 16 + 8 channels in blocks of 12: it straddles (regrouped).
        G(8, [m("conv_in", "out"), *consumer("down.0.block.0", shortcut=False), m("down.0.block.0.conv2", "out"),
              m("down.0.downsample.conv", "in"), *consumer("up.0.block.0", 16), *consumer("up.0.block.1", 8)],
          blocks=2),
        resblock_mid("down.0.block.0", 8, 2),
        G(8, [m("down.0.downsample.conv", "out"), *consumer("down.1.block.0"), *consumer("up.1.block.1", 16)],
          blocks=2),
        resblock_mid("down.1.block.0", 16, 2),
        # Level-1 stream through down.1.attn.0 and the middle, into up.1.block.0 TWICE: cat([mid output,
        # down.1.attn.0 output]) are the same group, at offsets 0 and 16 (the paper's concat quirk).
        G(16, [m("down.1.block.0.conv2", "out"), m("down.1.block.0.nin_shortcut", "out"), *attn_stream("down.1.attn.0"),
               *consumer("mid.block_1", shortcut=False), m("mid.block_1.conv2", "out"), *attn_stream("mid.attn_1"),
               *consumer("mid.block_2", shortcut=False), m("mid.block_2.conv2", "out"),
               *consumer("up.1.block.0", 0), *consumer("up.1.block.0", 16)], blocks=2),
        *attn_heads("down.1.attn.0", 16, 16, 2),
        resblock_mid("mid.block_1", 16, 2),
        *attn_heads("mid.attn_1", 16, 16, 2),
        resblock_mid("mid.block_2", 16, 2),
        resblock_mid("up.1.block.0", 16, 2),
        G(16, [m("up.1.block.0.conv2", "out"), m("up.1.block.0.nin_shortcut", "out"), *attn_stream("up.1.attn.0"),
               *consumer("up.1.block.1", 0)], blocks=2),
        *attn_heads("up.1.attn.0", 16, 16, 2),
        resblock_mid("up.1.block.1", 16, 2),
        G(16, [m("up.1.block.1.conv2", "out"), m("up.1.block.1.nin_shortcut", "out"), *attn_stream("up.1.attn.1"),
               m("up.1.upsample.conv", "in")], blocks=2),
        *attn_heads("up.1.attn.1", 16, 16, 2),
        # Its only norm (24 = 16 + 8 in blocks of 12) straddles: removal in multiples of 2 keeps 24 - n even.
        G(16, [m("up.1.upsample.conv", "out"), *consumer("up.0.block.0", 0)], blocks=2),
        resblock_mid("up.0.block.0", 8, 2),
        # up.0.block.1.norm1 normalises 8 (this group) + 8 (conv_in's): each part loses a multiple of 2.
        G(8, [m("up.0.block.0.conv2", "out"), m("up.0.block.0.nin_shortcut", "out"), *consumer("up.0.block.1", 0)],
          blocks=2),
        resblock_mid("up.0.block.1", 8, 2),
        G(8, [m("up.0.block.1.conv2", "out"), m("up.0.block.1.nin_shortcut", "out"), m("norm_out", "norm"),
              m("conv_out", "in")], blocks=2),
        G(3, [m("conv_out", "out")], protected="network output"),
    ]
    assert_groups(small_analysis.groups, expected)
    assert {r.module for r in small_analysis.regrouped_norms} == {"up.1.block.1.norm1", "up.0.block.0.norm1"}
    regrouped = {r.module: r for r in small_analysis.regrouped_norms}["up.0.block.0.norm1"]
    assert (regrouped.num_groups, regrouped.channels, regrouped.parts) == (2, 24, ((0, 16), (16, 8)))


def test_block_constraints_keep_every_groupnorm_valid(small_analysis):
    """Any removal the groups allow (the same count from each block) leaves every GroupNorm's channel
    count divisible by its num_groups, including the regrouped and the concatenated ones."""
    groups, layers = small_analysis.groups, small_analysis.trace.layers
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        widths: dict[str, int] = {}
        for g in groups:
            per_block = int(torch.randint(0, g.size // g.blocks, (), generator=generator)) if g.prunable else 0
            for x in g.members:
                if x.role == "norm":
                    widths[x.module] = widths.get(x.module, 0) + g.size - per_block * g.blocks
        assert len(widths) == 21  # 8 ResBlocks x 2 + 4 attention blocks + norm_out
        for name, width in widths.items():
            assert width % layers[name].num_groups == 0, (name, width)


def test_groups_do_not_depend_on_batch_size_or_timestep_shape(small_analysis):
    torch.manual_seed(0)
    groups = build_groups(UNet(SMALL), (torch.randn(3, 3, 16, 16), torch.tensor(7.5)))
    assert describe(groups) == describe(small_analysis.groups)


def test_describe_lists_every_group_with_member_ranges(small_analysis):
    groups = small_analysis.groups
    text = describe(groups)
    headers = [line for line in text.splitlines() if line.startswith("group ")]
    assert len(headers) == len(groups)
    assert headers[0].startswith("group 0: conv_in") and "PROTECTED: network input" in headers[0]
    assert "heads: down.1.attn.0.qk" in text and "2 blocks of 8" in text
    # A consumer of cat([h, skip]) of one group is listed at both offsets.
    assert "up.1.block.0.norm1" in text
    assert any("up.1.block.0.norm1" in line and "[0:16]" in line for line in text.splitlines())
    assert any("up.1.block.0.norm1" in line and "[16:32]" in line for line in text.splitlines())
    assert sum(1 for line in text.splitlines() if line.startswith("    ")) == sum(len(g.members) for g in groups)


def test_ignored_layers_and_root_types():
    torch.manual_seed(0)
    model, inputs = UNet(SMALL), (torch.randn(1, 3, 16, 16), torch.tensor([3]))
    groups = build_groups(model, inputs, ignored=["up.0.block.1"])  # a block: all its layers' outputs
    by_name = {g.name: g for g in groups}
    assert "ignored layer up.0.block.1.conv2" in by_name["up.0.block.1.conv2"].protected
    assert "ignored layer up.0.block.1.conv1" in by_name["up.0.block.1.conv1"].protected
    assert by_name["up.0.block.0.conv2"].prunable  # only up.0.block.1's *input* side: still prunable
    groups = build_groups(model, inputs, root_types=(nn.Conv2d,))
    assert "no producer among root types (Conv2d)" in {g.name: g for g in groups}["temb.dense.1"].protected
    with pytest.raises(ValueError, match="nosuch"):
        build_groups(model, inputs, ignored=["nosuch"])


# ---------------------------------------------------------------------------------------------------
# An independently written U-Net: token attention with nn.Linear q/k/v and view/permute heads, FiLM
# (scale-and-shift) time conditioning split by chunk, avg-pool down, interpolate up, a skip concatenated twice


def sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    freqs = torch.exp(-math.log(1e4) * torch.arange(dim // 2) / (dim // 2))
    angles = t[:, None].float() * freqs  # (B, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class FiLMBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(4, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb, 2 * cout)
        self.norm2 = nn.GroupNorm(4, cout, affine=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb).chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale[:, :, None, None]) + shift[..., None, None]
        h = self.conv2(F.dropout(F.silu(h), 0.1, self.training))
        return self.skip(x) + h


class TokenAttention(nn.Module):
    def __init__(self, ch: int, qk: int, v: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(4, ch)
        self.to_q, self.to_k, self.to_v = nn.Linear(ch, qk), nn.Linear(ch, qk), nn.Linear(ch, v)
        self.to_out = nn.Linear(v, ch)

    def forward(self, x):
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, N, C)

        def split_heads(y):
            return y.view(B, H * W, self.heads, -1).permute(0, 2, 1, 3)  # (B, nh, N, d)

        q, k, v = split_heads(self.to_q(tokens)), split_heads(self.to_k(tokens)), split_heads(self.to_v(tokens))
        w = F.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1)  # (B, nh, N, N)
        out = (w @ v).permute(0, 2, 1, 3).reshape(B, H * W, -1)  # (B, N, nh * dv)
        return x + self.to_out(out).transpose(1, 2).reshape(B, C, H, W)


class TokenUNet(nn.Module):
    def __init__(self, c: int = 8):
        super().__init__()
        self.time = nn.Sequential(nn.Linear(16, 32), nn.SiLU(), nn.Linear(32, 32))
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.enc = FiLMBlock(c, c, 32)
        self.down = nn.Conv2d(c, 2 * c, 1)
        self.mid = FiLMBlock(2 * c, 2 * c, 32)
        self.attn = TokenAttention(2 * c, qk=12, v=8, heads=2)
        self.dec = FiLMBlock(4 * c, c, 32)
        self.out_norm = nn.GroupNorm(4, c)
        self.out = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x, t):
        emb = F.silu(self.time(sinusoid(t, 16)))
        h1 = self.enc(self.stem(x), emb)
        h = self.attn(self.mid(self.down(F.avg_pool2d(h1, 2)), emb))
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        h = self.dec(torch.cat((h, h1, h1), 1), emb)  # the same skip tensor twice
        return self.out(F.silu(self.out_norm(h)))


def film_mid(path, c):
    """conv1 out, both halves of the FiLM Linear (scale and shift), conv2 in; the affine-free norm2 is a member
    too (no weights to score, but surgery must update its num_channels), with its 4 groups."""
    return G(c, [m(f"{path}.conv1", "out"), m(f"{path}.film", "out", 0), m(f"{path}.film", "out", c),
                 m(f"{path}.norm2", "norm"), m(f"{path}.conv2", "in")], blocks=4)


def test_token_attention_film_unet_groups():
    torch.manual_seed(0)
    a = analyze(TokenUNet(), (torch.randn(2, 3, 8, 8), torch.tensor([1, 500])))
    expected = [
        G(3, [m("stem", "in")], protected="network input"),
        G(16, [m("time.0", "in")], protected="no prunable producer"),
        G(32, [m("time.0", "out"), m("time.2", "in")]),
        G(32, [m("time.2", "out"), m("enc.film", "in"), m("mid.film", "in"), m("dec.film", "in")]),
        # stem -> enc (identity skip) -> avg-pool -> down, and the skip h1 twice in dec's input (offsets 16, 24).
        G(8, [m("stem", "out"), m("enc.norm1", "norm"), m("enc.conv1", "in"), m("enc.conv2", "out"), m("down", "in"),
              m("dec.norm1", "norm", 16), m("dec.conv1", "in", 16), m("dec.skip", "in", 16),
              m("dec.norm1", "norm", 24), m("dec.conv1", "in", 24), m("dec.skip", "in", 24)], blocks=4),
        film_mid("enc", 8),
        # down -> mid (identity skip) -> attention residual -> interpolate -> dec at offset 0.
        G(16, [m("down", "out"), m("mid.norm1", "norm"), m("mid.conv1", "in"), m("mid.conv2", "out"),
               m("attn.norm", "norm"), m("attn.to_q", "in"), m("attn.to_k", "in"), m("attn.to_v", "in"),
               m("attn.to_out", "out"), m("dec.norm1", "norm", 0), m("dec.conv1", "in", 0), m("dec.skip", "in", 0)],
          blocks=4),
        film_mid("mid", 16),
        G(12, [m("attn.to_q", "out"), m("attn.to_k", "out")], blocks=2, heads=[("attn", "qk", 2)]),
        G(8, [m("attn.to_v", "out"), m("attn.to_out", "in")], blocks=2, heads=[("attn", "v", 2)]),
        film_mid("dec", 8),
        G(8, [m("dec.conv2", "out"), m("dec.skip", "out"), m("out_norm", "norm"), m("out", "in")], blocks=4),
        G(3, [m("out", "out")], protected="network output"),
    ]
    assert_groups(a.groups, expected)
    assert a.regrouped_norms == []  # dec.norm1: 32 channels in 4 groups of 8 = 16 + 8 + 8, all aligned


# ---------------------------------------------------------------------------------------------------
# The CIFAR-10 U-Net (35.7M parameters)


def test_cifar10_groups_and_regrouped_norms():
    torch.manual_seed(0)
    model = UNet(preset("cifar10"))
    a = analyze(model, (torch.randn(1, 3, 32, 32), torch.tensor([500])))
    groups = a.groups
    # 40 groups with a GroupNorm + temb.dense.{0,1} + 2 upsample-feeding groups = the paper's 44
    # non-attention groups; attention gives 6 q/k + 6 v groups (the paper's library: 6 merged q/k/v groups);
    # plus 3 protected: the image input, the sinusoidal embedding, the eps output.
    assert len(groups) == 59
    assert [(g.name, g.protected.split(" (")[0]) for g in groups if not g.prunable] == [
        ("conv_in", "network input"), ("temb.dense.0", "no prunable producer"), ("conv_out", "network output")]
    # Every group with a GroupNorm has 32 blocks, as the paper's ch_groups: a norm inside one group gives its
    # 32 groups; a norm over cat([h, skip]) of two groups needs each to lose a multiple of 32.
    assert [g.blocks for g in groups if any(x.role == "norm" for x in g.members)] == [32] * 40
    assert sum(g.blocks > 1 for g in groups) == 40
    assert sum(1 for g in groups if g.heads) == 12
    # Single-head attention: the traced head count is 1, which constrains nothing.
    assert all(g.blocks == 1 and len(g.heads) == 1 and g.heads[0][2] == 1 for g in groups if g.heads)
    # Of the 51 GroupNorms, 2 normalise 384 = 256 + 128 channels in 32 groups of 12: straddled, regrouped.
    assert sum(isinstance(x, nn.GroupNorm) for x in model.modules()) == 51
    assert [(r.module, r.parts) for r in a.regrouped_norms] == [
        ("up.1.block.2.norm1", ((0, 256), (256, 128))), ("up.0.block.0.norm1", ((0, 256), (256, 128)))]
    # conv_out's input channels are prunable; its output is not.
    out_group = next(g for g in groups if any(x.module == "conv_out" and x.role == "in" for x in g.members))
    assert out_group.prunable and out_group.size == 128 and out_group.blocks == 32
