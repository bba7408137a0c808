"""What each op does to channels: the tracer's op table (``OPS``) and one rule per category (``RULES``).

A rule gets one ``Call`` (op name, real arguments and outputs, module path) and the tracer, reads the
input tensors' ``Labels``, sets the outputs' labels, and records ties (``tracer.union``) and constraints.
Supporting a new op that fits a category is one line in ``CATEGORIES``. Conv2d, Linear and GroupNorm are
single ops too (``LAYERS``): they are where channels get labels and where members are recorded.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import nn

from pruning.dependency import BlockConstraint, FixedConstraint, PartsConstraint

if TYPE_CHECKING:
    from pruning.graph import Tracer


class UnsupportedOpError(RuntimeError):
    """An op read channel-labelled tensors and the tracer does not know how channels flow through it."""

    def __init__(self, op: str, module: str, detail: str):
        self.op, self.module, self.detail = op, module, detail
        super().__init__(f"channel tracer: op {op!r} in module {module or '<model>'!r}: {detail}")


@dataclass(frozen=True)
class Labels:
    """The channel labels of one tensor: ``array`` has the tensor's ndim, the full size on the labelled
    dims (``mask``) and size 1 elsewhere. Conv output (B, C, H, W): array (1, C, 1, 1). After the head
    split ``reshape(B, nh, -1, N)``: array (1, nh, d, 1), one channel space over two dims."""

    array: np.ndarray
    mask: tuple[bool, ...]

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(d for d, m in enumerate(self.mask) if m)

    def joint(self) -> np.ndarray:
        """The labels over the labelled dims only, e.g. (nh, d)."""
        return self.array.reshape([self.array.shape[d] for d in self.dims])


def on_dim(v: np.ndarray, ndim: int, dim: int) -> Labels:
    shape = [1] * ndim
    shape[dim] = len(v)
    return Labels(v.reshape(shape), tuple(d == dim for d in range(ndim)))


def tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in tensors(o)]
    return []


@dataclass
class Call:
    """One op as the rules see it."""

    name: str
    args: tuple
    kwargs: dict
    out: Any
    where: str

    def arg(self, pos: int, name: str, default: Any = None) -> Any:
        return self.args[pos] if len(self.args) > pos else self.kwargs.get(name, default)

    def fail(self, detail: str) -> UnsupportedOpError:
        return UnsupportedOpError(self.name, self.where, detail)


def op_name(func: Callable) -> str:
    name = getattr(func, "__name__", repr(func))
    if name == "__get__":  # a property such as x.T: "torch.Tensor.T.__get__"
        name = "." + getattr(getattr(func, "__self__", None), "__name__", "?")
    return name


def lookup(name: str) -> tuple[str, str | None]:
    """Registry lookup: exact name, then without dunders / in-place underscore ("__iadd__", "add_" -> add)."""
    if name in OPS:
        return name, OPS[name]
    base = name.strip("_")
    if base in OPS:
        return base, OPS[base]
    if base[:1] in ("i", "r") and OPS.get(base[1:]) in ("elementwise", "matmul"):  # __iadd__, __rmul__
        return base, OPS[base[1:]]
    return name, None


# ---------------------------------------------------------------------------------------------------
# Layers (single ops)


def _conv2d(tr: Tracer, path: str, m: nn.Conv2d, x: torch.Tensor, y: torch.Tensor) -> None:
    if m.groups != 1:
        raise UnsupportedOpError("Conv2d", path, f"groups={m.groups}: grouped/depthwise convolutions are not supported")
    _weighted(tr, path, m, x, y, dim=1 if x.dim() == 4 else 0)


def _linear(tr: Tracer, path: str, m: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> None:
    _weighted(tr, path, m, x, y, dim=x.dim() - 1)


def _weighted(tr: Tracer, path: str, m: nn.Module, x: torch.Tensor, y: torch.Tensor, dim: int) -> None:
    """Conv2d / Linear: input channels are role "in", output channels a fresh space, role "out"."""
    tr.member(path, "in", tr.channel_vector(x, dim, path, type(m).__name__))
    if path not in tr.layer_out:
        tr.layers[path] = m
        tr.layer_out[path] = tr.new(y.shape[dim], "layer", path)
    tr.member(path, "out", tr.layer_out[path])
    tr.set(y, on_dim(tr.layer_out[path], y.dim(), dim))


def _group_norm(tr: Tracer, path: str, m: nn.GroupNorm, x: torch.Tensor, y: torch.Tensor) -> None:
    """Channel-wise (output channel c is input channel c); its groups are equal-removal blocks."""
    v = tr.channel_vector(x, 1, path, "GroupNorm")
    if m.affine:
        tr.layers[path] = m
        tr.member(path, "norm", v)
    # One channel per group is a per-channel norm: no removal constraint, and surgery keeps it per-channel.
    if m.num_groups != m.num_channels:
        tr.blocks.append(BlockConstraint("norm", path, v, m.num_groups))
    tr.set(y, on_dim(v, y.dim(), 1))


def opaque(tr: Tracer, path: str, m: nn.Module, x: torch.Tensor, y: Any) -> None:
    """A layer whose inputs carry no labels: its outputs have no prunable producer either."""


LAYERS: dict[type, Callable] = {nn.Conv2d: _conv2d, nn.Linear: _linear, nn.GroupNorm: _group_norm}


def layer_rule(module: nn.Module) -> Callable | None:
    for cls, rule in LAYERS.items():
        if isinstance(module, cls):
            return rule
    return None


# ---------------------------------------------------------------------------------------------------
# Op rules, by category


def _elementwise(tr: Tracer, c: Call) -> None:
    """Broadcasting elementwise ops tie their operands channel by channel: a residual add, and the time
    embedding temb_proj(temb)[:, :, None, None] (B, C, 1, 1) added to conv features (B, C, H, W)."""
    out = tensors(c.out)[0]
    nd, oshape = out.dim(), tuple(out.shape)
    labelled, plain = [], []
    for t in tensors((c.args, c.kwargs)):
        shape = (1,) * (nd - t.dim()) + tuple(t.shape)
        L = tr.get(t)
        if L is None:
            plain.append((t, shape))
            continue
        # A labelled dim of size 1 broadcast over C > 1 (a one-channel map) ties nothing.
        mask = tuple(m and s == o for m, s, o in zip((False,) * (nd - t.dim()) + L.mask, shape, oshape))
        if any(mask):
            labelled.append(Labels(L.array.reshape((1,) * (nd - t.dim()) + L.array.shape), mask))
    if not labelled:
        return
    ref = labelled[0]
    for L in labelled[1:]:
        if L.mask != ref.mask:
            raise c.fail(f"operands carry channel labels on different dims ({ref.dims} vs {L.dims})")
        tr.union(ref.array, L.array)
    for t, shape in plain:
        sizes = [shape[d] for d in ref.dims]
        if all(s == 1 for s in sizes):
            continue  # a scalar or per-position tensor: broadcast over the channels
        if sizes != [oshape[d] for d in ref.dims]:
            raise c.fail(f"a {tuple(t.shape)} tensor is partly broadcast over the channel dims {ref.dims}")
        tr.union(ref.array, tr.constant(list(ref.array.shape), t, c.name))
    tr.set(out, Labels(ref.array, ref.mask))


def _passthrough(tr: Tracer, c: Call) -> None:
    """Shape-preserving ops where output channel c is input channel c (activations, dropout, casts,
    softmax; ``*_like`` factories, whose shape follows their input)."""
    x = tensors((c.args, c.kwargs))[0]
    for y in tensors(c.out):
        if y.shape != x.shape:
            raise c.fail(f"listed as shape-preserving, but maps {tuple(x.shape)} to {tuple(y.shape)}")
        tr.set(y, tr.get(x))


def _spatial(tr: Tracer, c: Call) -> None:
    """Resampling of dims >= 2 (interpolate, pooling): batch and channel dims pass through."""
    x = c.args[0]
    L = tr.get(x)
    if L is None or any(d >= 2 for d in L.dims):
        raise c.fail(f"resamples dims >= 2 of a tensor whose channel labels are on dims {L.dims if L else ()}")
    for y in tensors(c.out):
        tr.set(y, L)


def _pad(tr: Tracer, c: Call) -> None:
    x, pad = c.args[0], c.arg(1, "pad")
    L = tr.get(x)
    for i in range(len(pad) // 2):  # pad pairs run from the last dim backwards
        if L is not None and L.mask[x.dim() - 1 - i] and (pad[2 * i] or pad[2 * i + 1]):
            raise c.fail(f"pads the channel dim {x.dim() - 1 - i}")
    tr.set(c.out, L)


def _reshape(tr: Tracer, c: Call) -> None:
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


def _permute(tr: Tracer, c: Call) -> None:
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


def _expand(tr: Tracer, c: Call) -> None:
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


def _index(tr: Tracer, c: Call) -> None:
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


def _tie(tr: Tracer, c: Call, seq: list[torch.Tensor]) -> Labels:
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


def _concat(tr: Tracer, c: Call) -> None:
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


def _stack(tr: Tracer, c: Call) -> None:
    """torch.stack: equal shapes are required, so the stacked tensors' channels are tied."""
    dim = c.arg(1, "dim", 0) % c.out.dim()
    ref = _tie(tr, c, list(c.arg(0, "tensors")))
    tr.set(c.out, Labels(np.expand_dims(ref.array, dim), ref.mask[:dim] + (False,) + ref.mask[dim:]))


def _split(tr: Tracer, c: Call) -> None:
    """split/chunk/unbind. Along a channel dim each output gets its slice of the labels (scale, shift =
    emb.chunk(2, dim=1)); the parts must stay equal, which holds when they are the same groups."""
    x, outs = c.args[0], list(c.out)
    L = tr.get(x)
    unbind = c.name == "unbind"
    dim = c.arg(1 if unbind else 2, "dim", 0) % x.dim()
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


def _reduce(tr: Tracer, c: Call) -> None:
    """sum/mean/amax/var...: over non-channel dims the labels stay; over all channel dims they vanish
    (the result no longer has channels); over part of a split channel space it is an error."""
    x = c.args[0]
    if c.name in ("max", "min") and isinstance(c.arg(1, "other"), torch.Tensor):
        return _elementwise(tr, c)  # torch.max(a, b)
    L = tr.get(x)
    if L is None:
        return
    dim = c.arg(2 if c.name == "norm" else 1, "dim")
    dim = range(x.dim()) if dim is None else dim if isinstance(dim, (list, tuple)) else [dim]
    dims = {d % x.dim() for d in dim}
    if set(L.dims) <= dims:
        return
    if set(L.dims) & dims:
        raise c.fail(f"reduces over part of the channel dims {L.dims}")
    for y in tensors(c.out):
        keep = y.dim() == x.dim()
        array = L.array if keep else np.squeeze(L.array, axis=tuple(sorted(dims)))
        mask = L.mask if keep else tuple(m for d, m in enumerate(L.mask) if d not in dims)
        tr.set(y, Labels(array, mask))


def _contract(tr: Tracer, c: Call, ops: list[tuple[tuple[int, ...], Labels | None]], letters: list[str],
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
        tr.blocks.append(BlockConstraint("heads", c.where, joint(i, kept + contracted).ravel(),
                                         math.prod(size[l] for l in kept), "qk"))
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
    if per_head and len(ops) > 1:
        tr.blocks.append(BlockConstraint("heads", c.where, joint(i, shared + per_head).ravel(),
                                         math.prod(size[l] for l in shared), "v"))
    return place(i)


def _batch_letters(*ndims: int) -> str:
    return "ABCDEFGH"[:max(0, *ndims)]


def _matmul(tr: Tracer, c: Call) -> None:
    a, b = (c.args[1], c.args[0]) if c.name == "rmatmul" else (c.args[0], c.args[1])
    core_a, core_b = ("k" if a.dim() == 1 else "nk"), ("k" if b.dim() == 1 else "km")
    batch = _batch_letters(a.dim() - len(core_a), b.dim() - len(core_b))
    la = batch[len(batch) - (a.dim() - len(core_a)):] + core_a
    lb = batch[len(batch) - (b.dim() - len(core_b)):] + core_b
    lo = batch + ("n" if a.dim() > 1 else "") + ("m" if b.dim() > 1 else "")
    tr.set(c.out, _contract(tr, c, [(tuple(a.shape), tr.get(a)), (tuple(b.shape), tr.get(b))], [la, lb], lo))


def _einsum(tr: Tracer, c: Call) -> None:
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


def _attention(tr: Tracer, c: Call) -> None:
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


def _group_norm_fn(tr: Tracer, c: Call) -> None:
    """F.group_norm called directly: like nn.GroupNorm, its weight and bias are per-channel operands."""
    x = c.args[0]
    v = tr.channel_vector(x, 1, c.where, c.name)
    for p in (c.arg(2, "weight"), c.arg(3, "bias")):
        if p is not None:
            tr.union(v, tr.get(p).joint() if tr.get(p) is not None else tr.constant([len(v)], p, c.name))
    tr.blocks.append(BlockConstraint("norm", c.where, v, c.arg(1, "num_groups")))
    tr.set(c.out, on_dim(v, x.dim(), 1))


def _layer_norm_fn(tr: Tracer, c: Call) -> None:
    x, shape = c.args[0], c.arg(1, "normalized_shape")
    L = tr.get(x)
    if L is None or any(d >= x.dim() - len(shape) for d in L.dims):
        raise c.fail("layer_norm over channel dims (use GroupNorm(1, C) for a prunable equivalent)")
    tr.set(c.out, L)


def _no_channels(tr: Tracer, c: Call) -> None:
    """Metadata (x.shape, x.size()) and new_* factories: nothing channel-indexed comes out."""


# The op table. Names are torch function / Tensor method names ("__iadd__" and "add_" find "add"; properties
# are ".T"-style). An op missing here that touches labelled channels is an UnsupportedOpError: add its name
# to the category whose rule describes it (one line), or write a rule.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "elementwise": ("add", "sub", "rsub", "mul", "div", "truediv", "true_divide", "floordiv", "floor_divide", "mod",
                    "remainder", "fmod", "pow", "where", "maximum", "minimum", "fmax", "fmin", "lerp", "addcmul",
                    "addcdiv", "clamp", "clip", "clamp_min", "clamp_max", "eq", "ne", "lt", "le", "gt", "ge",
                    "logical_and", "logical_or", "logical_xor", "and", "or", "xor", "atan2", "hypot", "copysign",
                    "masked_fill", "copy"),
    "passthrough": ("silu", "relu", "relu6", "gelu", "sigmoid", "tanh", "softplus", "mish", "elu", "selu", "celu",
                    "leaky_relu", "hardswish", "hardsigmoid", "hardtanh", "logsigmoid", "exp", "expm1", "log", "log1p",
                    "log2", "log10", "sin", "cos", "tan", "abs", "neg", "negative", "pos", "positive", "sqrt", "rsqrt",
                    "square", "reciprocal", "sign", "erf", "floor", "ceil", "round", "trunc", "frac", "nan_to_num",
                    "isnan", "isinf", "isfinite", "logical_not", "invert", "dropout", "dropout1d", "dropout2d",
                    "dropout3d", "alpha_dropout", "feature_alpha_dropout", "softmax", "log_softmax", "contiguous",
                    "clone", "detach", "to", "float", "double", "half", "bfloat16", "type", "type_as", "cpu", "cuda",
                    "requires_grad", ".data", "zeros_like", "ones_like", "empty_like", "full_like", "rand_like",
                    "randn_like", "fill", "zero", "normal", "uniform"),
    "spatial": ("interpolate", "upsample", "upsample_nearest", "upsample_bilinear", "avg_pool1d", "avg_pool2d",
                "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices",
                "max_pool2d_with_indices", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool2d",
                "lp_pool2d"),
    "pad": ("pad",),
    "reshape": ("reshape", "view", "view_as", "reshape_as", "flatten", "unflatten", "squeeze", "unsqueeze", "ravel"),
    "permute": ("permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "t", ".T", ".mT", ".H", ".mH",
                "adjoint"),
    "expand": ("expand", "expand_as", "broadcast_to", "repeat"),
    "index": ("getitem",),
    "concat": ("cat", "concat", "concatenate"),
    "stack": ("stack",),
    "split": ("split", "chunk", "split_with_sizes", "unbind", "tensor_split"),
    "reduction": ("sum", "mean", "amax", "amin", "max", "min", "var", "std", "var_mean", "std_mean", "logsumexp",
                  "norm", "prod", "nansum", "nanmean", "argmax", "argmin", "median", "all", "any", "count_nonzero"),
    "matmul": ("matmul", "bmm", "mm"),
    "einsum": ("einsum",),
    "attention": ("scaled_dot_product_attention",),
    "group_norm": ("group_norm",),
    "layer_norm": ("layer_norm",),
    "no_channels": ("size", "dim", "ndimension", "numel", "nelement", "item", "tolist", "is_contiguous",
                    "is_floating_point", "is_complex", "stride", "storage_offset", "data_ptr", "element_size",
                    "get_device", "equal", "allclose", "register_hook", "__len__", "__bool__", "__float__", "__int__",
                    "__index__", "__format__", "__repr__", "__str__", "__hash__", "__array__", ".shape", ".dtype",
                    ".device", ".ndim", ".requires_grad", ".grad", ".grad_fn", ".is_leaf", ".layout", ".is_cuda",
                    ".names", "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor"),
}
OPS: dict[str, str] = {name: category for category, names in CATEGORIES.items() for name in names}
RULES: dict[str, Callable[[Tracer, Call], None]] = {
    "elementwise": _elementwise, "passthrough": _passthrough, "spatial": _spatial, "pad": _pad, "reshape": _reshape,
    "permute": _permute, "expand": _expand, "index": _index, "concat": _concat, "stack": _stack, "split": _split,
    "reduction": _reduce, "matmul": _matmul, "einsum": _einsum, "attention": _attention, "group_norm": _group_norm_fn,
    "layer_norm": _layer_norm_fn, "no_channels": _no_channels,
}
