"""The channel tracer: run ONE real forward pass and record how channels flow through it.

    from pruning.trace.grouping import build_groups
    groups = build_groups(model, (x, t))      # x (1, 3, H, W), t (1,)
    print(describe(groups))                   # pruning/groups.py

How. A ``torch.overrides.TorchFunctionMode`` sees every torch function, ``F.*`` functional and Tensor
method (``__getitem__``, ``reshape``, ``.T`` ...) as it runs, with the real tensors; forward hooks keep the
path of the module each op runs in. Conv2d, Linear, GroupNorm, LayerNorm and Embedding are single ops
(what runs inside them is not recorded). Every channel of a layer's output gets an integer *label*; each op
maps its inputs' labels to its outputs' labels (``Labels``) and records which labels it *ties* (a residual add ties its
operands channel by channel). ``pruning/trace/grouping.py`` turns the ties into coupling groups.

Why not torch.fx. fx traces symbolically: ``if t.dim() == 0`` or loops over a list of skips are either
an error or silently baked in, and concat offsets need a second shape-propagation pass anyway. It inlines
submodules into one flat graph, so keeping Conv2d/Linear/GroupNorm whole needs a custom tracer, and an op
that fx cannot symbolise fails the whole trace. The mode records exactly what one real pass did, with
real shapes, without transforming any code. Its cost: only the branch the example inputs take is seen.
Torch-Pruning's ``grad_fn`` walk (VainF/Torch-Pruning, DepGraph: Fang et al. CVPR 2023, arXiv 2301.12900) needs autograd, sees no input widths of a
``cat`` and treats every op it does not know as elementwise; here an unknown op is an error.

Rules (``pruning/trace/ops.py``). ``OPS`` maps each supported op name to a category and ``RULES`` each category
to its rule, so supporting a new op is one line. An op whose tensors carry no labels is not looked up: its output has no
prunable producer, and a layer that reads such channels (the sinusoidal time embedding) is protected. An
op that touches labelled tensors and is not in ``OPS`` raises ``UnsupportedOpError`` with the op name and
the module path. Prunable parameter holders: Conv2d (groups=1), Linear, GroupNorm (affine or not), LayerNorm
over the last dim, Embedding (its columns). Other torch.nn layers with parameters (BatchNorm, grouped convs
...) raise the same error when they read labelled channels; a parameter used directly in a functional op is a constant, so the
channels it touches are protected. A custom autograd Function is traced through its forward's ops.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from common.errors import UserError
from pruning.trace.autograd_order import module_order
from pruning.trace.ops import RULES, layer_rule, lookup, op_name, opaque
from pruning.trace.record import Call, Recorder, Trace, UnsupportedOpError, on_dim, tensors


# ---------------------------------------------------------------------------------------------------
# The tracer state


class Tracer(Recorder):
    """A ``Recorder`` driven by module hooks and a ``TorchFunctionMode``: each op it sees goes to its rule."""

    def __init__(self, model: nn.Module, *, attn_grouping: str = "split"):
        super().__init__(model, attn_grouping=attn_grouping)
        self.owner: dict[Any, str] = {}  # output grad_fn of each layer run as a single op -> its path

    # --- forward hooks: the module path stack, and layers run as single ops
    def enter(self, name: str, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.stack.append(name)
        if self.suppress:
            return
        if name not in self.module_io:
            inputs = tensors((args, kwargs))
            self.module_io[name] = (self.vector_of(inputs[0]) if inputs else None, None)
        rule = layer_rule(module)
        own_params = next(module.parameters(recurse=False), None) is not None
        if rule is None and own_params and type(module).__module__.startswith("torch.nn"):
            if any(self.get(t) for t in tensors((args, kwargs))):
                raise UnsupportedOpError(type(module).__name__, name, "a torch.nn layer with parameters that cannot be "
                                         "pruned (supported: Conv2d with groups=1, Linear, GroupNorm, LayerNorm, Embedding)")
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
            y = tensors(output)
            if y and y[0].grad_fn is not None:
                self.owner.setdefault(y[0].grad_fn, name)  # for the paper's group order (autograd_order.py)
        io = self.module_io.get(name)
        if io is not None and io[1] is None and not self.suppress:
            y = tensors(output)
            self.module_io[name] = (io[0], self.vector_of(y[0]) if y else None)
        self.stack.pop()

    # --- every torch function call
    def record(self, func: Callable, args: tuple, kwargs: dict, out: Any) -> None:
        if not any(id(t) in self.labels for t in tensors((args, kwargs))):
            return  # no prunable channels involved
        name, category = lookup(op_name(func))
        call = Call(name, args, kwargs, out, self.where)
        if category is None:
            raise call.fail("not in the tracer's op table (pruning/trace/ops.py OPS): the tracer does not know how "
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


class ForwardFailed(UserError, RuntimeError):
    """The traced model's own forward raised on the example inputs; ``module`` is the innermost module running
    at the time (a UserError: the scripts print it as one line, ``--debug`` shows the traceback)."""

    def __init__(self, module: str, error: Exception):
        self.module, self.error = module, error
        super().__init__(f"the forward of module {module or '<model>'!r} failed: {type(error).__name__}: {error}")


def _run_meta(model: nn.Module, example_inputs: tuple, tr: "Tracer"):
    """One forward pass. The tracer reads shapes, never values, so it runs on the meta device (no
    arithmetic: about 10x faster on a 36M-parameter U-Net) with the weights swapped in by
    ``functional_call`` (the module hooks still fire). A forward that builds tensors on a fixed device
    cannot mix with meta tensors; it is then run once more on its real tensors."""
    meta = {name: torch.empty_like(t, device="meta").requires_grad_(t.requires_grad)
            for name, t in [*model.named_parameters(), *model.named_buffers()]}
    tr.param_names.update({id(t): name for name, t in meta.items()})  # name parameters used in functional ops
    try:
        return torch.func.functional_call(model, meta, example_inputs)
    except UnsupportedOpError:
        raise
    except (RuntimeError, NotImplementedError):
        return _FAILED  # the caller re-traces on real tensors


def trace(model: nn.Module, example_inputs: tuple, *, attn_grouping: str = "split") -> Trace:
    """Run ``model(*example_inputs)`` once and record its channel flow.

    Autograd stays on (on meta tensors it costs nothing) so that the output's ``grad_fn`` graph gives the
    paper pruner's layer order (``Trace.autograd_order``). ``attn_grouping``: see ``record.ATTN_GROUPINGS``.

    Positional input tensors of 2, 4 or 5 dims get "input" labels on dim 1 (channels of (B, C), (B, C, H, W)); a
    3-dim input is ambiguous ((B, C, L) or (B, N, C)) and gets none, and so do tensors inside a container (SDXL's
    ``added_cond_kwargs`` dict: its ``time_ids`` (B, 6) are six scalars, not channels), so the layer reading
    them is protected anyway ("no prunable producer"): a text encoder's width is never pruned.
    """
    result = _trace(model, example_inputs, meta=True, attn_grouping=attn_grouping)
    return result if result is not None else _trace(model, example_inputs, meta=False, attn_grouping=attn_grouping)


def _trace(model: nn.Module, example_inputs: tuple, *, meta: bool, attn_grouping: str) -> Trace | None:
    tr = Tracer(model, attn_grouping=attn_grouping)
    if meta:
        example_inputs = tuple(torch.empty_like(x, device="meta") if isinstance(x, torch.Tensor) else x
                               for x in example_inputs)
    for x in example_inputs:  # positional tensors only: a dict of conditioning (SDXL's time_ids) is no channel input
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() in (2, 4, 5):
            tr.set(x, on_dim(tr.new(x.shape[1], "input", "network input"), x.dim(), 1))
    handles = []
    try:
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(
                lambda m, a, k, name=name: tr.enter(name, m, a, k), with_kwargs=True))
            handles.append(module.register_forward_hook(
                lambda m, a, k, o, name=name: tr.exit(name, m, a, k, o), with_kwargs=True))
        with torch.enable_grad(), _Mode(tr):
            if meta:
                out = _run_meta(model, example_inputs, tr)
            else:
                try:
                    out = model(*example_inputs)
                except UnsupportedOpError:
                    raise
                except Exception as err:  # the model's own forward failed: say in which module
                    raise ForwardFailed(tr.where, err) from err
    finally:
        for h in handles:
            h.remove()
    if out is _FAILED:
        return None
    outputs = [tr.get(y).joint().ravel() for y in tensors(out) if tr.get(y) is not None]
    order = module_order([y.grad_fn for y in tensors(out)], tr.owner)
    return Trace(num_labels=tr.num_labels, sources=tr.sources, unions=tr.unions, members=tr.members, blocks=tr.blocks,
                 parts=tr.parts, fixed=tr.fixed, outputs=np.concatenate(outputs) if outputs else np.zeros(0, dtype=int),
                 layers=tr.layers, num_ops=tr.num_ops, module_io=tr.module_io, autograd_order=order,
                 attention=tr.attention, attn_grouping=attn_grouping)
