"""Checks that a pruned network is what its bookkeeping says: attributes against weights, a rebuild from
config + state dict, and a second trace whose every recorded width must be the one the pruning planned.

``check_consistency`` reads every module; ``rebuild_check`` rebuilds our U-Net from its config (a pruned model
is config + widths + plain state dict); ``retrace_check`` runs the tracer again on the pruned network, so that
a width or head attribute the surgery did not know about (a forward that reads ``self.channels``, a reshape
to a constant head count) cannot give a silently wrong network: it either fails the forward or changes a
traced width, and both are reported naming the module.
"""
from __future__ import annotations

import math
import re
import traceback
import warnings

import numpy as np
import torch
from torch import nn

from pruning.trace.grouping import Analysis
from pruning.trace.tracer import ForwardFailed, trace


def check_consistency(model: nn.Module) -> None:
    """Re-read every module and raise (naming each offender) if its attributes disagree with its weights:
    conv/linear widths vs weight shape, GroupNorm num_channels vs weight and num_groups, .grad shapes,
    attention q/k/v widths vs num_heads (or ``heads``), LayerNorm normalized_shape vs weight, and (attn_scale
    "pruned") scale = 1/sqrt(q width per head)."""
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
        if isinstance(m, nn.LayerNorm) and m.weight is not None and tuple(m.weight.shape) != tuple(m.normalized_shape):
            problems.append(f"{name}: weight {tuple(m.weight.shape)} != normalized_shape {tuple(m.normalized_shape)}")
        if isinstance(getattr(m, "heads", None), int) and all(isinstance(getattr(m, x, None), nn.Linear)
                                                              for x in ("to_q", "to_k", "to_v")):
            H, dq, dk, dv = m.heads, m.to_q.out_features, m.to_k.out_features, m.to_v.out_features
            if dq != dk or dq % H or dv % H:  # the latent U-Net's attention (models/sd/attention.py)
                problems.append(f"{name}: q/k widths {dq}/{dk} and v width {dv} must agree and divide by heads {H}")
    if problems:
        raise ValueError("inconsistent model after surgery:\n  " + "\n  ".join(problems))


def rebuild_check(model: nn.Module, example_inputs: tuple | None = None) -> nn.Module:
    """Rebuild ``type(model)(model.config)`` and load ``model.state_dict()`` strictly: the pruned model must be
    exactly "config + widths + plain state dict" (models/checkpoint.py). Attention ``num_heads``/``scale`` must
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


def _suspects(model: nn.Module, path: str, dense) -> str:
    """The integer attributes of module ``path`` that equal a width the dense trace saw in or below it: the
    likely stale ones, since no rule of pruning/surgery.py (WIDTH_ATTRS, HEAD_ATTRS) updated them."""
    widths = {len(v) for p, io in dense.module_io.items() if p == path or p.startswith(path + ".") or not path
              for v in io if v is not None}
    widths |= {h for p, (_, h) in dense.attention.items() if p == path or p.startswith(path + ".") or not path}
    module = model.get_submodule(path)
    found = [f"{k}={v}" for k, v in vars(module).items()
             if isinstance(v, int) and not isinstance(v, bool) and not k.startswith("_") and v in widths]
    if not found:
        return "a width or head count it reads is stale (no rule of pruning/surgery.py updates it)"
    return (f"its attribute(s) {', '.join(found)} still equal a dense width and no rule of pruning/surgery.py "
            "updates them")


def _stale_reshape(error: BaseException) -> str | None:
    """For a reshape/view whose sizes no longer fit (torch: "shape '[...]' is invalid for input of size N"):
    where it is (the last traceback frame outside torch and pruning/) and why, else None."""
    m = re.search(r"shape '\[([-\d, ]+)\]' is invalid for input of size (\d+)", str(error))
    if not m:
        return None
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if "/torch/" not in f.filename and "/pruning/" not in f.filename]
    at = f" ({frames[-1].filename}:{frames[-1].lineno}: `{(frames[-1].line or '').strip()}`)" if frames else ""
    return (f"a reshape/view to [{m.group(1)}] of a tensor with {m.group(2)} elements{at}: a size in that shape "
            "was computed from a channel count that pruning changed (e.g. C // heads with C read from another "
            "tensor's width) while the reshaped tensor has another width; compute it from the tensor being "
            "reshaped or from an attribute that pruning/surgery.py updates")


# Protection that needs no warning: the network's own input and output, layers the caller asked to ignore,
# and channels no layer produces (the time embedding's sinusoid features are an input too).
EXPECTED_PROTECTION = ("network input", "network output", "ignored layer", "no prunable producer")


def warn_protected(groups) -> list[str]:
    """One UserWarning line per group kept whole for any other reason (a reshape, split or GroupNorm that the
    pruning cannot follow), which otherwise shows only in groups_text. Returns the lines."""
    lines = []
    for g in groups:
        reasons = [r for r in g.protected.split("; ") if r and not r.startswith(EXPECTED_PROTECTION)]
        if reasons:
            lines.append(f"group {g.name} (C={g.size}) is not pruned: {'; '.join(reasons)}")
            warnings.warn(lines[-1], UserWarning, stacklevel=3)
    return lines


def retrace_check(model: nn.Module, example_inputs: tuple, analysis: Analysis, keeps: dict[int, np.ndarray]) -> None:
    """Trace the pruned ``model`` again on ``example_inputs`` and compare with the plan: every layer that ran
    before runs again, and each (layer, role) reads exactly ``analysis.new_width(...)`` channels when group i
    kept ``keeps[i]`` (dense group coordinates). Raises ValueError naming every difference."""
    dense = analysis.trace
    try:
        again = trace(model, example_inputs, attn_grouping=dense.attn_grouping)
    except ForwardFailed as err:  # the pruned forward itself failed: name the stale reshape, or suspect attributes
        stale = _stale_reshape(err.error)
        if stale:
            raise ValueError(f"after pruning, the forward of module {err.module or '<model>'!r} fails at {stale}") from err
        raise ValueError(f"after pruning, {err}; {_suspects(model, err.module, dense)}") from err
    except Exception as err:
        raise ValueError(f"the pruned model's forward fails on the example inputs: {type(err).__name__}: {err}") from err
    seen = {(path, role): len(v) for path, role, v in again.members}
    alive = analysis.alive(keeps)
    problems = []
    for path, role, v in dense.members:
        expected = analysis.new_width(v, alive)
        got = seen.get((path, role))
        if got is None:
            problems.append(f"{path} ({role}) no longer runs")
        elif got != expected:
            problems.append(f"{path} ({role}) reads {got} channels, the pruning planned {expected}")
    if len(again.outputs) != len(dense.outputs):
        problems.append(f"the output has {len(again.outputs)} channels instead of {len(dense.outputs)}")
    if problems:
        raise ValueError("the pruned model does not run as planned (a module attribute holds a stale width?):\n  "
                         + "\n  ".join(problems[:12]))
