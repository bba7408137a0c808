"""The gradient batch of Diff-Pruning's LDM recipe: latents the model itself samples.

Diff-Pruning's ImageNet-LDM script (VainF/Diff-Pruning ``ldm_exp/prune_ldm.py``) has no training images in
its gradient pass: x0 are latents that the dense model generates itself, with DDIM (eta 0, 20 steps) and
classifier-free guidance (scale 3.0, the "no class" row as the unconditional input), for randomly drawn
class labels. The loss L_t (pruning/conditional.py) then reads each latent with the class it was sampled for.
``ChannelPruning(recipe="ldm-script")`` (pruning/spec.py) asks for this batch:

    spec = ChannelPruning(method="diff-pruning", recipe="ldm-script")     # thr 0.1, 6 latents, 20 steps, s = 3
    data, record = self_sampled_batch(pipe, spec)                         # ConditionalBatch, what was drawn
    unet, report = prune(pipe.unet, pipe.unet.example_inputs(), spec, data=data,
                         schedule=training_schedule(pipe.scheduler))

The sampler is the pipeline's own (``models.pipelines.text_to_image.generate_latents``: its DDIM, its
guidance, its per-sample seeded x_T); the latents are those it would decode to images. A text-to-image
pipeline draws captions at random from ``prompts`` instead of classes (the empty prompt as unconditional).

Seeds, all from ``spec.seed`` = s: the labels / captions from ``torch.Generator().manual_seed(s)``; the
initial latents x_T of sample i from the pipeline's per-index stream of run seed s + 1 (diffusion/guidance.py
``initial_latents``), so that they are never the stream of the gradient pass's noise eps (pruning/api.py
draws eps from ``Generator().manual_seed(s)``, which is also index 0's stream of run seed s).

Difference to the script: it draws 6 new classes, new latents and new noise at EVERY timestep t; here ONE
batch of ``spec.batch_size`` latents and one noise draw serve every t (the paper's DDPM loop,
pruning/gradients.py), which makes the gradient pass a function of (batch, seed) that tests can check.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from models.pipelines.pipeline import Pipeline
from models.pipelines.text_to_image import (Request, conditioning, generate_latents, image_size,
                                            pipeline_info)
from pruning.conditional import ConditionalBatch
from pruning.spec import ChannelPruning

X0_SCHEDULER = "ddim"  # the script's DDIMSampler, eta 0 (diffusion/schedulers/ddim.py)


def draw(count: int, pool: int, generator: torch.Generator) -> list[int]:
    """``count`` indices into ``range(pool)``, distinct while count <= pool (the script's random.sample of
    classes), then another permutation for the next ``pool`` and so on."""
    out: list[int] = []
    while len(out) < count:
        out += torch.randperm(pool, generator=generator)[:count - len(out)].tolist()
    return out


def x0_request(spec: ChannelPruning) -> Request:
    """The sampling request of ``spec``'s self-sampled x0 (one-line error for a spec without the recipe)."""
    if spec.recipe is None:
        raise ValueError(f"method {spec.method!r} without a recipe takes x0 as data; self-sampled x0 need "
                         f"ChannelPruning(recipe='ldm-script')")
    return Request(guidance_scale=spec.x0_guidance, steps=spec.x0_steps, scheduler=X0_SCHEDULER,
                   num_images=spec.batch_size, seed=spec.seed + 1, batch_size=spec.micro_batch)


def self_sampled_batch(pipe: Pipeline, spec: ChannelPruning, *, prompts: Sequence[str] | None = None,
                       progress: bool = False) -> tuple[ConditionalBatch, dict[str, Any]]:
    """``spec.batch_size`` latents sampled by ``pipe`` (module docstring) with their conditions, and a record
    of what was drawn (JSON values): {"count", "steps", "guidance_scale", "scheduler", "eta", "seed",
    "x_T_seed", "class_labels" or "prompts"}.

    A class-conditional pipeline (class embedder or num_class_embeds) draws labels from its classes; a text
    pipeline draws captions from ``prompts`` (a list, e.g. a prompts file's lines), which it needs; an
    unconditional one draws nothing. x0 (B, C, h, w) are in the U-Net's latent space, on its device, float32,
    ordinary tensors (autograd may read them); the conditions are the U-Net's inputs for the same rows.
    """
    request = x0_request(spec)
    n, generator = spec.batch_size, torch.Generator().manual_seed(spec.seed)
    info = pipeline_info(pipe)
    labels = captions = None
    if info.has_text:
        if prompts is None or isinstance(prompts, str) or not len(prompts):
            raise ValueError(f"the {info.kind} pipeline {info.source} is text-conditional: its self-sampled x0 "
                             f"need captions to draw from (prompts=[...], e.g. a prompts file's lines)")
        captions = [str(prompts[i]) for i in draw(n, len(prompts), generator)]
    elif prompts is not None:
        raise ValueError(f"prompts given, but the {info.kind} pipeline {info.source} has no text encoder")
    elif info.num_classes:
        labels = draw(n, info.num_classes, generator)
    # Every check of the request (guidance without an unconditional input, ...) runs before any sampling.
    latents = generate_latents(pipe, request, range(n), prompts=captions, class_labels=labels,
                               progress=progress)
    x0 = latents.clone().float()  # (B, C, h, w); out of inference mode: an ordinary tensor
    device, dtype = x0.device, next(pipe.unet.parameters()).dtype
    with torch.no_grad():  # the loss's conditions: the conditional half only (scale 1)
        cond, _ = conditioning(pipe, request, captions or [""] * n, labels, image_size(info, request), 1.0,
                               device=device, dtype=dtype)
    data = ConditionalBatch(x0=x0, encoder_hidden_states=cond.encoder_hidden_states,
                            class_labels=cond.class_labels, added_cond_kwargs=cond.added_cond_kwargs)
    record = {"count": n, "steps": request.steps, "guidance_scale": request.guidance_scale,
              "scheduler": X0_SCHEDULER, "eta": 0.0, "seed": spec.seed, "x_T_seed": request.seed}
    if labels is not None:
        record["class_labels"] = labels
    if captions is not None:
        record["prompts"] = captions
    return data, record
