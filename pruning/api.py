"""``pruning.prune``: the whole channel-pruning algorithm in one function, which prune.py is a thin shell over.

    model, report = prune(model, (x, t), method="diff-pruning", ratio=0.3, data=x0, thr=0.05)

Diff-Pruning (Fang, Ma & Wang, "Structural Pruning for Diffusion Models", NeurIPS 2023, arXiv 2305.10924),
as its code prunes (VainF/Diff-Pruning ``ddpm_exp/prune.py``), read top to bottom in ``prune``:

1. trace one forward pass and build the coupled channel groups (DepGraph semantics, Fang et al. CVPR 2023);
2. accumulate the gradient over the informative timesteps, G = sum_{t < T'} grad_theta L_t, where
   L_t = E ||eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t)||^2 (Ho et al. 2020, eq. 14) and T' is
   the first t with L_t < thr * max_{s <= t} L_s (the paper's Sec. 3.2, "Taylor expansion at pruned timesteps");
3. for each group, in the order the paper's pruner visits them: score its channels with the first-order
   Taylor term of the group's weights, I_c = sum (w_k G_k)^2 (``pruning/importance.py``), on the network that
   the groups before it have already pruned; select what the local rule keeps; cut the group;
4. bring every width and head attribute in line, record the widths in the config, and trace the pruned
   network again to check that every layer reads the width the plan says.

Any error leaves the caller's model exactly as it was (``pruning/rollback.py``). The same function runs the
baselines of the paper's Table 1 (random, magnitude, plain Taylor over all timesteps, scratch) and the
principled alternatives to the paper code's choices (``attn_grouping="split"``, ``scoring="dense"``,
``scope="global"``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from diffusion.schedule import Schedule
from pruning.checks import retrace_check
from pruning.groups import Group, describe
from pruning.importance import IMPORTANCE, TimestepReport, accumulate_gradients
from pruning.rollback import rollback
from pruning.scratch import reinitialize
from pruning.select import HEAD_MODES, _head_clusters, check_round_to, select_groups, select_local
from pruning.surgery import apply_keeps, finalize, prune_group, update_attributes
from pruning.targets import ratio_for_target
from pruning.trace.grouping import Analysis, analyze
from pruning.trace.record import ATTN_GROUPINGS

METHODS = ("random", "magnitude", "taylor", "diff-pruning", "scratch")
GRADIENT_METHODS = ("taylor", "diff-pruning")
# "sequential": the paper's code, each group scored on the partly pruned network, in its visiting order.
# "dense": every group scored on the dense network, so the result does not depend on any order.
SCORINGS = ("sequential", "dense")


@dataclass
class PruneReport:
    """What ``prune`` did: widths before/after (module path -> output channels), the groups, timesteps."""

    method: str
    ratio: float
    scope: str
    widths_before: dict[str, int]
    widths_after: dict[str, int]
    groups: list[Group]
    groups_text: str
    params_before: int
    params_after: int
    timesteps: TimestepReport | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    scoring: str = "sequential"
    attn_grouping: str = "joint"
    order: list[str] = field(default_factory=list)  # group names in the order they were scored and cut
    attributes: list[tuple[str, str, Any, Any]] = field(default_factory=list)  # (module, attribute, old, new)
    target: dict[str, float] | None = None  # {"kind", "target", "achieved", "ratio"} when a target was asked for
    kept: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # ``kept_channels``: dense coordinates
    round_to: int | None = None  # widths kept at multiples of this (pruning/select.py)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (saved next to the pruned checkpoint)."""
        ts = self.timesteps
        return {"method": self.method, "ratio": self.ratio, "scope": self.scope, "scoring": self.scoring,
                "attn_grouping": self.attn_grouping, "target": self.target, "round_to": self.round_to,
                "params_before": self.params_before, "params_after": self.params_after,
                "widths_before": self.widths_before, "widths_after": self.widths_after,
                "num_groups": len(self.groups), "num_prunable_groups": sum(g.prunable for g in self.groups),
                "group_order": self.order,
                "attributes": [[m, a, str(o), str(n)] for m, a, o, n in self.attributes],
                "kept_timesteps": None if ts is None else {"first": ts.kept[0] if ts.kept else None,
                                                           "last": ts.kept[-1] if ts.kept else None,
                                                           "count": len(ts.kept)},
                "timestep_losses": None if ts is None else ts.losses, "thr": None if ts is None else ts.thr,
                "loss_max": None if ts is None else ts.loss_max, "seconds": self.seconds}


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every Conv2d / Linear and channel count of every GroupNorm, by module path."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            out[name] = m.weight.shape[0]
        elif isinstance(m, nn.GroupNorm):
            out[name] = m.num_channels
    return out


def _fraction(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a fraction in (0, 1), got {value!r}")


def check_arguments(method: str, ratio: float, thr: float, scope: str, *, max_timesteps: int | None = None,
                    scoring: str = "sequential", attn_grouping: str = "joint", head_mode: str = "channels",
                    target_params: float | None = None, target_macs: float | None = None,
                    micro_batch: int = 16, round_to: int | None = None) -> None:
    """One clear error per bad setting, before any work is done (each names the argument)."""
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose one of {METHODS}")
    if not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio (the pruning ratio) must be in [0, 1), got {ratio!r}")
    if not isinstance(thr, (int, float)) or not math.isfinite(thr):
        raise ValueError(f"thr must be a finite number in [0, 1], got {thr!r}")
    if not 0.0 <= thr <= 1.0:
        raise ValueError(f"thr must be in [0, 1], got {thr}: the gradient loop stops at the first t with "
                         f"L_t < thr * L_max, so thr > 1 would stop at t = 0 before any gradient")
    if max_timesteps is not None and (isinstance(max_timesteps, bool) or not isinstance(max_timesteps, int)
                                      or max_timesteps < 1):
        raise ValueError(f"max_timesteps must be a whole number >= 1 (or None for all), got {max_timesteps!r}")
    if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1:
        raise ValueError(f"micro_batch must be a whole number >= 1, got {micro_batch!r}")
    for name, value, choices in (("scope", scope, ("local", "global")), ("scoring", scoring, SCORINGS),
                                 ("attn_grouping", attn_grouping, ATTN_GROUPINGS), ("head_mode", head_mode, HEAD_MODES)):
        if value not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    _fraction("target_params", target_params)
    _fraction("target_macs", target_macs)
    check_round_to(round_to)
    if round_to and round_to > 1 and (scope != "local" or head_mode != "channels"):
        raise ValueError(f"round_to applies to the local rule with head_mode 'channels', got scope={scope!r}, "
                         f"head_mode={head_mode!r}")
    if target_params is not None and target_macs is not None:
        raise ValueError("give target_params or target_macs, not both")


def _check_tensors(model: nn.Module, example_inputs: tuple, data: torch.Tensor | None,
                   eps: torch.Tensor | None) -> None:
    if not isinstance(example_inputs, (tuple, list)) or not example_inputs:
        raise ValueError("example_inputs must be a non-empty tuple of the model's positional inputs, e.g. (x, t)")
    x = example_inputs[0]
    # An image model (our U-Net's config, or image data for the gradient pass) reads (B, C, H, W).
    images = hasattr(getattr(model, "config", None), "image_size") or data is not None
    if isinstance(x, torch.Tensor) and (x.dim() < 2 or (images and x.dim() != 4)):
        raise ValueError(f"example_inputs[0] has shape {tuple(x.shape)}: it needs a batch dimension, e.g. "
                         f"(1, C, H, W){' = x[None]' if x.dim() == 3 else ''}")
    if data is not None:
        if not isinstance(data, torch.Tensor) or data.dim() != 4:
            raise ValueError(f"data must be a (B, C, H, W) batch of images, got "
                             f"{tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__}")
        if not bool(torch.isfinite(data).all()):
            raise ValueError("data holds non-finite values (nan or inf)")
        lo, hi = float(data.min()), float(data.max())
        if lo < -1 - 1e-5 or hi > 1 + 1e-5:  # the diffusion was trained on x0 in [-1, 1]
            raise ValueError(f"data must be images scaled to [-1, 1] (x0 of the diffusion), got values in "
                             f"[{lo:.3g}, {hi:.3g}]; images in [0, 1] become 2 * x - 1")
    if eps is not None:
        if data is None or not isinstance(eps, torch.Tensor) or eps.shape != data.shape:
            raise ValueError(f"eps must have the shape of data {tuple(data.shape) if data is not None else None}, "
                             f"got {tuple(eps.shape) if isinstance(eps, torch.Tensor) else eps!r}")
        if not bool(torch.isfinite(eps).all()):
            raise ValueError("eps holds non-finite values (nan or inf)")


def prune(model: nn.Module, example_inputs: tuple, *, method: str = "diff-pruning", ratio: float = 0.3,
          ignored: Iterable[str] = (), data: torch.Tensor | None = None, eps: torch.Tensor | None = None,
          schedule: Schedule | None = None, thr: float = 0.05, scope: str = "local", scoring: str = "sequential",
          attn_grouping: str = "joint", head_mode: str = "channels", attn_scale: str | None = None,
          target_params: float | None = None, target_macs: float | None = None, micro_batch: int = 16,
          max_timesteps: int | None = None, seed: int = 0, progress: bool = True,
          round_to: int | None = None) -> tuple[nn.Module, PruneReport]:
    """Prune ``model`` in place and return it with a ``PruneReport``; on any error ``model`` is left untouched.

    example_inputs: positional inputs of one forward pass, e.g. (x (1, 3, H, W), t (1,)).
    method:         random | magnitude | taylor | diff-pruning | scratch (random pruning, then re-init).
    ratio:          the paper's per-group channel sparsity (local) or the global fraction of channels.
    ignored:        module paths whose output channels are never pruned (the network output is protected anyway).
    data, eps:      (B, C, H, W) clean images in [-1, 1], the ONE batch x0 of the gradient criteria, and the ONE
                    noise draw used at every t (drawn from ``seed`` if not given; pass it to replay a run).
    thr:            Diff-Pruning's threshold in [0, 1] (0 keeps every timestep; "taylor" always uses 0).
    scoring:        "sequential" (the paper's code) or "dense" (see ``SCORINGS``).
    attn_grouping:  "joint" (q, k, v and proj_out's input one group, the paper's code) or "split".
    target_params, target_macs: a fraction of parameters / MACs to remove instead of ``ratio``: the ratio
                    (local) or global fraction that reaches it is found by bisection (``pruning/targets.py``).
    micro_batch:    at most this many samples per forward/backward of the gradient pass: micro_batch // B
                    timesteps per pass, or micro-batches of one timestep (same gradient either way).
    max_timesteps:  cap on the timesteps of the gradient loop (for quick runs; None = up to T).
    round_to:       keep every pruned width a multiple of this (local rule; ``pruning/select.py``), for speed.
    """
    check_arguments(method, ratio, thr, scope, max_timesteps=max_timesteps, scoring=scoring,
                    attn_grouping=attn_grouping, head_mode=head_mode, target_params=target_params,
                    target_macs=target_macs, micro_batch=micro_batch, round_to=round_to)
    if method in GRADIENT_METHODS and data is None:
        raise ValueError(f"method {method!r} needs data: a batch of clean training images (data=x0)")
    _check_tensors(model, example_inputs, data, eps)
    seconds: dict[str, float] = {}
    widths_before, params_before = layer_widths(model), sum(p.numel() for p in model.parameters())
    generator = torch.Generator().manual_seed(seed)
    with rollback(model):
        # 1. Coupled groups, and the order in which the paper's pruner visits them.
        start = time.perf_counter()
        analysis = analyze(model, example_inputs, ignored=ignored, attn_grouping=attn_grouping)
        groups = analysis.groups
        groups_text = describe(groups)
        seconds["trace_and_group"] = time.perf_counter() - start
        kind, goal = ("params", target_params) if target_params is not None else ("macs", target_macs)
        target = None

        def find_ratio(select=None) -> float:  # a target instead of a ratio: bisection (pruning/targets.py)
            nonlocal target
            start = time.perf_counter()
            found, achieved = ratio_for_target(model, example_inputs, analysis, kind=kind, target=goal,
                                               select=select, head_mode=head_mode, round_to=round_to)
            target = {"kind": kind, "target": goal, "achieved": achieved, "ratio": found}
            seconds["target_search"] = time.perf_counter() - start
            return found

        if goal is not None and scope == "local":  # local widths do not depend on scores: search right away
            ratio = find_ratio()

        # 2. G = sum_{t < T'} grad L_t into .grad (thr = 0: every t, the plain Taylor baseline).
        timesteps = None
        if method in GRADIENT_METHODS:
            start = time.perf_counter()
            timesteps = accumulate_gradients(model, schedule or Schedule(), data, eps=eps, generator=generator,
                                             thr=0.0 if method == "taylor" else thr, micro_batch=micro_batch,
                                             max_timesteps=max_timesteps, progress=progress)
            seconds["gradients"] = time.perf_counter() - start

        # 3. Score -> select -> cut, group by group.
        start = time.perf_counter()
        criterion = IMPORTANCE["random" if method == "scratch" else method]
        score = lambda g: criterion(model, g, generator=generator)  # noqa: E731
        if scope == "global":  # one ranking over all groups needs every score on the same (dense) network
            order = [i for i, g in enumerate(groups) if g.prunable]
            scores = {i: score(groups[i]) for i in order}
            rank = lambda r: select_groups(groups, scores, r, scope="global", head_mode=head_mode)  # noqa: E731
            if goal is not None:
                ratio = find_ratio(rank)
            keeps = rank(ratio)
            apply_keeps(model, groups, keeps)
        else:
            order = analysis.paper_order
            keeps = prune_local(model, groups, order, score, ratio, head_mode=head_mode,
                                dense_scores=scoring == "dense", round_to=round_to)

        # 4. Attributes, config widths, consistency; then the re-trace proves the forward runs as planned.
        dense_keeps = {i: k.numpy() for i, k in keeps.items()}
        attributes = update_attributes(model, analysis, dense_keeps, attn_scale=attn_scale)
        finalize(model)
        seconds["select_and_surgery"] = time.perf_counter() - start
        start = time.perf_counter()
        retrace_check(model, example_inputs, analysis, dense_keeps)
        seconds["retrace_check"] = time.perf_counter() - start
        if method == "scratch":  # the paper's "scratch" row: the pruned structure, freshly initialised
            reinitialize(model, seed=seed)
        for p in model.parameters():  # the accumulated gradients served the ranking only
            p.grad = None

    report = PruneReport(method=method, ratio=ratio, scope=scope, widths_before=widths_before,
                         widths_after=layer_widths(model), groups=groups, groups_text=groups_text,
                         params_before=params_before, params_after=sum(p.numel() for p in model.parameters()),
                         timesteps=timesteps, seconds=seconds, scoring=scoring, attn_grouping=attn_grouping,
                         order=[analysis.roots.get(i, groups[i].name) for i in order], attributes=attributes,
                         target=target, kept=kept_channels(analysis, dense_keeps), round_to=round_to)
    return model, report


def prune_local(model: nn.Module, groups: list[Group], order: list[int], score: Callable[[Group], torch.Tensor],
                ratio: float, *, head_mode: str = "channels", dense_scores: bool = False,
                round_to: int | None = None) -> dict[int, torch.Tensor]:
    """The local rule, group by group in ``order``: score (on the network the groups before have already
    pruned, as the paper's code; or all on the dense network with ``dense_scores``), keep what ``select_local``
    keeps, cut. With head_mode "heads", groups sharing an attention module are scored, selected and cut
    together when the first of them comes up. Returns the keep sets in dense group coordinates."""
    head_groups = [i for i in order if any(h > 1 for *_, h in groups[i].heads)]
    clusters = _head_clusters(groups, head_groups) if head_mode == "heads" else []
    cluster_of = {i: c for c in clusters for i in c}
    dense = {i: score(groups[i]) for i in order} if dense_scores else {}
    keeps: dict[int, torch.Tensor] = {}
    for i in order:
        if i in keeps:
            continue
        members = cluster_of.get(i, [i])
        scores = {j: dense[j] if dense_scores else score(groups[j]) for j in members}
        chosen = (select_groups(groups, scores, ratio, head_mode="heads") if i in cluster_of
                  else {i: select_local(scores[i], groups[i], ratio, round_to)})
        for j, keep in chosen.items():
            prune_group(model, groups[j], keep, others=groups)
            keeps[j] = keep
    return keeps


def kept_channels(analysis: Analysis, keeps: dict[int, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """For every traced layer, the kept channel indices in the DENSE layer's coordinates, per role
    ({"conv1": {"out": ..., "in": ...}, "norm2": {"norm": ...}}): what the paper's code keeps, comparable
    across implementations."""
    out: dict[str, dict[str, np.ndarray]] = {}
    alive = analysis.alive(keeps)
    for path, role, labels in analysis.trace.members:
        out.setdefault(path, {})[role] = np.nonzero(analysis.kept_mask(labels, alive))[0]
    return out
