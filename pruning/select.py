"""Channel selection: from importance scores to the sorted indices each group KEEPS.

Rules (VainF/Diff-Pruning's vendored Torch-Pruning, ddpm_exp/torch_pruning/pruner/algorithms/metapruner.py; ``ratio`` is the pruning ratio, the paper code's ``ch_sparsity``):

    local   each group on its own: n_pruned = C - int(C * (1 - ratio)) (truncation, as the paper code);
            with blocks > 1 (GroupNorm groups, attention heads) every contiguous block of C / blocks
            channels loses the n_pruned // blocks (floor) lowest scores, so GroupNorm(32) groups of 128
            channels go to 96, not int(0.7 * 128) = 89; otherwise the n_pruned lowest go.
    global  all channels of all prunable groups ranked together (scores normalised per group, see
            ``select_global``) until the pruned fraction reaches ``ratio``; blocks respected.

Head modes, for groups whose channels are split into attention heads (``group.heads``):

    "channels"  (default) every head loses the same number of channels (the group's blocks do this).
    "heads"     whole heads go: a head's score is the sum of its channels' scores. Groups that share an
                attention module (its q/k space and its v space) must lose the same heads, so they are
                selected jointly (``select_groups``), on the sum of their head scores.

Widths that run fast (``round_to`` N, local rule, head mode "channels"): each group's kept width is moved
to the nearest multiple of lcm(N, blocks) (ties: keep more), at least one such multiple and at most the
dense width; the dense width itself is always allowed. Vectorised kernels work in 8 or 16 channels at a
time, so a width of 179 costs about what 184 does; rounding turns the paper's odd widths into multiples of
N while every GroupNorm group and head still loses the same number of channels. A group narrower than
lcm(N, blocks) keeps the paper's width.

Ties are broken by position (stable sort: among equal scores the lower index is removed first).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import math

import torch

from pruning.groups import Group

HEAD_MODES = ("channels", "heads")


def n_pruned(size: int, ratio: float) -> int:
    """C - int(C * (1 - ratio)): the paper code's channel count to remove (metapruner.py L227-230). The code
    writes current_C - int(initial_C * (1 - ratio)); in one-shot pruning both are C."""
    return size - int(size * (1 - ratio))


def _check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio}")


def _lowest(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the n lowest scores (stable: ties remove the lower index first)."""
    return torch.argsort(scores, stable=True)[:n]


def _keep_from_removed(size: int, removed: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(size, dtype=torch.bool)
    mask[removed] = False
    return torch.nonzero(mask).flatten()  # sorted


def _check_scores(scores: torch.Tensor, group: Group) -> torch.Tensor:
    scores = torch.as_tensor(scores).detach().flatten().double().cpu()
    if scores.numel() != group.size:
        raise ValueError(f"group {group.name}: {scores.numel()} scores for {group.size} channels")
    return scores


def select_by_block(scores: torch.Tensor, group: Group, n_remove: int) -> torch.Tensor:
    """Remove ``n_remove`` channels of ``group`` (a multiple of its blocks), n_remove / blocks of the lowest
    in each contiguous block. Returns the sorted keep indices. A block (or group) left empty is an error."""
    scores = _check_scores(scores, group)
    blocks, C = group.blocks, group.size
    if C % blocks:
        raise ValueError(f"group {group.name}: size {C} is not divisible by its {blocks} blocks")
    if n_remove % blocks:
        raise ValueError(f"group {group.name}: removing {n_remove} channels is not a multiple of its {blocks} blocks")
    per_block, size = n_remove // blocks, C // blocks
    if per_block >= size:
        what = f"each of its {blocks} blocks of {size}" if blocks > 1 else f"all {C}"
        raise ValueError(f"group {group.name}: removing {per_block} of {what} channels leaves none")
    removed = [b * size + _lowest(scores[b * size:(b + 1) * size], per_block) for b in range(blocks)]
    return _keep_from_removed(C, torch.cat(removed))


def check_round_to(round_to: int | None) -> None:
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to must be a whole number >= 1 (or None), got {round_to!r}")


def rounded_width(kept: int, size: int, blocks: int, round_to: int | None) -> int:
    """``kept`` moved to the nearest multiple of lcm(round_to, blocks) in [that multiple, size], ties to the
    wider; ``size`` (the unpruned width) is always a candidate. Unchanged without round_to or when the group
    is narrower than the multiple (see the module docstring)."""
    if not round_to or kept == size:
        return kept
    step = math.lcm(round_to, blocks)
    if size < step:
        return kept
    candidates = list(range(step, size + 1, step)) + [size]
    return min(candidates, key=lambda w: (abs(w - kept), -w))


def select_local(scores: torch.Tensor, group: Group, ratio: float, round_to: int | None = None) -> torch.Tensor:
    """The paper's local rule (see module docstring), channel by channel, with the kept width rounded to
    multiples of ``round_to`` if given. Returns sorted keep indices."""
    _check_ratio(ratio)
    check_round_to(round_to)
    n = (n_pruned(group.size, ratio) // group.blocks) * group.blocks
    n = group.size - rounded_width(group.size - n, group.size, group.blocks, round_to)
    try:
        return select_by_block(scores, group, n)
    except ValueError as err:
        raise ValueError(f"{err} (ratio {ratio})") from None


def head_scores(scores: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Per-head score: the sum of the head's channel scores (head-major layout). (C,) -> (num_heads,)."""
    if scores.numel() % num_heads:
        raise ValueError(f"{scores.numel()} channels do not split into {num_heads} heads")
    return scores.reshape(num_heads, -1).sum(1)


def heads_to_channels(kept_heads: torch.Tensor, size: int, num_heads: int) -> torch.Tensor:
    """Sorted channel indices of the kept heads (head h owns channels [h*d, (h+1)*d), d = size / num_heads)."""
    d = size // num_heads
    return (kept_heads.sort().values[:, None] * d + torch.arange(d)).flatten()


def select_heads(head_score: torch.Tensor, ratio: float, name: str) -> torch.Tensor:
    """Local rule on whole heads: H - int(H * (1 - ratio)) lowest heads go. Returns sorted kept head indices."""
    _check_ratio(ratio)
    H = head_score.numel()
    n = n_pruned(H, ratio)
    if n >= H:
        raise ValueError(f"{name}: pruning {n} of {H} heads at ratio {ratio} leaves none")
    return _keep_from_removed(H, _lowest(head_score, n))


def _head_clusters(groups: Sequence[Group], indices: Sequence[int]) -> list[list[int]]:
    """Partition ``indices`` into clusters of groups that share an attention module (connected components)."""
    clusters: list[list[int]] = []
    owner: dict[str, int] = {}
    for i in indices:
        hits = sorted({owner[path] for path, *_ in groups[i].heads if path in owner})
        if not hits:
            clusters.append([i])
            target = len(clusters) - 1
        else:
            target = hits[0]
            for other in reversed(hits[1:]):  # merge clusters joined by this group
                clusters[target] += clusters[other]
                clusters[other] = []
                owner.update({p: target for p, o in owner.items() if o == other})
            clusters[target].append(i)
        for path, *_ in groups[i].heads:
            owner[path] = target
    return [sorted(c) for c in clusters if c]


def _cluster_heads(groups: Sequence[Group], cluster: Sequence[int]) -> int:
    """The head count the groups of one cluster share (as traced, kept current by surgery)."""
    counts = {heads for i in cluster for _, _, heads in groups[i].heads}
    if len(counts) != 1:
        raise ValueError(f"groups {[groups[i].name for i in cluster]} share attention modules "
                         f"with different head counts {counts}")
    H = counts.pop()
    for i in cluster:
        if groups[i].blocks % H:
            raise ValueError(f"group {groups[i].name}: {groups[i].blocks} blocks do not split into {H} heads")
    return H


def select_groups(groups: Sequence[Group], scores: Mapping[int, torch.Tensor], ratio: float, *,
                  scope: str = "local", head_mode: str = "channels",
                  normalize: str = "mean", round_to: int | None = None) -> dict[int, torch.Tensor]:
    """Keep indices for every scored, prunable group: {group index: sorted LongTensor}.

    scores:    {group index: (C,) scores}; groups without scores (or protected ones) are not pruned.
    scope:     "local" (the paper) or "global" (``select_global``).
    head_mode: "channels" or "heads" (see the module docstring); head counts come from ``group.heads``.
    round_to:  keep widths at multiples of this (local scope, head_mode "channels"; module docstring).
    """
    _check_ratio(ratio)
    check_round_to(round_to)
    if round_to and round_to > 1 and (scope != "local" or head_mode != "channels"):
        raise ValueError(f"round_to applies to the local rule with head_mode 'channels', got scope={scope!r}, "
                         f"head_mode={head_mode!r}")
    if scope not in ("local", "global"):
        raise ValueError(f"scope must be 'local' or 'global', got {scope!r}")
    if head_mode not in HEAD_MODES:
        raise ValueError(f"head_mode must be one of {HEAD_MODES}, got {head_mode!r}")
    todo = [i for i in sorted(scores) if groups[i].prunable]
    # Whole-head removal needs several heads; single-head attention is pruned channel by channel.
    head_groups = [i for i in todo if any(h > 1 for *_, h in groups[i].heads)] if head_mode == "heads" else []
    if scope == "global":
        return select_global(groups, scores, ratio, normalize=normalize,
                             head_clusters=_head_clusters(groups, head_groups))
    keep = {i: select_local(scores[i], groups[i], ratio, round_to) for i in todo if i not in head_groups}
    for cluster in _head_clusters(groups, head_groups):
        H = _cluster_heads(groups, cluster)
        total = sum(head_scores(_check_scores(scores[i], groups[i]), H) for i in cluster)
        where = ", ".join(sorted({p for i in cluster for p, *_ in groups[i].heads}))
        kept = select_heads(total, ratio, f"attention {where}")
        keep.update({i: heads_to_channels(kept, groups[i].size, H) for i in cluster})
    return keep


def select_global(groups: Sequence[Group], scores: Mapping[int, torch.Tensor], ratio: float, *,
                  normalize: str = "mean", head_clusters: Sequence[Sequence[int]] = ()) -> dict[int, torch.Tensor]:
    """Global ranking over all channels of all scored, prunable groups.

    Normalisation ("mean", default): each group's scores are divided by their mean, as Torch-Pruning's
    ``normalizer='mean'``, so groups whose raw scores differ in scale (a wide consumer sums more terms)
    compete on relative importance; "none" ranks raw scores. The lowest channels are taken one by one
    until the number actually removable reaches int(N * ratio), N = channels of the participating groups.
    A group with blocks > 1 removes the largest multiple of ``blocks`` not above its count of taken
    channels (equal per block, the lowest in each block) and keeps >= 1 channel per block, so the
    total may overshoot the target by less than one group's ``blocks``.
    ``head_clusters``: lists of group indices that lose whole heads together (head_mode "heads"); each
    head is one ranked unit with the mean normalised score of its channels over the cluster.
    """
    _check_ratio(ratio)
    if normalize not in ("mean", "none"):
        raise ValueError(f"normalize must be 'mean' or 'none', got {normalize!r}")
    todo = [i for i in sorted(scores) if groups[i].prunable]
    norm = {}
    for i in todo:
        s = _check_scores(scores[i], groups[i])
        mean = s.mean()
        norm[i] = s / mean if normalize == "mean" and mean > 0 else s
    in_cluster = {i for c in head_clusters for i in c}

    # Ranked units: (score, unit id, channels it removes). A unit is one channel, or one head of a cluster.
    units: list[tuple[float, int, int]] = []
    owner: list[tuple] = []
    for i in todo:
        if i in in_cluster:
            continue
        for c, v in enumerate(norm[i].tolist()):
            units.append((v, len(owner), 1))
            owner.append(("channel", i, c))
    for k, cluster in enumerate(head_clusters):
        H = _cluster_heads(groups, cluster)
        per_head = sum(norm[i].reshape(H, -1).sum(1) for i in cluster)
        width = sum(groups[i].size // H for i in cluster)
        for h, v in enumerate((per_head / width).tolist()):
            units.append((v, len(owner), width))
            owner.append(("head", k, h))
    N = sum(groups[i].size for i in todo)
    target = int(N * ratio)

    taken = {i: [] for i in todo if i not in in_cluster}  # channels taken so far, per group
    heads_taken: dict[int, list[int]] = {k: [] for k in range(len(head_clusters))}

    def removable(i: int) -> int:  # channels group i would actually lose with its current count
        b, size = groups[i].blocks, groups[i].size
        return min(len(taken[i]) // b * b, (size // b - 1) * b)

    def head_removable(k: int) -> int:
        H = _cluster_heads(groups, head_clusters[k])
        per = sum(groups[i].size // H for i in head_clusters[k])
        return min(len(heads_taken[k]), H - 1) * per

    total = 0
    for v, uid, width in sorted(units):
        if total >= target:
            break
        kind, a, b = owner[uid]
        if kind == "channel":
            before = removable(a)
            taken[a].append(b)
            total += removable(a) - before
        else:
            before = head_removable(a)
            heads_taken[a].append(b)
            total += head_removable(a) - before

    keep = {i: select_by_block(norm[i], groups[i], removable(i)) for i in taken}
    for k, cluster in enumerate(head_clusters):
        H = _cluster_heads(groups, cluster)
        removed = torch.tensor(heads_taken[k][:H - 1], dtype=torch.long)
        kept = _keep_from_removed(H, removed)
        keep.update({i: heads_to_channels(kept, groups[i].size, H) for i in cluster})
    return keep
