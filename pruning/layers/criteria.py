"""Layer-pruning criteria: one score per removable unit; the lowest scores are removed first.

Registry ``LAYER_CRITERIA`` (keys double as ``prune.py --criterion`` choices):

``output-loss``  LAPTOP-Diff's one-shot criterion (Zhang et al. 2024, arXiv 2404.11098, Sec. 3): the output
                 distortion of removing unit i alone,

                     s_i = L({i}),   L(S) = E_{x0, t, eps} || eps_theta^(-S)(x_t, t) - eps_theta(x_t, t) ||^2,

                 over a fixed calibration set of (x0, t, eps) (``make_calibration``). Reported as a per-pixel
                 mean (the paper's squared norm divided by C*H*W), so values read like the held-out eps-MSE.
                 All units' scores come from batched forward passes of the one model: replica r of the
                 calibration batch runs with unit r removed (``pruning/layers/units.py``, ``mask_units``).
``random``       uniform random scores (seeded): the baseline any criterion must beat.
``handcrafted``  (an SD-v1 U-Net with an ``architecture``: BK-SDM's exact architectures, ``pruning/layers/bksdm.py``)
                 a fixed rule in the spirit of BK-SDM (Kim et al. 2023, arXiv 2305.15798: fewer
                 blocks per stage, then no mid block): ranks, lowest removed first, in this order:
                 (1) the last ResBlock, then its attention, of every stage that has more than one ResBlock,
                 decoder stages innermost first, then encoder stages innermost first; (2) the mid block
                 (attention, block_2, block_1); (3) every other unit, innermost resolution first, encoder
                 before decoder. Meant for ``solver="ranked"`` (remove in this order until the target is met).
                 On an SD U-Net the same rule in its names: the second (ResNet, attention) pair of every
                 down block and the middle pair of every up block, innermost first (BK-SDM-Base's removals),
                 then the mid block (BK-SDM-Small's), then the rest.
``taylor``       the Diff-Pruning channel score (Fang et al. 2023, arXiv 2305.10924; ``pruning/importance.py``
                 ``diff_pruning_importance``) summed over the unit's branch parameters: sum (W * G)^2 over its
                 conv/linear weights plus sum |gamma * G| over its GroupNorm (SD: and LayerNorm) weights, with G
                 the gradient accumulated over t = 0 .. T' (threshold ``thr``, the paper's 0.05 by default).

Every criterion is ``fn(model, units, inputs) -> {path: score}`` with ``inputs`` a ``CriterionInputs``.
An SD U-Net (``pruning/layers/sd.py``) is scored the same way on (latent, t, eps, condition): the calibration
set carries the forward keywords (``cond``: prompt embeddings, class labels, SDXL's added conditions), and
taylor's gradient pass runs on latents with their conditions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from tqdm import tqdm
from torch import nn

from diffusion.ddpm import q_sample, stratified_timesteps
from diffusion.guidance import Conditioning
from diffusion.schedule import Schedule
from models.ddpm.unet import UNet, removable_units
from pruning.importance import accumulate_gradients
from pruning.layers import sd
from pruning.layers.units import Unit, branch_parameters, mask_units

DEFAULT_CALIB_SIZE = 64        # (x0, t, eps) triples; tested stable enough on the tiny teacher (README)
DEFAULT_CALIB_TIMESTEPS = "stratified"


@dataclass
class Calibration:
    """A fixed set of noisy inputs: x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (Ho et al. eq. 4)."""

    x_t: torch.Tensor    # (N, C, H, W)
    t: torch.Tensor      # (N,) integer timesteps
    seed: int
    timesteps: str
    cond: dict | None = None  # SD: forward keywords with N rows each (encoder_hidden_states (N, M, D), ...)

    def forward(self, model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, rows: torch.Tensor,
                replicas: int = 1) -> torch.Tensor:
        """model(x_t, t) (DDPM) or model(x_t, t, **cond[rows]) with the condition repeated ``replicas``
        times, on x_t's device: the calibration samples ``rows`` stacked ``replicas`` times."""
        if self.cond is None:
            return model(x_t, t)
        cond = sd.map_tensors(self.cond, lambda v: v[rows.cpu()].to(x_t.device))
        return model(x_t, t, **sd.repeat_cond(cond, replicas))


def make_calibration(images: torch.Tensor, schedule: Schedule, *, size: int = DEFAULT_CALIB_SIZE,
                     timesteps: str = DEFAULT_CALIB_TIMESTEPS, seed: int = 0, cond: dict | None = None) -> Calibration:
    """``size`` triples from clean ``images`` (N, C, H, W) in [-1, 1], used in turn (image i % N).

    An SD U-Net's set: ``images`` are clean latents z0 (VAE-scaled), ``schedule`` its ``sd.latent_schedule()``
    and ``cond`` the forward keywords of each latent (N rows: prompt embeddings, ...); sample i takes row i % N.

    timesteps: "stratified" (default: one uniform draw in each of ``size`` equal bins of [0, T), shuffled,
    so every part of the chain is represented) or "uniform" (i.i.d. on {0..T-1}). eps ~ N(0, I). All of it
    is drawn from a generator seeded with ``seed``: the same set for every unit and every criterion.
    """
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"calibration images must be a non-empty (N, C, H, W) batch, got {tuple(images.shape)}")
    if size < 1:
        raise ValueError(f"calibration size must be >= 1, got {size}")
    if timesteps not in ("stratified", "uniform"):
        raise ValueError(f"calibration timesteps must be 'stratified' or 'uniform', got {timesteps!r}")
    g = torch.Generator().manual_seed(seed)
    T = schedule.num_timesteps
    if timesteps == "stratified":
        t = stratified_timesteps(size, T, g)
    else:
        t = torch.randint(0, T, (size,), generator=g)
    rows = torch.arange(size) % images.shape[0]
    x0 = images[rows].float().cpu()
    eps = torch.randn(x0.shape, generator=g)
    cond = sd.map_tensors(cond, lambda v: v[rows.to(v.device)].cpu())
    return Calibration(x_t=q_sample(schedule, x0, t, eps), t=t, seed=seed, timesteps=timesteps, cond=cond)


@torch.no_grad()
def output_losses(model: UNet, calib: Calibration, subsets: Sequence[frozenset[str] | set[str]],
                  batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    """L(S) for every S in ``subsets`` (float64, (len(subsets),)), in batched forward passes.

    Each pass stacks k = max(1, batch_size // N) replicas of the N calibration inputs; replica r runs with
    subset S_r removed (``mask_units``). The dense reference eps_theta(x_t, t) is computed once. The model
    runs in eval mode (dropout off) and is returned to its previous mode.
    """
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    was_training = model.training
    model.eval()
    try:
        N = calib.x_t.shape[0]
        x_t, t = calib.x_t.to(device).to(dtype), calib.t.to(device).float()
        rows = torch.arange(N)
        ref = torch.cat([calib.forward(model, x_t[i:i + batch_size], t[i:i + batch_size], rows[i:i + batch_size])
                         for i in range(0, N, batch_size)])
        k = max(1, batch_size // N)
        out = []
        bar = tqdm(total=len(subsets), desc="unit subsets L(S)", unit="subset", disable=not progress)
        for start in range(0, len(subsets), k):
            chunk = [frozenset(s) for s in subsets[start:start + k]]
            paths = sorted(set().union(*chunk))
            masks = {p: torch.tensor([p in s for s in chunk], device=device).repeat_interleave(N) for p in paths}
            with mask_units(model, masks):
                eps_pruned = calib.forward(model, x_t.repeat(len(chunk), 1, 1, 1), t.repeat(len(chunk)), rows, len(chunk))
            err = (eps_pruned - ref.repeat(len(chunk), 1, 1, 1)).double().pow(2)
            out.append(err.reshape(len(chunk), N, -1).mean(dim=(1, 2)).cpu())  # per-pixel mean, then over N
            bar.update(len(chunk))
        bar.close()
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)
    finally:
        model.train(was_training)


@dataclass
class CriterionInputs:
    """What the criteria may need. ``calib``: output-loss. ``x0``, ``schedule``, ``thr``, ``micro_batch``,
    ``max_timesteps``: taylor (its ONE gradient batch, as Diff-Pruning; their defaults live in the spec,
    pruning/layers/spec.py). ``seed``: random (and taylor's noise). ``batch_size``: samples per batched forward."""

    calib: Calibration | None = None
    x0: torch.Tensor | None = None
    cond: dict | None = None             # SD: x0's forward keywords (taylor's gradient batch)
    schedule: Schedule | None = None
    thr: float | None = None
    micro_batch: int | None = None
    max_timesteps: int | None = None
    seed: int = 0
    batch_size: int = 256


def output_loss_scores(model: UNet, units: Sequence[Unit], inputs: CriterionInputs) -> dict[str, float]:
    """s_i = L({i}) on ``inputs.calib`` for every unit (module docstring: LAPTOP-Diff's output loss)."""
    if inputs.calib is None:
        raise ValueError("criterion 'output-loss' needs a calibration set (make_calibration)")
    losses = output_losses(model, inputs.calib, [frozenset([u.path]) for u in units], inputs.batch_size)
    return {u.path: float(v) for u, v in zip(units, losses)}


def random_scores(model: UNet, units: Sequence[Unit], inputs: CriterionInputs) -> dict[str, float]:
    """U[0, 1) per unit from a generator seeded with ``inputs.seed``; the model is not read."""
    g = torch.Generator().manual_seed(inputs.seed)
    return {u.path: float(v) for u, v in zip(units, torch.rand(len(units), generator=g, dtype=torch.float64))}


def handcrafted_order(model: UNet) -> list[str]:
    """Every removable unit of the dense topology in the handcrafted rule's order (module docstring)."""
    c = model.config
    order: list[str] = []
    levels = range(len(c.ch_mult) - 1, -1, -1)  # innermost (lowest resolution) first
    for side, n in (("up", c.num_res_blocks + 1), ("down", c.num_res_blocks)):
        for i in levels:
            if n > 1:
                order += [f"{side}.{i}.block.{n - 1}", f"{side}.{i}.attn.{n - 1}"]
    order += ["mid.attn_1", "mid.block_2", "mid.block_1"]
    for i in levels:
        for side, n in (("down", c.num_res_blocks), ("up", c.num_res_blocks + 1)):
            for j in range(n):
                order += [f"{side}.{i}.block.{j}", f"{side}.{i}.attn.{j}"]
    existing = set(removable_units(c))
    seen: list[str] = []
    for p in order:
        if p in existing and p not in seen:
            seen.append(p)
    return seen


def handcrafted_scores(model: UNet, units: Sequence[Unit], inputs: CriterionInputs) -> dict[str, float]:
    """Each unit's rank in the handcrafted order (``handcrafted_order``; an SD U-Net: ``sd.handcrafted_order``)."""
    order = sd.handcrafted_order(model, [u.path for u in units]) if sd.is_sd(model) else handcrafted_order(model)
    rank = {p: i for i, p in enumerate(order)}
    return {u.path: float(rank[u.path]) for u in units}


def taylor_scores(model: UNet, units: Sequence[Unit], inputs: CriterionInputs) -> dict[str, float]:
    """The Diff-Pruning score summed over each unit's branch weights, G from ``accumulate_gradients`` on
    ``inputs.x0`` (module docstring); the caller's ``.grad`` and ``requires_grad`` flags are restored."""
    if inputs.x0 is None:
        raise ValueError("criterion 'taylor' needs data: a batch of clean training images (x0)")
    # An SD U-Net's latents carry their conditions: L_t is the conditional loss (pruning/conditional.py).
    cond = Conditioning(**inputs.cond) if sd.is_sd(model) and inputs.cond is not None else None
    params = [p for p in model.parameters()]
    saved = [None if p.grad is None else p.grad.clone() for p in params]  # leave the caller's grads as they were
    flags = [p.requires_grad for p in params]  # a frozen model (a teacher) is scored too, then frozen again
    try:
        for p in params:
            p.requires_grad_(True)
        accumulate_gradients(model, inputs.schedule or Schedule(), inputs.x0, thr=inputs.thr,
                             micro_batch=inputs.micro_batch, generator=torch.Generator().manual_seed(inputs.seed),
                             max_timesteps=inputs.max_timesteps, progress=False, cond=cond)
        scores = {}
        for u in units:
            total = 0.0
            for name, p in branch_parameters(model.get_submodule(u.path)).items():
                if not name.endswith("weight") or p.grad is None:
                    continue  # biases are not scored (as pruning/importance.py)
                wg = (p.detach() * p.grad.detach()).double()
                is_norm = isinstance(model.get_submodule(f"{u.path}.{name.rsplit('.', 1)[0]}"), (nn.GroupNorm, nn.LayerNorm))
                total += float(wg.abs().sum() if is_norm else wg.pow(2).sum())  # |gamma G| / (W G)^2, as diff_pruning_importance
            scores[u.path] = total
        return scores
    finally:
        for p, g, flag in zip(params, saved, flags):
            p.grad = g
            p.requires_grad_(flag)


LayerCriterion = Callable[[UNet, Sequence[Unit], CriterionInputs], dict]
LAYER_CRITERIA: dict[str, LayerCriterion] = {
    "output-loss": output_loss_scores,
    "random": random_scores,
    "handcrafted": handcrafted_scores,
    "taylor": taylor_scores,
}
# The selection each criterion is meant for (pruning/layers/knapsack.py); a caller may choose another.
DEFAULT_SOLVER = {"output-loss": "knapsack", "random": "knapsack", "handcrafted": "ranked", "taylor": "knapsack"}
