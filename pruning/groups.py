"""Coupling groups: the sets of weight slices whose channels must be removed together.

A *group* is one channel space of size C: the output channels of some producer layers, every tensor
that is added to them elementwise, and every consumer slice that reads them. Removing channel c of the
group removes, in every member, index ``offset + c`` of that member's channel dimension.

Worked example (one ResBlock without shortcut, the time embedding added after conv1)::

    x ──► norm1 ──► conv1 ──(+ temb_proj(temb))──► norm2 ──► conv2 ──(+ x)──►
                     out          out                 norm        in

    group "down.0.block.0.conv1", C = 128, blocks = 32 (GroupNorm norm2 has 32 groups):
        Member("down.0.block.0.conv1", "out")      weight[c], bias[c]
        Member("down.0.block.0.temb_proj", "out")  weight[c], bias[c]     (broadcast add couples it)
        Member("down.0.block.0.norm2", "norm")     weight[c], bias[c]
        Member("down.0.block.0.conv2", "in")       weight[:, c]

A consumer of a concatenation gets one member per concatenated part, with that part's offset (a tensor
concatenated twice gives the same module twice with two offsets).

Roles (per layer type: ``pruning/members.py``):
    "out"   Conv2d / Linear output channels: weight dim 0 and bias; an Embedding's columns (weight dim 1).
    "in"    Conv2d / Linear input channels: weight dim 1.
    "norm"  GroupNorm / LayerNorm channels: weight and bias (affine), and ``num_channels`` / ``normalized_shape``.

``blocks``: the group's C channels form ``blocks`` contiguous blocks of C / blocks channels (GroupNorm
groups, attention heads), and pruning must remove the same number from each block, so that
``num_groups`` stays valid and every head keeps the same width.
"""
from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("out", "in", "norm")


@dataclass(frozen=True)
class Member:
    """One weight slice of a group: channel c of the group is index ``offset + c`` of ``module``'s
    channel dimension for ``role`` (see the module docstring)."""

    module: str
    role: str
    offset: int = 0

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown member role {self.role!r} for {self.module}; roles are {ROLES}")


@dataclass
class Group:
    """A coupled channel space.

    size:         C, the number of channels.
    members:      every weight slice indexed by these channels.
    blocks:       equal-removal blocks (1 = unconstrained); C % blocks == 0.
    block_reasons: which modules impose ``blocks`` (readable, for describe()).
    heads:        attention contractions that split this space head-major into several heads, as the
                  trace saw them: (module path, role, head count) such as ("down.1.attn.0", "qk", 4). The
                  count is read from the reshape the forward ran, not from any attribute (one head, or a
                  plain spatial matmul, has count 1 and adds no constraint). Surgery keeps it current when
                  whole heads go.
    protected:    non-empty when the group must keep all channels, saying why (network input/output,
                  channels produced by no prunable layer, an ignored layer).
    """

    size: int
    members: list[Member]
    blocks: int = 1
    block_reasons: list[str] = field(default_factory=list)
    heads: list[tuple[str, str, int]] = field(default_factory=list)
    protected: str = ""

    @property
    def name(self) -> str:
        """A readable name: the first producer ("out" member), else the first member."""
        producers = [m.module for m in self.members if m.role == "out"]
        return producers[0] if producers else self.members[0].module

    @property
    def prunable(self) -> bool:
        return not self.protected


def describe(groups: list[Group], *, max_members: int | None = None) -> str:
    """Print-ready listing of every group: size, constraints and each member's index range."""
    lines = []
    for i, g in enumerate(groups):
        flags = [f"C={g.size}"]
        if g.blocks > 1:
            flags.append(f"{g.blocks} blocks of {g.size // g.blocks} ({'; '.join(g.block_reasons)})")
        if g.heads:
            flags.append("heads: " + ", ".join(f"{m}.{r} x{h}" for m, r, h in g.heads))
        if g.protected:
            flags.append(f"PROTECTED: {g.protected}")
        lines.append(f"group {i}: {g.name}  [{', '.join(flags)}]")
        shown = g.members if max_members is None else g.members[:max_members]
        for m in shown:
            lines.append(f"    {m.module:<40} {m.role:<4} [{m.offset}:{m.offset + g.size}]")
        if len(shown) < len(g.members):
            lines.append(f"    ... {len(g.members) - len(shown)} more members")
    return "\n".join(lines)
