"""Where a tensor's channels sit among its dims (``Labels``), and the rules of the ops that move them.

Rules here follow the ``pruning/trace/ops.py`` protocol (one ``Call`` and the tracer in, output labels and
constraints out) for the ops that change which dims carry channels: reshape/view (a channel dim split
into heads, or merged back), permute/transpose, expand, indexing (``x[:, :, None]``), cat, stack and
split/chunk. ``SHAPE_RULES`` maps their categories to rules; the op names are in ``CATEGORIES``
(pruning/trace/ops.py); ``Labels`` itself lives in ``pruning/trace/record.py``.
"""
from __future__ import annotations

import operator
from typing import Callable

import numpy as np
import torch

from pruning.trace.record import BlockConstraint, Call, FixedConstraint, Labels, PartsConstraint, Recorder, tensors


def _reshape(tr: Recorder, c: Call) -> None:
    """reshape/view/flatten/(un)squeeze, from the real in/out shapes. The channel dim may be split
    (C -> (nh, d): an equal-removal constraint of nh blocks) or merged back, but never merged with
    non-channel dims (flattening (C, H, W) before a Linear)."""
    x, y = tensors((c.args, c.kwargs))[0], c.out
    L = tr.get(x)
    if L is None:
        return
    if x.numel() == 0:
        raise c.fail("reshapes an empty channel-labelled tensor")
    ins = [d for d, s in enumerate(x.shape) if s != 1]
    outs = [d for d, s in enumerate(y.shape) if s != 1]
    mask, split, i, j = [False] * y.dim(), False, 0, 0
    while i < len(ins):  # blocks of dims with equal products: (C) <-> (nh, d), (H, W) <-> (N)
        I, O = [ins[i]], [outs[j]]
        p_in, p_out = x.shape[ins[i]], y.shape[outs[j]]
        i, j = i + 1, j + 1
        while p_in != p_out:
            if p_in < p_out:
                I.append(ins[i]); p_in *= x.shape[ins[i]]; i += 1
            else:
                O.append(outs[j]); p_out *= y.shape[outs[j]]; j += 1
        labelled = [L.mask[d] for d in I]
        if any(labelled) and not all(labelled):
            raise c.fail(f"merges channel dims with non-channel dims: {tuple(x.shape)} -> {tuple(y.shape)}")
        if any(labelled):
            for d in O:
                mask[d] = True
            split |= len(O) > 1
    shape = [s if m else 1 for s, m in zip(y.shape, mask)]
    new = Labels(L.array.reshape(shape), tuple(mask))
    if split:
        joint = new.joint()
        tr.blocks.append(BlockConstraint("reshape", c.where, joint.ravel(), joint.size // joint.shape[-1]))
    tr.set(y, new)


def _permute(tr: Recorder, c: Call) -> None:
    x, name = c.args[0], c.name
    L, nd = tr.get(x), x.dim()
    if name == "permute":
        dims = c.args[1:] or c.kwargs["dims"]
        perm = list(dims[0] if len(dims) == 1 and isinstance(dims[0], (list, tuple)) else dims)
    elif name in ("transpose", "swapaxes", "swapdims"):
        a = c.arg(1, "dim0", c.kwargs.get("axis0")) % nd
        b = c.arg(2, "dim1", c.kwargs.get("axis1")) % nd
        perm = list(range(nd))
        perm[a], perm[b] = b, a
    elif name in ("movedim", "moveaxis"):
        src, dst = (c.args[1], c.args[2]) if len(c.args) > 2 else (c.kwargs["source"], c.kwargs["destination"])
        src = [s % nd for s in (src if isinstance(src, (list, tuple)) else [src])]
        dst = [d % nd for d in (dst if isinstance(dst, (list, tuple)) else [dst])]
        perm = [-1] * nd
        for s, d in zip(src, dst):
            perm[d] = s
        rest = iter(d for d in range(nd) if d not in src)
        perm = [p if p >= 0 else next(rest) for p in perm]
    elif name in (".T", ".H") or (name == "t" and nd == 2):
        perm = list(reversed(range(nd)))
    elif name in (".mT", ".mH", "adjoint"):
        perm = list(range(nd - 2)) + [nd - 1, nd - 2]
    else:  # t() of a 0-d / 1-d tensor
        perm = list(range(nd))
    perm = [p % nd for p in perm]
    tr.set(c.out, Labels(L.array.transpose(perm), tuple(L.mask[p] for p in perm)))


def _expand(tr: Recorder, c: Call) -> None:
    """expand/broadcast_to/repeat: new leading dims and size-1 dims may grow; channels may not repeat."""
    x, y = c.args[0], c.out
    L = tr.get(x)
    k = y.dim() - x.dim()
    array = L.array.reshape((1,) * k + L.array.shape)
    mask = list((False,) * k + L.mask)
    for d in range(y.dim()):
        if mask[d] and y.shape[d] != array.shape[d]:
            if array.shape[d] != 1:
                raise c.fail(f"repeats the channel dim {d}: {tuple(x.shape)} -> {tuple(y.shape)}")
            mask[d] = False
    tr.set(y, Labels(array, tuple(mask)))


def _index(tr: Recorder, c: Call) -> None:
    """x[...]: None adds a dim, full slices keep channels, ints and slices of non-channel dims are free.
    A partial slice or an int on a channel dim reads channels at fixed positions: those groups stay whole."""
    x, idx = c.args[0], c.args[1]
    L = tr.get(x)
    items = idx if isinstance(idx, tuple) else (idx,)
    if L is None:
        raise c.fail("indexing with a channel-labelled tensor")
    if any(isinstance(it, (torch.Tensor, list, bool, np.ndarray)) for it in items):
        raise c.fail("advanced (tensor/list/bool) indexing of channel-labelled tensors is not supported")
    used = sum(1 for it in items if it is not None and it is not Ellipsis)
    full = []
    for it in items:
        full += [slice(None)] * (x.dim() - used) if it is Ellipsis else [it]
    if not any(it is Ellipsis for it in items):
        full += [slice(None)] * (x.dim() - used)
    np_idx, mask, fixed, d = [], [], False, 0
    for it in full:
        if it is None:
            np_idx.append(None)
            mask.append(False)
            continue
        if isinstance(it, slice):
            np_idx.append(it if L.mask[d] else slice(None))
            mask.append(L.mask[d])
            fixed |= L.mask[d] and range(x.shape[d])[it] != range(x.shape[d])
        else:
            np_idx.append(operator.index(it) if L.mask[d] else 0)
            fixed |= L.mask[d]
        d += 1
    if fixed:
        tr.fixed.append(FixedConstraint(c.where, L.joint().ravel(), f"channels indexed with fixed bounds {idx!r}"))
    tr.set(c.out, Labels(L.array[tuple(np_idx)], tuple(mask)))


def _tie(tr: Recorder, c: Call, seq: list[torch.Tensor]) -> Labels:
    """Tie equal-shape tensors channel by channel (cat along a non-channel dim, stack)."""
    Ls = [tr.get(t) for t in seq]
    ref = next(L for L in Ls if L is not None)
    for t, L in zip(seq, Ls):
        if L is None:
            tr.union(ref.array, tr.constant(list(ref.array.shape), t, c.name))
        elif L.mask != ref.mask:
            raise c.fail(f"operands carry channel labels on different dims ({ref.dims} vs {L.dims})")
        elif L is not ref:
            tr.union(ref.array, L.array)
    return ref


def _concat(tr: Recorder, c: Call) -> None:
    """torch.cat. Along a channel dim the labels concatenate, so every consumer sees each part at its
    real runtime offset (the decoder's cat([h, skip], dim=1)); along any other dim the parts' channels
    are tied."""
    seq = [t for t in c.arg(0, "tensors") if t.dim() > 1 or t.numel() > 0]  # cat skips legacy empty (0,) tensors
    dim = c.arg(1, "dim", c.kwargs.get("axis", 0)) % c.out.dim()
    ref = next(tr.get(t) for t in seq if tr.get(t) is not None)
    if not ref.mask[dim]:
        tr.set(c.out, _tie(tr, c, seq))
        return
    arrays = []
    for t in seq:
        L = tr.get(t)
        if L is not None and L.mask != ref.mask:
            raise c.fail(f"operands carry channel labels on different dims ({ref.dims} vs {L.dims})")
        shape = [t.shape[d] if ref.mask[d] else 1 for d in range(t.dim())]
        arrays.append(L.array if L is not None else tr.constant(shape, t, c.name))
    tr.set(c.out, Labels(np.concatenate(arrays, axis=dim), ref.mask))


def _stack(tr: Recorder, c: Call) -> None:
    """torch.stack: equal shapes are required, so the stacked tensors' channels are tied."""
    dim = c.arg(1, "dim", 0) % c.out.dim()
    ref = _tie(tr, c, list(c.arg(0, "tensors")))
    tr.set(c.out, Labels(np.expand_dims(ref.array, dim), ref.mask[:dim] + (False,) + ref.mask[dim:]))


def _fixed_sizes(c: Call) -> bool:
    """Does the call cut with sizes written in the code? ``split(4)``, ``split([4, 8])``, ``split_with_sizes``,
    ``tensor_split`` at indices and ``unbind`` do; ``chunk(n)`` and ``tensor_split(x, n)`` cut into n parts
    whatever the width, so only their parts' equality is a constraint."""
    if c.name in ("split", "split_with_sizes", "unbind"):
        return True
    if c.name == "tensor_split":
        return not isinstance(c.arg(1, "indices_or_sections", c.kwargs.get("sections")), int)
    return False


def _split(tr: Recorder, c: Call) -> None:
    """split/chunk/unbind. Along a channel dim each output gets its slice of the labels (scale, shift =
    emb.chunk(2, dim=1)). ``chunk`` parts must stay equal, which holds when they are the same groups; sizes
    fixed in the code (``split(4)``) read channels at fixed positions, so their groups stay whole."""
    x, outs = c.args[0], list(c.out)
    L = tr.get(x)
    unbind = c.name == "unbind"
    dim = c.arg(1 if unbind else 2, "dim", 0) % x.dim()
    if L.mask[dim] and _fixed_sizes(c):
        tr.fixed.append(FixedConstraint(c.where, L.joint().ravel(), f"{c.name} into parts of sizes fixed in the code"))
    parts, offset = [], 0
    for y in outs:
        size = 1 if unbind else y.shape[dim]
        array = L.array if not L.mask[dim] else np.take(L.array, np.arange(offset, offset + size), axis=dim)
        mask = L.mask
        if unbind:
            array, mask = np.squeeze(array, axis=dim), mask[:dim] + mask[dim + 1:]
        offset += size
        tr.set(y, Labels(array, mask))
        parts.append(array.ravel())
    if L.mask[dim] and len(parts) > 1:
        tr.parts.append(PartsConstraint(c.where, tuple(parts), c.name))


SHAPE_RULES: dict[str, Callable[[Recorder, Call], None]] = {
    "reshape": _reshape, "permute": _permute, "expand": _expand, "index": _index, "concat": _concat,
    "stack": _stack, "split": _split,
}
