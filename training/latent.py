"""train.py's conditional latent family: an SD-style U-Net trained on cached VAE latents of captioned images.

    python train.py --model t2i-shapes --steps 8000 --batch-size 64 --lr 3e-4 --warmup 200   # the embedded teacher
    python train.py --model checkpoints/t2i_shapes --steps 1000 --lr 1e-4                    # fine-tune a pipeline's U-Net

The objective is latent diffusion's (Rombach et al. 2022, arXiv 2112.10752, eq. 2, conditioned as in Sec. 3.3):

    L = E_{z0, y, eps, t} || eps - eps_theta(sqrt(abar_t) z0 + sqrt(1 - abar_t) eps, t, tau(y)) ||^2

z0 is a sample of the frozen VAE's posterior times its scaling factor, tau the frozen text encoder (its last hidden
state, as SD-1 conditions), abar_t the pipeline's own training schedule (scheduler/scheduler_config.json: SD's
scaled_linear 0.00085..0.012 over 1000 steps), and the loss is the mean over latent elements (diffusers' and the
LDM code's reduction) unless --loss-reduction says otherwise. With probability ``caption_dropout`` (10%) a caption
is replaced by "" (Ho & Salimans 2022, arXiv 2207.12598, Sec. 3.2, as SD does): the unconditional input that
classifier-free guidance needs at sampling time.

Cached latents. The VAE encoder is frozen, so the posterior q(z|x) = N(mu, sigma^2) of every training image is
computed once and kept (under runs/cache/, keyed by the VAE's weights); each step draws z = mu + sigma n with n
from the run's generator, as encoding on the fly would. Captions are drawn per step as well: one of data.captions'
paraphrase variants, so the text encoder sees every template of an image. There are no flips (a flipped latent is
not the latent of the flipped image). Everything a step draws (variants, dropout mask, posterior noise) comes from
the run's generator for the GLOBAL batch and is then sliced per rank, like the DDPM family's flips, so a resumed
or a 2-process run follows the same sequence.

Models. ``--model t2i-shapes`` is a fresh U-Net of that preset (models/sd/presets.py) with the frozen parts of the
shipped pipeline (checkpoints/t2i_shapes: VAE, text encoder, tokenizer, scheduler); a pipeline folder fine-tunes
its own U-Net with its own parts. The release is ``RUN/pipeline/``: the pipeline folder with the EMA U-Net, which
generate.py, evaluate.py and ``models.load`` read.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common.cli import UserError
from data.captions import NUM_VARIANTS, caption
from data.rendered import rendered_split, to_minus_one_one
from diffusion.ddpm import eps_loss
from diffusion.schedule import training_schedule
from models.pipelines import is_latent_source
from models.pipelines.component import load_component
from models.pipelines.pipeline import SCHEDULER_FILE, Pipeline
from models.pipelines.text_to_image import Request, generate, text_conditioning
from models.sd.presets import PRESETS as SD_PRESETS
from models.sd.unet import UNet2DConditionModel

REPO = Path(__file__).resolve().parents[1]
SHAPES_PIPELINE = REPO / "checkpoints" / "t2i_shapes"  # the frozen parts of ``--model t2i-shapes``
LATENT_PRESETS = {"t2i-shapes": SHAPES_PIPELINE}       # U-Net preset -> the folder of its frozen parts
TRAIN_IMAGES = 20000                                   # the captioned shapes' train split (the VAE's and CLIP's)
GRID_PROMPTS = 8                                       # sample grids: captions of test images 0..7, 8 seeds each


def is_latent_model(model: str) -> bool:
    return model in LATENT_PRESETS or is_latent_source(model)


def _load_parts(folder: Path) -> dict[str, Any]:
    """The frozen VAE, text encoder, tokenizer and scheduler config of a pipeline folder (its U-Net is not read)."""
    import json

    from models.clip.tokenizer import CLIPTokenizer

    missing = [name for name in ("vae", "text_encoder", "tokenizer", "scheduler") if not (folder / name).is_dir()]
    if missing:
        raise UserError(f"{folder}: no {', '.join(missing)} folder; a latent text-to-image model needs a pipeline "
                        f"folder with vae/, text_encoder/, tokenizer/ and scheduler/")
    parts = {"vae": load_component(folder / "vae"), "text_encoder": load_component(folder / "text_encoder"),
             "tokenizer": CLIPTokenizer.from_folder(folder / "tokenizer"),
             "scheduler": json.loads((folder / "scheduler" / SCHEDULER_FILE).read_text()), "source": str(folder)}
    for name in ("vae", "text_encoder"):
        parts[name].eval().requires_grad_(False)
    return parts


def build_latent_model(model: str, seed: int) -> tuple[UNet2DConditionModel, str, dict[str, Any]]:
    """(U-Net in train mode, origin, frozen parts) of ``--model``: a preset (seeded fresh init) or a pipeline folder."""
    if model in LATENT_PRESETS:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(SD_PRESETS[model])
        return unet.train(), f"preset {model} (random init: training from scratch)", _load_parts(LATENT_PRESETS[model])
    folder = Path(model)
    unet = load_component(folder / "unet")
    return unet.train(), f"pipeline {model}", _load_parts(folder)


def parts_checksum(parts: dict[str, Any]) -> str:
    """sha256 (16 hex) of the frozen VAE's and text encoder's weights: a resume refuses other frozen parts."""
    from metrics.evaluation import weights_sha256

    both = weights_sha256(parts["vae"]) + weights_sha256(parts["text_encoder"])
    return hashlib.sha256(both.encode()).hexdigest()[:16]


def frozen_pipeline(unet: nn.Module, parts: dict[str, Any], source: str) -> Pipeline:
    """The SD-1-kind pipeline of a U-Net and the frozen parts it is trained with."""
    return Pipeline(kind="sd1", unet=unet, vae=parts["vae"], scheduler=parts["scheduler"],
                    text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"], source=source)


def pipeline_from_checkpoint(ckpt: dict[str, Any], model: str, source: str) -> Pipeline:
    """The pipeline of a train.py checkpoint of ``--model``: its EMA U-Net with the frozen parts, which must be
    the ones the checkpoint was trained with (their checksum is in its meta)."""
    from models.sd.config import UNetConditionConfig

    _, _, parts = build_latent_model(model, 0)
    if ckpt["meta"].get("family", {}).get("parts_checksum") != parts_checksum(parts):
        raise UserError(f"{source}: the frozen VAE / text encoder of {model} changed since this checkpoint was "
                        "trained; its pipeline is not built with other parts")
    unet = UNet2DConditionModel(UNetConditionConfig.from_dict(ckpt["model_config"]))
    unet.load_state_dict(ckpt["ema_state_dict"])
    return frozen_pipeline(unet.eval(), parts, source)


@torch.no_grad()
def cached_posterior(vae: nn.Module, *, count: int, seed: int, cache_dir: Path, key: str) -> tuple:
    """(mu, sigma) of q(z|x), each (count, C, h, w) float32, and the CaptionAttributes of train images 0..count-1."""
    from common.runs import atomic_torch_save

    images, attrs = rendered_split("train", count, seed=seed, cache_dir=cache_dir)
    path = cache_dir / f"t2i_latents_{key}_train_{count}_seed{seed}.pt"
    if path.is_file():
        blob = torch.load(path, weights_only=True)
        return blob["mean"], blob["std"], attrs
    means, stds = [], []
    for batch in np.array_split(images, max(1, count // 256)):
        q = vae.encode(to_minus_one_one(batch))
        means.append(q.mean)
        stds.append(q.std)
    mean, std = torch.cat(means), torch.cat(stds)
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"mean": mean, "std": std}, path)
    return mean, std, attrs


class LatentFamily:
    """What train.py's loop asks of a model family (training/families.py): data, loss, grids, release."""

    def __init__(self, model: UNet2DConditionModel, parts: dict[str, Any], *, caption_dropout: float,
                 loss_reduction: str | None, seed: int, cache_dir: Path, source: str):
        self.parts, self.caption_dropout = parts, caption_dropout
        self.pipe = frozen_pipeline(model, parts, source)
        try:
            self.schedule = training_schedule(parts["scheduler"], loss_reduction or "mean", source=f"{source}/scheduler")
        except ValueError as e:
            raise UserError(str(e)) from None
        self.checksum = parts_checksum(parts)
        vae = parts["vae"]
        self.mean, self.std, self.attrs = cached_posterior(vae, count=TRAIN_IMAGES, seed=0, cache_dir=cache_dir,
                                                           key=self.checksum)
        self.scale = float(vae.config.scaling_factor)
        c = model.config
        size = c.sample_size[0] if isinstance(c.sample_size, (tuple, list)) else c.sample_size
        self.shape = (int(c.in_channels), int(size), int(size))
        if tuple(self.mean.shape[1:]) != self.shape:
            raise UserError(f"{source}: the U-Net reads latents {self.shape} but the VAE makes "
                            f"{tuple(self.mean.shape[1:])}")
        self.seed = seed

    def __len__(self) -> int:
        return len(self.attrs)

    def batch(self, idx: list[int], shard: slice, g: torch.Generator, device: str) -> tuple[torch.Tensor, dict]:
        """(z0, U-Net keyword inputs) of this rank's share of the global batch ``idx``."""
        B = len(idx)
        variant = torch.randint(NUM_VARIANTS, (B,), generator=g)
        drop = torch.rand(B, generator=g) < self.caption_dropout
        n = torch.randn((B, *self.shape), generator=g)
        rows = list(range(B))[shard]
        sel = torch.tensor([idx[j] for j in rows], dtype=torch.long)
        z0 = self.scale * (self.mean[sel] + self.std[sel] * n[shard])
        captions = ["" if drop[j] else caption(self.attrs[idx[j]], int(variant[j])) for j in rows]
        with torch.no_grad():
            cond = text_conditioning(self.pipe, captions, (0, 0)).kwargs()
        return z0.to(device), {k: v.to(device) for k, v in cond.items()}

    def loss(self, forward, z0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, cond: dict) -> torch.Tensor:
        return eps_loss(lambda x, tt: forward(x, tt, **cond), self.schedule, z0, t, eps)

    def heldout(self, images: int):
        return None  # quality is measured by benchmarks/t2i_teacher_curve.py (attribute accuracy, CLIP-shapes, FD)

    @torch.no_grad()
    def grid(self, ema_model: nn.Module, steps: int, seed: int) -> torch.Tensor:
        """8 held-out prompts x 8 samples, guidance 5 with the pipeline's scheduler: (64, 3, H, W) in [-1, 1]."""
        _, attrs = rendered_split("test", GRID_PROMPTS, seed=0)
        prompts = [caption(a, 0) for a in attrs for _ in range(8)]
        pipe = dataclasses.replace(self.pipe, unet=ema_model.eval())
        request = Request(guidance_scale=5.0, steps=steps, seed=seed, batch_size=16)
        return generate(pipe, request, indices=range(len(prompts)), prompts=prompts) * 2 - 1

    def release(self, run_dir: Path, ema_model: nn.Module) -> Path:
        """RUN/pipeline: the pipeline folder with the EMA U-Net. Like model.pt it is the release of the run's
        last step: a resumed run that goes further replaces it, once the new folder is completely written."""
        import shutil

        from models.pipelines.save import save_pipeline

        folder, new = Path(run_dir) / "pipeline", Path(run_dir) / ".pipeline.new"
        shutil.rmtree(new, ignore_errors=True)  # what an interrupted release left
        save_pipeline(dataclasses.replace(self.pipe, unet=ema_model.eval()), new)
        if folder.exists():
            shutil.rmtree(folder)
        new.rename(folder)
        return folder

    def record(self) -> dict[str, Any]:
        """What config.json records of the family."""
        return {"family": "latent", "frozen_parts": self.pipe.source, "parts_checksum": self.checksum,
                "latent_shape": list(self.shape), "scaling_factor": self.scale, "train_images": len(self),
                "schedule": dataclasses.asdict(self.schedule.config), "caption_dropout": self.caption_dropout}


def release_checkpoint(run_dir: Path, ckpt: dict[str, Any], model: str) -> Path:
    """RUN/pipeline from a checkpoint's EMA U-Net, for a run that ends at a checkpoint without a release (stopped,
    then resumed with ``--steps`` equal to the step it reached): the same folder the loop's release writes."""
    from models.pipelines.save import save_pipeline

    return save_pipeline(pipeline_from_checkpoint(ckpt, model, str(run_dir)), Path(run_dir) / "pipeline")
