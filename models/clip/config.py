"""CLIP's configurations: frozen dataclasses read from transformers' ``config.json`` dicts.

CLIP (Radford et al. 2021, arXiv 2103.00020) has a text tower and a vision tower. A hub folder describes
one of them (``CLIPTextConfig`` fields: SD's ``text_encoder/config.json``; ``CLIPVisionConfig`` fields) or
both (a ``CLIPModel`` ``config.json`` with ``text_config`` and ``vision_config`` sub-dicts, a shared
``projection_dim`` and ``logit_scale_init_value``: PickScore, the LAION ViT-H/14 and ViT-g/14 models).

Field names and defaults are transformers'. ``from_transformers_config`` reads the fields that fix the
network, ignores the generic bookkeeping keys every transformers config carries (``GENERIC_KEYS``: the
version, dtype, generation defaults, ...), and refuses, in one line naming all of them, unknown keys and
unsupported values (another ``model_type``, an activation other than quick_gelu / gelu).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

ACTIVATIONS = ("quick_gelu", "gelu")

# Keys of every transformers PretrainedConfig (4.x and 5.x) that do not change a CLIP network: metadata,
# output switches and the generation defaults that 4.x configs serialise into each sub-config.
GENERIC_KEYS = frozenset("""
    _name_or_path _commit_hash _attn_implementation_autoset architectures transformers_version dtype torch_dtype
    model_type output_hidden_states output_attentions return_dict use_return_dict torchscript use_bfloat16
    chunk_size_feed_forward is_encoder_decoder is_decoder add_cross_attention cross_attention_hidden_size
    tie_word_embeddings tie_encoder_decoder id2label label2id num_labels problem_type finetuning_task prefix
    pruned_heads tokenizer_class task_specific_params bad_words_ids begin_suppress_tokens suppress_tokens
    decoder_start_token_id sep_token_id forced_bos_token_id forced_eos_token_id diversity_penalty do_sample
    early_stopping encoder_no_repeat_ngram_size exponential_decay_length_penalty length_penalty max_length
    min_length no_repeat_ngram_size num_beam_groups num_beams num_return_sequences output_scores
    remove_invalid_values repetition_penalty return_dict_in_generate temperature top_k top_p typical_p
    tf_legacy_loss gradient_checkpointing initializer_range initializer_factor dropout attn_implementation
""".split())  # and every key starting with "_" (_commit_hash, _attn_implementation, ...)

TEXT_MODEL_TYPES = ("clip_text_model", "clip")
VISION_MODEL_TYPES = ("clip_vision_model", "clip")


class _Tower:
    """What both towers' configs do alike; a subclass names its ``model_types`` (the first is the one written)
    and ``sub_config``, its key in a full CLIPModel config."""

    model_types: tuple[str, ...]
    sub_config: str

    def __post_init__(self) -> None:
        _validate(self, type(self).__name__)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        return cls(**_known(cls, d, cls.__name__))

    def to_transformers_config(self) -> dict[str, Any]:
        """The ``config.json`` dict transformers writes for this tower (``from_transformers_config``'s inverse)."""
        return {"model_type": self.model_types[0], **self.to_dict()}

    @classmethod
    def from_transformers_config(cls, d: Mapping[str, Any], *, source: str = "config.json"):
        """From the tower's own config dict, or its ``sub_config`` in a full CLIPModel config."""
        return _parse(cls, _sub(d, cls.sub_config), cls.model_types, source)


@dataclass(frozen=True)
class CLIPTextConfig(_Tower):
    """The text tower (transformers' CLIPTextConfig fields; defaults are CLIP ViT-B/32's).

    vocab_size, max_position_embeddings: token table rows and context length (49408, 77).
    hidden_size, intermediate_size, num_hidden_layers, num_attention_heads: the transformer.
    projection_dim: width of ``text_embeds`` (CLIPTextModelWithProjection / CLIPModel).
    hidden_act: "quick_gelu" (OpenAI's CLIPs, SD-1) or "gelu" (OpenCLIP's: SD-2, SDXL's second encoder).
    pad/bos/eos_token_id: as the config says; eos_token_id == 2 selects the legacy pooling (text.py).
    attention_dropout: dropout on the attention weights while training.
    """

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    pad_token_id: int = 1
    bos_token_id: int = 49406
    eos_token_id: int = 49407

    model_types = TEXT_MODEL_TYPES  # class constants of _Tower (no annotation: not dataclass fields)
    sub_config = "text_config"


@dataclass(frozen=True)
class CLIPVisionConfig(_Tower):
    """The vision tower (transformers' CLIPVisionConfig fields; defaults are CLIP ViT-B/32's).

    image_size, patch_size, num_channels: the input (224 px, 32 px patches, RGB).
    The rest as in CLIPTextConfig.
    """

    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0

    model_types = VISION_MODEL_TYPES
    sub_config = "vision_config"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_size % self.patch_size:
            raise ValueError(f"invalid CLIPVisionConfig: image_size={self.image_size} is not a multiple of "
                             f"patch_size={self.patch_size}")

    @property
    def num_positions(self) -> int:
        """Patches plus the class token."""
        return (self.image_size // self.patch_size) ** 2 + 1


@dataclass(frozen=True)
class CLIPConfig:
    """Both towers of a CLIPModel; ``projection_dim`` (shared) overrides the towers' own."""

    text: CLIPTextConfig
    vision: CLIPVisionConfig
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text.to_dict(), "vision": self.vision.to_dict(), "projection_dim": self.projection_dim,
                "logit_scale_init_value": self.logit_scale_init_value}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CLIPConfig":
        return cls(text=CLIPTextConfig.from_dict(d["text"]), vision=CLIPVisionConfig.from_dict(d["vision"]),
                   projection_dim=int(d["projection_dim"]), logit_scale_init_value=float(d["logit_scale_init_value"]))

    def to_transformers_config(self) -> dict[str, Any]:
        return {"model_type": "clip", "projection_dim": self.projection_dim,
                "logit_scale_init_value": self.logit_scale_init_value,
                "text_config": self.text.to_transformers_config(), "vision_config": self.vision.to_transformers_config()}

    @classmethod
    def from_transformers_config(cls, d: Mapping[str, Any], *, source: str = "config.json") -> "CLIPConfig":
        """From a full CLIPModel ``config.json`` (``text_config`` and ``vision_config`` sub-dicts)."""
        missing = [k for k in ("text_config", "vision_config") if not isinstance(_sub_or_none(d, k), Mapping)]
        top = {k for k in d if not k.startswith("_")} - GENERIC_KEYS - {
            "text_config", "vision_config", "text_config_dict", "vision_config_dict", "projection_dim",
            "logit_scale_init_value"}
        problems = [f"missing {missing} (not a CLIPModel config)"] if missing else []
        problems += [f"unsupported keys {sorted(top)}"] if top else []
        if d.get("model_type", "clip") != "clip":
            problems.append(f"model_type={d['model_type']!r} (supported: 'clip')")
        if problems:
            raise ValueError(f"{source}: CLIP config not supported: " + "; ".join(problems))
        projection_dim = int(d.get("projection_dim", 512))
        text = CLIPTextConfig.from_transformers_config(d, source=source)
        vision = CLIPVisionConfig.from_transformers_config(d, source=source)
        return cls(text=dataclasses.replace(text, projection_dim=projection_dim),
                   vision=dataclasses.replace(vision, projection_dim=projection_dim),
                   projection_dim=projection_dim, logit_scale_init_value=float(d.get("logit_scale_init_value", 2.6592)))


# --------------------------------------------------------------------------------------------------- helpers
def _sub_or_none(d: Mapping[str, Any], key: str) -> Any:
    # Configs of transformers 4.1x-4.2x hold "text_config" and a legacy "text_config_dict". transformers builds
    # the tower from the latter (its missing fields at CLIPTextConfig's defaults, which are this dataclass's)
    # and overwrites the former with it, so the "_dict" one decides the network.
    legacy = d.get(key + "_dict")
    return legacy if isinstance(legacy, Mapping) else d.get(key)


def _sub(d: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    sub = _sub_or_none(d, key)
    return sub if isinstance(sub, Mapping) else d


def _parse(cls, d: Mapping[str, Any], model_types: tuple[str, ...], source: str):
    known = {f.name for f in dataclasses.fields(cls)}
    problems = []
    unknown = sorted(k for k in d if k not in known and k not in GENERIC_KEYS and not k.startswith("_"))
    if unknown:
        problems.append(f"unsupported keys {unknown}")
    if d.get("model_type", model_types[0]) not in model_types:
        problems.append(f"model_type={d['model_type']!r} (supported: {list(model_types)})")
    if d.get("hidden_act", "quick_gelu") not in ACTIVATIONS:
        problems.append(f"hidden_act={d['hidden_act']!r} (supported: {list(ACTIVATIONS)})")
    if problems:
        raise ValueError(f"{source}: {cls.__name__} not supported: " + "; ".join(problems))
    # None means "the default" in transformers configs (e.g. pad_token_id: null).
    return cls(**{k: v for k, v in d.items() if k in known and v is not None})


def _known(cls, d: Mapping[str, Any], name: str) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {name} keys {unknown}; known keys are {sorted(known)}")
    return dict(d)


def _validate(cfg, name: str) -> None:
    problems = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.type == "int" and (not isinstance(v, int) or isinstance(v, bool)):
            problems.append(f"{f.name}={v!r} must be an integer")
    if not problems:
        for k in ("hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers", "num_attention_heads"):
            if getattr(cfg, k) < 1:
                problems.append(f"{k}={getattr(cfg, k)} must be >= 1")
        if cfg.hidden_size % max(cfg.num_attention_heads, 1):
            problems.append(f"hidden_size={cfg.hidden_size} is not divisible by num_attention_heads="
                            f"{cfg.num_attention_heads}")
    if cfg.hidden_act not in ACTIVATIONS:
        problems.append(f"hidden_act={cfg.hidden_act!r} must be one of {list(ACTIVATIONS)}")
    if problems:
        raise ValueError(f"invalid {name}: " + "; ".join(problems))
