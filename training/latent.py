"""train.py's conditional latent family: an SD-style U-Net trained on cached VAE latents of captioned images.

    python train.py --model t2i-shapes --steps 8000 --batch-size 64 --lr 3e-4 --warmup 200   # the embedded teacher
    python train.py --model checkpoints/t2i_shapes --steps 1000 --lr 1e-4                    # fine-tune a pipeline's U-Net
    python train.py --model checkpoints/t2i_shapes --data folder --data-root data/my_captioned_images --steps 1000

The objective is latent diffusion's (Rombach et al. 2022, arXiv 2112.10752, eq. 2, conditioned as in Sec. 3.3):

    L = E_{z0, y, eps, t} || eps - eps_theta(sqrt(abar_t) z0 + sqrt(1 - abar_t) eps, t, tau(y)) ||^2

z0 is a sample of the frozen VAE's posterior times its scaling factor, tau the frozen text encoder (its last hidden
state, as SD-1 conditions; SDXL: both encoders' penultimate states, the pooled text embedding and the time ids
(H, W, 0, 0, H, W) of the training resolution, as models/pipelines/text_to_image.py text_conditioning builds them
for generation; per-image original sizes and crop offsets, Podell et al. 2023 Sec. 2.2, are not used), abar_t
the pipeline's own training schedule (scheduler/scheduler_config.json: SD's scaled_linear 0.00085..0.012 over
1000 steps), and the loss is the mean over latent elements (diffusers' and the
LDM code's reduction) unless --loss-reduction says otherwise. With probability ``caption_dropout`` (10%) a caption
is replaced by "" (Ho & Salimans 2022, arXiv 2207.12598, Sec. 3.2, as SD does): the unconditional input that
classifier-free guidance needs at sampling time.

Cached latents. The VAE encoder is frozen, so the posterior q(z|x) = N(mu, sigma^2) of every training image is
computed once and kept (in cache/ beside --out, runs/cache/ by default; keyed by the VAE's weights); each step
draws z = mu + sigma n with n from the run's generator, as encoding on the fly would. Captions are drawn per step as well: one of data.captions'
paraphrase variants, so the text encoder sees every template of an image. There are no flips (a flipped latent is
not the latent of the flipped image). Everything a step draws (variants, dropout mask, posterior noise) comes from
the run's generator for the GLOBAL batch and is then sliced per rank, like the DDPM family's flips, so a resumed
or a 2-process run follows the same sequence.

Captioned folders. ``--data folder --data-root DIR`` trains on real images instead: data/captioned_folder.py
(metadata.jsonl, metadata.csv or sidecar .txt captions), each image resized and center-cropped to the U-Net's
pixel size. Its posteriors are cached as above when they fit in CACHE_LIMIT_BYTES, else encoded per step on the
U-Net's device (``LatentFamily``); one caption per image (no paraphrases), the same caption dropout. A resume
refuses a folder whose files, sizes or captions changed (``CaptionedFolder.checksum``, in config.json's family).

Models. ``--model t2i-shapes`` is a fresh U-Net of that preset (models/sd/presets.py) with the frozen parts of the
shipped pipeline (checkpoints/t2i_shapes: VAE, text encoder, tokenizer, scheduler); a pipeline folder (SD-1/2,
or SDXL with text_encoder_2/ and tokenizer_2/) fine-tunes its own U-Net with its own parts. The release is
``RUN/pipeline/``: the pipeline folder with the EMA U-Net, which generate.py, evaluate.py and ``models.load`` read.

Class-conditional models (training/class_conditioning.py). A pipeline folder without a text encoder that takes
class labels (the CompVis ImageNet LDM's class token, or a num_class_embeds U-Net), and ``--model class-shapes``
(the t2i-shapes U-Net on a frozen class table), train on the shapes with y = the shape kind of the single-kind
images in place of tau(caption); the caption dropout becomes the class dropout to the "no class" token. A
pipeline with neither text nor classes trains unconditionally. A VQ first stage (vqvae/) gives z0 = its
unquantised z_e, as the LDM trains on it.
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
from data.rendered import rendered_split
from diffusion.ddpm import eps_loss
from diffusion.schedule import training_schedule
from models.pipelines import is_latent_source
from models.pipelines.component import load_component
from models.pipelines.pipeline import SCHEDULER_FILE, Pipeline
from models.pipelines.text_to_image import Request, generate, text_conditioning
from models.sd.presets import PRESETS as SD_PRESETS
from models.sd.unet import UNet2DConditionModel
from training.class_conditioning import (check_class_pipeline, class_condition, shapes_class_embedder,
                                         shapes_class_labels)
from training.latent_data import cached_posterior, encode_posterior, folder_posterior, open_captioned_folder

REPO = Path(__file__).resolve().parents[1]
SHAPES_PIPELINE = REPO / "checkpoints" / "t2i_shapes"  # the frozen parts of ``--model t2i-shapes``
# model preset -> the folder of its frozen parts (``class-shapes`` takes only the VAE and scheduler of it)
LATENT_PRESETS = {"t2i-shapes": SHAPES_PIPELINE, "class-shapes": SHAPES_PIPELINE}
UNET_PRESET = {"t2i-shapes": "t2i-shapes", "class-shapes": "t2i-shapes"}  # the U-Net architecture of each
CLASS_PRESETS = ("class-shapes",)  # class-conditional presets: the class token of class_conditioning.py
TRAIN_IMAGES = 20000                                   # the captioned shapes' train split (the VAE's and CLIP's)
GRID_PROMPTS = 8                                       # sample grids: captions of test images 0..7, 8 seeds each
FROZEN_MODULES = ("vae", "text_encoder", "text_encoder_2")
CACHE_LIMIT_BYTES = 2 * 2**30  # a captioned folder's posteriors (mean + std, float32) are cached up to this size


def is_latent_model(model: str) -> bool:
    return model in LATENT_PRESETS or is_latent_source(model)


def _kind(folder: Path) -> tuple[str, bool]:
    """(pipeline kind, force_zeros_for_empty_prompt) of a folder: from its model_index.json as load_pipeline
    derives them (models/pipelines/pipeline.py), else "sd1" (or "sdxl" with a text_encoder_2/ folder)."""
    from models.pipelines.component import read_config
    from models.pipelines.pipeline import listed_components, pipeline_kind, read_model_index

    if not (folder / "model_index.json").is_file():
        kind = "sdxl" if (folder / "text_encoder_2").is_dir() else "sd1"
        return kind, kind == "sdxl"
    index = read_model_index(folder)
    unet = read_config(folder / "unet") if (folder / "unet" / "config.json").is_file() else None
    kind = pipeline_kind(listed_components(index), unet)
    return kind, bool(index.get("force_zeros_for_empty_prompt", kind == "sdxl"))


def _load_parts(folder: Path, *, class_preset: bool = False) -> dict[str, Any]:
    """The frozen VAE, text encoder(s), tokenizer(s) and scheduler config of a pipeline folder, and its kind
    ("sd1", "sd2" or "sdxl": SDXL adds text_encoder_2/ and tokenizer_2/); its U-Net is not read. An "ldm"
    folder (no text encoder: class-conditional or unconditional) gives its first stage (vae/ or vqvae/), its
    class_embedder/ if it has one, and its scheduler; ``class_preset``: the folder's VAE and scheduler with the
    shapes' class embedder (training/class_conditioning.py)."""
    import json

    from models.clip.tokenizer import CLIPTokenizer

    if class_preset or _kind(folder)[0] == "ldm":
        return _load_ldm_parts(folder, class_preset)
    missing = [name for name in ("vae", "text_encoder", "tokenizer", "scheduler") if not (folder / name).is_dir()]
    if missing:
        raise UserError(f"{folder}: no {', '.join(missing)} folder; a latent text-to-image model needs a pipeline "
                        f"folder with vae/, text_encoder/, tokenizer/ and scheduler/")
    kind, force_zeros = _kind(folder)
    second = [name for name in ("text_encoder_2", "tokenizer_2") if not (folder / name).is_dir()]
    if kind == "sdxl" and second:
        raise UserError(f"{folder}: an sdxl pipeline, but no {', '.join(second)} folder")
    parts = {"vae": load_component(folder / "vae"), "text_encoder": load_component(folder / "text_encoder"),
             "tokenizer": CLIPTokenizer.from_folder(folder / "tokenizer"),
             "scheduler": json.loads((folder / "scheduler" / SCHEDULER_FILE).read_text()), "source": str(folder),
             "kind": kind, "force_zeros_for_empty_prompt": force_zeros}
    if kind == "sdxl":
        parts["text_encoder_2"] = load_component(folder / "text_encoder_2")
        parts["tokenizer_2"] = CLIPTokenizer.from_folder(folder / "tokenizer_2")
    for name in FROZEN_MODULES:
        if name in parts:
            parts[name].eval().requires_grad_(False)
    return parts


def _load_ldm_parts(folder: Path, class_preset: bool) -> dict[str, Any]:
    """_load_parts of an "ldm" folder, or of the class-conditional preset's frozen parts."""
    import json

    first = "vqvae" if (folder / "vqvae").is_dir() and not (folder / "vae").is_dir() else "vae"
    missing = [name for name in (first, "scheduler") if not (folder / name).is_dir()]
    if missing:
        raise UserError(f"{folder}: no {', '.join(missing)} folder; a latent diffusion model needs a pipeline "
                        f"folder with vae/ (or vqvae/) and scheduler/")
    parts = {"vae": load_component(folder / first), "text_encoder": None, "tokenizer": None,
             "scheduler": json.loads((folder / "scheduler" / SCHEDULER_FILE).read_text()), "source": str(folder),
             "kind": "ldm", "force_zeros_for_empty_prompt": False}
    if class_preset:
        parts["class_embedder"] = shapes_class_embedder()
    elif (folder / "class_embedder").is_dir():
        parts["class_embedder"] = load_component(folder / "class_embedder")
    for name in (*FROZEN_MODULES, "class_embedder"):
        if parts.get(name) is not None:
            parts[name].eval().requires_grad_(False)
    return parts


def build_latent_model(model: str, seed: int) -> tuple[UNet2DConditionModel, str, dict[str, Any]]:
    """(U-Net in train mode, origin, frozen parts) of ``--model``: a preset (seeded fresh init) or a pipeline folder."""
    if model in LATENT_PRESETS:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(SD_PRESETS[UNET_PRESET[model]])
        parts = _load_parts(LATENT_PRESETS[model], class_preset=model in CLASS_PRESETS)
        return unet.train(), f"preset {model} (random init: training from scratch)", parts
    folder = Path(model)
    unet = load_component(folder / "unet")
    return unet.train(), f"pipeline {model}", _load_parts(folder)


def parts_checksum(parts: dict[str, Any]) -> str:
    """sha256 (16 hex) of the frozen VAE's, text encoder(s)' and class embedder's weights: a resume refuses other
    frozen parts. An SD-1/2 pipeline has no text_encoder_2, so its checksum is the one runs made before SDXL was
    trained (and a text pipeline's is the one runs made before class-conditional training)."""
    from metrics.evaluation import weights_sha256

    both = "".join(weights_sha256(parts[name]) for name in ("vae", "text_encoder", "text_encoder_2", "class_embedder")
                   if parts.get(name) is not None)
    return hashlib.sha256(both.encode()).hexdigest()[:16]


def frozen_pipeline(unet: nn.Module, parts: dict[str, Any], source: str) -> Pipeline:
    """The pipeline (of the parts' kind) of a U-Net and the frozen parts it is trained with."""
    return Pipeline(kind=parts.get("kind", "sd1"), unet=unet, vae=parts["vae"], scheduler=parts["scheduler"],
                    text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
                    text_encoder_2=parts.get("text_encoder_2"), tokenizer_2=parts.get("tokenizer_2"),
                    class_embedder=parts.get("class_embedder"),
                    force_zeros_for_empty_prompt=parts.get("force_zeros_for_empty_prompt", False), source=source)


def pipeline_from_checkpoint(ckpt: dict[str, Any], model: str, source: str) -> Pipeline:
    """The pipeline of a train.py checkpoint of ``--model``: its EMA U-Net with the frozen parts, which must be
    the ones the checkpoint was trained with (their checksum is in its meta)."""
    from models.sd.config import UNetConditionConfig

    _, _, parts = build_latent_model(model, 0)
    if ckpt["meta"].get("family", {}).get("parts_checksum") != parts_checksum(parts):
        raise UserError(f"{source}: the frozen VAE / text encoder / class table of {model} changed since this "
                        "checkpoint was trained; its pipeline is not built with other parts")
    unet = UNet2DConditionModel(UNetConditionConfig.from_dict(ckpt["model_config"]))
    unet.load_state_dict(ckpt["ema_state_dict"])
    return frozen_pipeline(unet.eval(), parts, source)


def _to(value, device: str):
    """A conditioning value (a tensor, or SDXL's added_cond_kwargs dict of tensors) on ``device``."""
    return {k: v.to(device) for k, v in value.items()} if isinstance(value, dict) else value.to(device)


class LatentFamily:
    """What train.py's loop asks of a model family (training/families.py): data, loss, grids, release.

    data "shapes": the captioned shapes (module docstring). data "folder": the CaptionedFolder at ``data_root``
    at the U-Net's pixel size (latent size x the VAE's factor). Its posteriors are cached like the shapes' when
    they fit in CACHE_LIMIT_BYTES (an 11k-image folder of SD-1.5's 64x64x4 latents: 1.4 GB), else each step
    encodes its own images on the U-Net's device; both draw z = mu + sigma n with the same n, so the choice
    changes nothing but speed and memory (up to the VAE's float batch effects). For a folder the frozen parts
    are moved to the U-Net's device (the shapes keep them on the CPU, where their cache and earlier runs were made).
    """

    def __init__(self, model: UNet2DConditionModel, parts: dict[str, Any], *, caption_dropout: float,
                 loss_reduction: str | None, seed: int, cache_dir: Path, source: str, data: str = "shapes",
                 data_root: str | None = None):
        self.parts, self.caption_dropout = parts, caption_dropout
        self.pipe = frozen_pipeline(model, parts, source)
        try:
            self.schedule = training_schedule(parts["scheduler"], loss_reduction or "mean", source=f"{source}/scheduler")
        except ValueError as e:
            raise UserError(str(e)) from None
        self.checksum = parts_checksum(parts)
        vae = parts["vae"]
        c = model.config
        size = int(c.sample_size[0] if isinstance(c.sample_size, (tuple, list)) else c.sample_size)
        self.shape = (int(c.in_channels), size, size)
        self.pixels = size * self.pipe.vae_scale  # SDXL's target size; a folder's images add their original sizes
        self.folder = None
        # what the U-Net is conditioned on: captions, class labels (training/class_conditioning.py) or nothing
        self.condition = "text" if self.pipe.has_text else "class" if self.pipe.num_classes else "none"
        self.rows = self.labels = None  # class labels: the train images that have one, and their labels
        if data == "folder":
            if self.condition == "class":
                raise UserError(f"--data folder gives captions, but {source} is class-conditional: train it on "
                                f"--data shapes (labels: the shape kind, training/class_conditioning.py)")
            self._open_folder(model, data_root, cache_dir, source)
        else:
            self.mean, self.std, self.attrs = cached_posterior(vae, count=TRAIN_IMAGES, seed=0, cache_dir=cache_dir,
                                                               key=self.checksum)
            if self.condition == "class":
                check_class_pipeline(self.pipe, source)
                self.rows, self.labels = shapes_class_labels(self.attrs)
        self.scale = float(vae.config.scaling_factor)
        if self.mean is not None and tuple(self.mean.shape[1:]) != self.shape:
            raise UserError(f"{source}: the U-Net reads latents {self.shape} but the VAE makes "
                            f"{tuple(self.mean.shape[1:])}")
        self.seed = seed

    def _open_folder(self, model: nn.Module, data_root: str | None, cache_dir: Path, source: str) -> None:
        """The captioned folder and its cached posteriors (None when encoded per step); every image decoded once."""
        if self.pipe.latent_channels != self.shape[0]:
            raise UserError(f"{source}: the U-Net reads {self.shape[0]} latent channels but the VAE makes "
                            f"{self.pipe.latent_channels}")
        device = next(model.parameters()).device
        for name in FROZEN_MODULES:
            if self.parts.get(name) is not None:
                self.parts[name].to(device)
        self.folder = open_captioned_folder(data_root, self.pixels)
        self.data_checksum = self.folder.checksum()
        latent_bytes = 2 * 4 * int(np.prod(self.shape))  # mean + std, float32
        self.cached = len(self.folder) * latent_bytes <= CACHE_LIMIT_BYTES
        self.mean = self.std = None
        try:
            if self.cached:
                self.mean, self.std = folder_posterior(self.parts["vae"], self.folder, cache_dir=cache_dir, key=(
                    f"{self.checksum}_{self.data_checksum}_{self.pixels}px"))
            else:
                self.folder.verify()  # a truncated file fails now, not at the step that draws it
        except OSError as e:
            raise UserError(f"--data-root {data_root}: {e}") from None

    def __len__(self) -> int:
        if self.rows is not None:
            return len(self.rows)
        return len(self.attrs) if self.folder is None else len(self.folder)

    def batch(self, idx: list[int], shard: slice, g: torch.Generator, device: str) -> tuple[torch.Tensor, dict]:
        """(z0, U-Net keyword inputs) of this rank's share of the global batch ``idx``."""
        B = len(idx)
        text_shapes = self.folder is None and self.condition == "text"
        variant = torch.randint(NUM_VARIANTS, (B,), generator=g) if text_shapes else None  # paraphrases
        drop = torch.rand(B, generator=g) < self.caption_dropout
        n = torch.randn((B, *self.shape), generator=g)
        rows = list(range(B))[shard]
        mine = [idx[j] for j in rows] if self.rows is None else [self.rows[idx[j]] for j in rows]
        if self.mean is not None:
            sel = torch.tensor(mine, dtype=torch.long)
            mean, std = self.mean[sel], self.std[sel]
        else:  # a folder too large to cache: this step's images, encoded now
            mean, std = encode_posterior(self.parts["vae"], self.folder.load(mine))
        z0 = self.scale * (mean + std * n[shard].to(mean.device))
        if self.condition != "text":
            cond = {}
            if self.condition == "class":
                labels = torch.tensor([self.labels[idx[j]] for j in rows], dtype=torch.long)
                cond = class_condition(self.pipe, labels, drop[shard])
            return z0.to(device), {k: _to(v, device) for k, v in cond.items()}
        if self.folder is None:
            captions = ["" if drop[j] else caption(self.attrs[idx[j]], int(variant[j])) for j in rows]
        else:
            captions = ["" if drop[j] else self.folder.captions[idx[j]] for j in rows]
        # SDXL from a folder: each image's own size and crop (micro-conditioning); the shapes are drawn at size
        micro = self.folder.micro_conditions()[mine] if self.folder is not None and self.pipe.kind == "sdxl" else None
        with torch.no_grad():
            cond = text_conditioning(self.pipe, captions, (self.pixels, self.pixels), micro).kwargs()
        return z0.to(device), {k: _to(v, device) for k, v in cond.items()}

    def loss(self, forward, z0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, cond: dict) -> torch.Tensor:
        return eps_loss(lambda x, tt: forward(x, tt, **cond), self.schedule, z0, t, eps)

    def heldout(self, images: int):
        return None  # quality is measured by benchmarks/t2i_teacher_curve.py (attribute accuracy, CLIP-shapes, FD)

    @torch.no_grad()
    def grid(self, ema_model: nn.Module, steps: int, seed: int) -> torch.Tensor:
        """8 held-out prompts (a folder: its first 8 captions) x 8 samples, guidance 5 with the pipeline's
        scheduler: (64, 3, H, W) in [-1, 1]."""
        pipe = dataclasses.replace(self.pipe, unet=ema_model.eval())
        if self.condition != "text":  # classes 0..7 (cycled), or 64 unconditional samples
            labels = ([c % self.pipe.num_classes for c in range(GRID_PROMPTS) for _ in range(8)]
                      if self.condition == "class" else None)
            scale = 5.0 if self.condition == "class" and self.pipe.has_unconditional else 1.0
            request = Request(guidance_scale=scale, steps=steps, seed=seed, batch_size=16)
            return generate(pipe, request, indices=range(GRID_PROMPTS * 8), class_labels=labels) * 2 - 1
        if self.folder is None:
            _, attrs = rendered_split("test", GRID_PROMPTS, seed=0)
            captions = [caption(a, 0) for a in attrs]
        else:  # a folder has no held-out split: the captions of its first images
            captions = [self.folder.captions[i % len(self.folder)] for i in range(GRID_PROMPTS)]
        prompts = [p for p in captions for _ in range(8)]
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
        out = {"family": "latent", "frozen_parts": self.pipe.source, "parts_checksum": self.checksum,
               "latent_shape": list(self.shape), "scaling_factor": self.scale, "train_images": len(self),
               "schedule": dataclasses.asdict(self.schedule.config), "caption_dropout": self.caption_dropout,
               "pipeline_kind": self.pipe.kind}
        if self.condition != "text":  # caption_dropout is then the class dropout (class token models only)
            out.update(condition=self.condition, num_classes=self.pipe.num_classes)
        if self.rows is not None:
            out.update(labels="shape kind of single-kind images (training/class_conditioning.py)")
        if self.folder is not None:  # a resume compares data_checksum (train.py)
            out.update(data="folder", data_root=str(self.folder.root), data_checksum=self.data_checksum,
                       pixel_size=self.pixels, posterior="cached" if self.cached else "encoded per step")
        return out


def release_checkpoint(run_dir: Path, ckpt: dict[str, Any], model: str) -> Path:
    """RUN/pipeline from a checkpoint's EMA U-Net, for a run that ends at a checkpoint without a release (stopped,
    then resumed with ``--steps`` equal to the step it reached): the same folder the loop's release writes."""
    from models.pipelines.save import save_pipeline

    return save_pipeline(pipeline_from_checkpoint(ckpt, model, str(run_dir)), Path(run_dir) / "pipeline")
