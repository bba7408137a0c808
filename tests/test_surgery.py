"""Tests of pruning/surgery.py: exact function preservation when dead channels are removed (an exact known
answer), offsets after pruning one part of a concat, attention heads, and the pruned U-Net's config + widths +
state-dict round trip (models/checkpoint.py). The selection rules' known answers are in tests/test_select.py.

Groups are built by hand (no tracer).
"""
from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffusion.schedule import DiffusionConfig, Schedule
from models.ddpm.blocks import AttnBlock
from models.ddpm.config import ModelConfig
from models.ddpm.unet import UNet
from pruning.groups import Group, Member
from pruning.importance import accumulate_gradients, diff_pruning_importance, magnitude_importance
from pruning.select import select_local
from pruning.api import prune_local
from pruning.checks import check_consistency, rebuild_check
from pruning.scratch import reinitialize
from pruning.surgery import apply_keeps, finalize, prune_group, update_attributes
from pruning.trace.grouping import analyze


def prune(net, groups, keeps):
    """Cut precomputed keep sets, then record the widths (what pruning.prune does after selection)."""
    apply_keeps(net, groups, keeps)
    return finalize(net)


def prune_sequential(net, groups, importance, ratio, head_mode="channels"):
    """The paper's schedule over hand-built groups, in list order."""
    order = [i for i, g in enumerate(groups) if g.prunable]
    keeps = prune_local(net, groups, order, lambda g: importance(net, g), ratio, head_mode=head_mode)
    finalize(net)
    return keeps

# ---------------------------------------------------------------------------------------------------
# Surgery: exact function preservation


class TwoConv(nn.Module):
    """conv1 (3 -> 6) -> ReLU -> conv2 (6 -> 4): no normalisation between, so a dead channel contributes nothing."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(F.relu(self.conv1(x)))


def _kill(conv: nn.Conv2d, channels: list[int]) -> None:
    """Make output channels dead: zero weight rows and biases (their activations are exactly 0)."""
    with torch.no_grad():
        conv.weight[channels] = 0
        conv.bias[channels] = 0


def test_removing_dead_channels_preserves_the_function():
    torch.manual_seed(0)
    net = TwoConv()
    _kill(net.conv1, [1, 4])
    x = torch.randn(2, 3, 5, 5)
    before = net(x)
    group = Group(size=6, members=[Member("conv1", "out"), Member("conv2", "in")])
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    grad_before = net.conv2.weight.grad.clone()
    net.conv2.bias.requires_grad_(False)
    old_params = {id(p) for p in net.parameters()}
    prune_group(net, group, torch.tensor([0, 2, 3, 5]))
    finalize(net)
    torch.testing.assert_close(net(x), before, rtol=0, atol=1e-6)
    assert (net.conv1.out_channels, net.conv2.in_channels) == (4, 4)
    assert tuple(net.conv1.weight.shape) == (4, 3, 3, 3) and tuple(net.conv2.weight.shape) == (4, 4, 3, 3)
    assert group.size == 4
    # New Parameter objects with the right requires_grad, and grads sliced along with the weights.
    assert not ({id(net.conv1.weight), id(net.conv1.bias), id(net.conv2.weight)} & old_params)
    assert net.conv2.bias.requires_grad is False and net.conv2.weight.requires_grad
    torch.testing.assert_close(net.conv2.weight.grad, grad_before[:, [0, 2, 3, 5]])


def test_ratio_zero_changes_nothing():
    torch.manual_seed(1)
    net = TwoConv()
    state = copy.deepcopy(net.state_dict())
    params = [id(p) for p in net.parameters()]
    group = Group(size=6, members=[Member("conv1", "out"), Member("conv2", "in")])
    prune(net, [group], {0: select_local(torch.rand(6), group, 0.0)})
    assert [id(p) for p in net.parameters()] == params
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


class ConcatNet(nn.Module):
    """y = conv_c(ReLU(cat([conv_a(x), conv_b(x)]))): two groups share conv_c's input dimension."""

    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(3, 4, 3, padding=1)
        self.conv_b = nn.Conv2d(3, 4, 3, padding=1)
        self.conv_c = nn.Conv2d(8, 2, 3, padding=1)

    def forward(self, x):
        return self.conv_c(F.relu(torch.cat([self.conv_a(x), self.conv_b(x)], dim=1)))


DEAD_A, DEAD_B = [0, 2], [1, 3]


def _dead_concat_net() -> tuple[ConcatNet, list[Group]]:
    """ConcatNet with dead channels DEAD_A in conv_a and DEAD_B in conv_b (also zero columns in conv_c, so
    magnitude ranks them lowest), and its two hand-built groups."""
    torch.manual_seed(2)
    net = ConcatNet()
    _kill(net.conv_a, DEAD_A)
    _kill(net.conv_b, DEAD_B)
    with torch.no_grad():
        net.conv_c.weight[:, DEAD_A] = 0
        net.conv_c.weight[:, [4 + c for c in DEAD_B]] = 0
    groups = [Group(size=4, members=[Member("conv_a", "out"), Member("conv_c", "in", 0)]),
              Group(size=4, members=[Member("conv_b", "out"), Member("conv_c", "in", 4)])]
    return net, groups


def test_offsets_follow_when_the_first_concat_part_is_pruned():
    net, groups = _dead_concat_net()
    x = torch.randn(2, 3, 6, 6)
    before, w_c = net(x), net.conv_c.weight.detach().clone()
    scores_b = magnitude_importance(net, groups[1])

    prune_group(net, groups[0], torch.tensor([1, 3]), others=groups)
    assert groups[1].members[1] == Member("conv_c", "in", 2)  # b's part of conv_c's input now starts at 2
    torch.testing.assert_close(magnitude_importance(net, groups[1]), scores_b)  # lazy re-scoring reads b's slice

    prune_group(net, groups[1], torch.tensor([0, 2]), others=groups)
    finalize(net)
    torch.testing.assert_close(net(x), before, rtol=0, atol=1e-6)
    torch.testing.assert_close(net.conv_c.weight, w_c[:, [1, 3, 4, 6]])


def test_sequential_mode_rescoring_on_the_partially_pruned_net():
    net, groups = _dead_concat_net()
    x = torch.randn(2, 3, 6, 6)
    before, w_c = net(x), net.conv_c.weight.detach().clone()
    keeps = prune_sequential(net, groups, magnitude_importance, 0.5)
    assert keeps[0].tolist() == [1, 3] and keeps[1].tolist() == [0, 2]
    assert [m.offset for m in groups[1].members] == [0, 2]
    torch.testing.assert_close(net(x), before, rtol=0, atol=1e-6)
    torch.testing.assert_close(net.conv_c.weight, w_c[:, [1, 3, 4, 6]])


def test_doubled_concat_is_pruned_at_both_offsets():
    class Doubled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_a = nn.Conv2d(3, 4, 1)
            self.conv_b = nn.Conv2d(8, 2, 3, padding=1)

        def forward(self, x):
            a = F.relu(self.conv_a(x))
            return self.conv_b(torch.cat([a, a], dim=1))

    torch.manual_seed(3)
    net = Doubled()
    _kill(net.conv_a, [2])
    x = torch.randn(1, 3, 4, 4)
    before, w_b = net(x), net.conv_b.weight.detach().clone()
    group = Group(size=4, members=[Member("conv_a", "out"), Member("conv_b", "in", 0), Member("conv_b", "in", 4)])
    prune(net, [group], {0: torch.tensor([0, 1, 3])})
    torch.testing.assert_close(net(x), before, rtol=0, atol=1e-6)
    torch.testing.assert_close(net.conv_b.weight, w_b[:, [0, 1, 3, 4, 5, 7]])
    assert net.conv_b.in_channels == 6 and [m.offset for m in group.members] == [0, 0, 3]


# ---------------------------------------------------------------------------------------------------
# Surgery: errors and checks


class ConvGN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.norm = nn.GroupNorm(2, 4)

    def forward(self, x):
        return self.norm(self.conv(x))


def test_groupnorm_width_not_divisible_is_an_error_and_nothing_changes():
    net = ConvGN()
    group = Group(size=4, members=[Member("conv", "out"), Member("norm", "norm")])  # blocks deliberately 1
    with pytest.raises(ValueError, match=r"norm: GroupNorm would have 3 channels"):
        prune_group(net, group, torch.tensor([0, 1, 3]))
    assert net.conv.weight.shape[0] == 4 and net.norm.num_channels == 4 and group.size == 4


def test_unequal_block_removal_is_an_error():
    net = ConvGN()
    group = Group(size=4, members=[Member("conv", "out"), Member("norm", "norm")], blocks=2)
    with pytest.raises(ValueError, match="same number"):
        prune_group(net, group, torch.tensor([0, 1]))  # block 0 keeps 2, block 1 keeps 0


def test_check_consistency_names_the_broken_module():
    net = ConvGN()
    check_consistency(net)
    net.conv.out_channels = 5
    with pytest.raises(ValueError, match=r"conv: weight"):
        check_consistency(net)


def test_reinitialize_is_deterministic_under_a_seed():
    a, b = TwoConv(), TwoConv()
    b.load_state_dict(a.state_dict())
    original = a.conv1.weight.detach().clone()
    rng = torch.get_rng_state()
    reinitialize(a, seed=5)
    reinitialize(b, seed=5)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is untouched
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.conv1.weight, original)


# ---------------------------------------------------------------------------------------------------
# Attention heads


class AttnNet(nn.Module):
    def __init__(self, num_heads: int = 4):
        super().__init__()
        self.attn = AttnBlock(ch=8, qk_ch=8, v_ch=8, num_heads=num_heads, scale=(8 // num_heads) ** -0.5,
                              norm_groups=2, norm_eps=1e-6)

    def forward(self, x):
        return self.attn(x)


def _prune_traced(net, inputs, importance, ratio, *, head_mode="channels", attn_scale=None):
    """Trace, then the paper's schedule over the traced groups, then the attribute and config bookkeeping."""
    analysis = analyze(net, inputs, attn_grouping="split")
    groups = analysis.groups
    order = [i for i, g in enumerate(groups) if g.prunable]
    keeps = prune_local(net, groups, order, lambda g: importance(net, g), ratio, head_mode=head_mode)
    update_attributes(net, analysis, {i: k.numpy() for i, k in keeps.items()}, attn_scale=attn_scale)
    finalize(net)
    by_producer = {m.module: keeps.get(i) for i, g in enumerate(groups) for m in g.members if m.role == "out"}
    return groups, by_producer


def test_removing_dead_heads_preserves_the_function():
    torch.manual_seed(4)
    net = AttnNet()
    dead = [2, 3, 6, 7]  # heads 1 and 3 (head width 2)
    with torch.no_grad():
        for conv in (net.attn.v,):
            conv.weight[dead] = 0
            conv.bias[dead] = 0
        net.attn.proj_out.weight[:, dead] = 0
        for conv in (net.attn.q, net.attn.k):  # small q/k so these heads also rank lowest on magnitude
            conv.weight[dead] *= 0.01
    x = torch.randn(2, 8, 3, 3)
    before = net(x)
    groups, keeps = _prune_traced(net, (x,), magnitude_importance, 0.5, head_mode="heads", attn_scale="pruned")
    assert keeps["attn.q"].tolist() == keeps["attn.v"].tolist() == [0, 1, 4, 5]
    assert net.attn.num_heads == 2 and net.attn.scale == 2 ** -0.5  # head width unchanged
    heads = sorted(g.heads[0] for g in groups if g.heads)
    assert heads == [("attn", "qk", 2), ("attn", "v", 2)]  # the groups' traced head counts follow the surgery
    torch.testing.assert_close(net(x), before, rtol=0, atol=1e-6)


def test_channel_mode_updates_the_attention_scale():
    torch.manual_seed(5)
    for mode, expected in (("pruned", (4 // 4) ** -0.5), ("dense", 2 ** -0.5)):
        net = AttnNet()
        _prune_traced(net, (torch.randn(1, 8, 2, 2),), lambda m, g: torch.rand(g.size), 0.5, attn_scale=mode)
        assert net.attn.num_heads == 4 and net.attn.q.out_channels == 4
        assert net.attn.scale == pytest.approx(expected)
        net(torch.randn(1, 8, 2, 2))  # still runs


# ---------------------------------------------------------------------------------------------------
# The U-Net: pruned model = config + widths + state dict

TINY = dict(image_size=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), norm_groups=2, dropout=0.0)


@pytest.mark.parametrize("attn_scale", ["pruned", "dense"])
def test_pruned_unet_round_trips_through_config_and_state_dict(tmp_path, attn_scale):
    torch.manual_seed(6)
    model = UNet(ModelConfig(**TINY, attn_scale=attn_scale))
    schedule = Schedule(DiffusionConfig(num_timesteps=20))
    report = accumulate_gradients(model, schedule, torch.randn(2, 3, 8, 8), thr=0.05, micro_batch=1, max_timesteps=2)
    assert report.kept == [0, 1]
    example = (torch.randn(1, 3, 8, 8), torch.ones(1))
    _, keeps = _prune_traced(model, example, functools.partial(diff_pruning_importance), 0.3)
    assert keeps["down.0.block.0.conv1"].numel() == 6  # 8 - int(8 * 0.7) = 3 -> 3 // 2 = 1 per GN block
    assert keeps["mid.attn_1.q"].numel() == 11  # 16 - int(16 * 0.7) = 5
    widths = model.config.width_table
    assert widths["down.0.block.0.conv1"] == 6 and widths["mid.attn_1.q"] == widths["mid.attn_1.k"] == 11
    assert model.down[0].block[0].norm2.num_channels == 6 and model.down[0].block[0].temb_proj.out_features == 6
    expected_scale = 11 ** -0.5 if attn_scale == "pruned" else 16 ** -0.5
    assert model.mid.attn_1.scale == pytest.approx(expected_scale)
    assert model.down[0].block[0].conv1.weight.grad.shape[0] == 6  # grads sliced for sequential scoring

    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3.0, 17.0])
    rebuild_check(model, (x, t))
    path = tmp_path / "pruned.pt"
    torch.save({"config": model.config.to_dict(), "state_dict": model.state_dict()}, path)
    ckpt = torch.load(path, weights_only=True)
    reloaded = UNet(ModelConfig.from_dict(ckpt["config"]))
    reloaded.load_state_dict(ckpt["state_dict"])
    model.eval(), reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x, t), model(x, t), rtol=0, atol=1e-6)
