"""``load(source)``: any supported model source -> a ready ``UNet`` (in eval mode), in one call.

    model = load("cifar10")                                   # preset: UNTRAINED (seeded default init)
    model = load("runs/train/000-tiny/checkpoints/last.pt")   # diffprune checkpoint, EMA weights
    model = load("ddim_cifar10.ckpt", preset="cifar10")       # DDIM-codebase checkpoint
    model = load("ddpm-cifar10-32/")                          # diffusers UNet2DModel folder
    model, info = load_with_info(source)                      # + what was loaded, for scripts to print

``source`` is recognised in this order:
  1. a ``str`` that is a preset name (models.ddpm.config.PRESETS). A file named like a preset can be loaded
     as ``Path("tiny")`` or ``"./tiny"``.
  2. a Hugging Face repository id ("owner/name", e.g. google/ddpm-cifar10-32) that is not a local path:
     downloaded once into the standard cache (models/hub.py), then read as the diffusers folder it is;
     or "ddim:<name>" (e.g. ddim:ema_cifar10): the DDIM codebase's published checkpoint, MD5 checked.
  3. a folder: a diffusers UNet2DModel folder (config.json + diffusion_pytorch_model.safetensors, else
     .bin), or a diffusers pipeline folder (model_index.json) whose unet/ subfolder is one.
  4. a ``diffusion_pytorch_model.*`` file next to a config.json: that diffusers folder, with this file.
  5. any other file (torch.save or .safetensors): a diffprune checkpoint when it says so ('format':
     'diffprune', models/checkpoint.py), else a DDIM-codebase checkpoint (plain state dict, maybe with
     DataParallel's 'module.' prefix, or the list [model, optimizer, epoch, step, ema]) in DDIM or diffusers
     tensor names, whose architecture is read from the weights (models/ddpm/convert.py, infer_ddim_config).
Before 2-5, the latent family (models/pipelines/): a diffusers pipeline folder whose U-Net is not a
UNet2DModel, a UNet2DConditionModel / AutoencoderKL / VQModel / CLIP text component folder, an
original-layout SD-v1.x or CompVis LDM single file, or a known pipeline hub name (models/pipelines/hub.py)
returns a ``Pipeline`` (or that one module) instead of a DDPM ``UNet``, with ``info["format"] == "latent"``.
Every file is read with ``weights_only=True``: a pickled module (``torch.save(model)``) is refused.

Weights: the EMA weights where the source has them and ``ema=True``, else the raw ones. ``info["ema"]``
says which was loaded: True, False, or None where the source holds one set of weights of unrecorded kind.

Keyword overrides, for what a source does not store:
  preset       DDIM files: supplies image_size, norm_groups and dropout. Every format: the architecture
               must match the preset's (channels, ch_mult, blocks, attention levels, heads) or this raises.
  image_size   the same weights described for another resolution: attention stays at the same levels.
  norm_groups  presets and DDIM files: sets it. diffprune and diffusers sources store it; a different
               value is an error, because the number of GroupNorm groups changes the function.
  dropout      sets it everywhere (it changes no weight; it only matters when training).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch.torch_version import TorchVersion

from models.checkpoint import check_state_dict, is_project_checkpoint, sniff_not_torch_file, validate_checkpoint
from models.ddpm.config import PRESETS, ModelConfig, preset as get_preset
from models.ddpm.convert import (config_from_diffusers, diffusers_to_ddim, infer_ddim_config, is_diffusers_naming,
                            is_tensor_dict, topology_mismatches, unpack_ddim_checkpoint, with_image_size)
from models.ddpm.export import DIFFPRUNE_CONFIG
from models.hub import DDIM_PREFIX, HUB_URL, fetch, fetch_ddim, looks_like_hub_name
from models.ddpm.unet import UNet, count_parameters

# In the order diffusers itself prefers them.
DIFFUSERS_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
EXPECTED = ("a preset name ({presets}), a diffprune checkpoint, a DDIM-codebase checkpoint (.ckpt/.pth/.pt), "
            "a diffusers UNet2DModel folder (config.json + diffusion_pytorch_model.safetensors or .bin) "
            "or a Hugging Face repository id such as google/ddpm-cifar10-32")


def load(source: str | os.PathLike, *, ema: bool = True, preset: str | None = None, image_size: int | None = None,
         norm_groups: int | None = None, dropout: float | None = None, device: str | torch.device = "cpu",
         seed: int = 0) -> UNet:
    """The U-Net of ``source`` on ``device``, in eval mode (call ``.train()`` to fine-tune it).

    See the module docstring for the accepted sources and the meaning of each override. ``seed`` seeds
    the default init of a preset (the only source without weights); loading never moves the caller's RNG.
    """
    return load_with_info(source, ema=ema, preset=preset, image_size=image_size, norm_groups=norm_groups,
                          dropout=dropout, device=device, seed=seed)[0]


def load_with_info(source: str | os.PathLike, *, ema: bool = True, preset: str | None = None,
                   image_size: int | None = None, norm_groups: int | None = None, dropout: float | None = None,
                   device: str | torch.device = "cpu", seed: int = 0) -> tuple[UNet, dict[str, Any]]:
    """``load`` plus a dict describing what was loaded:

    format      "preset" | "diffprune" | "ddim" | "diffusers-state-dict" | "diffusers" | "diffusers-hub"
    source      the preset name or the path that was read
    ema         True (EMA weights), False (raw weights), None (one set of weights, kind not recorded)
    weights     which entry or file the weights came from, in words
    config      the ModelConfig the U-Net was built from
    notes       how every field that the source does not store was decided
    num_params  parameter count
    meta        (diffprune checkpoints only) the checkpoint's meta dict
    """
    overrides = dict(preset_name=preset, image_size=image_size, norm_groups=norm_groups, dropout=dropout)
    from models.pipelines import is_latent_source, load_latent  # the latent family (SD, LDM): models/pipelines/
    if not (isinstance(source, str) and source in PRESETS) and is_latent_source(source):
        loaded = load_latent(source).to(device)
        kind = getattr(loaded, "kind", type(loaded).__name__)
        return loaded, {"format": "latent", "source": str(source), "kind": kind, "ema": None,
                        "weights": str(source), "notes": []}
    if isinstance(source, str) and source in PRESETS:
        config, state_dict, info = _from_preset(source, seed=seed, **overrides)
    elif isinstance(source, str) and source.startswith(DDIM_PREFIX):
        path, implied = fetch_ddim(source)
        overrides["preset_name"] = overrides["preset_name"] or implied
        config, state_dict, info = _from_state_dict_file(_read_file(path), path, ema=ema, **overrides)
        info.update(source=str(source), weights=f"{info['weights']} of {path} (MD5 checked)")
    elif looks_like_hub_name(source):
        folder = fetch(source)
        config, state_dict, info = _from_diffusers(_diffusers_folder(folder), None, **overrides)
        info.update(format="diffusers-hub", source=str(source), weights=f"{info['weights']} of {HUB_URL}/{source}",
                    local_folder=str(folder))
    else:
        path = Path(source)
        if path.is_dir():
            config, state_dict, info = _from_diffusers(_diffusers_folder(path), None, **overrides)
        elif path.is_file() and path.name.startswith("diffusion_pytorch_model.") and (path.parent / "config.json").is_file():
            config, state_dict, info = _from_diffusers(path.parent, path, **overrides)
        elif path.is_file():
            obj = _read_file(path)
            if is_project_checkpoint(obj):
                config, state_dict, info = _from_project(obj, path, ema=ema, **overrides)
            else:
                config, state_dict, info = _from_state_dict_file(obj, path, ema=ema, **overrides)
        else:
            raise FileNotFoundError(f"model source {str(source)!r} is neither an existing file or folder nor a "
                                    f"preset name; expected {EXPECTED.format(presets=', '.join(sorted(PRESETS)))}")
    model = _build(config, state_dict, source=f"{info['source']} [{info['weights']}]", seed=seed, device=device)
    info.update(config=config, num_params=count_parameters(model))
    return model, info


# ----------------------------------------------------------------------------------------------- building
def _build(config: ModelConfig, state_dict: Mapping[str, torch.Tensor] | None, *, source: str, seed: int,
           device: str | torch.device) -> UNet:
    """UNet(config) with ``state_dict`` loaded (after one check that lists every misfit), eval mode."""
    # Construction draws the default init from the global RNG. A loader must not shift the caller's random
    # stream (loading a checkpoint would change the noise of a later sampling run), so it runs on a fork.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = UNet(config)
        except ValueError as e:
            raise ValueError(f"{source}: cannot build the U-Net of {config}: {e}") from e
    if state_dict is not None:
        check_state_dict(model, state_dict, source)
        model.load_state_dict(state_dict)
    return model.to(device).eval()


def _override(config: ModelConfig, *, source: str, image_size: int | None, norm_groups: int | None,
              dropout: float | None, notes: list[str]) -> ModelConfig:
    """Apply caller overrides to a config that the source STORES (diffprune, diffusers)."""
    if image_size is not None and image_size != config.image_size:
        config = with_image_size(config, image_size)
        notes.append(f"image_size={image_size} from the caller (stored: a different value; attention levels kept)")
    if norm_groups is not None and norm_groups != config.norm_groups:
        raise ValueError(f"{source}: norm_groups={norm_groups} was asked for, but the source stores "
                         f"norm_groups={config.norm_groups}; GroupNorm groups change the function")
    if dropout is not None and dropout != config.dropout:
        config = dataclasses.replace(config, dropout=dropout)
        notes.append(f"dropout={dropout} from the caller")
    return config


def _check_preset(config: ModelConfig, preset_name: str | None, source: str) -> None:
    """A preset named together with a self-describing source must describe the same architecture."""
    if preset_name is None:
        return
    problems = topology_mismatches(config, get_preset(preset_name))
    if problems:
        raise ValueError(f"{source} does not match preset {preset_name!r} (source vs preset): " + "; ".join(problems))


# ----------------------------------------------------------------------------------------------- one per format
def _from_preset(name: str, *, seed: int, preset_name: str | None, image_size: int | None,
                 norm_groups: int | None, dropout: float | None):
    if preset_name not in (None, name):
        raise ValueError(f"source is preset {name!r} but preset={preset_name!r} was also given")
    config = get_preset(name)
    if image_size is not None:
        config = with_image_size(config, image_size)
    if norm_groups is not None:
        config = dataclasses.replace(config, norm_groups=norm_groups)
    if dropout is not None:
        config = dataclasses.replace(config, dropout=dropout)
    info = {"format": "preset", "source": name, "ema": None,
            "weights": f"UNTRAINED: PyTorch default init, seed {seed}", "notes": []}
    return config, None, info


def _from_project(obj: Mapping[str, Any], path: Path, *, ema: bool, preset_name: str | None,
                  image_size: int | None, norm_groups: int | None, dropout: float | None):
    # The checks of checkpoint.read_checkpoint, on the object already in memory (a second torch.load
    # of a training checkpoint would read weights, EMA and optimizer state twice).
    validate_checkpoint(obj, path)
    if not isinstance(obj["model_config"], Mapping):
        raise ValueError(f"{path}: model_config must be a dict, found {type(obj['model_config']).__name__}")
    _check_types(obj["model_config"], f"{path}: model_config", PROJECT_INTS, PROJECT_INT_LISTS, PROJECT_NUMBERS)
    widths = obj["model_config"].get("widths", {})
    widths = widths.items() if isinstance(widths, Mapping) else widths
    for item in widths:
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and _is_int(item[1])):
            raise ValueError(f"{path}: model_config widths entry {item!r} must be a layer name and an integer width")
    try:
        config = ModelConfig.from_dict(obj["model_config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: invalid model_config: {e}") from e
    notes: list[str] = []
    config = _override(config, source=str(path), image_size=image_size, norm_groups=norm_groups, dropout=dropout,
                       notes=notes)
    _check_preset(config, preset_name, str(path))
    key = "ema_state_dict" if ema and "ema_state_dict" in obj else "state_dict"
    if ema and key == "state_dict":
        notes.append("the checkpoint has no ema_state_dict: raw weights loaded")
    info = {"format": "diffprune", "source": str(path), "ema": key == "ema_state_dict", "weights": key,
            "notes": notes, "meta": dict(obj.get("meta", {}))}
    return config, obj[key], info


def _from_state_dict_file(obj: Any, path: Path, *, ema: bool, preset_name: str | None, image_size: int | None,
                          norm_groups: int | None, dropout: float | None):
    raw, ema_sd = unpack_ddim_checkpoint(obj, source=str(path))
    if ema_sd is not None:
        state_dict, used_ema = (ema_sd, True) if ema else (raw, False)
        weights = "EMA (last list entry)" if ema else "raw model weights (first list entry)"
    elif isinstance(obj, (list, tuple)):
        state_dict, used_ema, weights = raw, False, "raw model weights (the list has no EMA entry)"
    else:
        state_dict, used_ema, weights = raw, None, "the file's single state dict"
    fmt = "ddim"
    if is_diffusers_naming(state_dict):
        fmt = "diffusers-state-dict"
        state_dict = diffusers_to_ddim(state_dict, source=str(path))
    config, notes = infer_ddim_config(state_dict, source=str(path), preset_name=preset_name,
                                      image_size=image_size, norm_groups=norm_groups, dropout=dropout)
    info = {"format": fmt, "source": str(path), "ema": used_ema, "weights": weights, "notes": notes}
    return config, state_dict, info


def _diffusers_folder(folder: Path) -> Path:
    """The folder holding the UNet2DModel config: ``folder`` itself, or a pipeline's ``unet/``."""
    if (folder / "config.json").is_file():
        return folder
    if (folder / "model_index.json").is_file() and (folder / "unet" / "config.json").is_file():
        return folder / "unet"
    raise FileNotFoundError(f"{folder} is a folder without config.json; expected a diffusers UNet2DModel folder "
                            f"(config.json + {' or '.join(DIFFUSERS_WEIGHT_FILES)}) or a pipeline folder with unet/")


def _from_diffusers(folder: Path, weights: Path | None, *, preset_name: str | None, image_size: int | None,
                    norm_groups: int | None, dropout: float | None):
    config_path = folder / "config.json"
    try:
        cfg = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {config_path}: {e}") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"{config_path}: expected a JSON object, found {type(cfg).__name__}")
    _check_types(cfg, str(config_path), DIFFUSERS_INTS, DIFFUSERS_INT_LISTS, DIFFUSERS_NUMBERS)
    if weights is None:
        weights = next((folder / n for n in DIFFUSERS_WEIGHT_FILES if (folder / n).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"{folder} has config.json but no weights: expected "
                                    f"{' or '.join(DIFFUSERS_WEIGHT_FILES)}")
    if DIFFPRUNE_CONFIG in cfg:  # written by models/ddpm/export.py: the full config, widths included
        try:
            config = ModelConfig.from_dict(cfg[DIFFPRUNE_CONFIG])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{config_path}: key {DIFFPRUNE_CONFIG!r}: {e}") from e
        notes = [f"architecture from {DIFFPRUNE_CONFIG} (this project's export, width table included)"]
        config = config if image_size is None else with_image_size(config, image_size)
    else:
        config, notes = config_from_diffusers(cfg, source=str(config_path), image_size=image_size)
    config = _override(config, source=str(config_path), image_size=None, norm_groups=norm_groups, dropout=dropout,
                       notes=notes)
    _check_preset(config, preset_name, str(folder))
    state_dict = _read_file(weights)
    if not is_tensor_dict(state_dict):
        raise ValueError(f"{weights}: expected a state dict of tensors, found {type(state_dict).__name__}")
    state_dict = diffusers_to_ddim(state_dict, source=str(weights), num_levels=len(config.ch_mult))
    notes.append("a diffusers folder holds one set of weights; whether they are EMA is not recorded")
    info = {"format": "diffusers", "source": str(folder), "ema": None, "weights": weights.name, "notes": notes}
    return config, state_dict, info


# ----------------------------------------------------------------------------------------------- field types
# Fields that must be JSON integers (a string, a fraction or null is an error naming the file and key,
# not an int() traceback or a silently truncated 2.5).
PROJECT_INTS = ("image_size", "in_channels", "out_channels", "ch", "num_res_blocks", "num_heads", "norm_groups")
PROJECT_INT_LISTS = ("ch_mult", "attn_resolutions")
PROJECT_NUMBERS = ("dropout", "norm_eps")
DIFFUSERS_INTS = ("in_channels", "out_channels", "layers_per_block", "norm_num_groups", "sample_size",
                  "attention_head_dim?", "time_embedding_dim?", "attn_norm_num_groups?")
DIFFUSERS_INT_LISTS = ("block_out_channels",)
DIFFUSERS_NUMBERS = ("norm_eps", "dropout")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_types(d: Mapping[str, Any], source: str, ints, int_lists, numbers) -> None:
    """Every present key of ``ints`` (``?``: null allowed) holds an integer, of ``int_lists`` a list of
    integers, of ``numbers`` a number; else a ValueError naming the source and the key."""
    for spec in ints:
        key, nullable = spec.rstrip("?"), spec.endswith("?")
        if key not in d or (nullable and d[key] is None):
            continue
        v = d[key]
        ok = _is_int(v) or (key == "sample_size" and isinstance(v, list) and all(_is_int(x) for x in v))
        if not ok:
            raise ValueError(f"{source}: key {key!r} must be an integer, found {v!r}")
    for key in int_lists:
        if key in d and not (isinstance(d[key], (list, tuple)) and all(_is_int(x) for x in d[key])):
            raise ValueError(f"{source}: key {key!r} must be a list of integers, found {d[key]!r}")
    for key in numbers:
        if key in d and not (isinstance(d[key], (int, float)) and not isinstance(d[key], bool)):
            raise ValueError(f"{source}: key {key!r} must be a number, found {d[key]!r}")


# ----------------------------------------------------------------------------------------------- file reading
def _read_file(path: Path) -> Any:
    """The object in a torch.save or safetensors file, read without executing pickled code."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # lazy: only diffusers-style files need it

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types; name the file whatever they are
            raise ValueError(f"cannot read {path} as a safetensors file: {e}") from e
    why = sniff_not_torch_file(path)
    if why:
        raise ValueError(f"cannot read model {path}: {why}. Expected {EXPECTED.format(presets=', '.join(sorted(PRESETS)))}")
    try:
        # torch.__version__ is a TorchVersion (a str subclass) that weights_only refuses by default; checkpoints
        # that stored it unconverted in their meta are still plain data, so that one class is allowed.
        with torch.serialization.safe_globals([TorchVersion]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, or a pickle of Python objects beyond tensors and containers
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        reason = next((line for line in lines if "WeightsUnpickler error" in line), lines[0])
        raise ValueError(
            f"cannot read {path} with torch.load(weights_only=True): {reason} Expected "
            f"{EXPECTED.format(presets=', '.join(sorted(PRESETS)))}. A whole pickled module (torch.save(model)) "
            "is not loaded: re-save its state_dict() where its code lives.") from e
