"""Timing helpers of the speed benchmarks: variants timed in turn (so a busy machine slows them alike and
their ratios stay meaningful), one-shot timings, and the load average recorded next to every figure."""
from __future__ import annotations

import os
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Callable

import torch


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])  # 1, 5 and 15 minute averages
    except OSError:
        return "unknown"


def interleaved(fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int) -> dict[str, dict]:
    """Median and min seconds of each fn (and every run's seconds), the fns run in turn (A, B, ..., A, B, ...)
    after ``warmup`` rounds."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            start = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - start)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "runs": len(v), "times_s": [round(x, 4) for x in v]}
            for k, v in times.items()}


def timed_once(f: Callable[[], object]) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def machine(device: torch.device) -> dict:
    """What ran a timing: the CPU, torch's threads and versions, the time; on CUDA the GPU, TF32 and SDPA settings."""
    info = {"device": device.type, "cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "when_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(),
                    # fp32 convolutions run as TF32 on Ampere and later unless this is off: part of what "fp32" means
                    tf32={"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
                    sdpa_backends={k: getattr(torch.backends.cuda, f"{k}_sdp_enabled")()
                                   for k in ("flash", "mem_efficient", "math", "cudnn")
                                   if hasattr(torch.backends.cuda, f"{k}_sdp_enabled")})
    return info


def device_slug(device: torch.device) -> str:
    """"cpu", or "cuda-" and the GPU's name in lower case ("cuda-nvidia-h100-80gb-hbm3")."""
    if device.type != "cuda":
        return device.type
    return "cuda-" + re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
