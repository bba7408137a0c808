"""prune.py's summary on the screen for a DDPM U-Net: widths per stage, params and MACs, the target, the
timesteps of the gradient pass, the run folder's files and the commands that come next (fine-tune, evaluate,
replay, a same-noise comparison)."""
from __future__ import annotations

import os
import shlex
from pathlib import Path

from models.lineage import root_teacher


def print_summary(cfg, report, macs: dict, seconds: float, additivity: dict | None, run: Path) -> None:
    from metrics.macs import format_count
    from reports.widths import stage_summary

    timing = ", ".join(f"{k} {v:.2f}s" for k, v in report.seconds.items())
    q = shlex.quote  # the printed commands run as pasted, also for paths with spaces or quotes
    root = root_teacher(cfg.model) or cfg.model  # the next commands compare with the ROOT teacher (models/lineage.py)
    pruned, model_arg = q(str(run / "pruned.pt")), q(os.path.relpath(root) if Path(root).exists() else root)  # short
    fine_tune = (f"python train.py --model {pruned} --steps 1000 --lr 5e-4 --loss-reduction mean --ema-decay 0.999 "
                 f"--batch-size 32")
    listing = ", ".join(sorted(p.name for p in run.iterdir() if not p.name.startswith(".")))
    if cfg.pipeline == "layer":
        from pruning.layers.additivity import format_report

        print(report.table())
        if additivity is not None:
            print("\nadditivity: measured output loss L(S) of random unit subsets against the summed single-unit scores")
            print(format_report(additivity))
        print(f"time: {seconds:.1f}s in all ({timing})\n\nwrote {run}/: {listing}")
        print(f"\nnext:\n  {fine_tune} --distill feature-normalized --teacher {model_arg}")
        return
    print(stage_summary(report.widths_before, report.widths_after) + f"\n(every layer: {run / 'widths.txt'})")
    f = format_count
    print(f"\n#params {f(report.params_before)} -> {f(report.params_after)}   MACs (paper convention) "
          f"{f(macs['macs_paper_before'])} -> {f(macs['macs_paper_after'])}   MACs (+attention matmuls) "
          f"{f(macs['macs_full_before'])} -> {f(macs['macs_full_after'])}")
    if report.target is not None:
        tg = report.target
        print(f"target: remove {tg['target']:.1%} of the {tg['kind']} -> ratio {tg['ratio']:.4f} removes {tg['achieved']:.2%}")
        if abs(tg["achieved"] - tg["target"]) > 0.01:
            print("  (the local rule applies one ratio to every group and GroupNorm blocks make its widths coarse; "
                  "--scope global reaches a target to within a percentage point)")
    if report.timesteps is not None:
        ts = report.timesteps
        stop = ts.stop_reason  # the threshold, or the --max-timesteps cap (pruning/importance.py)
        print(f"gradient over {len(ts.kept)} timesteps (t = 0..{ts.kept[-1] if ts.kept else '-'}; thr {ts.thr}, {stop}) "
              f"of a batch of {cfg.spec.batch_size} images")
    print(f"time: {seconds:.1f}s in all ({timing})")
    print(f"\nwrote {run}/: {listing}")
    print(f"\nnext:\n  {fine_tune}     # fine-tune (the teacher's recipe, under 10% of its steps)")
    print(f"  python evaluate.py {model_arg} {pruned} --reference {model_arg}     # compare with the original")
    print(f"  python prune.py --replay {q(str(run))}     # the same pruned weights again, in a new folder")
    print(f"  python -m benchmarks.side_by_side {model_arg} {pruned} --labels teacher pruned     # same-noise grid")
