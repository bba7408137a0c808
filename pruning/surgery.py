"""Physical channel removal, and every piece of bookkeeping that goes with it.

``prune_group`` slices each member of a group (weights, biases, ``.grad``) and the width attributes of the
sliced layers themselves (``out_channels``, ``in_features``, ``num_channels`` ...). ``update_attributes`` then
brings every other module attribute that states a width or a head count in line with the pruned weights,
``finalize`` writes the new width table into ``model.config``. This file owns ALL such updates: no other
code changes a module attribute, and ``forward`` never infers structure from channel counts.

Offsets move. If a consumer reads cat([a, b]) and a's group is pruned first, b's slice of the consumer's
input now starts earlier. ``prune_group`` therefore also rewrites the offsets of every member (in the
pruned group and in ``others``) that indexes a dimension it shortened: new offset = old offset minus the
number of removed positions below it. Groups are updated IN PLACE (size, offsets, blocks, head counts) so
that they keep describing the current model, and a later group can be scored and pruned lazily, as the
paper's code does (each group is scored on the network the groups before it have pruned).

Attributes of other modules (``update_attributes``), by a fixed rule against what the trace recorded, and
only where the attribute still holds the traced value (anything else is left alone and the re-trace of
``pruning/checks.py`` catches it if the forward reads it):

    HEAD_ATTRS  ("num_heads", "heads", "n_heads", "num_attention_heads")  the module's traced head count
                 -> the number of heads that keep at least one channel (changes only when whole heads go)
    WIDTH_ATTRS "in_channels", "channels" -> the module's traced input width; "out_channels" -> its output
                 width; "inner_dim" -> the width of its traced q/k space
    scale        (modules with a float ``scale`` and a traced q.k contraction, when ``attn_scale`` or
                 ``model.config.attn_scale`` is "pruned") 1/sqrt(pruned q/k width per head), the DDPM code's
                 ``int(c) ** -0.5`` after pruning; "dense" keeps the dense temperature.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from pruning.checks import check_consistency
from pruning.groups import Group
from pruning.members import NORMS, role_dim, role_width, set_role_width
from pruning.trace.grouping import Analysis

def _slice_parameter(module: nn.Module, name: str, dim: int, index: torch.Tensor, keep_grads: bool) -> None:
    """Replace module.<name> by a NEW nn.Parameter holding the kept slice (so an optimizer built afterwards
    sees the new shape), keeping requires_grad and, if asked, the sliced .grad."""
    old = getattr(module, name, None)
    if old is None:
        return
    idx = index.to(old.device)
    # index_select already returns fresh storage: no clone needed (a second copy doubles surgery time).
    new = nn.Parameter(old.detach().index_select(dim, idx), requires_grad=old.requires_grad)
    if keep_grads and old.grad is not None:
        new.grad = old.grad.detach().index_select(dim, idx)  # consistent grads for lazy re-scoring
    setattr(module, name, new)


def _several_heads(group: Group) -> bool:
    return any(h > 1 for *_, h in group.heads)


def _check_keep(group: Group, keep: torch.Tensor) -> torch.Tensor:
    keep = torch.as_tensor(keep, dtype=torch.long).flatten().cpu()
    if keep.numel() == 0:
        raise ValueError(f"group {group.name}: keep is empty; every group must keep at least one channel")
    keep = keep.sort().values
    if keep[0] < 0 or keep[-1] >= group.size or bool((keep[1:] == keep[:-1]).any()):
        raise ValueError(f"group {group.name}: keep indices must be distinct and in [0, {group.size})")
    return keep


def _check_blocks(group: Group, keep: torch.Tensor) -> None:
    """Every block keeps the same number of channels (>= 1); with heads, whole blocks may go (heads removed)."""
    if group.blocks == 1:
        return
    if group.size % group.blocks:
        raise ValueError(f"group {group.name}: size {group.size} is not divisible by its {group.blocks} blocks")
    counts = torch.bincount(keep // (group.size // group.blocks), minlength=group.blocks)
    nonzero = counts[counts > 0]
    if bool((nonzero == nonzero[0]).all()) and (_several_heads(group) or bool((counts > 0).all())):
        return
    raise ValueError(f"group {group.name}: keep takes {counts.tolist()} channels from its {group.blocks} blocks; "
                     f"every block ({'; '.join(group.block_reasons) or 'GroupNorm groups / heads'}) must keep the same number")



def prune_group(model: nn.Module, group: Group, keep: torch.Tensor, *, keep_grads: bool = True,
                others: Iterable[Group] = ()) -> None:
    """Remove every channel of ``group`` not in ``keep`` (indices in [0, group.size)) from all members.

    Conv2d/Linear "out": weight dim 0 and bias; "in": weight dim 1 (only [offset, offset + C) of the input
    dimension is touched: a concat consumer keeps the other parts); GroupNorm "norm": weight, bias,
    num_channels (num_groups unchanged; a width not divisible by it is an error naming the norm; a
    per-channel norm, num_groups == num_channels, stays per-channel); LayerNorm "norm": weight, bias,
    normalized_shape; Embedding "out": weight dim 1, embedding_dim (the table in ``pruning/members.py``).
    ``.grad`` is sliced too when ``keep_grads``. Updates ``group`` in place (size, member offsets, blocks,
    head counts) and the offsets of members of ``others`` on the shortened dimensions (module docstring).
    Everything is validated before the first parameter is replaced.
    """
    keep = _check_keep(group, keep)
    C = group.size
    if keep.numel() == C:
        return  # nothing removed: leave the parameters (and their identity) alone
    _check_blocks(group, keep)
    removed = torch.ones(C, dtype=torch.bool)
    removed[keep] = False
    removed = torch.nonzero(removed).flatten()  # (n_removed,)

    # 1. Positions to drop in each (module, role) dimension: a concat consumer that reads this group twice
    #    has two members on the same dimension, both pruned.
    drops: dict[tuple[str, str], list[int]] = {}
    for m in group.members:
        drops.setdefault((m.module, m.role), []).extend((m.offset + removed).tolist())
    plans = []
    for (path, role), positions in drops.items():
        module = model.get_submodule(path)
        dim, _ = role_dim(module, path, role)
        width = role_width(module, path, role)
        if max(positions) >= width:
            raise ValueError(f"{path} ({role}): group {group.name} indexes channel {max(positions)} "
                             f"of a width-{width} dimension")
        kept_idx = torch.tensor(sorted(set(range(width)) - set(positions)), dtype=torch.long)
        per_channel = isinstance(module, nn.GroupNorm) and module.num_groups == module.num_channels
        if isinstance(module, nn.GroupNorm) and not per_channel and kept_idx.numel() % module.num_groups:
            raise ValueError(f"{path}: GroupNorm would have {kept_idx.numel()} channels, not divisible by its "
                             f"num_groups={module.num_groups} (group {group.name})")
        plans.append((path, role, module, dim, kept_idx, sorted(set(positions))))

    # 2. Heads: channels are head-major, so a head survives when it keeps at least one channel.
    new_heads = []
    for path, role, H in group.heads:
        counts = torch.bincount(keep // (C // H), minlength=H)
        alive = counts[counts > 0]
        if not bool((alive == alive[0]).all()):
            raise ValueError(f"group {group.name}: keep leaves unequal head widths {counts.tolist()} in {path}")
        new_heads.append((path, role, int((counts > 0).sum())))

    # 3. Mutate: slice parameters and grads, update the sliced layers' own width attributes.
    for path, role, module, dim, kept_idx, _ in plans:
        _slice_parameter(module, "weight", dim, kept_idx, keep_grads)
        if dim == 0:  # out rows and norm channels carry a bias; an input dimension (or an Embedding's) does not
            _slice_parameter(module, "bias", 0, kept_idx, keep_grads)
        if isinstance(module, nn.GroupNorm) and module.num_groups == module.num_channels:
            module.num_groups = kept_idx.numel()  # a per-channel norm (one channel per group) stays per-channel
        set_role_width(module, path, role, kept_idx.numel())

    # 4. Offsets: every member on a shortened dimension moves left by the removed positions below it.
    shortened = {(path, role): positions for path, role, *_, positions in plans}
    seen: set[int] = set()
    for g in [group, *others]:
        if id(g) in seen:
            continue
        seen.add(id(g))
        for j, m in enumerate(g.members):
            positions = shortened.get((m.module, m.role))
            if positions:
                shift = sum(p < m.offset for p in positions)
                if shift:
                    g.members[j] = dataclasses.replace(m, offset=m.offset - shift)

    # 5. The group now describes the pruned space: fewer heads means proportionally fewer blocks.
    if group.heads and new_heads[0][2] != group.heads[0][2] and group.blocks % group.heads[0][2] == 0:
        group.blocks = group.blocks // group.heads[0][2] * new_heads[0][2]
    group.heads = new_heads
    group.size = keep.numel()


def apply_keeps(model: nn.Module, groups: Sequence[Group], keep_per_group: Mapping[int, torch.Tensor], *,
                keep_grads: bool = True) -> None:
    """Cut precomputed keep sets {group index: keep indices}. The keep indices refer to each group's channels
    (not to member offsets), so computing all of them on the dense model and applying them here in any order
    is the same as one pass with the original offsets."""
    for i in sorted(keep_per_group):
        g = groups[i]
        if not g.prunable and len(keep_per_group[i]) < g.size:
            raise ValueError(f"group {i} ({g.name}) is protected ({g.protected}) and cannot lose channels")
        prune_group(model, g, keep_per_group[i], keep_grads=keep_grads, others=groups)


# ---------------------------------------------------------------------------------------------------
# Attributes of other modules (see the module docstring for the rule)

HEAD_ATTRS = ("num_heads", "heads", "n_heads", "num_attention_heads")
WIDTH_ATTRS = ("in_channels", "channels", "out_channels", "inner_dim")
_LAYERS = (nn.Conv2d, nn.Linear, nn.Embedding, *NORMS)  # their own width attributes are set by prune_group


def _resolve_attn_scale(model: nn.Module, attn_scale: str | None) -> str | None:
    mode = attn_scale if attn_scale is not None else getattr(getattr(model, "config", None), "attn_scale", None)
    if mode not in (None, "pruned", "dense"):
        raise ValueError(f"attn_scale must be 'pruned' or 'dense', got {mode!r}")
    return mode


def plan_attributes(model: nn.Module, analysis: Analysis, keeps: Mapping[int, np.ndarray], *,
                    attn_scale: str | None = None) -> list[tuple[str, str, object, object]]:
    """The attribute updates that keeping ``keeps`` (dense group coordinates) implies, as
    (module path, attribute, old value, new value), without changing anything."""
    trace, mode = analysis.trace, _resolve_attn_scale(model, attn_scale)
    modules = dict(model.named_modules())
    alive = analysis.alive(keeps)
    plan = []

    def change(path: str, attr: str, traced: int, new: object) -> None:
        value = getattr(modules[path], attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value == traced and new != traced:
            plan.append((path, attr, value, new))

    for path, (in_v, out_v) in trace.module_io.items():
        if path not in modules or isinstance(modules[path], _LAYERS):
            continue
        for attr, v in (("in_channels", in_v), ("channels", in_v), ("out_channels", out_v)):
            if v is not None:
                change(path, attr, len(v), analysis.new_width(v, alive))
    for path, (qk, H) in trace.attention.items():
        if path not in modules:
            continue
        kept = analysis.kept_mask(qk, alive).reshape(H, -1)  # head-major: (heads, head width)
        new_H, width = int(kept.any(1).sum()), int(kept.sum())
        for attr in HEAD_ATTRS:
            change(path, attr, H, new_H)
        change(path, "inner_dim", len(qk), width)
        scale = getattr(modules[path], "scale", None)
        traced_scale = (len(qk) // H) ** -0.5
        if mode == "pruned" and isinstance(scale, float) and abs(scale - traced_scale) <= 1e-9 * traced_scale \
                and width != len(qk):
            plan.append((path, "scale", scale, (width // new_H) ** -0.5))  # 1/sqrt(d_k), d_k the pruned width
    return plan


def update_attributes(model: nn.Module, analysis: Analysis, keeps: Mapping[int, np.ndarray], *,
                      attn_scale: str | None = None) -> list[tuple[str, str, object, object]]:
    """Apply ``plan_attributes``; returns the changes made."""
    plan = plan_attributes(model, analysis, keeps, attn_scale=attn_scale)
    for path, attr, _, new in plan:
        setattr(model.get_submodule(path), attr, new)
    return plan


def finalize(model: nn.Module) -> nn.Module:
    """After surgery: record the new widths in the config (``model.config = config.with_widths(model.widths())``
    for a model that has both, i.e. our UNet; the config is frozen, so it is replaced, not edited),
    then ``check_consistency``. Returns the model."""
    config = getattr(model, "config", None)
    if hasattr(config, "with_widths") and callable(getattr(model, "widths", None)):
        model.config = config.with_widths(model.widths())
    check_consistency(model)
    return model
