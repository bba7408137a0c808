"""NEEDS diffusers: run with the reference environment (never imported by the project or its tests).

Checks that a folder written by models/ddpm/export.save_folder from a DENSE U-Net loads in diffusers'
UNet2DModel.from_pretrained and computes the same eps, and that a channel-pruned one is refused by diffusers
(its widths are not expressible in UNet2DModel's config). Step 1 runs in the project env, step 2 in the reference:

    python -m benchmarks.check_diffusers_export write /tmp/export          # project env: writes dense/ pruned/
    /path/to/refenv/bin/python benchmarks/check_diffusers_export.py check /tmp/export
"""
import sys
from pathlib import Path

import torch


def write(out: Path) -> None:
    import models
    from models.ddpm.export import save_folder
    from pruning import prune
    torch.manual_seed(0)
    for name, dense in (("dense", True), ("pruned", False)):
        model = models.load("tiny", seed=0)
        if not dense:
            model, _ = prune(model, model.example_inputs(), method="magnitude", ratio=0.3)
        save_folder(model, out / name)
        x, t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([5, 900])
        with torch.no_grad():
            torch.save({"x": x, "t": t, "eps": model.eval()(x, t)}, out / f"{name}_answer.pt")
    print("wrote", out)


def check(out: Path) -> None:
    from diffusers import UNet2DModel
    ans = torch.load(out / "dense_answer.pt")
    unet = UNet2DModel.from_pretrained(out / "dense").eval()
    with torch.no_grad():
        eps = unet(ans["x"], ans["t"]).sample
    print(f"dense: diffusers loads it; max |eps - ours| = {(eps - ans['eps']).abs().max().item():.2e}")
    try:
        UNet2DModel.from_pretrained(out / "pruned")
        print("pruned: diffusers LOADED it (unexpected)")
    except Exception as e:  # noqa: BLE001 (any refusal is the expected outcome)
        print(f"pruned: refused by diffusers ({type(e).__name__}: {str(e).splitlines()[0][:160]})")


if __name__ == "__main__":
    {"write": write, "check": check}[sys.argv[1]](Path(sys.argv[2]))
