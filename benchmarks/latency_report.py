"""The Markdown page of a benchmarks/latency.py result: machine, load, settings, the MAC table, the latency table.

``markdown(result)`` reads only the JSON-ready dict that ``benchmarks.latency.main`` writes, so a saved
``latency_<device>.json`` can be rendered again (``python -m benchmarks.latency_report FILE.json``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from metrics.macs import format_count

COLUMNS = ("group", "model", "batch", "dtype", "memory", "compile", "sdpa", "median ms", "IQR ms", "images/s",
           "speed-up", "MAC ratio", "speed-up / MAC ratio")


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def machine_line(m: dict) -> str:
    where = (f"GPU {m['gpu']} (CUDA {m['cuda']}, cuDNN {m['cudnn']}, TF32 {m['tf32']})" if m.get("gpu")
             else f"CPU {m['cpu']}")
    return (f"{where}; {m['cores']} CPU cores, {m['torch_threads']} torch threads; torch {m['torch']}, "
            f"Python {m['python']}; {m['when_utc']} UTC")


def mac_table(groups: dict) -> list[str]:
    lines = ["| group | model | params | MACs (paper) | MACs (with attention) | MAC ratio |", "|---|---|---|---|---|---|"]
    for group, entry in groups.items():
        for name, m in entry["models"].items():
            lines.append(f"| {group} | {name} | {format_count(m['params'])} | {format_count(m['macs_paper'])} | "
                         f"{format_count(m['macs'])} | {m['mac_ratio']:.3f} |")
        lines += [f"| {group} | {u.split(':')[0]} | - | - | - | unmeasured |" for u in entry.get("unmeasured", [])]
    return lines


def latency_table(rows: list[dict]) -> list[str]:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [r["group"], r["model"], str(r["batch"]), r["dtype"], "channels-last" if r["channels_last"] else
                 "contiguous", r["compile"], r["sdpa"], _fmt(r["median_ms"]), _fmt(r["iqr_ms"]),
                 _fmt(r["images_per_s"], 1), _fmt(r["speed_up"]), _fmt(r["mac_ratio"]),
                 f"**{_fmt(r['speed_up_over_mac_ratio'])}**" if r["speed_up_over_mac_ratio"] is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(result: dict) -> str:
    """The whole page as one string (ends with a newline)."""
    m = result["machine"]
    lines = ["# U-Net latency: dense vs pruned", "", f"Machine: {machine_line(m)}.", "",
             f"Command: `{result['command']}`", ""]
    loads = [f"{g}: {e['loadavg_before']} -> {e['loadavg_after']}" for g, e in result["groups"].items()]
    lines += [f"Load average (1, 5, 15 min) before -> after each group: {'; '.join(loads)}."]
    if m["device"] == "cpu" and not result["macs_only"]:
        busy = [g for g, e in result["groups"].items() if e["loadavg_before"] and e["loadavg_before"][0] > m["cores"]]
        if busy:
            lines += [f"**LOADED MACHINE ({', '.join(busy)}): load average above the {m['cores']} cores; these CPU "
                      "timings are not results.**"]
        lines += ["A CPU figure means something only where the load average stays near the benchmark's own threads "
                  f"({m['torch_threads']}); above the core count ({m['cores']}) it measures the other processes."]
    s = result["settings"]
    lines += [] if result["macs_only"] else ["", f"Settings: batch sizes {s['batch_sizes']}, dtypes {s['dtypes']}, channels-last {s['channels_last']}, "
              f"compile {s['compile']}, sdpa {s['sdpa']}, allocator {result.get('allocator', 'default')}, {s['warmup']} warm-up + {s['repeats']} timed forwards "
              "per model (interleaved), seed " + str(s["seed"]) + "."]
    lines += ["", "MAC ratio = dense MACs / MACs (with the attention products, batch 1, metrics/macs.py); speed-up = "
              "dense median / median in the same setting and batch; speed-up / MAC ratio = 1 means the pruned "
              "network is as much faster as its arithmetic says.", "", "## MACs", ""]
    lines += mac_table(result["groups"])
    if result["macs_only"]:
        lines += ["", "No timing in this run (--macs-only)."]
    else:
        lines += ["", "## Latency", ""] + latency_table(result["rows"])
    notes = result["notes"] + [u for e in result["groups"].values() for u in e.get("unmeasured", [])]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m benchmarks.latency_report benchmarks/results/latency_<device>.json")
    print(markdown(json.loads(Path(sys.argv[1]).read_text())), end="")
