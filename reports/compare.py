"""Compare runs at a glance: every ``report.json`` under a folder as one table, a size-against-quality plot,
and a per-layer width chart of a pruned model.

    python -m benchmarks.compare_runs runs/            # table on screen + runs/compare/{table.csv, table.md,
                                                       #   size_vs_quality.png, widths_<run>.png}

Two report kinds are read (nothing else is assumed about a folder):
  * prune.py's report.json (``params_after``): one row per pruning run -- method, ratio, params and MACs after
    pruning, wall time (``seconds_total``). It holds no sample quality.
  * evaluate.py's report.json (``models``): one row per evaluated model -- params, MACs, FD-shapes / KID /
    FID / held-out loss / SSIM where measured, seconds per image. A model loaded from a prune run's
    ``pruned.pt`` (or a fine-tune of one whose checkpoint records ``source_model``) takes that run's method
    and ratio; other models show method "-".
The quality axis of the plot is the first metric of ``QUALITY`` that any evaluated row has.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from common.runs import atomic_path, write_text

QUALITY = ("fd_shapes", "kid_shapes", "fid", "heldout_loss", "ssim_consistency")
COLUMNS = ("run", "model", "method", "ratio", "params_M", "macs_G", *QUALITY, "seconds")


def _read(path: Path) -> dict | None:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # a half-written or foreign file: skipped, and counted by the caller
    return d if isinstance(d, dict) else None


def _prune_origin(source: str, prune_runs: dict[Path, dict]) -> dict | None:
    """The prune report a model file came from: its own folder's, or (a fine-tune) the recorded source's."""
    path = Path(source)
    for folder in (path.parent, path.parent.parent):  # runs/prune/N/pruned.pt, runs/train/N/checkpoints/x.pt
        if folder.resolve() in prune_runs:
            return prune_runs[folder.resolve()]
    return None


def collect(root: str | os.PathLike) -> tuple[list[dict[str, Any]], list[Path]]:
    """(rows, skipped report files) for every report.json under ``root``, prune runs first, sorted by path."""
    prune_runs: dict[Path, dict] = {}
    evaluations: list[tuple[Path, dict]] = []
    skipped: list[Path] = []
    for path in sorted(Path(root).rglob("report.json")):
        d = _read(path)
        if d is None:
            skipped.append(path)
        elif "params_after" in d:
            prune_runs[path.parent.resolve()] = {**d, "_folder": path.parent}
        elif isinstance(d.get("models"), list):
            evaluations.append((path, d))
        else:
            skipped.append(path)
    rows = []
    for folder, d in sorted(prune_runs.items()):
        rows.append({"run": str(d["_folder"]), "model": "pruned.pt", "method": d.get("method", "-"),
                     "ratio": d.get("ratio"), "params_M": d["params_after"] / 1e6,
                     "macs_G": (d.get("macs_paper_after") or 0) / 1e9 or None, "seconds": d.get("seconds_total"),
                     "kind": "prune", "widths_before": d.get("widths_before"), "widths_after": d.get("widths_after")})
    for path, d in evaluations:
        for m in d["models"]:
            origin = _prune_origin(str(m.get("source", "")), prune_runs)
            rows.append({"run": str(path.parent), "model": m.get("label") or m.get("name", m.get("source", "?")),
                         "method": origin.get("method", "-") if origin else "-",
                         "ratio": origin.get("ratio") if origin else None,
                         "params_M": m.get("params_M"), "macs_G": m.get("macs_paper_G"),
                         **{q: m.get(q) for q in QUALITY}, "seconds": m.get("seconds_per_image"), "kind": "evaluate"})
    return rows, skipped


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of ``rows``; columns no row fills are left out. 'seconds': wall s of a prune run,
    s per image of an evaluated model."""
    cols = [c for c in COLUMNS if any(r.get(c) is not None for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*COLUMNS, "kind"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def plot_size_vs_quality(rows: list[dict[str, Any]], path: Path) -> str | None:
    """Params and MACs against the first quality metric present; returns the metric, or None (no plot)."""
    metric = next((q for q in QUALITY if any(r.get(q) is not None for r in rows)), None)
    points = [r for r in rows if metric and r.get(metric) is not None]
    if not points:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "params_M", "params (M)"), (axes[1], "macs_G", "MACs (G, paper's count)")):
        for r in points:
            if r.get(key) is None:
                continue
            ax.scatter(r[key], r[metric], color="k" if r["method"] == "-" else "C0")
            ax.annotate(f"{r['model']} ({r['method']}{'' if r['ratio'] is None else ' ' + format(r['ratio'], '.2g')})",
                        (r[key], r[metric]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{metric} against size ({len(points)} evaluated models)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return metric


_STAGES = {"temb": 0, "time_embedding": 0, "conv_in": 1, "down": 2, "down_blocks": 2, "mid": 3, "mid_block": 3,
           "up": 4, "up_blocks": 4, "norm_out": 5, "conv_norm_out": 5, "conv_out": 6}


def _stage_order(name: str) -> tuple:
    """Stage order of a layer name: embedding, input conv, encoder levels, middle, decoder levels (the DDPM
    numbers its decoder up.{L-1} .. up.0, run in that order), output; the name within a stage."""
    parts = name.split(".")
    level = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return (_STAGES.get(parts[0], 7), -level if parts[0] == "up" else level, name)


def plot_widths(widths_before: dict[str, int], widths_after: dict[str, int], path: Path, title: str = "") -> None:
    """Kept fraction (after / before) of every prunable layer, in stage order (_stage_order), coloured by stage."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted((n for n in widths_before if n in widths_after and not n.endswith(".heads")), key=_stage_order)
    kept = [widths_after[n] / widths_before[n] for n in names]
    colours = ["C0" if n.startswith("down") else "C1" if n.startswith("mid") else "C2" if n.startswith("up")
               else "C7" for n in names]
    fig, ax = plt.subplots(figsize=(max(6, 0.12 * len(names)), 4))
    ax.bar(range(len(names)), kept, color=colours)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=5)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("kept width / dense width")
    ax.set_title(title or "per-layer widths (blue: encoder, orange: middle, green: decoder)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> Path:
    import argparse

    p = argparse.ArgumentParser(prog="python -m benchmarks.compare_runs", description=__doc__.split("\n\n")[0])
    p.add_argument("root", nargs="?", default="runs", help="folder searched for report.json (default runs)")
    p.add_argument("--out", default=None, help="output folder (default ROOT/compare); files in it are replaced")
    a = p.parse_args(argv)
    if not Path(a.root).is_dir():
        raise SystemExit(f"compare_runs: {a.root} is not a folder")
    rows, skipped = collect(a.root)
    if not rows:
        raise SystemExit(f"compare_runs: no prune.py or evaluate.py report.json under {a.root}")
    out = Path(a.out) if a.out else Path(a.root) / "compare"
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(rows)
    print(table)
    write_text(out / "table.md", table + "\n")
    write_csv(rows, out / "table.csv")
    metric = plot_size_vs_quality(rows, out / "size_vs_quality.png")
    for r in rows:
        if r["kind"] == "prune" and r.get("widths_before") and r.get("widths_after"):
            plot_widths(r["widths_before"], r["widths_after"], out / f"widths_{Path(r['run']).name}.png",
                        title=f"{Path(r['run']).name}: {r['method']} ratio {r['ratio']}")
    print(f"[compare] {len(rows)} rows -> {out}/table.md, table.csv"
          + (f", size_vs_quality.png ({metric})" if metric else " (no evaluated quality metric: no plot)")
          + (f"; skipped {len(skipped)} unreadable/foreign report.json" if skipped else ""))
    return out
