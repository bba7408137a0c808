"""The tables, plots and per-claim verdicts of benchmarks/reproduce.py, from its saved cells.

Verdict rule (docs/RESULTS.md, benchmarks/stats.py): each claim is a family of comparisons "A is better than B"
on FD-shapes (the primary metric, FID's role in the papers), every one a Welch t-test over the seeds of A and B,
Holm-corrected within the claim at alpha 0.05 and reported with the difference of means and its bootstrap
interval. "supported": every comparison significant in the claimed direction; "contradicted": one significant
in the other; "not supported at this scale": otherwise; "untested": a row is missing. SSIM and the held-out
eps-MSE are reported beside it as a second family.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from benchmarks import stats as st
from common.runs import replace_between
from models.checkpoint import environment

LOWER_IS_BETTER = {"fd_shapes": True, "kid_shapes": True, "heldout_loss": True, "ssim_to_teacher": False}
LOWER_IS_BETTER.update({f"{k}_raw": v for k, v in list(LOWER_IS_BETTER.items())})
METRICS = ("fd_shapes", "kid_shapes", "ssim_to_teacher", "heldout_loss")
# Fang, Ma & Wang 2023 (arXiv 2305.10924), Table 1: (FID, SSIM) after 100K fine-tune steps at ratio 0.3, on
# CIFAR-10 32x32 and CelebA 64x64 (scratch: the 100K-step row). Threshold 0.1 is not in the table. Its Taylor
# row is the reference's "--pruner taylor" (the score over all timesteps: our "taylor", = diff-pruning@0.0).
PUBLISHED = {"teacher": ((4.19, 1.000), (6.48, 1.000)), "scratch": ((9.88, 0.887), (7.08, 0.833)),
             "random": ((5.62, 0.926), (6.70, 0.874)), "magnitude": ((5.48, 0.929), (7.08, 0.870)),
             "taylor": ((5.56, 0.928), (6.64, 0.880)), "diff-pruning@0.0": ((5.49, 0.932), (6.24, 0.885)),
             "diff-pruning@0.02": ((5.44, 0.931), (6.45, 0.878)), "diff-pruning@0.05": ((5.29, 0.932), (6.52, 0.878))}


def markers(study: str = "first") -> tuple[str, str]:
    """The generated block's markers in docs/RESULTS.md, one block per study."""
    tag = "reproduce.py" if study == "first" else f"reproduce.py {study}"
    return f"<!-- {tag}:begin (generated; edit benchmarks/reproduce_report.py) -->", f"<!-- {tag}:end -->"


BEGIN, END = markers()


def stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def comparison(rows: dict, a: str, b: str, metric: str) -> dict:
    """stats.compare of row a against row b on ``metric`` (their per-seed values)."""
    return st.compare(rows[a][metric]["values"], rows[b][metric]["values"], lower_is_better=LOWER_IS_BETTER[metric])


def verdict_beats(rows: dict, a: str, others: list[str], metrics=("fd_shapes", "heldout_loss")) -> dict:
    """Is row a better than each of ``others``? The first metric decides (one Holm family over the others);
    the remaining metrics are reported, each its own family."""
    missing = [x for x in [a, *others] if x not in rows]
    if missing:
        return {"verdict": f"untested (rows missing: {', '.join(missing)})", "comparisons": {}, "secondary": {}}
    fams = {m: st.claim_verdict({f"{a} vs {o} ({m})": comparison(rows, a, o, m) for o in others}) for m in metrics}
    first = fams[metrics[0]]
    return {"verdict": first["verdict"], "test": f"Welch, {first['correction']}, alpha {first['alpha']}",
            "comparisons": first["comparisons"],
            "secondary": {k: v for m in metrics[1:] for k, v in fams[m]["comparisons"].items()}}


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
        row.update({f"{k}_raw": stats([c[f"{k}_raw"] for c in found]) for k in METRICS
                    if all(f"{k}_raw" in c for c in found)})
        row["cell_minutes"] = stats([c.get("seconds", 0) / 60 for c in found])
        rows[m] = row
    return rows


def fmt(s: dict, spec: str) -> str:
    return f"{s['mean']:{spec}} ± {s['std']:{spec}}" if s["n"] > 1 else f"{s['mean']:{spec}}"


def published(method: str) -> str:
    if method not in PUBLISHED:
        return "- | -"
    (fc, sc), (fa, sa) = PUBLISHED[method]
    return f"{fc:.2f} / {sc:.3f} | {fa:.2f} / {sa:.3f}"


def table(rows: dict[str, dict], teacher: dict | None, paper: bool = False, minutes: bool = True) -> list[str]:
    """Mean ± std over seeds; with raw-weight measurements, FD and SSIM of the raw weights too."""
    raw = any("fd_shapes_raw" in r for r in rows.values())
    extra = (" FD-shapes raw | SSIM raw |" if raw else "") + (" cell min |" if minutes else "") + \
        (" paper CIFAR-10 FID / SSIM | paper CelebA-64 FID / SSIM |" if paper else "")
    lines = ["| method | params | MACs | eps-MSE after pruning | FD-shapes | KID-shapes | SSIM to teacher | "
             "eps-MSE fine-tuned | seeds |" + extra, "|---" * (9 + minutes + 2 * raw + 2 * paper) + "|"]
    if teacher:
        lines.append(f"| teacher (dense) | {teacher['params'] / 1e6:.3f}M | {teacher['macs_paper'] / 1e6:.1f}M | - | "
                     f"{teacher['fd_shapes']:.2f} | {teacher['kid_shapes']:.3f} | 1 | {teacher['heldout_loss']:.5f} | - |"
                     + (" - | - |" if raw else "") + (" - |" if minutes else "") + (f" {published('teacher')} |" if paper else ""))
    for r in rows.values():
        cols = (f" {fmt(r['fd_shapes_raw'], '.2f')} | {fmt(r['ssim_to_teacher_raw'], '.3f')} |"
                if raw and "fd_shapes_raw" in r else " - | - |" if raw else "")
        mins = "" if not minutes else f" {r['cell_minutes']['mean']:.0f} |" if "cell_minutes" in r else " - |"
        lines.append(f"| {r['method']} | {r['params'] / 1e6:.3f}M | {r['macs_paper'] / 1e6:.1f}M | "
                     f"{fmt(r['pruned_heldout_loss'], '.4f')} | {fmt(r['fd_shapes'], '.2f')} | "
                     f"{fmt(r['kid_shapes'], '.3f')} | {fmt(r['ssim_to_teacher'], '.3f')} | "
                     f"{fmt(r['heldout_loss'], '.5f')} | {len(r['seeds'])} |" + cols + mins
                     + (f" {published(r['method'])} |" if paper else ""))
    return lines


def taylor_rows(rows: dict) -> list[str]:
    """The Taylor rows present: the paper's ("taylor"; in the first study the same criterion is the row
    diff-pruning@0.0) and the first-order variant."""
    out = [x for x in ("taylor", "taylor-first-order") if x in rows]
    if "taylor" not in rows and "diff-pruning@0.0" in rows:
        out.insert(0, "diff-pruning@0.0")
    return out


def thresholds(rows: dict) -> list[tuple[float, str]]:
    """(thr, row) of the Diff-Pruning rows, the paper's taylor standing for thr 0.0 where that row is absent."""
    found = {float(m.split("@")[1]): m for m in rows if m.startswith("diff-pruning@")}
    if 0.0 not in found and "taylor" in rows:
        found[0.0] = "taylor"
    return sorted(found.items())


def recovery(curve: dict, teacher: dict, teacher_steps: int) -> dict:
    """C3 on one curve: the share of the FD gap (pruned at step 0 -> teacher) closed at each measured step
    within 20% of the teacher's steps, and where the curve ends relative to the teacher."""
    pts = curve["points"]
    start, goal = pts[0]["fd_shapes"], teacher["fd_shapes"]
    rec = [{"step": p["step"], "fraction_of_teacher_steps": p["step"] / teacher_steps, "fd_shapes": p["fd_shapes"],
            "fd_gap_recovered": (start - p["fd_shapes"]) / (start - goal) if start > goal else None,
            "fd_over_teacher": p["fd_shapes"] / goal} for p in pts[1:]]
    within = [r for r in rec if r["fraction_of_teacher_steps"] <= 0.2 + 1e-9 and r["fd_gap_recovered"] is not None]
    return {"seed": curve.get("seed"), "recovery": rec, "best_within_20pct": max((r["fd_gap_recovered"] for r in within),
                                                                                 default=None),
            "end_fd_over_teacher": rec[-1]["fd_over_teacher"] if rec else None}


def verdicts(rows: dict, curves: dict, teacher: dict | None, teacher_steps: int, additivity: dict | None) -> dict:
    """Each claim's verdict (module docstring). ``curves``: {label: curve cell} of diff-pruning@0.05."""
    out = {"C1": verdict_beats(rows, "diff-pruning@0.05", ["random", "magnitude", *taylor_rows(rows)])}
    out["C2"] = verdict_beats(rows, "diff-pruning@0.05", ["scratch"], metrics=("fd_shapes", "ssim_to_teacher"))
    if curves and teacher:
        per = [recovery(c, teacher, teacher_steps) for c in curves.values()]
        ok = [p["best_within_20pct"] is not None and p["best_within_20pct"] >= 0.8 for p in per]
        ends = ", ".join(f"{p['end_fd_over_teacher']:.1f}x" for p in per)
        v = ("supported for the gap" if all(ok) else "not supported at this scale" if not any(ok) else "mixed") + \
            f" ({len(per)} curve(s); the curve ends at {ends} the teacher's FD)"
        out["C3"] = {"verdict": v, "curves": per, "teacher_steps": teacher_steps,
                     "rule": "share of the FD-shapes gap between the pruned model (step 0) and the teacher recovered "
                             "within 20% of the teacher's training steps; 'most' = at least 80%. One curve per seed: "
                             "no test across seeds"}
    else:
        out["C3"] = {"verdict": "untested (curve missing)"}
    thr = thresholds(rows)
    if len(thr) >= 3:
        names = [m for _, m in thr]
        best = min(names, key=lambda m: rows[m]["fd_shapes"]["mean"])
        worst = max(names, key=lambda m: rows[m]["fd_shapes"]["mean"])
        matters = st.claim_verdict({f"{best} vs {worst} (fd_shapes)": comparison(rows, best, worst, "fd_shapes")})
        ends = [m for m in (names[0], names[-1]) if m != best]
        inter = verdict_beats(rows, best, ends, metrics=("fd_shapes",))
        is_inter = best not in (names[0], names[-1])
        part1 = "the threshold matters: " + matters["verdict"] + f" ({best} against {worst})"
        if is_inter:
            part2 = "an intermediate one is best: " + inter["verdict"]
        elif best == names[-1]:  # nothing above the largest threshold was run: whether it is the peak is open
            part2 = (f"an intermediate one is best: untested (the best mean is the largest threshold run, {best}; "
                     f"none above {thr[-1][0]} was tried)")
        else:
            part2 = f"an intermediate one is best: not supported at this scale (the best mean is the smallest, {best})"
        out["C4"] = {"verdict": f"{part1}; {part2}", "comparisons": {**matters["comparisons"], **inter["comparisons"]},
                     "best_mean": best, "worst_mean": worst, "matters": matters["verdict"] == "supported",
                     "intermediate_best": is_inter and inter["verdict"] == "supported", "thresholds": [t for t, _ in thr]}
    else:
        out["C4"] = {"verdict": "untested (fewer than three thresholds)"}
    c5 = verdict_beats(rows, "layer:output-loss", ["layer:random", "layer:handcrafted", "layer:taylor"])
    if additivity:
        c5["additivity_pearson"] = {k: {size: s["pearson"] for size, s in v.items() if size != "all"}
                                    for k, v in additivity["stats"].items()}
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


# The settings a run can change by a flag that the command line above does not already show.
FLAGGED = ("methods", "few_seeds", "few_seed_methods", "lr", "ema_decay", "ema_warmup", "batch_size", "sample_steps",
           "skip_type", "clip_x0", "kd_weights", "measure_raw", "curve_methods", "curve_every", "sweep_ratios", "ratio")


def off_preset_flags(cfg) -> str:
    """The flags of ``cfg`` whose values differ from what the script gives its study with no flag (its preset,
    benchmarks/reproduce_config.py), as command-line text, so the recorded command reruns the run it describes
    (e.g. a row rerun with ``--methods ... --kd-weights equal``)."""
    from benchmarks.reproduce import parse_args

    preset, out = vars(parse_args(["--study", cfg.study])), []
    for key in FLAGGED:
        value, flag = getattr(cfg, key), "--" + key.replace("_", "-")
        if value == preset[key] or (isinstance(value, (list, tuple)) and list(value) == list(preset[key])):
            continue
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            out.append(" ".join([flag, *map(str, value)]))
        else:
            out.append(f"{flag} {value}")
    return "".join(" " + o for o in out)


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
    v = verdicts(rows, {k: c for k, c in curves.items() if k == "diff-pruning@0.05"}, teacher, teacher_steps,
                 cells.get("additivity"))
    done = sum(1 for fn, args in jobs if fn == "main_cell" and
               f"{args[0]}-r{args[2] if len(args) > 2 else cfg.ratio}-s{args[1]}" in cells)
    expected = sum(1 for fn, _ in jobs if fn == "main_cell")
    seconds = sum(c.get("seconds", 0) for k, c in cells.items() if not k.startswith("pruned-"))
    command = (f"python -m benchmarks.reproduce --study {cfg.study} --teacher {_relative(cfg.teacher)} --seeds "
               f"{' '.join(map(str, cfg.seeds))} --steps {cfg.steps} --num-samples {cfg.num_samples} "
               f"--curve-steps {cfg.curve_steps}{off_preset_flags(cfg)}")
    result = {"benchmark": "reproduce", "partial": done < expected, "cells_done": done, "cells_expected": expected,
              "command": command, "teacher": _relative(cfg.teacher), "teacher_total_steps": teacher_steps,
              "study": cfg.study, "gradient_batch": cfg.batch_size,
              "finetune": {"steps": cfg.steps, "batch_size": 32, "lr": cfg.lr, "ema_decay": cfg.ema_decay,
                           "ema_warmup": cfg.ema_warmup, "kd_weights": cfg.kd_weights, "raw_measured": cfg.measure_raw},
              "probe": study.probe_description(), "seconds_all_cells": round(seconds, 1),
              "wall_seconds_this_invocation": round(wall, 1), "teacher_metrics": teacher, "rows": rows,
              "sweep": {str(r): s for r, s in sweep.items()}, "curves": curves, "verdicts": v,
              "additivity": cells.get("additivity"), "feature_spread": cells.get("feature-spread"),
              "environment": environment(),
              "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (results / "reproduce.json").write_text(json.dumps(result, indent=2) + "\n")
    plots(results, cells, curves, teacher, f"r{cfg.ratio}-s{s0}")
    md = markdown(result, cfg)
    (results / "reproduce.md").write_text(md + "\n")
    begin, end = markers(cfg.study)
    if cfg.docs and Path(cfg.docs).exists():
        replace_between(cfg.docs, begin, end, "\n" + md + "\n")
    print(md)
    return result


def markdown(r: dict, cfg) -> str:
    channel = {k: v for k, v in r["rows"].items() if not k.startswith("layer:")}
    layer = {k: v for k, v in r["rows"].items() if k.startswith("layer:")}
    p = r["probe"]
    lines = [("**PARTIAL RESULTS** " if r["partial"] else "") + f"{r['cells_done']} of {r['cells_expected']} "
             f"fine-tuned cells; `{r['command']}`; {r['seconds_all_cells'] / 60:.0f} min of cell time on "
             f"{r['environment'].get('torch', '?')}, written {r['written']}.", "",
             f"Every model: pruned with a gradient batch of {r['gradient_batch']} images (taylor, diff-pruning), "
             f"fine-tuned {r['finetune']['steps']} steps (batch 32, lr {r['finetune']['lr']}, EMA "
             f"{r['finetune']['ema_decay']} {'with' if r['finetune']['ema_warmup'] else 'without'} warm-up, output KD "
             f"weights: {r['finetune']['kd_weights']}; {r['finetune']['steps'] / max(r['teacher_total_steps'], 1):.1%} "
             f"of the teacher's {r['teacher_total_steps']} steps), then measured on {p['num_samples']} "
             f"DDIM-{p['ddim_steps']} samples ({p.get('skip_type', 'uniform')} skip, x0 "
             f"{'clipped' if p['clip_x0'] else 'not clipped'}; FD-shapes, KID-shapes, SSIM to the teacher's samples "
             f"from the same noise) and on the held-out eps-MSE ({p['heldout_images']} test images x "
             f"{p['heldout_draws']} draws); EMA weights" + (", and the raw weights (columns 'raw')"
                                                           if r['finetune']['raw_measured'] else "") +
             ". Mean ± std over the seeds.", "",
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
    if r.get("feature_spread"):
        fs = r["feature_spread"]
        lines += ["", "### Per-stage feature-KD terms of the layer-pruned student before fine-tuning (C6's premise)",
                  "", "| stage | " + " | ".join(fs["terms"]["mse"]) + " | largest / smallest |",
                  "|---" * (len(fs["terms"]["mse"]) + 2) + "|"]
        for k in ("mse", "normalized"):
            lines.append(f"| {k} | " + " | ".join(f"{v:.3g}" for v in fs["terms"][k].values()) +
                         f" | {fs['spread'][k]:.0f}x (stages above 0) |")
    lines += ["", "### Verdicts (rule: benchmarks/reproduce_report.py, benchmarks/stats.py)", ""]
    lines += verdict_lines(r["verdicts"])
    return "\n".join(lines)


def verdict_lines(verdicts: dict) -> list[str]:
    """The verdict list: each claim, then each comparison with its effect, interval and test."""
    lines = []
    for claim, v in verdicts.items():
        lines.append(f"- **{claim}**: {v['verdict']}" + (f" ({v['test']})" if v.get("test") else ""))
        for label, c in v.get("comparisons", {}).items():
            lines.append(f"  - {label}: {st.describe(c)}")
        for label, c in v.get("secondary", {}).items():
            lines.append(f"  - (secondary) {label}: {st.describe(c)}")
        if "additivity_pearson" in v:
            r = {k: {s: round(x, 3) if x is not None else None for s, x in d.items()}
                 for k, d in v["additivity_pearson"].items()}
            lines.append(f"  - additivity on random subsets, Pearson r by |S|: {json.dumps(r)} (chosen sets: "
                         f"benchmarks/results/additivity_chosen.md)")
        for curve in v.get("curves", []):
            steps = ", ".join(f"{x['fraction_of_teacher_steps']:.1%}: "
                              f"{'-' if x['fd_gap_recovered'] is None else format(x['fd_gap_recovered'], '.0%')}"
                              for x in curve["recovery"])
            lines.append(f"  - seed {curve['seed']}: FD gap recovered at {steps} of the teacher's steps; ends at "
                         f"{curve['end_fd_over_teacher']:.1f}x the teacher's FD")
    return lines
