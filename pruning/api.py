"""``pruning.prune``: the whole channel-pruning algorithm in one function, which prune.py is a thin shell over.

    model, report = prune(model, model.example_inputs(), ChannelPruning(ratio=0.3, thr=0.05), data=x0)
    model, report = prune(model, (x, t), method="diff-pruning", ratio=0.3, data=x0)   # the same, spelled inline

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

Any error leaves the caller's model exactly as it was (``pruning/rollback.py``). What to do is ONE frozen spec,
``ChannelPruning`` (``pruning/spec.py``: every option, its default and its check). The same function runs the
baselines of the paper's Table 1 (random, magnitude, taylor = the Diff-Pruning score over all timesteps, scratch),
the first-order Taylor variant, and the principled alternatives to the paper code's choices
(``attn_grouping="split"``, ``scoring="dense"``, ``scope="global"``).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from diffusion.schedule import Schedule
from pruning.checks import retrace_check, warn_protected
from pruning.conditional import ConditionalBatch, split_data
from pruning.groups import Group, describe
from pruning.importance import IMPORTANCE, TimestepReport, accumulate_gradients
from pruning.inputs import check_channel_inputs
from pruning.rollback import rollback
from pruning.scratch import reinitialize
from pruning.select import _head_clusters, select_groups, select_local
from pruning.spec import GRADIENT_METHODS, METHODS, ChannelPruning  # noqa: F401 (METHODS re-exported)
from pruning.surgery import apply_keeps, finalize, prune_group, update_attributes
from pruning.targets import check_feasible, ratio_for_target
from pruning.trace.grouping import Analysis, analyze

# The score each method ranks channels by (pruning/importance.py); both taylors and diff-pruning read the
# accumulated gradient, over every timestep or up to the threshold (ChannelPruning.gradient_thr).
CRITERION = {"random": "random", "scratch": "random", "magnitude": "magnitude", "taylor": "diff-pruning",
             "taylor-first-order": "taylor-first-order", "diff-pruning": "diff-pruning"}


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
    spec: ChannelPruning | None = None  # what was asked; ``ratio`` above is what it came to
    order_source: str = "autograd"  # which walk ordered the groups (pruning/trace/grouping.py)
    head_mode: str = "channels"  # what the spec's head_mode came to for this model (ChannelPruning.head_mode_for)

    def applied(self) -> dict[str, Any]:
        """What the spec came to: the ratio applied (found by bisection for a target), the threshold and the
        timesteps the gradient pass used, the group order's source."""
        ts = self.timesteps
        return {"ratio": self.ratio, "thr": None if ts is None else ts.thr, "order_source": self.order_source,
                "timesteps": None if ts is None else len(ts.kept), "target": self.target}

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (saved next to the pruned checkpoint)."""
        ts = self.timesteps
        return {"spec": None if self.spec is None else self.spec.to_dict(), "applied": self.applied(),
                "method": self.method, "ratio": self.ratio, "scope": self.scope, "scoring": self.scoring,
                "attn_grouping": self.attn_grouping, "head_mode": self.head_mode, "target": self.target, "round_to": self.round_to,
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


def channel_spec(data: torch.Tensor | ConditionalBatch | None = None, **options: Any) -> ChannelPruning:
    """The spec of keyword options (``prune(model, x, method=..., ratio=..., data=x0)``): a gradient method's
    batch size is the batch it is given unless stated."""
    x0, _ = split_data(data)
    if "method" not in options or options["method"] in GRADIENT_METHODS:
        if "batch_size" not in options and isinstance(x0, torch.Tensor) and x0.dim() == 4:
            options["batch_size"] = int(x0.shape[0])
    if isinstance(options.get("ignored"), (list, tuple)):
        options["ignored"] = tuple(options["ignored"])
    return ChannelPruning(**options)


def check_prune(model: nn.Module, example_inputs: tuple, spec: ChannelPruning,
                data: torch.Tensor | ConditionalBatch | None = None) -> None:
    """Everything ``prune`` checks before its long work, for a caller with long work of its own before ``prune``
    (prune.py draws the before-grid): the inputs (pruning/inputs.py) and what the spec asks of the model's
    groups (a ratio that empties a group, a round_to that changes nothing). One trace; ``model`` unchanged."""
    check_channel_inputs(model, example_inputs, data if spec.gradient else None)
    analysis = analyze(model, example_inputs, ignored=spec.ignored, attn_grouping=spec.attn_grouping)
    head_mode = spec.head_mode_for(model)
    check_feasible(analysis, ratio=None if spec.target else spec.ratio, head_mode=head_mode,
                   round_to=spec.round_to, scope=spec.scope)
    if spec.target is not None and spec.scope == "local":  # reachable at all (the bisection comes in prune)
        ratio_for_target(model, example_inputs, analysis, kind=spec.target[0], target=spec.target[1],
                         head_mode=head_mode, round_to=spec.round_to, iterations=0)


def prune(model: nn.Module, example_inputs: tuple, spec: ChannelPruning | None = None,
          data: torch.Tensor | ConditionalBatch | None = None, *, eps: torch.Tensor | None = None, schedule: Schedule | None = None,
          progress: bool = True, **options: Any) -> tuple[nn.Module, PruneReport]:
    """Prune ``model`` in place as ``spec`` says and return it with a ``PruneReport``; on any error ``model``
    is left untouched.

    example_inputs: positional inputs of one forward pass, e.g. ``model.example_inputs()`` = (x (1, 3, H, W), t (1,)).
    spec:           a ``ChannelPruning`` (pruning/spec.py: methods, options, defaults). Instead of a spec, its
                    options may be given as keywords (``method="magnitude", ratio=0.5``): they build the spec.
    data, eps:      (B, C, H, W) clean images in [-1, 1], the ONE batch x0 of the gradient methods (B must be
                    ``spec.batch_size``), and the ONE noise draw used at every t (drawn from ``spec.seed`` if
                    not given; pass it to replay a run). The other methods do not read them. A conditional
                    U-Net (SD's ``UNet2DConditionModel``) takes ``ConditionalBatch(x0=latents, encoder_hidden_states=
                    ..., class_labels=..., added_cond_kwargs=...)`` (pruning/conditional.py): L_t is then the
                    conditional loss, each latent with its own condition.
    schedule:       the diffusion schedule of the gradient pass (default ``Schedule()``).
    """
    if spec is None:
        spec = channel_spec(data, **options)
    elif options:
        raise TypeError(f"give a ChannelPruning spec or keyword options, not both (got {sorted(options)})")
    elif not isinstance(spec, ChannelPruning):
        raise TypeError(f"spec must be a pruning.spec.ChannelPruning, got {type(spec).__name__}")
    if spec.gradient:
        if data is None:
            raise ValueError(f"method {spec.method!r} needs data: a batch of clean training images (data=x0), or "
                             "of latents with their conditions (data=ConditionalBatch(...))")
    else:
        data = eps = None  # not read
    check_channel_inputs(model, example_inputs, data, eps)  # every method: the model, then the data
    x0, cond = split_data(data)
    if spec.gradient and x0.shape[0] != spec.batch_size:
        raise ValueError(f"data holds {x0.shape[0]} images but the spec's gradient batch is "
                         f"batch_size={spec.batch_size}")
    seconds: dict[str, float] = {}
    widths_before, params_before = layer_widths(model), sum(p.numel() for p in model.parameters())
    generator = torch.Generator().manual_seed(spec.seed)
    ratio, target_spec, head_mode, round_to = spec.ratio, spec.target, spec.head_mode_for(model), spec.round_to
    with rollback(model):
        if spec.attn_scale is not None and hasattr(getattr(model, "config", None), "attn_scale"):
            model.config = dataclasses.replace(model.config, attn_scale=spec.attn_scale)  # saved with the model
        # 1. Coupled groups, and the order in which the paper's pruner visits them.
        start = time.perf_counter()
        analysis = analyze(model, example_inputs, ignored=spec.ignored, attn_grouping=spec.attn_grouping)
        groups = analysis.groups
        check_feasible(analysis, ratio=None if target_spec else ratio, head_mode=head_mode, round_to=round_to,
                       scope=spec.scope)  # before any gradient pass or scoring
        groups_text = describe(groups)
        warn_protected(groups)  # a group kept whole by the code's structure, not by the caller: say so
        seconds["trace_and_group"] = time.perf_counter() - start
        target = None

        def find_ratio(select=None) -> float:  # a target instead of a ratio: bisection (pruning/targets.py)
            nonlocal target
            start = time.perf_counter()
            kind, goal = target_spec
            found, achieved = ratio_for_target(model, example_inputs, analysis, kind=kind, target=goal,
                                               select=select, head_mode=head_mode, round_to=round_to)
            target = {"kind": kind, "target": goal, "achieved": achieved, "ratio": found}
            seconds["target_search"] = time.perf_counter() - start
            return found

        if target_spec is not None and spec.scope == "local":  # local widths do not depend on scores: search now
            ratio = find_ratio()

        # 2. G = sum_{t < T'} grad L_t into .grad (thr = 0 for both taylors: every t).
        timesteps = None
        if spec.gradient:
            start = time.perf_counter()
            timesteps = accumulate_gradients(model, schedule or Schedule(), x0, eps=eps, generator=generator,
                                             thr=spec.gradient_thr, micro_batch=spec.micro_batch,
                                             max_timesteps=spec.max_timesteps, progress=progress, cond=cond)
            seconds["gradients"] = time.perf_counter() - start

        # 3. Score -> select -> cut, group by group.
        start = time.perf_counter()
        criterion = IMPORTANCE[CRITERION[spec.method]]
        score = lambda g: criterion(model, g, generator=generator)  # noqa: E731
        if spec.scope == "global":  # one ranking over all groups needs every score on the same (dense) network
            order = [i for i, g in enumerate(groups) if g.prunable]
            scores = {i: score(groups[i]) for i in order}
            rank = lambda r: select_groups(groups, scores, r, scope="global", head_mode=head_mode)  # noqa: E731
            if target_spec is not None:
                ratio = find_ratio(rank)
            keeps = rank(ratio)
            apply_keeps(model, groups, keeps)
        else:
            order = analysis.paper_order
            keeps = prune_local(model, groups, order, score, ratio, head_mode=head_mode,
                                dense_scores=spec.scoring == "dense", round_to=round_to)

        # 4. Attributes, config widths, consistency; then the re-trace proves the forward runs as planned.
        dense_keeps = {i: k.numpy() for i, k in keeps.items()}
        attributes = update_attributes(model, analysis, dense_keeps, attn_scale=spec.attn_scale)
        finalize(model)
        seconds["select_and_surgery"] = time.perf_counter() - start
        start = time.perf_counter()
        retrace_check(model, example_inputs, analysis, dense_keeps)
        seconds["retrace_check"] = time.perf_counter() - start
        if spec.method == "scratch":  # the paper's "scratch" row: the pruned structure, freshly initialised
            reinitialize(model, seed=spec.seed)
        for p in model.parameters():  # the accumulated gradients served the ranking only
            p.grad = None

    report = PruneReport(method=spec.method, ratio=ratio, scope=spec.scope, widths_before=widths_before,
                         widths_after=layer_widths(model), groups=groups, groups_text=groups_text,
                         params_before=params_before, params_after=sum(p.numel() for p in model.parameters()),
                         timesteps=timesteps, seconds=seconds, scoring=spec.scoring, attn_grouping=spec.attn_grouping,
                         order=[analysis.roots.get(i, groups[i].name) for i in order], attributes=attributes,
                         target=target, kept=kept_channels(analysis, dense_keeps), round_to=round_to, spec=spec,
                         order_source=analysis.order_source, head_mode=head_mode)
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
