"""Benchmark: which attention kernel the U-Net's self-attention gets on a CPU, and what the other one would cost.

    python -m benchmarks.attention_kernels [--batch-sizes 16 64] [--repeats 9] [--threads 2] [--tag quiet]

``models/ddpm/blocks.py`` hands ``F.scaled_dot_product_attention`` q, k, v as transposed views of the 1x1
convolutions' outputs, (B, heads, N, d) with the last dimension strided. PyTorch's fused CPU kernel
(``_scaled_dot_product_flash_attention_for_cpu``) wants that dimension contiguous; otherwise SDPA takes its
math path, which writes the (N, N) weights and runs ``_safe_softmax`` (``isneginf``, ``all``, ``where``).
In channels-last memory order the views are already contiguous in d, so there the fused kernel runs.

1. kernels: the SDPA op the profiler sees for views in contiguous memory, the same made contiguous, and views
   in channels-last memory (no timing).
2. the cifar10 U-Net dense and pruned at 0.3 and 0.5 (magnitude, local rule), contiguous memory order, each
   forward timed twice in turn: as the code is ("views") and with SDPA's inputs made contiguous first
   ("contiguous": one copy of q, k, v). Speed-up / MAC ratio of the pruned models in each.

Writes benchmarks/results/attention_kernels[_TAG].{json,md} (never over an existing file).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.speed import PRESETS, macs_of, pruned_models
from benchmarks.timing import cpu_model, interleaved, loadavg

RESULTS = Path(__file__).resolve().parent / "results"
_sdpa = F.scaled_dot_product_attention


def contiguous_sdpa(q, k, v, *args, **kwargs):
    return _sdpa(q.contiguous(), k.contiguous(), v.contiguous(), *args, **kwargs)


def kernel_of(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str:
    """The aten SDPA implementation the profiler records for one inference call."""
    from torch.profiler import profile

    with torch.inference_mode(), profile() as prof:
        _sdpa(q, k, v, scale=0.1)
    names = {e.key for e in prof.key_averages()}
    found = sorted(n for n in names if n.startswith("aten::_scaled_dot_product"))
    return found[0] if found else "none"


def kernels(B: int = 2, C: int = 128, side: int = 16) -> dict[str, str]:
    N = side * side
    x = torch.randn(B, C, side, side)
    views = x.reshape(B, 1, C, N).transpose(-1, -2)
    cl = x.contiguous(memory_format=torch.channels_last).reshape(B, 1, C, N).transpose(-1, -2)
    return {"views (contiguous memory)": kernel_of(views, views, views),
            "views made contiguous": kernel_of(*(views.contiguous(),) * 3),
            "views (channels-last memory)": kernel_of(cl, cl, cl)}


def timings(batch_sizes: list[int], repeats: int) -> dict:
    models, _ = pruned_models(PRESETS["cifar10"], [0.3, 0.5], [])
    macs = {k: macs_of(m)[0] for k, m in models.items()}
    out = {}
    for B in batch_sizes:
        c = models["dense"].config
        x, t = torch.randn(B, c.in_channels, c.image_size, c.image_size), torch.full((B,), 500.0)

        def run(model, patched):
            def f():
                F.scaled_dot_product_attention = contiguous_sdpa if patched else _sdpa
                try:
                    with torch.inference_mode():
                        model(x, t)
                finally:
                    F.scaled_dot_product_attention = _sdpa
            return f
        fns = {f"{k} | {mode}": run(m, mode == "contiguous") for k, m in models.items()
               for mode in ("views", "contiguous")}
        r = interleaved(fns, repeats=repeats, warmup=1)
        rows = []
        for mode in ("views", "contiguous"):
            dense = r[f"dense | {mode}"]["median_s"]
            for k in models:
                s = r[f"{k} | {mode}"]["median_s"]
                rows.append({"model": k, "mode": mode, "median_ms": 1e3 * s, "speed_up": dense / s,
                             "mac_ratio": macs["dense"] / macs[k], "over_mac": dense / s / (macs["dense"] / macs[k])})
        out[f"b{B}"] = rows
    return out


def render(r: dict) -> str:
    lines = [f"`{r['command']}` ({r['started']}; {r['machine']}, {r['threads']} threads, torch {r['torch']}; load "
             f"average before {r['load_before']}, after {r['load_after']})", "", "SDPA kernel by input layout:", "",
             "| q, k, v | kernel |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" for k, v in r["kernels"].items()]
    lines += ["", "cifar10 U-Net, contiguous memory order, median of interleaved forwards:", "",
              "| batch | model | views: ms | speed-up / MAC ratio | contiguous: ms | speed-up / MAC ratio |",
              "|---|---|---|---|---|---|"]
    for b, rows in r["timings"].items():
        for m in dict.fromkeys(x["model"] for x in rows):
            v, c = (next(x for x in rows if x["model"] == m and x["mode"] == mode) for mode in ("views", "contiguous"))
            lines.append(f"| {b} | {m} | {v['median_ms']:.1f} | {v['over_mac']:.2f} | {c['median_ms']:.1f} | "
                         f"{c['over_mac']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    name = "attention_kernels" + (f"_{args.tag}" if args.tag else "")
    if (RESULTS / f"{name}.json").exists():
        raise SystemExit(f"{RESULTS / name}.json exists; pass another --tag")
    torch.set_num_threads(args.threads)
    r = {"command": "python -m benchmarks.attention_kernels " + " ".join(sys.argv[1:] if argv is None else argv),
         "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": cpu_model(),
         "threads": args.threads, "torch": str(torch.__version__), "load_before": loadavg(),
         "kernels": kernels(), "timings": timings(args.batch_sizes, args.repeats)}
    r["load_after"] = loadavg()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(r, indent=1) + "\n")
    (RESULTS / f"{name}.md").write_text(render(r))
    print(render(r))
    return r


if __name__ == "__main__":
    main()
