"""Is a network usable at all: every weight materialised and finite. Checked before any long work on it.

A diverged run or a corrupted file can hold an inf or NaN in a single tensor. Nothing downstream fails
loudly: magnitude pruning ranks the channels and writes the tensor on, sampling draws black images that FD
and KID then score as if real. So every script and API that spends time on a model (prune,
prune_layers, evaluate) asks here first, and the answer names the tensor. A model built under
``torch.device("meta")`` has shapes but no values: also refused here, in one line, rather than as torch's
"Cannot copy out of meta tensor" deep inside the work.

    check_weights(model, "model")                    # raises UserError naming the first bad tensor
    non_finite_tensors(model.state_dict())           # ['temb.dense.1.bias', ...]
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from common.errors import UserError


def non_finite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an inf, in the mapping's order (meta tensors,
    which hold no values, are skipped)."""
    return [name for name, value in tensors.items()
            if value.is_floating_point() and not value.is_meta and not bool(torch.isfinite(value).all())]


def meta_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the tensors that live on the meta device (shapes only, no data)."""
    return [name for name, value in tensors.items() if value.is_meta]


def check_weights(model: nn.Module | Mapping[str, torch.Tensor], what: str = "model") -> None:
    """Raise a one-line ``UserError`` when a parameter or buffer of ``model`` (a module or a state dict) is on
    the meta device or holds a NaN or inf, naming the first such tensor and how many there are."""
    tensors = model.state_dict() if isinstance(model, nn.Module) else model
    meta = meta_tensors(tensors)
    if meta:
        raise UserError(f"{what} lives on the meta device (shapes, no values): tensor {meta[0]!r}"
                        f"{_more(meta)}; load weights into it first (model.to_empty(device=...) then "
                        f"load_state_dict)")
    bad = non_finite_tensors(tensors)
    if bad:
        raise UserError(f"{what} holds non-finite values (nan or inf) in tensor {bad[0]!r}{_more(bad)}: a diverged "
                        f"or corrupted checkpoint; nothing was done with it")


def _more(names: list[str]) -> str:
    return f" and {len(names) - 1} more" if len(names) > 1 else ""
