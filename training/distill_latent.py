"""Knowledge distillation for conditional latent U-Nets (``models.sd.UNet2DConditionModel``): SD-family students.

The loss is the DDPM side's (``training/distill.py``), on the latent network's inputs (x_t, t, c):

    L = lambda_task * L_task + lambda_out * L_out + lambda_feat * L_feat           (BK-SDM, arXiv 2305.15798, Sec. 3.2)

L_task   MSE(eps_S(x_t, t, c), eps): the denoising loss (mean over all elements; with a v-prediction network
         pass v as the target).
L_out    MSE(eps_S(x_t, t, c), eps_T(x_t, t, c)): output KD.
L_feat   over the taps l below, teacher features detached:
         "feature"             sum_l MSE(P_l(F_S^l), F_T^l)                              (BK-SDM)
         "feature-normalized"  sum_l ||P_l(F_S^l) - F_T^l||_2^2 / ||F_T^l||_2^2    (LAPTOP-Diff, arXiv 2404.11098, Sec. 3.3)
                               = sum_l MSE_l / mean((F_T^l)^2): squared L2 norms over the whole batch, so each
                               term is a relative error of order one whatever its stage's scale.
All MSEs are in float32, as BK-SDM's code computes them, whatever the autocast dtype. Defaults: lambda = 1
for the feature modes (BK-SDM's), 0.3 task + 0.7 output KD for "output" (Diff-Pruning's).

Taps (BK-SDM's feature KD reads the output of every down and up block): the output of each down block (after
its downsampler), of the mid block, and of each up block (after its upsampler), named by the student's paths
(``down_blocks.0`` ... ``mid_block`` ... ``up_blocks.0``). Our U-Net's forward calls the units of a block, not
the block, so a tap hooks the last unit the block runs (``down_blocks.0.downsamplers.0``, ``mid_block.resnets.1``).
- A student without a mid block (BK-SDM-Small) has no mid tap; BK-SDM taps only the eight down/up blocks for
  every student (``include_mid=False`` gives exactly that set). A student with fewer stages has none either
  (its mid block would run at another resolution than the teacher's).
- A student without the innermost stage (BK-SDM-Tiny): its last down block has no downsampler, so it is
  matched with the teacher's same stage before the downsampler (BK-SDM taps that stage's last attention's
  proj_out, before the residual add; we tap the attention's output), and student up block j with teacher up
  block j + 1.
- Channel-pruned students: where a tap's widths differ, P_l is a trainable 1x1 conv (``training/distill.py``).

Memory options for a 0.5B student on one GPU: ``autocast_dtype=torch.bfloat16`` (both forwards under
torch.autocast; the losses in float32), ``enable_checkpointing(student)`` (torch.utils.checkpoint around every
ResNet and transformer of the down/mid/up blocks) and a teacher held in bf16 (its inputs are cast to its dtype).
Data parallel: wrap the distiller (it owns the student and the projections) with
``common.distributed.data_parallel(distiller, ctx, strategy="ddp" | "fsdp", units=block_units(student))``.
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from diffusion.guidance import check_condition_keys
from models.sd.resnet import ResnetBlock2D
from models.sd.transformer import Transformer2DModel
from training.distill import (MODES, capture, feature_kd_terms, make_projections, project, resolve_lambdas,
                              weights_checksum)

# Teacher and student must agree on these to see the same inputs and predict the same target.
SHARED_FIELDS = ("in_channels", "out_channels", "cross_attention_dim", "num_class_embeds", "addition_embed_type",
                 "addition_time_embed_dim", "projection_class_embeddings_input_dim")


# ---------------------------------------------------------------------------------------------- taps
def _stage_output(prefix: str, stage: nn.Module, sampler: str | None) -> str:
    """Path of the last unit a block runs: its sampler (``sampler`` names it), else its last attention/ResNet."""
    if sampler is not None and getattr(stage, sampler) is not None:
        return f"{prefix}.{sampler}.0"
    if len(stage.attentions):  # resnet j then attention j: the attention runs last
        return f"{prefix}.attentions.{len(stage.attentions) - 1}"
    return f"{prefix}.resnets.{len(stage.resnets) - 1}"


def latent_taps(student: nn.Module, teacher: nn.Module, *, include_mid: bool = True) -> dict[str, tuple[str, str]]:
    """Tap name -> (student module path, teacher module path), in forward order (module docstring)."""
    L_s, L_t = len(student.down_blocks), len(teacher.down_blocks)
    bo_s, bo_t = student.config.block_out_channels, teacher.config.block_out_channels
    if L_s > L_t or tuple(bo_s) != tuple(bo_t[:L_s]):
        raise ValueError(f"student stages {tuple(bo_s)} are not the teacher's {tuple(bo_t)} or its outer ones: "
                         "no stage-to-stage feature taps")
    taps = {}
    for i in range(L_s):
        name = f"down_blocks.{i}"
        cut = i == L_s - 1 and L_s < L_t  # the student's innermost stage, where the teacher goes deeper
        taps[name] = (_stage_output(name, student.down_blocks[i], "downsamplers"),
                      _stage_output(name, teacher.down_blocks[i], None if cut else "downsamplers"))
    if include_mid and L_s == L_t and student.mid_block is not None and teacher.mid_block is not None:
        taps["mid_block"] = ("mid_block.resnets.1", "mid_block.resnets.1")
    for j in range(L_s):
        k = j + L_t - L_s  # up blocks count from the innermost stage
        taps[f"up_blocks.{j}"] = (_stage_output(f"up_blocks.{j}", student.up_blocks[j], "upsamplers"),
                                  _stage_output(f"up_blocks.{k}", teacher.up_blocks[k], "upsamplers"))
    return taps


def check_latent_teacher(student: nn.Module, teacher: nn.Module) -> None:
    """The teacher must take the student's inputs and predict its target: one error naming every mismatch."""
    def value(cfg, f):  # per-level tuples (cross_attention_dim) compare as sets: a student may have fewer levels
        v = getattr(cfg, f)
        return sorted(set(v)) if isinstance(v, tuple) else v
    problems = [f"{f}: {value(student.config, f)} vs {value(teacher.config, f)}" for f in SHARED_FIELDS
                if value(student.config, f) != value(teacher.config, f)]
    if problems:
        raise ValueError("the teacher U-Net takes other inputs than the student (student vs teacher): "
                         + "; ".join(problems))


# ---------------------------------------------------------------------------------------------- memory
def block_units(unet: nn.Module) -> list[nn.Module]:
    """The ResNets and transformers of the down, mid and up blocks: the units ``enable_checkpointing`` wraps and
    ``common.distributed.data_parallel(strategy="fsdp")`` shards one by one (modules the forward calls)."""
    stages = [*unet.down_blocks, *([unet.mid_block] if unet.mid_block is not None else []), *unet.up_blocks]
    units = (ResnetBlock2D, Transformer2DModel)  # removed units (models/sd/removed.py) hold at most a 1x1 conv
    return [m for s in stages for m in (*s.resnets, *s.attentions) if isinstance(m, units)]


class _Checkpointed:
    """Mixin placed before a unit's class: its forward runs under torch.utils.checkpoint when grad is on, so
    only its inputs are kept and its activations are recomputed in backward (non-reentrant: works with
    DDP, FSDP2 and autocast; dropout masks are replayed from the saved RNG state)."""

    def forward(self, *args, **kwargs):
        if torch.is_grad_enabled():
            return checkpoint(super().forward, *args, use_reentrant=False, **kwargs)
        return super().forward(*args, **kwargs)


_CHECKPOINTED: dict[type, type] = {}


def enable_checkpointing(unet: nn.Module) -> int:
    """Activation checkpointing on every unit of ``block_units(unet)``; returns how many. The unit's class is
    swapped for a subclass, so module paths, state-dict keys and forward hooks are unchanged (a wrapper module
    would rename the parameters). Call it before wrapping for FSDP. Idempotent."""
    n = 0
    for m in block_units(unet):
        cls = type(m)
        if not issubclass(cls, _Checkpointed):
            if cls not in _CHECKPOINTED:
                _CHECKPOINTED[cls] = type(f"Checkpointed{cls.__name__}", (_Checkpointed, cls), {})
            m.__class__ = _CHECKPOINTED[cls]
        n += 1
    return n


def disable_checkpointing(unet: nn.Module) -> None:
    """Undo ``enable_checkpointing`` (every unit gets its own class back)."""
    plain = {v: k for k, v in _CHECKPOINTED.items()}
    for m in unet.modules():
        if type(m) in plain:
            m.__class__ = plain[type(m)]


# ---------------------------------------------------------------------------------------------- the loss
def _mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over the default process group (gloo has no AVG: a sum, then a division)."""
    x = x.clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()


class LatentDistiller(nn.Module):
    """The distillation loss of one mode for a conditional latent U-Net. It owns the student (``.student``) and
    the 1x1 projections (``.proj``; its parameters are what the optimizer trains); the teacher is held outside
    the module tree (never saved, moved, wrapped or trained) and runs in eval mode under no_grad.

    sync_normalizers: under data parallelism, divide every rank's normalised term by the teacher norms averaged
    over ranks, so the averaged gradient equals the one of the whole batch on one process (the normaliser is a
    batch sum, not a mean). One all-reduce of n_taps floats per step; only for "feature-normalized".
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, *, mode: str, lambdas: dict | None = None,
                 taps: dict[str, tuple[str, str]] | None = None, include_mid: bool = True, seed: int = 0,
                 autocast_dtype: torch.dtype | None = None, sync_normalizers: bool = False):
        super().__init__()
        if mode not in MODES or mode == "none":
            raise ValueError(f"distillation mode must be one of {MODES[1:]}, got {mode!r}")
        if autocast_dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"autocast_dtype must be None, torch.bfloat16 or torch.float16, got {autocast_dtype}")
        check_latent_teacher(student, teacher)
        self.mode, self.autocast_dtype, self.sync_normalizers = mode, autocast_dtype, sync_normalizers
        self.lambdas = resolve_lambdas(mode, dict(lambdas or {}))
        self.student = student
        self.teacher = [teacher.eval()]  # a list: outside the module tree (see the class docstring)
        if not mode.startswith("feature"):
            taps = {}
        elif taps is None:
            taps = latent_taps(student, teacher, include_mid=include_mid)
        self.taps = dict(taps)
        self.proj = nn.ModuleDict()
        if self.taps:
            shapes_s, shapes_t = self._probe(student, 0), self._probe(teacher, 1)
            for name in self.taps:
                if shapes_s[name][2:] != shapes_t[name][2:]:
                    raise ValueError(f"tap {name}: student feature {shapes_s[name]} ({self.taps[name][0]}) vs "
                                     f"teacher {shapes_t[name]} ({self.taps[name][1]}): spatial sizes differ")
            self.proj = make_projections({k: v[1] for k, v in shapes_s.items()}, {k: v[1] for k, v in shapes_t.items()},
                                         seed).to(next(student.parameters()).device)

    def _probe(self, model: nn.Module, side: int) -> dict[str, tuple[int, ...]]:
        """Each tap's feature shape on a small input (2^levels pixels, 2 tokens), without touching any RNG
        stream the training uses nor the model's train/eval mode."""
        p = next(model.parameters())
        size = 2 ** len(self.teacher[0].down_blocks)
        was_training = model.training
        with torch.random.fork_rng(devices=[p.device] if p.device.type == "cuda" else []), torch.no_grad(), \
                capture(model, {k: v[side] for k, v in self.taps.items()}) as feats:
            x, t, text, *rest = model.eval().example_inputs(batch=1, tokens=2)
            cond = dict(zip(("class_labels", "added_cond_kwargs"), rest))
            model(x[..., :size, :size].to(p.dtype), t, encoder_hidden_states=text.to(p.dtype), **cond)
        model.train(was_training)
        return {k: tuple(feats[k].shape) for k in self.taps}

    def teacher_checksum(self) -> float:
        """Saved with training checkpoints so that a resumed run can check it distils from the same teacher."""
        return weights_checksum(self.teacher[0])

    def _autocast(self, x: torch.Tensor):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: dict | None, eps: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x_t: (B, C, H, W) noisy latents; t: (B,) timesteps; cond: the U-Net's keyword inputs
        (encoder_hidden_states (B, M, D), class_labels (B,), added_cond_kwargs); eps: (B, C, H, W) target.

        Returns the total loss (float32 scalar with grad) and every term, detached, for logging: loss_task,
        kd_out, and in the feature modes kd_feat and kd_feat/<tap>."""
        cond = dict(cond or {})
        check_condition_keys(cond)
        teacher = self.teacher[0]
        dtype_t = next(teacher.parameters()).dtype  # a bf16 teacher gets bf16 inputs (half its memory)
        cond_t = {k: (v.to(dtype_t) if k == "encoder_hidden_states" and v is not None else v) for k, v in cond.items()}
        with torch.no_grad(), self._autocast(x_t), capture(teacher, {k: v[1] for k, v in self.taps.items()}) as feats_t:
            eps_t = teacher(x_t.to(dtype_t), t, **cond_t)  # first: its activations are freed before the student's
        with self._autocast(x_t), capture(self.student, {k: v[0] for k, v in self.taps.items()}) as feats_s:
            eps_s = self.student(x_t, t, **cond)
            projected = project(self.proj, feats_s)  # the projections run under the same autocast
        eps_s = eps_s.float()
        task = F.mse_loss(eps_s, eps.float())
        out = F.mse_loss(eps_s, eps_t.float())
        total = self.lambdas["task"] * task + self.lambdas["out"] * out
        logs = {"loss_task": task.detach(), "kd_out": out.detach()}
        if self.taps:
            normalized = self.mode == "feature-normalized"
            sync = _mean_over_ranks if normalized and self.sync_normalizers and dist.is_initialized() else None
            terms = feature_kd_terms(projected, {k: feats_t[k] for k in self.taps}, normalized=normalized, sync=sync)
            feat = sum(terms.values())
            total = total + self.lambdas["feat"] * feat
            logs["kd_feat"] = feat.detach()
            logs.update({f"kd_feat/{k}": v.detach() for k, v in terms.items()})
        return total, logs


def build_latent_distiller(student: nn.Module, teacher: nn.Module, *, mode: str, lambdas: dict | None = None,
                           taps: dict[str, tuple[str, str]] | None = None, include_mid: bool = True, seed: int = 0,
                           autocast_dtype: torch.dtype | None = None, checkpointing: bool = False,
                           sync_normalizers: bool = False) -> LatentDistiller:
    """The distiller the conditional training loop calls: ``total, terms = distiller(x_t, t, cond, eps)``.

    mode: "output", "feature" (BK-SDM) or "feature-normalized" (LAPTOP-Diff); lambdas: {"task", "out", "feat"},
    missing ones take the mode's defaults; taps: {name: (student path, teacher path)} instead of
    ``latent_taps(student, teacher, include_mid=...)``; autocast_dtype: torch.bfloat16 (torch.float16 also runs,
    but needs a torch.amp.GradScaler in the loop); checkpointing: ``enable_checkpointing(student)``. The
    optimizer trains ``distiller.parameters()`` (the student's and the projections'); save ``distiller.student``.
    """
    distiller = LatentDistiller(student, teacher, mode=mode, lambdas=lambdas, taps=taps, include_mid=include_mid,
                                seed=seed, autocast_dtype=autocast_dtype, sync_normalizers=sync_normalizers)
    if checkpointing:
        enable_checkpointing(student)
    return distiller
