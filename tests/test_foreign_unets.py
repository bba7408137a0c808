"""Pruning networks this project did not write: replicas of the DDIM codebase's ``Model`` (single-head ``bmm``
attention without any head attribute, ``nin_shortcut`` chosen by ``in_channels != out_channels`` at run time,
``temb_proj``) and of diffusers-style blocks (``Attention.heads``, Linear q/k/v on (B, N, C) tokens, SDPA,
``Downsample2D`` asserting ``x.shape[1] == self.channels``). Plus the guarantees that make pruning safe on any
network: heads read from the trace, attributes updated by rule or caught by the re-trace, all-or-nothing.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pruning import METHODS, ChannelPruning, prune
from pruning.trace.grouping import analyze
from tests.replicas.ddim import Model
from tests.replicas.diffusers_style import TinyUNet2D


def ddim_model(groups: int = 8) -> Model:
    return Model(ch=32, out_ch=3, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
                 in_channels=3, resolution=8, groups=groups)


MODELS = {"ddim": ddim_model, "diffusers": lambda **kw: TinyUNet2D(**kw)}
EXAMPLE = (torch.randn(1, 3, 8, 8), torch.ones(1))


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("method", METHODS)
def test_every_method_prunes_a_foreign_unet(name, method):
    torch.manual_seed(0)
    model = MODELS[name]()
    data = torch.rand(4, 3, 8, 8) * 2 - 1
    spec = ChannelPruning.applicable(method=method, ratio=0.3, max_timesteps=3, micro_batch=4, batch_size=4)
    model, report = prune(model, EXAMPLE, spec, data, progress=False)
    assert report.params_after < 0.7 * report.params_before
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([1.0, 50.0])
    y = model(x, t)
    assert y.shape == (2, 3, 8, 8)
    y.square().mean().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())


def _kill_channels(model: nn.Module, ignored=()) -> dict[int, set[int]]:
    """Make a third of every prunable group's channels provably dead: their producers' rows and biases, their
    GroupNorm affine entries and every consumer's input columns are zero, so the channel carries zero and is
    read by nobody. Spread equally over heads/blocks. Returns {group index: dead channels}."""
    groups = analyze(model, EXAMPLE, attn_grouping="joint", ignored=ignored).groups
    dead = {}
    with torch.no_grad():
        for i, g in enumerate(groups):
            if not g.prunable:
                continue
            size = g.size // g.blocks
            per_block = size - int(size * 0.7)  # at least what ratio 0.3 removes from each block
            chans = [b * size + j for b in range(g.blocks) for j in range(per_block)]
            dead[i] = set(chans)
            for m in g.members:
                module = model.get_submodule(m.module)
                idx = [m.offset + c for c in chans]
                if m.role in ("out", "norm"):
                    if module.weight is not None:
                        module.weight[idx] = 0
                    if module.bias is not None:
                        module.bias[idx] = 0
                else:
                    module.weight[:, idx] = 0
    return dead


@pytest.mark.parametrize("name", sorted(MODELS))
def test_removing_dead_channels_leaves_the_output_unchanged(name):
    torch.manual_seed(1)
    # Per-channel GroupNorms: removing a channel then changes no other channel's statistics.
    model = MODELS[name](groups=0).eval()
    # The DDIM attention computes its softmax temperature from the current width (int(c) ** -0.5), so its
    # q/k/v space cannot lose channels without changing the output: keep it whole there.
    ignored = [n for n, _ in model.named_modules() if n.endswith((".q", ".k", ".v"))] if name == "ddim" else []
    dead = _kill_channels(model, ignored)
    assert len(dead) >= 8
    x, t = torch.randn(3, 3, 8, 8), torch.tensor([0.0, 300.0, 999.0])
    with torch.no_grad():
        before = model(x, t)
    model, report = prune(model, EXAMPLE, method="magnitude", ratio=0.3, ignored=ignored, progress=False)
    assert report.params_after < report.params_before
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), before, rtol=1e-5, atol=1e-5)


def test_bmm_attention_without_a_head_attribute_is_one_head():
    a = analyze(ddim_model(), EXAMPLE, attn_grouping="split")
    qk = next(g for g in a.groups if any(m.module == "mid.attn_1.q" and m.role == "out" for m in g.members))
    assert qk.heads == [("mid.attn_1", "qk", 1)] and qk.blocks == 1  # one head: no constraint, no attribute read
    joint = analyze(ddim_model(), EXAMPLE, attn_grouping="joint")
    g = next(g for g in joint.groups if any(m.module == "mid.attn_1.q" and m.role == "out" for m in g.members))
    assert {(m.module, m.role) for m in g.members} == {("mid.attn_1.q", "out"), ("mid.attn_1.k", "out"),
                                                       ("mid.attn_1.v", "out"), ("mid.attn_1.proj_out", "in")}


def test_whole_heads_update_the_heads_attribute_and_width_attributes():
    torch.manual_seed(2)
    model = TinyUNet2D(heads=4)
    model, report = prune(model, EXAMPLE, method="magnitude", ratio=0.5, head_mode="heads", progress=False)
    for attn in (model.down1_attn, model.mid_attn, model.up1_attn):
        assert attn.heads == 2  # 4 heads, half removed whole; head width (8) unchanged
        assert attn.to_q.out_features == attn.to_v.out_features == attn.inner_dim == 16
    assert model.downsample.channels == model.downsample.conv.in_channels  # the asserted attribute follows
    assert model.upsample.channels == model.upsample.conv.in_channels
    assert ("mid_attn", "heads", 4, 2) in report.attributes
    model(torch.randn(2, 3, 8, 8), torch.tensor([3.0, 9.0]))


class SpatialMix(nn.Module):
    """h.flatten(2) @ M with a constant spatial matrix: a contraction over positions, not channels."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 3, 1)
        self.register_buffer("mix", torch.eye(16) * 0.5 + 0.5 / 16)

    def forward(self, x):
        h = self.conv(x)
        h = (h.flatten(2) @ self.mix).reshape(h.shape)
        return self.out(h)


def test_a_plain_spatial_matmul_prunes():
    model, report = prune(SpatialMix(), (torch.randn(1, 3, 4, 4),), method="random", ratio=0.5, progress=False)
    assert model.conv.out_channels == 4 and model.out.in_channels == 4
    assert model(torch.randn(2, 3, 4, 4)).shape == (2, 3, 4, 4)


class ReadsWidth(nn.Module):
    """A forward that checks a width attribute that is not in surgery's registry."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 3, 1)
        self.expected_width = 8

    def forward(self, x):
        h = self.conv(x)
        if h.shape[1] != self.expected_width:
            raise RuntimeError(f"expected {self.expected_width} channels")
        return self.out(h)


def _snapshot(model: nn.Module) -> dict:
    state = {k: (id(v), v.clone()) for k, v in model.state_dict(keep_vars=True).items()}
    attrs = {name: {k: v for k, v in vars(m).items() if not k.startswith("_")} for name, m in model.named_modules()}
    grads = {k: p.grad for k, p in model.named_parameters()}
    return {"state": state, "attrs": attrs, "grads": grads}


def _assert_unchanged(model: nn.Module, snap: dict) -> None:
    now = {k: v for k, v in model.state_dict(keep_vars=True).items()}
    assert now.keys() == snap["state"].keys()
    for k, (ident, value) in snap["state"].items():
        assert id(now[k]) == ident and torch.allclose(now[k], value, rtol=0, atol=0, equal_nan=True), k
    assert {name: {k: v for k, v in vars(m).items() if not k.startswith("_")}
            for name, m in model.named_modules()} == snap["attrs"]
    assert {k: p.grad for k, p in model.named_parameters()} == snap["grads"]


def test_a_stale_attribute_is_caught_and_the_model_is_left_as_it_was():
    model = ReadsWidth()
    snap = _snapshot(model)
    with pytest.raises(ValueError, match=r"module '<model>' failed: RuntimeError: expected 8 channels; its "
                                         r"attribute\(s\) expected_width=8 still equal a dense width"):
        prune(model, (torch.randn(1, 3, 4, 4),), method="random", ratio=0.5, progress=False)
    _assert_unchanged(model, snap)


def test_a_group_that_would_empty_half_way_leaves_the_model_as_it_was():
    torch.manual_seed(3)
    model = ddim_model()
    snap = _snapshot(model)
    # At ratio 0.9, the GroupNorm(8) groups of 32 channels lose 3 of 4 per block; the joint attention space of 64
    # (no blocks) keeps 7; the time embedding's 128 keep 13 ... until a group with 8 blocks of 4 would need to
    # remove 28 // 8 = 3 of 4: fine; with ratio 0.99 some group would empty after others were already cut.
    with pytest.raises(ValueError, match="leaves none"):
        prune(model, EXAMPLE, method="magnitude", ratio=0.99, progress=False)
    _assert_unchanged(model, snap)


def test_a_non_finite_loss_names_the_timestep_and_prunes_nothing():
    model = ddim_model()
    with torch.no_grad():  # a nan weight is refused before any work, naming it (pruning/inputs.py) ...
        model.conv_out.bias[0] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite.*'conv_out.bias'"):
        prune(model, EXAMPLE, method="diff-pruning", data=torch.zeros(2, 3, 8, 8), max_timesteps=2, progress=False)
    with torch.no_grad():  # ... finite weights whose loss overflows reach the gradient pass, which names t
        model.conv_out.bias[0] = 3e38
    snap = _snapshot(model)
    with pytest.raises(FloatingPointError, match=r"t=0"):
        prune(model, EXAMPLE, method="diff-pruning", data=torch.zeros(2, 3, 8, 8), max_timesteps=2, progress=False)
    _assert_unchanged(model, snap)
