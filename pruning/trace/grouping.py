"""From a channel trace to coupling groups: union-find over channel labels, then maximal ordered runs.

``pruning/trace/tracer.py`` runs one forward pass and hands over a ``Trace``: every channel of every prunable
layer's output (and of the network input, and of tensors no layer produced) got an integer *label*; ops
that tie channels together (a residual add, q.k contracting over the head width) recorded ``unions`` of
label arrays; every Conv2d/Linear/GroupNorm/LayerNorm/Embedding call recorded its *member vector*, the
labels along its channel dimension for role "in"/"out"/"norm" (``pruning/members.py``).

Grouping, in three steps:

1. **Classes.** Connected components of the unions. A class is one channel of some group: all the
   weight slices that have to go together when that channel is removed.
2. **Groups.** A group is a maximal run of classes that appears, whole and in the same order, in every
   member vector that touches it. Class c is linked to class s when *every* occurrence of c is followed
   by s and every occurrence of s is preceded by c; groups are the chains of links. A chain never closes
   into a cycle (the last element of any vector has no successor), so this always terminates.
   Each occurrence of a chain in a member vector is one ``Member`` with its offset: a decoder
   ``cat([h, skip])`` gives the consumer one member per part, and ``cat([x, x])`` two members of one
   group.
3. **Constraints.** Equal-removal blocks (GroupNorm groups, attention heads, reshapes that split the
   channel dim) are recorded as label vectors cut into equal blocks of ``s`` channels, then cut into
   group runs. When every run is the same group and sits on block boundaries (o % s == n % s == 0), the
   group gets ``blocks = n / s`` (several constraints combine by lcm, which must divide C). Heads or
   splits spanning several groups would need equal removal *across* groups: those groups are protected.
   A GroupNorm over parts of several groups (a decoder's cat([h, skip])) keeps its channel count
   divisible by ``num_groups`` only if every part loses a multiple of it, so each part's group gets
   ``lcm(n / s, num_groups)`` blocks, or 1 x num_groups where the norm's groups straddle the parts:
   such a norm is *regrouped* (reported in ``Analysis.regrouped_norms``; channel-to-group membership
   changes, as in the paper's code, whose ``ch_groups = num_groups`` for every group with a GroupNorm
   gives the same blocks).

Worked example (the tiny U-Net's first up block normalises cat([h (16 ch), skip (8 ch)]) with GroupNorm(2):
blocks of 12 channels; the 16-channel run at offset 0 ends inside block 1, so ``up.0.block.0.norm1`` is
regrouped, as the paper's code does to 2 of the 51 norms of the CIFAR-10 U-Net, e.g. 384 = 256 + 128 in 12s).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np
from torch import nn

from pruning.groups import Group, Member
from pruning.members import check_member_widths
from pruning.trace.canonical_order import ddim_order
from pruning.trace.record import BlockConstraint, Trace
from pruning.trace.tracer import trace

# ---------------------------------------------------------------------------------------------------
# What the tracer hands over


@dataclass(frozen=True)
class RegroupedNorm:
    """A GroupNorm whose groups straddle the channel groups it normalises (``parts``: (offset, size) of
    each group run in the norm's channels): pruning changes which channels share a norm group."""

    module: str
    num_groups: int
    channels: int
    parts: tuple[tuple[int, int], ...]

    def __str__(self) -> str:
        cuts = " + ".join(str(size) for _, size in self.parts)
        size = self.channels // self.num_groups
        return f"{self.module}: {self.channels} = {cuts} channels in {self.num_groups} groups of {size}"


@dataclass
class Analysis:
    """``build_groups``' result with its report: the groups, the regrouped norms and the trace.

    paper_order: the indices of the prunable groups in the order the paper's pruner visits them (the first
                 Conv2d/Linear producer of each group in the layer walk; groups it never meets follow in trace
                 order). order_source says which walk: "ddim" (layers with the DDIM codebase's names: its
                 graph, whatever implementation is traced, ``canonical_order.py``) or "autograd" (the model's own).
    classes, chains: each label's class and each group's classes in channel order (``new_width`` reads them).
    """

    groups: list[Group]
    regrouped_norms: list[RegroupedNorm] = field(default_factory=list)
    trace: Trace | None = None
    paper_order: list[int] = field(default_factory=list)
    roots: dict[int, str] = field(default_factory=dict)  # the layer that brings each group up in that order
    order_source: str = "autograd"
    classes: np.ndarray | None = None
    chains: list[np.ndarray] = field(default_factory=list)

    def alive(self, keeps: Mapping[int, Any]) -> np.ndarray:
        """Per class: does it survive when group i keeps the channels ``keeps[i]`` (dense group coordinates;
        a group without an entry keeps everything)? Compute once, then ask ``kept_mask`` / ``new_width``."""
        alive = np.ones(len(self.classes), dtype=bool)
        for g, keep in keeps.items():
            gone = np.ones(len(self.chains[g]), dtype=bool)
            gone[np.asarray(keep, dtype=np.int64)] = False
            alive[self.chains[g][gone]] = False
        return alive

    def kept_mask(self, labels: np.ndarray, alive: np.ndarray) -> np.ndarray:
        """Which channels of a traced channel vector ``labels`` remain, given ``alive = self.alive(keeps)``."""
        return alive[self.classes[np.asarray(labels)]]

    def new_width(self, labels: np.ndarray, alive: np.ndarray) -> int:
        """How many channels of ``labels`` remain (``kept_mask``)."""
        return int(self.kept_mask(labels, alive).sum())


# ---------------------------------------------------------------------------------------------------
# Step 1: classes


def components(n: int, unions: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Connected components of the label graph: class id (the smallest label of the class) per label.

    Vectorised hooking and pointer jumping (Shiloach-Vishkin style): every round hooks each edge's larger
    root under the smaller one, then flattens the trees; O(log n) rounds. Parents only decrease, so it
    terminates.
    """
    parent = np.arange(n)
    if not unions:
        return parent
    a = np.concatenate([u for u, _ in unions])
    b = np.concatenate([v for _, v in unions])
    while True:
        ra, rb = parent[a], parent[b]
        if np.array_equal(ra, rb):
            return parent
        low = np.minimum(ra, rb)
        np.minimum.at(parent, ra, low)
        np.minimum.at(parent, rb, low)
        while True:  # pointer jumping until every label points at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


# ---------------------------------------------------------------------------------------------------
# Step 2: groups as maximal consistent runs


def chains(vectors: list[np.ndarray], n: int) -> list[np.ndarray]:
    """Cut the classes that occur in ``vectors`` into maximal runs that every vector holds whole.

    Returns the chains (arrays of class ids, in channel order), ordered by their smallest class id, i.e.
    by first appearance in the forward pass.
    """
    cur = np.concatenate(vectors)
    nxt = np.concatenate([np.append(v[1:], -1) for v in vectors])  # -1: end of a vector
    prv = np.concatenate([np.insert(v[:-1], 0, -1) for v in vectors])
    succ_lo, succ_hi = np.full(n, n), np.full(n, -2)
    pred_lo, pred_hi = np.full(n, n), np.full(n, -2)
    np.minimum.at(succ_lo, cur, nxt)
    np.maximum.at(succ_hi, cur, nxt)
    np.minimum.at(pred_lo, cur, prv)
    np.maximum.at(pred_hi, cur, prv)
    # A link c -> s needs a single successor for c and a single predecessor for s, each the other.
    succ = np.where((succ_lo == succ_hi) & (succ_lo >= 0), succ_lo, -1)
    pred = np.where((pred_lo == pred_hi) & (pred_lo >= 0), pred_lo, -1)
    linked_from = np.zeros(n, dtype=bool)
    ok = succ >= 0
    ok[ok] = pred[succ[ok]] == np.nonzero(ok)[0]
    linked_from[succ[ok]] = True
    out = []
    for c in np.unique(cur):
        if linked_from[c]:
            continue  # not the head of its chain
        run = [c]
        while ok[run[-1]]:
            run.append(succ[run[-1]])
        out.append(np.array(run))
    out.sort(key=lambda r: int(r.min()))
    return out


class _Runs:
    """Cuts class vectors into group runs: (group index, offset, size, whole) tuples."""

    def __init__(self, groups: list[np.ndarray], n: int):
        self.groups = groups
        self.group_of = np.full(n, -1)
        self.pos = np.full(n, -1)
        for g, chain in enumerate(groups):
            self.group_of[chain] = g
            self.pos[chain] = np.arange(len(chain))

    def __call__(self, v: np.ndarray) -> list[tuple[int, int, int, bool]]:
        runs, p = [], 0
        while p < len(v):
            g = int(self.group_of[v[p]])
            if g < 0:  # a class in no member vector (no prunable weight): not part of any group
                p += 1
                continue
            size = len(self.groups[g])
            whole = self.pos[v[p]] == 0 and np.array_equal(v[p:p + size], self.groups[g])
            runs.append((g, p, size if whole else 1, bool(whole)))
            p += size if whole else 1
        return runs


# ---------------------------------------------------------------------------------------------------
# Step 3: members, constraints, protection


def group_trace(trace: Trace, *, ignored: tuple[str, ...] = (),
                root_types: tuple[type, ...] = (nn.Conv2d, nn.Linear)) -> Analysis:
    """Coupling groups of ``trace`` (see the module docstring). ``ignored``: module paths (and their
    sub-modules) whose output channels are never pruned. ``root_types``: a group needs an "out" member of
    one of these types to be prunable."""
    n = trace.num_labels
    cls = components(n, trace.unions)
    vectors = [cls[v] for _, _, v in trace.members]
    chain_list = chains(vectors, n) if vectors else []
    runs = _Runs(chain_list, n)
    groups = [Group(size=len(c), members=[]) for c in chain_list]
    reasons: list[list[str]] = [[] for _ in groups]

    def protect(g: int, why: str) -> None:
        if why not in reasons[g]:
            reasons[g].append(why)

    for (module, role, _), v in zip(trace.members, vectors):
        for g, offset, _, whole in runs(v):
            if not whole:
                raise RuntimeError(f"tracer bug: member {module}.{role} holds part of group {g}")
            member = Member(module, role, offset)
            if member not in groups[g].members:
                groups[g].members.append(member)

    # Equal-removal blocks, in the constraint's own channel coordinates (blocks of s channels).
    def add_blocks(g: int, b: int, reason: str, strict: bool) -> None:
        group = groups[g]
        if b == 1:
            return
        if group.size % math.lcm(group.blocks, b):
            if strict:
                raise ValueError(f"group {group.name} (C={group.size}): the constraints "
                                 f"{'; '.join(group.block_reasons + [reason])} need a block count that does not "
                                 f"divide C")
            protect(g, f"{reason}: {b} blocks do not divide {group.size} channels")
            return
        group.blocks = math.lcm(group.blocks, b)
        if reason not in group.block_reasons:
            group.block_reasons.append(reason)

    regrouped = []
    for con in trace.blocks:
        v = cls[con.labels]
        s = len(v) // con.blocks
        cut = runs(v)
        distinct = {g for g, *_ in cut}
        aligned = [whole and offset % s == 0 and size % s == 0 for _, offset, size, whole in cut]
        where = _at(con.where)
        for g in distinct if con.kind == "heads" else ():
            if (con.where, con.role, con.blocks) not in groups[g].heads:
                groups[g].heads.append((con.where, con.role, con.blocks))
        exact = len(distinct) == 1 and all(aligned)
        if con.kind != "norm" and not exact:
            # Every head / split block keeps the same width: across channel groups that is not expressible.
            for g in distinct:
                protect(g, f"{con.kind} blocks of {where} span several channel groups")
            continue
        if not all(aligned):
            parts = tuple((offset, size) for _, offset, size, _ in _merge_pieces(cut))
            regrouped.append(RegroupedNorm(con.where, con.blocks, len(v), parts))
        for (g, offset, size, whole), ok in zip(cut, aligned):
            if not whole:
                protect(g, f"GroupNorm {where} covers part of a channel group")
            elif exact:  # the norm's groups lie inside this group: equal removal per norm group
                add_blocks(g, size // s, _block_reason(con, size // s), strict=True)
            else:
                # Parts from several groups (or straddling): removal in multiples of num_groups keeps
                # num_channels % num_groups == 0 (the paper's ch_groups = num_groups for every GN group).
                what = "over parts of several channel groups" if ok else "regrouped: its groups straddle channel groups"
                add_blocks(g, math.lcm(size // s if ok else 1, con.blocks),
                           f"{where}: GroupNorm({con.blocks}) {what}", strict=False)
    for con in trace.parts:
        cuts = [[(g, size) for g, _, size, _ in runs(cls[p])] for p in con.parts]
        if any(c != cuts[0] for c in cuts) or any(not whole for p in con.parts for *_, whole in runs(cls[p])):
            for g in {g for c in cuts for g, _ in c}:
                protect(g, f"{con.what} at {_at(con.where)} into parts of different channel groups")
    for con in trace.fixed:
        for g, *_ in runs(cls[con.labels]):
            protect(g, f"{con.what} at {_at(con.where)}")

    # Protection by where the channels come from or go to.
    def protect_labels(labels: np.ndarray, why: str) -> None:
        for g in np.unique(runs.group_of[cls[labels]]):
            if g >= 0:
                protect(int(g), why)

    for src in trace.sources:
        labels = np.arange(src.start, src.start + src.size)
        if src.kind == "input":
            protect_labels(labels, "network input")
        elif src.kind == "constant":
            protect_labels(labels, f"no prunable producer ({src.where})")
        elif any(src.where == i or src.where.startswith(i + ".") for i in ignored):
            protect_labels(labels, f"ignored layer {src.where}")
    protect_labels(trace.outputs, "network output")
    for g, group in enumerate(groups):
        produced = any(m.role == "out" and isinstance(trace.layers[m.module], root_types) for m in group.members)
        if not reasons[g] and not produced:
            protect(g, "no producer among root types (" + ", ".join(t.__name__ for t in root_types) + ")")
        group.protected = "; ".join(reasons[g])
    check_member_widths(groups, trace.layers)
    return Analysis(groups=groups, regrouped_norms=regrouped, trace=trace,
                    classes=cls, chains=chain_list, **_paper_order(groups, trace, root_types))


def _paper_order(groups: list[Group], trace: Trace, root_types: tuple[type, ...]) -> dict:
    """Prunable groups in the order the paper's pruner builds them (``pruning/trace/autograd_order.py``): walk
    the layers in its graph-table order; a root-type layer whose output space is a group not yet visited
    brings that group up. Groups it never meets follow in trace order. DDIM layer names: that code's graph."""
    producer = {m.module: g for g, group in enumerate(groups) for m in group.members if m.role == "out"}
    canonical = ddim_order(p for p, m in trace.layers.items() if isinstance(m, (nn.Conv2d, nn.Linear, nn.GroupNorm)))
    roots: dict[int, str] = {}
    for path in canonical if canonical is not None else trace.autograd_order:
        g = producer.get(path)
        if g is not None and g not in roots and isinstance(trace.layers.get(path), root_types):
            roots[g] = path
    order = [g for g in roots if groups[g].prunable]
    order += [g for g, group in enumerate(groups) if group.prunable and g not in roots]
    return {"paper_order": order, "roots": {g: roots.get(g, groups[g].name) for g in order},
            "order_source": "autograd" if canonical is None else "ddim"}


def _at(where: str) -> str:
    return where or "<model>"


def _block_reason(con: BlockConstraint, k: int) -> str:
    if con.kind == "norm":
        return f"{con.where}: {k} GroupNorm groups"
    if con.kind == "heads":
        return f"{_at(con.where)}: {k} heads ({con.role})"
    return f"{_at(con.where)}: reshape into {k} blocks"


def _merge_pieces(runs: list[tuple[int, int, int, bool]]) -> list[tuple[int, int, int, bool]]:
    """Join consecutive single-channel pieces of one group (a partial run) for readable reports."""
    out: list[tuple[int, int, int, bool]] = []
    for g, offset, size, whole in runs:
        if out and not whole and not out[-1][3] and out[-1][0] == g and out[-1][1] + out[-1][2] == offset:
            out[-1] = (g, out[-1][1], out[-1][2] + size, False)
        else:
            out.append((g, offset, size, whole))
    return out


# ---------------------------------------------------------------------------------------------------
# Entry points


class LayersNotTraced(ValueError):
    """Layers with parameters that the example forward pass never ran (a branch on ``t``, an unused head):
    their channels cannot be grouped, so pruning would leave them inconsistent."""


def analyze(model: nn.Module, example_inputs: tuple, *, ignored: Iterable[str] = (),
            root_types: tuple[type, ...] = (nn.Conv2d, nn.Linear), attn_grouping: str = "split") -> Analysis:
    """``build_groups`` with its report: the regrouped GroupNorms, the paper's group order and the trace.

    Every module with parameters must run during the trace unless it (or a module above it) is ``ignored``:
    a layer behind a branch the example inputs do not take would otherwise keep its dense widths while the
    layers around it are pruned. ``attn_grouping``: "split" (q/k apart from v) or "joint" (the paper's code).
    """
    ignored = tuple(ignored)
    names = dict(model.named_modules())
    unknown = [i for i in ignored if i not in names]
    if unknown:
        raise ValueError(f"ignored names modules the model does not have: {unknown}")
    traced = trace(model, example_inputs, attn_grouping=attn_grouping)
    idle = [name for name, m in names.items()
            if next(m.parameters(recurse=False), None) is not None and name not in traced.module_io
            and not any(name == i or name.startswith(i + ".") for i in ignored)]
    if idle:
        raise LayersNotTraced(f"{len(idle)} layer(s) with parameters never ran on the example inputs: "
                              f"{', '.join(idle[:8])}{' ...' if len(idle) > 8 else ''}; run a forward that reaches "
                              "them, or pass them in ignored")
    return group_trace(traced, ignored=ignored, root_types=tuple(root_types))


def build_groups(model: nn.Module, example_inputs: tuple, *, ignored: Iterable[str] = (),
                 root_types: tuple[type, ...] = (nn.Conv2d, nn.Linear), attn_grouping: str = "split") -> list[Group]:
    """The coupling groups of ``model`` (pruning/groups.py), traced from one forward pass on
    ``example_inputs``, in order of first appearance. Groups touching the network input or output, channels
    no prunable layer produced, or the output channels of an ``ignored`` module path are ``protected``."""
    return analyze(model, example_inputs, ignored=ignored, root_types=root_types, attn_grouping=attn_grouping).groups
