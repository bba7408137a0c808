"""Rebuild the RECIPE weights of a tests/data/golden/sd_family.pt entry (not a test file; tests import it).

The golden file stores no weights for its models, only how to draw them (tests/data/golden/README.md,
sd_family.pt): tensor i (from 0) of ``weights["keys"]`` is z = randn(shape, generator seeded recipe_seed + i),
used as 1 + 0.2 z for a normalisation weight (second-to-last name part contains "norm", "layer_norm" or
"ln", last part "weight") and as 0.1 z otherwise. Integer buffers are not in ``keys``: they keep defaults.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest
import torch

SD_FAMILY = Path(__file__).parent / "data" / "golden" / "sd_family.pt"


def is_norm_weight(name: str) -> bool:
    parts = name.split(".")
    return (len(parts) >= 2 and parts[-1] == "weight"
            and any(s in parts[-2] for s in ("norm", "layer_norm", "ln")))


def recipe_state_dict(weights: dict) -> dict[str, torch.Tensor]:
    """{name: tensor} in the reference's own naming, from an entry's ``weights`` dict."""
    out = {}
    for i, name in enumerate(weights["keys"]):
        g = torch.Generator().manual_seed(int(weights["recipe_seed"]) + i)
        z = torch.randn(tuple(weights["shapes"][name]), generator=g)
        out[name] = 1.0 + 0.2 * z if is_norm_weight(name) else 0.1 * z
    return out


def load_entry(name: str) -> dict:
    """One entry of sd_family.pt; skips the calling test (with the reason) when the file is absent."""
    if not SD_FAMILY.is_file():
        pytest.skip(f"{SD_FAMILY} is absent")
    return _read()[name]  # shared between tests: read, never modify


@lru_cache(maxsize=1)
def _read() -> dict:
    return torch.load(SD_FAMILY, weights_only=True)
