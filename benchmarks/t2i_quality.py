"""Quality bars of a text-to-image pipeline of the embedded shapes world: attribute accuracy across guidance
scales, CLIP-shapes score against real images, FD-shapes against the real-data floor, seconds per image, a grid.

    OMP_NUM_THREADS=1 python -m benchmarks.t2i_quality --model checkpoints/t2i_shapes     # the shipped teacher
    OMP_NUM_THREADS=1 python -m benchmarks.t2i_quality --model PIPE --num-prompts 16 --guidance-scales 1 3 \\
        --out runs/t2i_quality_quick.json                                                   # a quick look

For the first N = --num-prompts captions of --prompts (default data/prompts/shapes_heldout.txt: the captions of
shapes test images [0, 128), seed 0, never trained on), one sample per prompt:

  per guidance scale (--guidance-scales, default 1 2 3 5 7; sample i starts from noise index i of --seed at
  every scale, so the scales differ only in guidance), --steps 25 DPM-Solver++(2M) steps (``dpmpp_2m``):
  attribute accuracy (metrics/attributes.py, per attribute and ``all`` = count, kinds and colours together),
  CLIP-shapes score (metrics/clip_score.py, both conventions, tiny CLIP), FD-shapes and KID-shapes against real
  test images [0, N) (metrics/fd_shapes.py), seconds per image (the whole generation: text encoding, guided
  sampling, decode; torch threads and load average recorded); the best scale is the one with the highest
  attribute accuracy ``all`` (ties: the smaller scale);
  real images: test images [0, N) with their own captions (the prompts themselves with the shipped file): the
  attribute-accuracy ceiling of the reader, the CLIP-shapes score the samples' is divided by (``ratio``), and
  the FD-shapes floor: test [0, N) against test [FLOOR_START, FLOOR_START + N), two disjoint real sets of the
  same count (FD's plug-in estimate grows as N shrinks, so only the floor at the same N compares);
  CLIP-shapes word sensitivity: on those real images, the fraction where the own caption scores above the same
  caption with one colour / kind / count / background word changed (what CLIP-shapes can see at all);
  a PNG grid: prompt --grid-prompt, --grid-images samples per scale, one row per scale (top: the smallest).

Every sample is quantised to 8 bits as evaluate.py's PNGs are (metrics/t2i_evaluation.py), and read at 32 x 32.
Writes --out (benchmarks/results/t2i_quality.json), the .md and the _grid.png next to it, with the command,
wall time and machine (common/resumable.py ``machine``).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from benchmarks.timing import loadavg
from common import cli
from common.images import save_grid
from common.resumable import machine
from common.runs import write_text
from data.prompts.shapes_heldout import FILE as HELDOUT_PROMPTS
from metrics.attributes import ATTRIBUTES
from metrics.clip_score import clip_score, load_clip_scorer
from metrics.t2i_evaluation import as_tensor, read_prompts, resize
from metrics.t2i_shapes import (SHAPES_CLIP, ShapesMetrics, first_unparsed, real_images_and_captions,
                                word_sensitivity)

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
FLOOR_START = 10_000  # the second real set: test images [10000, 10000 + N), disjoint from [0, N) for N <= 10000


def check_inputs(args: argparse.Namespace) -> list[str]:
    """Every check that needs no weight; returns the prompts used."""
    from models.pipelines.text_to_image import check_request, folder_info
    if not (Path(args.model) / "model_index.json").is_file():
        raise cli.UserError(f"--model {args.model}: not a pipeline folder (no model_index.json)")
    prompts = read_prompts(args.prompts)
    if args.num_prompts is not None:
        if args.num_prompts > len(prompts):
            raise cli.UserError(f"--num-prompts {args.num_prompts}: {args.prompts} holds {len(prompts)} prompts")
        prompts = prompts[:args.num_prompts]
    if len(prompts) < 2:
        raise cli.UserError("FD-shapes needs at least 2 prompts (--num-prompts)")
    why = first_unparsed(prompts)
    if why is not None:
        raise cli.UserError(f"--prompts {args.prompts}: {why}")
    if not 0 <= args.grid_prompt < len(prompts):
        raise cli.UserError(f"--grid-prompt {args.grid_prompt}: out of range for {len(prompts)} prompts")
    info = folder_info(args.model)
    try:
        for g in args.guidance_scales:
            check_request(info, request(args, g))
    except ValueError as e:
        raise cli.UserError(str(e)) from None
    if not info.has_text:
        raise cli.UserError(f"--model {args.model}: a pipeline without a text encoder")
    cli.check_writable_dir(Path(args.out).parent, "--out")
    return prompts


def request(args: argparse.Namespace, guidance: float):
    from models.pipelines.text_to_image import Request
    return Request(guidance_scale=guidance, steps=args.steps, scheduler=args.scheduler, seed=args.seed,
                   batch_size=args.batch_size)


def main(args: argparse.Namespace) -> dict:
    from models.pipelines import load_latent
    from models.pipelines.text_to_image import generate
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    prompts = check_inputs(args)
    n = len(prompts)
    shapes = ShapesMetrics.build(n)  # reader, ShapesNet and FD-shapes' real side [0, N), before any sampling
    clip = load_clip_scorer(SHAPES_CLIP)
    real, real_captions = real_images_and_captions(n)
    floor_images, _ = real_images_and_captions(n, start=FLOOR_START)
    real_clip = clip_score(*clip, real, real_captions)
    real_row = {"attribute_accuracy": shapes.measure(real, real_captions)["attribute_accuracy"],
                "clip_score": real_clip.score, "clip_mean_cosine": real_clip.mean_cosine}
    floor = shapes.fd_reference.measure(floor_images)
    pipe = load_latent(args.model)
    scales = []
    for g in args.guidance_scales:
        load_before, t0 = loadavg(), time.perf_counter()
        images = generate(pipe, request(args, g), range(n), prompts=prompts, progress=True)
        seconds = (time.perf_counter() - t0) / n
        x = as_tensor(resize(images, None))  # 8-bit, as evaluate.py's PNGs
        m = shapes.measure(x, prompts)
        s = clip_score(*clip, x, prompts)
        scales.append({"guidance": g, "attribute_accuracy": m["attribute_accuracy"], "clip_score": s.score,
                       "clip_mean_cosine": s.mean_cosine, "clip_score_ratio": s.score / real_clip.score,
                       "clip_mean_cosine_ratio": s.mean_cosine / real_clip.mean_cosine, "fd_shapes": m["fd_shapes"],
                       "kid_shapes": m["kid_shapes"], "seconds_per_image": seconds,
                       "load_average_before": load_before, "load_average_after": loadavg()})
        print(f"[t2i_quality] guidance {g:g}: all {m['attribute_accuracy']['all']:.3f}, clip cos "
              f"{s.mean_cosine:.3f}, FD-shapes {m['fd_shapes']:.2f}, {seconds:.3f} s/image", flush=True)
    best = max(scales, key=lambda r: (r["attribute_accuracy"]["all"], -r["guidance"]))
    out = Path(args.out)
    grid = out.with_name(out.stem + "_grid.png")
    k = args.grid_images
    rows = [generate(pipe, request(args, g), range(k), prompts=[prompts[args.grid_prompt]] * k) for g in args.guidance_scales]
    save_grid(torch.cat(rows) * 2 - 1, grid, nrow=k, scale=4)
    import os

    env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    record = {"command": env + "python -m benchmarks.t2i_quality " + shlex.join(args.argv),
              "model": args.model, "prompts": args.prompts, "num_prompts": n,
              "prompts_describe_the_real_images": prompts == real_captions,
              "sampling": {"scheduler": args.scheduler, "steps": args.steps, "seed": args.seed,
                           "batch_size": args.batch_size, "image_size": list(images.shape[-2:])},
              "scales": scales, "best_guidance": best["guidance"],
              "real": {**real_row, "images": f"shapes test split (seed 0) [0, {n})"},
              "fd_shapes_floor": {"fd_shapes": floor["fd_shapes"], "kid_shapes": floor["kid_shapes"],
                                  "sets": f"shapes test split (seed 0) [0, {n}) vs [{FLOOR_START}, {FLOOR_START + n})"},
              "clip_shapes_word_sensitivity": word_sensitivity(*clip, n),
              "grid": {"file": grid.name, "prompt": prompts[args.grid_prompt], "rows": list(args.guidance_scales),
                       "images_per_row": k},
              "readers": {"attribute_reader_sha256": shapes.reader.weights_sha256,
                          "shapes_net_sha256": shapes.fd_reference.net.weights_sha256, "clip": SHAPES_CLIP},
              "wall_seconds": round(time.perf_counter() - start, 1), "machine": machine()}
    write_text(out, json.dumps(record, indent=2) + "\n")
    write_text(out.with_suffix(".md"), markdown(record))
    print(markdown(record))
    return record


def markdown(r: dict) -> str:
    acc = lambda a: " | ".join(f"{a[k]:.3f}" for k in ATTRIBUTES)  # noqa: E731
    m, s = r["machine"], r["sampling"]
    lines = ["# Text-to-image quality (embedded shapes world)\n",
             f"`{r['command']}`: {r['wall_seconds']:.0f} s wall on {m['processor']} ({m['cpu_count']} cores, torch "
             f"threads {m['torch_threads']}, load average {m['load_average_1m']}, torch {m['torch']}). Model "
             f"{r['model']}; {r['num_prompts']} prompts of {r['prompts']}, one sample each, {s['steps']} "
             f"{s['scheduler']} steps, seed {s['seed']}, {s['image_size'][0]} x {s['image_size'][1]} px. Best "
             f"guidance (attribute accuracy `all`): **{r['best_guidance']:g}**.\n",
             "| guidance | " + " | ".join(ATTRIBUTES) + " | CLIP-shapes score | mean cos | cos ratio to real | "
             "FD-shapes | KID-shapes | s / image | load before, after |", "|---" * (len(ATTRIBUTES) + 8) + "|"]
    for row in r["scales"]:
        lines.append(f"| {row['guidance']:g} | {acc(row['attribute_accuracy'])} | {row['clip_score']:.2f} | "
                     f"{row['clip_mean_cosine']:.3f} | {row['clip_mean_cosine_ratio']:.3f} | {row['fd_shapes']:.2f} | "
                     f"{row['kid_shapes']:.3f} | {row['seconds_per_image']:.3f} | {row['load_average_before']}; "
                     f"{row['load_average_after']} |")
    real, floor = r["real"], r["fd_shapes_floor"]
    lines.append(f"| real images | {acc(real['attribute_accuracy'])} | {real['clip_score']:.2f} | "
                 f"{real['clip_mean_cosine']:.3f} | 1 | {floor['fd_shapes']:.2f} (floor) | {floor['kid_shapes']:.3f} | | |")
    sens = ", ".join(f"{w} {v['own_higher']:.2f} ({v['images']} images)"
                     for w, v in r["clip_shapes_word_sensitivity"].items())
    lines += ["", f"Real images: {real['images']} with their own captions (the prompts: "
              f"{r['prompts_describe_the_real_images']}); FD-shapes floor: {floor['sets']}. CLIP-shapes word "
              f"sensitivity (own caption above the caption with one word changed; 0.5 = blind to it): {sens}.", "",
              f"![grid]({r['grid']['file']}) Grid: \"{r['grid']['prompt']}\", {r['grid']['images_per_row']} samples "
              f"per row, rows = guidance {', '.join(f'{g:g}' for g in r['grid']['rows'])} (top to bottom)."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from diffusion.schedulers import SCHEDULERS
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(REPO / "checkpoints" / "t2i_shapes"), help="pipeline folder")
    p.add_argument("--prompts", default=str(HELDOUT_PROMPTS), help="shapes captions, one per line [held-out file]")
    p.add_argument("--num-prompts", type=cli.positive_int, default=None, help="the first N prompts [all]")
    p.add_argument("--guidance-scales", type=cli.finite_float, nargs="+", default=[1.0, 2.0, 3.0, 5.0, 7.0])
    p.add_argument("--steps", type=cli.positive_int, default=25, help="[25]")
    p.add_argument("--scheduler", choices=tuple(SCHEDULERS), default="dpmpp_2m", help="[dpmpp_2m]")
    p.add_argument("--batch-size", type=cli.positive_int, default=16, help="[16]")
    p.add_argument("--seed", type=cli.nonnegative_int, default=0, help="[0]")
    p.add_argument("--grid-prompt", type=cli.nonnegative_int, default=0, help="prompt index of the grid [0]")
    p.add_argument("--grid-images", type=cli.positive_int, default=6, help="samples per grid row [6]")
    p.add_argument("--threads", type=cli.positive_int, default=1, help="torch threads [1]")
    p.add_argument("--out", default=str(RESULTS / "t2i_quality.json"), help="result .json (.md, _grid.png beside)")
    a = p.parse_args(argv)
    a.argv = argv
    return a


if __name__ == "__main__":
    sys.exit(cli.run(main, parse_args))
