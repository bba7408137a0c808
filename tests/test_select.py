"""Tests of pruning/select.py: the paper's local rule (widths as its code computes them), global ranking with
each group normalised by its mean, whole-head removal; known answers on hand-built groups (no tracer)."""
from __future__ import annotations

import pytest
import torch

from pruning.groups import Group, Member
from pruning.select import n_pruned, select_global, select_groups, select_local


@pytest.mark.parametrize("size, blocks, keep", [(128, 32, 96), (256, 32, 192), (512, 1, 358), (256, 1, 179), (384, 32, 288)])
def test_local_rule_widths_match_the_paper(size, blocks, keep):
    """The paper code's widths at ratio 0.3 (VainF/Diff-Pruning, vendored metapruner.py): GN-coupled 128 -> 96, 256 -> 192, 384 -> 288;
    temb 512 -> 358, q/k/v 256 -> 179."""
    scores = torch.rand(size, generator=torch.Generator().manual_seed(size))
    kept = select_local(scores, Group(size=size, members=[], blocks=blocks), 0.3)
    assert kept.numel() == keep
    assert torch.equal(kept, kept.sort().values)
    if blocks > 1:  # every block loses the same number: its lowest-scored channels
        B = size // blocks
        for b in range(blocks):
            block = scores[b * B:(b + 1) * B]
            mine = kept[(kept >= b * B) & (kept < (b + 1) * B)] - b * B
            assert mine.numel() == keep // blocks
            assert set(mine.tolist()) == set(torch.argsort(block, descending=True)[:keep // blocks].tolist())
    else:
        assert set(kept.tolist()) == set(torch.argsort(scores, descending=True)[:keep].tolist())


def test_local_rule_errors():
    group = Group(size=8, members=[Member("conv", "out")], blocks=4)
    assert n_pruned(8, 0.9) == 8
    with pytest.raises(ValueError, match=r"group conv.*ratio 0.9"):
        select_local(torch.rand(8), group, 0.9)  # 8 // 4 = 2 per block of 2: a block would be empty
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="ratio"):
            select_local(torch.rand(8), group, bad)
    # ratio 0 keeps everything
    assert torch.equal(select_local(torch.rand(8), group, 0.0), torch.arange(8))


def test_global_rule_known_answer_and_blocks():
    g1 = Group(size=8, members=[Member("a", "out")], blocks=2)
    g2 = Group(size=4, members=[Member("b", "out")])
    g3 = Group(size=4, members=[Member("c", "out")], blocks=4)  # one channel per block: can lose none
    scores = {0: torch.tensor([1.0, 9, 9, 9, 2, 9, 9, 9]), 1: torch.tensor([3.0, 9, 9, 9]), 2: torch.tensor([0.0, 0, 0, 0])}
    # N = 16, ratio 0.25 -> target 4. Ranked: g3's zeros (unremovable), 1 (g1 takes 1: 0 removable), 2 (g1: 2, one
    # per block), 3 (g2: 1) -> total 3, then the 9s: g1 c1 (3 taken, still 2 removable), g1 c2 -> 4 removable.
    keep = select_global([g1, g2, g3], scores, 0.25, normalize="none")
    assert keep[2].tolist() == [0, 1, 2, 3]
    assert keep[1].tolist() == [1, 2, 3]
    assert keep[0].numel() == 4  # two per block of 4, the two lowest of each block gone
    assert {0, 4}.isdisjoint(keep[0].tolist())
    for i, g in enumerate([g1, g2, g3]):
        per_block = torch.bincount(keep[i] // (g.size // g.blocks), minlength=g.blocks)
        assert bool((per_block == per_block[0]).all()) and per_block.min() >= 1


def test_global_rule_normalises_each_group_by_its_mean():
    g1, g2 = Group(size=4, members=[Member("a", "out")]), Group(size=4, members=[Member("b", "out")])
    s = torch.tensor([1.0, 2.0, 3.0, 4.0])
    scores = {0: s, 1: 1000 * s.flip(0)}  # same relative profile, 1000x the scale
    keep = select_global([g1, g2], scores, 0.25)  # target 2: one per group after normalisation
    assert keep[0].tolist() == [1, 2, 3] and keep[1].tolist() == [0, 1, 2]
    raw = select_global([g1, g2], scores, 0.25, normalize="none")  # raw scale: g1 loses both
    assert raw[0].tolist() == [2, 3] and raw[1].tolist() == [0, 1, 2, 3]


def test_head_mode_removes_whole_heads_jointly():
    qk = Group(size=8, members=[Member("attn.q", "out"), Member("attn.k", "out")], blocks=4, heads=[("attn", "qk", 4)])
    v = Group(size=8, members=[Member("attn.v", "out"), Member("attn.proj_out", "in")], blocks=4, heads=[("attn", "v", 4)])
    scores = {0: torch.tensor([5.0, 5, 1, 1, 5, 5, 0, 9]), 1: torch.tensor([5.0, 5, 1, 1, 5, 5, 0, 0])}
    # head sums over both groups: [20, 4, 20, 9] -> ratio 0.5 removes heads 1 and 3 in both groups
    keep = select_groups([qk, v], scores, 0.5, head_mode="heads")
    assert keep[0].tolist() == keep[1].tolist() == [0, 1, 4, 5]
    chan = select_groups([qk, v], scores, 0.5, head_mode="channels")  # per-head channel removal instead
    assert chan[0].numel() == 4 and torch.bincount(chan[0] // 2, minlength=4).tolist() == [1, 1, 1, 1]


def test_global_head_mode_ranks_whole_heads_against_channels():
    qk = Group(size=8, members=[Member("attn.q", "out"), Member("attn.k", "out")], blocks=4, heads=[("attn", "qk", 4)])
    v = Group(size=8, members=[Member("attn.v", "out"), Member("attn.proj_out", "in")], blocks=4, heads=[("attn", "v", 4)])
    plain = Group(size=8, members=[Member("conv", "out")])
    head = torch.tensor([0.1, 0.1, 5, 5, 5, 5, 5, 5])  # head 0 low, the others high
    scores = {0: head, 1: head, 2: torch.tensor([0.5, 0.6, 9, 9, 9, 9, 9, 9])}
    # N = 24, ratio 0.25 -> target 6: head 0 (4 channels over both groups), then two plain channels.
    keep = select_groups([qk, v, plain], scores, 0.25, scope="global", head_mode="heads",
                         normalize="none")
    assert keep[0].tolist() == keep[1].tolist() == list(range(2, 8))
    assert keep[2].tolist() == list(range(2, 8))
