"""Tests of pruning/importance.py: every criterion against a hand computation, and Diff-Pruning's
timestep-thresholded gradient accumulation (stopping rule, micro-batch exactness).

Groups are built by hand on small networks (no tracer). The hand computations are explicit element loops,
independent of the vectorised slicing in the code under test.
"""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffusion.schedule import DiffusionConfig, Schedule
from pruning.groups import Group, Member
from pruning.importance import (IMPORTANCE, accumulate_gradients, diff_pruning_importance,
                                first_order_taylor_importance, magnitude_importance, random_importance)
from reports.plots import plot_timestep_losses


class ConvGNConv(nn.Module):
    """conv1 (2 -> 4, 3x3) -> GroupNorm(2, 4) -> SiLU -> conv2 (4 -> 3, 3x3)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.conv2 = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x):
        return self.conv2(F.silu(self.norm(self.conv1(x))))


def conv_gn_conv(seed: int = 0) -> tuple[ConvGNConv, Group]:
    """The net with known random weights AND known random .grad on every parameter, and its one group."""
    g = torch.Generator().manual_seed(seed)
    net = ConvGNConv()
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=g)
        p.grad = torch.randn(p.shape, generator=g)
    group = Group(size=4, members=[Member("conv1", "out"), Member("norm", "norm"), Member("conv2", "in")], blocks=2)
    return net, group


def _out_terms(w, g, shape, c, f):
    """sum over k of f(w_k, g_k) over output row c of a conv weight (nested lists), by explicit loops."""
    O, I, kh, kw = shape
    return sum(f(w[c][i][a][b], g[c][i][a][b]) for i, a, b in itertools.product(range(I), range(kh), range(kw)))


def _in_terms(w, g, shape, c, f):
    """sum over k of f(w_k, g_k) over input column c of a conv weight (nested lists), by explicit loops."""
    O, I, kh, kw = shape
    return sum(f(w[o][c][a][b], g[o][c][a][b]) for o, a, b in itertools.product(range(O), range(kh), range(kw)))


def _lists(net, name):
    p = getattr(net, name).weight
    return p.detach().tolist(), p.grad.tolist(), tuple(p.shape)


def test_diff_pruning_matches_hand_computation():
    net, group = conv_gn_conv()
    (w1, g1, s1), (w2, g2, s2), (gam, ggam, _) = _lists(net, "conv1"), _lists(net, "conv2"), _lists(net, "norm")
    sq = lambda w, g: (w * g) ** 2  # noqa: E731
    expected = [_out_terms(w1, g1, s1, c, sq) + _in_terms(w2, g2, s2, c, sq) + abs(gam[c] * ggam[c])
                for c in range(4)]
    got = diff_pruning_importance(net, group)
    assert got.shape == (4,)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0)
    # The principled GroupNorm variant squares the term instead.
    expected_sq = [e - abs(gam[c] * ggam[c]) + (gam[c] * ggam[c]) ** 2 for c, e in enumerate(expected)]
    torch.testing.assert_close(diff_pruning_importance(net, group, norm_term="squared"),
                               torch.tensor(expected_sq, dtype=torch.float64), rtol=1e-6, atol=0)
    # Biases are not used: changing them (and their grads) changes nothing.
    net.conv1.bias.data += 5.0
    net.norm.bias.grad += 3.0
    torch.testing.assert_close(diff_pruning_importance(net, group), got)


def test_magnitude_matches_hand_computation_and_excludes_groupnorm():
    net, group = conv_gn_conv(1)
    (w1, g1, s1), (w2, g2, s2) = _lists(net, "conv1"), _lists(net, "conv2")
    sq = lambda w, g: w ** 2  # noqa: E731
    expected = [_out_terms(w1, g1, s1, c, sq) + _in_terms(w2, g2, s2, c, sq) for c in range(4)]
    got = magnitude_importance(net, group)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0)
    net.norm.weight.data *= 100.0  # GroupNorm gamma is not part of the magnitude
    torch.testing.assert_close(magnitude_importance(net, group), got)


def test_taylor_matches_hand_computation_with_real_gradients():
    """First-order Taylor (Molchanov et al. 2019): |sum_k w_k dL/dw_k| per layer slice, summed over the layers,
    on a two-layer net."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    loss = lambda: net(x).pow(2).sum()  # noqa: E731
    loss().backward()
    group = Group(size=4, members=[Member("0", "out"), Member("2", "in")])
    w1, g1 = net[0].weight.tolist(), net[0].weight.grad.tolist()
    w2, g2 = net[2].weight.tolist(), net[2].weight.grad.tolist()
    expected = [abs(sum(w1[c][i] * g1[c][i] for i in range(3))) + abs(sum(w2[o][c] * g2[o][c] for o in range(2)))
                for c in range(4)]
    got = first_order_taylor_importance(net, group)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=0)

    # And the first-order meaning: sum_k w_k g_k over fc2's column c is dL/d(alpha) of scaling that column
    # by alpha at alpha = 1 (central finite difference).
    c, h = 1, 1e-6
    with torch.no_grad():
        col = net[2].weight[:, c].clone()
        net[2].weight[:, c] = col * (1 + h)
        up = loss().item()
        net[2].weight[:, c] = col * (1 - h)
        down = loss().item()
        net[2].weight[:, c] = col
    assert abs((up - down) / (2 * h)) == pytest.approx(abs(sum(w2[o][c] * g2[o][c] for o in range(2))), rel=1e-5)


def test_taylor_includes_groupnorm_abs_term():
    net, group = conv_gn_conv(2)
    (w1, g1, s1), (w2, g2, s2), (gam, ggam, _) = _lists(net, "conv1"), _lists(net, "conv2"), _lists(net, "norm")
    prod = lambda w, g: w * g  # noqa: E731
    expected = [abs(_out_terms(w1, g1, s1, c, prod)) + abs(_in_terms(w2, g2, s2, c, prod))
                + abs(gam[c] * ggam[c]) for c in range(4)]
    torch.testing.assert_close(first_order_taylor_importance(net, group), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0)


class DoubledConcat(nn.Module):
    """a = conv_a(x); y = conv_b(cat([a, a])) + conv_c(a): conv_b reads the channel space of a twice."""

    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(2, 3, 1)
        self.conv_b = nn.Conv2d(6, 2, 3, padding=1)
        self.conv_c = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        a = self.conv_a(x)
        return self.conv_b(torch.cat([a, a], dim=1)) + self.conv_c(a)


def test_diff_pruning_drops_doubled_concat_consumer():
    g = torch.Generator().manual_seed(3)
    net = DoubledConcat()
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=g)
        p.grad = torch.randn(p.shape, generator=g)
    group = Group(size=3, members=[Member("conv_a", "out"), Member("conv_b", "in", 0), Member("conv_b", "in", 3),
                                   Member("conv_c", "in")])
    (wa, ga, sa), (wb, gb, sb), (wc, gc, sc) = _lists(net, "conv_a"), _lists(net, "conv_b"), _lists(net, "conv_c")
    sq = lambda w, g: (w * g) ** 2  # noqa: E731
    base = [_out_terms(wa, ga, sa, c, sq) + _in_terms(wc, gc, sc, c, sq) for c in range(3)]
    doubled = [_in_terms(wb, gb, sb, c, sq) + _in_terms(wb, gb, sb, c + 3, sq) for c in range(3)]
    # Default (paper): conv_b's 2C-long entry is dropped entirely; conv_c (read once) still counts.
    torch.testing.assert_close(diff_pruning_importance(net, group), torch.tensor(base, dtype=torch.float64), rtol=1e-6, atol=0)
    # Principled: both slices of conv_b are added.
    torch.testing.assert_close(diff_pruning_importance(net, group, concat_duplicates="sum"),
                               torch.tensor([b + d for b, d in zip(base, doubled)], dtype=torch.float64), rtol=1e-6, atol=0)


def test_member_offset_selects_the_right_slice():
    """A group that is the SECOND part of a concat reads columns [offset, offset + C) of the consumer."""
    net = nn.Conv2d(5, 2, 1)
    with torch.no_grad():
        net.weight.copy_(torch.arange(10.0).reshape(2, 5, 1, 1))
    group = Group(size=2, members=[Member("", "in", offset=3)])
    w = net.weight[:, :, 0, 0]
    torch.testing.assert_close(magnitude_importance(net, group), w[:, 3:5].pow(2).sum(0).double())


def test_random_is_seeded_and_registry_is_complete():
    net, group = conv_gn_conv()
    a = random_importance(net, group, generator=torch.Generator().manual_seed(7))
    b = random_importance(net, group, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.shape == (4,) and bool(((a >= 0) & (a < 1)).all())
    assert set(IMPORTANCE) == {"random", "magnitude", "taylor-first-order", "diff-pruning"}
    for name, fn in IMPORTANCE.items():
        assert fn(net, group, generator=torch.Generator().manual_seed(0)).shape == (4,), name


def test_gradient_criteria_need_gradients():
    net, group = conv_gn_conv()
    net.conv2.weight.grad = None
    with pytest.raises(RuntimeError, match="conv2"):
        diff_pruning_importance(net, group)
    with pytest.raises(ValueError, match="concat_duplicates"):
        diff_pruning_importance(net, conv_gn_conv()[1], concat_duplicates="mean")


# ---------------------------------------------------------------------------------------------------
# Gradient accumulation


class ControlledLoss(nn.Module):
    """A stub eps_theta with L_t known in closed form.

    With x0 = 0, x_t = sqrt(1 - abar_t) eps, so the stub recovers eps exactly and returns eps + w * r_t:
    the per-sample loss is D (w r_t)^2 (D = C*H*W), L_t = D w^2 r_t^2 and dL_t/dw = 2 D w r_t^2.
    """

    def __init__(self, schedule: Schedule, r2: list[float]):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
        self.r = torch.tensor(r2, dtype=torch.float64).sqrt()
        self.sigma = (1.0 - schedule.alpha_bars).sqrt()  # sqrt(1 - abar_t), float64
        self.drop = nn.Dropout(0.5)
        self.modes: list[bool] = []

    def forward(self, x_t, t):
        self.modes.append(self.training)
        t = t.long()
        eps = x_t / self.sigma[t][:, None, None, None]
        return eps + self.w * self.r[t][:, None, None, None]


R2 = [1.0, 10.0, 3.0, 2.5, 1.5, 0.5, 0.2, 0.1]  # L_t / D: not monotone at the start (the max is at t = 1)


@pytest.mark.parametrize("micro_batch", [5, 2])
@pytest.mark.parametrize("thr, kept", [(0.2, [0, 1, 2, 3]), (0.5, [0, 1]), (0.0, list(range(8))), (0.04, list(range(6)))])
def test_stopping_rule_keeps_prefix_before_first_violation(thr, kept, micro_batch):
    schedule = Schedule(DiffusionConfig(num_timesteps=8))
    model = ControlledLoss(schedule, R2)
    model.w.grad = torch.tensor(100.0, dtype=torch.float64)  # stale gradient: must be cleared
    x0 = torch.zeros(5, 1, 2, 3, dtype=torch.float64)
    D = 6
    report = accumulate_gradients(model, schedule, x0, thr=thr, micro_batch=micro_batch,
                                  generator=torch.Generator().manual_seed(0))
    assert report.kept == kept
    computed = len(kept) + (0 if len(kept) == 8 else 1)  # the first rejected t is computed, not backpropagated
    expected = torch.tensor([D * r for r in R2[:computed]], dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(report.losses, dtype=torch.float64), expected)
    assert report.stopped_at == (None if len(kept) == 8 else len(kept))
    assert report.loss_max == pytest.approx(D * max(R2[:computed]))
    # G = sum over kept t of 2 D w r_t^2 (w = 1): the rejected t's gradient was never added (or was rolled back).
    assert model.w.grad.item() == pytest.approx(sum(2 * D * R2[t] for t in kept), rel=1e-9)
    assert not any(model.modes) and model.training  # eval during accumulation, previous mode restored


def test_max_timesteps_caps_the_loop():
    schedule = Schedule(DiffusionConfig(num_timesteps=8))
    model = ControlledLoss(schedule, R2)
    report = accumulate_gradients(model, schedule, torch.zeros(2, 1, 2, 2, dtype=torch.float64), thr=0.0,
                                  micro_batch=2, max_timesteps=3)
    assert report.kept == [0, 1, 2] and len(report.losses) == 3 and report.stopped_at is None


class TinyEps(nn.Module):
    """A small eps-model with time input: x + conv(dropout(SiLU(GN(conv(x) + Linear(t))))). The identity skip
    makes L_t fall with t (x_t -> eps as alpha_bar_t -> 0), so a threshold cuts the loop."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.temb = nn.Linear(1, 8)
        self.norm = nn.GroupNorm(2, 8)
        self.drop = nn.Dropout(0.5)
        self.conv2 = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x, t):
        h = self.conv1(x) + self.temb(t[:, None] / 10.0)[:, :, None, None]
        return x + self.conv2(self.drop(F.silu(self.norm(h))))


def test_micro_batches_give_the_full_batch_gradient():
    torch.manual_seed(0)
    schedule = Schedule(DiffusionConfig(num_timesteps=10, beta_start=0.05, beta_end=0.5))
    model = TinyEps()
    x0 = torch.randn(6, 3, 4, 4)
    eps = torch.randn(6, 3, 4, 4)
    results = []
    for mb in (6, 4, 1):  # 4 does not divide 6: the last micro-batch has 2 samples
        report = accumulate_gradients(model, schedule, x0, thr=0.3, micro_batch=mb, eps=eps)
        results.append((report, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (ref_report, ref), others = results[0], results[1:]
    assert 0 < len(ref_report.kept) < 10  # the threshold bites: exercises the restore path
    for report, grads in others:
        assert report.kept == ref_report.kept
        torch.testing.assert_close(torch.tensor(report.losses), torch.tensor(ref_report.losses), rtol=1e-5, atol=0)
        for name, g in grads.items():
            rel = (g - ref[name]).norm() / ref[name].norm()
            assert rel < 1e-5, (name, rel.item())


def test_plot_timestep_losses_writes_png(tmp_path):
    schedule = Schedule(DiffusionConfig(num_timesteps=8))
    report = accumulate_gradients(ControlledLoss(schedule, R2), schedule, torch.zeros(2, 1, 2, 2, dtype=torch.float64),
                                  thr=0.2, micro_batch=2)
    path = plot_timestep_losses(report, tmp_path / "losses.png")
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
