"""The tables of benchmarks/additivity_chosen.py: chosen sets against the optimum, and r per subset size.

Pearson r is reported per subset size only: pooling sizes mixes the trend of L with |S| into the
correlation (both grow with |S|) and overstates additivity. "Without the dominant unit" drops every subset
holding the unit of largest single loss, which otherwise carries r by its spread alone.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from models.checkpoint import environment


def pearson(x, y) -> float | None:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    from scipy import stats
    return float(stats.pearsonr(x, y)[0])


def per_size(subsets: list[list[str]], measured, scores: dict[str, float], dominant: str) -> list[dict]:
    """r of measured L(S) against sum_{i in S} s_i for each |S|, with and without subsets holding ``dominant``."""
    measured = np.asarray(measured, float)
    pred = np.array([sum(scores[p] for p in s) for s in subsets])
    size = np.array([len(s) for s in subsets])
    has = np.array([dominant in s for s in subsets])
    out = []
    for k in sorted(set(size.tolist())):
        sel = size == k
        out.append({"size": int(k), "n": int(sel.sum()), "pearson": pearson(pred[sel], measured[sel]),
                    "n_without_dominant": int((sel & ~has).sum()),
                    "pearson_without_dominant": pearson(pred[sel & ~has], measured[sel & ~has])})
    return out


def _f(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def write_report(cfg, search, state: dict, measured: np.ndarray | None, check: dict | None) -> dict:
    cells = search.cells
    singles = cells.load("singles") or {}
    se = singles.get(str(cfg.eval_seed), {})
    covers = search.covers()
    cover_index = {tuple(sorted(search.paths[i] for i in c)): j for j, c in enumerate(covers)}
    optimum = None
    if measured is not None:
        j = int(np.argmin(measured))
        optimum = {"removed": sorted(search.paths[i] for i in covers[j]), "loss": float(measured[j]),
                   "predicted": sum(se[search.paths[i]] for i in covers[j])}
    partial_best = None
    if measured is None and state["chunks"]:  # the best of the covers measured so far (a bound, not the optimum)
        idx = [c["first"] + k for c in state["chunks"].values() for k in range(len(c["measured"]))]
        vals = [v for c in state["chunks"].values() for v in c["measured"]]
        j = int(np.argmin(vals))
        partial_best = {"removed": sorted(search.paths[i] for i in covers[idx[j]]), "loss": float(vals[j]),
                        "predicted": sum(se[search.paths[i]] for i in covers[idx[j]]) if se else None,
                        "of_measured": len(vals)}
    sets = {tuple(x["removed"]): x for x in state["sets"]}
    rows = []
    for x in state["chosen"]:
        key = tuple(x["removed"])
        m = sets.get(key, {})
        loss = m.get(f"calib{cfg.eval_seed}")
        row = {"criterion": x["criterion"], "seed": x["seed"], "solver": x["solver"], "removed": x["removed"],
               "params_removed": sum(search.costs[search.paths.index(p)] for p in x["removed"]),
               "minimal_cover": key in cover_index, "predicted": sum(se[p] for p in x["removed"]) if se else None,
               "measured": loss, "measured_check": m.get(f"calib{cfg.check_seed}")}
        if measured is not None and loss is not None:
            row["rank"] = 1 + int((measured < loss - 1e-12).sum())
            row["excess_over_optimum"] = loss / optimum["loss"] - 1
        rows.append(row)
    dominant = max(se, key=se.get) if se else None
    pearsons = {}
    rs = cells.load("random-subsets")
    scores = {"output-loss": se}
    for x in state["chosen"]:
        if x["seed"] == cfg.seeds[0] and x["criterion"] in ("taylor", "random"):
            scores[x["criterion"]] = x["scores"]
    if rs and se:
        pearsons["random subsets"] = {k: per_size(rs["subsets"], rs["measured"], s, dominant) for k, s in scores.items()}
    if measured is not None and se:
        subsets = [[search.paths[i] for i in c] for c in covers]
        pearsons["budget covers"] = {k: per_size(subsets, measured, s, dominant) for k, s in scores.items()}
    result = {"benchmark": "additivity_chosen", "teacher": str(cfg.teacher), "units": search.paths,
              "unit_params": search.costs, "target_params_fraction": cfg.target_params, "target_params": search.target,
              "calibration": {"size": cfg.calib_size, "eval_seed": cfg.eval_seed, "check_seed": cfg.check_seed},
              "covers": len(covers), "covers_measured": sum(len(c["measured"]) for c in state["chunks"].values()),
              "single_losses": singles, "dominant_unit": dominant, "optimum": optimum,
              "best_measured_so_far": partial_best, "chosen": rows,
              "pearson_per_size": pearsons, "check": check,
              "seconds_all_cells": round(sum(json.loads(p.read_text()).get("seconds", 0)
                                             for p in cells.directory.glob("*.json")), 1),
              "environment": environment(), "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    results = Path(cfg.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "additivity_chosen.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (results / "additivity_chosen.md").write_text(md + "\n")
    print(md)
    return result


def markdown(r: dict) -> str:
    c = r["calibration"]
    partial = r["covers_measured"] < r["covers"]
    lines = [("**PARTIAL** " if partial else "") + f"Layer sets at the ratio-0.3 channel model's parameter count "
             f"(remove >= {r['target_params']:,} parameters, {r['target_params_fraction']:.1%}); L(S) = mean squared "
             f"change of the teacher's eps output over {c['size']} calibration triples (seed {c['eval_seed']}; "
             f"second set: seed {c['check_seed']}); {r['covers_measured']} of {r['covers']} minimal covers of the "
             f"budget measured; {r['seconds_all_cells'] / 60:.0f} min of cell time, "
             f"{r['environment'].get('torch', '?')}, written {r['written']}. Predicted = sum of the single-unit "
             f"losses L({{i}}) on the same calibration set.", ""]
    opt = r["optimum"]
    lines += ["| criterion | seeds | removed units | params removed | predicted sum | measured L(S) | measured / "
              "predicted | rank of L(S) | above optimum | L(S), 2nd calibration |", "|---|---|---|---|---|---|---|---|---|---|"]
    if opt:
        lines.append(f"| **optimum (exhaustive)** | - | {', '.join(opt['removed'])} | - | {opt['predicted']:.5f} | "
                     f"{opt['loss']:.5f} | {opt['loss'] / opt['predicted']:.2f} | 1 | 0% | "
                     f"{_f((r['check'] or {}).get('top_check', [None])[0], '.5f')} |")
    groups: dict[tuple, list[int]] = {}
    for x in r["chosen"]:  # one line per distinct set of a criterion, with the seeds that chose it
        groups.setdefault((x["criterion"], tuple(x["removed"])), []).append(x["seed"])
    seen = set()
    pb = r.get("best_measured_so_far")
    if pb:
        lines.append(f"| best of the {pb['of_measured']} covers measured so far (not yet the optimum) | - | "
                     f"{', '.join(pb['removed'])} | - | {_f(pb['predicted'], '.5f')} | {pb['loss']:.5f} | "
                     f"{_f(pb['loss'] / pb['predicted'] if pb['predicted'] else None, '.2f')} | - | - | - |")
    for x in r["chosen"]:
        key = (x["criterion"], tuple(x["removed"]))
        if key in seen:
            continue
        seen.add(key)
        ratio = x["measured"] / x["predicted"] if x["measured"] is not None and x["predicted"] else None
        seeds = ", ".join(map(str, groups[key]))
        lines.append(f"| {x['criterion']} ({x['solver']}) | {seeds} | {', '.join(x['removed'])} | "
                     f"{x['params_removed']:,} | {_f(x['predicted'], '.5f')} | {_f(x['measured'], '.5f')} | "
                     f"{_f(ratio, '.2f')} | {x.get('rank', '-')} | "
                     f"{_f(x.get('excess_over_optimum'), '.0%') if 'excess_over_optimum' in x else '-'} | "
                     f"{_f(x['measured_check'], '.5f')} |")
    if r["check"]:
        ch = r["check"]
        order = np.argsort(ch["top_check"])
        plus = min(ch["optimum_plus_one_eval"]) if ch["optimum_plus_one_eval"] else None
        lines += ["", f"Stability: on the second calibration set the optimum ranks {int(np.where(order == 0)[0][0]) + 1} "
                  f"among the {len(order)} best covers of the first; adding any one unit to the optimum raises L(S) "
                  f"to at least {_f(plus, '.5f')} (optimum {opt['loss']:.5f}): "
                  + ("no non-minimal set of those beats it." if plus is not None and plus >= opt['loss']
                     else "a non-minimal set is better.")]
    lines += ["", f"Pearson r of measured L(S) against the summed single scores, per subset size (dominant unit: "
              f"{r['dominant_unit']}):", "", "| subsets | criterion | size | n | r | n without dominant | r without dominant |",
              "|---|---|---|---|---|---|---|"]
    for family, by in r["pearson_per_size"].items():
        for crit, rows in by.items():
            for x in rows:
                lines.append(f"| {family} | {crit} | {x['size']} | {x['n']} | {_f(x['pearson'], '.3f')} | "
                             f"{x['n_without_dominant']} | {_f(x['pearson_without_dominant'], '.3f')} |")
    return "\n".join(lines)
