"""Loading a full-size U-Net from a diffusers folder: time against reading the file, and peak memory.

    python -m benchmarks.load_speed                         # SD-v1.5's U-Net (859.5M params, 3.4 GB fp32)
    python -m benchmarks.load_speed --preset bk-sdm-small --keep /tmp/bk-sdm-small-unet

Writes a random-weight U-Net folder (config.json + diffusion_pytorch_model.safetensors) of the preset once
(``--keep`` reuses it), then, each in a fresh subprocess so that memory is measured from zero:
  read      the file's bytes read into memory (Python ``read()``), the floor any loader pays;
  load      ``models.pipelines.load_component(folder)``: meta-device build, names/shapes checked, tensors
            adopted from the memory-mapped file (pages are read when first touched);
  load+use  ``load`` and then every weight read once (a sum over all parameters), which pages in the file.
Prints seconds and peak RSS (VmHWM) / anonymous RSS (RssAnon, memory not backed by the file) for each, and
writes benchmarks/results/load_speed.json. Times depend on the page cache (the file was just written, so
it is usually cached) and on the machine's load: report both with the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "load_speed.json"

_CHILD = r"""
import json, sys, time, torch
mode, folder = sys.argv[1], sys.argv[2]
start = time.perf_counter()
if mode == "read":
    with open(folder + "/diffusion_pytorch_model.safetensors", "rb") as f:
        data = f.read()
else:
    from models.pipelines.component import load_component
    unet = load_component(folder)
    if mode == "load+use":
        with torch.no_grad():
            total = sum(float(p.sum()) for p in unet.parameters())
seconds = time.perf_counter() - start
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({"seconds": seconds, "peak_rss_gb": int(status["VmHWM"].split()[0]) / 2**20,
                  "anon_rss_gb": int(status["RssAnon"].split()[0]) / 2**20}))
"""


def write_folder(preset: str, folder: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from models.sd.presets import DIFFUSERS_CONFIGS, preset as get_preset
    from models.sd.unet import UNet2DConditionModel
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(get_preset(preset))
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text(json.dumps({**DIFFUSERS_CONFIGS[preset], "_class_name": "UNet2DConditionModel"}))


def main(preset: str, keep: str | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(keep) if keep else Path(tmp) / "unet"
        if not (folder / "diffusion_pytorch_model.safetensors").is_file():
            write_folder(preset, folder)
        size_gb = (folder / "diffusion_pytorch_model.safetensors").stat().st_size / 2**30
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        result = {"preset": preset, "file_gb": size_gb, "load_average": os.getloadavg()[0], "cpus": os.cpu_count()}
        for mode in ("read", "load", "load+use"):
            out = subprocess.run([sys.executable, "-c", _CHILD, mode, str(folder)], capture_output=True, text=True,
                                 env=env, check=True).stdout
            result[mode] = json.loads(out.strip().splitlines()[-1])
            r = result[mode]
            print(f"{mode:9s} {r['seconds']:7.2f} s   peak RSS {r['peak_rss_gb']:.2f} GB   anon RSS "
                  f"{r['anon_rss_gb']:.2f} GB   (file {size_gb:.2f} GB)")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"load average {result['load_average']:.1f} on {result['cpus']} CPUs; wrote {OUT}")
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="sd-v1.5", help="a models/sd/presets.py name [default: sd-v1.5]")
    p.add_argument("--keep", default=None, help="folder to write the random U-Net to once and reuse")
    a = p.parse_args()
    main(a.preset, a.keep)
