"""Reading weight files lazily into modules built on the meta device: one copy of the weights, never two.

    module = build(config) under torch.device("meta")       # shapes only, no memory
    source = open_weights(path)                              # safetensors: safe_open, one tensor at a time
    assign_weights(module, plan, source, what=...)           # check ALL names and shapes first, then read

``plan`` maps each of the module's state-dict names to a ``Source`` (the file's name and a transform,
models/pipelines/original_layout.py); a diffusers file's plan is the identity. A file that does not fit is
reported in ONE error naming the missing, unexpected and mis-shaped tensors, before anything is read; the
tensors are then read one by one (safetensors maps the file; ``.bin``/``.ckpt`` files are memory-mapped
by ``torch.load(mmap=True)``), cast to the target dtype and handed to ``load_state_dict(assign=True)``,
which adopts them without a copy.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from models.pipelines.original_layout import Source, apply


class WeightFile:
    """Names, shapes and tensors of one or more weight files, read on demand.

    paths: .safetensors files (opened with safetensors.safe_open), or torch files (.bin/.ckpt/.pt, read with
    ``weights_only=True`` and memory-mapped where the format allows; a Lightning-style {"state_dict": ...}
    is unwrapped). A sharded checkpoint passes all its shards.
    """

    def __init__(self, paths: Iterable[str | os.PathLike]):
        self.paths = [Path(p) for p in paths]
        self._where: dict[str, object] = {}  # name -> the open handle holding it
        for path in self.paths:
            if not path.is_file():
                raise FileNotFoundError(f"weight file {path} does not exist")
            if path.suffix == ".safetensors":
                from safetensors import safe_open
                handle = safe_open(str(path), framework="pt", device="cpu")
                names = list(handle.keys())
            else:
                handle = _torch_state_dict(path)
                names = list(handle)
            for name in names:
                self._where[name] = handle

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        handle = self._where[name]
        if isinstance(handle, dict):
            return tuple(handle[name].shape)
        return tuple(handle.get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        handle = self._where[name]
        return handle[name] if isinstance(handle, dict) else handle.get_tensor(name)

    def __str__(self) -> str:
        return str(self.paths[0]) if len(self.paths) == 1 else f"{self.paths[0].parent} ({len(self.paths)} shards)"


def _torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a legacy (non-zip) torch file cannot be memory-mapped
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle that needs code (a Lightning module, a whole model): refused
        raise ValueError(f"{path}: cannot be read with weights_only=True ({type(e).__name__}); "
                         f"save its state dict (or convert it to .safetensors) and pass that") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return {k: v for k, v in obj.items() if torch.is_tensor(v)}


def open_weights(path: str | os.PathLike) -> WeightFile:
    """A weight file, or a sharded one through its ``*.index.json`` (``{"weight_map": {name: shard}}``)."""
    path = Path(path)
    if path.name.endswith(".index.json"):
        weight_map = json.loads(path.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{path}: no 'weight_map' in the shard index")
        return WeightFile(path.parent / shard for shard in dict.fromkeys(weight_map.values()))
    return WeightFile([path])


def result_shape(src: Source, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape that ``apply(src, tensor)`` gives a tensor of ``shape`` (without reading it)."""
    if src.op == "copy":
        return shape
    if src.op == "squeeze":
        return shape[:2] if len(shape) > 2 else shape
    c = shape[0] // 3
    return (c, shape[1]) if len(shape) > 1 else (c,)


def _listing(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f" ... (+{len(names) - limit} more)" if len(names) > limit else "")


def check_fit(module: nn.Module, plan: Mapping[str, Source], source: WeightFile, *, what: str,
              expected_prefixes: tuple[str, ...] = ("",), ignore: tuple[str, ...] = ()) -> None:
    """Raise ONE ValueError naming every missing, unexpected and mis-shaped tensor, or return.

    expected_prefixes: file names under these prefixes belong to this module (others are other components');
    ignore: name parts of buffers or bookkeeping, never reported (e.g. ``position_ids``).
    """
    targets = module.state_dict(keep_vars=True)
    missing, misshaped, used = [], [], set()
    for name, param in targets.items():
        src = plan.get(name, Source(name))
        if src.key not in source:
            missing.append(f"{src.key}" + (f" (for {name})" if src.key != name else ""))
            continue
        used.add(src.key)
        got = result_shape(src, source.shape(src.key))
        if tuple(got) != tuple(param.shape):
            misshaped.append(f"{src.key} {tuple(source.shape(src.key))} vs {name} {tuple(param.shape)}")
    unexpected = [k for k in source.keys() if k not in used and k.startswith(expected_prefixes)
                  and not any(part in k for part in ignore)]
    if missing or unexpected or misshaped:
        parts = [f"{len(missing)} missing: {_listing(missing)}" if missing else "",
                 f"{len(unexpected)} unexpected: {_listing(unexpected)}" if unexpected else "",
                 f"{len(misshaped)} mis-shaped (file vs model): {_listing(misshaped)}" if misshaped else ""]
        raise ValueError(f"{source} does not fit {what}: " + "; ".join(p for p in parts if p))


def assign_weights(module: nn.Module, plan: Mapping[str, Source], source: WeightFile, *, what: str,
                   dtype: torch.dtype | None = torch.float32, expected_prefixes: tuple[str, ...] = ("",),
                   ignore: tuple[str, ...] = ()) -> nn.Module:
    """Fill a (meta-device) module from ``source`` through ``plan`` (module name -> Source; absent = same name).

    Everything is checked before the first tensor is read (``check_fit``). dtype: the floating-point dtype
    the weights get (None keeps the file's). Returns the module, in eval mode.
    """
    check_fit(module, plan, source, what=what, expected_prefixes=expected_prefixes, ignore=ignore)
    state = {}
    for name, param in module.state_dict(keep_vars=True).items():
        src = plan.get(name, Source(name))
        tensor = apply(src, source.get(src.key))
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        elif not tensor.is_floating_point():
            tensor = tensor.to(param.dtype)
        state[name] = tensor.contiguous()
    module.load_state_dict(state, strict=True, assign=True)
    leftovers = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if leftovers:  # a non-persistent buffer would stay on the meta device: refuse rather than fail later
        raise ValueError(f"{what}: tensors not in any state dict stayed unset: {_listing(leftovers)}")
    return module.eval()


class _SkipInit(TorchFunctionMode):
    """Turns the in-place initialisers into no-ops on meta tensors: there is nothing to fill, and ``normal_``
    on a meta tensor runs a Python decomposition whose first use imports torch._dynamo (seconds)."""

    SKIPPED = {torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.zero_, torch.Tensor.fill_,
               torch.Tensor.erfinv_, torch.Tensor.clamp_, torch.Tensor.mul_, torch.Tensor.add_,
               *(getattr(nn.init, name) for name in ("normal_", "uniform_", "constant_", "ones_", "zeros_",
                                                      "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
                                                      "xavier_normal_", "trunc_normal_", "orthogonal_"))}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")  # nn.init passes the tensor by keyword
        if func in self.SKIPPED and isinstance(target, torch.Tensor) and target.is_meta:
            return target
        return func(*args, **kwargs)


def on_meta(build, *args, **kwargs) -> nn.Module:
    """``build(*args, **kwargs)`` with every parameter on the meta device (no memory, no init time)."""
    with torch.device("meta"), _SkipInit():
        return build(*args, **kwargs)
