"""The embedded text-to-image teacher's training curve: prompt following and FD-shapes against training steps.

    python -m benchmarks.t2i_teacher_curve --run runs/train/00001-t2i-shapes-shapes --threads 1

For every kept checkpoint of a ``train.py --model t2i-shapes --keep-every N`` run (checkpoints/step_*.pt, EMA
weights) the pipeline is rebuilt with the run's frozen parts and samples one image per held-out prompt
(data/prompts/shapes_heldout.txt, 128 captions of test images never trained on) at guidance ``--guidance``, 25
DPM-Solver++(2M) steps, noise of sample i fixed by ``--seed``. Measured (metrics/t2i_shapes.py, docs/METRICS.md):
attribute accuracy (``all`` = count, kinds and colours right together; the reader's ceiling on the real images
of these prompts is 0.859), CLIP-shapes score (the tiny CLIP, both conventions) and FD-shapes against the 128 real
images the prompts describe. Results per step are kept in RUN/teacher_curve.json, so a rerun measures only new
checkpoints; the table, the plot and the record go to --out (.json, .md, .png; never over a record of
another run or setting).

A run that continues an earlier one (``train.py --model checkpoints/t2i_shapes``: the earlier run's release
fine-tuned with fresh Adam moments) is measured with ``--previous`` naming the earlier run's curve record: its
rows come first, this run's steps count on from its last step, and the record keeps the earlier one whole.

    python -m benchmarks.t2i_teacher_curve --run runs/train/00001-t2i_shapes-shapes --previous benchmarks/results/t2i_teacher_curve.json --threads 2
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from common import cli
from common.resumable import machine
from common.runs import write_text

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
HELDOUT = REPO / "data" / "prompts" / "shapes_heldout.txt"
# Real images of the 128 held-out prompts (benchmarks/t2i_quality.py, docs/METRICS.md): the reader's attribute
# accuracy "all", their CLIP-shapes score, and the FD-shapes floor of two disjoint real sets of 128.
REAL_ACCURACY, REAL_CLIP_SHAPES, REAL_FD_FLOOR = 0.859, 92.3, 11.6


def row_key(step: str, guidance: float, count: int, seed: int) -> str:
    """A measured row's key in RUN/teacher_curve.json: the checkpoint and every setting that changes the numbers."""
    return f"{step}@{guidance:g}x{count}s{seed}"


def read_store(store: Path) -> dict[str, dict]:
    """RUN/teacher_curve.json's rows by ``row_key``. Rows written when the key held only the step and guidance
    ("step_0001000@5") carry their prompt count in attribute_accuracy's n; their seed was 0 (every curve record
    written then says seed 0)."""
    done = json.loads(store.read_text()) if store.is_file() else {}
    return {k if "x" in k else row_key(k.split("@")[0], r["guidance"], r["attribute_accuracy"]["n"], 0): r
            for k, r in done.items()}


def default_out(stem: str, settings: tuple[tuple[str, float, float], ...]) -> str:
    """benchmarks/results/STEM.json, tagged _<letter><value> for each (letter, value, default) off its default:
    a curve at other settings never lands on the default one's file."""
    tag = "".join(f"_{letter}{value:g}" for letter, value, default in settings if value != default)
    return str(RESULTS / f"{stem}{tag}.json")


def refuse_other_record(out: Path, mine: dict, carried: str | None = None) -> None:
    """--out holding the curve of another run or other settings is refused in one line, never replaced; unless
    it is the --previous record (``carried``), which the new record holds whole."""
    if not out.is_file() or (carried is not None and Path(carried).resolve() == out.resolve()):
        return
    old = json.loads(out.read_text())
    differ = {k: old.get(k) for k, v in mine.items() if old.get(k) != v}
    if differ:
        raise cli.UserError(f"--out {out} holds a curve with other settings ({differ}); give another --out")


def check_guidance(p: argparse.ArgumentParser, guidance: float) -> None:
    from diffusion.guidance import check_guidance_scale
    try:
        check_guidance_scale(guidance)
    except ValueError as e:
        p.error(f"--guidance {guidance:g}: {e}")


def measure(pipe, prompts: list[str], metrics, clip, *, guidance: float, seed: int, batch_size: int) -> dict:
    from metrics.clip_score import clip_score
    from models.pipelines.text_to_image import Request, generate

    request = Request(guidance_scale=guidance, steps=25, scheduler="dpmpp_2m", seed=seed, batch_size=batch_size)
    t0 = time.time()
    images = generate(pipe, request, indices=range(len(prompts)), prompts=prompts)
    seconds = time.time() - t0
    images = (images * 255).round() / 255  # the 8-bit values a PNG would hold, as evaluate.py measures them
    out = metrics.measure(images, prompts)
    cs = clip_score(clip[0], clip[1], images, prompts)
    return {"attribute_accuracy": out["attribute_accuracy"], "fd_shapes": out.get("fd_shapes"),
            "clip_shapes_score": cs.score, "clip_shapes_mean_cosine": cs.mean_cosine,
            "seconds_per_image": seconds / len(prompts)}


def pipeline_at(run: Path, ckpt_path: Path):
    """The run's pipeline with the EMA U-Net of one checkpoint, and the checkpoint's step."""
    from models.checkpoint import read_checkpoint
    from training.latent import pipeline_from_checkpoint

    ckpt = read_checkpoint(ckpt_path)
    model = json.loads((run / "config.json").read_text())["train"]["model"]
    return pipeline_from_checkpoint(ckpt, model, str(ckpt_path)), int(ckpt["train_state"]["step"])


def step_name(path: Path) -> str:
    """step_NNNNNNN of a checkpoint (a kept one by its name, latest.pt by its train_state)."""
    if path.stem != "latest":
        return path.stem
    from models.checkpoint import read_checkpoint

    return f"step_{int(read_checkpoint(path)['train_state']['step']):07d}"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    axes[0].plot(steps, [r["attribute_accuracy"]["all"] for r in rows], "o-", label="all")
    for key in ("count", "kinds", "colours"):
        axes[0].plot(steps, [r["attribute_accuracy"][key] for r in rows], ".--", label=key)
    axes[0].axhline(REAL_ACCURACY, color="grey", lw=0.8, label="real images (all)")
    axes[0].set_title("attribute accuracy")
    axes[0].legend(fontsize=7)
    axes[1].plot(steps, [r["clip_shapes_score"] for r in rows], "o-")
    axes[1].axhline(REAL_CLIP_SHAPES, color="grey", lw=0.8)
    axes[1].set_title("CLIP-shapes score (grey: real)")
    axes[2].plot(steps, [r["fd_shapes"] for r in rows], "o-")
    axes[2].axhline(REAL_FD_FLOOR, color="grey", lw=0.8)
    axes[2].set_title("FD-shapes, 128 samples (grey: real floor)")
    for ax in axes:
        ax.set_xlabel("training step")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(args: argparse.Namespace) -> dict:
    from metrics.clip_score import load_clip_scorer
    from metrics.t2i_evaluation import read_prompts
    from metrics.t2i_shapes import ShapesMetrics

    torch.set_num_threads(args.threads)
    run = Path(args.run)
    prompts = read_prompts(str(HELDOUT))[:args.num_prompts]
    store = run / "teacher_curve.json"
    done = read_store(store)
    described = f"{HELDOUT.relative_to(REPO)} (first {len(prompts)})"
    refuse_other_record(Path(args.out), {"run": str(run), "prompts": described, "guidance": args.guidance,
                                         "seed": args.seed}, carried=args.previous)
    ckpts = sorted((run / "checkpoints").glob("step_*.pt"))
    if not ckpts:
        raise cli.UserError(f"{run}/checkpoints has no step_*.pt (train with --keep-every)")
    last = run / "checkpoints" / "latest.pt"
    if args.with_latest and last.is_file() and not (run / "checkpoints" / f"{step_name(last)}.pt").is_file():
        ckpts.append(last)  # the run's last checkpoint too, when it is not a kept one (stopped between them)
    previous, earlier, offset = None, [], 0
    if args.previous:
        previous = json.loads(Path(args.previous).read_text())
        earlier = [{"run": previous["run"], **r} for r in previous.get("earlier_rows", []) + previous["rows"]
                   if r["guidance"] == args.guidance]
        if not earlier:
            raise cli.UserError(f"{args.previous}: no rows at guidance {args.guidance:g} to continue")
        if previous["prompts"] != described or previous["seed"] != args.seed:
            raise cli.UserError(f"{args.previous}: measured on {previous['prompts']}, seed {previous['seed']}; this "
                                f"call measures the first {len(prompts)} prompts, seed {args.seed}")
        offset = max(r["step"] for r in earlier)
    metrics, clip = ShapesMetrics.build(len(prompts)), load_clip_scorer("shapes")
    t0 = time.time()
    for path in ckpts:
        key = row_key(step_name(path), args.guidance, len(prompts), args.seed)
        if key in done:
            continue
        pipe, step = pipeline_at(run, path)
        with torch.no_grad():
            done[key] = {"step": step + offset, "run_step": step, "guidance": args.guidance, "seed": args.seed,
                         **measure(pipe, prompts, metrics, clip, guidance=args.guidance, seed=args.seed,
                                   batch_size=args.batch_size)}
        write_text(store, json.dumps(done, indent=1))
        r = done[key]
        print(f"[t2i_teacher_curve] step {step}: attribute accuracy all {r['attribute_accuracy']['all']:.3f}, "
              f"CLIP-shapes {r['clip_shapes_score']:.1f}, FD-shapes {r['fd_shapes']:.1f}", flush=True)
    suffix = row_key("", args.guidance, len(prompts), args.seed)
    mine = sorted((dict(r, run=str(run)) for k, r in done.items() if k.endswith(suffix)), key=lambda r: r["step"])
    rows = earlier + mine
    record = {"command": "python -m benchmarks.t2i_teacher_curve " + " ".join(args.argv), "run": str(run),
              "step_offset": offset, "previous": previous, "earlier_rows": earlier, "rows": mine,
              "prompts": described, "guidance": args.guidance,
              "sampler": "dpmpp_2m, 25 steps", "seed": args.seed,
              "wall_seconds_this_call": round(time.time() - t0, 1), "machine": machine(),
              "train_config": json.loads((run / "config.json").read_text())["train"]}
    out = Path(args.out)
    write_text(out, json.dumps(record, indent=1))
    lines = ["# The embedded text-to-image teacher's curve\n", f"`{record['command']}`; {record['prompts']}, guidance "
             f"{args.guidance:g}, {record['sampler']}, one sample per prompt.\n",
             "| step | run | attr. all | count | kinds | colours | background | pairs | CLIP-shapes | FD-shapes | s/image |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    if offset:
        lines.insert(2, f"Steps count from the start of the first run; this run ({run}) continues the release of "
                        f"{previous['run']} at step {offset} (fresh Adam moments).\n")
    for r in rows:
        a = r["attribute_accuracy"]
        lines.append(f"| {r['step']} | {Path(r['run']).name} | {a['all']:.3f} | {a['count']:.3f} | {a['kinds']:.3f} | {a['colours']:.3f} | "
                     f"{a['background']:.3f} | {a['pairs']:.3f} | {r['clip_shapes_score']:.1f} | {r['fd_shapes']:.1f} | "
                     f"{r['seconds_per_image']:.2f} |")
    lines.append(f"\nReal images of the same prompts: attribute accuracy all {REAL_ACCURACY}, CLIP-shapes "
                 f"{REAL_CLIP_SHAPES}, FD-shapes floor {REAL_FD_FLOOR} (two disjoint real sets of 128; "
                 "benchmarks/t2i_quality.py, docs/METRICS.md).")
    write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    plot(rows, out.with_suffix(".png"))
    return record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    import sys

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="a train.py run folder of a latent text-to-image model")
    p.add_argument("--guidance", type=cli.finite_float, default=5.0, help="[5]")
    p.add_argument("--num-prompts", type=cli.positive_int, default=128, help="[128]")
    p.add_argument("--seed", type=cli.nonnegative_int, default=0, help="[0]")
    p.add_argument("--batch-size", type=cli.positive_int, default=32, help="[32]")
    p.add_argument("--threads", type=cli.positive_int, default=1, help="[1]")
    p.add_argument("--with-latest", action="store_true", help="also measure checkpoints/latest.pt")
    p.add_argument("--previous", default=None, help="the curve record (.json) of the run this one continues: its "
                   "rows first, this run's steps offset by its last step")
    p.add_argument("--out", default=None, help="the record (.json; .md and .png beside it) [benchmarks/results/"
                   "t2i_teacher_curve.json, tagged _g<guidance>, _n<prompts>, _s<seed> off the defaults]")
    args = p.parse_args(argv)
    check_guidance(p, args.guidance)
    if args.out is None:
        args.out = default_out("t2i_teacher_curve", (("g", args.guidance, 5.0), ("n", args.num_prompts, 128),
                                                     ("s", args.seed, 0)))
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


if __name__ == "__main__":
    main(parse_args())
