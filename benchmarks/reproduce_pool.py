"""Pool the seeds of several runs of one study and give each claim its verdict by the statistics of
benchmarks/stats.py (Welch's t-test, Holm within a claim, effect size with a bootstrap interval).

    python -m benchmarks.reproduce_pool benchmarks/results/reproduce.json \
        benchmarks/results/reproduce_seeds345/reproduce.json --docs docs/RESULTS.md

Two seed lists of the same configuration (the first study ran seeds 0-2 and 3-5 with identical settings) are
one sample of six seeds, not two experiments to be compared verdict by verdict: every row's per-seed values
are concatenated (a seed present in two runs is an error), and the verdicts are recomputed on the pooled rows
(benchmarks/reproduce_report.verdicts). Runs with different settings (steps, sampler, EMA, gradient batch,
teacher) are refused. The first study's row "taylor" was the first-order variant and is renamed
"taylor-first-order" (benchmarks/reproduce_config.py); its diff-pruning@0.0 row is the paper's Taylor.
Writes --out/reproduce_pooled.{json,md} and, with --docs, the block between this script's markers.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks import reproduce_report as rr

BEGIN, END = ("<!-- reproduce_pool.py:begin (generated; edit benchmarks/reproduce_pool.py) -->",
              "<!-- reproduce_pool.py:end -->")
SAME = ("teacher", "teacher_total_steps", "finetune", "probe")
RENAME_FIRST = {"taylor": "taylor-first-order"}  # runs written before the rename (no "study" key)


def load_run(path: Path) -> dict:
    run = json.loads(Path(path).read_text())
    if "study" not in run:  # the first study's files: its "taylor" row is the first-order variant
        run["rows"] = {RENAME_FIRST.get(k, k): {**v, "method": RENAME_FIRST.get(k, k)} for k, v in run["rows"].items()}
    return run


def pool_rows(runs: list[dict]) -> dict[str, dict]:
    """Per method, the per-seed values of every run concatenated (rows present in every run only)."""
    for key in SAME:
        if any(r.get(key) != runs[0].get(key) for r in runs[1:]):
            raise SystemExit(f"reproduce_pool: the runs differ in {key!r}; only runs of one configuration pool")
    methods = [m for m in runs[0]["rows"] if all(m in r["rows"] for r in runs[1:])]
    pooled = {}
    for m in methods:
        rows = [r["rows"][m] for r in runs]
        seeds = [s for row in rows for s in row["seeds"]]
        if len(set(seeds)) != len(seeds):
            raise SystemExit(f"reproduce_pool: row {m} has seed(s) in two runs: {sorted(seeds)}")
        out = {"method": m, "seeds": seeds, "params": rows[0]["params"], "macs_paper": rows[0]["macs_paper"]}
        for metric in ("pruned_heldout_loss", *rr.METRICS):
            out[metric] = rr.stats([v for row in rows for v in row[metric]["values"]])
        pooled[m] = out
    return pooled


def main(cfg: argparse.Namespace) -> dict:
    runs = [load_run(p) for p in cfg.runs]
    rows = pool_rows(runs)
    a = runs[0]
    curves = {f"seed {c['seed']}": c for r in runs for c in r.get("curves", {}).values()
              if c.get("method") == "diff-pruning@0.05"}
    v = rr.verdicts(rows, curves, a["teacher_metrics"], a["teacher_total_steps"], a.get("additivity"))
    result = {"benchmark": "reproduce_pool", "runs": [str(p) for p in cfg.runs],
              "commands": [r["command"] for r in runs], "teacher": a["teacher"], "teacher_metrics": a["teacher_metrics"],
              "finetune": a["finetune"], "probe": a["probe"], "rows": rows, "verdicts": v,
              "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "reproduce_pooled.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (out / "reproduce_pooled.md").write_text(md + "\n")
    if cfg.docs:
        text = Path(cfg.docs).read_text()
        if BEGIN not in text or END not in text:
            raise SystemExit(f"reproduce_pool: {cfg.docs} has no {BEGIN} ... {END} block")
        head, rest = text.split(BEGIN, 1)
        Path(cfg.docs).write_text(head + BEGIN + "\n" + md + "\n" + END + rest.split(END, 1)[1])
    print(md)
    return result


def markdown(r: dict) -> str:
    n = sorted({len(row["seeds"]) for row in r["rows"].values()})
    channel = {k: v for k, v in r["rows"].items() if not k.startswith("layer:")}
    layer = {k: v for k, v in r["rows"].items() if k.startswith("layer:")}
    lines = [f"Pooled over {len(r['runs'])} runs ({'; '.join(f'`{c}`' for c in r['commands'])}): {' or '.join(map(str, n))} seeds per row. "
             f"Mean ± std over the pooled seeds; verdicts by Welch's t-test, Holm-corrected within each claim "
             f"(alpha 0.05), with the difference of means (d, A minus B) and its 95% bootstrap interval.", "",
             "### Channel pruning at ratio 0.3", ""]
    lines += rr.table(channel, r["teacher_metrics"], paper=True, minutes=False)
    lines += ["", "### Layer pruning at the channel model's parameter count", ""]
    lines += rr.table(layer, r["teacher_metrics"], minutes=False)
    lines += ["", "Verdicts:", ""] + rr.verdict_lines(r["verdicts"])
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="reproduce.json files of the same configuration")
    p.add_argument("--out", default=str(rr.Path(__file__).resolve().parent / "results"))
    p.add_argument("--docs", default="", help="RESULTS.md whose reproduce_pool block is refreshed")
    return p


if __name__ == "__main__":
    main(build_parser().parse_args())
