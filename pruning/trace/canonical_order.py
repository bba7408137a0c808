"""The paper pruner's group order for the DDPM U-Net, from its DDIM-codebase layer names alone.

Why. The order in which the paper's pruner visits the groups (``autograd_order.py``) is a walk of the
autograd graph, so it depends on how a forward is WRITTEN, not only on the architecture: ``h += x`` or
``x + h`` at a residual add swaps the operands a node lists, one fused attention call lists q, k, v where the
DDIM code's two ``bmm`` reach k first, and the walk then meets the layers in another order. With sequential
scoring the order changes the kept channels (this project's U-Net, loaded from a DDIM checkpoint, kept other
channels in ``up.1.block.1`` than the paper's code on the DDIM ``Model``). A user who loads the DDIM
checkpoint must get the paper's network whatever implementation is traced.

How. When a model's Conv2d / Linear / GroupNorm layers carry exactly the DDIM codebase's names
(``conv_in``, ``temb.dense.{0,1}``, ``down.{i}.block.{j}.conv1``, ``mid.attn_1.q``, ``up.{i}.upsample.conv``,
``norm_out``, ``conv_out``, ...), the architecture is known from the names: levels, blocks per level,
attention levels, shortcuts, resampling convs. This file then builds the autograd graph of the DDIM
codebase's ``Model.forward`` (ermongroup/ddim ``models/diffusion.py``, the network Diff-Pruning's
``ddpm_exp`` prunes) as plain nodes, op for op where the walk can tell ops apart:

    swish(a)       = a * sigmoid(a)                       (a Mul node over a and a Sigmoid node)
    ResnetBlock    h = conv1(swish(norm1(x))); h = h + temb_proj(swish(temb))[:, :, None, None]
                   h = conv2(dropout(swish(norm2(h)))); return (nin_shortcut(x) or x) + h
    AttnBlock      w = softmax(bmm(q.reshape.permute, k.reshape) * c^-0.5)
                   return x + proj_out(bmm(v.reshape, w.permute).reshape)
    Model          temb = dense.1(swish(dense.0(emb))); hs = [conv_in(x)]; down levels push to hs;
                   mid = block_2(attn_1(block_1)); each up block reads cat([h, hs.pop()]);
                   out = conv_out(swish(norm_out(h)))

and walks it with the same ``module_order``. A unit removed by layer pruning (``models/ddpm/skipped.py``)
is its shortcut, as in the smaller network's own forward. A model whose names do not fit keeps the order of
its own autograd graph.
"""
from __future__ import annotations

import re
from typing import Iterable

from pruning.trace.autograd_order import module_order

RESBLOCK = ("norm1", "conv1", "temb_proj", "norm2", "conv2")
ATTN = ("norm", "q", "k", "v", "proj_out")


class _Node:
    """A stand-in for an autograd node: its inputs in the order the real node lists them."""

    __slots__ = ("next_functions", "layer")

    def __init__(self, *inputs: "_Node | None", layer: str | None = None):
        self.next_functions = tuple((x, 0) for x in inputs)
        self.layer = layer


class _Graph:
    """Builds the DDIM ``Model.forward`` graph over the layer names present."""

    def __init__(self, names: set[str]):
        self.names = names
        self.used: set[str] = set()

    def layer(self, name: str, x: _Node | None) -> _Node:
        self.used.add(name)
        return _Node(x, layer=name)

    def swish(self, a: _Node) -> _Node:
        return _Node(a, _Node(a))  # a * sigmoid(a)

    def resblock(self, p: str, x: _Node, temb: _Node) -> _Node:
        has = [f"{p}.{n}" in self.names for n in RESBLOCK]
        short = self.layer(f"{p}.nin_shortcut", x) if f"{p}.nin_shortcut" in self.names else x
        if not any(has):  # a removed unit: its shortcut only
            return short
        if not all(has):
            raise KeyError(p)
        h = self.layer(f"{p}.conv1", self.swish(self.layer(f"{p}.norm1", x)))
        h = _Node(h, _Node(self.layer(f"{p}.temb_proj", self.swish(temb))))  # h + temb_proj(...)[:, :, None, None]
        h = self.layer(f"{p}.conv2", _Node(self.swish(self.layer(f"{p}.norm2", h))))  # conv2(dropout(...))
        return _Node(short, h)  # x + h

    def attn(self, p: str, x: _Node) -> _Node:
        has = [f"{p}.{n}" in self.names for n in ATTN]
        if not any(has):
            return x
        if not all(has):
            raise KeyError(p)
        h = self.layer(f"{p}.norm", x)
        q, k, v = (self.layer(f"{p}.{n}", h) for n in ("q", "k", "v"))
        w = _Node(_Node(_Node(_Node(_Node(q)), _Node(k))))  # softmax(bmm(q.reshape.permute, k.reshape) * scale)
        out = _Node(_Node(_Node(v), _Node(w)))  # bmm(v.reshape, w.permute).reshape
        return _Node(x, self.layer(f"{p}.proj_out", out))  # x + proj_out(...)


def _count(names: set[str], pattern: str) -> int:
    found = {int(m.group(1)) for n in names if (m := re.fullmatch(pattern, n))}
    if found != set(range(len(found))):
        raise KeyError(pattern)
    return len(found)


def ddim_order(names: Iterable[str]) -> list[str] | None:
    """The layers in the order the paper's pruner meets them on the DDIM codebase's ``Model`` of this
    architecture, or None when ``names`` (the model's Conv2d / Linear / GroupNorm paths) are not exactly
    that model's layer names."""
    names = set(names)
    g = _Graph(names)
    try:
        levels = _count(names, r"down\.(\d+)\..*")
        if levels < 1 or levels != _count(names, r"up\.(\d+)\..*"):
            return None
        blocks = _count({n for n in names if n.startswith("down.0.")}, r"down\.0\.block\.(\d+)\..*")
        temb = g.layer("temb.dense.1", g.swish(g.layer("temb.dense.0", None)))
        hs = [g.layer("conv_in", None)]
        for i in range(levels):
            attn = any(n.startswith(f"down.{i}.attn.") for n in names)
            for j in range(blocks):
                h = g.resblock(f"down.{i}.block.{j}", hs[-1], temb)
                hs.append(g.attn(f"down.{i}.attn.{j}", h) if attn else h)
            if i != levels - 1:
                conv = f"down.{i}.downsample.conv"
                hs.append(g.layer(conv, _Node(hs[-1])) if conv in names else _Node(hs[-1]))  # conv(pad(x)) | pool
        h = g.resblock("mid.block_2", g.attn("mid.attn_1", g.resblock("mid.block_1", hs[-1], temb)), temb)
        for i in reversed(range(levels)):
            attn = any(n.startswith(f"up.{i}.attn.") for n in names)
            for j in range(blocks + 1):
                h = g.resblock(f"up.{i}.block.{j}", _Node(h, hs.pop()), temb)  # cat([h, hs.pop()])
                h = g.attn(f"up.{i}.attn.{j}", h) if attn else h
            if i != 0:
                conv = f"up.{i}.upsample.conv"
                h = g.layer(conv, _Node(h)) if conv in names else _Node(h)  # conv(interpolate(h))
        out = g.layer("conv_out", g.swish(g.layer("norm_out", h)))
    except (KeyError, IndexError):
        return None
    if g.used != names:
        return None
    owner = {}
    stack, seen = [out], set()
    while stack:  # every layer node stands for its layer in the walk
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.layer is not None:
            owner[node] = node.layer
        stack.extend(child for child, _ in node.next_functions if child is not None)
    return module_order([out], owner)
