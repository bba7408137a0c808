"""Prompt (or class label) -> images with a ``Pipeline``: text encoding, guided sampling, the VAE decode.

    request = Request(prompt="a red circle", guidance_scale=7.5, steps=25, scheduler="dpmpp_2m", num_images=4)
    check_request(folder_info(folder), request)          # every bad input, one line each, before any weight is read
    images = generate(pipe, request, indices=range(4))   # (4, 3, H, W) in [0, 1]
    latents = generate_latents(pipe, request, indices=range(4))   # the same samples, before the VAE decode

Text conditioning, as the diffusers pipelines compute it:
    sd1 / sd2   c = text_encoder(ids).last_hidden_state                 (B, 77, D)
                (SD-2's diffusers text encoder already ends one layer early: the original's penultimate layer)
    sdxl        c = cat(h1, h2) with h_k = encoder k's penultimate hidden state (no final LayerNorm),
                text_embeds = encoder 2's projected pooled output, time_ids = (H, W, 0, 0, H, W)
                (original size, crop top-left, target size: Podell et al. 2023, Sec. 2.2)
The unconditional input is the encoding of the negative prompt (default ""), except that SDXL's pipeline
uses zeros when no negative prompt is given (``force_zeros_for_empty_prompt``; an explicit "" is encoded). Latent sample i starts from
``initial_latents(seed, [i])`` (diffusion/guidance.py), so any split into batches gives the same images.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch

from diffusion.guidance import Conditioning, GuidedDenoiser, check_guidance_scale, initial_latents
from diffusion.schedulers import SCHEDULERS, make_scheduler, sample_loop
from models.pipelines.pipeline import Pipeline

SDXL_TIME_IDS = 6


@dataclass(frozen=True)
class Request:
    """What to generate. guidance_scale None: 7.5 for text pipelines, 1 (no guidance) otherwise.
    scheduler None: the pipeline's own (scheduler/scheduler_config.json). height/width None: the U-Net's
    sample_size times the VAE's scale factor. class_label: for class-conditional U-Nets."""

    prompt: str = ""
    negative_prompt: str | None = None
    guidance_scale: float | None = None
    steps: int = 25
    scheduler: str | None = None
    num_images: int = 1
    seed: int = 0
    height: int | None = None
    width: int | None = None
    class_label: int | None = None
    batch_size: int = 4


@dataclass(frozen=True)
class PipelineInfo:
    """What ``check_request`` needs to know, readable from a loaded ``Pipeline`` or from a folder's configs
    before any weight is read (``pipeline_info``, ``folder_info``)."""

    kind: str
    source: str
    has_text: bool
    num_classes: int
    scheduler: dict
    sample_size: int
    vae_scale: int
    unet_levels: int
    has_unconditional: bool = False  # guidance possible (text, or a class embedder's "no class" row)


def pipeline_info(pipe: Pipeline) -> PipelineInfo:
    c = pipe.unet.config  # a UNetConditionConfig, or the DDPM family's ModelConfig (image_size, ch_mult)
    sample = getattr(c, "sample_size", None) or getattr(c, "image_size", None) or 64
    sample = sample[0] if isinstance(sample, (tuple, list)) else sample
    levels = len(getattr(c, "block_out_channels", None) or getattr(c, "ch_mult"))
    return PipelineInfo(pipe.kind, pipe.source, pipe.has_text, pipe.num_classes, pipe.scheduler, int(sample),
                        pipe.vae_scale, levels, pipe.has_unconditional)


def layout_info(layout: dict, source: str) -> PipelineInfo:
    """The PipelineInfo of a pipeline layout: {"model_index": ..., component: config dict, "scheduler": ...}
    (a folder's JSON files, or a preset of models/pipelines/presets.py)."""
    from models.pipelines.class_embedder import ClassEmbedderConfig
    from models.pipelines.pipeline import listed_components, pipeline_kind
    listed = listed_components(layout["model_index"])
    unet = layout["unet"].get("_diffprune_config", layout["unet"])  # a pruned U-Net's own config, same field names
    vae = layout["vae" if "vae" in listed else "vqvae"]
    sample = unet.get("sample_size") or 64
    sample = sample[0] if isinstance(sample, list) else sample
    classes, unconditional = int(unet.get("num_class_embeds") or 0), "text_encoder" in listed
    if "class_embedder" in listed:
        embedder = ClassEmbedderConfig.from_dict(layout["class_embedder"])
        classes, unconditional = embedder.num_classes, embedder.unconditional_class is not None
    return PipelineInfo(pipeline_kind(listed, unet), source, "text_encoder" in listed, classes, layout["scheduler"],
                        int(sample), 2 ** (len(vae["block_out_channels"]) - 1), len(unet["block_out_channels"]),
                        unconditional)


def folder_info(folder) -> PipelineInfo:
    """The PipelineInfo of a pipeline folder from its JSON files alone (raises for a missing component)."""
    import json
    from pathlib import Path

    from models.pipelines.component import read_config
    from models.pipelines.pipeline import SCHEDULER_FILE, check_pipeline_folder
    folder = Path(folder)
    _, listed = check_pipeline_folder(folder)
    layout = {"model_index": json.loads((folder / "model_index.json").read_text()),
              "scheduler": json.loads((folder / "scheduler" / SCHEDULER_FILE).read_text())}
    for name in ("unet", "vae", "vqvae", "class_embedder"):
        if name in listed:
            layout[name] = read_config(folder / name)
    return layout_info(layout, str(folder))


def resolved_guidance(info: PipelineInfo, request: Request) -> float:
    if request.guidance_scale is None:
        return 7.5 if info.has_text else 1.0  # class-conditional LDMs: no guidance unless asked for
    return float(request.guidance_scale)


def image_size(info: PipelineInfo, request: Request) -> tuple[int, int]:
    """(H, W) in pixels."""
    default = info.sample_size * info.vae_scale
    return int(request.height or default), int(request.width or default)


def check_request(info: PipelineInfo, request: Request) -> None:
    """A one-line error for each bad input (the first found), before any network runs. Over-long prompts are
    truncated by the tokenizer, with a one-line warning, as the reference pipelines do."""
    from diffusion.schedulers import check_sampling_steps, scheduler_config
    scale = check_guidance_scale(resolved_guidance(info, request))
    if request.negative_prompt is not None and not info.has_text:
        raise ValueError(f"a negative prompt needs a text encoder; the {info.kind} pipeline {info.source} has none")
    if request.prompt and not info.has_text:
        raise ValueError(f"a prompt needs a text encoder; the {info.kind} pipeline {info.source} has none "
                         f"(use a class label or no prompt)")
    if scale > 1 and not info.has_unconditional:
        raise ValueError(f"guidance scale {scale} needs an unconditional input (a text encoder's empty prompt or "
                         f"a class embedder's 'no class' row); the {info.kind} pipeline {info.source} has none: "
                         f"use 1")
    classes = info.num_classes
    if request.class_label is not None:
        if classes == 0:
            raise ValueError(f"class label {request.class_label} given, but the U-Net of {info.source} is not "
                             f"class-conditional (no num_class_embeds)")
        if not 0 <= request.class_label < classes:
            raise ValueError(f"class label {request.class_label} is out of range: the U-Net has {classes} "
                             f"classes (0..{classes - 1})")
    elif classes:
        raise ValueError(f"the U-Net of {info.source} is class-conditional ({classes} classes): pass a class label")
    if request.scheduler is not None and request.scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {request.scheduler!r}; supported: {', '.join(SCHEDULERS)}")
    config = scheduler_config(info.scheduler, request.scheduler)  # an unsupported setting fails here
    if request.steps < 1 or request.num_images < 1 or request.batch_size < 1:
        raise ValueError(f"steps, num_images and batch_size must be >= 1, got {request.steps}, "
                         f"{request.num_images}, {request.batch_size}")
    check_sampling_steps(config, request.steps)
    H, W = image_size(info, request)
    multiple = info.vae_scale * 2 ** (info.unet_levels - 1)
    if H % multiple or W % multiple:
        raise ValueError(f"height and width must be multiples of {multiple} for this pipeline, got {H}x{W}")


def _encode(encoder, tokenizer, texts: Sequence[str], *, penultimate: bool):
    ids = tokenizer(list(texts)).to(next(encoder.parameters()).device)  # warns (one line) when it truncates
    out = encoder(ids)
    return (out.penultimate_hidden_state if penultimate else out.last_hidden_state), out


def text_conditioning(pipe: Pipeline, prompts: Sequence[str], size: tuple[int, int],
                      micro: torch.Tensor | None = None) -> Conditioning:
    """The U-Net's conditional inputs for ``prompts`` (B texts) at image size ``size`` (H, W). SDXL's time ids
    are (original H, W, crop top, left, target H, W) (Podell et al. 2023, Sec. 2.2): by default the original is
    the target and there is no crop, as at inference; ``micro`` (B, 4) gives each training image's own
    (original H, W, crop top, left) (data/captioned_folder.py ``micro_conditions``)."""
    if pipe.kind != "sdxl":
        states, _ = _encode(pipe.text_encoder, pipe.tokenizer, prompts, penultimate=False)
        return Conditioning(encoder_hidden_states=states)
    h1, _ = _encode(pipe.text_encoder, pipe.tokenizer, prompts, penultimate=True)
    h2, out2 = _encode(pipe.text_encoder_2, pipe.tokenizer_2, prompts, penultimate=True)
    H, W = size
    time_ids = torch.tensor([[H, W, 0, 0, H, W]], dtype=h2.dtype, device=h2.device).expand(len(prompts), -1)
    if micro is not None:
        if tuple(micro.shape) != (len(prompts), 4):
            raise ValueError(f"micro-conditioning must be (B, 4) = (original H, W, crop top, left) for B = "
                             f"{len(prompts)} prompts, got {tuple(micro.shape)}")
        time_ids = torch.cat([micro.to(time_ids), time_ids[:, 4:]], dim=1)
    return Conditioning(encoder_hidden_states=torch.cat([h1, h2], dim=-1),
                        added_cond_kwargs={"text_embeds": out2.text_embeds, "time_ids": time_ids})


def _zeros_like(c: Conditioning) -> Conditioning:
    added = None if c.added_cond_kwargs is None else {
        k: (v if k == "time_ids" else torch.zeros_like(v)) for k, v in c.added_cond_kwargs.items()}
    return Conditioning(torch.zeros_like(c.encoder_hidden_states), added)


def _to(c: Conditioning, dtype: torch.dtype) -> Conditioning:
    added = None if c.added_cond_kwargs is None else {k: v.to(dtype) for k, v in c.added_cond_kwargs.items()}
    states = None if c.encoder_hidden_states is None else c.encoder_hidden_states.to(dtype)
    return Conditioning(states, added, c.class_labels)


def conditioning(pipe: Pipeline, request: Request, prompts: Sequence[str], labels: Sequence[int] | None,
                 size: tuple[int, int], scale: float, *, device: torch.device, dtype: torch.dtype
                 ) -> tuple[Conditioning, Conditioning | None]:
    """(conditional, unconditional or None) U-Net inputs for a batch with these ``prompts`` (one per sample)
    and class ``labels`` (one per sample, or None) of ``request`` (module docstring); the unconditional half
    only when scale > 1."""
    B = len(prompts)
    cond, uncond = Conditioning(), None
    if pipe.has_text:
        cond = text_conditioning(pipe, list(prompts), size)
        if scale > 1:
            uncond = text_conditioning(pipe, [request.negative_prompt or ""] * B, size)
            if request.negative_prompt is None and pipe.force_zeros_for_empty_prompt:
                uncond = _zeros_like(uncond)
    if labels is not None:
        labels = torch.tensor(list(labels), dtype=torch.long, device=device)
        if pipe.class_embedder is None:
            return Conditioning(class_labels=labels), None  # num_class_embeds: added to the time embedding
        # A class token for cross-attention (the CompVis ImageNet LDM); "no class" is the unconditional input.
        table = next(pipe.class_embedder.parameters()).device  # frozen parts may stay off the U-Net's device
        cond = Conditioning(encoder_hidden_states=pipe.class_embedder(labels.to(table)).to(device))
        if scale > 1:
            uncond = Conditioning(encoder_hidden_states=pipe.class_embedder.unconditional(B, table).to(device))
    return _to(cond, dtype), (None if uncond is None else _to(uncond, dtype))


def _latent_batches(pipe: Pipeline, request: Request, indices: Sequence[int], prompts: Sequence[str] | None,
                    class_labels: Sequence[int] | None, progress: bool):
    """Yields the sampled latents (b, C, h, w) of ``indices``, ``request.batch_size`` at a time, after the
    checks of ``generate`` (its docstring)."""
    info = pipeline_info(pipe)
    n = len(indices)
    if prompts is None and class_labels is None:
        check_request(info, request)
    else:
        for name, values in (("prompts", prompts), ("class_labels", class_labels)):
            if values is not None and len(values) != n:
                raise ValueError(f"{len(values)} {name} for {n} sample indices: give one per index")
        for k in range(n):  # every sample's own prompt / label must pass the request's checks
            check_request(info, dataclasses.replace(
                request, prompt=prompts[k] if prompts is not None else request.prompt,
                class_label=class_labels[k] if class_labels is not None else request.class_label))
    prompts = list(prompts) if prompts is not None else [request.prompt] * n
    if class_labels is None and request.class_label is not None:
        class_labels = [request.class_label] * n
    scale = resolved_guidance(info, request)
    H, W = image_size(info, request)
    device, dtype = next(pipe.unet.parameters()).device, next(pipe.unet.parameters()).dtype
    latent_shape = (pipe.latent_channels, H // pipe.vae_scale, W // pipe.vae_scale)
    config = pipe.scheduler_config(request.scheduler)
    for start in range(0, len(indices), request.batch_size):
        rows = slice(start, start + request.batch_size)
        batch = [int(i) for i in indices[rows]]
        with warnings.catch_warnings():
            if start > 0:  # the tokenizer's truncation warning: once per call, not once per batch
                warnings.simplefilter("ignore")
            cond, uncond = conditioning(pipe, request, prompts[rows], None if class_labels is None else
                                        class_labels[rows], (H, W), scale, device=device, dtype=dtype)
        x_T = initial_latents(request.seed, batch, latent_shape, device=device)  # (B, C, h, w) float32
        denoiser = GuidedDenoiser(pipe.unet, cond, uncond, scale)
        yield sample_loop(make_scheduler(config, request.steps), denoiser, x_T, progress=progress)


@torch.inference_mode()
def generate(pipe: Pipeline, request: Request, indices: Sequence[int], *, prompts: Sequence[str] | None = None,
             class_labels: Sequence[int] | None = None, progress: bool = False) -> torch.Tensor:
    """Images for the global sample ``indices`` of ``request`` (its seed): (N, 3, H, W) float32 in [0, 1], CPU.

    prompts / class_labels: one per index (e.g. the captions of a prompts file), instead of the request's
    single ``prompt`` / ``class_label`` for every sample; each is checked like the request's.
    """
    out = [((decode(pipe.vae, latents) + 1) / 2).clamp(0, 1).cpu()
           for latents in _latent_batches(pipe, request, indices, prompts, class_labels, progress)]
    if out:
        return torch.cat(out)
    return torch.empty(0, 3, *image_size(pipeline_info(pipe), request))


@torch.inference_mode()
def generate_latents(pipe: Pipeline, request: Request, indices: Sequence[int], *,
                     prompts: Sequence[str] | None = None, class_labels: Sequence[int] | None = None,
                     progress: bool = False) -> torch.Tensor:
    """What ``generate`` samples, before the VAE decode: (N, C, h, w) latents in the U-Net's space (the VAE's
    latents times its scaling factor), on the U-Net's device. The same checks, seeds and batches as
    ``generate``, so ``decode`` of these latents gives its images. Inference tensors: ``.clone()`` them
    outside inference mode before autograd reads them."""
    if not len(indices):
        raise ValueError("generate_latents: no sample indices given")
    return torch.cat(list(_latent_batches(pipe, request, indices, prompts, class_labels, progress)))


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents (B, C, h, w) -> images (B, 3, H, W) float32 in about [-1, 1]. A float16 VAE whose config says
    ``force_upcast`` (SDXL's, whose activations overflow float16) decodes in float32, as the reference does;
    the VAE is returned to float16 afterwards."""
    dtype = next(vae.parameters()).dtype
    upcast = dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae.float()
    try:
        work = torch.float32 if upcast else dtype
        return vae.decode(vae.from_latent(latents.to(work))).float()
    finally:
        if upcast:
            vae.to(dtype)
