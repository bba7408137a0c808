"""Physical channel removal, and every piece of bookkeeping that goes with it.

``prune_group`` slices each member of a group (weights, biases, ``.grad``) and updates the module
attributes that describe widths; this file owns ALL such updates (STYLE.md practice 6). Afterwards
``finalize`` writes the new width table into ``model.config`` and ``check_consistency`` re-reads every module.

Offsets move. If a consumer reads cat([a, b]) and a's group is pruned first, b's slice of the consumer's
input now starts earlier. ``prune_group`` therefore also rewrites the offsets of every member (in the
pruned group and in ``others``) that indexes a dimension it shortened: new offset = old offset minus the
number of removed positions below it. Groups are updated IN PLACE (size, offsets, blocks) so that they
keep describing the current model, and a later group can be scored and pruned lazily, as the paper code
does (diffpruning.md 2.3, last bullet).

Attention: for a group with ``heads`` the channels are head-major. If whole heads lose all their channels
the module's ``num_heads`` drops; ``scale`` becomes 1/sqrt(new head width) when ``attn_scale`` (argument,
else ``model.config.attn_scale``) is "pruned", and stays when it is "dense" (or when the model has no config).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from pruning.groups import Group
from pruning.select import _head_clusters, select_groups, select_local

_WIDTH_ATTR = {  # (type, role) -> (weight dim, attribute holding the width)
    (nn.Conv2d, "out"): (0, "out_channels"),
    (nn.Conv2d, "in"): (1, "in_channels"),
    (nn.Linear, "out"): (0, "out_features"),
    (nn.Linear, "in"): (1, "in_features"),
    (nn.GroupNorm, "norm"): (0, "num_channels"),
}


def _dim_info(module: nn.Module, path: str, role: str) -> tuple[int, str]:
    for (kind, r), info in _WIDTH_ATTR.items():
        if r == role and isinstance(module, kind):
            if isinstance(module, nn.Conv2d) and module.groups != 1:
                raise NotImplementedError(f"{path}: grouped convolutions (groups={module.groups}) are not supported")
            return info
    raise TypeError(f"cannot prune {path} ({type(module).__name__}) as role {role!r}")


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


def attention_heads(model: nn.Module) -> dict[str, int]:
    """{module path: num_heads} for every module that has a ``num_heads`` attribute (attention blocks)."""
    return {name: int(m.num_heads) for name, m in model.named_modules() if hasattr(m, "num_heads")}


def _resolve_attn_scale(model: nn.Module, attn_scale: str | None) -> str | None:
    mode = attn_scale if attn_scale is not None else getattr(getattr(model, "config", None), "attn_scale", None)
    if mode not in (None, "pruned", "dense"):
        raise ValueError(f"attn_scale must be 'pruned' or 'dense', got {mode!r}")
    return mode


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
    if bool((nonzero == nonzero[0]).all()) and (group.heads or bool((counts > 0).all())):
        return
    raise ValueError(f"group {group.name}: keep takes {counts.tolist()} channels from its {group.blocks} blocks; "
                     f"every block ({'; '.join(group.block_reasons) or 'GroupNorm groups / heads'}) must keep the same number")


def prune_group(model: nn.Module, group: Group, keep: torch.Tensor, *, keep_grads: bool = True,
                others: Iterable[Group] = (), attn_scale: str | None = None,
                heads_before: Mapping[str, int] | None = None) -> None:
    """Remove every channel of ``group`` not in ``keep`` (indices in [0, group.size)) from all members.

    Conv2d/Linear "out": weight dim 0 and bias; "in": weight dim 1 (only [offset, offset + C) of the input
    dimension is touched: a concat consumer keeps the other parts); GroupNorm "norm": weight, bias,
    num_channels (num_groups unchanged; a width not divisible by it is an error naming the norm; a
    per-channel norm, num_groups == num_channels, stays per-channel).
    ``.grad`` is sliced too when ``keep_grads``. Updates ``group`` in place (size, member offsets, blocks)
    and the offsets of members of ``others`` on the shortened dimensions (see the module docstring).
    ``heads_before``: head counts before this round of pruning ({path: heads}); needed when two groups of
    one attention module lose whole heads one after the other (``prune`` passes it).
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
        dim, attr = _dim_info(module, path, role)
        width = getattr(module, attr)
        if max(positions) >= width:
            raise ValueError(f"{path} ({role}): group {group.name} indexes channel {max(positions)} "
                             f"of a width-{width} dimension")
        kept_idx = torch.tensor(sorted(set(range(width)) - set(positions)), dtype=torch.long)
        per_channel = isinstance(module, nn.GroupNorm) and module.num_groups == module.num_channels
        if isinstance(module, nn.GroupNorm) and not per_channel and kept_idx.numel() % module.num_groups:
            raise ValueError(f"{path}: GroupNorm would have {kept_idx.numel()} channels, not divisible by its "
                             f"num_groups={module.num_groups} (group {group.name})")
        plans.append((path, role, module, dim, attr, kept_idx, sorted(set(positions))))

    # 2. Head bookkeeping (validated before anything is mutated).
    head_updates = []
    for path, role in group.heads:
        module = model.get_submodule(path)
        H = (heads_before or {}).get(path, module.num_heads)
        if C % H:
            raise ValueError(f"group {group.name}: {C} channels do not split into the {H} heads of {path}")
        counts = torch.bincount(keep // (C // H), minlength=H)
        alive = counts[counts > 0]
        if not bool((alive == alive[0]).all()):
            raise ValueError(f"group {group.name}: keep leaves unequal head widths {counts.tolist()} in {path}")
        new_H = int((counts > 0).sum())
        if module.num_heads not in (H, new_H):
            raise ValueError(f"{path}: num_heads is {module.num_heads}, expected {H} (before) or {new_H} (after)")
        head_updates.append((path, role, module, H, new_H))

    # 3. Mutate: slice parameters and grads, update width attributes.
    for path, role, module, dim, attr, kept_idx, _ in plans:
        _slice_parameter(module, "weight", dim, kept_idx, keep_grads)
        if dim == 0:  # out rows and GroupNorm channels carry a bias; an input dimension does not
            _slice_parameter(module, "bias", 0, kept_idx, keep_grads)
        if isinstance(module, nn.GroupNorm) and module.num_groups == module.num_channels:
            module.num_groups = kept_idx.numel()  # a per-channel norm (one channel per group) stays per-channel
        setattr(module, attr, kept_idx.numel())

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

    # 5. Heads and attention scale; then the group itself describes the pruned space.
    mode = _resolve_attn_scale(model, attn_scale)
    for path, role, module, H, new_H in head_updates:
        module.num_heads = new_H
        if mode == "pruned":
            _refresh_scale(module, role, keep.numel())
    if head_updates and group.blocks % head_updates[0][3] == 0:
        H, new_H = head_updates[0][3], head_updates[0][4]
        group.blocks = group.blocks // H * new_H
    group.size = keep.numel()


def _refresh_scale(module: nn.Module, role: str, group_size: int) -> None:
    """scale = 1/sqrt(d_k), d_k = current q/k width per head (the DDPM code's int(c)**-0.5 after pruning)."""
    q = getattr(module, "q", None)
    if isinstance(q, (nn.Conv2d, nn.Linear)):
        width = q.weight.shape[0]
    elif role == "qk":
        width = group_size
    else:
        return
    module.scale = (width // module.num_heads) ** -0.5  # same expression as UNet.__init__


def prune(model: nn.Module, groups: Sequence[Group], keep_per_group: Mapping[int, torch.Tensor], *,
          keep_grads: bool = True, attn_scale: str | None = None) -> nn.Module:
    """Apply precomputed keep sets {group index: keep indices}, then ``finalize``. The keep indices refer to
    each group's channels (not to member offsets), so computing all of them on the dense model and
    applying them here in any order is the same as one pass with the original offsets."""
    heads_before = attention_heads(model)
    for i in sorted(keep_per_group):
        g = groups[i]
        if not g.prunable and len(keep_per_group[i]) < g.size:
            raise ValueError(f"group {i} ({g.name}) is protected ({g.protected}) and cannot lose channels")
        prune_group(model, g, keep_per_group[i], keep_grads=keep_grads, others=groups,
                    attn_scale=attn_scale, heads_before=heads_before)
    return finalize(model)


def prune_sequential(model: nn.Module, groups: Sequence[Group], importance: Callable[..., torch.Tensor], ratio: float, *,
                     head_mode: str = "channels", generator: torch.Generator | None = None,
                     keep_grads: bool = True, attn_scale: str | None = None) -> dict[int, torch.Tensor]:
    """The paper's schedule: for each prunable group in order, score it on the *partially pruned* model
    (``importance(model, group, generator=generator)``), select with the local rule, prune it, move on
    (diffpruning.md 2.3). With head_mode "heads", groups sharing an attention module are scored, selected
    and pruned together when the first of them comes up. Ends with ``finalize``. Returns the keep sets."""
    heads_before = attention_heads(model)
    head_groups = [i for i, g in enumerate(groups) if g.prunable and g.heads]
    clusters = _head_clusters(groups, head_groups) if head_mode == "heads" else []
    cluster_of = {i: c for c in clusters for i in c}
    keeps: dict[int, torch.Tensor] = {}
    for i, g in enumerate(groups):
        if i in keeps or not g.prunable:
            continue
        if i in cluster_of:
            members = cluster_of[i]
            scores = {j: importance(model, groups[j], generator=generator) for j in members}
            chosen = select_groups(groups, scores, ratio, head_mode="heads", num_heads=heads_before)
        else:
            chosen = {i: select_local(importance(model, g, generator=generator), g, ratio)}
        for j, keep in chosen.items():
            prune_group(model, groups[j], keep, keep_grads=keep_grads, others=groups,
                        attn_scale=attn_scale, heads_before=heads_before)
            keeps[j] = keep
    finalize(model)
    return keeps


def finalize(model: nn.Module) -> nn.Module:
    """After surgery: record the new widths in the config (``model.config = config.with_widths(model.widths())``
    for a model that has both, i.e. our UNet; the config is frozen, so it is replaced, not edited),
    then ``check_consistency``. Returns the model."""
    config = getattr(model, "config", None)
    if hasattr(config, "with_widths") and callable(getattr(model, "widths", None)):
        model.config = config.with_widths(model.widths())
    check_consistency(model)
    return model


def check_consistency(model: nn.Module) -> None:
    """Re-read every module and raise (naming each offender) if its attributes disagree with its weights:
    conv/linear widths vs weight shape, GroupNorm num_channels vs weight and num_groups, .grad shapes,
    attention q/k/v widths vs num_heads, and (attn_scale "pruned") scale = 1/sqrt(q width per head)."""
    problems = []
    mode = getattr(getattr(model, "config", None), "attn_scale", None)
    for name, m in model.named_modules():
        name = name or "<root>"
        if isinstance(m, nn.Conv2d):
            expect = (m.out_channels, m.in_channels // m.groups, *m.kernel_size)
            if tuple(m.weight.shape) != expect:
                problems.append(f"{name}: weight {tuple(m.weight.shape)} != (out, in, kh, kw) {expect}")
        elif isinstance(m, nn.Linear):
            if tuple(m.weight.shape) != (m.out_features, m.in_features):
                problems.append(f"{name}: weight {tuple(m.weight.shape)} != ({m.out_features}, {m.in_features})")
        elif isinstance(m, nn.GroupNorm):
            if m.num_channels % m.num_groups:
                problems.append(f"{name}: num_channels {m.num_channels} not divisible by num_groups {m.num_groups}")
            if m.weight is not None and m.weight.shape[0] != m.num_channels:
                problems.append(f"{name}: weight has {m.weight.shape[0]} channels, num_channels is {m.num_channels}")
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.GroupNorm)) and getattr(m, "bias", None) is not None:
            if m.bias.shape[0] != m.weight.shape[0]:
                problems.append(f"{name}: bias has {m.bias.shape[0]} entries, weight {m.weight.shape[0]} rows")
        for pname, p in m.named_parameters(recurse=False):
            if p.grad is not None and p.grad.shape != p.shape:
                problems.append(f"{name}.{pname}: grad {tuple(p.grad.shape)} != parameter {tuple(p.shape)}")
        if hasattr(m, "num_heads") and all(isinstance(getattr(m, x, None), (nn.Conv2d, nn.Linear)) for x in "qkv"):
            H, dq, dk, dv = m.num_heads, m.q.weight.shape[0], m.k.weight.shape[0], m.v.weight.shape[0]
            if dq != dk:
                problems.append(f"{name}: q width {dq} != k width {dk}")
            if dq % H or dv % H:
                problems.append(f"{name}: q/k width {dq} or v width {dv} not divisible by num_heads {H}")
            proj = getattr(m, "proj_out", None)
            if isinstance(proj, (nn.Conv2d, nn.Linear)) and proj.weight.shape[1] != dv:
                problems.append(f"{name}: proj_out reads {proj.weight.shape[1]} channels, v has {dv}")
            if mode == "pruned" and H and dq % H == 0 and not math.isclose(m.scale, (dq // H) ** -0.5, rel_tol=1e-12):
                problems.append(f"{name}: scale {m.scale} != 1/sqrt({dq // H}) (attn_scale 'pruned')")
    if problems:
        raise ValueError("inconsistent model after surgery:\n  " + "\n  ".join(problems))


def rebuild_check(model: nn.Module, example_inputs: tuple | None = None) -> nn.Module:
    """Rebuild ``type(model)(model.config)`` and load ``model.state_dict()`` strictly: the pruned model must be
    exactly "config + widths + plain state dict" (STYLE.md practice 5). Attention ``num_heads``/``scale`` must
    match too, and with ``example_inputs`` both models must give the same output (eval mode). Returns the
    rebuilt model (on the model's device)."""
    rebuilt = type(model)(model.config)
    try:
        rebuilt.load_state_dict(model.state_dict(), strict=True)
    except RuntimeError as err:
        raise ValueError(f"the pruned model does not rebuild from its config: {err}") from None
    device = next(model.parameters()).device
    rebuilt = rebuilt.to(device)
    theirs = dict(rebuilt.named_modules())
    for name, m in model.named_modules():
        if hasattr(m, "num_heads"):
            r = theirs[name]
            if r.num_heads != m.num_heads or not math.isclose(r.scale, m.scale, rel_tol=1e-12):
                raise ValueError(f"{name}: rebuilt attention has heads={r.num_heads}, scale={r.scale}; "
                                 f"pruned has heads={m.num_heads}, scale={m.scale}")
    if example_inputs is not None:
        was = model.training
        model.eval(), rebuilt.eval()
        with torch.no_grad():
            a, b = model(*example_inputs), rebuilt(*example_inputs)
        model.train(was)
        if not torch.allclose(a, b, rtol=1e-5, atol=1e-6):
            raise ValueError(f"rebuilt model output differs by {(a - b).abs().max().item():.3g}")
    return rebuilt


def reinitialize(model: nn.Module, seed: int | None = None) -> nn.Module:
    """The "scratch" baseline: ``reset_parameters()`` on every module that has one (PyTorch's default init:
    Conv/Linear kaiming-uniform(a=sqrt(5)), GroupNorm gamma=1, beta=0), as the paper's ``--pruner reinit``.
    With ``seed`` the result is deterministic and the global RNG state is left untouched. Grads are cleared."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        for m in model.modules():
            if callable(getattr(m, "reset_parameters", None)):
                m.reset_parameters()
    model.zero_grad(set_to_none=True)
    return model
