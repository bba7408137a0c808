"""Benchmark: how fast the U-Net, pruned U-Nets, the pruning machinery and the FID Inception run here.

    python -m benchmarks.speed                      # everything, defaults below (tens of minutes on 2 cores)
    python -m benchmarks.speed --sections unet --presets cifar10 --batch-sizes 16 --modes eager diffusers

Sections (``--sections``; each is saved to the JSON as soon as it finishes, so an interrupted run is resumed
by running the missing sections again):

    machine   CPU, threads, torch version, and the measured fp32 matmul throughput (the "peak" GFLOP/s)
    unet      forward (eval, inference_mode) and forward+backward (train mode, loss = mean eps^2) images/s
              per preset and batch size, for each --modes entry: eager, channels_last, compile (see
              models/runtime.py), and diffusers (UNet2DModel built with the same configuration and the same
              weights, when ``diffusers`` is importable; never a requirement). GFLOP/s = 2 x MACs (with the
              attention matmuls, metrics/macs.py) x images/s, next to the matmul peak.
    pruned    dense vs pruned (magnitude criterion, local rule; widths do not depend on the criterion) at
              each --ratios entry, plus its ``--round-to`` variants:
              forward images/s at every batch size and the speed-up beside the MAC ratio; then 100-step DDIM
              sampling time of the same models (--sampling-preset, default tiny: a cifar10 chain is minutes).
    prune     trace + group and select + surgery seconds on the cifar10 preset (random criterion, ratio 0.3)
    gradient  the Diff-Pruning gradient pass on the tiny preset: seconds per kept timestep
    fid       FID Inception-v3 feature throughput for 32x32 images (upsampled to 299 inside, as FID does)

Timing: for every comparison all variants run interleaved (A, B, C, A, B, C, ...) after --warmup rounds,
and the median of --repeats runs is reported, so load from other processes hits every variant alike: the
ratios stay meaningful on a busy machine even when absolute figures do not. /proc/loadavg before and after
each section is recorded next to its figures. Results: benchmarks/results/speed.json, and the tables
between the markers in docs/PERFORMANCE.md (the text around them is left alone).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from benchmarks.speed_report import render, write_doc
from benchmarks.timing import cpu_model, interleaved, loadavg, timed_once
from diffusion.samplers import sample
from diffusion.schedule import Schedule
from metrics.macs import count_macs
from models.ddpm.config import PRESETS, ModelConfig
from models.runtime import Runner, RuntimeOptions
from models.ddpm.unet import UNet

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("machine", "unet", "pruned", "prune", "gradient", "fid")
MODES = ("eager", "channels_last", "compile", "diffusers")


# ---------------------------------------------------------------------------------------------- models
def build(config: ModelConfig, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(config).eval()


def macs_of(model: UNet) -> tuple[int, int]:
    r = count_macs(model, model.example_inputs())
    return r.macs_paper, r.macs_full


def diffusers_equivalent(model: UNet):
    """(UNet2DModel with the same configuration and weights as ``model``, max |eps difference|), or (None, why).

    The configuration is the one google/ddpm-cifar10-32 uses, with our preset's sizes (see
    models/ddpm/convert.py: config_from_diffusers for why each setting is needed)."""
    try:
        from diffusers import UNet2DModel
    except ImportError as e:
        return None, f"diffusers not importable ({e.__class__.__name__}): optional, pip install diffusers to compare"
    from models.ddpm.convert import diffusers_to_ddim

    c = model.config
    attn = [i for i in range(len(c.ch_mult)) if c.image_size // 2 ** i in c.attn_resolutions]
    widths = [c.ch * m for m in c.ch_mult]
    ref = UNet2DModel(sample_size=c.image_size, in_channels=c.in_channels, out_channels=c.out_channels,
                      block_out_channels=widths, layers_per_block=c.num_res_blocks,
                      down_block_types=["AttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(len(widths))],
                      up_block_types=["AttnUpBlock2D" if i in attn else "UpBlock2D" for i in reversed(range(len(widths)))],
                      attention_head_dim=None if c.num_heads == 1 else widths[-1] // c.num_heads,
                      norm_num_groups=c.norm_groups, norm_eps=c.norm_eps, dropout=c.dropout, downsample_padding=0,
                      flip_sin_to_cos=False, freq_shift=1, act_fn="silu").eval()
    ours = copy.deepcopy(model)
    ours.load_state_dict(diffusers_to_ddim(ref.state_dict(), source="diffusers UNet2DModel"))
    x, t = torch.randn(2, c.in_channels, c.image_size, c.image_size), torch.tensor([10.0, 900.0])
    with torch.inference_mode():
        diff = (ours(x, t) - ref(x, t).sample).abs().max().item()
    return ref, diff


class _DiffusersCall:
    """diffusers returns an output object; the benchmark wants eps."""

    def __init__(self, model):
        self.model = model

    def __call__(self, x, t):
        return self.model(x, t).sample


# ---------------------------------------------------------------------------------------------- sections
def section_machine(args) -> dict:
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = interleaved({"mm": lambda: torch.mm(a, b)}, repeats=max(args.repeats, 5), warmup=2)["mm"]
    return {"cpu": platform.processor() or platform.machine(), "cpu_model": cpu_model(), "nproc": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": str(torch.__version__), "python": platform.python_version(),
            "matmul_fp32_gflops": {"median": 2 * n ** 3 / t["median_s"] / 1e9, "best": 2 * n ** 3 / t["min_s"] / 1e9,
                                   "size": n}}


def section_unet(args) -> dict:
    out = {}
    for name in args.presets:
        dense = build(PRESETS[name])
        macs_paper, macs_full = macs_of(dense)
        runners, notes = {}, {}
        for mode in args.modes:
            if mode == "diffusers":
                ref, info = diffusers_equivalent(dense)
                if ref is None:
                    notes[mode] = info
                    continue
                notes[mode] = f"same weights, max abs(eps - ours) = {info:.2e}"
                runners[mode] = _DiffusersCall(ref)
            else:
                opts = RuntimeOptions(channels_last=mode == "channels_last", compile=mode == "compile")
                runners[mode] = Runner(copy.deepcopy(dense), opts)
        for B in args.batch_sizes:
            c = dense.config
            x, t = torch.randn(B, c.in_channels, c.image_size, c.image_size), torch.full((B,), 500.0)
            first = {}
            for mode, r in runners.items():  # compile happens at the first call: time it separately
                with torch.inference_mode():
                    first[mode] = timed_once(lambda: r(x, t))
            fwd = interleaved({m: _forward(r, x, t) for m, r in runners.items()}, repeats=args.repeats, warmup=args.warmup)
            for m, r in runners.items():
                first[f"{m}_train"] = timed_once(_train_step(r, x, t))
            bwd = interleaved({m: _train_step(r, x, t) for m, r in runners.items()}, repeats=args.repeats,
                              warmup=args.warmup)
            rows = {}
            for m in runners:
                rows[m] = {"forward_images_per_s": B / fwd[m]["median_s"], "forward": fwd[m],
                           "forward_gflops": 2 * macs_full * B / fwd[m]["median_s"] / 1e9,
                           "train_images_per_s": B / bwd[m]["median_s"], "train_step": bwd[m],
                           "first_call_s": {"forward": first[m], "train": first[f"{m}_train"]}}
            out[f"{name}/b{B}"] = {"preset": name, "batch": B, "macs_paper": macs_paper, "macs_full": macs_full,
                                   "modes": rows, "notes": notes}
            for r in runners.values():  # back to eval for the next batch size's forward
                getattr(r, "model", r).eval()
    return out


def _forward(runner, x, t) -> Callable[[], object]:
    def f():
        with torch.inference_mode():
            return runner(x, t)
    return f


def _train_step(runner, x, t) -> Callable[[], object]:
    module = getattr(runner, "model", runner)

    def f():
        module.train()
        module.zero_grad(set_to_none=True)
        runner(x, t).square().mean().backward()
    return f


def pruned_models(config: ModelConfig, ratios: list[float], round_to: list[int]) -> tuple[dict, dict]:
    """{label: model} for dense and every (ratio, round_to) variant, and notes on variants that were skipped."""
    import pruning

    dense = build(config)
    models, notes = {"dense": dense}, {}
    example = dense.example_inputs()
    for ratio in ratios:
        for n in [0] + round_to:
            label = f"ratio {ratio}" + (f", round-to {n}" if n else "")
            kw = {"round_to": n} if n else {}
            models[label], _ = pruning.prune(copy.deepcopy(dense), example, method="magnitude", ratio=ratio,
                                             progress=False, **kw)
            models[label].eval()
    return models, notes


def section_pruned(args) -> dict:
    out = {}
    models, notes = pruned_models(PRESETS[args.pruned_preset], args.ratios, args.round_to)
    macs = {k: macs_of(m) for k, m in models.items()}
    c = models["dense"].config
    for B in args.batch_sizes:
        x, t = torch.randn(B, c.in_channels, c.image_size, c.image_size), torch.full((B,), 500.0)
        fwd = interleaved({k: _forward(m, x, t) for k, m in models.items()}, repeats=args.repeats, warmup=args.warmup)
        out[f"forward/b{B}"] = _speedups(fwd, macs, B)
    # Sampling: 100 DDIM steps (uniform skip), batch --sampling-batch, models interleaved.
    smodels, _ = pruned_models(PRESETS[args.sampling_preset], args.ratios, args.round_to) \
        if args.sampling_preset != args.pruned_preset else (models, notes)
    smacs = {k: macs_of(m) for k, m in smodels.items()}
    sc = smodels["dense"].config
    kw = dict(indices=list(range(args.sampling_batch)), seed=0, image_shape=(sc.in_channels, sc.image_size, sc.image_size),
              steps=args.sampling_steps, batch_size=args.sampling_batch)
    samp = interleaved({k: (lambda m=m: sample(m, Schedule(), **kw)) for k, m in smodels.items()},
                       repeats=max(1, args.repeats // 2), warmup=min(args.warmup, 1))
    out[f"ddim{args.sampling_steps}/{args.sampling_preset}/b{args.sampling_batch}"] = _speedups(samp, smacs, args.sampling_batch)
    out["widths"] = {k: {"params": sum(p.numel() for p in m.parameters())} for k, m in models.items()}
    out["notes"] = notes
    out["preset"], out["sampling_preset"] = args.pruned_preset, args.sampling_preset
    return out


def _speedups(times: dict, macs: dict, B: int) -> dict:
    base, (base_paper, base_full) = times["dense"]["median_s"], macs["dense"]
    return {k: {"median_s": v["median_s"], "min_s": v["min_s"], "images_per_s": B / v["median_s"],
                "speedup": base / v["median_s"], "mac_ratio_full": base_full / macs[k][1],
                "mac_ratio_paper": base_paper / macs[k][0],
                "speedup_over_mac_ratio": (base / v["median_s"]) / (base_full / macs[k][1])}
            for k, v in times.items()}


def section_prune(args) -> dict:
    import pruning

    runs = []
    for i in range(args.warmup + args.repeats):
        model = build(PRESETS["cifar10"], seed=i)
        example = model.example_inputs()
        start = time.perf_counter()
        _, report = pruning.prune(model, example, method="random", ratio=0.3, seed=i, progress=False)
        total = time.perf_counter() - start
        if i >= args.warmup:
            runs.append({**{k: float(v) for k, v in report.seconds.items()}, "total_s": total})
    return {key: {"median_s": statistics.median(r[key] for r in runs), "min_s": min(r[key] for r in runs)}
            for key in runs[0]}


def section_gradient(args) -> dict:
    """One timestep per forward/backward (micro_batch = B, the paper code's loop) against k = --gradient-k
    timesteps per pass (micro_batch = k B, ``_accumulate_chunks``), interleaved."""
    from pruning.importance import accumulate_gradients

    model = build(PRESETS["tiny"])
    B = args.gradient_batch
    x0 = torch.rand(B, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    reports = {}

    def run(micro_batch: int, label: str) -> Callable[[], object]:
        def f():
            reports[label] = accumulate_gradients(model, Schedule(), x0, thr=0.0, micro_batch=micro_batch,
                                                  max_timesteps=args.gradient_timesteps,
                                                  generator=torch.Generator().manual_seed(0))
        return f

    variants = {"one timestep per pass": B, f"{args.gradient_k} timesteps per pass": args.gradient_k * B}
    times = interleaved({label: run(mb, label) for label, mb in variants.items()},
                        repeats=max(1, args.repeats // 2), warmup=min(args.warmup, 1))
    return {label: {"timesteps": len(reports[label].kept), "batch": B, "micro_batch": variants[label],
                    "median_s": t["median_s"], "s_per_timestep": t["median_s"] / len(reports[label].kept)}
            for label, t in times.items()}


def section_fid(args) -> dict:
    from metrics.inception import FIDInceptionV3

    torch.manual_seed(0)
    net = FIDInceptionV3().eval()  # random weights: the throughput does not depend on the values
    x = torch.rand(args.fid_batch, 3, 32, 32)
    t = interleaved({"fid": _forward(lambda x, _t: net(x), x, None)}, repeats=max(1, args.repeats // 2),
                    warmup=min(args.warmup, 1))["fid"]
    return {"batch": args.fid_batch, "images_per_s": args.fid_batch / t["median_s"], **t}


RUNNERS = {"machine": section_machine, "unet": section_unet, "pruned": section_pruned, "prune": section_prune,
           "gradient": section_gradient, "fid": section_fid}


MERGED = ("unet", "pruned")


def fresh_keys(name: str, result: dict, args: argparse.Namespace) -> set[str]:
    """The entries of a merged section that this run measured."""
    if name == "unet":
        return {f"{p}/b{B}" for p in args.presets for B in args.batch_sizes}
    return {f"forward/b{B}" for B in args.batch_sizes} | {k for k in result if k.startswith("ddim")}


def main(args: argparse.Namespace) -> dict:
    unknown = sorted(set(args.sections) - set(SECTIONS)) + sorted(set(args.modes) - set(MODES))
    if unknown:
        raise SystemExit(f"speed.py: unknown section or mode {unknown}; sections {SECTIONS}, modes {MODES}")
    bad = [p for p in args.presets + [args.pruned_preset, args.sampling_preset] if p not in PRESETS]
    if bad:
        raise SystemExit(f"speed.py: unknown preset {bad}; presets {sorted(PRESETS)}")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() and not args.fresh else {}
    command = "python -m benchmarks.speed " + " ".join(sys.argv[1:]) if args.command is None else args.command
    for name in args.sections:
        before = loadavg()
        print(f"[speed] {name} (load average {before}) ...", flush=True)
        start = time.perf_counter()
        result = RUNNERS[name](args)
        meta = {"load_before": before, "load_after": loadavg(), "threads": torch.get_num_threads(),
                "nproc": os.cpu_count(), "torch": str(torch.__version__), "command": command}
        if name == "unet":  # each mode row carries the load and command of the run that measured it
            for entry in result.values():
                for row in entry["modes"].values():
                    row["meta"] = meta
        elif name == "pruned":
            for key in fresh_keys(name, result, args):
                result[key]["meta"] = meta
        if name in MERGED and name in results:
            # unet / pruned are built up over several runs (one preset, batch size or mode at a time): results
            # of earlier runs are kept unless measured again. Compare rows of the same run only.
            old = results[name]["result"]
            if name == "unet":
                for key, entry in result.items():
                    if key in old:
                        entry["modes"] = {**old[key]["modes"], **entry["modes"]}
                        entry["notes"] = {**old[key]["notes"], **entry["notes"]}
            result = {**old, **result}
        results[name] = {"result": result, "seconds": time.perf_counter() - start, **meta,
                         "settings": {k: v for k, v in vars(args).items() if k not in ("out", "doc", "command")}}
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1) + "\n")
        tmp.replace(out)  # saved after every section: a killed run keeps what it finished
    tables = render(results)
    if args.doc:
        write_doc(Path(args.doc), tables)
    print(tables)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sections", nargs="+", default=list(SECTIONS))
    p.add_argument("--presets", nargs="+", default=["tiny", "cifar10"], help="presets of the unet section")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[16, 64])
    p.add_argument("--modes", nargs="+", default=list(MODES))
    p.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5])
    p.add_argument("--round-to", nargs="*", type=int, default=[8], help="round-to variants of the pruned section")
    p.add_argument("--pruned-preset", default="cifar10")
    p.add_argument("--sampling-preset", default="tiny")
    p.add_argument("--sampling-steps", type=int, default=100)
    p.add_argument("--sampling-batch", type=int, default=16)
    p.add_argument("--gradient-batch", type=int, default=8)
    p.add_argument("--gradient-timesteps", type=int, default=16)
    p.add_argument("--gradient-k", type=int, default=8, help="timesteps per pass of the batched gradient pass")
    p.add_argument("--fid-batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speed.json"))
    p.add_argument("--doc", default=str(ROOT / "docs" / "PERFORMANCE.md"), help="'' to skip writing the tables")
    p.add_argument("--fresh", action="store_true", help="start a new JSON instead of updating the sections in it")
    p.add_argument("--command", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.repeats < 1 or a.warmup < 0:
        p.error(f"--repeats must be >= 1 and --warmup >= 0, got {a.repeats}, {a.warmup}")
    return a


if __name__ == "__main__":
    main(parse_args())
