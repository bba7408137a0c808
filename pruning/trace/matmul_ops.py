"""Contractions: the rules for matmul, einsum and F.scaled_dot_product_attention.

Each op is written in einsum letters and handed to ``_contract``: operands labelled on the same letters
(q^T k) get their channels tied; a single labelled operand (softmax(w) v) passes its channels through;
labelled letters that are batch letters of the other operand (heads) become equal-removal blocks. Same
rule protocol as ``pruning/trace/ops.py``; ``MATMUL_RULES`` maps the three categories to their rules.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from pruning.trace.record import BlockConstraint, Call, Labels, Recorder


def _contract(tr: Recorder, c: Call, ops: list[tuple[tuple[int, ...], Labels | None]], letters: list[str],
              out_letters: str) -> Labels | None:
    """Tensor contraction in einsum letters (matmul, einsum, attention).

    Both operands labelled on the same letters (q^T k over the head width d, batched over heads h):
    their channels are tied; the contracted letters leave, the head letters become a plain index, and
    the channels form nh equal blocks (role "qk"). One operand labelled, its labels kept in the output
    (softmax(w) applied to v): channels pass through; labelled letters the other operand also has
    (heads) make equal blocks (role "v"). Contracting a channel dim against an unlabelled tensor (a
    linear map written as a matmul) is an error.
    """
    size: dict[str, int] = {}
    for (shape, _), lets in zip(ops, letters):
        for l, s in zip(lets, shape):
            size[l] = max(size.get(l, 1), s)
    lab = [set() if L is None else {l for l, m, s in zip(lets, L.mask, shape) if m and s == size[l]}
           for (shape, L), lets in zip(ops, letters)]

    def joint(i: int, order: list[str]) -> np.ndarray:
        mine = [l for l in letters[i] if l in lab[i]]
        return ops[i][1].array.reshape([size[l] for l in mine]).transpose([mine.index(l) for l in order])

    def place(i: int) -> Labels:
        order = [l for l in out_letters if l in lab[i]]
        shape = [size[l] if l in lab[i] else 1 for l in out_letters]
        return Labels(joint(i, order).reshape(shape), tuple(l in lab[i] for l in out_letters))

    who = [i for i in range(len(ops)) if lab[i]]
    if not who:
        return None
    if len(who) > 2 or (len(who) == 2 and lab[who[0]] != lab[who[1]]):
        raise c.fail("operands carry channel labels on different axes (an outer product of channel spaces)")
    i = who[0]
    order = [l for l in letters[i] if l in lab[i]]
    contracted = [l for l in order if l not in out_letters]
    kept = [l for l in order if l in out_letters]
    if len(who) == 2:
        tr.union(joint(i, order), joint(who[1], order))
        if not contracted:
            return place(i)
        qk = joint(i, kept + contracted).ravel()  # head-major: (heads, head width)
        tr.qk_labels[c.where] = qk
        heads = math.prod(size[l] for l in kept)
        tr.attention.setdefault(c.where, (qk, heads))
        # The head count is read from the traced shapes; one head (blocks = 1) adds no removal constraint.
        tr.blocks.append(BlockConstraint("heads", c.where, qk, heads, "qk"))
        return None
    others = {l for j, lets in enumerate(letters) if j != i for l, s in zip(lets, ops[j][0]) if s > 1}
    if contracted:
        if set(contracted) & others:
            raise c.fail("contracts a channel dim with a tensor that has no channel labels "
                         "(a linear map written as a matmul? use nn.Linear)")
        if kept:
            raise c.fail(f"sums over part of the channel dims {order}")
        return None
    shared = [l for l in order if l in others]
    per_head = [l for l in order if l not in others]
    v = joint(i, shared + per_head).ravel()  # head-major
    if per_head and len(ops) > 1:
        tr.blocks.append(BlockConstraint("heads", c.where, v, math.prod(size[l] for l in shared), "v"))
    qk = tr.qk_labels.pop(c.where, None)
    if tr.attn_grouping == "joint" and qk is not None and len(ops) > 1:
        # The paper's pruner ties every operand of a matmul index by index, so the attention weights applied
        # to v carry q/k's channels on to v: q, k, v and proj_out's input become one space. Widths must agree.
        if qk.shape != v.shape:
            raise c.fail(f"attn_grouping 'joint' ties v ({v.size} channels) to q/k ({qk.size}), but they differ; "
                         "use attn_grouping 'split'")
        tr.union(qk, v)
    return place(i)


def _batch_letters(*ndims: int) -> str:
    return "ABCDEFGH"[:max(0, *ndims)]


def _matmul(tr: Recorder, c: Call) -> None:
    a, b = (c.args[1], c.args[0]) if c.name == "rmatmul" else (c.args[0], c.args[1])
    core_a, core_b = ("k" if a.dim() == 1 else "nk"), ("k" if b.dim() == 1 else "km")
    batch = _batch_letters(a.dim() - len(core_a), b.dim() - len(core_b))
    la = batch[len(batch) - (a.dim() - len(core_a)):] + core_a
    lb = batch[len(batch) - (b.dim() - len(core_b)):] + core_b
    lo = batch + ("n" if a.dim() > 1 else "") + ("m" if b.dim() > 1 else "")
    tr.set(c.out, _contract(tr, c, [(tuple(a.shape), tr.get(a)), (tuple(b.shape), tr.get(b))], [la, lb], lo))


def _einsum(tr: Recorder, c: Call) -> None:
    eq, ops = c.args[0].replace(" ", ""), list(c.args[1:])
    if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
        ops = list(ops[0])
    if "..." in eq:
        raise c.fail("einsum with '...' on channel-labelled tensors is not supported")
    lhs, _, rhs = eq.partition("->")
    letters = lhs.split(",")
    if not _:
        rhs = "".join(sorted(l for l in set(lhs) - {","} if lhs.count(l) == 1))
    tr.set(c.out, _contract(tr, c, [(tuple(t.shape), tr.get(t)) for t in ops], letters, rhs))


def _attention(tr: Recorder, c: Call) -> None:
    """F.scaled_dot_product_attention(q, k, v) = softmax(q k^T * scale) v, as two contractions."""
    q, k, v = c.arg(0, "query"), c.arg(1, "key"), c.arg(2, "value")
    if tr.get(c.arg(3, "attn_mask")) is not None:
        raise c.fail("a channel-labelled attention mask")
    batch = _batch_letters(q.dim() - 2, k.dim() - 2, v.dim() - 2)
    lets = lambda t, core: batch[len(batch) - (t.dim() - 2):] + core  # noqa: E731
    if _contract(tr, c, [(tuple(q.shape), tr.get(q)), (tuple(k.shape), tr.get(k))], [lets(q, "le"), lets(k, "se")],
                 batch + "ls") is not None:
        raise c.fail("q and k carry channel labels only on batch dims")
    w_shape = tuple(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])) + (q.shape[-2], k.shape[-2])
    tr.set(c.out, _contract(tr, c, [(w_shape, None), (tuple(v.shape), tr.get(v))], [batch + "ls", lets(v, "sf")],
                            batch + "lf"))


MATMUL_RULES: dict[str, Callable[[Recorder, Call], None]] = {
    "matmul": _matmul, "einsum": _einsum, "attention": _attention,
}
