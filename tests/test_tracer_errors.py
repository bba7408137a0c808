"""Tests of pruning/trace/: ops the tracer does not understand and layers it cannot prune are errors naming
the op and the module path; constraints that protect groups; the gaps found in review (fixed-size splits,
GroupNorm without affine weights or per channel, layers that never ran). (tests/test_tracer.py: the traced
groups against hand-written expectations.)
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pruning import prune
from pruning.trace.grouping import build_groups
from pruning.trace.ops import OPS
from pruning.trace.record import UnsupportedOpError


# ---------------------------------------------------------------------------------------------------
# Ops the tracer does not understand, layers it cannot prune, and constraints that protect


class Wrap(nn.Module):
    """conv -> fn (in module "body") -> conv."""

    def __init__(self, fn, mid: nn.Module | None = None):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.body = Body(fn) if mid is None else mid
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.head(self.body(self.conv(x)))


class Body(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, h):
        return self.fn(h)


class SortChannels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.sort(dim=1).values

    @staticmethod
    def backward(ctx, g):
        return g


class ClampFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        return g


@pytest.mark.parametrize("fn, op", [
    (lambda h: torch.fft.fft2(h).real, "fft_fft2"),  # torch.fft.fft2
    (lambda h: torch.sort(h, dim=1).values, "sort"),
    (lambda h: SortChannels.apply(h), "sort"),  # a custom Function is traced through its forward
    (lambda h: F.pixel_shuffle(h, 2)[:, :, ::2, ::2].repeat(1, 4, 1, 1), "pixel_shuffle"),
    (lambda h: h.flatten(1)[:, :8].reshape(-1, 8, 1, 1).expand(-1, -1, 8, 8), "flatten"),
    (lambda h: (h.flatten(2).transpose(1, 2) @ torch.ones(8, 8)).transpose(1, 2).reshape(h.shape), "matmul"),
])
def test_unsupported_op_is_an_error_naming_op_and_module(fn, op):
    with pytest.raises(UnsupportedOpError, match=rf"op '{op}' in module 'body'") as info:
        build_groups(Wrap(fn), (torch.randn(1, 3, 8, 8),))
    assert (info.value.op, info.value.module) == (op, "body")


@pytest.mark.parametrize("layer, name", [(nn.BatchNorm2d(8), "BatchNorm2d"),
                                         (nn.Conv2d(8, 8, 3, padding=1, groups=4), "Conv2d")])
def test_unsupported_layers_are_errors(layer, name):
    with pytest.raises(UnsupportedOpError, match=rf"op '{name}' in module 'body'"):
        build_groups(Wrap(None, mid=layer), (torch.randn(1, 3, 8, 8),))


def test_custom_function_with_supported_ops_is_traced_through():
    groups = build_groups(Wrap(lambda h: ClampFn.apply(h) + h), (torch.randn(1, 3, 8, 8),))
    assert [(g.name, [(x.module, x.role) for x in g.members]) for g in groups if g.prunable] == \
        [("conv", [("conv", "out"), ("head", "in")])]


class Protections(nn.Module):
    """chunk into parts of different groups; a fixed-bounds slice; a bare parameter; a layer applied twice."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d, self.e, self.f = (nn.Conv2d(3, 8, 1) for _ in range(6))
        self.shared = nn.Conv2d(8, 4, 1)
        self.gamma = nn.Parameter(torch.ones(1, 8, 1, 1))
        self.out = nn.Conv2d(8 + 8 + 4 + 8 + 4 + 4, 3, 1)

    def forward(self, x):
        p, q = torch.cat([self.a(x), self.b(x)], dim=1).chunk(2, dim=1)  # parts: group a, group b
        fixed = self.c(x)[:, 2:6]  # channels 2..5, bounds fixed in the code
        scaled = self.d(x) * self.gamma  # a parameter outside any prunable layer
        s = self.shared(self.e(x)) + self.shared(self.f(x))[:, :4]  # one weight read twice; a full slice
        return self.out(torch.cat([p, q, fixed, scaled, s, s], dim=1))


def test_constraints_that_protect_groups():
    by_name = {g.name: g for g in build_groups(Protections(), (torch.randn(1, 3, 4, 4),))}
    assert "chunk at <model> into parts of different channel groups" in by_name["a"].protected
    assert "chunk" in by_name["b"].protected
    assert "fixed bounds" in by_name["c"].protected
    assert "no prunable producer (parameter gamma used by mul" in by_name["d"].protected
    # shared reads e's and f's outputs through the same weight columns: e and f are one group.
    assert by_name["e"].prunable
    assert {(x.module, x.role, x.offset) for x in by_name["e"].members} == {
        ("e", "out", 0), ("f", "out", 0), ("shared", "in", 0)}
    assert by_name["shared"].prunable
    assert {(x.module, x.role, x.offset) for x in by_name["shared"].members} == {
        ("shared", "out", 0), ("out", "in", 28), ("out", "in", 32)}


def test_registry_is_a_plain_table():
    assert OPS["add"] == "elementwise" and OPS["cat"] == "concat" and OPS["matmul"] == "matmul"
    assert OPS["interpolate"] == "spatial" and OPS["chunk"] == "split" and OPS["getitem"] == "index"


# ---------------------------------------------------------------------------------------------------
# Gaps found in review: fixed-size splits, GroupNorm without affine weights, per-channel GroupNorm, layers that
# never ran


class Splits(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.out = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        h = self.conv(x)
        a, b = h.split(4, dim=1) if self.how == "split" else h.chunk(2, dim=1)
        return self.out(a * b)


def test_split_with_an_int_size_keeps_its_group_whole():
    groups = build_groups(Splits("split"), (torch.randn(1, 3, 4, 4),))
    conv = next(g for g in groups if any(m.module == "conv" and m.role == "out" for m in g.members))
    assert not conv.prunable and "sizes fixed in the code" in conv.protected
    model, _ = prune(Splits("split"), (torch.randn(1, 3, 4, 4),), method="random", ratio=0.5, progress=False)
    assert model(torch.randn(2, 3, 4, 4)).shape == (2, 3, 4, 4)  # the pruned model still runs
    # chunk(2) halves whatever the width: prunable, both halves lose the same channels.
    model, _ = prune(Splits("chunk"), (torch.randn(1, 3, 4, 4),), method="random", ratio=0.5, progress=False)
    assert model.conv.out_channels == 4 and model.out.in_channels == 2
    assert model(torch.randn(2, 3, 4, 4)).shape == (2, 3, 4, 4)


class Norms(nn.Module):
    def __init__(self, groups: int, affine: bool):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(groups, 8, affine=affine)
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.out(F.silu(self.norm(self.conv(x))))


@pytest.mark.parametrize("groups, affine, width, norm_groups", [(2, False, 4, 2), (8, True, 4, 4), (8, False, 4, 4)])
def test_group_norm_without_affine_or_per_channel_follows_the_pruning(groups, affine, width, norm_groups):
    """A non-affine norm has no weight but must still update num_channels; a per-channel norm (one channel per
    group) stays per-channel. The paper's code would leave the per-channel group alone (its ch_groups = 8
    blocks of one channel lose 4 // 8 = 0); here one channel per group is no constraint."""
    model, _ = prune(Norms(groups, affine), (torch.randn(1, 3, 4, 4),), method="random", ratio=0.5, progress=False)
    assert model.conv.out_channels == model.norm.num_channels == width and model.norm.num_groups == norm_groups
    assert model(torch.randn(2, 3, 4, 4)).shape == (2, 3, 4, 4)


class Branch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.late = nn.Conv2d(8, 8, 1)
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, x, t):
        h = self.conv(x)
        if t[0] > 500:  # a branch on t: the example t = 1 never reaches it
            h = self.late(h)
        return self.out(h)


def test_layers_that_never_ran_are_an_error_unless_ignored():
    example = (torch.randn(1, 3, 4, 4), torch.ones(1))
    with pytest.raises(ValueError, match=r"1 layer\(s\) with parameters never ran on the example inputs: late"):
        build_groups(Branch(), example)
    assert build_groups(Branch(), example, ignored=["late"])
