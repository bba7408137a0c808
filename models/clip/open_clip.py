"""CLIPs published in open_clip's own format (``open_clip_config.json`` + ``open_clip_model.safetensors`` or
``open_clip_pytorch_model.bin``), read into the transformers-named ``CLIPModel``.

BK-SDM's CLIP score uses open_clip's ViT-g-14 trained on laion2b_s34b_b88k, whose hub repository
(laion/CLIP-ViT-g-14-laion2B-s34B-b88K) is in this format. The networks are the same as transformers' CLIP
(pre-LN ViT and causal text transformer, OpenAI's layout), only named and stored differently:

    open_clip (mlfoundations/open_clip, model.py, transformer.py)   transformers / this project
    token_embedding.weight                         text_model.embeddings.token_embedding.weight
    positional_embedding                           text_model.embeddings.position_embedding.weight
    transformer.resblocks.N.<block>                text_model.encoder.layers.N.<block>
    ln_final                                       text_model.final_layer_norm
    text_projection (width, embed), used x @ P     text_projection.weight (embed, width) = P^T
    visual.conv1.weight                            vision_model.embeddings.patch_embedding.weight
    visual.class_embedding                         vision_model.embeddings.class_embedding
    visual.positional_embedding                    vision_model.embeddings.position_embedding.weight
    visual.ln_pre / visual.ln_post                 vision_model.pre_layrnorm / vision_model.post_layernorm
    visual.transformer.resblocks.N.<block>         vision_model.encoder.layers.N.<block>
    visual.proj (width, embed)                     visual_projection.weight = proj^T
    logit_scale                                    logit_scale
  and inside a block:
    ln_1, ln_2                                     layer_norm1, layer_norm2
    attn.in_proj_weight / in_proj_bias (3D, ...)   self_attn.q_proj / k_proj / v_proj: rows [0, D), [D, 2D), [2D, 3D)
    attn.out_proj                                  self_attn.out_proj
    mlp.c_fc, mlp.c_proj                           mlp.fc1, mlp.fc2

open_clip pools the text at argmax(token ids) (its EOT is the largest id), which is transformers' legacy
rule: the text config gets ``eos_token_id = 2`` to select it (models/clip/text.py). Its MLP width is
int(width * mlp_ratio), its heads width / head_width (vision) or ``heads`` (text), its activation GELU
unless ``quick_gelu``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from models.clip.config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from models.clip.vision import CLIPModel
from models.pipelines.weights import WeightFile, assign_weights, on_meta, open_weights

CONFIG_NAME = "open_clip_config.json"
WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
LEGACY_ARGMAX_EOS = 2

# open_clip name -> transformers name, outside the transformer blocks. "T": stored transposed.
NAMES = {
    "token_embedding.weight": ("text_model.embeddings.token_embedding.weight", None),
    "positional_embedding": ("text_model.embeddings.position_embedding.weight", None),
    "ln_final.weight": ("text_model.final_layer_norm.weight", None),
    "ln_final.bias": ("text_model.final_layer_norm.bias", None),
    "text_projection": ("text_projection.weight", "T"),
    "visual.conv1.weight": ("vision_model.embeddings.patch_embedding.weight", None),
    "visual.class_embedding": ("vision_model.embeddings.class_embedding", None),
    "visual.positional_embedding": ("vision_model.embeddings.position_embedding.weight", None),
    "visual.ln_pre.weight": ("vision_model.pre_layrnorm.weight", None),
    "visual.ln_pre.bias": ("vision_model.pre_layrnorm.bias", None),
    "visual.ln_post.weight": ("vision_model.post_layernorm.weight", None),
    "visual.ln_post.bias": ("vision_model.post_layernorm.bias", None),
    "visual.proj": ("visual_projection.weight", "T"),
    "logit_scale": ("logit_scale", None),
}
BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
         "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_BLOCK_NAME = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")
_IN_PROJ = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")


def is_open_clip_folder(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / CONFIG_NAME).is_file() and any((folder / w).is_file() for w in WEIGHT_NAMES)


class OpenCLIPWeights:
    """An open_clip weight file seen under transformers' names (the table above), read lazily.

    Offers what models/pipelines/weights.py asks of a WeightFile: keys, ``in``, shape, get. Names the table
    does not cover keep their own name, so a file that does not fit reports them as unexpected.
    """

    def __init__(self, raw: WeightFile):
        self.raw = raw
        self._map: dict[str, tuple[str, str | None, int]] = {}  # hf name -> (open_clip name, op, q/k/v part)
        for name in raw.keys():
            if name in NAMES:
                self._map[NAMES[name][0]] = (name, NAMES[name][1], 0)
            elif m := _IN_PROJ.match(name):
                tower = "vision_model" if m.group(1) else "text_model"
                for part, qkv in enumerate("qkv"):
                    self._map[f"{tower}.encoder.layers.{m.group(2)}.self_attn.{qkv}_proj.{m.group(3)}"] = (name, "qkv", part)
            elif (m := _BLOCK_NAME.match(name)) and m.group(3) in BLOCK:
                tower = "vision_model" if m.group(1) else "text_model"
                self._map[f"{tower}.encoder.layers.{m.group(2)}.{BLOCK[m.group(3)]}.{m.group(4)}"] = (name, None, 0)
            else:
                self._map[name] = (name, None, 0)

    def keys(self) -> list[str]:
        return list(self._map)

    def __contains__(self, name: str) -> bool:
        return name in self._map

    def shape(self, name: str) -> tuple[int, ...]:
        raw, op, _ = self._map[name]
        shape = self.raw.shape(raw)
        if op == "T":
            return tuple(reversed(shape))
        if op == "qkv":
            return (shape[0] // 3, *shape[1:])
        return shape

    def get(self, name: str) -> torch.Tensor:
        raw, op, part = self._map[name]
        t = self.raw.get(raw)
        if op == "T":
            return t.t()
        if op == "qkv":
            return t.chunk(3, dim=0)[part]  # in_proj stacks q, k, v along rows
        return t

    def __str__(self) -> str:
        return f"{self.raw} (open_clip layout)"


# Keys of open_clip's CLIPTextCfg / CLIPVisionCfg that this reading supports, with the values it supports
# (None: any value; these change nothing at inference or are what this reading computes from).
_TEXT_OK = {"context_length": None, "vocab_size": None, "width": None, "heads": None, "layers": None,
            "mlp_ratio": None, "hf_tokenizer_name": None, "tokenizer_kwargs": None, "tokenizer_mode": None,
            "pad_id": None, "bos_id": None, "eos_id": (None,), "text_arch": ("clip",), "ls_init_value": (None,),
            "embed_cls": (False,), "no_causal_mask": (False,), "pool_type": ("argmax",), "proj_bias": (False,),
            "proj_type": ("linear",), "output_tokens": (False,), "act_kwargs": (None,), "norm_kwargs": (None,),
            "final_ln_after_pool": (False,)}
_VISION_OK = {"image_size": None, "patch_size": None, "width": None, "layers": None, "head_width": None,
              "mlp_ratio": None, "patch_dropout": None, "image_seq_len": (None,), "ls_init_value": (None,),
              "attentional_pool": (False,), "no_ln_pre": (False,), "pos_embed_type": ("learnable",),
              "final_ln_after_pool": (False, True), "pool_type": ("tok",), "output_tokens": (False,),
              "act_kwargs": (None,), "norm_kwargs": (None,), "timm_model_name": (None,)}
_MODEL_OK = {"embed_dim": None, "vision_cfg": None, "text_cfg": None, "quick_gelu": (False, True),
             "custom_text": (False,), "init_logit_bias": (None,), "cast_dtype": None}


def config_from_open_clip(cfg: dict[str, Any], *, source: str = CONFIG_NAME) -> CLIPConfig:
    """The CLIPConfig of an ``open_clip_config.json`` dict (its ``model_cfg``, or the dict itself).

    Every open_clip feature this reading lacks (custom text towers, attentional pooling, layer scale, ...)
    is named in ONE ValueError.
    """
    model = cfg.get("model_cfg", cfg)
    text, vision = model.get("text_cfg") or {}, model.get("vision_cfg") or {}
    problems = []
    for where, d, ok in (("model_cfg", model, _MODEL_OK), ("text_cfg", text, _TEXT_OK), ("vision_cfg", vision, _VISION_OK)):
        for k, v in d.items():
            if k not in ok:
                problems.append(f"{where}.{k}")
            elif ok[k] is not None and v not in ok[k]:
                problems.append(f"{where}.{k}={v!r}")
    if not isinstance(vision.get("layers", 12), int) or not isinstance(vision.get("image_size", 224), int):
        problems.append("a ResNet or non-square vision tower")
    if problems:
        raise ValueError(f"{source}: open_clip model not supported ({', '.join(problems)})")
    act = "quick_gelu" if model.get("quick_gelu", False) else "gelu"
    embed = int(model["embed_dim"])
    t_width, v_width = int(text.get("width", 512)), int(vision.get("width", 768))
    t = CLIPTextConfig(vocab_size=int(text.get("vocab_size", 49408)), hidden_size=t_width,
                       intermediate_size=int(t_width * float(text.get("mlp_ratio", 4.0))), projection_dim=embed,
                       num_hidden_layers=int(text.get("layers", 12)), num_attention_heads=int(text.get("heads", 8)),
                       max_position_embeddings=int(text.get("context_length", 77)), hidden_act=act,
                       eos_token_id=LEGACY_ARGMAX_EOS)  # selects argmax pooling, open_clip's rule
    v = CLIPVisionConfig(hidden_size=v_width, intermediate_size=int(v_width * float(vision.get("mlp_ratio", 4.0))),
                         projection_dim=embed, num_hidden_layers=int(vision.get("layers", 12)),
                         num_attention_heads=v_width // int(vision.get("head_width", 64)),
                         image_size=int(vision.get("image_size", 224)), patch_size=int(vision.get("patch_size", 16)),
                         hidden_act=act)
    return CLIPConfig(text=t, vision=v, projection_dim=embed)


def load_open_clip(folder: str | Path, *, dtype: torch.dtype | None = torch.float32) -> CLIPModel:
    """The CLIPModel of an open_clip folder, in eval mode (built on meta, filled tensor by tensor)."""
    folder = Path(folder)
    cfg_path = folder / CONFIG_NAME
    config = config_from_open_clip(json.loads(cfg_path.read_text()), source=str(cfg_path))
    path = next((folder / w for w in WEIGHT_NAMES if (folder / w).is_file()), None)
    if path is None:
        raise FileNotFoundError(f"{folder}: no open_clip weights (expected one of {', '.join(WEIGHT_NAMES)})")
    weights = OpenCLIPWeights(open_weights(path))
    module = on_meta(CLIPModel, config)
    return assign_weights(module, {}, weights, what=f"CLIPModel of {cfg_path}", dtype=dtype,
                          ignore=("attn_mask", "position_ids"))


def to_open_clip(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CLIPModel state dict in open_clip's names (the table read backwards): writes test folders."""
    inverse = {hf: (oc, op) for oc, (hf, op) in NAMES.items()}
    block_inv = {v: k for k, v in BLOCK.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, list] = {}
    for name, t in state_dict.items():
        if name in inverse:
            oc, op = inverse[name]
            out[oc] = t.t().contiguous() if op == "T" else t
            continue
        m = re.match(r"^(text_model|vision_model)\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", name)
        prefix = ("visual." if m.group(1) == "vision_model" else "") + f"transformer.resblocks.{m.group(2)}."
        if m.group(3).startswith("self_attn.") and m.group(3)[-6:] in ("q_proj", "k_proj", "v_proj"):
            slot = qkv.setdefault(prefix + f"attn.in_proj_{m.group(4)}", [None] * 3)
            slot["qkv".index(m.group(3)[-6])] = t
        else:
            out[prefix + f"{block_inv[m.group(3)]}.{m.group(4)}"] = t
    out.update({k: torch.cat(v, dim=0) for k, v in qkv.items()})
    return out
