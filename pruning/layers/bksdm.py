"""BK-SDM's handcrafted block removal (Kim, Song, Castells, Choi 2023, arXiv 2305.15798, Sec. 3.1, Fig. 2):
the baseline LAPTOP-Diff's automatic layer pruning is compared against.

From an SD-v1 U-Net (four levels 320/640/1280/1280; CrossAttnDown x3 + Down; Up + CrossAttnUp x3; two
(ResNet, attention) pairs per down block, three per up block, one Transformer2D layer each):

    bk-sdm-base    every down block keeps its FIRST pair (resnets.0, attentions.0); every up block keeps
                   two of its three pairs, the first and the last: resnets.0 <- resnets.0 and
                   resnets.1 <- resnets.2 (attentions likewise). layers_per_block 1.      579,384,964 params
    bk-sdm-small   Base without the mid block (mid_block_type None).                     482,346,884
    bk-sdm-tiny    Small without the innermost level (down_blocks.3, the ResNet-only 1280 stage, and
                   up_blocks.0): the student's up block k is the teacher's k + 1, pairs and upsampler
                   included; the student's last down block has no downsampler.        323,384,964

(parameter counts from SD-v1.5; the published U-Net sizes 0.58B / 0.49B / 0.33B, and the configs
``models/sd/presets.py`` holds as bk-sdm-*). Weights: every student tensor is COPIED from the teacher tensor
of the same name, except under the re-mapped prefixes above: this is BK-SDM's initialisation
(``copy_weight_from_teacher`` in Nota-NetsPresso/BK-SDM, src/kd_train_text_to_image.py). Why the up path keeps
its last pair: the last ResNet of an up block reads the skip of the level's input (the downsampler's output,
or conv_in's), which the student still produces; the first reads the deepest pair's output, whose
counterpart in the student is the one pair left.

The student is a DENSE configuration (``config.removed`` and ``config.widths`` empty): fewer pairs per block,
no mid block and one level fewer are existing config fields (``layers_per_block``, ``mid_block_type``,
``block_out_channels``), unlike layer pruning's removed branches, which keep the skips and shortcuts. So it
saves and reloads as any diffusers U-Net (``models/pipelines/save.py`` writes the plain diffusers config).
"""
from __future__ import annotations

import dataclasses

import torch

from models.sd.config import UNetConditionConfig
from models.sd.unet import UNet2DConditionModel
from models.sd.wiring import topology
from pruning.layers import sd

# name -> (mid block removed, innermost level removed)
ARCHITECTURES: dict[str, tuple[bool, bool]] = {
    "bk-sdm-base": (False, False),
    "bk-sdm-small": (True, False),
    "bk-sdm-tiny": (True, True),
}
_PER_LEVEL = ("layers_per_block", "transformer_layers_per_block", "num_attention_heads", "cross_attention_dim")
# The SD-v1 topology the rule is written for (Rombach et al. 2022; SD-v1.4/v1.5's unet/config.json).
SD1_TOPOLOGY = {
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "layers_per_block": (2, 2, 2, 2),
    "transformer_layers_per_block": (1, 1, 1, 1),
    "use_linear_projection": False,   # SD-2 and SDXL project with Linear layers
    "addition_embed_type": None,      # SDXL's text_time conditioning
    "num_class_embeds": None,         # class-conditional LDMs
}


def check_architecture(name: str) -> None:
    """A one-line error unless ``name`` is one of ``ARCHITECTURES``."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown handcrafted architecture {name!r}; known: {sorted(ARCHITECTURES)}")


def check_sd1(config: UNetConditionConfig, architecture: str) -> None:
    """A one-line error unless ``config`` is a dense SD-v1 U-Net (any widths of the four levels: tests use
    tiny ones), naming every field that differs."""
    check_architecture(architecture)
    wrong = [f"{k}={getattr(config, k)!r} (SD-v1: {v!r})" for k, v in SD1_TOPOLOGY.items() if getattr(config, k) != v]
    if config.widths or config.removed:
        wrong.append("config.widths / config.removed not empty (a pruned U-Net)")
    if wrong:
        raise ValueError(f"handcrafted architecture {architecture!r} is BK-SDM's removal from a dense SD-v1 U-Net; "
                         f"this U-Net differs: {'; '.join(wrong)}")


def check_teacher(model, architecture: str) -> None:
    """A one-line error unless ``model`` is a dense SD-v1 ``UNet2DConditionModel``."""
    check_architecture(architecture)
    if not sd.is_sd(model):
        raise ValueError(f"handcrafted architecture {architecture!r} is BK-SDM's removal from an SD-v1 U-Net "
                         f"(models/sd UNet2DConditionModel), got {type(model).__name__}")
    check_sd1(model.config, architecture)


def student_config(config: UNetConditionConfig, architecture: str) -> UNetConditionConfig:
    """The BK-SDM student config of ``architecture`` built from the teacher's config (module docstring)."""
    check_sd1(config, architecture)
    no_mid, no_inner = ARCHITECTURES[architecture]
    L = len(config.block_out_channels)
    changes: dict = {"layers_per_block": (1,) * L}
    if no_mid:
        changes["mid_block_type"] = None
    if no_inner:  # level L - 1 is down block L - 1 and up block 0
        changes.update({k: tuple(changes.get(k, getattr(config, k)))[:-1] for k in _PER_LEVEL},
                       block_out_channels=config.block_out_channels[:-1],
                       down_block_types=config.down_block_types[:-1], up_block_types=config.up_block_types[1:])
    return dataclasses.replace(config, **changes)


def copy_map(config: UNetConditionConfig, architecture: str) -> dict[str, str]:
    """Student module path -> teacher module path for the re-mapped modules (the up path; everything else
    is copied from the module of the same name). Lists only modules the student has."""
    student = student_config(config, architecture)
    shift = 1 if ARCHITECTURES[architecture][1] else 0  # Tiny: the teacher's up block 0 (the innermost level) is gone
    mapping = {}
    for _, path, _ in topology(student):
        parts = path.split(".")
        if parts[0] != "up_blocks":
            continue
        k, name = int(parts[1]), parts[2]
        j = int(parts[3])
        # kept pairs: the first (0 <- 0) and the last (1 <- 2); samplers keep their index
        source_j = {0: 0, 1: 2}[j] if name in ("resnets", "attentions") else j
        mapping[path] = f"up_blocks.{k + shift}.{name}.{source_j}"
    return {s: t for s, t in mapping.items() if s != t}


def source_key(key: str, mapping: dict[str, str]) -> str:
    """The teacher's state-dict key a student key is copied from."""
    for student, teacher in mapping.items():
        if key.startswith(student + "."):
            return teacher + key[len(student):]
    return key


def removed_paths(config: UNetConditionConfig, used: set[str]) -> list[str]:
    """The teacher's blocks (ResNets, attentions, resamplers) no student weight is copied from."""
    return [path for _, path, _ in topology(config) if not any(k.startswith(path + ".") for k in used)]


def bk_sdm(teacher: UNet2DConditionModel, architecture: str) -> tuple[UNet2DConditionModel, dict]:
    """(student, info): the BK-SDM U-Net of ``architecture`` initialised from ``teacher`` by BK-SDM's weight copy,
    on the teacher's device and dtype (the meta device too: sizes in milliseconds), eval mode. info holds
    "config" (the student's), "copied" (student path -> teacher path for the re-mapped modules) and
    "removed" (the teacher's blocks left out). ``teacher`` is unchanged; the student shares no storage."""
    check_teacher(teacher, architecture)
    config = student_config(teacher.config, architecture)
    mapping = copy_map(teacher.config, architecture)
    own = teacher.state_dict()
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in UNet2DConditionModel(config).state_dict().items()}
    state = {}
    for key, shape in shapes.items():
        source = source_key(key, mapping)
        if source not in own or own[source].shape != shape:  # a bug in the rule, never bad input
            raise AssertionError(f"BK-SDM copy: student {key} {tuple(shape)} <- teacher {source} "
                                 f"{tuple(own[source].shape) if source in own else 'missing'}")
        state[key] = own[source]
    student = sd.rebuild(teacher, config, state)
    used = {source_key(k, mapping) for k in shapes}
    return student, {"config": config, "copied": mapping, "removed": removed_paths(teacher.config, used)}
