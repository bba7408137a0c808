"""Text-to-image (and class-conditional) evaluation of a latent pipeline: CLIP score, PickScore, FID, params, MACs.

    python evaluate.py --model sd15/ --prompts coco30k.txt --steps 25 --guidance 7.5 --resolution 512 \\
        --eval-size 256 --clip ViT-g/14 --fid-reference data/coco_val2014_256_stats.npz --device cuda
    python evaluate.py --model cin256-v2/model.ckpt --config ldm-cin256-v2 --class-labels 1000 --guidance 3
    python evaluate.py --model checkpoints/t2i_shapes --prompts data/prompts/shapes_heldout.txt   # shapes world

``evaluate.py`` hands a command here when it has ``--prompts`` or ``--class-labels``. Sample i of prompt j
(i < --num-images-per-prompt) has the global index j * K + i, so its initial noise is index j * K + i of --seed
(models/pipelines/text_to_image.py): batches and devices never change an image. Images are generated at
--resolution (default: the pipeline's own size), resized to --eval-size with PIL's bicubic filter (BK-SDM,
Kim et al. 2023, arXiv 2305.15798, Sec. 4: 512 px generated, 256 px evaluated), saved as 8-bit PNGs under
RUN/images/, and every metric reads those 8-bit images: CLIP score (metrics/clip_score.py, both conventions),
PickScore (metrics/pickscore.py), FID with the bundled Inception (metrics/fid.py) against an image folder or
a statistics .npz. Params and MACs (metrics/macs.py, both conventions) are the U-Net's, at its sample size.
Shapes captions (every prompt parses with data/captions.py; --shapes-metrics auto, the default): attribute
accuracy and FD-shapes against as many real test-split images (metrics/t2i_shapes.py), and --clip defaults
to ``shapes``, the embedded world's tiny CLIP (CLIP-shapes score, metrics/clip_score.py LOCAL_CLIPS).
Writes RUN/report.json and RUN/report.md atomically (common/runs.py). Bad input is one line before any
weight is read: a missing or empty prompts file, guidance below 1, class labels for a text pipeline (or
prompts for one without text), both or neither of --prompts / --class-labels, a missing --fid-reference,
--shapes-metrics on with a prompt outside the shapes grammar. Every scorer (CLIP, readers, FID reference) is
loaded before generation, so a missing one fails in seconds.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import cli
from common.cli import UserError
from common.defaults import RUNS_DIR
from common.runs import atomic_path, new_run_dir, write_json, write_text
from metrics import t2i_shapes

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class T2IEvalConfig:
    """prompts: a text file, one caption per line (blank lines skipped); class_labels: the labels instead.
    resolution: generated height = width (None: the pipeline's); eval_size: the size every metric sees
    (None: as generated). clip / fid_reference None: that metric is skipped (clip: ``shapes`` when the shapes
    metrics are on). shapes_metrics: auto (on when every prompt is a shapes caption), on, off."""

    model: str
    prompts: str | None = None
    class_labels: tuple[int, ...] | None = None
    num_images_per_prompt: int = 1
    guidance: float | None = None
    steps: int = 25
    scheduler: str | None = None
    resolution: int | None = None
    eval_size: int | None = None
    clip: str | None = None
    pickscore: bool = False
    shapes_metrics: str = "auto"
    fid_reference: str | None = None
    inception_weights: str | None = None
    config: str | None = None
    unet: str | None = None
    dtype: str = "float32"
    batch_size: int = 4
    seed: int = 0
    device: str = "cpu"
    out: str = str(RUNS_DIR / "eval")


def parse_class_labels(text: str) -> tuple[int, ...]:
    """"0,1,2" -> (0, 1, 2); a single count "N" -> (0, ..., N-1) (one image per class); "7," -> (7,)."""
    parts = [p for p in text.split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--class-labels: expected '0,1,2' or a count, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"--class-labels: labels must be >= 0 and at least one, got {text!r}")
    if "," in text:
        return tuple(values)
    if values[0] < 1:  # "0" would be an empty list of labels, not label 0 (that is "0,")
        raise argparse.ArgumentTypeError(f"--class-labels {text}: a count of images must be at least 1 (one label "
                                         "alone is written '0,')")
    return tuple(range(values[0]))


def read_prompts(path: str) -> list[str]:
    """The captions of a prompts file: one per line, surrounding whitespace stripped, blank lines skipped."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--prompts {path}: no such file")
    prompts = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"--prompts {path}: the file holds no caption (one per line expected)")
    return prompts


def conditions(cfg: T2IEvalConfig) -> tuple[list[str] | None, list[int] | None]:
    """(prompts, labels), one entry per sample: each condition repeated --num-images-per-prompt times."""
    K = cfg.num_images_per_prompt
    if cfg.prompts is not None:
        return [p for p in read_prompts(cfg.prompts) for _ in range(K)], None
    return None, [c for c in cfg.class_labels for _ in range(K)]


def request_of(cfg: T2IEvalConfig, prompt: str = "", label: int | None = None):
    from models.pipelines.text_to_image import Request
    return Request(prompt=prompt, guidance_scale=cfg.guidance, steps=cfg.steps, scheduler=cfg.scheduler,
                   seed=cfg.seed, height=cfg.resolution, width=cfg.resolution, class_label=label,
                   batch_size=cfg.batch_size)


def precheck(cfg: T2IEvalConfig) -> tuple[list[str] | None, list[int] | None, bool, str | None]:
    """Every check that needs no weight (module docstring); returns ``conditions(cfg)``, whether the shapes
    metrics are on and why not (metrics/t2i_shapes.py ``resolve``)."""
    from diffusion.guidance import check_guidance_scale
    from models.pipelines import is_latent_source
    from models.pipelines.text_to_image import check_request, folder_info
    if (cfg.prompts is None) == (cfg.class_labels is None):
        raise UserError("give exactly one of --prompts FILE and --class-labels")
    if cfg.guidance is not None:
        try:
            check_guidance_scale(cfg.guidance)
        except ValueError as e:
            raise UserError(f"--guidance: {e}") from None
    prompts, labels = conditions(cfg)
    shapes, why_not = t2i_shapes.resolve(cfg.shapes_metrics, prompts)
    if (cfg.clip is not None or cfg.pickscore) and prompts is None:
        raise UserError("CLIP score and PickScore need captions: use --prompts, not --class-labels")
    if cfg.fid_reference is not None and not Path(cfg.fid_reference).exists():
        raise UserError(f"--fid-reference {cfg.fid_reference}: no such image folder or statistics file")
    if cfg.fid_reference is not None and len(prompts or labels) < 2:
        raise UserError(f"FID needs at least 2 images, this evaluation makes {len(prompts or labels)}")
    cli.check_writable_dir(cfg.out, "--out")
    folder = Path(cfg.model)
    if folder.is_dir() and (folder / "model_index.json").is_file():
        check(folder_info(folder), cfg, prompts, labels, check_request)
    elif not folder.exists() and not is_latent_source(cfg.model):
        raise UserError(f"--model {cfg.model}: no such file or folder, and not a known pipeline hub name")
    return prompts, labels, shapes, why_not


def check(info, cfg: T2IEvalConfig, prompts, labels, check_request) -> None:
    """The request checks of models/pipelines/text_to_image.py on the first condition (all share their kind)."""
    try:
        check_request(info, request_of(cfg, prompts[0] if prompts else "", labels[0] if labels else None))
        for label in set(labels or ()):
            check_request(info, request_of(cfg, "", label))
    except ValueError as e:
        raise UserError(str(e)) from None


def load_pipeline(cfg: T2IEvalConfig):
    from models.pipelines import load_latent
    from models.pipelines.pipeline import Pipeline
    dtype = DTYPES[cfg.dtype]
    pipe = load_latent(cfg.model, dtype=dtype, config=cfg.config)
    if not isinstance(pipe, Pipeline):
        raise UserError(f"--model {cfg.model} is a single {type(pipe).__name__}, not a conditional latent pipeline")
    if cfg.unet is not None:
        pipe = dataclasses.replace(pipe, unet=load_unet(cfg.unet, dtype))
    return pipe


def load_unet(path: str, dtype: torch.dtype) -> torch.nn.Module:
    """A replacement U-Net: a diffusers component folder or a diffprune checkpoint of an SD U-Net (as generate.py)."""
    from models.pipelines.component import load_component
    if Path(path).is_dir():
        return load_component(path, dtype=dtype)
    from models.checkpoint import read_checkpoint
    from models.sd.config import UNetConditionConfig
    from models.sd.unet import UNet2DConditionModel
    ckpt = read_checkpoint(cli.check_readable_file(path, "--unet"))
    unet = UNet2DConditionModel(UNetConditionConfig.from_dict(ckpt["model_config"]))
    unet.load_state_dict(ckpt.get("ema_state_dict") or ckpt["state_dict"])
    return unet.to(dtype).eval()


def resize(images: torch.Tensor, size: int | None) -> list[Image.Image]:
    """(N, 3, H, W) in [0, 1] -> 8-bit PIL images, bicubic-resized to size x size (None: unchanged)."""
    arr = (images.permute(0, 2, 3, 1) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    out = [Image.fromarray(a) for a in arr]
    return out if size is None else [im.resize((size, size), resample=Image.BICUBIC) for im in out]


def as_tensor(images: list[Image.Image]) -> torch.Tensor:
    """8-bit PIL images -> (N, 3, H, W) float32 in [0, 1] (what the metrics read back from the PNGs)."""
    return torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])).permute(0, 3, 1, 2)


def fid_setup(cfg: T2IEvalConfig):
    """(inception, mu_ref, sigma_ref) of --fid-reference, or None: read (a folder: its statistics computed)
    BEFORE generation, so a bad reference or missing Inception weights fail in seconds, not after sampling."""
    if cfg.fid_reference is None:
        return None
    from metrics.fid import load_stats, stats_for_folder
    from metrics.inception import FID_FEATURE_DIM, load_fid_inception
    inception = load_fid_inception(cfg.inception_weights, device=cfg.device)
    if Path(cfg.fid_reference).is_dir():
        mu, sigma = stats_for_folder(cfg.fid_reference, inception, device=cfg.device, progress=False)
    else:
        mu, sigma = load_stats(cfg.fid_reference)
    if mu.shape != (FID_FEATURE_DIM,):
        raise UserError(f"--fid-reference {cfg.fid_reference}: mu has shape {mu.shape}, FID statistics are "
                        f"{FID_FEATURE_DIM}-dimensional Inception pool3 features")
    return inception, mu, sigma


def fid_of(images: torch.Tensor, setup, cfg: T2IEvalConfig) -> dict:
    """FID of (N, 3, H, W) images in [0, 1] against the reference of ``fid_setup``; named fd_custom_inception
    when the Inception weights are not the FID release (metrics/inception.py)."""
    from metrics.fid import compute_stats, frechet_distance
    inception, mu_r, sigma_r = setup
    mu, sigma = compute_stats(images, inception, device=cfg.device, progress=False)
    name = "fid" if inception.is_fid_release else "fd_custom_inception"
    return {name: float(frechet_distance(mu, sigma, mu_r, sigma_r)), "fid_reference": cfg.fid_reference,
            "fid_images": len(images)}


def size_report(unet) -> dict:
    """Params and MACs of the U-Net, one forward pass at batch 1 and its sample size (metrics/macs.py)."""
    from metrics.macs import count_macs
    r = count_macs(unet, unet.example_inputs())
    return {"params": r.params, "macs_paper": r.macs_paper, "macs_full": r.macs_full}


def evaluate_pipeline(cfg: T2IEvalConfig) -> Path:
    """Generate one image per (condition, index), score them; returns the run folder (report.json inside)."""
    from models.pipelines.text_to_image import check_request, generate, pipeline_info
    prompts, labels, shapes, why_not = precheck(cfg)
    n = len(prompts or labels)
    clip_name = cfg.clip or (t2i_shapes.SHAPES_CLIP if shapes and prompts is not None else None)
    clip = scorer_setup(clip_name, cfg)
    shapes_metrics = None
    if shapes:  # a caption's attributes, or a shape-kind label (metrics/class_shapes.py)
        from metrics.class_shapes import ClassShapesMetrics
        shapes_metrics = t2i_shapes.ShapesMetrics.build(n, device=cfg.device) if prompts is not None else \
            ClassShapesMetrics.build(labels, device=cfg.device)
    fid = fid_setup(cfg)
    pipe = load_pipeline(cfg)
    check(pipeline_info(pipe), cfg, prompts, labels, check_request)  # single files / hub names: checked here
    pipe.to(cfg.device)
    start = time.perf_counter()
    images = generate(pipe, request_of(cfg), range(n), prompts=prompts, class_labels=labels, progress=n > 1)
    seconds = (time.perf_counter() - start) / n
    pil = resize(images, cfg.eval_size)
    run = new_run_dir(cfg.out, "t2i-" + (Path(str(cfg.model).rstrip("/")).name or "pipeline"))
    for i, im in enumerate(pil):
        with atomic_path(run / "images" / f"{i:05d}.png") as tmp:
            im.save(tmp, format="PNG")
    report = {"config": dataclasses.asdict(cfg), "kind": pipe.kind, "num_images": n,
              "image_size": list(pil[0].size[::-1]), "generated_size": list(images.shape[-2:]),
              "seconds_per_image": seconds, **size_report(pipe.unet), "shapes_metrics": shapes}
    if clip is not None:
        from metrics.clip_score import clip_score
        s = clip_score(*clip, pil, prompts, device=cfg.device)
        report.update(clip_score=s.score, clip_mean_cosine=s.mean_cosine, clip_model=clip_name)
    if shapes_metrics is not None and prompts is None:
        report.update(shapes_metrics.measure(as_tensor(pil), device=cfg.device))
    elif shapes_metrics is not None:
        report.update(shapes_metrics.measure(as_tensor(pil), prompts, device=cfg.device))
    else:
        report["shapes_metrics_skipped"] = why_not
    if cfg.pickscore:
        from metrics.pickscore import load_pickscore, pick_score
        model, tokenizer = load_pickscore()
        report["pickscore"] = pick_score(model.to(cfg.device), tokenizer, pil, prompts, device=cfg.device)
    if fid is not None:
        report.update(fid_of(as_tensor(pil), fid, cfg))
    write_json(run / "report.json", report)
    write_text(run / "report.md", markdown(report))
    scores = [f"{k} {v:.4g}" for k, v in {**report, **t2i_shapes.flat(report)}.items() if v is not None and k in
              ("clip_score", "pickscore", "fid", "fd_custom_inception", "attribute_accuracy.all", "fd_shapes",
               "kind_accuracy.all")]
    print(f"[evaluate] {n} image(s) of the {pipe.kind} pipeline {cfg.model}: {', '.join(scores) or 'no score asked'}, "
          f"U-Net {report['params']:,} params, {report['macs_paper']:,} MACs -> {run}")
    return run


def scorer_setup(name: str | None, cfg: T2IEvalConfig):
    """(CLIP model on cfg.device, tokenizer) for CLIP score, or None: loaded before generation."""
    if name is None:
        return None
    from metrics.clip_score import load_clip_scorer
    model, tokenizer = load_clip_scorer(name)
    return model.to(cfg.device), tokenizer


def markdown(report: dict) -> str:
    rows = [(k, report[k]) for k in ("kind", "num_images", "image_size", "generated_size", "params", "macs_paper",
                                     "macs_full", "clip_model", "clip_score", "clip_mean_cosine", "pickscore", "fid",
                                     "fd_custom_inception", "seconds_per_image") if k in report]
    rows += list(t2i_shapes.flat(report).items())
    cfg = json.dumps(report["config"])
    return ("# Text-to-image evaluation\n\n| metric | value |\n|---|---|\n"
            + "".join(f"| {k} | {v:.6g} |\n" if isinstance(v, float) else f"| {k} | {v} |\n" for k, v in rows)
            + f"\nconfig: `{cfg}`\n")


# ----------------------------------------------------------------------------------------------- command line
FLAGS = ("--prompts", "--class-labels")


def wants(argv: list[str]) -> bool:
    """Whether an evaluate.py command line is a text-to-image / class-conditional evaluation."""
    return any(a in FLAGS or a.startswith(tuple(f + "=" for f in FLAGS)) for a in argv)


def routes_here(argv: list[str]) -> bool:
    """Whether evaluate.py hands its command line here: --prompts / --class-labels, or --model (which names a latent
    pipeline). A --model without those flags that does not exist, or is a DDPM checkpoint (the DDPM path takes
    its models positionally), is a one-line error here, before either parser reads the rest."""
    model = next((a.split("=", 1)[1] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else "")
                  for i, a in enumerate(argv) if a == "--model" or a.startswith("--model=")), None)
    if model and not wants(argv):
        from models.pipelines import KNOWN_PIPELINES, is_latent_source
        if not Path(model).exists() and model not in KNOWN_PIPELINES:
            raise UserError(f"--model {model}: no such file or folder, nor a known pipeline name "
                            f"({', '.join(sorted(KNOWN_PIPELINES))})")
        if not is_latent_source(model):
            raise UserError(f"--model {model}: --model names a latent pipeline (with --prompts or --class-labels); "
                            f"a DDPM checkpoint is given positionally: `python evaluate.py {model}`")
    return wants(argv) or model is not None


def build_parser() -> argparse.ArgumentParser:
    from diffusion.schedulers import SCHEDULERS
    d = T2IEvalConfig(model="")
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="pipeline folder, hub name, or single file (with --config)")
    p.add_argument("--prompts", default=None, help="captions file, one per line")
    p.add_argument("--class-labels", type=parse_class_labels, default=None, help="'0,1,2', or a count N (0..N-1)")
    p.add_argument("--num-images-per-prompt", type=cli.positive_int, default=1)
    p.add_argument("--guidance", type=cli.finite_float, default=None,
                   help="guidance scale >= 1 [default: 7.5 with a text encoder, else 1]")
    p.add_argument("--steps", type=cli.positive_int, default=d.steps, help=f"sampling steps [default: {d.steps}]")
    p.add_argument("--scheduler", choices=tuple(SCHEDULERS), default=None, help="[default: the pipeline's own]")
    p.add_argument("--resolution", type=cli.positive_int, default=None, help="generated size [default: the pipeline's]")
    p.add_argument("--eval-size", type=cli.positive_int, default=None, help="size the metrics see (bicubic resize)")
    p.add_argument("--clip", default=None, help="CLIP score model: short name (ViT-g/14, shapes), hub name or "
                   "folder [default: shapes with the shapes metrics, else none]")
    p.add_argument("--shapes-metrics", choices=t2i_shapes.MODES, default=d.shapes_metrics,
                   help="attribute accuracy + FD-shapes of shapes captions: auto = on when every prompt parses "
                        f"(data/captions.py) [default: {d.shapes_metrics}]")
    p.add_argument("--pickscore", action="store_true", help="also PickScore (yuvalkirstain/PickScore_v1)")
    p.add_argument("--fid-reference", default=None, help="FID reference: an image folder or a statistics .npz")
    p.add_argument("--inception-weights", default=None, help="FID Inception weights [default: cache, else download]")
    p.add_argument("--config", default=None, help="for a single file: its pipeline folder, hub name or layout")
    p.add_argument("--unet", default=None, help="a replacement (e.g. pruned) U-Net: component folder or checkpoint")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=d.dtype)
    p.add_argument("--batch-size", type=cli.positive_int, default=d.batch_size)
    cli.add_run_flags(p, out=d.out, seed_help="seed of the initial noise (image i uses index i)")
    return p


def parse_args(argv: list[str]) -> T2IEvalConfig:
    args = vars(build_parser().parse_args([a for a in argv if a != "models"]))
    args.pop("debug")
    return T2IEvalConfig(**args)
