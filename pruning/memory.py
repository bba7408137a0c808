"""Does the gradient pass fit the device? An estimate before the long work, and an out-of-memory error inside the
pass turned into one line.

The gradient methods (taylor, taylor-first-order, diff-pruning; layer pruning's taylor criterion) hold, for every
U-Net parameter in float32 (4 bytes), during ``accumulate_gradients`` (pruning/gradients.py):

    the weight W;  its accumulated gradient G = W.grad (backward adds each L_t's gradient into it in place);
    when micro_batch < batch_size, the snapshot of G taken before each t (restored when L_t falls below
    thr * L_max), one more copy

besides the frozen parts (VAE, text encoder(s)), also float32 as prune.py loads them:

    bytes >= 4 * P_unet * (2 + [micro_batch < batch_size]) + 4 * P_frozen

Activations come on top and are not counted, so an estimate above the device's TOTAL memory can never run, on
an empty machine or not: SDXL's U-Net (2.6 G parameters) is 10.3 GB of weights plus 10.3 GB of gradients, and a
24 GB machine died in the first backward (the run: docs/RECIPES.md, random-weight SDXL).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from common.errors import UserError
from common.resources import gib, total_memory

BYTES = 4  # float32: prune.py loads every part in float32


def gradient_copies(*, micro_batch: int, batch_size: int) -> int:
    """Float32 tensors per U-Net parameter in the gradient pass: W, G, and G's snapshot when a timestep's batch is
    split (micro_batch < batch_size; ``accumulate_gradients``' per-t loop)."""
    return 2 + int(micro_batch < batch_size)


def gradient_pass_bytes(unet_params: int, *, frozen_params: int, micro_batch: int, batch_size: int) -> int:
    """The lower bound of the module docstring, in bytes (activations not counted)."""
    return BYTES * (unet_params * gradient_copies(micro_batch=micro_batch, batch_size=batch_size) + frozen_params)


def check_gradient_memory(source: str, what: str, *, unet_params: int, frozen_params: int, micro_batch: int,
                          batch_size: int, device: str) -> None:
    """A one-line UserError when the gradient pass of ``what`` (e.g. "method 'taylor'") on the model ``source``
    needs more than ``device`` has in all (``common.resources.total_memory``); nothing where the total is unknown."""
    total = total_memory(device)
    need = gradient_pass_bytes(unet_params, frozen_params=frozen_params, micro_batch=micro_batch,
                               batch_size=batch_size)
    if total is None or need <= total:
        return
    copies = gradient_copies(micro_batch=micro_batch, batch_size=batch_size)
    held = "weight, gradient" + (", gradient snapshot" if copies == 3 else "")
    snapshot = (f"; --micro-batch {batch_size} (= --batch-size) drops the gradient snapshot" if copies == 3 else "")
    raise UserError(f"--model {source}: the gradient pass of {what} needs at least {gib(need)} ({unet_params / 1e9:.2f} G "
                    f"U-Net parameters x 4 B x {copies} ({held}) + {gib(BYTES * frozen_params)} of frozen VAE / text "
                    f"encoders, before activations), more than the {gib(total)} that device {device} has in all; "
                    f"use a GPU with more memory (--device cuda){snapshot}, or a data-free method (random, magnitude)")


def folder_parameters(folder: str | os.PathLike) -> dict[str, int] | None:
    """{component: parameter + buffer elements} of a pipeline folder's modules, from their config.json alone (each
    built on the meta device: nothing read, no memory); None when ``folder`` is not such a folder."""
    from models.pipelines.component import BUILDERS, class_name, read_config
    from models.pipelines.pipeline import listed_components, read_model_index
    from models.pipelines.weights import on_meta

    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        return None
    counts = {}
    for name in listed_components(read_model_index(folder)):
        if not (folder / name / "config.json").is_file():
            continue  # tokenizers, the scheduler
        config = read_config(folder / name)
        build = BUILDERS.get(class_name(config))
        if build is None:
            return None  # a class the loader refuses; it says so, naming it
        module = on_meta(build, config)
        counts[name] = sum(t.numel() for t in (*module.parameters(), *module.buffers()))
    return counts if "unet" in counts else None


def is_out_of_memory(error: BaseException) -> bool:
    """A failed allocation: CUDA's ``torch.OutOfMemoryError``, the CPU allocator's RuntimeError ("can't allocate
    memory"), Python's MemoryError; not any other RuntimeError."""
    import torch

    if isinstance(error, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


@contextmanager
def out_of_memory_named(where: str, *, micro_batch: int, batch_size: int) -> Iterator[None]:
    """Turn an out-of-memory error raised inside into one line naming ``where`` (the timestep(s) and samples of
    the forward/backward) and what helps; every other error passes unchanged."""
    try:
        yield
    except (RuntimeError, MemoryError) as e:
        if not is_out_of_memory(e):
            raise
        cause = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"out of memory in the gradient pass at {where} (--micro-batch {micro_batch}, --batch-size "
                        f"{batch_size}): give a smaller --micro-batch (same result, fewer samples per backward) or "
                        f"a smaller --batch-size, or a device with more memory ({cause})") from None
