"""diffprune's text-to-image path against diffusers' own pipelines, end to end, on tiny random-weight folders.

NEEDS THE REFERENCE ENVIRONMENT (diffusers + transformers installed); run from the repository root:
    /path/to/refenv/bin/python -m benchmarks.compare_pipelines
Writes two tiny pipeline folders (tests/tiny_pipeline.py: SD-1 style and SDXL style), generates 2 images
with each scheduler (3 steps, guidance 3, a negative prompt, 16x16) with models/pipelines and with
diffusers' StableDiffusionPipeline / StableDiffusionXLPipeline from the same initial latents, and prints
and saves (benchmarks/results/pipelines_vs_diffusers.json) the largest absolute pixel difference.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "pipelines_vs_diffusers.json"


def main() -> None:
    import diffusers  # only in the reference environment
    from diffusion.guidance import initial_latents
    from models.pipelines import load_pipeline
    from models.pipelines.text_to_image import Request, generate
    from tests.tiny_pipeline import write_tiny_pipeline

    classes = {"ddim": diffusers.DDIMScheduler, "dpmpp_2m": diffusers.DPMSolverMultistepScheduler,
               "euler": diffusers.EulerDiscreteScheduler, "pndm": diffusers.PNDMScheduler}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, sdxl, cls in (("sd1", False, diffusers.StableDiffusionPipeline),
                                ("sdxl", True, diffusers.StableDiffusionXLPipeline)):
            folder = write_tiny_pipeline(Path(tmp) / kind, sdxl=sdxl)
            ours = load_pipeline(folder)
            extra = {} if sdxl else {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
            ref = cls.from_pretrained(folder, **extra)
            ref.set_progress_bar_config(disable=True)
            x_T = initial_latents(0, [0, 1], (4, 8, 8))
            for name, sched in classes.items():
                request = Request(prompt="red circle", negative_prompt="blue", guidance_scale=3.0, steps=3,
                                  scheduler=name, height=16, width=16)
                mine = generate(ours, request, [0, 1])
                ref.scheduler = sched.from_config(ref.scheduler.config)
                theirs = ref(["red circle"] * 2, negative_prompt=["blue"] * 2, guidance_scale=3.0, num_inference_steps=3,
                             height=16, width=16, latents=x_T.clone(), output_type="pt").images
                results[f"{kind}/{name}"] = float((mine - theirs).abs().max())
                print(f"{kind:5s} {name:9s} max |ours - diffusers| = {results[f'{kind}/{name}']:.2e} (pixels in [0, 1])")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"diffusers": diffusers.__version__, "torch": torch.__version__,
                               "max_abs_pixel_diff": results}, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
