"""Do two runs of benchmarks/reproduce.py with different seed lists reach the same verdicts?

    python -m benchmarks.reproduce_compare benchmarks/results/reproduce.json runs/reproduce2/results/reproduce.json

The committed study (seeds 0 1 2) is one draw; its verdicts are only worth something if an independent draw
(e.g. seeds 3 4 5, its own pruning randomness, gradient batches and fine-tune data order) reads the same. For
each claim this prints both verdicts and, pair by pair (A vs B on a metric), both outcomes of the interval rule
of benchmarks/reproduce_report.py:

- "agree": the same outcome (better / worse / overlap) in both runs;
- "one resolved": one run separates the pair and the other does not (the spreads overlap there). Neither run
  contradicts the other; the difference is within what the rule calls noise;
- "conflict": one run says better and the other worse. This is the only outcome that means the study is not
  reproducible at this scale.

Per method it also gives the two means and their difference in units of the combined spread
z = |mean_A - mean_B| / sqrt(std_A^2 + std_B^2) ("within noise" when z < 2). Writes
benchmarks/results/reproduce_agreement.{json,md} (--out) and, with --docs, refreshes the block between this
script's markers in that file.

Superseded for verdicts by benchmarks/reproduce_pool.py: runs of one configuration are one sample, pooled
and tested (Welch + Holm), rather than two verdicts compared. Runs written since then carry no interval-rule
"pairs"; for them this script compares the verdicts and the per-method means only.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

METRICS = ("fd_shapes", "ssim_to_teacher", "heldout_loss")
BEGIN, END = ("<!-- reproduce_compare.py:begin (generated; edit benchmarks/reproduce_compare.py) -->",
              "<!-- reproduce_compare.py:end -->")


def pair_agreement(a: str | None, b: str | None) -> str:
    if a is None or b is None:
        return "not in both runs"
    if a == b:
        return "agree"
    if "overlap" in (a, b):
        return "one resolved"
    return "conflict"


def claim_rows(va: dict, vb: dict) -> list[dict]:
    rows = []
    for claim in sorted(set(va) | set(vb)):
        a, b = va.get(claim, {}), vb.get(claim, {})
        verdict_a, verdict_b = a.get("verdict"), b.get("verdict")
        pairs = {p: {"a": a.get("pairs", {}).get(p), "b": b.get("pairs", {}).get(p)}
                 for p in sorted(set(a.get("pairs", {})) | set(b.get("pairs", {})))}
        for p in pairs.values():
            p["agreement"] = pair_agreement(p["a"], p["b"])
        if not verdict_a or not verdict_b or any(w in v for w in ("incomplete", "untested")
                                                 for v in (verdict_a, verdict_b)):
            overall = "not in both runs"
        elif verdict_a == verdict_b:
            overall = "agree"
        elif any(p["agreement"] == "conflict" for p in pairs.values()):
            overall = "conflict"
        else:
            overall = "differ within noise"
        rows.append({"claim": claim, "a": verdict_a, "b": verdict_b, "agreement": overall, "pairs": pairs})
    return rows


def method_rows(ra: dict, rb: dict) -> list[dict]:
    out = []
    for m in [k for k in ra if k in rb]:
        row = {"method": m}
        for metric in METRICS:
            sa, sb = ra[m][metric], rb[m][metric]
            spread = math.hypot(sa["std"], sb["std"])
            z = abs(sa["mean"] - sb["mean"]) / spread if spread > 0 else math.inf
            row[metric] = {"a": {"mean": sa["mean"], "std": sa["std"]}, "b": {"mean": sb["mean"], "std": sb["std"]},
                           "z": z, "within_noise": z < 2}  # per-seed values stay in the runs' own files
        out.append(row)
    return out


def compare(a: dict, b: dict) -> dict:
    claims = claim_rows(a["verdicts"], b["verdicts"])
    methods = method_rows(a["rows"], b["rows"])
    seeds = lambda r: sorted({s for row in r["rows"].values() for s in row["seeds"]})  # noqa: E731
    return {"a": {"command": a["command"], "seeds": seeds(a), "written": a.get("written")},
            "b": {"command": b["command"], "seeds": seeds(b), "written": b.get("written")},
            "claims": claims, "methods": methods,
            "summary": {k: sum(1 for c in claims if c["agreement"] == k)
                        for k in ("agree", "differ within noise", "conflict", "not in both runs")}}


def _ms(s: dict, spec: str) -> str:
    return f"{s['mean']:{spec}} ± {s['std']:{spec}}"


def markdown(r: dict) -> str:
    sa, sb = ", ".join(map(str, r["a"]["seeds"])), ", ".join(map(str, r["b"]["seeds"]))
    lines = [f"Run A: seeds {sa} (`{r['a']['command']}`); run B: seeds {sb} (`{r['b']['command']}`).", "",
             "| claim | verdict, seeds " + sa + " | verdict, seeds " + sb + " | agreement |", "|---|---|---|---|"]
    for c in r["claims"]:
        lines.append(f"| {c['claim']} | {c['a'] or '-'} | {c['b'] or '-'} | **{c['agreement']}** |")
    lines += ["", "Pair by pair (the interval rule's outcome in each run):", ""]
    for c in r["claims"]:
        for p, v in c["pairs"].items():
            lines.append(f"- {c['claim']}, {p}: {v['a'] or '-'} / {v['b'] or '-'} ({v['agreement']})")
    lines += ["", "Per method, mean ± std over each run's seeds; z = |difference| / combined std:", "",
              "| method | FD-shapes A | FD-shapes B | z | SSIM A | SSIM B | z | eps-MSE A | eps-MSE B | z |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for m in r["methods"]:
        f, s, h = m["fd_shapes"], m["ssim_to_teacher"], m["heldout_loss"]
        lines.append(f"| {m['method']} | {_ms(f['a'], '.1f')} | {_ms(f['b'], '.1f')} | {f['z']:.1f} | "
                     f"{_ms(s['a'], '.3f')} | {_ms(s['b'], '.3f')} | {s['z']:.1f} | "
                     f"{_ms(h['a'], '.5f')} | {_ms(h['b'], '.5f')} | {h['z']:.1f} |")
    within = {k: sum(m[k]["within_noise"] for m in r["methods"]) for k in METRICS}
    lines += ["", f"Within noise (z < 2) of {len(r['methods'])} methods: FD-shapes {within['fd_shapes']}, "
              f"SSIM {within['ssim_to_teacher']}, eps-MSE {within['heldout_loss']}."]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> dict:
    runs = []
    for path in (args.a, args.b):
        p = Path(path)
        if not p.is_file():
            raise SystemExit(f"reproduce_compare: {p} does not exist (run benchmarks/reproduce.py first)")
        r = json.loads(p.read_text())
        if r.get("benchmark") != "reproduce" or "verdicts" not in r:
            raise SystemExit(f"reproduce_compare: {p} is not a reproduce.py result (no 'verdicts')")
        runs.append(r)
    if args.docs:  # checked before anything is written
        docs = Path(args.docs)
        text = docs.read_text() if docs.is_file() else ""
        if BEGIN not in text or END not in text:
            raise SystemExit(f"reproduce_compare: {docs} has no '{BEGIN}' ... '{END}' block to refresh")
    result = compare(*runs)
    result["inputs"] = [str(args.a), str(args.b)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    out.with_suffix(".md").write_text(md + "\n")
    if args.docs:
        head, rest = text.split(BEGIN, 1)
        docs.write_text(head + BEGIN + "\n" + md + "\n" + END + rest.split(END, 1)[1])
    print(md)
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a", help="reproduce.json of the first run")
    p.add_argument("b", help="reproduce.json of the second run")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "reproduce_agreement"),
                   help="path stem of the .json and .md written")
    p.add_argument("--docs", default="", help="a markdown file whose generated block is refreshed (docs/RESULTS.md)")
    main(p.parse_args())
