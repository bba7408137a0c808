"""Profile: where the forward time of a dense and of pruned U-Nets goes, by op kind, with convolution throughput.

    python -m benchmarks.profile_pruned [--preset cifar10] [--batch 16] [--ratios 0.3 0.5] [--round-to 8]

A pruned network is only as fast as its MAC ratio says when every op shrinks with the MACs. Convolutions do
(their cost is C_in x C_out x k^2 x H x W), but GroupNorm, SiLU, the residual adds and the skip
concatenations scale with the width only (C x H x W), attention scales with N^2 x d, and an odd width
(179 channels) may run the convolution kernels less efficiently than a multiple of 8 or 16. This script
runs ``torch.profiler`` over ``--iters`` forward passes (eval, inference_mode, after a warm-up) of each
model, the models taking turns so that load from other processes hits each alike, and reports:

- self CPU time per op kind (conv, group_norm, silu, attention, add, cat/copy, other) and its share;
- the convolutions' achieved GFLOP/s overall and per (C_in, C_out, kernel, H x W) shape, from the recorded
  input shapes, so that slow odd widths show up.

Writes benchmarks/results/profile_pruned.json and prints the tables (docs/PERFORMANCE.md discusses them).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import pruning
from metrics.macs import count_macs
from models.ddpm.config import PRESETS
from models.ddpm.unet import UNet

RESULTS = Path(__file__).resolve().parent / "results"

# aten op name -> kind. Ops not listed are "other" (their names are kept in the JSON).
KINDS = {
    "aten::mkldnn_convolution": "conv", "aten::convolution_overrideable": "conv", "aten::_convolution": "conv",
    "aten::native_group_norm": "group_norm", "aten::silu": "silu", "aten::silu_": "silu",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "attention", "aten::bmm": "attention",
    "aten::_softmax": "attention", "aten::add": "add", "aten::add_": "add", "aten::cat": "cat/copy",
    "aten::copy_": "cat/copy", "aten::constant_pad_nd": "cat/copy", "aten::upsample_nearest2d": "cat/copy",
    "aten::addmm": "linear",
}


def conv_flops(shapes: list) -> int | None:
    """2 x MACs of one aten::mkldnn_convolution call from its recorded input shapes (input, weight, ...)."""
    if len(shapes) < 2 or len(shapes[0]) != 4 or len(shapes[1]) != 4:
        return None
    (B, _, H, W), (Co, Ci, kh, kw) = shapes[0], shapes[1]
    # The U-Net's convs are 'same' (3x3, padding 1; 1x1) or stride 2 after a (0, 1, 0, 1) pad: the output
    # has H x W or (H // 2) x (W // 2) positions. Stride-2 convs see the padded odd-sized input.
    Ho, Wo = (H, W) if H % 2 == 0 else ((H - 1) // 2, (W - 1) // 2)
    return 2 * B * Co * Ho * Wo * Ci * kh * kw


def profile_once(model: UNet, x: torch.Tensor, t: torch.Tensor, acc: dict) -> None:
    """Profile one forward (eval, inference_mode) and add its self CPU time per op kind and per conv shape to ``acc``."""
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        model(x, t)
    for e in prof.key_averages(group_by_input_shape=True):
        us = e.self_cpu_time_total
        if us <= 0:
            continue
        kind = KINDS.get(e.key, "other")
        acc["per_kind"][kind] = acc["per_kind"].get(kind, 0.0) + us
        if kind == "other":
            acc["other"][e.key] = acc["other"].get(e.key, 0.0) + us
        if e.key == "aten::mkldnn_convolution":
            flops = conv_flops(e.input_shapes)
            if flops:
                (_, _, H, W), (Co, Ci, kh, kw) = e.input_shapes[0], e.input_shapes[1]
                c = acc["convs"].setdefault(f"{Ci}->{Co} k{kh} {H}x{W}", {"us": 0.0, "flops": 0, "calls": 0})
                c["us"] += us
                c["flops"] += flops * e.count
                c["calls"] += e.count
    acc["forwards"] += 1


def summarize(acc: dict) -> dict:
    n = acc["forwards"]
    per_kind, convs = acc["per_kind"], acc["convs"]
    total = sum(per_kind.values())
    conv_us, conv_flop = sum(c["us"] for c in convs.values()), sum(c["flops"] for c in convs.values())
    for c in convs.values():
        c["gflops"] = c["flops"] / c["us"] / 1e3
        c["ms_per_forward"], c["calls"] = c["us"] / n / 1e3, c["calls"] // n
        del c["us"], c["flops"]
    return {"ms_per_forward": total / n / 1e3,
            "per_kind_ms": {k: v / n / 1e3 for k, v in sorted(per_kind.items(), key=lambda kv: -kv[1])},
            "share": {k: v / total for k, v in per_kind.items()},
            "other_ops_ms": {k: v / n / 1e3 for k, v in sorted(acc["other"].items(), key=lambda kv: -kv[1])[:10]},
            "conv_gflops": conv_flop / conv_us / 1e3 if conv_us else None,
            "convs": dict(sorted(convs.items(), key=lambda kv: -kv[1]["ms_per_forward"]))}


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    config = PRESETS[args.preset]
    torch.manual_seed(0)
    dense = UNet(config).eval()
    example = dense.example_inputs()
    models = {"dense": dense}
    for ratio in args.ratios:
        for n in [0] + args.round_to:
            kw = {"round_to": n} if n else {}
            label = f"ratio {ratio}" + (f", round-to {n}" if n else "")
            models[label], _ = pruning.prune(copy.deepcopy(dense), example, method="magnitude", ratio=ratio,
                                             progress=False, **kw)
            models[label].eval()
    x, t = torch.randn(args.batch, config.in_channels, config.image_size, config.image_size), torch.full((args.batch,), 500.0)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "unknown"
    out = {"preset": args.preset, "batch": args.batch, "iters": args.iters, "threads": args.threads,
           "torch": str(torch.__version__), "load_before": load, "models": {},
           "command": "python -m benchmarks.profile_pruned " + " ".join(sys.argv[1:])}
    accs = {label: {"per_kind": {}, "other": {}, "convs": {}, "forwards": 0} for label in models}
    with torch.inference_mode():
        for model in models.values():  # warm-up: oneDNN primitive creation is not what we measure
            model(x, t)
    # Interleaved (dense, 0.3, 0.5, dense, ...): load from other processes hits every model alike.
    for _ in range(args.iters):
        for label, model in models.items():
            profile_once(model, x, t, accs[label])
    for label, model in models.items():
        r = count_macs(model, example)
        out["models"][label] = {"macs_full": r.macs_full, "macs_paper": r.macs_paper, **summarize(accs[label])}
    base = out["models"]["dense"]
    kinds = sorted(base["per_kind_ms"], key=lambda k: -base["per_kind_ms"][k])
    print(f"{args.preset}, batch {args.batch}, ms per forward (self CPU time by op kind); load {load}")
    print(f"{'model':<24}{'MAC ratio':>10}{'time ratio':>11}" + "".join(f"{k:>11}" for k in kinds) + f"{'conv GF/s':>11}")
    for label, m in out["models"].items():
        m["mac_ratio"] = base["macs_full"] / m["macs_full"]
        m["time_ratio"] = base["ms_per_forward"] / m["ms_per_forward"]
        m["kind_ratio"] = {k: base["per_kind_ms"][k] / m["per_kind_ms"][k] for k in kinds if m["per_kind_ms"].get(k)}
        print(f"{label:<24}{m['mac_ratio']:>10.2f}{m['time_ratio']:>11.2f}"
              + "".join(f"{m['per_kind_ms'].get(k, 0.0):>11.1f}" for k in kinds) + f"{m['conv_gflops']:>11.0f}")
    out["load_after"] = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "unknown"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="cifar10", choices=sorted(PRESETS))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5])
    p.add_argument("--round-to", nargs="*", type=int, default=[8])
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="profile_pruned.json", help="file name under benchmarks/results/")
    a = p.parse_args()
    if a.batch < 1 or a.iters < 1:
        p.error(f"--batch and --iters must be >= 1, got {a.batch}, {a.iters}")
    main(a)
