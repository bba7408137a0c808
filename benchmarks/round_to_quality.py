"""Benchmark: what ``--round-to N`` costs in quality, on the shipped tiny teacher right after pruning.

    python -m benchmarks.round_to_quality [--ratios 0.3 0.5] [--round-to 8] [--methods magnitude diff-pruning]

For each method and ratio, the teacher is pruned with the paper's widths and with every width rounded to a
multiple of N (``pruning/select.py``), and each pruned model's held-out eps-MSE is measured on the same fixed
(x0, t, eps) triples (``diffusion.ddpm.HeldOutLoss``, 256 test images of the shapes data, 4 draws each, as
train.py's held-out loss). Parameters and MACs are listed beside it. Diff-Pruning uses the embedded default's
gradient batch (8 training images, thr 0.05, prune.py's data and seed). No fine-tuning: this is the damage
before repair, the quantity the methods table in README.md compares.

Writes benchmarks/results/round_to_quality[_TAG].json (never over an existing file) and prints a table.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

import models
import pruning
from common.defaults import TEACHER_CHECKPOINT
from data import build_dataset
from diffusion.ddpm import HeldOutLoss
from diffusion.schedule import Schedule
from metrics.macs import count_macs

RESULTS = Path(__file__).resolve().parent / "results"


def main(args: argparse.Namespace) -> dict:
    if _path(args).exists():  # before any work: a finished table is never overwritten
        raise SystemExit(f"{_path(args)} exists; pass another --tag")
    torch.set_num_threads(args.threads)
    teacher = models.load(str(TEACHER_CHECKPOINT)).eval()
    c = teacher.config
    schedule = Schedule()
    test = build_dataset("shapes", image_size=c.image_size, split="test")
    heldout = HeldOutLoss(torch.stack([test[i] for i in range(256)]), schedule, draws=4, seed=1234)
    train = build_dataset("shapes", image_size=c.image_size, split="train")
    g = torch.Generator().manual_seed(0)  # prune.py's gradient batch (seed 0, batch 8, flips)
    idx = torch.randperm(len(train), generator=g)[:8].tolist()
    x0 = torch.stack([train[i] for i in idx])
    x0 = torch.where((torch.rand(8, generator=g) < 0.5)[:, None, None, None], x0.flip(-1), x0)
    example = teacher.example_inputs()
    rows = [{"method": "teacher (dense)", "ratio": 0.0, "round_to": None, "heldout": heldout(teacher),
             **_size(teacher, example)}]
    for method in args.methods:
        for ratio in args.ratios:
            for n in [None] + args.round_to:
                start = time.perf_counter()
                spec = pruning.ChannelPruning.applicable(method=method, ratio=ratio, thr=0.05, micro_batch=64,
                                                         batch_size=len(x0), round_to=n)
                model, report = pruning.prune(copy.deepcopy(teacher), example, spec, x0, schedule=schedule,
                                              progress=False)
                model.eval()
                rows.append({"method": method, "ratio": ratio, "round_to": n, "heldout": heldout(model),
                             "seconds": time.perf_counter() - start, **_size(model, example)})
                _write(rows, args)  # after every row: an interrupted run keeps what it measured
                r = rows[-1]
                print(f"{method:<13} ratio {ratio:<4} round-to {str(n):<5} params {r['params'] / 1e6:.3f}M  "
                      f"MACs {r['macs_full'] / 1e6:.1f}M  held-out eps-MSE {r['heldout']:.5f}", flush=True)
    return _write(rows, args)


def _write(rows: list[dict], args: argparse.Namespace) -> dict:
    out = {"teacher": str(TEACHER_CHECKPOINT.name), "rows": rows, "torch": str(torch.__version__),
           "threads": args.threads, "command": "python -m benchmarks.round_to_quality " + " ".join(sys.argv[1:])}
    RESULTS.mkdir(exist_ok=True)
    _path(args).write_text(json.dumps(out, indent=1) + "\n")
    return out


def _path(args: argparse.Namespace) -> Path:
    return RESULTS / ("round_to_quality" + (f"_{args.tag}" if args.tag else "") + ".json")


def _size(model, example) -> dict:
    r = count_macs(model, example)
    return {"params": r.params, "macs_full": r.macs_full, "widths": model.widths()}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5])
    p.add_argument("--round-to", nargs="+", type=int, default=[8])
    p.add_argument("--methods", nargs="+", default=["magnitude", "diff-pruning"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tag", default="", help="results name suffix: round_to_quality_TAG.json")
    main(p.parse_args())
