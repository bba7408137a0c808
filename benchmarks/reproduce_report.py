"""The tables, plots and per-claim verdicts of benchmarks/reproduce.py, from its saved cells.

Verdict rule (docs/RESULTS.md): method A beats B on a metric only when A's mean is better AND the intervals
mean +- std over seeds do not overlap; where they overlap the claim is "not supported at this scale", which
is a result about this scale, not about the paper. FD-shapes is the primary metric (FID's role in the papers),
the held-out eps-MSE and SSIM are reported beside it.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from models.checkpoint import environment

BEGIN, END = "<!-- reproduce.py:begin (generated; edit benchmarks/reproduce_report.py) -->", "<!-- reproduce.py:end -->"
LOWER_IS_BETTER = {"fd_shapes": True, "kid_shapes": True, "heldout_loss": True, "ssim_to_teacher": False}
METRICS = ("fd_shapes", "kid_shapes", "ssim_to_teacher", "heldout_loss")
# Fang, Ma & Wang 2023 (arXiv 2305.10924), Table 1: (FID, SSIM) after 100K fine-tune steps at ratio 0.3, on
# CIFAR-10 32x32 and CelebA 64x64 (scratch: the 100K-step row). Threshold 0.1 is not in the table.
PUBLISHED = {"teacher": ((4.19, 1.000), (6.48, 1.000)), "scratch": ((9.88, 0.887), (7.08, 0.833)),
             "random": ((5.62, 0.926), (6.70, 0.874)), "magnitude": ((5.48, 0.929), (7.08, 0.870)),
             "taylor": ((5.56, 0.928), (6.64, 0.880)), "diff-pruning@0.0": ((5.49, 0.932), (6.24, 0.885)),
             "diff-pruning@0.02": ((5.44, 0.931), (6.45, 0.878)), "diff-pruning@0.05": ((5.29, 0.932), (6.52, 0.878))}


def stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def compare(a: dict, b: dict, metric: str) -> str:
    """'better' / 'worse' (A against B, intervals separated) or 'overlap'."""
    sa, sb = a[metric], b[metric]
    separated = abs(sa["mean"] - sb["mean"]) > sa["std"] + sb["std"]
    if not separated or min(sa["n"], sb["n"]) < 2:
        return "overlap"
    a_better = (sa["mean"] < sb["mean"]) == LOWER_IS_BETTER[metric]
    return "better" if a_better else "worse"


def load_cells(work: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((work / "cells").glob("*.json"))}


def rows_for(cells: dict, methods, ratio: float, seeds) -> dict[str, dict]:
    rows = {}
    for m in methods:
        found = [cells[f"{m}-r{ratio}-s{s}"] for s in seeds if f"{m}-r{ratio}-s{s}" in cells]
        if not found:
            continue
        row = {"method": m, "seeds": [c["seed"] for c in found], "params": found[0]["params"],
               "macs_paper": found[0]["macs_paper"], "pruned_heldout_loss": stats([c["pruned_heldout_loss"] for c in found])}
        row.update({k: stats([c[k] for c in found]) for k in METRICS})
        rows[m] = row
    return rows


def fmt(s: dict, spec: str) -> str:
    return f"{s['mean']:{spec}} ± {s['std']:{spec}}" if s["n"] > 1 else f"{s['mean']:{spec}}"


def published(method: str) -> str:
    if method not in PUBLISHED:
        return "- | -"
    (fc, sc), (fa, sa) = PUBLISHED[method]
    return f"{fc:.2f} / {sc:.3f} | {fa:.2f} / {sa:.3f}"


def table(rows: dict[str, dict], teacher: dict | None, paper: bool = False) -> list[str]:
    extra = " paper CIFAR-10 FID / SSIM | paper CelebA-64 FID / SSIM |" if paper else ""
    lines = ["| method | params | MACs | eps-MSE after pruning | FD-shapes | KID-shapes | SSIM to teacher | "
             "eps-MSE fine-tuned | seeds |" + extra, "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if paper else "")]
    if teacher:
        lines.append(f"| teacher (dense) | {teacher['params'] / 1e6:.3f}M | {teacher['macs_paper'] / 1e6:.1f}M | - | "
                     f"{teacher['fd_shapes']:.2f} | {teacher['kid_shapes']:.3f} | 1 | {teacher['heldout_loss']:.5f} | - |"
                     + (f" {published('teacher')} |" if paper else ""))
    for r in rows.values():
        lines.append(f"| {r['method']} | {r['params'] / 1e6:.3f}M | {r['macs_paper'] / 1e6:.1f}M | "
                     f"{fmt(r['pruned_heldout_loss'], '.4f')} | {fmt(r['fd_shapes'], '.2f')} | "
                     f"{fmt(r['kid_shapes'], '.3f')} | {fmt(r['ssim_to_teacher'], '.3f')} | "
                     f"{fmt(r['heldout_loss'], '.5f')} | {len(r['seeds'])} |" + (f" {published(r['method'])} |" if paper else ""))
    return lines


def verdict_beats(rows: dict, a: str, others: list[str], metrics=("fd_shapes", "heldout_loss")) -> dict:
    """Does row a beat each of ``others``? Per (other, metric): better / worse / overlap; overall verdict on FD."""
    if a not in rows or any(o not in rows for o in others):
        return {"verdict": "incomplete (cells missing)", "pairs": {}}
    pairs = {f"{a} vs {o} ({m})": compare(rows[a], rows[o], m) for o in others for m in metrics}
    fd = [compare(rows[a], rows[o], metrics[0]) for o in others]
    if all(x == "better" for x in fd):
        v = "supported"
    elif any(x == "worse" for x in fd):
        v = "contradicted at this scale"
    else:
        v = "not supported at this scale (spreads overlap)"
    return {"verdict": v, "pairs": pairs}


def verdicts(rows: dict, curves: dict, teacher: dict | None, teacher_steps: int, additivity: dict | None) -> dict:
    out = {}
    out["C1"] = verdict_beats(rows, "diff-pruning@0.05", ["random", "magnitude", "taylor"])
    c2 = verdict_beats(rows, "diff-pruning@0.05", ["scratch"], metrics=("ssim_to_teacher", "fd_shapes"))
    out["C2"] = c2
    curve = curves.get("diff-pruning@0.05")
    if curve and teacher:
        pts = curve["points"]
        start = pts[0]["fd_shapes"]
        rec = []
        for p in pts[1:]:
            frac = p["step"] / teacher_steps
            gap = start - teacher["fd_shapes"]
            rec.append({"step": p["step"], "fraction_of_teacher_steps": frac, "fd_shapes": p["fd_shapes"],
                        "fd_gap_recovered": (start - p["fd_shapes"]) / gap if gap > 0 else None})
        within = [r for r in rec if r["fraction_of_teacher_steps"] <= 0.2 + 1e-9 and r["fd_gap_recovered"] is not None]
        best = max((r["fd_gap_recovered"] for r in within), default=None)
        v = ("supported (one seed)" if best is not None and best >= 0.8 else
             "not supported at this scale (one seed)" if best is not None else "incomplete")
        out["C3"] = {"verdict": v, "recovery": rec, "teacher_steps": teacher_steps,
                     "rule": "share of the FD-shapes gap between the pruned model (step 0) and the teacher that is "
                             "recovered by <= 20% of the teacher's training steps; 'most' = at least 80%"}
    else:
        out["C3"] = {"verdict": "incomplete (curve missing)"}
    thr = [f"diff-pruning@{t}" for t in ("0.0", "0.02", "0.05", "0.1")]
    if all(t in rows for t in thr):
        # Two parts: does the threshold matter at all (best against worst), and is an intermediate one best?
        best = min(thr, key=lambda t: rows[t]["fd_shapes"]["mean"])
        worst = max(thr, key=lambda t: rows[t]["fd_shapes"]["mean"])
        matters = compare(rows[best], rows[worst], "fd_shapes") == "better"
        ends = [t for t in (thr[0], thr[-1]) if t != best]
        res = verdict_beats(rows, best, ends)
        intermediate = best in thr[1:3]
        part1 = (f"the threshold matters ({best} beats {worst})" if matters else
                 f"that the threshold matters is not resolved ({best} and {worst} overlap)")
        if intermediate and res["verdict"] == "supported":
            part2 = f"an intermediate one is best ({best} beats both ends): supported"
        elif not intermediate:
            part2 = f"an intermediate one is best: not supported, the best mean is an end of the range ({best})"
        else:
            part2 = f"an intermediate one is best: not supported at this scale ({best} overlaps an end)"
        pairs = dict(res["pairs"])
        pairs[f"{best} vs {worst} (fd_shapes)"] = compare(rows[best], rows[worst], "fd_shapes")
        out["C4"] = {"verdict": f"{part1}; {part2}", "pairs": pairs, "best_mean": best, "worst_mean": worst,
                     "matters": matters, "intermediate_best": intermediate and res["verdict"] == "supported"}
    else:
        out["C4"] = {"verdict": "incomplete (cells missing)"}
    c5 = verdict_beats(rows, "layer:output-loss", ["layer:random", "layer:handcrafted", "layer:taylor"])
    if additivity:
        c5["additivity_pearson"] = {k: {size: s["pearson"] for size, s in v.items()} for k, v in additivity["stats"].items()}
    out["C5"] = c5
    out["C6"] = verdict_beats(rows, "layer:output-loss+feature-normalized",
                              ["layer:output-loss+feature", "layer:output-loss+output", "layer:output-loss"])
    return out


def plots(results: Path, cells: dict, curves: dict, teacher: dict | None, key: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lt = cells.get(f"pruned-diff-pruning@0.0-{key}")
    if lt and lt.get("losses"):
        fig, ax = plt.subplots(figsize=(6, 3.4))
        ax.plot(range(len(lt["losses"])), lt["losses"], lw=1)
        for i, t in enumerate(("0.02", "0.05", "0.1")):
            c = cells.get(f"pruned-diff-pruning@{t}-{key}")
            if c and c.get("stopped_at") is not None:
                ax.axvline(c["stopped_at"], color=f"C{i + 1}", ls="--", label=f"thr {t}: stop at t={c['stopped_at']}")
        ax.set(xlabel="timestep t", ylabel="L_t (summed eps-MSE)", yscale="log",
               title=f"Diff-Pruning L_t on the teacher ({key}) and each threshold's cut")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(results / "reproduce_lt_curve.png", dpi=110)
        plt.close(fig)
    if curves:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        for m, c in curves.items():
            steps = [p["step"] for p in c["points"]]
            axes[0].plot(steps, [p["fd_shapes"] for p in c["points"]], "o-", label=m)
            axes[1].plot(steps, [p["ssim_to_teacher"] for p in c["points"]], "o-", label=m)
        if teacher:
            axes[0].axhline(teacher["fd_shapes"], color="k", ls=":", label="teacher")
        axes[0].set(xlabel="fine-tune steps (batch 32)", ylabel="FD-shapes", yscale="log")
        axes[1].set(xlabel="fine-tune steps (batch 32)", ylabel="SSIM to teacher")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(results / "reproduce_finetune_curve.png", dpi=110)
        plt.close(fig)


def _relative(path) -> str:
    """``path`` relative to the repository when it lies inside it (results stay valid in any clone)."""
    root = Path(__file__).resolve().parents[1]
    p = Path(path).resolve()
    return str(p.relative_to(root)) if p.is_relative_to(root) else str(path)


def write_report(cfg, study, jobs, wall: float) -> dict:
    work, results = Path(cfg.work), Path(cfg.results)
    results.mkdir(parents=True, exist_ok=True)
    cells = load_cells(work)
    teacher = cells.get("teacher")
    teacher_steps = study.teacher_steps()
    rows = rows_for(cells, cfg.methods, cfg.ratio, cfg.seeds)
    s0 = cfg.seeds[0]
    curves = {m: cells[f"curve-{m}-s{s0}"] for m in cfg.curve_methods if f"curve-{m}-s{s0}" in cells}
    sweep = {r: rows_for(cells, cfg.sweep_methods, r, cfg.seeds[:1]) for r in sorted({*cfg.sweep_ratios, cfg.ratio})}
    v = verdicts(rows, curves, teacher, teacher_steps, cells.get("additivity"))
    done = sum(1 for fn, args in jobs if fn == "main_cell" and
               f"{args[0]}-r{args[2] if len(args) > 2 else cfg.ratio}-s{args[1]}" in cells)
    expected = sum(1 for fn, _ in jobs if fn == "main_cell")
    seconds = sum(c.get("seconds", 0) for k, c in cells.items() if not k.startswith("pruned-"))
    command = (f"python benchmarks/reproduce.py --seeds {' '.join(map(str, cfg.seeds))} --steps {cfg.steps} "
               f"--num-samples {cfg.num_samples} --curve-steps {cfg.curve_steps}")
    result = {"benchmark": "reproduce", "partial": done < expected, "cells_done": done, "cells_expected": expected,
              "command": command, "teacher": _relative(cfg.teacher), "teacher_total_steps": teacher_steps,
              "finetune": {"steps": cfg.steps, "batch_size": 32, "lr": cfg.lr, "ema_decay": cfg.ema_decay},
              "probe": study.probe_description(), "seconds_all_cells": round(seconds, 1),
              "wall_seconds_this_invocation": round(wall, 1), "teacher_metrics": teacher, "rows": rows,
              "sweep": {str(r): s for r, s in sweep.items()}, "curves": curves, "verdicts": v,
              "additivity": cells.get("additivity"), "environment": environment(),
              "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (results / "reproduce.json").write_text(json.dumps(result, indent=2) + "\n")
    plots(results, cells, curves, teacher, f"r{cfg.ratio}-s{s0}")
    md = markdown(result, cfg)
    (results / "reproduce.md").write_text(md + "\n")
    if cfg.docs and Path(cfg.docs).exists():
        text = Path(cfg.docs).read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            Path(cfg.docs).write_text(head + BEGIN + "\n" + md + "\n" + END + rest.split(END, 1)[1])
    print(md)
    return result


def markdown(r: dict, cfg) -> str:
    channel = {k: v for k, v in r["rows"].items() if not k.startswith("layer:")}
    layer = {k: v for k, v in r["rows"].items() if k.startswith("layer:")}
    p = r["probe"]
    lines = [("**PARTIAL RESULTS** " if r["partial"] else "") + f"{r['cells_done']} of {r['cells_expected']} "
             f"fine-tuned cells; `{r['command']}`; {r['seconds_all_cells'] / 60:.0f} min of cell time on "
             f"{r['environment'].get('torch', '?')}, written {r['written']}.", "",
             f"Every model: fine-tuned {r['finetune']['steps']} steps (batch 32, lr {r['finetune']['lr']}, EMA "
             f"{r['finetune']['ema_decay']}; {r['finetune']['steps'] / max(r['teacher_total_steps'], 1):.1%} of the "
             f"teacher's {r['teacher_total_steps']} steps), then measured on {p['num_samples']} DDIM-{p['ddim_steps']} "
             f"samples (FD-shapes, KID-shapes, SSIM to the teacher's samples from the same noise) and on the held-out "
             f"eps-MSE ({p['heldout_images']} test images x {p['heldout_draws']} draws). Mean ± std over the seeds.", "",
             f"### Channel pruning at ratio {cfg.ratio} (Diff-Pruning's Table 1 in miniature)", ""]
    lines += table(channel, r["teacher_metrics"], paper=True)
    lines += ["", "### Layer pruning at the same parameter count (LAPTOP-Diff's tables in miniature)", ""]
    lines += table(layer, r["teacher_metrics"])
    if any(s for s in r["sweep"].values()):
        lines += ["", f"### Ratio sweep (seed {cfg.seeds[0]})", "", "| ratio | method | params | MACs | FD-shapes | SSIM | eps-MSE |",
                  "|---|---|---|---|---|---|---|"]
        for ratio, rows in r["sweep"].items():
            for m, row in rows.items():
                lines.append(f"| {ratio} | {m} | {row['params'] / 1e6:.3f}M | {row['macs_paper'] / 1e6:.1f}M | "
                             f"{row['fd_shapes']['mean']:.2f} | {row['ssim_to_teacher']['mean']:.3f} | "
                             f"{row['heldout_loss']['mean']:.5f} |")
    if r["curves"]:
        lines += ["", f"### Quality against fine-tune steps (seed {cfg.seeds[0]})", "",
                  "| method | step | share of teacher steps | FD-shapes | SSIM | eps-MSE |", "|---|---|---|---|---|---|"]
        for m, c in r["curves"].items():
            for pt in c["points"]:
                lines.append(f"| {m} | {pt['step']} | {pt['step'] / max(r['teacher_total_steps'], 1):.1%} | "
                             f"{pt['fd_shapes']:.2f} | {pt['ssim_to_teacher']:.3f} | {pt['heldout_loss']:.5f} |")
    lines += ["", "### Verdicts (rule: benchmarks/reproduce_report.py)", ""]
    for claim, v in r["verdicts"].items():
        lines.append(f"- **{claim}**: {v['verdict']}")
        for pair, res in v.get("pairs", {}).items():
            lines.append(f"  - {pair}: {res}")
        if "additivity_pearson" in v:
            lines.append(f"  - additivity, Pearson r of L(S) against summed scores by |S|: "
                         f"{json.dumps({k: {s: round(x, 3) if x is not None else None for s, x in d.items()} for k, d in v['additivity_pearson'].items()})}")
        for rec in v.get("recovery", []):
            g = rec["fd_gap_recovered"]
            lines.append(f"  - step {rec['step']} ({rec['fraction_of_teacher_steps']:.1%} of the teacher's steps): "
                         f"{'-' if g is None else f'{g:.0%}'} of the FD-shapes gap recovered")
    return "\n".join(lines)
