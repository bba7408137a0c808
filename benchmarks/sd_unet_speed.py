"""Benchmark: the SD-v1.5-size conditional U-Net forward (models/sd) on this machine, beside diffusers'.

    python -m benchmarks.sd_unet_speed                                   # ours only (the project environment)
    /work/refenv/bin/python -m benchmarks.sd_unet_speed     # + diffusers' UNet2DConditionModel

What it does, in one process:

1. Builds the U-Net of a preset (default sd-v1.5: 859.5M params) with random weights. Where ``diffusers`` is
   importable (optional; never a project requirement) it builds diffusers' ``UNet2DConditionModel`` from the
   same ``config.json`` dict, and loads THAT network's random state dict into ours unchanged (same tensor
   names): the parity check then compares the two outputs for one input, |ours - ref|max / |ref|max <= 1e-4.
   Both networks share the weight tensors (``load_state_dict(assign=True)``), so memory holds one copy.
2. Times forward passes (eval, ``torch.inference_mode``, float32, 64x64 latents, 77 text tokens) at each
   --batch-sizes entry for each --modes entry, all modes run interleaved (A, B, C, A, B, C, ...) after
   --warmup rounds; the median and min of --repeats runs are reported, with /proc/loadavg before and after.
   Modes: ``eager`` (the default path), ``channels_last`` and ``bf16`` (autocast) and ``channels_last+bf16``
   (the opt-in modes of models/runtime.py, through its Runner), and ``diffusers`` (its default attention
   processor, fp32, contiguous), skipped with the reason when it is not importable.

Results go to benchmarks/results/sd_unet_speed.json (or --out). Load from other processes slows every mode
alike because they are interleaved: the ratios are the meaningful figures on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks.timing import interleaved, loadavg
from models.runtime import Runner, RuntimeOptions
from models.sd import UNet2DConditionModel, UNetConditionConfig
from models.sd.presets import DIFFUSERS_CONFIGS

ROOT = Path(__file__).resolve().parents[1]
MODES = ("eager", "diffusers", "channels_last", "bf16", "channels_last+bf16")
PARITY_RTOL = 1e-4


class Conditioned(nn.Module):
    """``unet(x, t, encoder_hidden_states=ctx)`` as a two-argument module, so that models/runtime.Runner (which
    calls ``model(x, t)``) applies its memory-format and autocast options to the conditional U-Net."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet
        self.ctx: torch.Tensor | None = None  # set per batch size; an attribute, not a buffer (never converted)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=self.ctx)


def build_models(diffusers_config: dict, seed: int) -> tuple[dict, object, str]:
    """(state dict, diffusers model or None, why not / diffusers version). With diffusers, the state dict is the
    reference network's random initialisation; without, ours (torch's default initialisation)."""
    torch.manual_seed(seed)
    try:
        import diffusers
        from diffusers import UNet2DConditionModel as Reference
    except ImportError as e:
        ours = UNet2DConditionModel(UNetConditionConfig.from_diffusers(diffusers_config)).eval()
        return ours.state_dict(), None, f"diffusers not importable ({e.__class__.__name__}); comparison skipped"
    ref = Reference(**{k: v for k, v in diffusers_config.items() if not k.startswith("_")}).eval()
    return ref.state_dict(), ref, f"diffusers {diffusers.__version__}"


def ours_with(state_dict: dict, config: UNetConditionConfig) -> UNet2DConditionModel:
    """Our U-Net holding ``state_dict``'s tensors themselves (no copy): built on the meta device, then assigned."""
    with torch.device("meta"):
        model = UNet2DConditionModel(config)
    model.load_state_dict(state_dict, strict=True, assign=True)  # diffusers' names, unchanged
    return model.eval()


def parity(ours: nn.Module, ref: nn.Module, config: UNetConditionConfig, latent: int, tokens: int) -> dict:
    """max |ours - ref| over one input (batch 1: a full-size forward is a minute on a busy 2-core CPU),
    absolute and relative to max |ref|."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, config.in_channels, latent, latent, generator=g)
    ctx = torch.randn(1, tokens, config.cross_attention_dim[0], generator=g)
    t = torch.tensor([700])
    with torch.inference_mode():
        a = ours(x, t, encoder_hidden_states=ctx)
        b = ref(x, t, encoder_hidden_states=ctx).sample
    diff, scale = (a - b).abs().max().item(), b.abs().max().item()
    return {"max_abs_diff": diff, "max_abs_ref": scale, "relative": diff / scale, "ok": diff <= PARITY_RTOL * scale}


def run(diffusers_config: dict, *, batch_sizes: list[int], modes: list[str], repeats: int, warmup: int,
        latent: int = 64, tokens: int = 77, seed: int = 0) -> dict:
    """Parity and timings (module docstring); returns the JSON-ready result dict."""
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise ValueError(f"unknown --modes {unknown}; known: {list(MODES)}")
    config = UNetConditionConfig.from_diffusers(diffusers_config)  # unsupported configs fail here, before any work
    state_dict, ref, reference = build_models(diffusers_config, seed)
    result: dict = {"machine": machine(), "reference": reference, "latent": latent, "tokens": tokens,
                    "params": sum(v.numel() for v in state_dict.values()), "batches": {}}
    runners = {}
    for mode in modes:
        if mode == "diffusers":
            continue
        options = RuntimeOptions(channels_last="channels_last" in mode, bf16="bf16" in mode)
        # channels_last converts the conv weights of its own module (new storage); the others share tensors.
        runners[mode] = Runner(Conditioned(ours_with(state_dict, config)), options)
    if ref is not None:
        result["parity"] = parity(runners[modes[0]].model.unet if runners else ours_with(state_dict, config), ref,
                                  config, latent, tokens)
        print(f"parity with {reference}: max |diff| {result['parity']['max_abs_diff']:.3g} "
              f"(relative {result['parity']['relative']:.2g}): {'OK' if result['parity']['ok'] else 'FAILED'}")
    for B in batch_sizes:
        g = torch.Generator().manual_seed(B)
        x = torch.randn(B, config.in_channels, latent, latent, generator=g)
        ctx = torch.randn(B, tokens, config.cross_attention_dim[0], generator=g)
        t = torch.full((B,), 500)
        fns = {}
        for mode in modes:
            if mode == "diffusers":
                if ref is not None:
                    fns[mode] = (lambda: ref(x, t, encoder_hidden_states=ctx).sample)
            else:
                runners[mode].model.ctx = ctx
                fns[mode] = (lambda r=runners[mode]: r(x, t))
        before = loadavg()
        with torch.inference_mode():
            times = interleaved(fns, repeats=repeats, warmup=warmup)
        entry = {"loadavg_before": before, "loadavg_after": loadavg(), "times": times}
        if "diffusers" in times and "eager" in times:
            entry["eager_over_diffusers"] = times["eager"]["median_s"] / times["diffusers"]["median_s"]
        result["batches"][str(B)] = entry
        print(f"batch {B} (loadavg {before} -> {entry['loadavg_after']}):")
        for mode, tm in times.items():
            print(f"  {mode:<20} median {tm['median_s']:.3f} s  min {tm['min_s']:.3f} s  ({B / tm['median_s']:.3f} latents/s)")
    return result


def render(result: dict) -> str:
    """The result as a markdown table: per batch size and mode, median / min seconds, latents/s, and the time
    relative to our eager fp32 forward (below 1 = faster), with the load average around each batch."""
    lines = ["| batch | mode | median s | min s | latents/s | time vs eager | loadavg before -> after |",
             "|---|---|---|---|---|---|---|"]
    for B, entry in result["batches"].items():
        eager = entry["times"].get("eager", {}).get("median_s")
        for mode, tm in entry["times"].items():
            rel = f"{tm['median_s'] / eager:.3f}" if eager else "-"
            lines.append(f"| {B} | {mode} | {tm['median_s']:.2f} | {tm['min_s']:.2f} | {int(B) / tm['median_s']:.3f} | "
                         f"{rel} | {entry['loadavg_before']} -> {entry['loadavg_after']} |")
    return "\n".join(lines)


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "when_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="sd-v1.5", choices=sorted(DIFFUSERS_CONFIGS))
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--latent", type=int, default=64, help="latent height = width (64: SD-v1.5's 512 px images)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sd_unet_speed.json",
                   help="result JSON; an existing file is never overwritten (a numbered sibling is written)")
    return p.parse_args(argv)


def free_path(path: Path) -> Path:
    """``path``, or ``name_1.json``, ``name_2.json``, ... where it exists: results are never overwritten."""
    i, candidate = 0, path
    while candidate.exists():
        i += 1
        candidate = path.with_name(f"{path.stem}_{i}{path.suffix}")
    return candidate


def main(args: argparse.Namespace) -> dict:
    out = free_path(args.out)
    result = run(DIFFUSERS_CONFIGS[args.preset], batch_sizes=args.batch_sizes, modes=args.modes,
                 repeats=args.repeats, warmup=args.warmup, latent=args.latent)
    result["command"] = "python -m benchmarks.sd_unet_speed " + " ".join(sys.argv[1:])
    result["preset"] = args.preset
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(render(result))
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    if result.get("parity", {}).get("ok") is False:
        raise SystemExit("parity check FAILED: our U-Net does not compute diffusers' output")
    return result


if __name__ == "__main__":
    main(parse_args())
