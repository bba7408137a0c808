"""diffprune's text-to-image path against diffusers' own pipelines, end to end, on tiny random-weight folders.

NEEDS THE REFERENCE ENVIRONMENT (diffusers + transformers installed); run from the repository root:
    /path/to/refenv/bin/python -m benchmarks.compare_pipelines
Writes tiny pipeline folders (SD-1 style and SDXL style; once by tests/tiny_pipeline.py, once by diffusers'
and transformers' own save_pretrained), generates 2 images with each scheduler (3 steps, guidance 3, a
negative prompt, 16x16) with models/pipelines and with diffusers' StableDiffusionPipeline /
StableDiffusionXLPipeline from the same initial latents, and prints and saves
(benchmarks/results/pipelines_vs_diffusers.json) the largest absolute pixel difference.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "pipelines_vs_diffusers.json"


def diffusers_folder(folder: Path, sdxl: bool) -> Path:
    """The same tiny pipeline built from diffusers' and transformers' own classes and written by their
    ``save_pretrained`` (diffusers 0.42 / transformers 5 write CLIP weights without ``text_model.`` and the
    tokenizer as tokenizer.json only): the layout of a folder made today."""
    import diffusers
    import transformers

    from tests.tiny_pipeline import tiny_configs, write_tokenizer
    c = tiny_configs(sdxl=sdxl)
    torch.manual_seed(1)
    plain = lambda d: {k: v for k, v in d.items() if not k.startswith("_")}  # noqa: E731
    text = lambda d: transformers.CLIPTextConfig(**{k: d[k] for k in (  # noqa: E731
        "vocab_size", "hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers", "num_attention_heads",
        "max_position_embeddings", "hidden_act", "layer_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id")})
    write_tokenizer(folder / "vocab")
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab" / "vocab.json"), str(folder / "vocab" / "merges.txt"),
                                           model_max_length=16)
    parts = dict(unet=diffusers.UNet2DConditionModel(**plain(c["unet"])), vae=diffusers.AutoencoderKL(**plain(c["vae"])),
                 text_encoder=transformers.CLIPTextModel(text(c["text_encoder"])), tokenizer=tokenizer,
                 scheduler=diffusers.PNDMScheduler.from_config(c["scheduler"]))
    if sdxl:
        parts.update(text_encoder_2=transformers.CLIPTextModelWithProjection(text(c["text_encoder_2"])),
                     tokenizer_2=tokenizer)
        pipe = diffusers.StableDiffusionXLPipeline(**parts)
    else:
        pipe = diffusers.StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False)
    pipe.save_pretrained(folder / "pipe")
    return folder / "pipe"


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
            # Written by this project (tests/tiny_pipeline.py), then by diffusers itself.
            for writer in ("ours", "diffusers"):
                root = Path(tmp) / f"{kind}-{writer}"
                folder = write_tiny_pipeline(root, sdxl=sdxl) if writer == "ours" else diffusers_folder(root, sdxl)
                mine_pipe = load_pipeline(folder)
                extra = {} if sdxl else {"safety_checker": None, "feature_extractor": None,
                                         "requires_safety_checker": False}
                ref = cls.from_pretrained(folder, **extra)
                ref.set_progress_bar_config(disable=True)
                x_T = initial_latents(0, [0, 1], (4, 8, 8))
                for name, sched in classes.items():
                    request = Request(prompt="red circle", negative_prompt="blue", guidance_scale=3.0, steps=3,
                                      scheduler=name, height=16, width=16)
                    mine = generate(mine_pipe, request, [0, 1])
                    ref.scheduler = sched.from_config(ref.scheduler.config)
                    theirs = ref(["red circle"] * 2, negative_prompt=["blue"] * 2, guidance_scale=3.0,
                                 num_inference_steps=3, height=16, width=16, latents=x_T.clone(),
                                 output_type="pt").images
                    key = f"{kind}/{writer}-written/{name}"
                    results[key] = float((mine - theirs).abs().max())
                    print(f"{key:32s} max |ours - diffusers| = {results[key]:.2e} (pixels in [0, 1])")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"diffusers": diffusers.__version__, "torch": torch.__version__,
                               "max_abs_pixel_diff": results}, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
