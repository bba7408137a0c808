"""Latency of dense and pruned U-Nets, the same way on a GPU and on a CPU: speed-up next to the MAC ratio.

    python -m benchmarks.latency                                   # DDPM presets, GPU if there is one
    python -m benchmarks.latency --device cuda --models cifar10 celeba64 church256 sd-family \\
        --batch-sizes 1 16 64 --dtypes fp32 fp16 bf16 --channels-last off on --compile none default
    python -m benchmarks.latency --device cpu --models cifar10 --batch-sizes 16 64 --tag quiet   # quiet machine!
    python -m benchmarks.latency --models sd-family --macs-only    # the MAC table alone, no timing

Models (``--models``; each is a group timed together):

    cifar10, celeba64, church256, tiny   the DDPM U-Net of that preset (models/ddpm), dense, and pruned by the
                  project's own ``pruning.prune`` at each ``--ratios`` entry (magnitude criterion, local rule,
                  random weights: the widths do not depend on the weights or the criterion, and magnitude
                  needs no data). ``tiny`` is the embedded default, for tests.
    sd-family     the conditional latent U-Nets of models/sd/presets.py: SD-v1.5 dense and the BK-SDM Base /
                  Small / Tiny architectures as its pruned forms (Kim et al. 2023, arXiv 2305.15798: SD-v1.4's
                  U-Net with blocks removed), 64x64 latents and 77 text tokens of width 768. LAPTOP-Diff at
                  50% (arXiv 2404.11098) is listed as unmeasured: layer pruning of the SD family does not
                  exist in pruning/layers yet (it handles the DDPM U-Net only).

Settings (every combination is run): ``--dtypes`` fp32 / fp16 / bf16 (``torch.autocast`` of the forward;
fp16 on a CPU is refused with a note, bf16 on a GPU without bf16 too), ``--channels-last`` off / on (weights and
input in (N, H, W, C) order), ``--compile`` none or a ``torch.compile`` mode (a failure to compile is a note,
not a crash), and ``--sdpa`` auto (PyTorch picks its fused attention kernel: flash / memory-efficient / cuDNN
on a GPU) or math (the reference kernel). The models call ``F.scaled_dot_product_attention`` themselves.

Timing: per (group, setting, batch), every model runs ``--warmup`` forwards (compilation happens there), then
``--repeats`` timed forwards interleaved across the group's models (A, B, C, A, B, C, ...), so that load hits
every model alike. One forward is timed by CUDA events with a synchronize on a GPU, by time.perf_counter on a
CPU, under ``torch.inference_mode``. Reported: median and IQR (75th - 25th percentile) latency per batch,
images/s = batch / median, speed-up = dense median / median, MAC ratio = dense MACs / MACs (metrics/macs.py,
with the attention products, batch 1), and the key figure (speed-up) / (MAC ratio): 1.0 means the pruned
network is exactly as much faster as its arithmetic says.

Results: benchmarks/results/latency_<device>[_<tag>].{json,md} (``--macs-only``: latency_macs[_<tag>]) with the machine (GPU name or CPU model, torch,
CUDA), the load average before and after each group (os.getloadavg), the settings and the command. An
existing result file is never overwritten: the run refuses before any work and asks for another ``--tag``.
CPU figures taken at a load average above the core count measure the other processes, not the model.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from benchmarks.latency_report import markdown
from benchmarks.timing import device_slug, machine
from common.allocator import applied as allocator_applied, retain_freed_memory
from metrics.macs import count_macs
from models import PRESETS, UNet
from pruning import prune

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DDPM_MODELS = ("cifar10", "celeba64", "church256", "tiny")
SD_FAMILY = "sd-family"
SD_DENSE, SD_PRUNED = "sd-v1.5", ("bk-sdm-base", "bk-sdm-small", "bk-sdm-tiny")
SD_TOKENS = 77  # CLIP's text length, as every SD pipeline pads to it
SD_LAYER_50 = "layer-50% (random units)"  # layer_pruned_sd: LAPTOP-Diff's size, not its unit choice
UNMEASURED: dict[str, list[str]] = {}
DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class Variant:
    """One network of a group: ``model(*inputs(batch))`` is its forward; ``macs`` is per image (macs_full)."""

    name: str  # "dense", "ratio 0.3", "bk-sdm-base", ...
    model: nn.Module
    inputs: Callable[[int], tuple]
    params: int
    macs: int
    macs_paper: int


# ---------------------------------------------------------------------------------------------- models
def ddpm_group(name: str, ratios: list[float], device: torch.device, seed: int) -> list[Variant]:
    """Dense and magnitude-pruned U-Nets of a DDPM preset; pruning runs on the CPU, then each moves to ``device``."""
    config = PRESETS[name]
    shape = (config.in_channels, config.image_size, config.image_size)

    def inputs(batch: int, dev: torch.device = device) -> tuple:
        g = torch.Generator().manual_seed(batch)
        x = torch.randn(batch, *shape, generator=g)  # (B, C, H, W)
        t = torch.randint(0, 1000, (batch,), generator=g)  # (B,)
        return x.to(dev), t.to(dev)

    variants = []
    for ratio in [0.0] + list(ratios):
        torch.manual_seed(seed)  # the same random weights for every ratio
        model = UNet(config).eval()
        if ratio > 0:
            model, _ = prune(model, inputs(1, torch.device("cpu")), method="magnitude", ratio=ratio, progress=False)
        report = count_macs(model, inputs(1, torch.device("cpu")))
        variants.append(Variant("dense" if ratio == 0 else f"ratio {ratio:g}", model.to(device), inputs,
                                report.params, report.macs_full, report.macs_paper))
    return variants


class Conditioned(nn.Module):
    """``unet(x, t, ctx)`` with the text states passed positionally (count_macs and compile see one signature)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=ctx)


def sd_group(device: torch.device, seed: int, *, meta: bool = False) -> list[Variant]:
    """SD-v1.5's U-Net and the BK-SDM architectures, random weights built on ``device`` (or on meta: MACs only)."""
    from models.sd import UNet2DConditionModel
    from models.sd.presets import preset as sd_preset

    variants = []
    for name in (SD_DENSE,) + SD_PRUNED:
        config = sd_preset(name)
        latent, width = config.sample_size, config.cross_attention_dim[0]

        def inputs(batch: int, dev: torch.device = device, c=config, latent=latent, width=width) -> tuple:
            g = torch.Generator().manual_seed(batch)
            x = torch.randn(batch, c.in_channels, latent, latent, generator=g)  # (B, 4, h, w) latents
            ctx = torch.randn(batch, SD_TOKENS, width, generator=g)  # (B, 77, 768) text states
            return x.to(dev), torch.full((batch,), 500, device=dev), ctx.to(dev)

        torch.manual_seed(seed)
        with torch.device("meta" if meta else device):
            model = Conditioned(UNet2DConditionModel(config)).eval()
        dev = torch.device("meta") if meta else device
        report = count_macs(model, inputs(1, dev))
        variants.append(Variant("dense" if name == SD_DENSE else name, model, inputs, report.params,
                                report.macs_full, report.macs_paper))
    variants.append(layer_pruned_sd(variants[0], dev))
    return variants


def layer_pruned_sd(dense: Variant, device: torch.device) -> Variant:
    """SD-v1.5's U-Net with half of its parameters removed in whole units (LAPTOP-Diff's 50% setting; arXiv
    2404.11098 Table 1): ResNet branches, Transformer2D modules, the mid block, chosen by the knapsack as
    ``pruning.layers.prune_layers`` chooses them. Which units LAPTOP's output-loss criterion removes depends on
    the trained weights, unknown here (random weights), so the scores are the ``random`` criterion's (seed 0):
    the size is LAPTOP's, the unit choice is not. Built from the config with those units removed, on
    ``device`` (meta: MACs only), fresh random weights."""
    from models.sd import UNet2DConditionModel
    from pruning.layers import knapsack
    from pruning.layers.api import stages, target_cost
    from pruning.layers.criteria import CriterionInputs, random_scores
    from pruning.layers.sd import removed_config
    from pruning.layers.units import find_units

    unet = dense.model.unet
    units = find_units(unet)
    need, _, _ = target_cost(unet, units, "params", 0.5)
    scores = random_scores(unet, units, CriterionInputs(seed=0))
    chosen = knapsack.select([scores[u.path] for u in units], [u.cost("params") for u in units], need, "knapsack",
                             groups=stages(units))
    config = removed_config(unet, [units[i].path for i in chosen])
    with torch.device(device):
        model = Conditioned(UNet2DConditionModel(config)).eval()
    report = count_macs(model, dense.inputs(1, device))
    return Variant(SD_LAYER_50, model, dense.inputs, report.params, report.macs_full, report.macs_paper)


def build_group(name: str, ratios: list[float], device: torch.device, seed: int, meta: bool) -> list[Variant]:
    return sd_group(device, seed, meta=meta) if name == SD_FAMILY else ddpm_group(name, ratios, device, seed)


# ---------------------------------------------------------------------------------------------- timing
def timed_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one ``fn()``: CUDA events around it and a synchronize on a GPU, perf_counter on a CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()  # the kernels are asynchronous: the time is known only once they have finished
        return start.elapsed_time(end) / 1e3  # elapsed_time is in milliseconds
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def forward_fn(model: nn.Module, inputs: tuple, *, device: torch.device, dtype: str, channels_last: bool,
               compiled: Callable | None, sdpa: str) -> Callable[[], object]:
    """The forward to time: autocast to ``dtype`` (fp32: none), channels-last input, the chosen SDPA kernel."""
    if channels_last:
        inputs = (inputs[0].contiguous(memory_format=torch.channels_last),) + tuple(inputs[1:])
    call = compiled if compiled is not None else model  # a compiled module has no truth value (len() raises)

    def fn():
        autocast = (torch.autocast(device_type=device.type, dtype=DTYPES[dtype]) if DTYPES[dtype] is not None
                    else nullcontext())
        with autocast, sdpa_context(sdpa):
            return call(*inputs)
    return fn


def sdpa_context(sdpa: str):
    """``auto``: PyTorch's choice of fused kernel; ``math``: the unfused reference kernel only."""
    if sdpa == "auto":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel(SDPBackend.MATH)


def summarize(seconds: list[float], batch: int) -> dict:
    q25, q50, q75 = np.percentile(np.asarray(seconds) * 1e3, [25, 50, 75])
    return {"median_ms": float(q50), "iqr_ms": float(q75 - q25), "images_per_s": batch / (q50 / 1e3),
            "runs_ms": [round(s * 1e3, 3) for s in seconds]}


def time_setting(group: str, variants: list[Variant], setting: dict, *, batch_sizes: list[int], device: torch.device,
                 warmup: int, repeats: int, notes: list[str]) -> list[dict]:
    """Rows for one (group, setting): every batch size, the group's models interleaved."""
    memory = torch.channels_last if setting["channels_last"] else torch.contiguous_format
    compiled = {}
    for v in variants:
        v.model.to(memory_format=memory)  # in place, values unchanged; converted back by the next setting
        if setting["compile"] != "none":
            compiled[v.name] = torch.compile(v.model, mode=setting["compile"], dynamic=False)
    rows = []
    for batch in batch_sizes:
        fns = {}
        for v in variants:
            fn = forward_fn(v.model, v.inputs(batch), device=device, dtype=setting["dtype"],
                            channels_last=setting["channels_last"], compiled=compiled.get(v.name), sdpa=setting["sdpa"])
            try:
                with torch.inference_mode():
                    # compilation happens at the first call: never inside the timed forwards
                    for _ in range(max(warmup, setting["compile"] != "none")):
                        fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
            except Exception as e:  # noqa: BLE001 -- compilation / kernel failures become a note, not a crash
                if setting["compile"] == "none" and not isinstance(e, torch.OutOfMemoryError):
                    raise
                notes.append(f"{group} {v.name} batch {batch} {describe(setting)}: skipped, "
                             f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
                continue
            fns[v.name] = fn
        times: dict[str, list[float]] = {name: [] for name in fns}
        with torch.inference_mode():
            for _ in range(repeats):
                for name, fn in fns.items():
                    times[name].append(timed_call(fn, device))
        dense = summarize(times["dense"], batch)["median_ms"] if "dense" in times else None
        by_name = {v.name: v for v in variants}
        for name, secs in times.items():
            v, base = by_name[name], by_name[variants[0].name]
            row = {"group": group, "model": name, "batch": batch, **setting, **summarize(secs, batch),
                   "params": v.params, "macs": v.macs, "mac_ratio": base.macs / v.macs}
            row["speed_up"] = dense / row["median_ms"] if dense else None
            row["speed_up_over_mac_ratio"] = row["speed_up"] / row["mac_ratio"] if dense else None
            rows.append(row)
    return rows


def describe(setting: dict) -> str:
    return (f"{setting['dtype']}, {'channels-last' if setting['channels_last'] else 'contiguous'}, "
            f"compile {setting['compile']}, sdpa {setting['sdpa']}")


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]  # 1, 5 and 15 minute averages
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["cifar10", "celeba64", "church256"],
                   choices=DDPM_MODELS + (SD_FAMILY,))
    p.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5], help="DDPM pruning ratios (local rule)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--dtypes", nargs="+", default=["fp32"], choices=sorted(DTYPES))
    p.add_argument("--channels-last", nargs="+", default=["off"], choices=["off", "on"])
    p.add_argument("--compile", nargs="+", default=["none"], choices=COMPILE_MODES, help="torch.compile modes")
    p.add_argument("--sdpa", nargs="+", default=["auto"], choices=["auto", "math"])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allocator", default="default", choices=["default", "retained"],
                   help="glibc malloc as it comes, or told to keep freed memory (common/allocator.py, what the "
                        "scripts do); applies to the whole process")
    p.add_argument("--macs-only", action="store_true", help="build the models and report MACs only (no timing)")
    p.add_argument("--tag", default="", help="file name suffix: latency_<device>_<tag>.{json,md}")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    return p.parse_args(argv)


def settings_for(args: argparse.Namespace, device: torch.device, notes: list[str]) -> list[dict]:
    """Every (dtype, channels-last, compile, sdpa) combination this device can run; refusals become notes."""
    dtypes = []
    for d in args.dtypes:
        if d == "fp16" and device.type == "cpu":
            notes.append("fp16 refused on cpu: measured on GPUs only (most CPUs have no float16 matrix units); "
                         "use bf16 on a CPU")
        elif d == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            notes.append(f"bf16 refused: {torch.cuda.get_device_name(device)} has no bfloat16 support")
        else:
            dtypes.append(d)
    if not dtypes:
        raise SystemExit(f"no --dtypes entry runs on {device.type}: {notes[-1]}")
    if device.type == "cpu" and "reduce-overhead" in args.compile:
        notes.append("compile reduce-overhead on cpu: CUDA graphs do not exist there (runs as plain compile)")
    return [{"dtype": d, "channels_last": cl == "on", "compile": c, "sdpa": s}
            for d, cl, c, s in itertools.product(dtypes, args.channels_last, args.compile, args.sdpa)]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch " + torch.__version__)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          args.device if args.device != "auto" else "cpu")
    if min(args.batch_sizes) < 1 or args.repeats < 1 or args.warmup < 0:
        raise SystemExit(f"--batch-sizes must be >= 1, --repeats >= 1, --warmup >= 0 (got {args.batch_sizes}, "
                         f"{args.repeats}, {args.warmup})")
    if any(not 0 < r < 1 for r in args.ratios):
        raise SystemExit(f"--ratios must lie in (0, 1), got {args.ratios}")
    # MACs do not depend on the device: a --macs-only table is latency_macs[_tag]
    stem = ("latency_macs" if args.macs_only else f"latency_{device_slug(device)}") + (f"_{args.tag}" if args.tag else "")
    json_path, md_path = args.out_dir / f"{stem}.json", args.out_dir / f"{stem}.md"
    for path in (json_path, md_path):
        if path.exists():  # before any work: a result is never overwritten
            raise SystemExit(f"{path} exists; pass another --tag (results are never overwritten)")
    if args.threads:
        torch.set_num_threads(args.threads)
    notes: list[str] = []
    if args.allocator == "retained" and not retain_freed_memory():
        notes.append("--allocator retained: not applied (not glibc, or DIFFPRUNE_MALLOC=default)")
    settings = [] if args.macs_only else settings_for(args, device, notes)
    result = {"command": "python -m benchmarks.latency " + shlex.join(argv if argv is not None else sys.argv[1:]),
              "machine": machine(device), "settings": {k: (str(v) if isinstance(v, Path) else v)
                                                       for k, v in vars(args).items()},
              "macs_only": args.macs_only, "groups": {}, "rows": [], "notes": notes,
              "allocator": "retained" if allocator_applied() else "default"}
    for group in args.models:
        print(f"building {group} ...", flush=True)
        variants = build_group(group, args.ratios, device, args.seed, meta=args.macs_only)
        base = variants[0]
        entry = {"loadavg_before": loadavg(),
                 "models": {v.name: {"params": v.params, "macs": v.macs, "macs_paper": v.macs_paper,
                                     "mac_ratio": base.macs / v.macs} for v in variants},
                 "unmeasured": UNMEASURED.get(group, [])}
        for setting in settings:
            print(f"  {group}: {describe(setting)}", flush=True)
            result["rows"] += time_setting(group, variants, setting, batch_sizes=args.batch_sizes, device=device,
                                           warmup=args.warmup, repeats=args.repeats, notes=notes)
        entry["loadavg_after"] = loadavg()
        result["groups"][group] = entry
        del variants, base
        if device.type == "cuda":
            torch.cuda.empty_cache()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1))
    md_path.write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {json_path} and {md_path.name}")
    return result


if __name__ == "__main__":
    main()
