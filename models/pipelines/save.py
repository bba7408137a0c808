"""Writing a ``Pipeline`` as a pipeline folder that ``load_pipeline`` (and, for dense networks, diffusers) reads.

    save_pipeline(load_single_file("model.ckpt", config="ldm-cin256-v2"), "cin256-v2")   # convert once
    save_component(pruned_unet, "runs/prune/00004-unet-magnitude/unet")                 # one component folder

The layout is diffusers': model_index.json, one folder per component with config.json and
``diffusion_pytorch_model.safetensors`` (transformers' ``model.safetensors`` for the CLIP text towers),
tokenizer/ as vocab.json + merges.txt + tokenizer_config.json, scheduler/scheduler_config.json.
A pruned U-Net (per-layer widths or removed units, which diffusers' config cannot express) is written with
its own config under ``_diffprune_config`` in unet/config.json: this project loads it, diffusers does not.
Nothing is overwritten: an existing non-empty folder is an error, and the folder is written under a
temporary name and renamed into place only when complete.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from models.pipelines.pipeline import SCHEDULER_FILE, Pipeline

DIFFPRUNE_CONFIG = "_diffprune_config"
# model_index.json's _class_name: diffusers' pipeline of each kind (the kind itself is re-derived on loading).
PIPELINE_CLASSES = {"sd1": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline",
                    "sdxl": "StableDiffusionXLPipeline", "ldm": "LDMPipeline"}


def component_config(module: nn.Module) -> tuple[dict[str, Any], str]:
    """(config.json dict, weight file name) of one module."""
    name = type(module).__name__
    config = module.config
    if name == "UNet2DConditionModel":
        if config.widths or config.removed:
            return {"_class_name": name, DIFFPRUNE_CONFIG: config.to_dict()}, "diffusion_pytorch_model.safetensors"
        return config.to_diffusers(), "diffusion_pytorch_model.safetensors"
    if name == "AutoencoderKL":
        return {"_class_name": name, **config.to_diffusers_config()}, "diffusion_pytorch_model.safetensors"
    if name in ("VQModel", "ClassEmbedder"):
        import dataclasses
        d = config.to_dict() if hasattr(config, "to_dict") else dataclasses.asdict(config)
        return {**d, "_class_name": name}, "diffusion_pytorch_model.safetensors"
    if name in ("CLIPTextModel", "CLIPTextModelWithProjection"):
        return {**config.to_dict(), "architectures": [name], "model_type": "clip_text_model"}, "model.safetensors"
    raise ValueError(f"cannot save a {name}: supported are UNet2DConditionModel, AutoencoderKL, VQModel, "
                     f"ClassEmbedder, CLIPTextModel, CLIPTextModelWithProjection")


def _write_tokenizer(tokenizer, folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(tokenizer.vocab, ensure_ascii=False), encoding="utf-8")
    merges = sorted(tokenizer.ranks, key=tokenizer.ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": tokenizer.model_max_length,
        "bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token,
        "unk_token": tokenizer.unk_token}))


def _refuse_nonempty(folder: Path) -> None:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(f"{folder} exists and is not an empty folder: nothing is overwritten")


def _empty_target(folder: Path) -> Path:
    """The temporary folder to write ``folder`` under (fresh); an existing non-empty ``folder`` is an error."""
    _refuse_nonempty(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)  # what an interrupted earlier save left behind
    tmp.mkdir(parents=True)
    return tmp


def _write_module(module: nn.Module, sub: Path, config: dict[str, Any], weights: str) -> None:
    sub.mkdir(exist_ok=True)
    (sub / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}, sub / weights)


def _move_into_place(tmp: Path, folder: Path) -> None:
    if folder.exists():
        folder.rmdir()  # empty (checked by _empty_target)
    os.replace(tmp, folder)


def save_component(module: nn.Module, folder: str | os.PathLike) -> Path:
    """Write one module as a component folder (config.json + weights, as in a pipeline folder's unet/) that
    ``load_component`` reads back; a pruned U-Net's config under ``_diffprune_config``. Returns the folder."""
    folder = Path(folder)
    config, weights = component_config(module)  # unsupported: fails before writing
    tmp = _empty_target(folder)
    try:
        _write_module(module, tmp, config, weights)
        _move_into_place(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def save_pipeline(pipe: Pipeline, folder: str | os.PathLike) -> Path:
    """Write ``pipe`` to ``folder`` (module docstring); returns the folder."""
    folder = Path(folder)
    _refuse_nonempty(folder)  # before the configs, as before; _empty_target checks again just before writing
    configs = {name: component_config(m) for name, m in pipe.modules().items()}  # unsupported: fails before writing
    autoencoder = "vqvae" if type(pipe.vae).__name__ == "VQModel" else "vae"
    tmp = _empty_target(folder)
    try:
        index: dict[str, Any] = {"_class_name": PIPELINE_CLASSES[pipe.kind] if pipe.class_embedder is None
                                 else "LDMClassConditionalPipeline",
                                 "scheduler": ["diffusers", pipe.scheduler.get("_class_name")]}
        if pipe.kind == "sdxl":
            index["force_zeros_for_empty_prompt"] = pipe.force_zeros_for_empty_prompt
        for name, module in pipe.modules().items():
            sub = autoencoder if name == "vae" else name
            config, weights = configs[name]
            _write_module(module, tmp / sub, config, weights)
            index[sub] = ["diffprune" if name == "class_embedder" else
                          "transformers" if name.startswith("text_encoder") else "diffusers", config["_class_name"]
                          if "_class_name" in config else config["architectures"][0]]
        for name in ("tokenizer", "tokenizer_2"):
            if getattr(pipe, name) is not None:
                _write_tokenizer(getattr(pipe, name), tmp / name)
                index[name] = ["transformers", "CLIPTokenizer"]
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / SCHEDULER_FILE).write_text(json.dumps(pipe.scheduler, indent=2))
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
        _move_into_place(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
