"""Diff-Pruning's timestep-thresholded gradient accumulation: the G that the gradient criteria read.

The Diff-Pruning gradient (Fang, Ma & Wang 2023, "Structural Pruning for Diffusion Models", Fig. 1 and the
``ddpm_exp/prune.py`` loop) is  G = sum_{t=0}^{T'-1} grad_theta L_t(theta; x0, eps),  with one batch x0,
one noise draw eps for all t, and T' the first t with L_t < thr * max_{s<=t} L_s  (``accumulate_gradients``).
For a conditional U-Net each x0_b travels with its condition c_b and L_t is the conditional loss
(``pruning/conditional.py``); the loop, the noise and the threshold rule are the same.
"""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from diffusion.ddpm import eps_loss_per_sample
from diffusion.guidance import Conditioning
from diffusion.schedule import Schedule
from models.runtime import channels_last_scope
from pruning.memory import out_of_memory_named

@dataclass
class TimestepReport:
    """What ``accumulate_gradients`` did.

    kept:     timesteps whose gradient was accumulated (a prefix 0..T'-1).
    losses:   L_t for every t computed, including the first rejected one (if the loop stopped).
    loss_max: the running max of L_t at the end.
    thr:      the threshold; the loop stops at the first t with L_t < thr * loss_max.
    stopped_at: the first rejected t, or None when no t was rejected (all computed t kept).
    cap:      ``max_timesteps`` where it was below the schedule's T (the loop could end there), else None.
    """

    kept: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    loss_max: float = 0.0
    thr: float = 0.0
    stopped_at: int | None = None
    cap: int | None = None

    @property
    def threshold(self) -> float:
        return self.thr * self.loss_max

    @property
    def stop_reason(self) -> str:
        """Why the loop ended, for summaries: the threshold, the --max-timesteps cap, or the end of the schedule."""
        if self.stopped_at is not None:
            return f"stopped at t={self.stopped_at}: L_t < thr * L_max"
        if self.cap is not None and len(self.losses) >= self.cap:
            return f"the --max-timesteps cap ({self.cap}) stopped the loop before any t fell below the threshold"
        return "no t below the threshold"


def _progress(T: int, thr: float, progress: bool) -> tqdm:
    """The gradient pass's bar. With thr > 0 the loop length is unknown until L_t falls below thr * L_max, so
    the bar counts timesteps (no total, no ETA) and shows the running L_t / L_max against the stop level."""
    return tqdm(total=T if thr == 0 else None, desc="gradient timesteps", unit="t", disable=not progress)


def _show(bar: tqdm, L_t: float, report: "TimestepReport") -> None:
    if report.thr > 0 and report.loss_max > 0:
        bar.set_postfix_str(f"L_t/L_max {L_t / report.loss_max:.3f}, stops below {report.thr:g}", refresh=False)


def _network(model: nn.Module, cond: Conditioning | None, rows: slice | list[int] | None = None) -> Callable:
    """eps_theta(x_t, t) for the samples ``rows`` of the batch: the model itself, or, for a conditional U-Net,
    the model given those samples' conditions c_b (``unet(x_t, t, encoder_hidden_states=..., ...)``)."""
    if cond is None:
        return model
    return functools.partial(model, **(cond if rows is None else cond.select(rows)).kwargs())


def accumulate_gradients(model: nn.Module, schedule: Schedule, x0: torch.Tensor, *, thr: float, micro_batch: int,
                         eps: torch.Tensor | None = None, generator: torch.Generator | None = None,
                         max_timesteps: int | None = None, progress: bool = False,
                         cond: Conditioning | None = None, channels_last: bool = True) -> TimestepReport:
    """Accumulate G = sum_{t < T'} grad L_t into ``.grad`` (Diff-Pruning's loop, ``ddpm_exp/prune.py`` L236-258).

        L_t = mean_b sum_{C,H,W} (eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t[, c_b]))^2

    for t = 0, 1, ..., T-1 in increasing order, the same t for the whole batch, ONE noise draw ``eps`` reused
    for every t (drawn from ``generator`` if not given). A running max L_max includes L_t; the loop stops at
    the first t with L_t < thr * L_max *before* that t's gradient is added (thr = 0 keeps every t: the
    "taylor" recipe). Existing ``.grad`` are cleared first. The model runs in eval mode (dropout off, as in
    the paper code) and is returned to its previous mode afterwards.

    x0: (B, C, H, W) one batch in [-1, 1]. micro_batch: at most this many samples per forward/backward (the
    memory budget); the result does not depend on it. With micro_batch >= B, k = micro_batch // B timesteps go
    through one pass (``_accumulate_chunks``: B x k samples, far better use of the matrix units than B); a
    smaller micro_batch splits each timestep's batch instead.
    max_timesteps: compute at most this many t (speed); the loop then ends without a rejected t.
    cond: for a conditional U-Net, the B samples' conditions (row b goes with x0_b at every t; latents x0 need
    not lie in [-1, 1]); None: eps_theta(x_t, t), exactly the unconditional loop.
    channels_last: run the passes with the 4-D weights in channels-last memory order
    (``models.runtime.channels_last_scope``; restored afterwards, gradients included). The same G up to the
    order of float additions; on CPU the forward + backward is about 1.15x faster (docs/PERFORMANCE.md).
    """
    if not math.isfinite(thr) or not 0 <= thr <= 1:
        raise ValueError(f"thr must be a finite number in [0, 1], got {thr}")
    if max_timesteps is not None and max_timesteps < 1:
        raise ValueError(f"max_timesteps must be >= 1, got {max_timesteps}")
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    if eps.shape != x0.shape:
        raise ValueError(f"eps shape {tuple(eps.shape)} != x0 shape {tuple(x0.shape)}")
    T = schedule.num_timesteps if max_timesteps is None else min(schedule.num_timesteps, max_timesteps)
    names = {id(p): n for n, p in model.named_parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    report = TimestepReport(thr=float(thr), cap=T if T < schedule.num_timesteps else None)
    bar = _progress(T, thr, progress)
    memory_order = channels_last_scope(model) if channels_last else contextlib.nullcontext()
    try:
        with memory_order:
            _timestep_loop(model, schedule, x0, eps, T, micro_batch, thr, report, params, names, bar, cond)
    finally:
        bar.close()
        model.train(was_training)
    return report


def _timestep_loop(model: nn.Module, schedule: Schedule, x0: torch.Tensor, eps: torch.Tensor, T: int,
                   micro_batch: int, thr: float, report: TimestepReport, params: list[torch.Tensor],
                   names: dict[int, str], bar: tqdm, cond: Conditioning | None) -> None:
    """The timestep loop of ``accumulate_gradients``: k timesteps per pass, or each t's batch in micro-batches."""
    B = x0.shape[0]
    if micro_batch >= B:
        _accumulate_chunks(model, schedule, x0, eps, T, micro_batch // B, thr, report, params, names, bar, cond)
        return
    for t in range(T):
        # Micro-batches smaller than B: L_t needs the whole batch, but we do not hold B samples' graphs at
        # once. Snapshot the grads, backward each micro-batch as it comes, and if the completed L_t falls
        # below the threshold restore the snapshot. Exact: the snapshot is a copy of the grads before t, so after a
        # restore they are bit-identical to never having run t's backward; and since
        # mean_B = sum_mb (mb/B) mean_mb, the micro-batch gradients add up to the full-batch one.
        snapshot = [None if p.grad is None else p.grad.clone() for p in params]
        L_t = 0.0
        for start in range(0, B, micro_batch):
            sl = slice(start, start + micro_batch)
            tt = torch.full((x0[sl].shape[0],), t, dtype=torch.long, device=x0.device)
            with out_of_memory_named(f"timestep t={t}, samples {start}..{start + len(tt) - 1} of the batch",
                                     micro_batch=micro_batch, batch_size=B):
                per = eps_loss_per_sample(_network(model, cond, sl), schedule, x0[sl], tt, eps[sl],
                                          reduction="sum")  # (mb,)
                part = per.sum() / B  # = (mb / B) * mean over the micro-batch
                part.backward()
            L_t += part.item()
        _check_finite_loss(L_t, t)
        _check_finite_grads(params, names, t)
        report.losses.append(L_t)
        report.loss_max = max(report.loss_max, L_t)
        bar.update(1)
        _show(bar, L_t, report)
        if L_t < thr * report.loss_max:
            for p, saved in zip(params, snapshot):
                p.grad = saved
            report.stopped_at = t
            break
        report.kept.append(t)


def _accumulate_chunks(model: nn.Module, schedule: Schedule, x0: torch.Tensor, eps: torch.Tensor, T: int, k: int,
                       thr: float, report: TimestepReport, params: list[torch.Tensor], names: dict[int, str],
                       bar: tqdm, cond: Conditioning | None = None) -> None:
    """The timestep loop of ``accumulate_gradients`` with k timesteps per forward/backward (k * B samples).

    Each pass stacks the batch k times, sample j * B + b being (x0_b, eps_b) at t_j, and computes the k losses
    L_t in one forward. They are then read in increasing t exactly as the one-t loop reads them (running max,
    stop at the first L_t < thr * L_max), and only the kept ones enter the backward: the gradient of
    sum_{kept t} L_t, the same sum the loop accumulates one t at a time (the same up to float summation order;
    a rejected t in the pass is computed but never differentiated). Each L_t comes from the same graph as its
    gradient, so nothing is evaluated twice.
    """
    B = x0.shape[0]
    for t0 in range(0, T, k):
        ts = list(range(t0, min(t0 + k, T)))
        tt = torch.tensor(ts, dtype=torch.long, device=x0.device).repeat_interleave(B)  # (k B,): t-major
        n = len(ts)
        net = _network(model, cond, None if cond is None else list(range(B)) * n)  # c_b repeated like x0_b
        where = f"timesteps t={ts[0]}..{ts[-1]}, {n * B} samples in one pass"
        with out_of_memory_named(where, micro_batch=k * B, batch_size=B):
            per = eps_loss_per_sample(net, schedule, x0.repeat(n, 1, 1, 1), tt, eps.repeat(n, 1, 1, 1),
                                      reduction="sum")  # (k B,)
        losses = per.view(n, B).mean(dim=1)  # (k,): L_t for each t of the pass
        kept = 0
        for t, L_t in zip(ts, losses.tolist()):
            _check_finite_loss(L_t, t)
            report.losses.append(L_t)
            report.loss_max = max(report.loss_max, L_t)
            if L_t < thr * report.loss_max:
                report.stopped_at = t
                break
            kept += 1
        if kept:
            with out_of_memory_named(where, micro_batch=k * B, batch_size=B):
                losses[:kept].sum().backward()
            if not _grads_finite(params):
                _name_non_finite_timestep(_network(model, cond), schedule, x0, eps, report.kept + ts[:kept], params,
                                          names)
            report.kept.extend(ts[:kept])
        bar.update(len(report.losses) - bar.n)  # the timesteps read, up to and including a rejected one
        _show(bar, report.losses[-1], report)
        if report.stopped_at is not None:
            break


def _grads_finite(params: list[torch.Tensor]) -> bool:
    grads = [p.grad.sum() for p in params if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.stack(grads).sum()))


def _name_non_finite_timestep(model: Callable, schedule: Schedule, x0: torch.Tensor, eps: torch.Tensor,
                              ts: list[int], params: list[torch.Tensor], names: dict[int, str]) -> None:
    """A pass left the accumulated gradient non-finite. Failure path, so cost does not matter: redo the sum
    one timestep at a time over every t accumulated so far (``ts``), checking after each, so the error names
    the timestep and the parameter exactly as the one-t loop would. Always raises."""
    B = x0.shape[0]
    for p in params:
        p.grad = None
    for t in ts:
        tt = torch.full((B,), t, dtype=torch.long, device=x0.device)
        eps_loss_per_sample(model, schedule, x0, tt, eps, reduction="sum").mean().backward()
        _check_finite_grads(params, names, t)
    raise FloatingPointError(f"the gradient became non-finite in the pass over timesteps t={ts[0]}..{ts[-1]} "
                             "but not one timestep at a time (float rounding); nothing was pruned")


def _check_finite_loss(L_t: float, t: int) -> None:
    if not math.isfinite(L_t):
        raise FloatingPointError(f"the diffusion loss L_t is {L_t} at timestep t={t}: the model (or data) gives "
                                 "non-finite outputs, so no importance can be computed; nothing was pruned")


def _check_finite_grads(params: list[torch.Tensor], names: dict[int, str], t: int) -> None:
    """One reduction per timestep: a nan or inf anywhere in the accumulated gradient makes the sum non-finite."""
    if not _grads_finite(params):
        bad = next(names.get(id(p), "?") for p in params if p.grad is not None and not bool(torch.isfinite(p.grad).all()))
        raise FloatingPointError(f"the gradient of {bad} became non-finite at timestep t={t}; nothing was pruned")
