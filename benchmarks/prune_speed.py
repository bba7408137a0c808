"""Benchmark: trace + group + surgery time of pruning the CIFAR-10 DDPM U-Net (35.7M params) at ratio 0.3.

    python -m benchmarks.prune_speed [--repeats 5] [--threads 2]

Times the structural part of pruning only (``pruning.prune`` with random importance, so no gradient pass):
building the coupling groups from one traced forward pass, selecting and physically slicing every group in
the paper's order, the attribute bookkeeping, and the re-trace that checks every width of the pruned network.
Target: under 0.5 s on 2 CPU cores in all (the best-known general tool takes about 0.9 s there). Prints the
figures and writes them to benchmarks/results/prune_speed.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from models.ddpm.config import PRESETS
from models.ddpm.unet import UNet
from pruning import prune

RESULTS = Path(__file__).resolve().parent / "results"


def one_run(seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    model = UNet(PRESETS["cifar10"]).eval()
    example = model.example_inputs()
    t0 = time.perf_counter()
    _, report = prune(model, example, method="random", ratio=0.3, seed=seed, progress=False)
    total = time.perf_counter() - t0
    sec = report.seconds
    return {"trace_and_group_s": sec["trace_and_group"], "select_and_surgery_s": sec["select_and_surgery"],
            "retrace_check_s": sec["retrace_check"], "total_s": total, "params_after": report.params_after}


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    one_run(0)  # warm-up: first-call costs (allocator, kernels) are not what the benchmark is about
    runs = [one_run(i + 1) for i in range(args.repeats)]
    summary = {key: {"median": statistics.median(r[key] for r in runs), "min": min(r[key] for r in runs)}
               for key in ("trace_and_group_s", "select_and_surgery_s", "retrace_check_s", "total_s")}
    result = {"benchmark": "prune_speed", "model": "cifar10 preset (35,746,307 params)", "ratio": 0.3,
              "repeats": args.repeats, "threads": args.threads, "params_after": runs[0]["params_after"],
              "seconds": summary, "target_total_s": 0.5, "meets_target": summary["total_s"]["median"] < 0.5,
              "torch": str(torch.__version__), "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
              "command": f"python -m benchmarks.prune_speed --repeats {args.repeats} --threads {args.threads}"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "prune_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    for key, s in summary.items():
        print(f"{key:<22} median {s['median']:.3f} s   min {s['min']:.3f} s")
    print(f"params after pruning: {runs[0]['params_after']:,}; target total < 0.5 s: "
          f"{'met' if result['meets_target'] else 'NOT met'}")
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    main(p.parse_args())
