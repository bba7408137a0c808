"""What each op does to channels: the tracer's op table (``OPS``) and one rule per category (``RULES``).

A rule gets one ``Call`` (op name, real arguments and outputs, module path) and the tracer, reads the
input tensors' ``Labels``, sets the outputs' labels, and records ties (``tracer.union``) and constraints.
Supporting a new op that fits a category is one line in ``CATEGORIES``. Conv2d, Linear and GroupNorm are
single ops too (``LAYERS``, with LayerNorm and Embedding): they are where channels get labels and where members are recorded.

This file holds the tables, ``Call``, ``UnsupportedOpError``, the layer rules and the rules of ops that
leave channels on the dims they were on (elementwise, activations, resampling, pad, reductions, norms).
Ops that move channels between dims are in ``pruning/trace/shape_ops.py`` (reshape, permute, expand, indexing,
cat, stack, split), contractions in ``pruning/trace/matmul_ops.py`` (matmul,
einsum, attention). The types they share (``Labels``, ``Call``, the recorder) are in ``pruning/trace/record.py``.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from pruning.trace.matmul_ops import MATMUL_RULES
from pruning.trace.record import BlockConstraint, Call, Labels, Recorder, UnsupportedOpError, on_dim, tensors
from pruning.trace.shape_ops import SHAPE_RULES


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


def _conv2d(tr: Recorder, path: str, m: nn.Conv2d, x: torch.Tensor, y: torch.Tensor) -> None:
    if m.groups != 1:
        raise UnsupportedOpError("Conv2d", path, f"groups={m.groups}: grouped/depthwise convolutions are not supported")
    _weighted(tr, path, m, x, y, dim=1 if x.dim() == 4 else 0)


def _linear(tr: Recorder, path: str, m: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> None:
    _weighted(tr, path, m, x, y, dim=x.dim() - 1)


def _weighted(tr: Recorder, path: str, m: nn.Module, x: torch.Tensor, y: torch.Tensor, dim: int) -> None:
    """Conv2d / Linear: input channels are role "in", output channels a fresh space, role "out"."""
    tr.member(path, "in", tr.channel_vector(x, dim, path, type(m).__name__))
    if path not in tr.layer_out:
        tr.layers[path] = m
        tr.layer_out[path] = tr.new(y.shape[dim], "layer", path)
    tr.member(path, "out", tr.layer_out[path])
    tr.set(y, on_dim(tr.layer_out[path], y.dim(), dim))


def _group_norm(tr: Recorder, path: str, m: nn.GroupNorm, x: torch.Tensor, y: torch.Tensor) -> None:
    """Channel-wise (output channel c is input channel c); its groups are equal-removal blocks."""
    v = tr.channel_vector(x, 1, path, "GroupNorm")
    tr.layers[path] = m
    tr.member(path, "norm", v)  # affine or not: surgery must update num_channels either way
    # One channel per group is a per-channel norm: no removal constraint, and surgery keeps it per-channel.
    if m.num_groups != m.num_channels:
        tr.blocks.append(BlockConstraint("norm", path, v, m.num_groups))
    tr.set(y, on_dim(v, y.dim(), 1))


def _layer_norm(tr: Recorder, path: str, m: nn.LayerNorm, x: torch.Tensor, y: torch.Tensor) -> None:
    """Normalises the last dim (the token width of a transformer's (B, N, C) stream): output channel c is
    input channel c, scaled by gamma_c. Its statistics run over whatever channels remain, so it adds no
    removal constraint; its weight and bias are pruned with the channels (role "norm")."""
    if len(m.normalized_shape) != 1:
        raise UnsupportedOpError("LayerNorm", path, f"normalized_shape {tuple(m.normalized_shape)}: only a "
                                 "LayerNorm over the last dim can be pruned")
    dim = x.dim() - 1
    v = tr.channel_vector(x, dim, path, "LayerNorm")
    tr.layers[path] = m
    tr.member(path, "norm", v)
    tr.set(y, on_dim(v, y.dim(), dim))


def _embedding(tr: Recorder, path: str, m: nn.Embedding, x: torch.Tensor, y: torch.Tensor) -> None:
    """An index lookup (class labels): its output channels (the last dim) are a fresh space produced by the
    table's columns, role "out" on weight dim 1 (``pruning/members.py``)."""
    if tr.get(x) is not None:
        raise UnsupportedOpError("Embedding", path, "reads channel-labelled indices")
    if path not in tr.layer_out:
        tr.layers[path] = m
        tr.layer_out[path] = tr.new(y.shape[-1], "layer", path)
    tr.member(path, "out", tr.layer_out[path])
    tr.set(y, on_dim(tr.layer_out[path], y.dim(), y.dim() - 1))


def opaque(tr: Recorder, path: str, m: nn.Module, x: torch.Tensor, y: Any) -> None:
    """A layer whose inputs carry no labels: its outputs have no prunable producer either."""


LAYERS: dict[type, Callable] = {nn.Conv2d: _conv2d, nn.Linear: _linear, nn.GroupNorm: _group_norm,
                                nn.LayerNorm: _layer_norm, nn.Embedding: _embedding}


def layer_rule(module: nn.Module) -> Callable | None:
    for cls, rule in LAYERS.items():
        if isinstance(module, cls):
            return rule
    return None


# ---------------------------------------------------------------------------------------------------
# Op rules, by category: the ones that keep channels on their dims (the rest: shape_ops.py, matmul_ops.py)


def _elementwise(tr: Recorder, c: Call) -> None:
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


def _passthrough(tr: Recorder, c: Call) -> None:
    """Shape-preserving ops where output channel c is input channel c (activations, dropout, casts,
    softmax; ``*_like`` factories, whose shape follows their input)."""
    x = tensors((c.args, c.kwargs))[0]
    for y in tensors(c.out):
        if y.shape != x.shape:
            raise c.fail(f"listed as shape-preserving, but maps {tuple(x.shape)} to {tuple(y.shape)}")
        tr.set(y, tr.get(x))


def _spatial(tr: Recorder, c: Call) -> None:
    """Resampling of dims >= 2 (interpolate, pooling): batch and channel dims pass through."""
    x = c.args[0]
    L = tr.get(x)
    if L is None or any(d >= 2 for d in L.dims):
        raise c.fail(f"resamples dims >= 2 of a tensor whose channel labels are on dims {L.dims if L else ()}")
    for y in tensors(c.out):
        tr.set(y, L)


def _pad(tr: Recorder, c: Call) -> None:
    x, pad = c.args[0], c.arg(1, "pad")
    L = tr.get(x)
    for i in range(len(pad) // 2):  # pad pairs run from the last dim backwards
        if L is not None and L.mask[x.dim() - 1 - i] and (pad[2 * i] or pad[2 * i + 1]):
            raise c.fail(f"pads the channel dim {x.dim() - 1 - i}")
    tr.set(c.out, L)


def _reduce(tr: Recorder, c: Call) -> None:
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


def _group_norm_fn(tr: Recorder, c: Call) -> None:
    """F.group_norm called directly: like nn.GroupNorm, its weight and bias are per-channel operands."""
    x = c.args[0]
    v = tr.channel_vector(x, 1, c.where, c.name)
    for p in (c.arg(2, "weight"), c.arg(3, "bias")):
        if p is not None:
            tr.union(v, tr.get(p).joint() if tr.get(p) is not None else tr.constant([len(v)], p, c.name))
    tr.blocks.append(BlockConstraint("norm", c.where, v, c.arg(1, "num_groups")))
    tr.set(c.out, on_dim(v, x.dim(), 1))


def _layer_norm_fn(tr: Recorder, c: Call) -> None:
    x, shape = c.args[0], c.arg(1, "normalized_shape")
    L = tr.get(x)
    if L is None or any(d >= x.dim() - len(shape) for d in L.dims):
        raise c.fail("layer_norm over channel dims (use GroupNorm(1, C) for a prunable equivalent)")
    tr.set(c.out, L)


def _no_channels(tr: Recorder, c: Call) -> None:
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
RULES: dict[str, Callable[[Recorder, Call], None]] = {
    "elementwise": _elementwise, "passthrough": _passthrough, "spatial": _spatial, "pad": _pad, **SHAPE_RULES,
    "reduction": _reduce, **MATMUL_RULES, "group_norm": _group_norm_fn, "layer_norm": _layer_norm_fn,
    "no_channels": _no_channels,
}
