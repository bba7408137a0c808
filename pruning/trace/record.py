"""The tracer's leaf layer: what a trace records, and the write methods the op rules call.

Nothing here runs a model. ``Labels`` says which dims of a tensor carry which channel labels; ``Recorder`` holds
everything one forward pass has recorded (labels of live tensors, ``unions`` that tie labels, member vectors of
Conv2d/Linear/GroupNorm, equal-removal and fixed-position constraints, the module path stack); ``Trace`` is
the finished record that ``pruning/trace/grouping.py`` turns into coupling groups. The op rules
(``ops.py``, ``shape_ops.py``, ``matmul_ops.py``) import only this file; the tracer (``tracer.py``) drives them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from common.errors import UserError


class UnsupportedOpError(UserError, RuntimeError):
    """An op read channel-labelled tensors and the tracer does not know how channels flow through it: a
    property of the user's model, printed by the scripts as one line (a UserError; a RuntimeError as before)."""

    def __init__(self, op: str, module: str, detail: str):
        self.op, self.module, self.detail = op, module, detail
        super().__init__(f"channel tracer: op {op!r} in module {module or '<model>'!r}: {detail}")


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



@dataclass(frozen=True)
class Source:
    """Labels [start, start + size) were created by ``kind`` ("layer": a prunable layer's output,
    "input": the network input, "constant": a tensor no prunable layer produced) at ``where``."""

    start: int
    size: int
    kind: str
    where: str


@dataclass(frozen=True)
class BlockConstraint:
    """``labels`` (a channel vector) must lose the same number of channels in each of ``blocks``
    contiguous blocks. kind: "norm" (GroupNorm groups), "heads" (attention; role "qk" or "v"),
    "reshape" (a reshape that splits the channel dim)."""

    kind: str
    where: str
    labels: np.ndarray
    blocks: int
    role: str = ""


@dataclass(frozen=True)
class PartsConstraint:
    """A split/chunk/unbind of the channel dim into ``parts``: they must stay equal, which holds only if
    every part is the same sequence of groups."""

    where: str
    parts: tuple[np.ndarray, ...]
    what: str


@dataclass(frozen=True)
class FixedConstraint:
    """Channels read with bounds fixed in the code (``x[:, :4]``): the groups in ``labels`` stay whole."""

    where: str
    labels: np.ndarray
    what: str


@dataclass
class Trace:
    """One forward pass seen as channel flow (built by ``pruning.trace.tracer.trace``)."""

    num_labels: int
    sources: list[Source]
    unions: list[tuple[np.ndarray, np.ndarray]]
    members: list[tuple[str, str, np.ndarray]]  # (module path, role, labels) in call order
    blocks: list[BlockConstraint]
    parts: list[PartsConstraint]
    fixed: list[FixedConstraint]
    outputs: np.ndarray  # labels of the network output's channels
    layers: dict[str, nn.Module]  # prunable layers that ran, by path
    num_ops: int = 0
    # Every module that ran: its first call's input and output channel labels (None where the tensor carries
    # no labels, or carries them on several dims). Surgery reads width attributes against these.
    module_io: dict[str, tuple[np.ndarray | None, np.ndarray | None]] = field(default_factory=dict)
    # Module paths in the order the paper's pruner (Torch-Pruning's DependencyGraph, as vendored by
    # VainF/Diff-Pruning) inserts them into its graph: see ``pruning/trace/autograd_order.py``.
    autograd_order: list[str] = field(default_factory=list)
    # Per attention module (the module running a q.k contraction): its q/k channel labels, head-major, and its
    # head count, both as traced. Surgery reads ``num_heads``-like attributes and ``scale`` against these.
    attention: dict[str, tuple[np.ndarray, int]] = field(default_factory=dict)
    attn_grouping: str = "split"



# How attention's channel spaces are grouped. "split": q and k are tied by their contraction (q^T k), v and
# proj_out's input form their own space, which is what the data flow says. "joint": q, k, v and proj_out's input
# are one space, as the paper's pruner treats them (its dependency graph sees bmm/matmul as an elementwise op
# that ties all operands index by index; Fang et al. 2023, code VainF/Diff-Pruning ``ddpm_exp/prune.py``).
ATTN_GROUPINGS = ("split", "joint")


class Recorder:
    """What one trace has recorded so far, and the write methods the op rules use: labels of live tensors,
    ties (``union``), member vectors (``member``), constraints, the module path stack."""

    def __init__(self, model: nn.Module, *, attn_grouping: str = "split"):
        if attn_grouping not in ATTN_GROUPINGS:
            raise ValueError(f"attn_grouping must be one of {ATTN_GROUPINGS}, got {attn_grouping!r}")
        self.attn_grouping = attn_grouping
        self.qk_labels: dict[str, np.ndarray] = {}  # per module: the q/k channels of its last q.k contraction
        self.attention: dict[str, tuple[np.ndarray, int]] = {}  # per module: its first q.k contraction
        self.module_io: dict[str, tuple[np.ndarray | None, np.ndarray | None]] = {}
        self.param_names = {id(p): n for n, p in model.named_parameters()}
        self.labels: dict[int, Labels] = {}
        self.alive: list[torch.Tensor] = []  # labelled tensors stay alive so their ids stay unique
        self.num_labels, self.num_ops = 0, 0
        self.sources: list[Source] = []
        self.unions: list[tuple[np.ndarray, np.ndarray]] = []
        self.members: list[tuple[str, str, np.ndarray]] = []
        self.first_vector: dict[tuple[str, str], np.ndarray] = {}
        self.blocks: list[BlockConstraint] = []
        self.parts: list[PartsConstraint] = []
        self.fixed: list[FixedConstraint] = []
        self.layers: dict[str, nn.Module] = {}
        self.layer_out: dict[str, np.ndarray] = {}
        self.stack: list[str] = []
        self.pending: list[tuple[str, int, Callable]] = []  # layers running as single ops
        self.suppress = 0

    @property
    def where(self) -> str:
        return self.stack[-1] if self.stack else ""

    def new(self, size: int, kind: str, where: str) -> np.ndarray:
        self.sources.append(Source(self.num_labels, size, kind, where))
        self.num_labels += size
        return np.arange(self.num_labels - size, self.num_labels)

    def constant(self, shape: list[int], t: torch.Tensor, op: str) -> np.ndarray:
        """Fresh labels for a tensor no prunable layer produced, which meets labelled channels."""
        name = self.param_names.get(id(t))
        what = f"parameter {name}" if name else "a tensor"
        where = f"{what} used by {op} in {self.where or '<model>'}"
        return self.new(math.prod(shape), "constant", where).reshape(shape)

    def get(self, t: Any) -> Labels | None:
        return self.labels.get(id(t)) if isinstance(t, torch.Tensor) else None

    def set(self, t: torch.Tensor, labels: Labels | None) -> None:
        if labels is None or not any(labels.mask):
            self.labels.pop(id(t), None)
            return
        assert all(labels.array.shape[d] == t.shape[d] for d in labels.dims), "tracer bug: labels/shape mismatch"
        self.labels[id(t)] = labels
        self.alive.append(t)

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        assert a.shape == b.shape, f"tracer bug: tying {a.shape} to {b.shape}"
        self.unions.append((a.ravel().copy(), b.ravel().copy()))

    def member(self, path: str, role: str, v: np.ndarray) -> None:
        """A weight slice indexed by channel vector ``v``; a layer called twice reads the same slice."""
        if (path, role) in self.first_vector:
            self.union(self.first_vector[path, role], v)
        else:
            self.first_vector[path, role] = v
            self.members.append((path, role, v))

    def vector_of(self, t: Any) -> np.ndarray | None:
        """The channel labels of ``t`` as one vector, or None (no labels, or labels on several dims)."""
        L = self.get(t)
        return L.joint().ravel() if L is not None and len(L.dims) == 1 else None

    def channel_vector(self, x: torch.Tensor, dim: int, path: str, op: str) -> np.ndarray:
        """Labels of x along ``dim`` (fresh "constant" labels when no prunable layer produced them)."""
        L = self.get(x)
        if L is None:
            return self.new(x.shape[dim], "constant", f"input of {path}")
        if L.dims != (dim,):
            raise UnsupportedOpError(op, path, f"reads channels on dim {dim} of a {tuple(x.shape)} tensor whose "
                                               f"channel labels are on dims {L.dims}")
        return L.joint()

