"""A CLIP model folder (transformers layout) -> the project's CLIP module, its tokenizer, and hub names.

    model = load_clip("PickScore_v1")                  # config.json + model.safetensors (or pytorch_model.bin)
    save_clip(model, "out/text_encoder")               # the same layout, for a model trained here
    model, tokenizer = load_clip_and_tokenizer("yuvalkirstain/PickScore_v1",
                                               tokenizer="laion/CLIP-ViT-H-14-laion2B-s32B-b79K")

An open_clip folder (``open_clip_config.json``, no ``config.json``) is read by models/clip/open_clip.py.
Otherwise the class is the config's ``architectures[0]`` (CLIPModel, CLIPTextModel, CLIPTextModelWithProjection,
CLIPVisionModelWithProjection); where a config names none, a config with ``text_config`` and
``vision_config`` is a CLIPModel and a single tower is told apart by its ``model_type`` and whether the
file holds its projection. ``kind=`` asks for one tower out of a CLIPModel folder.

The module is built on the meta device and filled tensor by tensor from the lazily read file
(models/pipelines/weights.py): memory holds one copy of the weights. A file that does not fit is named in
ONE error listing the missing, unexpected and mis-shaped tensors. Two naming variants are accepted:
older files' ``*.position_ids`` buffers (computed here, so ignored) and transformers 5's bare
CLIPTextModel files, whose names lack the ``text_model.`` prefix of the hub's files (``prefix_plan``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.clip.config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from models.clip.open_clip import CONFIG_NAME as OPEN_CLIP_CONFIG, is_open_clip_folder, load_open_clip
from models.clip.text import CLIPTextModel, CLIPTextModelWithProjection
from models.clip.tokenizer import CLIPTokenizer
from models.clip.vision import CLIPModel, CLIPVisionModelWithProjection
from models.hub import HUB_URL, HubDownloadError, looks_like_hub_name, snapshot
from models.pipelines.component import read_config, weight_file
from models.pipelines.original_layout import Source
from models.pipelines.weights import WeightFile, assign_weights, on_meta, open_weights

KINDS = ("CLIPModel", "CLIPTextModel", "CLIPTextModelWithProjection", "CLIPVisionModelWithProjection")
TOWER_PREFIXES = ("text_model.", "vision_model.")
IGNORED = ("position_ids",)


def build_clip(kind: str, config: dict[str, Any], *, source: str = "config.json") -> nn.Module:
    """The (uninitialised) module of ``kind`` for a transformers config dict, on the current device."""
    full = isinstance(config.get("text_config") or config.get("text_config_dict"), dict)
    if kind == "CLIPModel":
        return CLIPModel(CLIPConfig.from_transformers_config(config, source=source))
    if kind in ("CLIPTextModel", "CLIPTextModelWithProjection"):
        # Out of a CLIPModel config, the shared top-level projection_dim is the text tower's.
        text = (CLIPConfig.from_transformers_config(config, source=source).text if full
                else CLIPTextConfig.from_transformers_config(config, source=source))
        return (CLIPTextModel if kind == "CLIPTextModel" else CLIPTextModelWithProjection)(text)
    if kind == "CLIPVisionModelWithProjection":
        vision = (CLIPConfig.from_transformers_config(config, source=source).vision if full
                  else CLIPVisionConfig.from_transformers_config(config, source=source))
        return CLIPVisionModelWithProjection(vision)
    raise ValueError(f"{source}: CLIP class {kind!r} is not supported; supported: {', '.join(KINDS)}")


def clip_kind(config: dict[str, Any], weights: WeightFile) -> str:
    """The class a folder holds: ``architectures[0]``, else inferred (see the module docstring)."""
    arch = config.get("architectures")
    if isinstance(arch, list) and arch:
        return arch[0]
    if isinstance(config.get("text_config") or config.get("text_config_dict"), dict):
        return "CLIPModel"
    if config.get("model_type") == "clip_vision_model":
        return "CLIPVisionModelWithProjection"
    return "CLIPTextModelWithProjection" if "text_projection.weight" in weights else "CLIPTextModel"


def prefix_plan(module: nn.Module, weights: WeightFile) -> dict[str, Source]:
    """Module name -> file name for files that lack the tower prefix (``text_model.`` / ``vision_model.``).

    transformers 5 saves a bare CLIPTextModel as ``embeddings.token_embedding.weight`` etc., where the hub's
    files and CLIPTextModelWithProjection say ``text_model.embeddings.token_embedding.weight``. Names the
    file holds as they are need no entry.
    """
    plan = {}
    for name in module.state_dict().keys():
        if name in weights:
            continue
        for prefix in TOWER_PREFIXES:
            if name.startswith(prefix) and name[len(prefix):] in weights:
                plan[name] = Source(name[len(prefix):])
    return plan


def load_clip(folder: str | os.PathLike, *, kind: str | None = None, dtype: torch.dtype | None = torch.float32,
              variant: str | None = None) -> nn.Module:
    """The CLIP module of a transformers folder, in eval mode, its weights in ``dtype`` (None: the file's).

    kind: one of KINDS to override the folder's class (e.g. only the text tower of a CLIPModel folder).
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file() and is_open_clip_folder(folder):
        if kind not in (None, "CLIPModel"):
            raise ValueError(f"{folder}: an open_clip folder loads as a whole CLIPModel, not kind={kind!r}")
        return load_open_clip(folder, dtype=dtype)
    config = read_config(folder)
    weights = open_weights(weight_file(folder, variant))
    kind = kind or clip_kind(config, weights)
    what = f"{kind} of {folder / 'config.json'}"
    module = on_meta(build_clip, kind, config, source=str(folder / "config.json"))
    # A single tower out of a CLIPModel file: the other tower's tensors are not "unexpected".
    expected: tuple[str, ...] = ("",)
    if kind != "CLIPModel" and "logit_scale" in weights:
        expected = ("text_model.", "text_projection") if "Text" in kind else ("vision_model.", "visual_projection")
    return assign_weights(module, prefix_plan(module, weights), weights, what=what, dtype=dtype,
                          expected_prefixes=expected, ignore=IGNORED)


def text_encoder_of(clip: nn.Module) -> nn.Module:
    """The text tower of a CLIPModel as a CLIPTextModel (what an SD pipeline's text_encoder/ holds), sharing
    the tower's modules, not copying them: ``text_encoder_of(clip)(ids).last_hidden_state`` is what a
    U-Net conditioned on this CLIP would read."""
    if not isinstance(clip, CLIPModel):
        raise ValueError(f"text_encoder_of needs a CLIPModel (both towers), got a {type(clip).__name__}")
    with torch.device("meta"):  # its own tower is replaced at once: never allocate it
        text = CLIPTextModel(clip.config.text)
    text.text_model = clip.text_model
    return text


def save_clip(model: nn.Module, folder: str | os.PathLike) -> Path:
    """Write ``model`` as a transformers folder (config.json + model.safetensors) that ``load_clip`` reads back.

    The hub's names (``text_model.*``) are kept. An existing config.json or weight file is never overwritten.
    """
    from safetensors.torch import save_file
    kind = type(model).__name__
    if kind not in KINDS:
        raise ValueError(f"save_clip: {kind} is not one of {', '.join(KINDS)}")
    folder = Path(folder)
    targets = [folder / "config.json", folder / "model.safetensors"]
    present = [str(p) for p in targets if p.exists()]
    if present:
        raise FileExistsError(f"save_clip: {', '.join(present)} already exist; choose a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    config = {"architectures": [kind], **model.config.to_transformers_config()}
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(targets[1]))
    targets[0].write_text(json.dumps(config, indent=2) + "\n")
    return folder


# ----------------------------------------------------------------------------------------------- hub names
# The CLIPs the text-to-image metrics use, by the short names papers give them.
KNOWN_CLIPS = {
    "ViT-L/14": "openai/clip-vit-large-patch14",  # torchmetrics' CLIPScore default
    "ViT-H/14": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",  # PickScore's processor and tokenizer
    "ViT-g/14": "laion/CLIP-ViT-g-14-laion2B-s34B-b88K",  # BK-SDM's CLIP score model (open_clip format)
    "ViT-g/14-s12B": "laion/CLIP-ViT-g-14-laion2B-s12B-b42K",  # an earlier ViT-g/14 (transformers format too)
    "PickScore": "yuvalkirstain/PickScore_v1",
}
_CONFIG_FILES = ["config.json", OPEN_CLIP_CONFIG, "vocab.json", "merges.txt", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json"]
_SAFETENSORS = ["model.safetensors", "model-*.safetensors", "model.safetensors.index.json"]
_BIN = ["pytorch_model.bin", "pytorch_model-*.bin", "pytorch_model.bin.index.json"]
_OPEN_CLIP = {"safetensors": ["open_clip_model.safetensors"], "bin": ["open_clip_pytorch_model.bin"]}


def fetch_clip(name: str, *, cache_dir: str | None = None, weights: bool = True) -> Path:
    """The local folder of hub CLIP ``name`` (a KNOWN_CLIPS short name or "owner/repo"), downloaded once.

    The configs and tokenizer files come first; then ONE set of weights: the transformers files where the
    repository has a config.json, else open_clip's (safetensors, else .bin). ``weights=False`` stops after
    the first step. Offline without a cached copy: one-line HubDownloadError naming the URL and how to pass
    a local folder instead.
    """
    repo = KNOWN_CLIPS.get(name, name)
    url = f"{HUB_URL}/{repo}"
    folder = snapshot(repo, _CONFIG_FILES, cache_dir=cache_dir, name=name)
    if weights:
        native = (folder / "config.json").is_file() or not (folder / OPEN_CLIP_CONFIG).is_file()
        formats = ([_SAFETENSORS, _BIN] if native else [_OPEN_CLIP["safetensors"], _OPEN_CLIP["bin"]])
        for patterns in formats:  # safetensors first; an older repository may have .bin only
            folder = snapshot(repo, _CONFIG_FILES + patterns, cache_dir=cache_dir, name=name)
            if _has_weights(folder):
                break
    if weights and not _has_weights(folder):
        raise HubDownloadError(f"{url} holds no CLIP weights (expected one of "
                               f"{_SAFETENSORS + _BIN + _OPEN_CLIP['safetensors'] + _OPEN_CLIP['bin']})")
    return folder


def _has_weights(folder: Path) -> bool:
    return (any(folder.glob("model*.safetensors")) or any(folder.glob("pytorch_model*.bin"))
            or is_open_clip_folder(folder))


def resolve(source: str | os.PathLike, *, weights: bool = True) -> Path:
    """A local folder as it is; a KNOWN_CLIPS short name or a hub repository id through ``fetch_clip``."""
    if isinstance(source, str) and (source in KNOWN_CLIPS or looks_like_hub_name(source)):
        return fetch_clip(source, weights=weights)
    folder = Path(source)
    if not folder.is_dir():
        raise FileNotFoundError(f"{source}: no such folder, and not a hub name (known: {', '.join(KNOWN_CLIPS)})")
    return folder


def load_clip_and_tokenizer(source: str | os.PathLike, *, tokenizer: str | os.PathLike | None = None,
                            kind: str | None = None, dtype: torch.dtype | None = torch.float32
                            ) -> tuple[nn.Module, CLIPTokenizer]:
    """(model, tokenizer) of a folder or hub name; ``tokenizer`` names another source for the tokenizer
    (PickScore's repository has none: its authors use the ViT-H/14 processor's)."""
    folder = resolve(source)
    model = load_clip(folder, kind=kind, dtype=dtype)
    tok_folder = folder if tokenizer is None else resolve(tokenizer, weights=False)
    return model, CLIPTokenizer.from_folder(tok_folder)
