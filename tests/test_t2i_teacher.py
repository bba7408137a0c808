"""The shipped embedded text-to-image pipeline (checkpoints/t2i_shapes): it loads with models.load, its parts are
the ones the docs name, it fits the size budget, generation is deterministic, and the teacher's colours follow
the prompt (the measured curve: benchmarks/results/t2i_teacher_curve.md)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "checkpoints" / "t2i_shapes"
PROMPTS = REPO / "data" / "prompts" / "shapes_heldout.txt"


@pytest.fixture(scope="module")
def pipe():
    from models import load

    return load(str(FOLDER))


def test_the_folder_loads_as_an_sd1_pipeline_of_the_documented_parts(pipe):
    from safetensors.torch import load_file

    assert pipe.kind == "sd1" and pipe.has_text
    assert sum(p.numel() for p in pipe.unet.parameters()) == 2_205_828  # the t2i-shapes preset
    assert pipe.unet.config.cross_attention_dim == (64,) * 3 or pipe.unet.config.cross_attention_dim == 64
    assert pipe.latent_channels == 4 and pipe.vae_scale == 2  # 32 px images, 16x16x4 latents
    clip = load_file(FOLDER / "clip" / "model.safetensors")  # the scorer's text tower IS the text encoder
    text = pipe.text_encoder.state_dict()
    for key, value in text.items():
        assert torch.equal(value, clip[key]), key
    size = sum(f.stat().st_size for f in FOLDER.rglob("*") if f.is_file())
    assert size < 30 * 2 ** 20, f"{size / 2 ** 20:.1f} MiB"


def test_generation_is_deterministic_and_batch_independent(pipe):
    from models.pipelines.text_to_image import Request, generate

    request = Request(prompt=PROMPTS.read_text().splitlines()[0], guidance_scale=5.0, steps=10, seed=3, batch_size=2)
    a = generate(pipe, request, indices=[0, 1, 2])
    b = generate(pipe, request, indices=[2])
    assert a.shape == (3, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    torch.testing.assert_close(a[2:], b, rtol=0, atol=1e-5)  # sample 2 is sample 2 in any batch


def test_the_teacher_follows_colour_words(pipe):
    """The samples' colours match their own prompts far more often than other prompts' (a control with the
    same images), so the text conditioning steers generation."""
    from metrics.t2i_shapes import ShapesMetrics
    from models.pipelines.text_to_image import Request, generate

    prompts = PROMPTS.read_text().splitlines()[:16]
    images = generate(pipe, Request(guidance_scale=5.0, steps=15, scheduler="dpmpp_2m", batch_size=16),
                      indices=range(16), prompts=prompts)
    metrics = ShapesMetrics.build(16)
    own = metrics.measure(images, prompts)["attribute_accuracy"]
    other = metrics.measure(images, prompts[1:] + prompts[:1])["attribute_accuracy"]
    assert own["colours"] >= other["colours"] + 0.25, (own, other)
