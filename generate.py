"""Generate images from a prompt (or a class label) with a latent diffusion pipeline, original or pruned.

    python generate.py --prompt "two red discs and a blue square on a green-to-yellow background"   # embedded
    python generate.py --model stable-diffusion-v1-5/stable-diffusion-v1-5 --prompt "a red circle on grey"
    python generate.py --model sd15/ --prompt "..." --negative-prompt "blurry" --guidance 7.5 --steps 25 \\
                       --scheduler dpmpp_2m --num-images 4 --seed 0
    python generate.py --model v1-5-pruned-emaonly.safetensors --config sd15-configs/ --prompt "..."
    python generate.py --model sd15/ --unet runs/prune/00003-sd/pruned.pt --prompt "..."    # a pruned U-Net
    python generate.py --model cin256-v2/model.ckpt --config ldm-cin256-v2 --class-label 207 --guidance 3 \
                       --scheduler ddim --steps 20        # Diff-Pruning's ImageNet LDM, as its sampling script

--model: a diffusers pipeline folder (model_index.json), a hub name (models/pipelines/hub.py), or an
original-layout SD-v1.x / CompVis LDM single file (with --config: a pipeline folder, a hub name or a
built-in layout such as ldm-cin256-v2, for its architecture, tokenizer and scheduler).
Writes a new numbered folder under runs/generate/ with one PNG per image (sample i uses the initial noise of
index i of --seed, so images do not depend on --batch-size), grid.png and generate.json (the request and
seconds per image). Bad input is one line before any weight is read: a pipeline folder missing a
component, guidance below 1, a negative prompt for a pipeline without a text encoder, a class label out of
range; a prompt over the tokenizer's 77 tokens is truncated with a one-line warning.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from common import cli
from common.allocator import retain_freed_memory
from common.defaults import RUNS_DIR, T2I_PIPELINE
from common.images import save_grid
from common.runs import atomic_path, new_run_dir, write_json
from diffusion.guidance import check_guidance_scale
from diffusion.schedulers import SCHEDULERS
from models.pipelines import fetch_pipeline, is_latent_source, load_latent
from models.pipelines.pipeline import Pipeline
from models.pipelines.presets import PIPELINE_PRESETS
from models.pipelines.single_file import is_single_file
from models.pipelines.text_to_image import (Request, check_request, folder_info, generate, image_size, layout_info,
                                          pipeline_info, resolved_guidance)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class GenerateConfig:
    model: str
    prompt: str = ""
    negative_prompt: str | None = None
    guidance: float | None = None
    steps: int = 25
    scheduler: str | None = None
    num_images: int = 1
    seed: int = 0
    class_label: int | None = None
    height: int | None = None
    width: int | None = None
    batch_size: int = 4
    config: str | None = None
    unet: str | None = None
    variant: str | None = None
    ema: bool = False
    dtype: str = "float32"
    device: str = "cpu"
    out: str = str(RUNS_DIR / "generate")
    progress: bool = True


def request_of(cfg: GenerateConfig) -> Request:
    return Request(prompt=cfg.prompt, negative_prompt=cfg.negative_prompt, guidance_scale=cfg.guidance,
                   steps=cfg.steps, scheduler=cfg.scheduler, num_images=cfg.num_images, seed=cfg.seed,
                   height=cfg.height, width=cfg.width, class_label=cfg.class_label, batch_size=cfg.batch_size)


def load_unet(path: str, dtype: torch.dtype) -> torch.nn.Module:
    """A replacement U-Net: a diffusers component folder, or a diffprune checkpoint of an SD U-Net (pruned
    ones included: its ``model_config`` is a UNetConditionConfig dict with widths / removed units)."""
    from models.pipelines.component import load_component
    if Path(path).is_dir():
        return load_component(path, dtype=dtype)
    from models.checkpoint import read_checkpoint
    from models.sd.config import UNetConditionConfig
    from models.sd.unet import UNet2DConditionModel
    from training.families import is_latent_config
    ckpt = read_checkpoint(cli.check_readable_file(path, "--unet"))
    if not is_latent_config(ckpt.get("model_config")):
        raise cli.UserError(f"--unet {path}: not a conditional latent U-Net checkpoint (its model_config has no "
                            "block_out_channels; a DDPM checkpoint is sampled by `python evaluate.py`)")
    config = UNetConditionConfig.from_dict(ckpt["model_config"])
    unet = UNet2DConditionModel(config)
    unet.load_state_dict(ckpt.get("ema_state_dict") or ckpt["state_dict"])
    return unet.to(dtype).eval()


def precheck(cfg: GenerateConfig) -> None:
    """Everything that can be checked without reading a weight (the module docstring's list)."""
    if cfg.guidance is not None:
        check_guidance_scale(cfg.guidance)
    cli.check_writable_dir(cfg.out, "--out")
    folder = Path(cfg.model)
    # a file is an SD / LDM single file, its layout from --config or from its own keys; a train.py / prune.py
    # model.pt is neither: its run's pipeline/ folder is the pipeline
    if folder.is_file() and cfg.config is None and not is_single_file(folder):
        raise cli.UserError(f"--model {cfg.model}: not a pipeline folder or an SD / LDM single file (for a train.py "
                            "or prune.py run pass RUN/pipeline; a U-Net checkpoint alone goes to --unet)")
    if folder.is_dir() and not (folder / "model_index.json").is_file():
        raise cli.UserError(f"--model {cfg.model}: a folder without model_index.json is not a pipeline (a U-Net "
                            "folder alone goes to --unet, beside a pipeline --model)")
    if (cfg.ema or cfg.config is not None) and not folder.is_file():
        raise cli.UserError(f"--ema and --config describe a single-file --model; {cfg.model} is a pipeline folder "
                            "or hub name, which brings its own weights and configs")
    if cfg.unet is not None:
        target = Path(cfg.unet)
        if not target.exists() or target.is_dir() and not (target / "config.json").is_file():
            raise cli.UserError(f"--unet {cfg.unet}: no such file, or a folder without config.json")
    if folder.is_dir():
        check_request(folder_info(folder), request_of(cfg))
    elif cfg.config in PIPELINE_PRESETS:  # a single file described by a built-in layout
        check_request(layout_info(PIPELINE_PRESETS[cfg.config], cfg.model), request_of(cfg))
    elif cfg.config is not None and Path(cfg.config).is_dir():
        check_request(folder_info(cfg.config), request_of(cfg))
    elif not Path(cfg.model).exists() and not is_latent_source(cfg.model):
        raise cli.UserError(f"--model {cfg.model}: no such file or folder, and not a known pipeline hub name")
    elif not Path(cfg.model).exists():  # a hub name: its configs first (small files), the weights only after
        check_request(folder_info(fetch_pipeline(cfg.model, weights=False)), request_of(cfg))


def main(cfg: GenerateConfig) -> Path:
    """Generate ``cfg.num_images`` images; returns the run folder."""
    precheck(cfg)
    dtype = DTYPES[cfg.dtype]
    pipe = load_latent(cfg.model, variant=cfg.variant, dtype=dtype, config=cfg.config, ema=cfg.ema)
    if not isinstance(pipe, Pipeline):
        raise cli.UserError(f"--model {cfg.model} is a single {type(pipe).__name__}, not a pipeline "
                            f"(pass the pipeline folder; a U-Net alone goes to --unet)")
    if cfg.unet is not None:
        pipe = dataclasses.replace(pipe, unet=load_unet(cfg.unet, dtype))
    request = request_of(cfg)
    check_request(pipeline_info(pipe), request)
    pipe.to(cfg.device)
    start = time.perf_counter()
    images = generate(pipe, request, range(cfg.num_images), progress=cfg.progress)
    seconds = (time.perf_counter() - start) / cfg.num_images
    run = new_run_dir(cfg.out, Path(str(cfg.model).rstrip("/")).name or "pipeline")  # only once images exist
    for i, image in enumerate(images):
        pixels = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        with atomic_path(run / f"{i:05d}.png") as tmp:  # a kill leaves whole PNGs only
            Image.fromarray(pixels).save(tmp, format="PNG")
    save_grid(images * 2 - 1, run / "grid.png")
    info = pipeline_info(pipe)  # what was used, where the flags left it to the pipeline
    write_json(run / "generate.json", {**dataclasses.asdict(cfg), "kind": pipe.kind,
                                       "resolved": {"guidance": resolved_guidance(info, request),
                                                    "scheduler": request.scheduler or pipe.scheduler.get("_class_name"),
                                                    "height_width": list(image_size(info, request))},
                                       "seconds_per_image": seconds, "device": cfg.device})
    print(f"[generate] {cfg.num_images} image(s) of {pipe.kind} pipeline {cfg.model}: {seconds:.2f} s per image "
          f"({cfg.steps} steps, {cfg.device}) -> {run}")
    return run


def build_parser() -> argparse.ArgumentParser:
    d = GenerateConfig(model="")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(T2I_PIPELINE),
                   help="pipeline folder, hub name, or SD-v1.x single file [default: the embedded text-to-image "
                        "pipeline, checkpoints/t2i_shapes]")
    p.add_argument("--prompt", default=d.prompt, help="the text prompt (pipelines with a text encoder)")
    p.add_argument("--negative-prompt", default=None, help="the unconditional text of classifier-free guidance")
    p.add_argument("--guidance", type=cli.finite_float, default=None,
                   help="guidance scale s >= 1 (1 = none) [default: 7.5 with a text encoder, else 1]")
    p.add_argument("--steps", type=cli.positive_int, default=d.steps, help=f"sampling steps [default: {d.steps}]")
    p.add_argument("--scheduler", choices=tuple(SCHEDULERS), default=None,
                   help="sampler [default: the pipeline's scheduler/scheduler_config.json]")
    p.add_argument("--num-images", type=cli.positive_int, default=d.num_images)
    p.add_argument("--class-label", type=int, default=None, help="class of a class-conditional U-Net")
    p.add_argument("--height", type=cli.positive_int, default=None)
    p.add_argument("--width", type=cli.positive_int, default=None)
    p.add_argument("--batch-size", type=cli.positive_int, default=d.batch_size)
    p.add_argument("--config", default=None, help="for a single file: the pipeline folder, hub name or built-in "
                                                  f"layout ({', '.join(PIPELINE_PRESETS)}) of its configs")
    p.add_argument("--unet", default=None, help="a replacement (e.g. pruned) U-Net: component folder or checkpoint")
    p.add_argument("--variant", default=None, help="weight-file variant, e.g. fp16")
    p.add_argument("--ema", action="store_true", help="a single file's EMA U-Net weights (model_ema.*)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=d.dtype)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    cli.add_run_flags(p, out=d.out, seed_help="seed of the initial noise (image i uses index i)")
    return p


def parse_args(argv: list[str] | None = None) -> GenerateConfig:
    args = vars(build_parser().parse_args(argv))
    args.pop("debug")
    return GenerateConfig(**args)


if __name__ == "__main__":
    retain_freed_memory()  # common/allocator.py: the passes reuse freed activation memory
    sys.exit(cli.run(main, parse_args))
