"""The teacher of ``train.py --distill`` for both model families: which one, the family check, the distiller.

    python train.py --model runs/prune/00003-x/pruned.pt --distill output                 # DDPM: training/distill.py
    python train.py --model runs/prune/00007-t2i_shapes-layer-output-loss/pipeline \\
        --distill feature-normalized --teacher checkpoints/t2i_shapes                      # latent: distill_latent.py

A DDPM student (a UNet2DModel) distils from a DDPM teacher with ``training.distill.Distiller``, unchanged. A latent
text-to-image student (the U-Net of a pipeline folder, e.g. prune.py's RUN/pipeline) distils from the U-Net of the
dense pipeline with ``training.distill_latent.LatentDistiller`` (BK-SDM, arXiv 2305.15798, Sec. 3.2; LAPTOP-Diff,
arXiv 2404.11098, Sec. 3.3); ``LatentKD`` gives it the interface train.py's step calls. The teacher must be
of the student's family (a DDPM teacher cannot read latents and captions, nor the reverse) and, for latent
models, share the student's frozen VAE and text encoder: the KD targets live in the latent space and the
conditioning space of the student's pipeline. Both are one-line errors before any training work.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.cli import UserError
from diffusion.ddpm import q_sample
from diffusion.schedule import Schedule
from training.distill import build_distiller, weights_checksum


def is_latent(source: str | None) -> bool:
    from training.latent import is_latent_model

    return source is not None and is_latent_model(str(source))


def check_families(model: str, teacher: str | None) -> None:
    """A student and teacher of different families (a DDPM U-Net and an SD-family pipeline) is an error."""
    if teacher is None or is_latent(model) == is_latent(teacher):
        return
    kinds = {True: "a latent text-to-image pipeline", False: "a DDPM U-Net checkpoint"}
    raise UserError(f"--teacher {teacher}: {kinds[is_latent(teacher)]}, but the student --model {model} is "
                    f"{kinds[is_latent(model)]}; distil from a teacher of the student's family")


def default_teacher(model: str) -> str | None:
    """--teacher when none is given: for prune.py's RUN/pipeline, the pipeline it was pruned from (RUN/spec.json's
    ``source_model``); else the root teacher of a pruned checkpoint (models/lineage.py)."""
    from models.lineage import default_reference

    spec = Path(model).parent / "spec.json"
    if Path(model).name == "pipeline" and spec.is_file():
        source = json.loads(spec.read_text()).get("source_model")
        if source is not None:
            return str(source)
    return default_reference([model])


class LatentKD(nn.Module):
    """train.py's view of a ``LatentDistiller``: called as the DDPM Distiller is, with the step's condition.

    Its parameters (and state dict) are the 1x1 projections only: the student is train.py's model, saved and
    optimised as such. Under data parallelism the student runs inside the distiller, not through the DDP wrapper,
    so ``all_reduce_grads`` averages the student's gradients too (one all-reduce per tensor)."""

    def __init__(self, distiller: nn.Module):
        super().__init__()
        self.proj = distiller.proj
        self._inner = [distiller]  # a list: the student is not a submodule here (its weights are saved as the model)
        self.mode, self.lambdas = distiller.mode, distiller.lambdas

    def forward(self, forward, student: nn.Module, schedule: Schedule, z0: torch.Tensor, t: torch.Tensor,
                eps: torch.Tensor, cond: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """(total loss with grad, every term as a float): loss_task, kd_out, kd_feat, kd_feat/<tap>."""
        x_t = q_sample(schedule, z0, t, eps)  # (B, C, h, w), the latent family's noising
        total, terms = self._inner[0](x_t, t.float(), cond, eps)
        return total, {k: float(v) for k, v in terms.items()}

    def all_reduce_grads(self, world: int) -> None:
        import torch.distributed as dist

        for p in [*self.parameters(), *self._inner[0].student.parameters()]:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world

    def teacher_checksum(self) -> float:
        return self._inner[0].teacher_checksum()


def _teacher_unet(teacher: str, parts: dict[str, Any], device: str) -> nn.Module:
    """The U-Net of the teacher pipeline (frozen, eval), after checking its frozen parts are the student's."""
    from models.integrity import check_weights
    from models.pipelines import Pipeline, load_latent
    from training.latent import parts_checksum

    loaded = load_latent(teacher)
    unet = loaded.unet if isinstance(loaded, Pipeline) else loaded
    if isinstance(loaded, Pipeline):
        frozen = {"vae": loaded.vae, "text_encoder": loaded.text_encoder, "text_encoder_2": loaded.text_encoder_2,
                  "class_embedder": loaded.class_embedder}
        if parts_checksum(frozen) != parts_checksum(parts):  # the same VAE, and text encoder(s) or class table
            raise UserError(f"--teacher {teacher}: its VAE / text encoder / class embedder are not the student's "
                            f"({parts['source']}); the teacher must predict noise in the student's latent and "
                            "condition spaces")
    check_weights(unet, f"--teacher {teacher}")
    return unet.to(device).eval().requires_grad_(False)


def build_train_distiller(cfg, model: nn.Module, parts: dict[str, Any] | None, device: str):
    """The distiller of train.py's flags for ``model`` (None for --distill none): the DDPM Distiller when ``parts``
    is None (unchanged), else a ``LatentKD`` over the teacher pipeline's U-Net."""
    lambdas = {"task": cfg.lambda_task, "out": cfg.lambda_out, "feat": cfg.lambda_feat}
    if parts is None or cfg.distill == "none":
        return build_distiller(cfg.distill, cfg.teacher, model, lambdas=lambdas, seed=cfg.seed, device=device)
    from training.distill_latent import build_latent_distiller

    teacher = _teacher_unet(cfg.teacher, parts, device)
    if weights_checksum(teacher) == weights_checksum(model):
        print(f"[train] note: --teacher {cfg.teacher} holds the student's own weights: the KD terms start at 0")
    try:
        inner = build_latent_distiller(model, teacher, mode=cfg.distill, lambdas=lambdas, seed=cfg.seed,
                                       autocast_dtype=torch.bfloat16 if cfg.bf16 else None,
                                       sync_normalizers=True)  # data parallel: the whole batch's norms, as 1 process
    except ValueError as e:
        raise UserError(f"--teacher {cfg.teacher}: {e}") from None
    return LatentKD(inner)
