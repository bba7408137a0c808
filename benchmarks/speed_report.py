"""benchmarks/speed.py's report: the markdown tables it writes into docs/PERFORMANCE.md between two markers,
replacing only what lies between them (the hand-written analysis around them stays)."""
from __future__ import annotations

from pathlib import Path

from common.runs import replace_between, write_text

DOC_BEGIN, DOC_END = "<!-- speed.py tables: begin -->", "<!-- speed.py tables: end -->"


def render(results: dict) -> str:
    """The markdown tables written into docs/PERFORMANCE.md between the markers."""
    lines = []
    m = results.get("machine")
    if m:
        r = m["result"]
        lines += [f"Machine: {r['cpu_model']}, {r['nproc']} CPUs, {r['threads']} torch threads, torch {r['torch']}. "
                  f"fp32 matmul ({r['matmul_fp32_gflops']['size']}^2): {r['matmul_fp32_gflops']['median']:.0f} GFLOP/s "
                  f"median, {r['matmul_fp32_gflops']['best']:.0f} best (load average {m['load_before']}).", ""]
    u = results.get("unet")
    if u:
        lines += ["**U-Net** forward (eval, inference_mode) and train step (forward + backward), images/s; "
                  "GFLOP/s = 2 x MACs with attention x images/s; \"vs eager\" compares rows of the same run only (interleaved).", "",
                  "| preset | batch | mode | forward img/s | GFLOP/s | vs eager | train img/s | vs eager | load avg | run |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        commands = []
        for row in u["result"].values():
            eager = row["modes"].get("eager")
            for mode, r in row["modes"].items():
                meta = r.get("meta", u)
                if meta["command"] not in commands:
                    commands.append(meta["command"])
                run = f"{commands.index(meta['command']) + 1}"
                same_run = eager is not None and eager.get("meta", u)["command"] == meta["command"]
                rel = (lambda k: f"{r[k] / eager[k]:.2f}x" if same_run else "-")
                lines.append(f"| {row['preset']} | {row['batch']} | {mode} | {r['forward_images_per_s']:.1f} | "
                             f"{r['forward_gflops']:.0f} | {rel('forward_images_per_s')} | {r['train_images_per_s']:.2f} | "
                             f"{rel('train_images_per_s')} | {meta['load_before']} | {run} |")
            for mode, note in row["notes"].items():
                note = note.replace("|", "\\|")  # a literal pipe would end the table cell
                lines.append(f"| {row['preset']} | {row['batch']} | {mode} | {note} | | | | | | |")
        lines += [""] + [f"Run {i + 1}: `{c}`" for i, c in enumerate(commands)] + [""]
    p = results.get("pruned")
    if p:
        lines += ["**Pruned vs dense** (magnitude criterion, local rule; all models of a row group interleaved in "
                  "one run; MAC ratio with the attention matmuls)", "",
                  "| measurement | model | median s | speed-up | MAC ratio | speed-up / MAC ratio | load avg | command |",
                  "|---|---|---|---|---|---|---|---|"]
        for key, rows in p["result"].items():
            if key in ("widths", "notes", "preset", "sampling_preset", "meta"):
                continue
            meta = rows.get("meta", p)
            where = f"{p['result']['preset']} {key}" if key.startswith("forward") else key
            for model, r in rows.items():
                if model == "meta":
                    continue
                lines.append(f"| {where} | {model} | {r['median_s']:.3f} | {r['speedup']:.2f}x | "
                             f"{r['mac_ratio_full']:.2f} | {r['speedup_over_mac_ratio']:.2f} | {meta['load_before']} | "
                             f"`{meta['command']}` |")
        for label, note in p["result"]["notes"].items():
            lines.append(f"| | {label} | {note} | | | | | |")
        lines.append("")
    for key, title in (("prune", "Trace + group + surgery, cifar10, ratio 0.3"),
                       ("gradient", "Diff-Pruning gradient pass, tiny preset"), ("fid", "FID Inception-v3, 32x32 input")):
        s = results.get(key)
        if not s:
            continue
        lines += [f"**{title}** (`{s['command']}`; load average {s['load_before']}): "]
        r = s["result"]
        if key == "prune":
            lines[-1] += ", ".join(f"{k} {v['median_s']:.3f} s" for k, v in r.items()) + " (medians)."
        elif key == "gradient":
            lines[-1] += "; ".join(f"{k}: {v['s_per_timestep']:.3f} s per kept timestep ({v['timesteps']} timesteps, "
                                   f"batch {v['batch']})" for k, v in r.items()) + "."
        else:
            lines[-1] += f"{r['images_per_s']:.1f} images/s (batch {r['batch']})."
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_doc(doc: Path, tables: str) -> None:
    """Replace the text between the markers (appending them if absent); everything else stays."""
    if not doc.exists():
        doc.parent.mkdir(parents=True, exist_ok=True)
        write_text(doc, "# Performance\n")
    replace_between(doc, DOC_BEGIN, DOC_END, "\n" + tables, append=True)
