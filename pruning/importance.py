"""Channel importance: one score per channel of a coupled group.

Every criterion is ``fn(model, group, *, generator=None) -> Tensor (group.size,)``, computed from the
model's *current* weights and ``.grad`` (so it can be re-evaluated lazily on a partially pruned model,
as the paper code does). Higher = more important; selection removes the lowest scores.

Symbols: for a group member with weight W (Conv2d (O, I, kh, kw) or Linear (O, I)) and accumulated
gradient G = W.grad, slice_c(W) is channel c's slice, flattened:

    role "out":  W[offset + c]          (I * kh * kw entries: all partner channels and kernel taps)
    role "in":   W[:, offset + c]       (O * kh * kw entries)
    role "norm": gamma[offset + c]      (GroupNorm / LayerNorm affine weight; one entry)
    Embedding "out": W[:, offset + c]   (a class embedding's column: every class's entry for channel c)

Biases (conv/linear bias and the norms' beta) are never used.

The gradient criteria read G accumulated by Diff-Pruning's timestep-thresholded loop, ``accumulate_gradients``
(``pruning/gradients.py``, re-exported here).
"""
from __future__ import annotations

from collections import Counter
from typing import Callable

import torch
from torch import nn

from pruning.gradients import TimestepReport, accumulate_gradients  # noqa: F401 (re-exported)
from pruning.groups import Group, Member
from pruning.members import role_dim

ImportanceFn = Callable[..., torch.Tensor]

# ---------------------------------------------------------------------------------------------------
# Slices


def _module(model: nn.Module, member: Member) -> tuple[nn.Module, int]:
    """The member's module and the weight dim of its channels, type-checked against its role
    (``pruning/members.py``)."""
    module = model.get_submodule(member.module)
    try:
        dim, _ = role_dim(module, member.module, member.role)
    except TypeError:
        kinds = "GroupNorm or LayerNorm" if member.role == "norm" else "Conv2d, Linear or (out) Embedding"
        raise TypeError(f"member {member.module} ({member.role}) is a {type(module).__name__}; "
                        f"role {member.role!r} needs {kinds}") from None
    return module, dim


def _channel_rows(tensor: torch.Tensor, dim: int, offset: int, size: int) -> torch.Tensor:
    """slice_c(tensor) for c = 0..size-1 as rows: (size, K) in float64; ``dim`` holds the channels."""
    if dim:
        tensor = tensor.transpose(0, dim)  # (I, O, ...): input channel first
    return tensor[offset:offset + size].reshape(size, -1).double()  # (C, K)


def _weight_and_grad(model: nn.Module, member: Member, size: int, *, need_grad: bool):
    """(w, g) channel rows of the member's weight (g is None when not needed); None for a norm without affine."""
    module, dim = _module(model, member)
    if module.weight is None:  # GroupNorm(affine=False), LayerNorm(elementwise_affine=False): nothing to score
        return None
    w = _channel_rows(module.weight.detach(), dim, member.offset, size)
    if not need_grad:
        return w, None
    if module.weight.grad is None:
        raise RuntimeError(f"{member.module}.weight has no .grad; accumulate gradients (accumulate_gradients) "
                           "before scoring with a gradient-based criterion")
    return w, _channel_rows(module.weight.grad.detach(), dim, member.offset, size)


def _duplicated(group: Group) -> set[tuple[str, str]]:
    """(module, role) pairs of consumers ("in", "norm") that occur more than once in the group: the reader of a
    concat that contains this channel space twice (e.g. cat([h, skip]) with h and skip in the same group). A
    producer listed twice (GEGLU's ``ff.net.0.proj``, whose value and gate halves are tied channel for channel)
    is the group's own channel, not a doubled consumer entry, and always counts."""
    counts = Counter((m.module, m.role) for m in group.members if m.role != "out")
    return {key for key, n in counts.items() if n > 1}


# ---------------------------------------------------------------------------------------------------
# Criteria


def random_importance(model: nn.Module, group: Group, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """I_c ~ U[0, 1), i.i.d. (the paper's "Random" row). ``generator`` makes it reproducible; None uses the
    global torch RNG. The weights are not read."""
    return torch.rand(group.size, generator=generator, dtype=torch.float64)


def magnitude_importance(model: nn.Module, group: Group, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """I_c = sum_{conv/linear W in group} ||slice_c(W)||_2^2   (squared L2 of each channel's weight slices).

    GroupNorm members are excluded (as the paper repo's MagnitudeImportance, which only scores BatchNorm).
    Deviation: the paper repo takes the *mean* over layers and then divides by the mean over channels
    (VainF/Diff-Pruning, ddpm_exp/torch_pruning/importance.py, MagnitudeImportance); we *sum* over layers. Within one group both give the
    same ranking except where layers are dropped by the repo's length filter; every slice counts here,
    including both slices of a doubled concat.
    """
    scores = torch.zeros(group.size, dtype=torch.float64)
    for member in group.members:
        if member.role == "norm":
            continue
        w, _ = _weight_and_grad(model, member, group.size, need_grad=False)
        scores += w.pow(2).sum(1).cpu()
    return scores


def first_order_taylor_importance(model: nn.Module, group: Group, *,
                                  generator: torch.Generator | None = None) -> torch.Tensor:
    """First-order Taylor: I_c = sum_{conv/linear W in group} |sum_{k in slice_c(W)} w_k g_k|  +  sum_{GN} |gamma_c g_c|.

    Molchanov et al. 2019 ("Importance Estimation for Neural Network Pruning", CVPR) estimate the loss change
    of zeroing a parameter set S by its first-order term sum_{s in S} g_s w_s (their group criterion squares it;
    the absolute value ranks one layer's channels identically and is |sum w dL/dw| per slice). The sum
    over k runs inside one layer's slice; layers are then added. Every slice counts (both slices of a
    doubled concat).

    Method "taylor-first-order", with G accumulated over ALL timesteps (``thr=0``): what the reference's LDM
    script calls taylor (VainF/Diff-Pruning ldm_exp/prune_ldm.py, ``multivariable=True``). The paper's DDPM
    "taylor" row (ddpm_exp/prune.py ``--pruner taylor``) is ``diff_pruning_importance`` with thr=0: method "taylor".
    """
    scores = torch.zeros(group.size, dtype=torch.float64)
    for member in group.members:
        pair = _weight_and_grad(model, member, group.size, need_grad=True)
        if pair is None:
            continue
        w, g = pair
        scores += (w * g).sum(1).abs().cpu()  # |sum_k w_k g_k| per channel; for GN one entry: |gamma_c g_c|
    return scores


def diff_pruning_importance(model: nn.Module, group: Group, *, generator: torch.Generator | None = None,
                            concat_duplicates: str = "drop", norm_term: str = "abs") -> torch.Tensor:
    """Diff-Pruning (Fang et al. 2023; the vendored TaylorImportance of VainF/Diff-Pruning, ddpm_exp/torch_pruning/importance.py):

        I_c = sum_{conv/linear W in group} sum_{k in slice_c(W)} (W_k G_k)^2  +  sum_{GN in group} |gamma_c G_{gamma,c}|

    with G the timestep-thresholded accumulated gradient (``accumulate_gradients``). No normalisation.

    concat_duplicates: "drop" (default, the paper code) skips a consumer that reads this channel space twice
                       (its DepGraph entry has 2C entries and fails the length filter, so it is left out of
                       the sum, though it is still pruned at both offsets); "sum" adds both slices.
    norm_term:         "abs" (default, the paper code) |gamma G| for GroupNorm, or "squared" (gamma G)^2,
                       consistent with the conv/linear terms.
    """
    if concat_duplicates not in ("drop", "sum"):
        raise ValueError(f"concat_duplicates must be 'drop' or 'sum', got {concat_duplicates!r}")
    if norm_term not in ("abs", "squared"):
        raise ValueError(f"norm_term must be 'abs' or 'squared', got {norm_term!r}")
    skip = _duplicated(group) if concat_duplicates == "drop" else set()
    scores = torch.zeros(group.size, dtype=torch.float64)
    for member in group.members:
        if (member.module, member.role) in skip:
            # Quirk (paper code, importance.py L420-428): entries whose length differs from the root's are
            # dropped; a doubled concat consumer has 2C entries, so neither of its slices is counted.
            continue
        pair = _weight_and_grad(model, member, group.size, need_grad=True)
        if pair is None:
            continue
        w, g = pair
        if member.role == "norm" and norm_term == "abs":
            # Quirk (paper code, importance.py L411-418): the GroupNorm term is |gamma * G|, NOT squared,
            # unlike the conv/linear terms just below.
            scores += (w * g).abs().sum(1).cpu()
        else:
            scores += (w * g).pow(2).sum(1).cpu()  # sum_k (W_k G_k)^2
    return scores


# A plain registry (a dict of functions). pruning/api.py maps each method to one: "scratch" ranks as random,
# "taylor" (the paper's) is the diff-pruning score over every timestep.
IMPORTANCE: dict[str, ImportanceFn] = {
    "random": random_importance,
    "magnitude": magnitude_importance,
    "taylor-first-order": first_order_taylor_importance,
    "diff-pruning": diff_pruning_importance,
}
