"""models/pipelines/save.py: a Pipeline written as a folder loads back to the same weights and images, a pruned
U-Net included, and nothing is overwritten."""
from __future__ import annotations

import json

import pytest
import torch

from models.pipelines import load_pipeline
from models.pipelines.save import save_pipeline
from models.pipelines.text_to_image import Request, generate
from tiny_pipeline import write_tiny_pipeline


def _same_weights(a, b):
    for name, module in a.modules().items():
        other = getattr(b, name).state_dict()
        for k, v in module.state_dict().items():
            torch.testing.assert_close(other[k], v, atol=0, rtol=0)


@pytest.mark.parametrize("kind", ["sd1", "sdxl", "cin"])
def test_save_and_load_back(tmp_path, kind):
    kw = {"sd1": {}, "sdxl": {"sdxl": True}, "cin": {"text": False, "vq": True, "class_embedder": True}}[kind]
    pipe = load_pipeline(write_tiny_pipeline(tmp_path / "orig", **kw))
    back = load_pipeline(save_pipeline(pipe, tmp_path / "saved"))
    assert back.kind == pipe.kind and back.num_classes == pipe.num_classes
    _same_weights(pipe, back)
    if pipe.tokenizer is not None:
        assert torch.equal(back.tokenizer(["red circle"]), pipe.tokenizer(["red circle"]))
    request = Request(prompt="" if kind == "cin" else "red circle", class_label=3 if kind == "cin" else None,
                      guidance_scale=2.0, steps=2, height=16, width=16)
    torch.testing.assert_close(generate(back, request, [0]), generate(pipe, request, [0]), atol=0, rtol=0)


def test_a_pruned_unet_round_trips(tmp_path):
    import dataclasses

    from models.sd.unet import UNet2DConditionModel
    from models.sd.wiring import removable_units
    pipe = load_pipeline(write_tiny_pipeline(tmp_path / "orig"))
    config = pipe.unet.config
    pruned = UNet2DConditionModel(config.with_removed([u for u in removable_units(config) if ".resnets." in u][:1]))
    pipe = dataclasses.replace(pipe, unet=pruned.eval())
    folder = save_pipeline(pipe, tmp_path / "pruned")
    assert "_diffprune_config" in json.loads((folder / "unet" / "config.json").read_text())
    back = load_pipeline(folder)
    assert back.unet.config == pruned.config
    _same_weights(pipe, back)


def test_nothing_is_overwritten(tmp_path):
    pipe = load_pipeline(write_tiny_pipeline(tmp_path / "orig"))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="nothing is overwritten"):
        save_pipeline(pipe, tmp_path / "taken")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_model_index_names_diffusers_pipeline_classes(tmp_path):
    pipe = load_pipeline(write_tiny_pipeline(tmp_path / "orig", sdxl=True))
    index = json.loads((save_pipeline(pipe, tmp_path / "xl") / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline" and index["force_zeros_for_empty_prompt"] is True
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
