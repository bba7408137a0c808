"""The pruned widths, summarised per stage for the screen (the full per-layer table belongs in a file).

    print(stage_summary(report.widths_before, report.widths_after))
    (run / "widths.txt").write_text(width_table(report.widths_before, report.widths_after))

Stages are the first two parts of a layer name for down/up levels (``down.1``, ``up.0``) and the first part
otherwise (``temb``, ``conv_in``, ``mid``, ...), in order of first appearance.
"""
from __future__ import annotations


def stage_of(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] in ("down", "up", "down_blocks", "up_blocks") and len(parts) > 1 else parts[0]


def width_table(before: dict[str, int], after: dict[str, int]) -> str:
    """Every layer: width before -> after, '*' where it changed."""
    rows = [f"{'layer':44s} {'before':>7s}    {'after':>7s}"]
    for name, w in before.items():
        a = after.get(name, w)
        rows.append(f"{name:44s} {w:7d} -> {a:7d}{'  *' if a != w else ''}")
    return "\n".join(rows) + "\n"


def stage_summary(before: dict[str, int], after: dict[str, int]) -> str:
    """One line per stage: layers, summed widths before -> after and the kept percentage."""
    stages: dict[str, list[int]] = {}
    for name, w in before.items():
        if name.endswith(".heads"):
            continue
        s = stages.setdefault(stage_of(name), [0, 0, 0])
        s[0] += 1
        s[1] += w
        s[2] += after.get(name, w)
    rows = [f"{'stage':10s} {'layers':>6s} {'channels before -> after':>26s}  kept"]
    for stage, (n, b, a) in stages.items():
        rows.append(f"{stage:10s} {n:6d} {b:12d} -> {a:10d}  {100 * a / b:5.1f}%")
    return "\n".join(rows)
