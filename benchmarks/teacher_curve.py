"""Benchmark: continue the shipped teacher's training and measure it against steps (FD-shapes, held-out loss).

    python -m benchmarks.teacher_curve [--steps 3600] [--every 900] [--lr 2e-4] [--work runs/teacher_curve]

--teacher (default: the shipped checkpoints/tiny_shapes.pt) carries its weights but not its optimizer state,
so this continues from its EMA weights as a new train.py run (fresh Adam moments, a 100-step warm-up, another
data-order seed), at a lower learning rate, which is the usual last phase of a DDPM schedule. The shipped
teacher is itself the result of this script (step 3600 of a continuation of the 8000-step teacher of commit
1f181fe, README "The tiny teacher"); run on it, the script continues it further. The continuation itself is
an ordinary train.py run: interrupted, it is resumed exactly (``--resume``) by running this script again with
the same --work. Every --every steps it keeps a checkpoint; each is measured once (FD-shapes, KID-shapes and
the held-out eps-MSE through metrics/probe.py; SSIM to the shipped teacher's samples from the same noise) and
the result cached in --work/eval, so a rerun only measures what is new.

Writes benchmarks/results/teacher_curve_<from>_to_<to>.json, .md and .png (total steps; one name per
continuation, so no curve replaces another). ``--ship STEP --ship-to PATH`` writes the EMA
weights of that step as a diffprune checkpoint with the continuation's full provenance (PATH must not exist).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import train
from common.defaults import TEACHER_CHECKPOINT
from common.runs import RUN_MARKER
from metrics.probe import ProbeConfig, QualityProbe
from models.checkpoint import environment, read_checkpoint, save_checkpoint, training_steps
from models.loading import load
from models.ddpm.config import ModelConfig

RESULTS = Path(__file__).resolve().parent / "results"


def command(cfg: argparse.Namespace) -> str:
    teacher = "" if Path(cfg.teacher) == Path(TEACHER_CHECKPOINT) else f"--teacher {cfg.teacher} "
    return (f"python -m benchmarks.teacher_curve {teacher}--steps {cfg.steps} --every {cfg.every} --lr {cfg.lr} "
            f"--seed {cfg.seed} --num-samples {cfg.num_samples} --sample-steps {cfg.sample_steps}"
            + (f" --heldout-images {cfg.heldout_images}" if cfg.heldout_images != 256 else ""))


def continue_training(cfg: argparse.Namespace) -> Path:
    """Run (or resume) the continuation; returns its run folder."""
    runs = sorted(p.parent for p in (Path(cfg.work) / "train").glob(f"*/{RUN_MARKER}"))
    tc = train.TrainConfig(model=str(cfg.teacher), steps=cfg.steps, batch_size=32, lr=cfg.lr, warmup=100,
                           loss_reduction="mean", ema_decay=0.999, ckpt_every=cfg.every, keep_every=cfg.every,
                           heldout_images=cfg.heldout_images, seed=cfg.seed, out=str(Path(cfg.work) / "train"))
    if runs:
        return train.main(tc, resume=str(runs[-1]))  # exact resume; only the total --steps is read from tc
    return train.main(tc)


def checkpoints(run_dir: Path, teacher: str | Path) -> dict[int, Path]:
    """Kept checkpoints by step (0: the teacher the continuation started from)."""
    found = {0: Path(teacher)}
    for p in sorted((run_dir / "checkpoints").glob("step_*.pt")):
        found[int(p.stem.split("_")[1])] = p
    return found


def evaluate(cfg: argparse.Namespace, run_dir: Path) -> list[dict]:
    cache = Path(cfg.work) / "eval"
    cache.mkdir(parents=True, exist_ok=True)
    probe = None
    rows = []
    base_steps = training_steps(cfg.teacher)
    for step, path in checkpoints(run_dir, cfg.teacher).items():
        out = cache / f"step_{step:07d}.json"
        if not out.exists():
            if probe is None:
                probe = QualityProbe(ProbeConfig(num_samples=cfg.num_samples, sample_steps=cfg.sample_steps,
                                                 heldout_images=cfg.heldout_images))
                probe.set_reference(load(cfg.teacher))
            start = time.perf_counter()
            row = {"step": step, "total_steps": base_steps + step, "checkpoint": str(path),
                   **probe(load(path)), "seconds": round(time.perf_counter() - start, 1)}
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(row, indent=2) + "\n")
            tmp.replace(out)
            print(f"[curve] step {step}: FD-shapes {row['fd_shapes']:.2f}  KID {row['kid_shapes']:.3f}  "
                  f"held-out {row['heldout_loss']:.5f}  SSIM {row['ssim_to_teacher']:.3f}", flush=True)
        rows.append(json.loads(out.read_text()))
    if probe is not None:
        (cache / "probe.json").write_text(json.dumps(probe.describe(), indent=2) + "\n")
    return rows


def results_stem(cfg: argparse.Namespace) -> str:
    """One name per continuation, by the total steps it spans: a later continuation never replaces the
    curve of an earlier one (teacher_curve_8000_to_11600, teacher_curve_11600_to_14000, ...)."""
    base = training_steps(cfg.teacher)
    return f"teacher_curve_{base}_to_{base + cfg.steps}"


def report(cfg: argparse.Namespace, rows: list[dict], wall: float) -> None:
    probe = json.loads((Path(cfg.work) / "eval" / "probe.json").read_text())
    result = {"benchmark": "teacher_curve", "command": command(cfg), "teacher": str(cfg.teacher),
              "continuation": {"from": f"EMA weights of {cfg.teacher} ({training_steps(cfg.teacher)} steps)",
                               "lr": cfg.lr,
                               "warmup": 100, "batch_size": 32, "ema_decay": 0.999, "seed": cfg.seed,
                               "loss_reduction": "mean", "steps": cfg.steps},
              "probe": probe, "rows": rows, "wall_seconds_this_invocation": round(wall, 1),
              "environment": environment()}
    RESULTS.mkdir(exist_ok=True)
    stem = results_stem(cfg)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"`{result['command']}`", "",
             f"FD-shapes / KID-shapes of {probe['num_samples']} DDIM-{probe['ddim_steps']} samples against "
             f"{probe['fd_shapes_reference']}; held-out eps-MSE on {probe['heldout_images']} test images x "
             f"{probe['heldout_draws']} draws; SSIM to the shipped teacher's samples from the same noise.", "",
             "| continuation step | total steps | FD-shapes | KID-shapes | held-out eps-MSE | SSIM to step 0 |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['step']} | {r['total_steps']} | {r['fd_shapes']:.2f} | {r['kid_shapes']:.3f} | "
                     f"{r['heldout_loss']:.5f} | {r['ssim_to_teacher']:.3f} |")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    steps = [r["total_steps"] for r in rows]
    axes[0].plot(steps, [r["fd_shapes"] for r in rows], "o-")
    axes[0].set(xlabel="total training steps", ylabel="FD-shapes", title="FD-shapes (lower is better)")
    axes[1].plot(steps, [r["heldout_loss"] for r in rows], "o-", color="C1")
    axes[1].set(xlabel="total training steps", ylabel="held-out eps-MSE", title="held-out loss")
    for ax in axes:
        ax.set_xticks(steps)
        ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{stem}.png", dpi=110)


def ship(cfg: argparse.Namespace, run_dir: Path) -> None:
    target = Path(cfg.ship_to)
    if target.exists():
        raise SystemExit(f"error: --ship-to {target} exists; it is never overwritten")
    src = checkpoints(run_dir, cfg.teacher)[cfg.ship]
    ckpt = read_checkpoint(src)
    meta = dict(ckpt.get("meta", {}))
    base = read_checkpoint(cfg.teacher).get("meta", {})
    base_steps = training_steps(cfg.teacher)
    meta.update(note=f"EMA and raw weights of step {cfg.ship} of the continuation in benchmarks/teacher_curve.py "
                     f"({command(cfg)}), which started from the EMA weights of {cfg.teacher} ({base_steps} steps)",
                continuation_of={"command": base.get("command"), "note": base.get("note"), "steps": base_steps},
                total_steps=base_steps + cfg.ship)
    meta.pop("run_id", None)
    save_checkpoint(target, config=ModelConfig.from_dict(ckpt["model_config"]), state_dict=ckpt["state_dict"],
                    ema_state_dict=ckpt["ema_state_dict"], meta=meta)
    print(f"[curve] wrote {target} (step {cfg.ship})")


def main(cfg: argparse.Namespace) -> None:
    torch.set_num_threads(cfg.threads)
    wall = time.perf_counter()
    run_dir = continue_training(cfg)
    if cfg.ship is not None:
        ship(cfg, run_dir)
        return
    rows = evaluate(cfg, run_dir)
    report(cfg, rows, time.perf_counter() - wall)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default=str(TEACHER_CHECKPOINT),
                   help="the checkpoint continued [checkpoints/tiny_shapes.pt]")
    p.add_argument("--steps", type=int, default=3600, help="continuation steps (total of the new run) [3600]")
    p.add_argument("--every", type=int, default=900, help="keep and measure a checkpoint every N steps [900]")
    p.add_argument("--lr", type=float, default=2e-4, help="constant lr after a 100-step warm-up [2e-4]")
    p.add_argument("--seed", type=int, default=1, help="data-order / noise seed of the continuation [1]")
    p.add_argument("--num-samples", type=int, default=256)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--heldout-images", type=int, default=256,
                   help="test images of the held-out eps-MSE, in training and in the measurement [256]")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default="runs/teacher_curve")
    p.add_argument("--ship", type=int, help="write the EMA weights of this continuation step to --ship-to")
    p.add_argument("--ship-to", help="checkpoint path for --ship (must not exist)")
    return p


if __name__ == "__main__":
    main(build_parser().parse_args())
