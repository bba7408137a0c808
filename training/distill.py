"""Knowledge distillation from the dense teacher while fine-tuning a pruned student.

    L = lambda_task * L_task + lambda_out * L_out + lambda_feat * L_feat

L_task   ||eps - eps_S(x_t, t)||^2, the DDPM loss (Ho et al. 2020, eq. 14; ``diffusion/ddpm.py``).
L_out    ||eps_T(x_t, t) - eps_S(x_t, t)||^2, output KD, with the same reduction over pixels as L_task.
         Diff-Pruning's ``--kd`` fine-tuning (Fang et al. 2023, arXiv 2305.10924; its code's loss is
         0.7 L_out + 0.3 L_task): mode "output", lambda_task = 0.3, lambda_out = 0.7 by default.
L_feat   feature KD over the stage taps l (``stage_taps``):
         "feature" (BK-SDM, Kim et al. 2023, arXiv 2305.15798):
             sum_l MSE(P_l(F_S^l), F_T^l)                     (mean over elements)
         "feature-normalized" (LAPTOP-Diff, Zhang et al. 2024, arXiv 2404.11098, Sec. 3):
             sum_l ||P_l(F_S^l) - F_T^l||^2 / ||F_T^l||^2     (squared norms over the whole batch)
         (This implementation's reading of "normalised by the L2 norm of the teacher's feature map": the
         squared norm, taken over the whole batch, so the term is scale-free.)
         The raw MSE of a stage grows with the square of its feature scale, so a few large stages dominate
         the unnormalised sum; dividing by the teacher feature's (detached) squared norm makes every term a
         relative error of order one, whatever its stage's scale. Defaults for both feature modes:
         lambda_task = lambda_out = lambda_feat = 1 (BK-SDM's).

Stage taps are the outputs of each encoder level (after its downsampler), of the mid block, and of each
decoder level (after its upsampler). They exist in teacher and student whatever was pruned: a removed
unit is still a module (``models/ddpm/skipped.py``), and channel pruning changes widths only. Where a tap's
widths differ (channel pruning), the student feature goes through P_l, a 1x1 conv (student width ->
teacher width, PyTorch default init, seeded), trained with the student by the same optimizer; elsewhere
P_l is the identity. The teacher runs frozen, in eval mode, without gradients.

The same loss for the conditional latent U-Nets of the SD family (BK-SDM students): ``training/distill_latent.py``,
which reuses the pieces below (capture, feature_kd_terms, resolve_lambdas, make_projections, project).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.ddpm import q_sample
from diffusion.schedule import Schedule
from models.ddpm.config import ModelConfig

MODES = ("none", "output", "feature", "feature-normalized")
DEFAULT_LAMBDAS = {"output": {"task": 0.3, "out": 0.7, "feat": 0.0},
                   "feature": {"task": 1.0, "out": 1.0, "feat": 1.0},
                   "feature-normalized": {"task": 1.0, "out": 1.0, "feat": 1.0}}
NORM_EPS = 1e-12  # guards a teacher feature that is exactly zero


def stage_taps(config: ModelConfig) -> dict[str, str]:
    """Tap name -> module path whose output is the stage feature: "down.{i}", "mid", "up.{i}"."""
    L, R = len(config.ch_mult), config.num_res_blocks
    attn = lambda i: config.image_size // 2 ** i in config.attn_resolutions  # noqa: E731
    taps = {}
    for i in range(L):
        taps[f"down.{i}"] = f"down.{i}.downsample" if i != L - 1 else f"down.{i}.{'attn' if attn(i) else 'block'}.{R - 1}"
    taps["mid"] = "mid.block_2"
    for i in reversed(range(L)):
        taps[f"up.{i}"] = f"up.{i}.upsample" if i != 0 else f"up.{i}.{'attn' if attn(i) else 'block'}.{R}"
    return taps


@contextlib.contextmanager
def capture(model: nn.Module, taps: dict[str, str]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the context, ``feats[name]`` is the latest output of the tapped module."""
    feats: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name, path in taps.items():
            def hook(module, args, out, name=name):
                feats[name] = out
            handles.append(model.get_submodule(path).register_forward_hook(hook))
        yield feats
    finally:
        for h in handles:
            h.remove()


def feature_kd_terms(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], *, normalized: bool,
                     sync: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """One KD term per tap (module docstring): MSE, or ||F_S - F_T||^2 / ||F_T||^2 with the teacher detached.

    Computed in float32 whatever the features' dtype (bf16 autocast). sync: applied to the stacked teacher
    norms ||F_T^l||^2 (one tensor, one collective) before the division, e.g. their mean over data-parallel
    ranks, so that every rank divides by the same normaliser (training/distill_latent.py)."""
    for name, f_t in teacher.items():
        if student[name].shape != f_t.shape:
            raise ValueError(f"stage {name}: student feature {tuple(student[name].shape)} vs teacher {tuple(f_t.shape)}")
    if normalized:
        norms = torch.stack([f_t.detach().float().pow(2).sum() for f_t in teacher.values()])  # (n_taps,)
        norms = (norms if sync is None else sync(norms)).clamp_min(NORM_EPS)
        return {name: (student[name].float() - f_t.detach().float()).pow(2).sum() / norms[i]
                for i, (name, f_t) in enumerate(teacher.items())}
    return {name: F.mse_loss(student[name].float(), f_t.detach().float()) for name, f_t in teacher.items()}


def resolve_lambdas(mode: str, given: dict[str, float | None]) -> dict[str, float]:
    """The loss weights {"task", "out", "feat"}: the given ones, the mode's defaults for those left None."""
    unknown = sorted(set(given) - {"task", "out", "feat"})
    if unknown:
        raise ValueError(f"unknown distillation weights {unknown}; known: task, out, feat")
    lambdas = {k: float(DEFAULT_LAMBDAS[mode][k] if given.get(k) is None else given[k]) for k in ("task", "out", "feat")}
    for k, v in lambdas.items():
        if not v >= 0:
            raise ValueError(f"lambda_{k} must be >= 0, got {v}")
    return lambdas


def make_projections(widths_s: dict[str, int], widths_t: dict[str, int], seed: int) -> nn.ModuleDict:
    """P_l for every tap whose student width differs from the teacher's: a 1x1 conv (PyTorch default init,
    drawn from ``seed`` without touching the global RNG). Keys are tap names with "." -> "_"."""
    proj = nn.ModuleDict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in widths_t:
            if widths_s[name] != widths_t[name]:
                proj[name.replace(".", "_")] = nn.Conv2d(widths_s[name], widths_t[name], 1)
    return proj


def project(proj: nn.ModuleDict, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """P_l(F_S^l) for every tap (the identity where no projection exists)."""
    return {k: (proj[k.replace(".", "_")](f) if k.replace(".", "_") in proj else f) for k, f in feats.items()}


def weights_checksum(model: nn.Module) -> float:
    """Sum of the model's weights in float64 (a teacher's identity for resuming)."""
    return float(sum(p.detach().double().sum().item() for p in model.parameters()))


def check_teacher(student: ModelConfig, teacher: ModelConfig, source: str) -> None:
    """The teacher must share the student's topology (the student is a pruned copy of it); widths and removed
    units may differ. The error names every field that does not match."""
    from models.ddpm.convert import topology_mismatches

    problems = topology_mismatches(student, teacher)
    if student.image_size != teacher.image_size:
        problems.append(f"image_size: {student.image_size} vs {teacher.image_size}")
    if problems:
        raise ValueError(f"teacher {source} has another architecture than the student (student vs teacher): "
                         + "; ".join(problems))


class Distiller(nn.Module):
    """The distillation loss of one mode. Its parameters are the trainable 1x1 projections (may be none)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, *, mode: str, lambda_task: float | None = None,
                 lambda_out: float | None = None, lambda_feat: float | None = None, seed: int = 0,
                 teacher_source: str = "the teacher"):
        super().__init__()
        if mode not in MODES or mode == "none":
            raise ValueError(f"distillation mode must be one of {MODES[1:]}, got {mode!r}")
        check_teacher(student.config, teacher.config, teacher_source)
        self.lambdas = resolve_lambdas(mode, {"task": lambda_task, "out": lambda_out, "feat": lambda_feat})
        self.mode = mode
        # A list: not a submodule, so never saved, moved or trained with the projections. It runs in eval mode
        # under no_grad (forward), so no gradient reaches it; its requires_grad flags are left as the caller set them.
        self.teacher = [teacher.eval()]
        self.taps = stage_taps(student.config) if mode.startswith("feature") else {}
        self.proj = make_projections(self._tap_widths(student), self._tap_widths(teacher), seed) if self.taps \
            else nn.ModuleDict()
        self.to(next(student.parameters()).device)

    def _tap_widths(self, model: nn.Module) -> dict[str, int]:
        with torch.no_grad(), capture(model, self.taps) as feats:
            model(*model.example_inputs())
        return {k: feats[k].shape[1] for k in self.taps}

    def forward(self, student_fn: nn.Module, student: nn.Module, schedule: Schedule, x0: torch.Tensor, t: torch.Tensor,
                eps: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The total loss (a scalar with grad) and every term as a float, for logging.

        student_fn: what to call (the student, or its DistributedDataParallel wrapper); student: the module
        the taps are read from.
        """
        x_t = q_sample(schedule, x0, t, eps)
        with capture(student, self.taps) as feats_s:
            eps_s = student_fn(x_t, t.float())
        with torch.no_grad(), capture(self.teacher[0], self.taps) as feats_t:
            eps_t = self.teacher[0](x_t, t.float())
        reduce = (lambda e: e.sum(dim=(1, 2, 3)).mean()) if schedule.config.loss_reduction == "sum" else \
            (lambda e: e.mean(dim=(1, 2, 3)).mean())
        task = reduce((eps - eps_s) ** 2)
        out = reduce((eps_t - eps_s) ** 2)
        total = self.lambdas["task"] * task + self.lambdas["out"] * out
        logs = {"loss_task": task.item(), "kd_out": out.item()}
        if self.taps:
            terms = feature_kd_terms(project(self.proj, feats_s), feats_t, normalized=self.mode == "feature-normalized")
            feat = sum(terms.values())
            total = total + self.lambdas["feat"] * feat
            logs["kd_feat"] = feat.item()
            logs.update({f"kd_feat/{k}": v.item() for k, v in terms.items()})
        return total, logs

    def all_reduce_grads(self, world: int) -> None:
        """Average the projections' gradients over data-parallel ranks (they live outside the DDP wrapper)."""
        import torch.distributed as dist

        for p in self.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world

    def teacher_checksum(self) -> float:
        """Saved with training checkpoints so that a resumed run can check it distils from the same teacher."""
        return weights_checksum(self.teacher[0])


def check_distill_arguments(mode: str, teacher: str | None, lambdas: dict[str, float | None]) -> None:
    """Errors for bad distillation flags, before anything is loaded."""
    if mode not in MODES:
        raise ValueError(f"--distill must be one of {MODES}, got {mode!r}")
    if mode != "none" and not teacher:
        raise ValueError(f"--distill {mode} needs --teacher: the dense checkpoint to distil from")
    if mode == "none" and teacher:
        raise ValueError("--teacher is only used with --distill output, feature or feature-normalized")
    for name, value in lambdas.items():
        if value is not None and not value >= 0:
            raise ValueError(f"--lambda-{name} must be >= 0, got {value}")


def check_teacher_weights(teacher: nn.Module, student: nn.Module, source: str) -> None:
    """A teacher that cannot teach: non-finite weights are an error naming the tensor; the student's own weights
    (nothing to learn) or a teacher smaller than the student (a pruned model given as --teacher?) get a note."""
    from models.integrity import check_weights

    check_weights(teacher, f"--teacher {source}")
    mine, theirs = student.state_dict(), teacher.state_dict()
    if mine.keys() == theirs.keys() and all(v.shape == theirs[k].shape and torch.equal(v.cpu(), theirs[k].cpu())
                                            for k, v in mine.items()):
        print(f"[train] note: --teacher {source} holds the student's own weights: the distillation terms start at 0 "
              f"and teach nothing new (give the dense model the student was pruned from)")
    elif sum(p.numel() for p in teacher.parameters()) < sum(p.numel() for p in student.parameters()):
        print(f"[train] note: --teacher {source} is smaller than the student "
              f"({sum(p.numel() for p in teacher.parameters()):,} vs {sum(p.numel() for p in student.parameters()):,} "
              f"parameters): a pruned model given as the teacher?")


def build_distiller(mode: str, teacher: str | None, student: nn.Module, *, lambdas: dict[str, float | None],
                    seed: int, device: str | torch.device) -> Distiller | None:
    """The Distiller of train.py's flags (None for mode "none"): the teacher is loaded with ``models.load`` (EMA
    weights) and checked against the student's architecture before any training work."""
    check_distill_arguments(mode, teacher, lambdas)
    if mode == "none":
        return None
    from models.loading import load

    teacher_model = load(teacher, ema=True, device=device)
    check_teacher_weights(teacher_model, student, str(teacher))
    return Distiller(student, teacher_model, mode=mode, lambda_task=lambdas.get("task"), lambda_out=lambdas.get("out"),
                     lambda_feat=lambdas.get("feat"), seed=seed, teacher_source=str(teacher))
