"""The data of a pipeline pruning: the calibration / gradient batch of an SD-family U-Net and the grids' prompts.

prune.py prunes the U-Net of a latent text-to-image pipeline (a pipeline folder, a hub name) and keeps its frozen
parts (VAE, text encoder(s), tokenizer, scheduler) unchanged. Channel pruning's gradient methods and layer
pruning's criteria read the loss the U-Net was trained with, latent diffusion's conditional L_LDM (Rombach et al.
2022, arXiv 2112.10752, eq. 3):

    L_t = E_b || eps_b - eps_theta(sqrt(abar_t) z0_b + sqrt(1 - abar_t) eps_b, t, tau(y_b)) ||^2

so the batch is pairs (z0_b, tau(y_b)): VAE latents of captioned training images and their caption embeddings,
abar_t the pipeline's own training schedule (scheduler/scheduler_config.json). The pairs come from

    --data shapes      (default) the captioned shapes' train split, as train.py's latent family reads them
                       (training/latent.py: the same rendered images, the same cached VAE posterior, one of
                       data.captions' paraphrases per image); at the U-Net's own pixel size when it is not 32 px
    --data folder      an image folder (--data-root): each image's caption from a metadata.jsonl / metadata.csv
                       row or a sibling .txt file (data/captioned_folder.py, as train.py reads it) or, with
                       --prompts FILE, line i for image i (images in sorted path order, data/image_folder.py)

z0 = s * (mu + sigma * n) is one draw of the VAE posterior q(z|x) (n from the spec's seed), s the VAE's scaling
factor. SDXL's extra inputs (pooled text embedding, time ids at the U-Net's pixel size) come with the captions
(``pruning/layers/sd.py`` prompt_conditions). A class-conditional pipeline (a class token or num_class_embeds)
is calibrated on (z0_b, y_b) instead, with --data shapes only: latents of the train images whose shapes are
all of one kind and that kind as the label (training/class_conditioning.py, as train.py trains ``class-shapes``);
its gradient methods can also take self-sampled latents (``recipe="ldm-script"``, ``pruning/self_sampled.py``,
the paper's LDM script). A pipeline with neither text nor classes, and any pipeline's data-free methods
(random, magnitude), read no data.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from common.cli import UserError
from data.captions import NUM_VARIANTS, caption, caption_attributes
from data.procedural import ProceduralShapes
from data.rendered import to_minus_one_one
from pruning.conditional import ConditionalBatch
from pruning.layers.spec import LayerPruning
from pruning.spec import ChannelPruning

REPO = Path(__file__).resolve().parents[1]
SHAPES_PROMPTS = REPO / "data" / "prompts" / "shapes_heldout.txt"  # the shapes world's held-out captions
# The grids of a pipeline that was not calibrated on the shapes: a few fixed, varied prompts.
FIXED_PROMPTS = ("a photograph of an astronaut riding a horse", "a red apple on a wooden table",
                 "a lighthouse on a rocky coast at sunset", "a bowl of ramen, oil painting",
                 "a cat sleeping on a sofa", "a city street at night in the rain",
                 "a watercolor painting of a mountain lake", "a close-up photo of a sunflower")
ENCODE_BATCH = 4  # images per VAE encode (memory only: SD's VAE at 512 px holds GBs of activations)


def images_needed(spec: ChannelPruning | LayerPruning) -> int:
    """How many (latent, caption) pairs the spec reads: a layer spec's calibration set / taylor batch, a channel
    gradient method's ONE batch; none for the data-free methods, a fixed architecture or a self-sampled x0."""
    if isinstance(spec, LayerPruning):
        return 0 if spec.architecture is not None else spec.needs_images
    return spec.batch_size if spec.gradient and spec.recipe is None else 0


def check_source(*, data: str, data_root: str | None, prompts: str | None) -> None:
    """One-line errors about the calibration source, before any weight is read: data the pipeline path reads,
    an existing, non-empty prompts file."""
    from metrics.t2i_evaluation import read_prompts

    if data not in ("shapes", "folder"):
        raise UserError(f"--data {data}: a text-to-image pipeline is calibrated on captioned images: shapes (the "
                        "captioned shapes) or folder (--data-root with captions)")
    if data == "folder" and not data_root:
        raise UserError("--data folder needs --data-root: the folder of captioned images")
    if data == "folder" and not Path(data_root).is_dir():
        raise UserError(f"--data-root {data_root}: no such folder (the captioned images of --data folder)")
    if prompts is not None:
        read_prompts(prompts)  # an empty or missing file fails here, naming it


def check_pipeline(pipe, spec: ChannelPruning | LayerPruning, source: str, data: str = "shapes",
                   prompts: str | None = None) -> None:
    """The loaded pipeline can be pruned as asked: a text pipeline for captioned data; a class-conditional one
    for the labelled shapes; a pipeline with neither only with data-free methods or the self-sampled recipe;
    captions (--prompts) only for a pipeline that reads them."""
    if prompts is not None and not pipe.has_text:
        raise UserError(f"--prompts {prompts}: the {pipe.kind} pipeline {source} has no text encoder to read "
                        "captions" + (" (its grids and calibration use class labels)" if pipe.num_classes else ""))
    if pipe.has_text or not images_needed(spec):
        return
    if pipe.num_classes:
        from training.class_conditioning import check_class_pipeline

        if data != "shapes":
            raise UserError(f"--model {source}: a class-conditional pipeline is calibrated on labelled images; "
                            f"--data {data} has captions, not class labels: use --data shapes (label: the shape "
                            "kind) or --recipe ldm-script (self-sampled latents of random classes)")
        check_class_pipeline(pipe, f"--model {source}")
        _check_labelled_count(spec)
        return
    what = "layer pruning's calibration set" if isinstance(spec, LayerPruning) else f"method {spec.method!r}"
    raise UserError(f"--model {source}: the {pipe.kind} pipeline has neither a text encoder nor classes, so no "
                    f"captioned or labelled image can condition {what}; use channel pruning with a data-free method (random, magnitude) or "
                    "--recipe ldm-script for the gradient methods (self-sampled latents)")


def _check_labelled_count(spec: ChannelPruning | LayerPruning) -> None:
    """A class pipeline's pairs come from the single-kind train images only: refuse a larger set, naming its flag,
    before the train split is encoded (``class_pairs`` repeats the check on the labels it reads)."""
    from training.class_conditioning import SINGLE_KIND_TRAIN_IMAGES

    needed = images_needed(spec)
    if needed <= SINGLE_KIND_TRAIN_IMAGES:
        return
    flag = ("--calib-size" if isinstance(spec, LayerPruning) and spec.calib_size >= (spec.batch_size or 0)
            else "--batch-size")
    raise UserError(f"{flag} {needed}: a class-conditional pipeline is calibrated on the single-kind shapes images "
                    f"(the label is the kind), and the train split has {SINGLE_KIND_TRAIN_IMAGES}")


def check_grid_steps(pipe, steps: int) -> None:
    """--sample-steps of the before/after grids with the pipeline's own scheduler, refused in one line before any
    pruning work when its timesteps would not run from the top of the schedule down (diffusion/schedulers)."""
    from diffusion.schedulers import check_sampling_steps

    try:
        check_sampling_steps(pipe.scheduler_config(), steps)
    except ValueError as e:
        raise UserError(f"--sample-steps {steps}: {e}") from None


def gradient_pass(spec: ChannelPruning | LayerPruning) -> bool:
    """Whether the spec runs ``accumulate_gradients`` on the U-Net (the memory check of pruning/memory.py)."""
    return spec.criterion == "taylor" if isinstance(spec, LayerPruning) else spec.gradient


def data_needed(spec: ChannelPruning | LayerPruning) -> str | None:
    """What of the spec reads latents and captions (so a VAE and a text encoder), e.g. "method 'taylor'"; None
    for the data-free methods: channel random / magnitude / scratch, layer random / handcrafted (a BK-SDM
    architecture included) with a solver that measures nothing. The additivity report is skipped instead."""
    if isinstance(spec, LayerPruning):
        if spec.architecture is not None:
            return None
        if spec.criterion not in ("random", "handcrafted"):
            return f"layer --criterion {spec.criterion}"
        return "layer --solver exhaustive" if spec.solver == "exhaustive" else None
    if spec.recipe is not None:
        return f"--recipe {spec.recipe}"
    return f"method {spec.method!r}" if spec.gradient else None


def check_bare_unet(spec: ChannelPruning | LayerPruning, source: str, name: str | None) -> None:
    """A bare component folder is pruned only when it is a conditional U-Net and the spec is data-free: one-line
    errors, before any weight is read (an SDXL unet/ alone is 10 GB)."""
    if name != "UNet2DConditionModel":
        raise UserError(f"--model {source}: a single component folder ({name}, no model_index.json); prune.py "
                        "prunes a U-Net: give a UNet2DConditionModel folder or the whole pipeline folder holding "
                        "model_index.json, unet/, vae/, text_encoder/, tokenizer/ and scheduler/")
    what = data_needed(spec)
    if what is not None:
        batch = "gradient batch" if gradient_pass(spec) or not isinstance(spec, LayerPruning) else "calibration set"
        of = ("latents the pipeline samples itself from captions" if getattr(spec, "recipe", None)
              else "VAE latents of captioned images with their caption embeddings")
        raise UserError(f"--model {source}: a bare U-Net folder (no model_index.json) has no VAE or text encoder to "
                        f"make the {batch} of {what} ({of}); give the whole pipeline "
                        "folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/), or a "
                        "data-free method (channel random / magnitude, layer --criterion random / handcrafted)")


def _folder_pairs(root: str, prompts: str | None) -> tuple[list[Path], list[str]]:
    """(image files in sorted order, their captions): data/captioned_folder.py's metadata files or sibling .txt
    files, or the prompts file's lines."""
    from data.image_folder import list_images
    from metrics.t2i_evaluation import read_prompts

    try:
        files = list_images(root)
    except FileNotFoundError as e:
        raise UserError(f"--data-root {root}: {e}") from None
    if not files:
        raise UserError(f"--data-root {root}: no image files")
    if prompts is not None:
        captions = read_prompts(prompts)
        if len(captions) != len(files):
            raise UserError(f"--prompts {prompts}: {len(captions)} captions for the {len(files)} images of "
                            f"{root}; give one caption per image, line i for the i-th image in sorted path order")
        return files, captions
    from data.captioned_folder import folder_captions

    try:  # metadata.jsonl / metadata.csv rows or sidecar .txt files, as train.py reads them
        return files, folder_captions(root, files)
    except (OSError, ValueError) as e:
        raise UserError(f"--data-root {root}: {e}; or give --prompts FILE (one caption per image)") from None


@torch.no_grad()
def _encode(vae, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Images (N, 3, H, W) in [-1, 1] -> z0 = s * (mu + sigma * n), one posterior draw each, float32 on CPU
    (a VQ first stage: its z_e, sigma 0)."""
    from training.latent_data import posterior

    p = next(vae.parameters())
    out = []
    for batch in images.split(ENCODE_BATCH):
        mean, std = posterior(vae, batch.to(p.device, p.dtype))
        n = torch.randn(mean.shape, generator=generator)
        out.append(mean.float().cpu() + std.float().cpu() * n)
    return float(vae.config.scaling_factor) * torch.cat(out)


def _pixels(pipe) -> int:
    unet = pipe.unet.config
    side = unet.sample_size[0] if isinstance(unet.sample_size, (tuple, list)) else unet.sample_size
    return int(side) * pipe.vae_scale


def class_pairs(pipe, count: int, *, seed: int, cache_dir: Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``count`` (z0, label) pairs of a class-conditional pipeline (module docstring): latents (count, C, h, w)
    float32 on CPU, labels (count,) int64 and a JSON record. Drawn from ``seed``: which images, the noise."""
    from data.rendered import rendered_split
    from training.class_conditioning import shapes_class_labels
    from training.latent import TRAIN_IMAGES

    px, g = _pixels(pipe), torch.Generator().manual_seed(seed)
    if px == 32:  # the shapes' own resolution: train.py's cached posterior of the train split
        mean, std, attrs = _train_posterior(pipe, TRAIN_IMAGES, cache_dir)
    else:  # the labels from the (cached) 32 px split: an image's attributes do not depend on its size
        attrs = rendered_split("train", TRAIN_IMAGES, seed=0, cache_dir=cache_dir)[1]
    rows, labels = shapes_class_labels(attrs)
    if count > len(rows):
        raise UserError(f"the run needs {count} labelled shapes images (--batch-size / --calib-size), the train "
                        f"split has {len(rows)} single-kind images")
    pick = torch.randperm(len(rows), generator=g)[:count].tolist()
    idx = [rows[k] for k in pick]
    if px == 32:
        n = torch.randn((count, *mean.shape[1:]), generator=g)
        z0 = float(pipe.vae.config.scaling_factor) * (mean[idx] + std[idx] * n)
    else:
        shapes = ProceduralShapes(image_size=px, size=TRAIN_IMAGES, seed=0, split="train")
        z0 = _encode(pipe.vae, to_minus_one_one(np.stack([shapes.image_uint8(i) for i in idx])), g)
    y = torch.tensor([labels[k] for k in pick], dtype=torch.long)
    return z0, y, {"data": "shapes", "split": "train", "pixels": px, "indices": idx,
                   "labels": "shape kind of single-kind images (training/class_conditioning.py)"}


def _train_posterior(pipe, count: int, cache_dir: Path) -> tuple:
    """train.py's cached posterior of the first ``count`` train images (32 px) and their attributes, under
    train.py's key: the VAE's and the condition part's weights (text encoder or class table)."""
    from training.latent import parts_checksum
    from training.latent_data import cached_posterior

    parts = {name: _cpu(m) for name, m in (("vae", pipe.vae), ("text_encoder", pipe.text_encoder),
                                            ("class_embedder", pipe.class_embedder)) if m is not None}
    return cached_posterior(parts["vae"], count=count, seed=0, cache_dir=cache_dir, key=parts_checksum(parts))


def _cpu(module):
    """``module`` itself on the CPU, else a CPU copy (the latent cache and its key read CPU tensors)."""
    import copy

    return module if next(module.parameters()).device.type == "cpu" else copy.deepcopy(module).cpu()


def calibration_pairs(pipe, count: int, *, data: str, data_root: str | None, prompts: str | None, seed: int,
                      cache_dir: Path) -> tuple[torch.Tensor, list[str], dict[str, Any]]:
    """``count`` (z0, caption) pairs (module docstring): latents (count, C, h, w) float32 on CPU, the captions,
    and a JSON record of where they came from. Drawn from ``seed``: which images, the paraphrase, the posterior
    noise."""
    from training.latent import TRAIN_IMAGES

    px, g = _pixels(pipe), torch.Generator().manual_seed(seed)
    if data == "folder":
        from data.image_folder import ImageFolder

        files, captions = _folder_pairs(data_root, prompts)
        if len(files) < count:
            raise UserError(f"--data-root {data_root}: the run needs {count} captioned images, the folder has "
                            f"{len(files)}")
        idx = torch.randperm(len(files), generator=g)[:count].tolist()
        folder = ImageFolder(data_root, image_size=px)
        x = torch.stack([folder[i] for i in idx])
        return _encode(pipe.vae, x, g), [captions[i] for i in idx], {"data": "folder", "root": data_root,
                                                                       "files": [files[i].name for i in idx]}
    n_train = max(TRAIN_IMAGES, count)
    idx = torch.randperm(n_train, generator=g)[:count]
    variant = torch.randint(NUM_VARIANTS, (count,), generator=g)
    if px == 32:  # the shapes' own resolution: train.py's cached posterior of the train split
        mean, std, attrs = _train_posterior(pipe, n_train, cache_dir)
        n = torch.randn((count, *mean.shape[1:]), generator=g)
        z0 = float(pipe.vae.config.scaling_factor) * (mean[idx] + std[idx] * n)
        captions = [caption(attrs[int(i)], int(v)) for i, v in zip(idx, variant)]
    else:  # another pixel size: the chosen train images rendered at it (only those), encoded now
        shapes = ProceduralShapes(image_size=px, size=n_train, seed=0, split="train")
        drawn = [shapes.image_and_attributes(int(i)) for i in idx]
        z0 = _encode(pipe.vae, to_minus_one_one(np.stack([image for image, _ in drawn])), g)
        captions = [caption(caption_attributes(a), int(v)) for (_, a), v in zip(drawn, variant)]
    return z0, captions, {"data": "shapes", "split": "train", "pixels": px, "indices": idx.tolist()}


def calibration(pipe, spec: ChannelPruning | LayerPruning, *, data: str, data_root: str | None,
                prompts: str | None, cache_dir: Path, device: str) -> tuple[torch.Tensor | None, dict | None, dict]:
    """(latents on ``device``, their U-Net keyword inputs {"encoder_hidden_states", ...}, record) of the spec's
    batch; (None, None, {}) when the spec reads no data."""
    from pruning.layers.sd import map_tensors, prompt_conditions

    count = images_needed(spec)
    if not count:
        return None, None, {}
    if not pipe.has_text and pipe.num_classes:  # (z0, y): the class token / class embedding of each label
        from training.class_conditioning import class_condition

        z0, labels, record = class_pairs(pipe, count, seed=spec.seed, cache_dir=cache_dir)
        cond = class_condition(pipe, labels, torch.zeros(count, dtype=torch.bool))
        record = {**record, "count": count, "class_labels": labels[:8].tolist()}
        return z0.to(device), map_tensors(cond, lambda v: v.to(device)), record
    z0, captions, record = calibration_pairs(pipe, count, data=data, data_root=data_root, prompts=prompts,
                                             seed=spec.seed, cache_dir=cache_dir)
    cond = prompt_conditions(pipe, captions)  # SDXL: both towers, pooled embedding and time ids
    record = {**record, "count": count, "captions": captions[:8]}
    return z0.to(device), map_tensors(cond, lambda v: v.to(device)), record


def gradient_batch(latents: torch.Tensor, cond: dict) -> ConditionalBatch:
    """The ConditionalBatch of channel pruning's gradient methods (``pruning/conditional.py``)."""
    return ConditionalBatch(x0=latents, encoder_hidden_states=cond.get("encoder_hidden_states"),
                            class_labels=cond.get("class_labels"), added_cond_kwargs=cond.get("added_cond_kwargs"))


def self_sampled(pipe, spec: ChannelPruning, *, data: str, prompts: str | None) -> tuple[ConditionalBatch, dict]:
    """recipe "ldm-script": x0 the pipeline samples itself (``pruning/self_sampled.py``); a text pipeline draws
    its captions from --prompts, else from the shapes' held-out captions (data shapes)."""
    from metrics.t2i_evaluation import read_prompts
    from pruning.self_sampled import self_sampled_batch

    captions = None
    if pipe.has_text:
        captions = read_prompts(str(prompts or SHAPES_PROMPTS)) if (prompts or data == "shapes") else None
        if captions is None:
            raise UserError("--recipe ldm-script: a text pipeline samples its x0 from captions; give --prompts FILE")
    return self_sampled_batch(pipe, spec, prompts=captions, progress=True)


def grid_prompts(data: str, prompts: str | None, count: int) -> list[str]:
    """The sample grids' prompts: the first ``count`` held-out shapes captions for the shapes world, else the
    calibration prompts file's first lines, else ``FIXED_PROMPTS`` (cycled to ``count``)."""
    from metrics.t2i_evaluation import read_prompts

    pool: Sequence[str] = read_prompts(str(SHAPES_PROMPTS if data == "shapes" else prompts)) \
        if data == "shapes" or prompts else FIXED_PROMPTS
    return [pool[i % len(pool)] for i in range(count)]


def grid_conditions(pipe, prompts: list[str]) -> list[str]:
    """What the grids condition on, one line per image: the prompts; a class-conditional pipeline's class labels
    0, 1, ... instead; "(unconditional)" for a pipeline with neither."""
    if pipe.has_text:
        return prompts
    n = pipe.num_classes
    return [f"class {i % n}" if n else "(unconditional)" for i in range(len(prompts))]


def sample_grid(pipe, unet: torch.nn.Module, conditions: list[str], *, steps: int, seed: int) -> torch.Tensor:
    """One image per condition (``grid_conditions``) from ``unet`` in ``pipe`` (its scheduler and guidance
    default), the same initial noise for every U-Net (sample index i, ``seed``): (N, 3, H, W) in [-1, 1]."""
    import dataclasses

    from models.pipelines.text_to_image import Request, generate

    request = Request(steps=steps, seed=seed, batch_size=8)
    labels = [int(c.split()[1]) for c in conditions] if not pipe.has_text and pipe.num_classes else None
    return generate(dataclasses.replace(pipe, unet=unet.eval()), request, indices=range(len(conditions)),
                    prompts=conditions if pipe.has_text else None, class_labels=labels) * 2 - 1


def pipeline_name(source: str | os.PathLike) -> str:
    """A short name for the run folder: the folder's or hub repo's last component."""
    return Path(str(source).rstrip("/")).name or "pipeline"
