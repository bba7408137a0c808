"""What a member role means for each prunable layer type: the weight dimension that holds the channels and the
attribute that states the width. One table, read by the tracer's self-check (``pruning/trace/grouping.py``), the
scores (``pruning/importance.py``) and the surgery (``pruning/surgery.py``).

    type        role    weight dim   width attribute      also sliced
    Conv2d      out     0            out_channels         bias
    Conv2d      in      1            in_channels
    Linear      out     0            out_features         bias
    Linear      in      1            in_features
    GroupNorm   norm    0            num_channels         bias (beta)
    LayerNorm   norm    0            normalized_shape     bias (beta); normalises the LAST dim only
    Embedding   out     1            embedding_dim        (a class embedding: row k is class k's vector)

An Embedding's rows are indexed by class, so its channels sit on weight dim 1: it produces a channel space
(the class embedding added to the time embedding, as ADM conditions on classes: Dhariwal & Nichol 2021,
arXiv 2105.05233, Sec. 3; diffusers' ``num_class_embeds``) just as a Linear does, and is pruned with it. Parameters on dim 0 other than the weight (the biases)
are sliced with it; a role on dim 1 touches the weight only.
"""
from __future__ import annotations

from typing import Iterable, Mapping

from torch import nn

# (type, role) -> (weight dim, attribute holding the width)
ROLE_DIMS: dict[tuple[type, str], tuple[int, str]] = {
    (nn.Conv2d, "out"): (0, "out_channels"),
    (nn.Conv2d, "in"): (1, "in_channels"),
    (nn.Linear, "out"): (0, "out_features"),
    (nn.Linear, "in"): (1, "in_features"),
    (nn.GroupNorm, "norm"): (0, "num_channels"),
    (nn.LayerNorm, "norm"): (0, "normalized_shape"),
    (nn.Embedding, "out"): (1, "embedding_dim"),
}
NORMS = (nn.GroupNorm, nn.LayerNorm)


def role_dim(module: nn.Module, path: str, role: str) -> tuple[int, str]:
    """(weight dim, width attribute) of ``module`` in ``role``; an error naming the layer for anything else."""
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        raise NotImplementedError(f"{path}: grouped convolutions (groups={module.groups}) are not supported")
    for (kind, r), info in ROLE_DIMS.items():
        if r == role and isinstance(module, kind):
            return info
    raise TypeError(f"cannot prune {path} ({type(module).__name__}) as role {role!r}")


def role_width(module: nn.Module, path: str, role: str) -> int:
    """The width ``module`` states for ``role`` (a LayerNorm's normalized_shape is a 1-tuple)."""
    _, attr = role_dim(module, path, role)
    value = getattr(module, attr)
    return int(value[-1]) if isinstance(value, tuple) else int(value)


def set_role_width(module: nn.Module, path: str, role: str, width: int) -> None:
    """Write the new width into the attribute that states it (surgery only)."""
    _, attr = role_dim(module, path, role)
    setattr(module, attr, (width,) if isinstance(getattr(module, attr), tuple) else width)


def check_member_widths(groups: Iterable, layers: Mapping[str, nn.Module]) -> None:
    """Every member slice of every group lies inside its layer's channel dimension (the tracer's self-check)."""
    for group in groups:
        for m in group.members:
            width = role_width(layers[m.module], m.module, m.role)
            if m.offset + group.size > width:
                raise RuntimeError(f"tracer bug: {m} of group {group.name} (C={group.size}) exceeds width {width}")
