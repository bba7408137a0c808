"""The relative-drop tables and per-claim verdicts of benchmarks/reproduce_t2i.py, from its saved cells.

LAPTOP-Diff (Zhang et al. 2024, arXiv 2404.11098) reports a pruned model by how far it falls from its dense
teacher: "a 4.0% decline in PickScore at a pruning ratio of 50%", against 8.2% for the best other method. Here
every metric of a cell gets that number against the teacher measured by the same protocol:

    drop = (teacher - student) / teacher    attribute accuracy (all, per attribute), CLIP-shapes score
    drop = (student - teacher) / teacher    FD-shapes (lower is better: a rise is the drop)
    drop = student - teacher                KID-shapes, absolute: an unbiased estimate that sits near 0 for a
                                            good teacher and can be negative, so a ratio to it means nothing

so a positive drop is always a loss of quality, and a row is its drops' mean +- std over the seeds. Verdict
rule (the DDPM study's, benchmarks/reproduce_report.py and benchmarks/stats.py): a claim "A is better than each
of B1..Bk" is k Welch t-tests on the per-seed drops of the primary metric (attribute accuracy ``all``: what the
prompts ask for, read by a reader validated against real images; the shapes CLIP is blind to kind and count),
Holm-corrected within the claim at alpha 0.05, each with the difference of means and its bootstrap interval;
"supported" when all are significant in the claimed direction, "contradicted" when one is significant the other
way, else "not supported at this scale". CLIP-shapes and FD-shapes are reported beside it, each its own family.

A class-conditional teacher (its cells hold ``kind_accuracy``: metrics/class_shapes.py) has kind accuracy
``all`` as the primary metric, per-kind accuracy beside it and FD-shapes as the one secondary family.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from benchmarks import stats as st
from benchmarks.reproduce_report import fmt, stats, verdict_lines
from benchmarks.reproduce_t2i_config import (C6_TARGET, CHANNEL_METHODS, CHANNEL_RATIO, LAYER_CRITERIA, LAYER_TARGETS,
                                             PUBLISHED_DROP_50)
from common.runs import replace_between
from metrics.attributes import ATTRIBUTES
from models.checkpoint import environment

BEGIN = "<!-- reproduce_t2i.py:begin (generated; edit benchmarks/reproduce_t2i_report.py) -->"
END = "<!-- reproduce_t2i.py:end -->"
# metric -> lower is better; "attribute_accuracy.<a>" reads cell["attribute_accuracy"][a]
LOWER_IS_BETTER = {**{f"attribute_accuracy.{a}": False for a in ATTRIBUTES}, "clip_score": False,
                   "fd_shapes": True, "kid_shapes": True}
PRIMARY = "attribute_accuracy.all"
SECONDARY = ("clip_score", "fd_shapes")
KINDS = ("disc", "square", "triangle", "ring")  # data/procedural.py SHAPES
CLASS_LOWER_IS_BETTER = {**{f"kind_accuracy.{k}": False for k in ("all", *KINDS)}, "fd_shapes": True,
                         "kid_shapes": True}
CLASS_PRIMARY, CLASS_SECONDARY = "kind_accuracy.all", ("fd_shapes",)


def spec_of(keys) -> tuple[dict[str, bool], str, tuple[str, ...]]:
    """(metric -> lower is better, primary, secondary) of a cell, or of a row's "values" / "drop" (``keys``): a
    class-conditional teacher's (kind accuracy) or a text one's."""
    if "kind_accuracy" in keys or CLASS_PRIMARY in keys:
        return CLASS_LOWER_IS_BETTER, CLASS_PRIMARY, CLASS_SECONDARY
    return LOWER_IS_BETTER, PRIMARY, SECONDARY


def value(cell: dict, metric: str) -> float:
    head, _, tail = metric.partition(".")
    return float(cell[head][tail]) if tail else float(cell[head])


ABSOLUTE = ("kid_shapes",)  # metrics whose drop is the plain difference (module docstring)


def relative_drop(student: float, teacher: float, lower_is_better: bool) -> float:
    """The share of the teacher's quality lost (module docstring): positive = worse than the teacher."""
    return (student - teacher) / teacher if lower_is_better else (teacher - student) / teacher


def drop_of(metric: str, student: float, teacher: float, lower_is_better: bool) -> float | None:
    """A metric's drop (module docstring); None where a relative one is undefined (the teacher's value is 0)."""
    if metric in ABSOLUTE:
        return student - teacher if lower_is_better else teacher - student
    return relative_drop(student, teacher, lower_is_better) if teacher else None


def rows_for(cells: dict[str, dict], names, seeds, teacher: dict | None) -> dict[str, dict]:
    """Per row present: its seeds, params, and per metric the per-seed values and (with a teacher) drops."""
    rows = {}
    for name in names:
        found = [cells[f"{name}-s{s}"] for s in seeds if f"{name}-s{s}" in cells]
        if not found:
            continue
        lower = spec_of(found[0])[0]
        row = {"row": name, "seeds": [c["seed"] for c in found], "params": found[0]["params"],
               "params_removed": 1 - found[0]["params"] / found[0]["params_before"],
               "values": {m: stats([value(c, m) for c in found]) for m in lower},
               "cell_minutes": stats([c.get("seconds", 0) / 60 for c in found])}
        if teacher is not None:  # a teacher at 0 (an untrained stand-in) has no relative drop: None
            row["drop"] = {m: None if (d := [drop_of(m, value(c, m), value(teacher, m), low) for c in found])[0] is None
                           else stats(d) for m, low in lower.items()}
        rows[name] = row
    return rows


def verdict(rows: dict, a: str, others: list[str]) -> dict:
    """Is row a's drop smaller than each of ``others``'? The primary metric decides (one Holm family); the
    secondary metrics are reported, each its own family."""
    missing = [x for x in [a, *others] if x not in rows or "drop" not in rows[x]]
    if missing:
        return {"verdict": f"untested (rows missing: {', '.join(missing)})", "comparisons": {}, "secondary": {}}
    _, primary, secondary = spec_of(rows[a]["drop"])
    if rows[a]["drop"][primary] is None:
        return {"verdict": f"untested (the teacher's {primary} is 0: no relative drop)", "comparisons": {},
                "secondary": {}}
    fams = {m: st.claim_verdict({f"{a} vs {o} ({m} drop)": st.compare(
        rows[a]["drop"][m]["values"], rows[o]["drop"][m]["values"], lower_is_better=True) for o in others})
        for m in (primary, *secondary) if rows[a]["drop"][m] is not None}
    first = fams[primary]
    return {"verdict": first["verdict"], "test": f"Welch, {first['correction']}, alpha {first['alpha']}",
            "comparisons": first["comparisons"],
            "secondary": {k: v for m in secondary if m in fams for k, v in fams[m]["comparisons"].items()}}


def claims(rows: dict) -> dict[str, dict]:
    """C5' at each target, C6', C1' (benchmarks/reproduce_t2i_config.py)."""
    out = {}
    for t in LAYER_TARGETS:
        others = [f"layer:{c}@{t}" for c in LAYER_CRITERIA if c != "output-loss"]
        out[f"C5' ({t:.0%}): output-loss layer pruning loses less than taylor, random and handcrafted"] = \
            verdict(rows, f"layer:output-loss@{t}", others)
    base = f"layer:output-loss@{C6_TARGET}"
    out[f"C6' ({C6_TARGET:.0%}): normalised feature KD loses less than no KD, output KD and feature KD"] = \
        verdict(rows, f"{base}+feature-normalized", [base, f"{base}+output", f"{base}+feature"])
    ch = [f"channel:{m}@{CHANNEL_RATIO}" for m in CHANNEL_METHODS]
    out[f"C1' (ratio {CHANNEL_RATIO}): diff-pruning loses less than random, magnitude and taylor"] = \
        verdict(rows, ch[0], ch[1:])
    return out


def drop_table(rows: dict[str, dict]) -> list[str]:
    """Relative drops from the teacher, mean +- std over seeds (%; positive = worse)."""
    cls = any(spec_of(r["values"])[1] == CLASS_PRIMARY for r in rows.values())
    metrics = [*(f"kind_accuracy.{k}" for k in ("all", *KINDS))] if cls else \
        [*(f"attribute_accuracy.{a}" for a in ATTRIBUTES), "clip_score"]
    names = [f"kind acc {k}" for k in ("all", *KINDS)] if cls else [*(f"acc {a}" for a in ATTRIBUTES), "CLIP-shapes"]
    head = ["row", "params removed", *names, "FD-shapes (rise)", "seeds", "cell min"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    pct = lambda s: "-" if s is None else fmt({**s, "mean": 100 * s["mean"], "std": 100 * s["std"]}, ".1f")  # noqa: E731
    for r in rows.values():
        if "drop" not in r:
            continue
        d = r["drop"]
        cols = [pct(d[m]) for m in metrics] + [pct(d["fd_shapes"])]
        lines.append(f"| {r['row']} | {r['params_removed']:.1%} | " + " | ".join(cols) +
                     f" | {len(r['seeds'])} | {r['cell_minutes']['mean']:.0f} |")
    return lines


def value_table(rows: dict[str, dict], teacher: dict | None) -> list[str]:
    """The measured values themselves (teacher first)."""
    cls = any(spec_of(x)[1] == CLASS_PRIMARY for x in [teacher or {}, *(r["values"] for r in rows.values())])
    quality = [(f"kind_accuracy.{k}", f"kind acc {k}", ".3f") for k in ("all", *KINDS)] if cls else \
        [*((f"attribute_accuracy.{a}", f"acc {a}", ".3f") for a in ATTRIBUTES), ("clip_score", "CLIP-shapes", ".2f")]
    quality += [("fd_shapes", "FD-shapes", ".2f"), ("kid_shapes", "KID-shapes", ".4f")]
    head = ["row", "params", *(name for _, name, _ in quality)]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    if teacher:
        lines.append(f"| teacher (dense) | {teacher['params'] / 1e6:.3f}M | " +
                     " | ".join(f"{value(teacher, m):{f}}" for m, _, f in quality) + " |")
    for r in rows.values():
        v = r["values"]
        lines.append(f"| {r['row']} | {r['params'] / 1e6:.3f}M | " + " | ".join(fmt(v[m], f) for m, _, f in quality)
                     + " |")
    return lines


def write_report(cfg, study, jobs, wall: float) -> dict:
    """reproduce_t2i.{json,md} in --results and the docs block, from every saved cell of --work."""
    results = Path(cfg.results)
    results.mkdir(parents=True, exist_ok=True)
    cells = {p.stem: json.loads(p.read_text()) for p in sorted((Path(cfg.work) / "cells").glob("*.json"))}
    teacher = cells.get("teacher")
    rows = rows_for(cells, cfg.rows, cfg.seeds, teacher)
    expected = [f"{a[0]}-s{a[1]}" for fn, a in jobs if fn == "main_cell"]
    done = sum(name in cells for name in expected)
    # the settings the cells were made with (benchmarks/reproduce_t2i.py keeps them in each cell and refuses a
    # mixture), not this invocation's flags: a --report-only call need not repeat them
    made = next((c["settings"] for c in cells.values() if "finetune" in c.get("settings", {})), None)
    fin = made["finetune"] if made else {"steps": study.steps(), "batch_size": cfg.batch_size, "lr": cfg.lr,
                                         "ema_decay": cfg.ema_decay}
    meas = made["measure"] if made else {"num_prompts": cfg.num_prompts, "sample_seed": cfg.sample_seed}
    result = {"benchmark": "reproduce_t2i", "partial": done < len(expected) or teacher is None,
              "cells_done": done, "cells_expected": len(expected), "teacher": str(cfg.teacher),
              "finetune": {**fin, "budget": fin["steps"] / cfg.teacher_steps, "teacher_steps": cfg.teacher_steps,
                           "kd_weights": "equal (1/1/1)"},
              "measurement": {"prompts": cfg.prompts, "num_prompts": meas["num_prompts"],
                              "sample_seed": meas["sample_seed"]},
              "devices": sorted({c.get("device", "unrecorded") for k, c in cells.items() if not k.startswith("pruned-")}),
              "teacher_metrics": teacher, "rows": rows, "verdicts": claims(rows),
              "seconds_all_cells": round(sum(c.get("seconds", 0) for c in cells.values()), 1),
              "wall_seconds_this_invocation": round(wall, 1), "environment": environment(),
              "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (results / "reproduce_t2i.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (results / "reproduce_t2i.md").write_text(md + "\n")
    if cfg.docs and Path(cfg.docs).exists():
        replace_between(cfg.docs, BEGIN, END, "\n" + md + "\n")
    print(md)
    return result


def markdown(r: dict) -> str:
    f = r["finetune"]
    lines = [("**PARTIAL RESULTS** " if r["partial"] else "") + f"{r['cells_done']} of {r['cells_expected']} cells; "
             f"teacher {r['teacher']}; every pruned U-Net fine-tuned {f['steps']} steps at batch {f['batch_size']} "
             f"({f['budget']:.1%} of the teacher's {f['teacher_steps']}), lr {f['lr']}, EMA {f['ema_decay']} with "
             f"warm-up, KD weights {f['kd_weights']}; {r['seconds_all_cells'] / 3600:.1f} h of cell time on "
             f"{', '.join(r.get('devices', [])) or '-'}, written {r['written']}.", "",
             "### Relative drop from the teacher (%, mean ± std over seeds; positive = worse; FD: the rise)", ""]
    lines += drop_table(r["rows"])
    lines += ["", "LAPTOP-Diff on SD-v1.5 at 50% (PickScore drop): " +
              ", ".join(f"{k} {v:.1%}" for k, v in PUBLISHED_DROP_50.items()) + ".", "",
              "### Measured values", ""]
    lines += value_table(r["rows"], r["teacher_metrics"])
    lines += ["", "### Verdicts (rule: benchmarks/reproduce_t2i_report.py)", ""] + verdict_lines(r["verdicts"])
    return "\n".join(lines)

