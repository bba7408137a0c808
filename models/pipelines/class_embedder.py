"""The class conditioning of the CompVis class-conditional LDMs (cin256-v2, Diff-Pruning's ImageNet LDM).

Rombach et al. 2022 condition their ImageNet LDM through cross-attention (Sec. 3.3): the class label y is
embedded by a learned table, tau_theta(y) = E[y] (latent-diffusion's ``ClassEmbedder``), and the U-Net
attends to that ONE token, encoder_hidden_states = E[y] as (B, 1, D). The table has one row more than there
are classes: the last (``unconditional_class``, 1000 for ImageNet) is the label-dropped "no class" that
classifier-free guidance uses as its unconditional input.

State-dict name: ``embedding.weight`` (the original file's ``cond_stage_model.embedding.weight``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn


@dataclass(frozen=True)
class ClassEmbedderConfig:
    """n_classes: rows of the table (the classes plus the unconditional row); embed_dim: the cross-attention
    width D; unconditional_class: the row used as "no class" (None: no guidance possible)."""

    n_classes: int = 1001
    embed_dim: int = 512
    unconditional_class: int | None = 1000

    def __post_init__(self) -> None:
        if self.n_classes < 1 or self.embed_dim < 1:
            raise ValueError(f"ClassEmbedderConfig: n_classes and embed_dim must be >= 1, got {self.n_classes}, "
                             f"{self.embed_dim}")
        if self.unconditional_class is not None and not 0 <= self.unconditional_class < self.n_classes:
            raise ValueError(f"ClassEmbedderConfig: unconditional_class {self.unconditional_class} is not a row of "
                             f"the {self.n_classes}-row table")

    @property
    def num_classes(self) -> int:
        """The labels a user may ask for: every row but the unconditional one (which must be the last)."""
        return self.n_classes - 1 if self.unconditional_class == self.n_classes - 1 else self.n_classes

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "config.json") -> "ClassEmbedderConfig":
        known = {"n_classes", "embed_dim", "unconditional_class"}
        unknown = sorted(k for k in d if not k.startswith("_") and k not in known)
        if unknown:
            raise ValueError(f"{source}: unknown ClassEmbedder config keys {unknown}; known: {sorted(known)}")
        return cls(**{k: d[k] for k in known if k in d})

    def to_dict(self) -> dict[str, Any]:
        return {"_class_name": "ClassEmbedder", "n_classes": self.n_classes, "embed_dim": self.embed_dim,
                "unconditional_class": self.unconditional_class}


class ClassEmbedder(nn.Module):
    """labels (B,) int64 -> encoder_hidden_states (B, 1, embed_dim)."""

    def __init__(self, config: ClassEmbedderConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.n_classes, config.embed_dim)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding(labels)[:, None]  # (B, 1, D): one token to attend to

    def unconditional(self, batch: int, device: torch.device | str) -> torch.Tensor:
        """(batch, 1, D): the "no class" embedding, classifier-free guidance's unconditional input."""
        if self.config.unconditional_class is None:
            raise ValueError("this class embedder has no unconditional class: guidance scale must be 1")
        return self(torch.full((batch,), self.config.unconditional_class, dtype=torch.long, device=device))
