"""Benchmark: #params and MACs of the published DDPM U-Nets before and after pruning at the paper's ratio.

    python -m benchmarks.paper_sizes [--ratio 0.3] [--presets cifar10 celeba64 church256]

Widths do not depend on the importance criterion (the paper's local rule fixes how many channels each
group loses), so random importance on the untrained presets gives exactly the architectures of the
paper's pruned models. Reference: Table 1 (CIFAR-10 35.7M -> 19.8M, 6.1G -> 3.4G; CelebA-64 78.7M -> 43.7M,
23.9G -> 13.3G) and the author's log (35.7463M -> 19.8512M, 6.0655G -> 3.3928G); for LSUN the paper's
46.5M / 100.7G is not reproduced by any uniform ratio of the published code (VainF/Diff-Pruning, ddpm_exp with
the DDIM LSUN configs and its vendored Torch-Pruning: ratio 0.3 gives 63.2M / 138.9G).
Writes benchmarks/results/paper_sizes.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from metrics.macs import count_macs, format_count
from models.ddpm.config import PRESETS
from models.ddpm.unet import UNet
from pruning import prune

RESULTS = Path(__file__).resolve().parent / "results"
PAPER = {"cifar10": ("35.7M -> 19.8M", "6.1G -> 3.4G"), "celeba64": ("78.7M -> 43.7M", "23.9G -> 13.3G"),
         "church256": ("113.7M -> 46.5M", "248.7G -> 100.7G")}


def main(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.presets:
        config = PRESETS[name]
        torch.manual_seed(0)
        model = UNet(config).eval()
        example = model.example_inputs()
        before = count_macs(model, example)
        start = time.perf_counter()
        model, _ = prune(model, example, method="random", ratio=args.ratio, progress=False)
        seconds = time.perf_counter() - start
        after = count_macs(model, example)
        row = {"preset": name, "ratio": args.ratio, "params_before": before.params, "params_after": after.params,
               "macs_paper_before": before.macs_paper, "macs_paper_after": after.macs_paper,
               "macs_full_before": before.macs_full, "macs_full_after": after.macs_full,
               "paper": PAPER.get(name), "prune_seconds": seconds}
        rows.append(row)
        print(f"{name:<10} params {format_count(before.params, 4)} -> {format_count(after.params, 4)}   "
              f"MACs {format_count(before.macs_paper, 4)} -> {format_count(after.macs_paper, 4)}   "
              f"(paper: {' / '.join(PAPER.get(name, ('-', '-')))})")
    RESULTS.mkdir(exist_ok=True)
    out = {"benchmark": "paper_sizes", "rows": rows, "torch": str(torch.__version__),
           "command": f"python -m benchmarks.paper_sizes --ratio {args.ratio} --presets {' '.join(args.presets)}"}
    (RESULTS / "paper_sizes.json").write_text(json.dumps(out, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--presets", nargs="+", default=["cifar10", "celeba64", "church256"])
    p.add_argument("--threads", type=int, default=1)
    main(p.parse_args())
