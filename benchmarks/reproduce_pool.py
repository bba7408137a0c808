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

``--add RUN``: the rows of a run of exactly the pooled runs' settings that they do not have (a threshold
they did not run) join the table as rows of their own.

``--replace RUN``: the rows of a run made with the same settings except the output-KD loss weights
(``reproduce.py --kd-weights equal``) replace the pooled rows of the same name, seeds and all (they are a
different configuration, so they are never pooled with the rows they replace). The first study ran its
output-KD row at Diff-Pruning's 0.3 task + 0.7 KD and its feature rows at 1 / 1 / 1; rerunning the output-KD
row at 1 + 1 and replacing it takes C6's weight confound away (the feature rows are the same at both
settings: benchmarks/reproduce_config.py ``kd_lambdas``). The result records which rows came from which run.
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
# Settings the first study's files do not record, because it ran before they became options, at the values
# it ran with (docs/RESULTS.md "Setup of the first study"): a later run that records them compares against these.
UNRECORDED = {"finetune": {"ema_warmup": False, "kd_weights": "paper", "raw_measured": False},
              "probe": {"skip_type": "uniform"}}


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


def rows_from(rows: dict[str, dict], base: dict, path: Path, mode: str) -> tuple[dict, dict[str, str]]:
    """``rows`` with the rows of the run at ``path``. mode "replace": each takes the place of the pooled row of
    its name, and the run may differ from ``base`` in the output-KD weights only; mode "add": each is a row the
    pooled runs lack (e.g. a threshold they did not run), and the run has ``base``'s settings exactly. Returns
    the rows and {row: where it came from}."""
    run = load_run(path)
    for key in SAME:
        mine, theirs = run.get(key), base.get(key)
        if isinstance(mine, dict) and isinstance(theirs, dict):  # unrecorded = the first study's value
            mine, theirs = ({**UNRECORDED.get(key, {}), **d} for d in (mine, theirs))
            if mode == "replace":
                mine.pop("kd_weights", None), theirs.pop("kd_weights", None)
        if mine != theirs:
            only = ", not only in the KD weights" if mode == "replace" else ""
            raise SystemExit(f"reproduce_pool: {path} differs from the pooled runs in {key!r}{only} ({mine} against "
                             f"{theirs}); its rows cannot {'replace' if mode == 'replace' else 'join'} theirs")
    wrong = sorted(set(run["rows"]) - set(rows)) if mode == "replace" else sorted(set(run["rows"]) & set(rows))
    if wrong:
        what = "rows the pooled runs lack" if mode == "replace" else "rows the pooled runs already have (--replace)"
        raise SystemExit(f"reproduce_pool: {path} has {what}: {', '.join(wrong)}")
    weights = run.get("finetune", {}).get("kd_weights", "paper")
    source = f"replaced by the run with KD weights {weights} ({path})" if mode == "replace" else f"added from {path}"
    return {**rows, **run["rows"]}, {m: source for m in run["rows"]}


def main(cfg: argparse.Namespace) -> dict:
    runs = [load_run(p) for p in cfg.runs]
    rows = pool_rows(runs)
    a = runs[0]
    replaced: dict[str, str] = {}
    for mode, paths in (("replace", cfg.replace), ("add", cfg.add)):
        for path in paths:
            rows, now = rows_from(rows, a, Path(path), mode)
            replaced.update(now)
    curves = {f"seed {c['seed']}": c for r in runs for c in r.get("curves", {}).values()
              if c.get("method") == "diff-pruning@0.05"}
    v = rr.verdicts(rows, curves, a["teacher_metrics"], a["teacher_total_steps"], a.get("additivity"))
    result = {"benchmark": "reproduce_pool", "runs": [str(p) for p in cfg.runs],
              "commands": [r["command"] for r in runs], "teacher": a["teacher"], "teacher_metrics": a["teacher_metrics"],
              "finetune": a["finetune"], "probe": a["probe"], "rows": rows, "verdicts": v, "row_sources": replaced,
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
             f"(alpha 0.05), with the difference of means (d, A minus B) and its 95% bootstrap interval." +
             "".join(f" Row {m} {w}." for m, w in r.get("row_sources", {}).items()),
             "",
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
    p.add_argument("--replace", nargs="*", default=[], metavar="RUN",
                   help="reproduce.json of a run differing only in --kd-weights: its rows replace the pooled ones")
    p.add_argument("--add", nargs="*", default=[], metavar="RUN",
                   help="reproduce.json of a run of the same settings whose rows the pooled runs lack")
    return p


if __name__ == "__main__":
    main(build_parser().parse_args())
