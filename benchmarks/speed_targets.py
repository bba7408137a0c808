"""Benchmark: the speed targets of docs/PERFORMANCE.md in one run: pruned speed-up against the MAC ratio,
Diff-Pruning's gradient pass against the machine's fp32 peak, and ``python prune.py`` against its floor.

    python -m benchmarks.speed_targets [--threads 2] [--rounds 3] [--timesteps 6] [--pruned] [--profile]
                                       [--end-to-end] [--tag NAME]

What it measures, in one run (run it on a quiet machine; the load average is recorded before and after):

1. The machine's fp32 peak: the best of ``torch.mm`` at n = 1024, 2048 and 4096 (``--threads`` threads).
   With ``--pruned``: the cifar10 U-Net dense and magnitude-pruned at 0.3 and 0.5, batch 16 and 64, speed-up
   against the MAC ratio (benchmarks/latency.py, 12 interleaved forwards each) in two modes, each in its own
   process: "default" (contiguous memory, glibc's malloc as it comes: a plain ``model(x)``) and "deployment"
   (channels-last and ``--allocator retained``: the mode the README recommends on CPU).
2. The gradient pass of the embedded default (the shipped teacher, the paper's batch of 128 images, the
   default micro-batch of 64): seconds per timestep in four (five) modes, each in its own process (the allocator
   setting is per process) and interleaved over ``--rounds`` rounds:
       before         contiguous weights, glibc's default malloc (the pass before channels-last and
                      common/allocator.py)
       channels-last  ``accumulate_gradients(channels_last=True)`` alone
       allocator      ``common.allocator.retain_freed_memory()`` alone
       after          both: what ``python prune.py`` does now
       compiled       (with ``--compile``) 'after' with ``torch.compile`` of the U-Net, forward and backward;
                      its warm-up (the first timestep, which compiles) is reported beside the timing
   Throughput = FLOPs / time, with FLOPs per timestep = 3 x 2 x MACs x 128: a forward (the MACs with the
   attention products, metrics/macs.py) and a backward of twice its work (input and weight gradients; the first
   convolution needs no input gradient, so this slightly overstates the work and the throughput).
3. Same output: Diff-Pruning at 0.3 (thr 0.05) of the teacher on the same 128 images, the pass capped at
   ``--same-output-timesteps`` timesteps, with channels-last on and off: the same kept channels in every layer?
4. With ``--profile``: one timestep of the 'after' mode under ``torch.profiler``, self time by op kind, and the
   convolutions' forward and backward GFLOP/s.
5. With ``--end-to-end``: ``python prune.py --out <tmp>`` (the embedded default, as the README runs it) timed as
   a child process, and its floor from its own report.json: the timesteps it computed x the FLOPs per
   timestep, plus its two sample grids (16 images x 50 steps, dense and pruned), at the peak of 1; start-up
   (``python -c "import torch"``) is measured and listed, not part of the arithmetic floor.

Writes benchmarks/results/speed_targets[_TAG].json and .md (never over an existing file).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.timing import cpu_model

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
BATCH, MICRO_BATCH = 128, 64  # pruning/spec.py DEFAULTS: the paper's gradient batch, the default micro-batch
# mode -> (channels-last, retained allocator, torch.compile of the U-Net); "compiled" only with --compile
MODES = {"before": (False, False, False), "channels-last": (True, False, False), "allocator": (False, True, False),
         "after": (True, True, False), "compiled": (True, True, True)}


def load_teacher():
    import models
    from common.defaults import TEACHER_CHECKPOINT

    return models.load(str(TEACHER_CHECKPOINT)).eval()


def gradient_images(count: int = BATCH, seed: int = 0) -> torch.Tensor:
    """prune.py's gradient batch of the embedded default: ``count`` shuffled, flipped shapes training images."""
    from prune import PruneConfig, gradient_batch

    return gradient_batch(PruneConfig(), count, 32)


def flops_per_timestep(model) -> float:
    from metrics.macs import count_macs

    return 3 * 2 * count_macs(model, model.example_inputs()).macs_full * BATCH


def matmul_peak(threads: int) -> dict:
    torch.set_num_threads(threads)
    best = {}
    for n in (1024, 2048, 4096):
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(2):
            torch.mm(a, b)
        times = []
        for _ in range(5 if n < 4096 else 3):
            start = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - start)
        best[n] = 2 * n ** 3 / min(times) / 1e9
    return {"gflops_by_size": best, "peak_gflops": max(best.values())}


# ------------------------------------------------------------------------------------------- one mode's process
def worker(mode: str, timesteps: int, threads: int, profile: bool = False) -> dict:
    channels_last, retained, compiled = MODES[mode]
    if retained:
        from common.allocator import retain_freed_memory

        assert retain_freed_memory(), "glibc's mallopt refused (or not glibc): the 'allocator' modes are void"
    torch.set_num_threads(threads)
    from diffusion.schedule import DiffusionConfig, Schedule
    from pruning.gradients import accumulate_gradients

    model = load_teacher()
    # Inductor traces forward and backward on the first call (the warm-up below); the wrapper shares the
    # teacher's parameters, so the .grad the pass accumulates are the teacher's
    net = torch.compile(model) if compiled else model
    x0 = gradient_images()
    schedule = Schedule(DiffusionConfig(loss_reduction="sum"))
    run = functools.partial(accumulate_gradients, net, schedule, x0, thr=0.0, micro_batch=MICRO_BATCH,
                            generator=torch.Generator().manual_seed(0), channels_last=channels_last)
    start = time.perf_counter()
    run(max_timesteps=1)  # warm-up: first-call kernel selection and allocations (and compilation)
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    run(max_timesteps=timesteps)
    seconds = time.perf_counter() - start
    result = {"mode": mode, "seconds_per_timestep": seconds / timesteps, "timesteps": timesteps,
              "warmup_s": warmup}
    if profile:
        result["profile"] = profile_timestep(run, model)
    return result


# aten op -> kind for the profile; the backward kernels are separate ops in the profiler's self times
KINDS = {"aten::mkldnn_convolution": "conv forward", "aten::convolution_backward": "conv backward",
         "aten::native_group_norm": "group norm", "aten::native_group_norm_backward": "group norm",
         "aten::silu": "silu", "aten::silu_": "silu", "aten::silu_backward": "silu",
         "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
         "aten::_scaled_dot_product_flash_attention_for_cpu_backward": "attention", "aten::bmm": "attention",
         "aten::_softmax": "attention", "aten::_softmax_backward_data": "attention",
         "aten::add": "add", "aten::add_": "add", "aten::copy_": "copy / cat", "aten::cat": "copy / cat"}


def profile_timestep(run, model) -> dict:
    """Self CPU seconds of one timestep (``MICRO_BATCH``-sample passes over the batch) by op kind, and the
    convolutions' GFLOP/s: forward 2 x conv MACs x 128, backward twice that (metrics/macs.py's paper-convention
    MACs are the convolutions' and the linear layers')."""
    from torch.profiler import ProfilerActivity, profile

    from metrics.macs import count_macs

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(max_timesteps=1)
    by_kind: dict[str, float] = {}
    for event in prof.key_averages():
        kind = KINDS.get(event.key, "other")
        by_kind[kind] = by_kind.get(kind, 0.0) + event.self_cpu_time_total / 1e6
    total = sum(by_kind.values())
    conv_flops = 2 * count_macs(model, model.example_inputs()).macs_paper * BATCH
    return {"seconds_by_kind": by_kind, "total_s": total,
            "conv_forward_gflops": conv_flops / by_kind.get("conv forward", float("nan")) / 1e9,
            "conv_backward_gflops": 2 * conv_flops / by_kind.get("conv backward", float("nan")) / 1e9}


def run_worker(mode: str, args: argparse.Namespace, profile: bool = False) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    if not MODES[mode][1]:
        env["DIFFPRUNE_MALLOC"] = "default"
    out = subprocess.run([sys.executable, "-m", "benchmarks.speed_targets", "--worker", mode, "--timesteps",
                          str(args.timesteps), "--threads", str(args.threads)] + (["--profile"] if profile else []),
                         cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# -------------------------------------------------------------------------------------------------- same output
def same_output(timesteps: int) -> dict:
    """Diff-Pruning's kept channels with the pass in channels-last order and in the contiguous order."""
    import copy

    import pruning.api
    from diffusion.schedule import DiffusionConfig, Schedule
    from pruning.gradients import accumulate_gradients

    teacher, x0 = load_teacher(), gradient_images()
    schedule = Schedule(DiffusionConfig(loss_reduction="sum"))
    kept = {}
    for cl in (True, False):
        # pruning.prune takes no memory-order option (the result does not depend on it): swap its pass for one run
        pruning.api.accumulate_gradients = functools.partial(accumulate_gradients, channels_last=cl)
        try:
            _, report = pruning.api.prune(copy.deepcopy(teacher), teacher.example_inputs(), method="diff-pruning",
                                          ratio=0.3, thr=0.05, data=x0, max_timesteps=timesteps, progress=False,
                                          schedule=schedule)
        finally:
            pruning.api.accumulate_gradients = accumulate_gradients
        kept[cl] = report.kept
    differing = [f"{layer}.{role}" for layer, roles in kept[True].items() for role, k in roles.items()
                 if not _same(k, kept[False][layer][role])]
    return {"timesteps": timesteps, "layers_compared": sum(len(r) for r in kept[True].values()),
            "layers_differing": differing, "same": not differing}


def _same(a, b) -> bool:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return a.shape == b.shape and bool((a == b).all())


# --------------------------------------------------------------------------------------------------- end to end
def end_to_end(flops_t: float, peak: float, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], env=env, check=True)
    startup = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run([sys.executable, "prune.py", "--out", out], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        report = json.loads(next(Path(out).rglob("report.json")).read_text())
    computed = len(report["timestep_losses"])
    settings = report["settings"]
    grid_flops = 2 * settings["num_samples"] * settings["sample_steps"] * (report["macs_full_before"]
                                                                            + report["macs_full_after"])
    floor = (computed * flops_t + grid_flops) / (peak * 1e9)
    return {"wall_s": wall, "inside_script_s": report["seconds_total"], "seconds": report.get("seconds"),
            "user_s": after.ru_utime - before.ru_utime, "system_s": after.ru_stime - before.ru_stime,
            "peak_rss_gb": after.ru_maxrss / 2 ** 20, "timesteps_computed": computed,
            "timesteps_kept": report["kept_timesteps"]["count"], "arithmetic_floor_s": floor,
            "wall_over_floor": wall / floor, "startup_import_torch_s": startup,
            "params_after": report.get("params_after"), "macs_full_after": report["macs_full_after"]}


# ------------------------------------------------------------------------------------------------- pruned speed
PRUNED_MODES = {"default": ["--channels-last", "off", "--allocator", "default"],
                "deployment": ["--channels-last", "on", "--allocator", "retained"]}


def pruned_speed(threads: int, repeats: int) -> dict:
    """benchmarks/latency.py's cifar10 rows (dense, ratio 0.3, ratio 0.5; batch 16 and 64) per mode."""
    out = {}
    for mode, flags in PRUNED_MODES.items():
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            if mode == "default":
                env["DIFFPRUNE_MALLOC"] = "default"
            subprocess.run([sys.executable, "-m", "benchmarks.latency", "--device", "cpu", "--models", "cifar10",
                            "--batch-sizes", "16", "64", "--threads", str(threads), "--repeats", str(repeats),
                            "--warmup", "2", "--out-dir", tmp, *flags], cwd=ROOT, env=env, check=True,
                           stdout=subprocess.DEVNULL)
            rows = json.loads(next(Path(tmp).glob("latency_cpu*.json")).read_text())["rows"]
        out[mode] = [{k: r[k] for k in ("model", "batch", "median_ms", "iqr_ms", "speed_up", "mac_ratio",
                                        "speed_up_over_mac_ratio")} for r in rows]
        print(f"pruned speed, {mode}: " + ", ".join(f"{r['model']}/b{r['batch']} {r['speed_up_over_mac_ratio']:.2f}"
                                                     for r in out[mode] if r["model"] != "dense"), flush=True)
    return out


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main(args: argparse.Namespace) -> dict:
    name = "speed_targets" + (f"_{args.tag}" if args.tag else "")
    out = RESULTS / f"{name}.json"
    if out.exists():
        raise SystemExit(f"{out} exists: give another --tag (results are never overwritten)")
    result = {"benchmark": "speed_targets", "command": "python -m benchmarks.speed_targets " + " ".join(args.argv),
              "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_before": load_average(),
              "machine": {"cpu": cpu_model(), "nproc": os.cpu_count(), "threads": args.threads,
                          "torch": torch.__version__, "python": platform.python_version()}}
    result["matmul"] = matmul_peak(args.threads)
    peak = result["matmul"]["peak_gflops"]
    if args.pruned:
        result["pruned"] = pruned_speed(args.threads, args.pruned_repeats)
    flops_t = flops_per_timestep(load_teacher())
    result["flops_per_timestep"] = flops_t
    modes = [m for m in MODES if args.compile or not MODES[m][2]]
    times, warmups = {mode: [] for mode in modes}, {mode: [] for mode in modes}
    for r in range(args.rounds):
        for mode in modes:
            w = run_worker(mode, args)
            times[mode].append(w["seconds_per_timestep"])
            warmups[mode].append(w["warmup_s"])
            print(f"round {r + 1}: {mode:<14} {times[mode][-1]:.3f} s per timestep", flush=True)
    result["modes"] = {mode: {"seconds_per_timestep": t, "median_s": statistics.median(t),
                              "warmup_s": statistics.median(warmups[mode]),
                              "gflops": flops_t / statistics.median(t) / 1e9,
                              "fraction_of_peak": flops_t / statistics.median(t) / 1e9 / peak}
                       for mode, t in times.items()}
    if args.profile:
        result["profile_after"] = run_worker("after", args, profile=True)["profile"]
    torch.set_num_threads(args.threads)
    result["same_output"] = same_output(args.same_output_timesteps)
    if args.end_to_end:
        result["end_to_end"] = end_to_end(flops_t, peak, args.threads)
    result["load_after"] = load_average()
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(render(result))
    print(render(result))
    return result


def render(r: dict) -> str:
    peak = r["matmul"]["peak_gflops"]
    lines = [f"`{r['command']}` ({r['started']}; {r['machine']['cpu']}, {r['machine']['threads']} threads, torch "
             f"{r['machine']['torch']}; load average before {r['load_before']}, after {r['load_after']})", "",
             f"fp32 peak: {peak:.0f} GFLOP/s (best torch.mm of n = "
             + ", ".join(f"{n}: {g:.0f}" for n, g in r["matmul"]["gflops_by_size"].items()) + ")", "",
             *_render_pruned(r),
             f"Gradient pass, embedded default, batch {BATCH}, micro-batch {MICRO_BATCH}; "
             f"{r['flops_per_timestep'] / 1e9:.1f} GFLOP per timestep:", "",
             "| mode | s per timestep (median) | runs | GFLOP/s | of peak | warm-up s |", "|---|---|---|---|---|---|"]
    for mode, m in r["modes"].items():
        runs = ", ".join(f"{t:.3f}" for t in m["seconds_per_timestep"])
        warm = f"{m['warmup_s']:.1f}" if "warmup_s" in m else "-"  # results written before the column existed
        lines.append(f"| {mode} | {m['median_s']:.3f} | {runs} | {m['gflops']:.0f} | {m['fraction_of_peak']:.0%} "
                     f"| {warm} |")
    if "profile_after" in r:
        p = r["profile_after"]
        lines += ["", f"Profile of one timestep, mode 'after' (self CPU time, {p['total_s']:.2f} s in all): "
                  + ", ".join(f"{k} {v / p['total_s']:.0%}" for k, v in sorted(p["seconds_by_kind"].items(),
                                                                               key=lambda kv: -kv[1]))
                  + f". Convolutions: forward {p['conv_forward_gflops']:.0f} GFLOP/s "
                  f"({p['conv_forward_gflops'] / peak:.0%} of peak), backward {p['conv_backward_gflops']:.0f} "
                  f"GFLOP/s ({p['conv_backward_gflops'] / peak:.0%})."]
    s = r["same_output"]
    lines += ["", f"Same output ({s['timesteps']} timesteps, Diff-Pruning 0.3): kept channels "
              + ("identical in all" if s["same"] else f"DIFFER in {len(s['layers_differing'])} of")
              + f" {s['layers_compared']} layer roles, channels-last on vs off."]
    if "end_to_end" in r:
        e = r["end_to_end"]
        lines += ["", f"`python prune.py`: {e['wall_s']:.1f} s wall ({e['inside_script_s']:.1f} s inside the script; "
                  f"{e['user_s']:.0f} s user + {e['system_s']:.0f} s system CPU; peak RSS {e['peak_rss_gb']:.2f} GB), "
                  f"{e['timesteps_computed']} timesteps computed ({e['timesteps_kept']} kept). Arithmetic floor at "
                  f"{peak:.0f} GFLOP/s: {e['arithmetic_floor_s']:.1f} s, so **{e['wall_over_floor']:.2f}x the "
                  f"floor**; start-up (`python -c \"import torch\"`) {e['startup_import_torch_s']:.1f} s."]
    return "\n".join(lines) + "\n"


def _render_pruned(r: dict) -> list[str]:
    if "pruned" not in r:
        return []
    lines = ["Pruned cifar10 U-Net (magnitude, local rule), speed-up / MAC ratio (1.0: as fast as the MACs say); "
             "modes: default = contiguous, glibc malloc as it comes; deployment = channels-last + retained "
             "allocator:", "", "| model | MAC ratio | " + " | ".join(f"{m} b{b}" for m in r["pruned"] for b in (16, 64))
             + " |", "|---|---|" + "---|" * 2 * len(r["pruned"])]
    first = next(iter(r["pruned"].values()))
    for name in [row["model"] for row in first if row["batch"] == 16 and row["model"] != "dense"]:
        cells = []
        for rows in r["pruned"].values():
            for b in (16, 64):
                row = next(x for x in rows if x["model"] == name and x["batch"] == b)
                cells.append(f"{row['speed_up_over_mac_ratio']:.2f} ({row['speed_up']:.2f}x)")
        ratio = next(x for x in first if x["model"] == name)["mac_ratio"]
        lines.append(f"| {name} | {ratio:.3f} | " + " | ".join(cells) + " |")
    dense = {m: {b: next(x for x in rows if x["model"] == "dense" and x["batch"] == b)["median_ms"] for b in (16, 64)}
             for m, rows in r["pruned"].items()}
    lines += ["", "Dense forward, median ms: " + "; ".join(f"{m} b16 {d[16]:.0f}, b64 {d[64]:.0f}"
                                                          for m, d in dense.items()) + ".", ""]
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the modes")
    p.add_argument("--timesteps", type=int, default=6, help="timed timesteps per mode and round")
    p.add_argument("--same-output-timesteps", type=int, default=24)
    p.add_argument("--end-to-end", action="store_true", help="also time `python prune.py` against its floor")
    p.add_argument("--tag", default="")
    p.add_argument("--pruned", action="store_true", help="also the pruned cifar10 speed-up against the MAC ratio")
    p.add_argument("--pruned-repeats", type=int, default=12)
    p.add_argument("--profile", action="store_true",
                   help="also profile one timestep of the 'after' mode by op kind (torch.profiler)")
    p.add_argument("--compile", action="store_true",
                   help="also the 'compiled' mode: 'after' with torch.compile of the U-Net (its warm-up compiles, "
                        "minutes on CPU)")
    p.add_argument("--worker", choices=tuple(MODES), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    small = {k: v for k, v in (("--threads", args.threads), ("--rounds", args.rounds), ("--timesteps", args.timesteps),
                               ("--same-output-timesteps", args.same_output_timesteps),
                               ("--pruned-repeats", args.pruned_repeats)) if v < 1}
    if small:
        p.error(f"these must be at least 1: {small}")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


if __name__ == "__main__":
    a = parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a.timesteps, a.threads, a.profile)))
    else:
        main(a)
