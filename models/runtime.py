"""Opt-in ways to run a U-Net forward faster: channels-last memory, ``torch.compile``, bf16 autocast.

Everything here is off by default. The default path is eager float32 in PyTorch's contiguous (N, C, H, W)
memory order: the one the golden-output tests pin down. Each option changes how the same network is
computed, never which network:

    channels_last  weights and inputs in (N, H, W, C) memory order ("channels last"), which oneDNN's
                   convolutions and the CPU attention kernel read without reordering. Same arithmetic up
                   to the order of float additions (matches the default to ~1e-6). In training, dropout
                   draws its mask in memory order: a different (equally distributed) mask than the default.
    compile        ``torch.compile`` of the module (TorchInductor: fuses GroupNorm -> SiLU and the residual
                   adds, on CPU through a C++ compiler). The first call of each input shape compiles (one to a
                   few minutes on 2 CPU cores, docs/PERFORMANCE.md); results match eager to float tolerance.
    bf16           ``torch.autocast`` to bfloat16 on the model's device: convolutions and matmuls run in
                   bf16, normalisation and softmax stay float32. Not exact (about 3 significant digits);
                   worth it only where the hardware has bf16 matrix units (recent GPUs, CPUs with AMX or
                   AVX512-BF16). The returned eps is float32 either way.

``Runner(model, options)`` is what samplers and training loops call in place of ``model``:
``runner(x_t, t) -> eps``. It keeps ``runner.model``, the plain ``nn.Module``, for everything that must see
the real module: state dicts and checkpoints (a compiled module would prefix every key with ``_orig_mod.``),
EMA, the pruning tracer and surgery. Build the Runner after pruning: a compiled forward is specialised to
the widths it was compiled for (the tracer itself always sees the eager module, in any memory format).

Gradients flow through a Runner (training), and it works under ``torch.inference_mode`` (sampling).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator

import torch
from torch import nn


@dataclass(frozen=True)
class RuntimeOptions:
    """How a Runner executes the model's forward (see the module docstring). All off = plain eager float32."""

    channels_last: bool = False
    compile: bool = False
    bf16: bool = False

    def to_dict(self) -> dict[str, bool]:
        return asdict(self)

    def describe(self) -> str:
        """"eager", or the options that are on joined by "+" (e.g. "channels_last+compile")."""
        on = [name for name, value in asdict(self).items() if value]
        return "+".join(on) if on else "eager"


def check_options(options: RuntimeOptions, device: torch.device | str) -> None:
    """One-line errors, before any work, for options this device cannot run."""
    device = torch.device(device)
    if options.bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"bf16 autocast requested, but {torch.cuda.get_device_name(device)} has no bfloat16 support")
    if options.bf16 and device.type not in ("cpu", "cuda"):
        raise ValueError(f"bf16 autocast is supported on cpu and cuda here, not on {device.type!r}")
    if options.compile and not hasattr(torch, "compile"):
        raise ValueError(f"torch.compile requested, but torch {torch.__version__} has no torch.compile")


class Runner:
    """``runner(x, t)`` = ``model(x, t)`` under ``options``; ``runner.model`` is the plain module.

    channels_last converts the module's parameters in place (their values are unchanged, only their memory
    order; do it before creating an optimizer, as for ``model.to(device)``). The output eps is float32
    in contiguous memory order whatever the options, so the sampler's arithmetic does not depend on them.
    """

    def __init__(self, model: nn.Module, options: RuntimeOptions = RuntimeOptions()):
        self.model = model
        self.options = options
        device = next(model.parameters()).device
        check_options(options, device)
        if options.channels_last:
            model.to(memory_format=torch.channels_last)
        # dynamic=False: sampling and training call the model with one batch shape, and a static graph is
        # the fastest; a new shape (the last, smaller batch) compiles once more.
        self._forward = torch.compile(model, dynamic=False) if options.compile else model

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        """cond: a conditional U-Net's keyword inputs (encoder_hidden_states, ...), passed on unchanged."""
        if self.options.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=self.options.bf16):
            eps = self._forward(x, t, **cond)
        # .float() and .contiguous() return eps itself when it already is float32 and contiguous.
        return eps.float().contiguous()

    # The samplers and the training loop only call the model; these make a Runner a drop-in for it.
    def eval(self) -> "Runner":
        self.model.eval()
        return self

    def train(self, mode: bool = True) -> "Runner":
        self.model.train(mode)
        return self

    @property
    def config(self):
        return self.model.config


@contextmanager
def channels_last_scope(model: nn.Module) -> Iterator[nn.Module]:
    """``with channels_last_scope(model):`` the model's 4-D weights (and buffers) in channels-last memory order
    for the block, back in their previous order afterwards, with their ``.grad`` (also after an exception).

    Convolutions read the order of their weight, so the activations follow without converting the inputs.
    For a forward + backward pass on CPU this is the fast order (oneDNN's convolutions and their backward;
    docs/PERFORMANCE.md, "The gradient pass"); values and gradients equal the contiguous order's up to the
    order of float additions. Tensors that were already channels-last stay so."""
    tensors = [p for p in model.parameters() if p.dim() == 4] + [b for b in model.buffers() if b.dim() == 4]
    restore = [t for t in tensors if t.is_contiguous() and not t.is_contiguous(memory_format=torch.channels_last)]
    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        for t in restore:
            t.data = t.data.contiguous()
            if t.grad is not None:
                t.grad = t.grad.contiguous()
