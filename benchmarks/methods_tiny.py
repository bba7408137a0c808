"""Benchmark: the five pruning methods on the shipped tiny teacher, the Diff-Pruning table in miniature.

    python -m benchmarks.methods_tiny [--ratio 0.3] [--finetune-steps 0] [--num-samples 64]

For each method (random, magnitude, taylor, diff-pruning, scratch) the teacher is pruned at the same ratio
(so every pruned model has the same widths), optionally fine-tuned with train.py, and measured:
#params, MACs (paper convention), the held-out denoising loss (eps-MSE on fixed (x0, t, eps) triples from
the shapes test split) and SSIM consistency to the teacher (deterministic DDIM, 50 steps, x0 clipped to
[-1, 1], same initial noise), as the paper's Table 1 does with FID and SSIM. Without fine-tuning this is the paper's
"prune, then compare with the dense model" ablation (the SSIM-of-the-unfine-tuned-model curves of
VainF/Diff-Pruning's draw_ssim_pruned_curve.py). FID is not measured: the FID
Inception weights cannot be downloaded on the machine this ran on.

Prints a table and writes benchmarks/results/methods_tiny.json and .md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import train
from common.defaults import TEACHER_CHECKPOINT
from data.procedural import ProceduralShapes
from diffusion.ddpm import HeldOutLoss
from diffusion.samplers import sample
from diffusion.schedule import DiffusionConfig, Schedule
from metrics.macs import count_macs
from metrics.ssim import consistency
from models.checkpoint import save_checkpoint
from models.loading import load
from pruning import METHODS, ChannelPruning, prune

RESULTS = Path(__file__).resolve().parent / "results"


def measure(model, teacher_images, heldout, cfg) -> dict:
    c = model.config
    macs = count_macs(model, model.example_inputs())
    images = sample(model.eval(), Schedule(), indices=list(range(cfg.num_samples)), seed=0,
                    image_shape=(3, c.image_size, c.image_size), steps=50, batch_size=cfg.num_samples, clip_x0=True)
    return {"params": macs.params, "macs_paper": macs.macs_paper, "heldout_loss": heldout(model.eval()),
            "ssim_to_teacher": None if teacher_images is None else consistency((images + 1) / 2, (teacher_images + 1) / 2),
            "images": images}


def main(cfg: argparse.Namespace) -> dict:
    torch.set_num_threads(cfg.threads)
    teacher = load(cfg.teacher)
    test = ProceduralShapes(image_size=teacher.config.image_size, split="test")
    heldout = HeldOutLoss(torch.stack([test[i] for i in range(256)]), Schedule(), draws=4, seed=1234)
    train_set = ProceduralShapes(image_size=teacher.config.image_size, split="train")
    g = torch.Generator().manual_seed(0)
    x0 = torch.stack([train_set[int(i)] for i in torch.randperm(len(train_set), generator=g)[:cfg.batch_size]])

    dense = measure(teacher, None, heldout, cfg)
    teacher_images = dense.pop("images")
    rows = [{"method": "teacher (dense)", **dense, "ssim_to_teacher": 1.0, "seconds": 0.0}]
    for method in cfg.methods:
        model = load(cfg.teacher)
        start = time.perf_counter()
        spec = ChannelPruning.applicable(method=method, ratio=cfg.ratio, thr=cfg.thr, batch_size=cfg.batch_size,
                                         micro_batch=cfg.batch_size, seed=0)
        model, report = prune(model, model.example_inputs(), spec, x0 if spec.gradient else None,
                              schedule=Schedule(DiffusionConfig(loss_reduction="sum")), progress=False)
        if cfg.finetune_steps:
            path = Path(cfg.work) / f"{method}.pt"
            save_checkpoint(path, config=model.config, state_dict=model.state_dict())
            run = train.main(train.TrainConfig(model=str(path), steps=cfg.finetune_steps, batch_size=32, lr=5e-4,
                                               loss_reduction="mean", ema_decay=cfg.ema_decay, ckpt_every=cfg.finetune_steps,
                                               heldout_images=0, out=str(Path(cfg.work) / "runs")))
            model = load(run / "model.pt")
        seconds = time.perf_counter() - start
        m = measure(model, teacher_images, heldout, cfg)
        m.pop("images")
        kept = report.timesteps.kept if report.timesteps else None
        rows.append({"method": method, **m, "seconds": seconds,
                     "timesteps": None if kept is None else len(kept)})
        print(f"{method:<14} params {m['params']:>9,}  held-out {m['heldout_loss']:.5f}  SSIM {m['ssim_to_teacher']:.4f}  "
              f"({seconds:.0f} s)", flush=True)

    result = {"benchmark": "methods_tiny", "teacher": str(cfg.teacher), "ratio": cfg.ratio, "thr": cfg.thr,
              "ema_decay": cfg.ema_decay,
              "gradient_batch": cfg.batch_size, "finetune_steps": cfg.finetune_steps, "num_samples": cfg.num_samples,
              "torch": str(torch.__version__), "rows": rows,
              "command": f"python -m benchmarks.methods_tiny --ratio {cfg.ratio} --thr {cfg.thr} --batch-size "
                         f"{cfg.batch_size} --finetune-steps {cfg.finetune_steps} --num-samples {cfg.num_samples}"
                         f" --ema-decay {cfg.ema_decay} --methods {' '.join(cfg.methods)}"}
    RESULTS.mkdir(exist_ok=True)
    stem = f"methods_tiny_ft{cfg.finetune_steps}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"`{result['command']}`", "", "| method | params | MACs | held-out eps-MSE | SSIM to teacher | timesteps |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['params'] / 1e6:.3f}M | {r['macs_paper'] / 1e6:.1f}M | {r['heldout_loss']:.5f} "
                     f"| {r['ssim_to_teacher']:.4f} | {r.get('timesteps') or '-'} |")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default=str(TEACHER_CHECKPOINT))
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--thr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=8, help="the one gradient batch of taylor / diff-pruning")
    p.add_argument("--finetune-steps", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--ema-decay", type=float, default=0.99,
                   help="EMA of the fine-tune; a short fine-tune needs a short EMA horizon (0.999^300 = 0.74 of "
                        "the weights would still be the un-fine-tuned ones)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--work", default="/tmp/methods_tiny")
    main(p.parse_args())
