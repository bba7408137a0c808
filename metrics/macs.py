"""Parameters and multiply-accumulates (MACs) of a network, counted during one forward pass.

Two totals come out of the same pass:

``macs_paper``: the convention of the Diff-Pruning paper's tables. The paper counts with Torch-Pruning's op
    counter (module forward hooks, input = one image and t = ones(1)). Per call of a leaf module, with
    ``out`` its output and N = out.numel() (batch 1, so N = C_out * H_out * W_out):

        Conv (k x k, C_in -> C_out, groups g)   N * k*k * C_in/g   + N if it has a bias
        ConvTranspose                           in.numel() * k*k * C_out/g   + N if it has a bias
        Linear (C_in -> C_out)                  N * C_in           + N if it has a bias
        GroupNorm / BatchNorm / LayerNorm /     2 * N if affine, else N  (normalise, then scale-and-shift)
          InstanceNorm
        nn.Upsample module                      N

    Not counted: anything functional (attention's q^T k and attn @ v, softmax, SiLU, F.interpolate,
    F.pad, residual adds, the sinusoidal embedding). Checked against the reference numbers
    (the Diff-Pruning paper's Table 1 and the author's log in VainF/Diff-Pruning issue #4: 35.7463M params,
    6.0655G MACs for CIFAR-10) on our U-Net built from the presets, random weights:

        preset     #params       conv weights       conv bias    linear (w + b)  GroupNorm    macs_paper
        cifar10     35,746,307     6,051,069,952    4,762,624    2,889,600      6,733,824     6,065,456,000 (6.0655G)
        celeba64    78,700,803    23,878,172,672   15,204,352    4,465,536     25,116,672    23,922,959,232 (23.923G)
        church256  113,673,219   248,168,579,072  185,401,344    5,450,496    331,743,232   248,691,174,144 (248.69G)

    "Conv and linear layers only" is *not* the rule: without the GroupNorm term CIFAR-10 gives
    6,058,722,176 (6.0587G), and without the biases too 6,053,953,536 (6.0540G); only conv + linear
    + biases + 2 * numel per GroupNorm gives the paper's 6.0655G (and 23.923G, 248.69G).
    One deliberate difference: the reference adds a Linear bias once per output feature, whatever the
    leading dimensions of its input; we add it once per output element. The two agree whenever a Linear
    sees a (1, C) input, which is every Linear of the U-Net (the time embedding and ``temb_proj``).

``macs_full``: ``macs_paper`` plus the multiply-accumulates of functional matrix products that run outside
    the counted modules, seen through a ``TorchFunctionMode``:

        matmul / @ / mm / bmm    (..., n, k) @ (..., k, m): out.numel() * k MACs. For attention,
                                 q^T k with (B, nh, N, d_qk) x (B, nh, d_qk, N) is B * nh * N * N * d_qk,
                                 and attn @ v is B * nh * N * N * d_v.
        addmm / baddbmm          as above (the added input is free)
        F.linear, F.conv{1,2,3}d the module rules above
        F.scaled_dot_product_attention   B * nh * L * S * (d_qk + d_v)

    Still free in ``macs_full``: softmax, activations, normalisation outside modules, elementwise ops,
    interpolation, padding. For the dense CIFAR-10 U-Net the attention products add 167,903,232 MACs
    (five 16x16 blocks with 2 * 256^2 * 256 each, plus the 4x4 mid block), so macs_full = 6,233,359,232.

The latent, conditional U-Net (models/sd) needs no rule of its own: its Linear layers see (B, N, C) token
tensors and are counted per output element like any Linear (q/k/v/out projections, GEGLU's ``proj``, the
feed-forward's second Linear, SDXL's ``proj_in``/``proj_out``), LayerNorm is a norm, and its self- and
cross-attention products go through ``F.scaled_dot_product_attention`` (L = H*W queries, S = H*W or the
number of text tokens). GEGLU's GELU and gating product, like every activation, are free. An
``nn.Embedding`` (the class embedding of class-conditional U-Nets) called as a module is a table lookup:
0 MACs in both conventions, and not listed as uncounted (its weight used in some other way still is).
On the published configs (64x64 latents, 77 text tokens, batch 1) ``macs_paper`` gives 338.96G for
SD-v1.5 and 223.89G / 217.86G / 205.16G for BK-SDM-Base / Small / Tiny: the 339G / 224G / 218G / 205G of
the BK-SDM paper (Kim et al. 2023, arXiv 2305.15798); tests/test_sd_macs.py.

A parameterised module that is none of the counted kinds (a custom layer holding an
nn.Parameter, nn.MultiheadAttention, ...) has its parameters in ``params`` but its MACs in neither total
(except for functional matmuls it runs, which ``macs_full`` sees); it is named in ``MacReport.uncounted``
so that nothing is dropped silently. The same list names functional ops we saw but cannot count (einsum).

A model built under ``torch.device("meta")`` with meta inputs counts exactly the same, in milliseconds:
only shapes are used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

PAPER_KINDS = ("conv", "linear", "norm", "upsample")  # the kinds the Diff-Pruning tables count
KINDS = PAPER_KINDS + ("matmul",)  # "matmul": functional products outside counted modules (macs_full only)
ROOT = "(model)"  # the per-module key for work done directly in the top-level module's forward

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_LOOKUP = (nn.Embedding,)  # called, it computes nothing (0 MACs, not "uncounted"); its weight read elsewhere is listed
_NORM = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
         nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


@dataclass(frozen=True)
class MacReport:
    """What ``count_macs`` measured. All counts are ints (parameter elements, or MACs for batch 1).

    params:      number of parameter elements of the model (all of them, trainable or not).
    macs_paper:  MACs in the Diff-Pruning paper's convention (= sum of per_kind over PAPER_KINDS).
    macs_full:   macs_paper + functional matrix products (= sum of per_kind over KINDS).
    per_module:  module path -> MACs. Leaf modules carry their paper-convention MACs; functional products
                 are booked on the innermost module whose forward ran them (e.g. ``mid.attn_1``), so the
                 values sum to macs_full. Work in the top-level forward is booked under ROOT.
    per_kind:    KINDS -> MACs (every kind present, zero where absent).
    uncounted:   "path (Type, n params)" for parameterised modules whose MACs are not counted, and
                 "path: op" for functional ops seen but not counted.
    """

    params: int
    macs_paper: int
    macs_full: int
    per_module: dict[str, int] = field(default_factory=dict)
    per_kind: dict[str, int] = field(default_factory=dict)
    uncounted: tuple[str, ...] = ()

    def summary(self) -> str:
        """A few human-readable lines: totals, then the per-kind split, then what was not counted."""
        lines = [f"params {format_count(self.params)} ({self.params:,})",
                 f"MACs (paper convention) {format_count(self.macs_paper)} ({self.macs_paper:,})",
                 f"MACs (with attention matmuls) {format_count(self.macs_full)} ({self.macs_full:,})"]
        lines += [f"  {kind:<9} {self.per_kind[kind]:>18,}" for kind in KINDS]
        lines += [f"  not counted: {item}" for item in self.uncounted]
        return "\n".join(lines)


def format_count(n: int | float, digits: int = 2) -> str:
    """``35746307 -> "35.75M"``, ``6065456000 -> "6.07G"`` (``digits=4``: "6.0655G"); below 1000 the plain int."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.{digits}f}{suffix}"
    return str(int(n))


def count_macs(model: nn.Module, example_inputs: tuple | torch.Tensor) -> MacReport:
    """Run ``model(*example_inputs)`` once (no grad, eval mode) and count its parameters and MACs.

    example_inputs: the positional inputs, batch 1 (e.g. ``(x of shape (1, 3, 32, 32), torch.ones(1))``);
    a tensor whose first dimension is not 1 is an error, because every count here is per image.
    The model's train/eval flags are restored afterwards. See the module docstring for the rules.
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    for i, x in enumerate(example_inputs):
        if isinstance(x, torch.Tensor) and x.dim() >= 1 and x.shape[0] != 1:
            raise ValueError(f"example_inputs[{i}] has batch size {x.shape[0]}; MACs are counted for batch 1")

    names = {m: (name or ROOT) for name, m in model.named_modules()}
    counter = _Counter()
    handles = []
    for m, name in names.items():
        handles.append(m.register_forward_pre_hook(counter.pre_hook(name, _kind(m))))
        handles.append(m.register_forward_hook(counter.post_hook(name, _kind(m))))
    was_training = {m: m.training for m in names}
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(*example_inputs)
    finally:
        for h in handles:
            h.remove()
        for m, flag in was_training.items():
            m.train(flag)

    uncounted = [f"{name} ({type(m).__name__}, {sum(p.numel() for p in m.parameters(recurse=False)):,} params)"
                 for m, name in names.items()
                 if _kind(m) is None and not (isinstance(m, _LOOKUP) and name in counter.called)
                 and any(True for _ in m.parameters(recurse=False))]
    per_kind = {kind: counter.per_kind.get(kind, 0) for kind in KINDS}
    return MacReport(params=sum(p.numel() for p in model.parameters()),
                     macs_paper=sum(per_kind[k] for k in PAPER_KINDS),
                     macs_full=sum(per_kind.values()),
                     per_module=dict(counter.per_module),
                     per_kind=per_kind,
                     uncounted=tuple(uncounted + sorted(counter.skipped)))


# ---------------------------------------------------------------------------------------------- rules
def _kind(m: nn.Module) -> str | None:
    """The counted kind of a module, or None when its own MACs are not counted."""
    if isinstance(m, _CONV + _CONV_TRANSPOSE):
        return "conv"
    if isinstance(m, nn.Linear):  # includes MultiheadAttention's out_proj subclass
        return "linear"
    if isinstance(m, _NORM):
        return "norm"
    if isinstance(m, nn.Upsample):
        return "upsample"
    return None


def _module_macs(m: nn.Module, inputs: tuple, out: torch.Tensor) -> int:
    """MACs of one call of a counted module (module docstring table); ``out`` is its output."""
    n = out.numel()
    if isinstance(m, _CONV_TRANSPOSE):
        # Every input element meets C_out/g * k*k weights (weight: (C_in, C_out/g, *k)).
        return inputs[0].numel() * math.prod(m.weight.shape[1:]) + (n if m.bias is not None else 0)
    if isinstance(m, _CONV):
        # Every output element is a dot product over C_in/g * k*k taps (weight: (C_out, C_in/g, *k)).
        return n * math.prod(m.weight.shape[1:]) + (n if m.bias is not None else 0)
    if isinstance(m, nn.Linear):
        return n * m.in_features + (n if m.bias is not None else 0)
    if isinstance(m, _NORM):
        affine = getattr(m, "affine", False) or getattr(m, "elementwise_affine", False)
        return 2 * n if affine else n
    if isinstance(m, nn.Upsample):
        return n
    raise TypeError(f"no MAC rule for {type(m).__name__}")


def _arg(args: tuple, kwargs: dict, index: int, name: str) -> Any:
    """Argument ``index`` of a torch call, positional or by keyword."""
    return args[index] if len(args) > index else kwargs.get(name)


def _functional_macs(name: str, args: tuple, kwargs: dict, out: Any) -> int | None:
    """MACs of a functional op by its torch name; 0 for free ops, None for ops we know cost but cannot count."""
    if not isinstance(out, torch.Tensor):
        return 0
    n = out.numel()
    if name in ("matmul", "mm", "bmm"):
        return n * args[0].shape[-1]  # (..., n, k) @ (..., k, m): k MACs per output element
    if name == "__rmatmul__":  # x.__rmatmul__(y) is y @ x
        return n * args[1].shape[-1]
    if name in ("addmm", "addmm_"):
        return n * _arg(args, kwargs, 1, "mat1").shape[-1]
    if name in ("baddbmm", "baddbmm_"):
        return n * _arg(args, kwargs, 1, "batch1").shape[-1]
    if name == "linear":
        bias = _arg(args, kwargs, 2, "bias")
        return n * args[1].shape[-1] + (n if bias is not None else 0)
    if name in ("conv1d", "conv2d", "conv3d"):
        bias = _arg(args, kwargs, 2, "bias")
        return n * math.prod(args[1].shape[1:]) + (n if bias is not None else 0)
    if name == "scaled_dot_product_attention":
        q, k = _arg(args, kwargs, 0, "query"), _arg(args, kwargs, 1, "key")
        positions = n // out.shape[-1]  # B * nh * L
        return positions * k.shape[-2] * (q.shape[-1] + out.shape[-1])  # q k^T, then attn @ v
    if name in ("einsum", "tensordot", "bilinear", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"):
        return None
    return 0


class _Counter(TorchFunctionMode):
    """Books module MACs (via hooks) and functional products (via ``__torch_function__``) per module path."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []  # paths of the modules whose forward is running, innermost last
        self.inside_counted = 0  # > 0 inside a counted module: its F.conv2d / F.linear is already booked
        self.per_module: dict[str, int] = {}
        self.per_kind: dict[str, int] = {}
        self.skipped: set[str] = set()
        self.called: set[str] = set()  # paths of the modules whose forward ran

    def book(self, path: str, kind: str, macs: int) -> None:
        self.per_module[path] = self.per_module.get(path, 0) + macs
        self.per_kind[kind] = self.per_kind.get(kind, 0) + macs

    def pre_hook(self, path: str, kind: str | None):
        def hook(module: nn.Module, inputs: tuple) -> None:
            self.stack.append(path)
            if kind is not None:
                self.inside_counted += 1
        return hook

    def post_hook(self, path: str, kind: str | None):
        def hook(module: nn.Module, inputs: tuple, out: Any) -> None:
            self.stack.pop()
            self.called.add(path)
            if kind is not None:
                self.inside_counted -= 1
                self.book(path, kind, _module_macs(module, inputs, out))
        return hook

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.inside_counted:
            name = getattr(func, "__name__", "")
            macs = _functional_macs(name, args, kwargs, out)
            path = self.stack[-1] if self.stack else ROOT
            if macs is None:
                self.skipped.add(f"{path}: {name} (functional, not counted)")
            elif macs:
                self.book(path, "matmul", macs)
        return out
