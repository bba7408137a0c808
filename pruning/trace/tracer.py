"""The channel tracer: run ONE real forward pass and record how channels flow through it.

    from pruning.graph import build_groups
    groups = build_groups(model, (x, t))      # x (1, 3, H, W), t (1,)
    print(describe(groups))                   # pruning/groups.py

How. A ``torch.overrides.TorchFunctionMode`` sees every torch function, ``F.*`` functional and Tensor
method (``__getitem__``, ``reshape``, ``.T`` ...) as it runs, with the real tensors; forward hooks keep the
path of the module each op runs in. Conv2d, Linear and GroupNorm are single ops (what runs inside them
is not recorded). Every channel of a layer's output gets an integer *label*; each op maps its inputs'
labels to its outputs' labels (``Labels``) and records which labels it *ties* (a residual add ties its
operands channel by channel). ``pruning/dependency.py`` turns the ties into coupling groups.

Why not torch.fx. fx traces symbolically: ``if t.dim() == 0`` or loops over a list of skips are either
an error or silently baked in, and concat offsets need a second shape-propagation pass anyway. It inlines
submodules into one flat graph, so keeping Conv2d/Linear/GroupNorm whole needs a custom tracer, and an op
that fx cannot symbolise fails the whole trace. The mode records exactly what one real pass did, with
real shapes, without transforming any code. Its cost: only the branch the example inputs take is seen.
Torch-Pruning's ``grad_fn`` walk (research/torchpruning.md) needs autograd, sees no input widths of a
``cat`` and treats every op it does not know as elementwise; here an unknown op is an error.

Rules (``pruning/ops.py``). ``OPS`` maps each supported op name to a category and ``RULES`` each category
to its rule, so supporting a new op is one line. An op whose tensors carry no labels is not looked up: its output has no
prunable producer, and a layer that reads such channels (the sinusoidal time embedding) is protected. An
op that touches labelled tensors and is not in ``OPS`` raises ``UnsupportedOpError`` with the op name and
the module path. Prunable parameter holders: Conv2d (groups=1), Linear, GroupNorm (affine or not). Other
torch.nn layers with parameters (BatchNorm, LayerNorm, grouped convs, Embedding ...) raise the same error
when they read labelled channels; a parameter used directly in a functional op is a constant, so the
channels it touches are protected. A custom autograd Function is traced through its forward's ops.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from pruning.dependency import Analysis, BlockConstraint, FixedConstraint, PartsConstraint, Source, Trace, group_trace
from pruning.groups import Group
from pruning.ops import OPS, UnsupportedOpError  # noqa: F401  (re-exported: the op table, the error)
from pruning.ops import RULES, Call, Labels, layer_rule, lookup, on_dim, op_name, opaque, tensors


# ---------------------------------------------------------------------------------------------------
# The tracer state


class Tracer:
    """The state of one trace: labels of live tensors, ties, member vectors, constraints, module stack."""

    def __init__(self, model: nn.Module):
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

    def channel_vector(self, x: torch.Tensor, dim: int, path: str, op: str) -> np.ndarray:
        """Labels of x along ``dim`` (fresh "constant" labels when no prunable layer produced them)."""
        L = self.get(x)
        if L is None:
            return self.new(x.shape[dim], "constant", f"input of {path}")
        if L.dims != (dim,):
            raise UnsupportedOpError(op, path, f"reads channels on dim {dim} of a {tuple(x.shape)} tensor whose "
                                               f"channel labels are on dims {L.dims}")
        return L.joint()

    # --- forward hooks: the module path stack, and layers run as single ops
    def enter(self, name: str, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.stack.append(name)
        if self.suppress:
            return
        rule = layer_rule(module)
        own_params = next(module.parameters(recurse=False), None) is not None
        if rule is None and own_params and type(module).__module__.startswith("torch.nn"):
            if any(self.get(t) for t in tensors((args, kwargs))):
                raise UnsupportedOpError(type(module).__name__, name, "a torch.nn layer with parameters that cannot be "
                                         "pruned (supported: Conv2d with groups=1, Linear, GroupNorm)")
            rule = opaque  # reads no prunable channels: a constant producer
        if rule is not None:
            self.suppress += 1
            self.pending.append((name, len(self.stack), rule))

    def exit(self, name: str, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if self.pending and self.pending[-1][:2] == (name, len(self.stack)):
            _, _, rule = self.pending.pop()
            self.suppress -= 1
            x = (tensors(args) or tensors(kwargs))[0]
            rule(self, name, module, x, output)
        self.stack.pop()

    # --- every torch function call
    def record(self, func: Callable, args: tuple, kwargs: dict, out: Any) -> None:
        if not any(id(t) in self.labels for t in tensors((args, kwargs))):
            return  # no prunable channels involved
        name, category = lookup(op_name(func))
        call = Call(name, args, kwargs, out, self.where)
        if category is None:
            raise call.fail("not in the tracer's op table (pruning/ops.py OPS): the tracer does not know how "
                            "channels flow through it; add it to the right category if one fits")
        self.num_ops += 1
        RULES[category](self, call)


class _Mode(TorchFunctionMode):
    def __init__(self, tracer: Tracer):
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)  # the mode is off inside: F.interpolate's internals are not seen
        if not self.tracer.suppress:
            self.tracer.record(func, args, kwargs, out)
        return out


# ---------------------------------------------------------------------------------------------------
# Entry points


_FAILED = object()


def _run_meta(model: nn.Module, example_inputs: tuple, tr: "Tracer"):
    """One forward pass. The tracer reads shapes, never values, so it runs on the meta device (no
    arithmetic: about 10x faster on a 36M-parameter U-Net) with the weights swapped in by
    ``functional_call`` (the module hooks still fire). A forward that builds tensors on a fixed device
    cannot mix with meta tensors; it is then run once more on its real tensors."""
    meta = {name: torch.empty_like(t, device="meta")
            for name, t in [*model.named_parameters(), *model.named_buffers()]}
    tr.param_names.update({id(t): name for name, t in meta.items()})  # name parameters used in functional ops
    try:
        return torch.func.functional_call(model, meta, example_inputs)
    except UnsupportedOpError:
        raise
    except (RuntimeError, NotImplementedError):
        return _FAILED  # the caller re-traces on real tensors


def trace(model: nn.Module, example_inputs: tuple) -> Trace:
    """Run ``model(*example_inputs)`` once (no grad) and record its channel flow.

    Input tensors of 2, 4 or 5 dims get "input" labels on dim 1 (channels of (B, C), (B, C, H, W)); a 3-dim
    input is ambiguous ((B, C, L) or (B, N, C)) and gets none, so the layer reading it is protected anyway.
    """
    result = _trace(model, example_inputs, meta=True)
    return result if result is not None else _trace(model, example_inputs, meta=False)


def _trace(model: nn.Module, example_inputs: tuple, *, meta: bool) -> Trace | None:
    tr = Tracer(model)
    if meta:
        example_inputs = tuple(torch.empty_like(x, device="meta") if isinstance(x, torch.Tensor) else x
                               for x in example_inputs)
    for x in tensors(example_inputs):
        if x.is_floating_point() and x.dim() in (2, 4, 5):
            tr.set(x, on_dim(tr.new(x.shape[1], "input", "network input"), x.dim(), 1))
    handles = []
    try:
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(
                lambda m, a, k, name=name: tr.enter(name, m, a, k), with_kwargs=True))
            handles.append(module.register_forward_hook(
                lambda m, a, k, o, name=name: tr.exit(name, m, a, k, o), with_kwargs=True))
        with torch.no_grad(), _Mode(tr):
            out = _run_meta(model, example_inputs, tr) if meta else model(*example_inputs)
    finally:
        for h in handles:
            h.remove()
    if out is _FAILED:
        return None
    outputs = [tr.get(y).joint().ravel() for y in tensors(out) if tr.get(y) is not None]
    return Trace(num_labels=tr.num_labels, sources=tr.sources, unions=tr.unions, members=tr.members, blocks=tr.blocks,
                 parts=tr.parts, fixed=tr.fixed, outputs=np.concatenate(outputs) if outputs else np.zeros(0, dtype=int),
                 layers=tr.layers, num_ops=tr.num_ops)


def analyze(model: nn.Module, example_inputs: tuple, *, ignored: Iterable[str] = (),
            root_types: tuple[type, ...] = (nn.Conv2d, nn.Linear)) -> Analysis:
    """``build_groups`` with its report: the regrouped GroupNorms and the trace."""
    ignored = tuple(ignored)
    names = dict(model.named_modules())
    unknown = [i for i in ignored if i not in names]
    if unknown:
        raise ValueError(f"ignored names modules the model does not have: {unknown}")
    return group_trace(trace(model, example_inputs), ignored=ignored, root_types=tuple(root_types))


def build_groups(model: nn.Module, example_inputs: tuple, *, ignored: Iterable[str] = (),
                 root_types: tuple[type, ...] = (nn.Conv2d, nn.Linear)) -> list[Group]:
    """The coupling groups of ``model`` (pruning/groups.py), traced from one forward pass on
    ``example_inputs``, in order of first appearance. Groups touching the network input or output, channels
    no prunable layer produced, or the output channels of an ``ignored`` module path are ``protected``."""
    return analyze(model, example_inputs, ignored=ignored, root_types=root_types).groups
