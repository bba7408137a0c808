"""The class-conditional shapes model's training curve: kind accuracy and FD-shapes against training steps.

    python -m benchmarks.class_teacher_curve --run runs/train/00001-class_init-shapes --threads 1

For every kept checkpoint of a ``train.py`` run of a class-conditional shapes pipeline (``--model class-shapes``,
or the class-token start of ``benchmarks/make_t2i_pipeline.py --class-token``; checkpoints/step_*.pt, EMA
weights) the pipeline is rebuilt with the run's frozen parts and samples ``--per-class`` images of each shape kind
(labels 0..3, data/procedural.py SHAPES) at guidance ``--guidance`` with 25 DPM-Solver++(2M) steps, noise of
sample i fixed by ``--seed``. Measured by metrics/class_shapes.py: kind accuracy (the attribute reader reads
exactly the asked kind; its ceiling, the real single-kind test images of the same labels read the same way, is
measured in every run and recorded) overall and per kind, and FD-shapes against those real images. Results per step are kept in
RUN/class_curve.json, so a rerun measures only new checkpoints; the table and the record go to ``--out``
(.json and .md).
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

KINDS = 4  # data/procedural.py SHAPES


def measure(pipe, labels: list[int], metrics, *, guidance: float, seed: int, batch_size: int) -> dict:
    from models.pipelines.text_to_image import Request, generate

    request = Request(guidance_scale=guidance, steps=25, scheduler="dpmpp_2m", seed=seed, batch_size=batch_size)
    t0 = time.time()
    images = generate(pipe, request, indices=range(len(labels)), class_labels=labels)
    seconds = time.time() - t0
    images = (images * 255).round() / 255  # the 8-bit values a PNG would hold, as evaluate.py measures them
    out = metrics.measure(images)
    return {"kind_accuracy": out["kind_accuracy"], "fd_shapes": out["fd_shapes"],
            "seconds_per_image": seconds / len(labels)}


def main(args: argparse.Namespace) -> dict:
    from benchmarks.t2i_teacher_curve import pipeline_at, refuse_other_record, step_name
    from metrics.class_shapes import ClassShapesMetrics, matched_real_images

    torch.set_num_threads(args.threads)
    run = Path(args.run)
    refuse_other_record(Path(args.out), {"run": str(run), "guidance": args.guidance, "seed": args.seed,
                                         "labels": f"0..{KINDS - 1}, {args.per_class} samples each"})
    labels = [y for y in range(KINDS) for _ in range(args.per_class)]
    ckpts = sorted((run / "checkpoints").glob("step_*.pt"))
    if not ckpts:
        raise cli.UserError(f"{run}/checkpoints has no step_*.pt (train with --keep-every)")
    store = run / "class_curve.json"
    done = json.loads(store.read_text()) if store.is_file() else {}
    metrics = ClassShapesMetrics.build(labels)
    t0 = time.time()
    # the reader's ceiling at these labels: the matched real test images read under their own labels
    ceiling = metrics.measure(matched_real_images(labels)[0])["kind_accuracy"]["all"]
    for path in ckpts:
        key = f"{step_name(path)}@{args.guidance:g}x{args.per_class}s{args.seed}"
        if key in done:
            continue
        pipe, step = pipeline_at(run, path)
        if pipe.has_text or pipe.num_classes < KINDS:
            raise cli.UserError(f"{run}: not a class-conditional shapes run ({pipe.num_classes} classes)")
        if args.guidance > 1 and not pipe.has_unconditional:
            raise cli.UserError(f"--guidance {args.guidance:g}: {run}'s U-Net has no 'no class' input; use 1")
        with torch.no_grad():
            done[key] = {"step": step, "guidance": args.guidance, "per_class": args.per_class,
                         **measure(pipe, labels, metrics, guidance=args.guidance, seed=args.seed,
                                   batch_size=args.batch_size)}
        write_text(store, json.dumps(done, indent=1))
        r = done[key]
        print(f"[class_teacher_curve] step {step}: kind accuracy {r['kind_accuracy']['all']:.3f}, "
              f"FD-shapes {r['fd_shapes']:.1f}", flush=True)
    rows = sorted((r for k, r in done.items() if k.endswith(f"@{args.guidance:g}x{args.per_class}s{args.seed}")),
                  key=lambda r: r["step"])
    record = {"command": "python -m benchmarks.class_teacher_curve " + " ".join(args.argv), "run": str(run),
              "rows": rows, "labels": f"0..{KINDS - 1}, {args.per_class} samples each", "guidance": args.guidance,
              "sampler": "dpmpp_2m, 25 steps", "seed": args.seed, "fd_reference": metrics.fd_reference.description,
              "real_kind_accuracy": ceiling,
              "wall_seconds_this_call": round(time.time() - t0, 1), "machine": machine(),
              "train_config": json.loads((run / "config.json").read_text())["train"]}
    out = Path(args.out)
    write_text(out, json.dumps(record, indent=1))
    names = list(rows[0]["kind_accuracy"]["per_class"]) if rows else []
    lines = ["# The class-conditional shapes model's curve\n",
             f"`{record['command']}`; labels {record['labels']}, guidance {args.guidance:g}, {record['sampler']}.\n",
             "| step | kind accuracy | " + " | ".join(names) + " | FD-shapes | s/image |",
             "|---|---|" + "---|" * len(names) + "---|---|"]
    for r in rows:
        k = r["kind_accuracy"]
        lines.append(f"| {r['step']} | {k['all']:.3f} | " + " | ".join(f"{k['per_class'][n]:.3f}" for n in names)
                     + f" | {r['fd_shapes']:.1f} | {r['seconds_per_image']:.2f} |")
    lines.append(f"\nA model that ignores the label and draws single-kind images scores 0.25. The real single-kind "
                 f"test images of the same labels, read under them: {ceiling:.3f} (the reader's ceiling, measured "
                 f"in this run). FD-shapes reference: {record['fd_reference']}.")
    write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    return record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    import sys

    from benchmarks.t2i_teacher_curve import check_guidance, default_out

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="a train.py run folder of a class-conditional shapes model")
    p.add_argument("--guidance", type=cli.finite_float, default=3.0, help="[3]")
    p.add_argument("--per-class", type=cli.positive_int, default=32, help="samples per kind [32]")
    p.add_argument("--seed", type=cli.nonnegative_int, default=0, help="[0]")
    p.add_argument("--batch-size", type=cli.positive_int, default=32, help="[32]")
    p.add_argument("--threads", type=cli.positive_int, default=1, help="[1]")
    p.add_argument("--out", default=None, help="the record (.json; the table beside it as .md) [benchmarks/results/"
                   "class_teacher_curve.json, with _g<guidance>, _n<per-class>, _s<seed> for non-default settings]")
    args = p.parse_args(argv)
    check_guidance(p, args.guidance)
    if args.out is None:  # one file per setting: a guidance-1 curve never replaces the guidance-3 one
        args.out = default_out("class_teacher_curve", (("g", args.guidance, 3.0), ("n", args.per_class, 32),
                                                       ("s", args.seed, 0)))
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args
