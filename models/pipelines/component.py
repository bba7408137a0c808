"""One diffusers / transformers component folder -> the project's module, by the config's class name.

    unet = load_component("sd15/unet")                       # config.json + diffusion_pytorch_model.safetensors
    te = load_component("sd15/text_encoder", variant="fp16")  # model.fp16.safetensors

The folder's config.json names the class (``_class_name`` for diffusers, ``architectures[0]`` for
transformers). Weight files, in the order they are tried (``{v}`` = ".fp16" etc. when a variant is asked for;
without one the plain file is preferred and a lone variant file is taken):

    diffusion_pytorch_model{v}.safetensors, diffusion_pytorch_model{v}.bin          (diffusers)
    model{v}.safetensors, pytorch_model{v}.bin                                     (transformers)
    the same names + ".index.json": a sharded checkpoint

The module is built on the meta device and filled tensor by tensor (models/pipelines/weights.py).
UNet2DModel (the pixel-space DDPM U-Net) goes through the DDPM family's own loader, ``models.loading``
(the DDPM's settings and diffusers' defaults, e.g. the CompVis LDMs' flip_sin_to_cos=True, freq_shift=0,
downsample_padding=1, are ModelConfig fields; other settings are refused with one error listing them all).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from models.pipelines.weights import WeightFile, assign_weights, on_meta, open_weights

WEIGHT_STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")
TEXT_MODEL = "text_model."
# Older diffusers VAE files name the attention projections query/key/value/proj_attn (the loader of diffusers
# renames them on load; so do we). Applied only where the module has the new name and the file the old.
LEGACY_ATTENTION_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def _unet(config: dict) -> nn.Module:
    from models.sd.config import UNetConditionConfig
    from models.sd.unet import UNet2DConditionModel
    if "_diffprune_config" in config:  # a pruned U-Net (models/pipelines/save.py): this project's own config
        return UNet2DConditionModel(UNetConditionConfig.from_dict(config["_diffprune_config"]))
    return UNet2DConditionModel(UNetConditionConfig.from_diffusers(config))


def _vae(config: dict) -> nn.Module:
    from models.vae import AutoencoderKL
    return AutoencoderKL.from_diffusers_config(config)


def _vq(config: dict) -> nn.Module:
    from models.pipelines.vq_model import VQModel
    return VQModel.from_diffusers_config(config)


def _class_embedder(config: dict) -> nn.Module:
    from models.pipelines.class_embedder import ClassEmbedder, ClassEmbedderConfig
    return ClassEmbedder(ClassEmbedderConfig.from_dict(config))


def _text(with_projection: bool) -> Callable[[dict], nn.Module]:
    def build(config: dict) -> nn.Module:
        from models.clip import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
        cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
        return cls(CLIPTextConfig.from_transformers_config(config))
    return build


# class name -> builder(config dict) of the module, on whatever device is current.
BUILDERS: dict[str, Callable[[dict], nn.Module]] = {
    "UNet2DConditionModel": _unet,
    "AutoencoderKL": _vae,
    "VQModel": _vq,
    "ClassEmbedder": _class_embedder,
    "CLIPTextModel": _text(False),
    "CLIPTextModelWithProjection": _text(True),
}
DDPM_CLASSES = ("UNet2DModel",)
SUPPORTED = tuple(BUILDERS) + DDPM_CLASSES
# Tensors that a file may hold but the module computes instead: never reported as unexpected.
IGNORED_SUFFIXES = ("position_ids",)


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The folder's config.json as a dict (one-line error when absent or not JSON)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json (a diffusers/transformers component folder has one)")
    try:
        config = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: holds a {type(config).__name__}, not a JSON object")
    return config


def class_name(config: dict[str, Any]) -> str | None:
    """``_class_name`` (diffusers) or the first of ``architectures`` (transformers)."""
    if "_class_name" in config:
        return config["_class_name"]
    arch = config.get("architectures")
    return arch[0] if isinstance(arch, list) and arch else None


def weight_file(folder: str | os.PathLike, variant: str | None = None) -> Path:
    """The weight file (or shard index) of a component folder; see the module docstring for the order."""
    folder = Path(folder)
    tags = [f".{variant}"] if variant else ["", *sorted({p.suffixes[-2] for p in folder.glob("*.*.safetensors")
                                                          if len(p.suffixes) >= 2} - {".safetensors"}),
                                            *sorted({p.suffixes[-2] for p in folder.glob("*.*.bin")
                                                     if len(p.suffixes) >= 2} - {".bin"})]
    for tag in dict.fromkeys(tags):
        for stem in WEIGHT_STEMS:
            for ext in (".safetensors", ".bin"):
                for name in (f"{stem}{tag}{ext}", f"{stem}{tag}{ext}.index.json"):
                    if (folder / name).is_file():
                        return folder / name
    want = f"diffusion_pytorch_model{'.' + variant if variant else ''}.safetensors"
    raise FileNotFoundError(f"{folder}: no weight file (expected e.g. {want}, or .bin, or a transformers "
                            f"model{'.' + variant if variant else ''}.safetensors)")


def legacy_plan(module: nn.Module, source: WeightFile) -> dict:
    """Sources for module names that the file holds under other names: the older attention names
    (LEGACY_ATTENTION_NAMES), and CLIP text towers saved by transformers 5, which drop the ``text_model.``
    level (``embeddings.*``, ``encoder.*``, ``final_layer_norm.*``) that the hub's files and ours keep."""
    from models.pipelines.original_layout import Source
    plan = {}
    for name in module.state_dict().keys():
        if name in source:
            continue
        if name.startswith(TEXT_MODEL) and name[len(TEXT_MODEL):] in source:
            plan[name] = Source(name[len(TEXT_MODEL):])
            continue
        for new, old in LEGACY_ATTENTION_NAMES.items():
            marker = f".{new}."
            if marker in name:
                old_name = name.replace(marker, f".{old}.")
                if old_name in source:
                    shape = source.shape(old_name)
                    plan[name] = Source(old_name, "squeeze" if len(shape) > 2 else "copy")
    return plan


def load_component(folder: str | os.PathLike, *, variant: str | None = None,
                   dtype: torch.dtype | None = torch.float32, weights: str | os.PathLike | None = None) -> nn.Module:
    """The module of a component folder, in eval mode, with its weights (see the module docstring).

    variant: e.g. "fp16" for diffusion_pytorch_model.fp16.safetensors; dtype: the weights' dtype (None keeps
    the file's); weights: an explicit weight file instead of the folder's own.
    """
    folder = Path(folder)
    config = read_config(folder)
    name = class_name(config)
    if name in DDPM_CLASSES:
        from models.loading import load as load_ddpm
        unet = load_ddpm(folder)
        return unet if dtype is None else unet.to(dtype)
    if name not in BUILDERS:
        raise ValueError(f"{folder / 'config.json'}: class {name!r} is not supported; supported: "
                         f"{', '.join(SUPPORTED)}")
    source = open_weights(weights if weights is not None else weight_file(folder, variant))
    module = on_meta(BUILDERS[name], config)
    return assign_weights(module, legacy_plan(module, source), source, what=f"{name} of {folder / 'config.json'}",
                          dtype=dtype, ignore=IGNORED_SUFFIXES)
