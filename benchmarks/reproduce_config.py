"""The two studies benchmarks/reproduce.py runs, as argparse defaults (``--study first|converged``).

"first" is the committed run of 2026-11-30 (docs/RESULTS.md, "The first study"): 200-step fine-tunes (1.7%
of the teacher's steps), EMA 0.99 without warm-up, a gradient batch of 8 images, DDIM-50 with x0 clipping
at 128 samples, Diff-Pruning's 0.3/0.7 output-KD weights. Its "taylor" row was the first-order variant
|sum_k w_k G_k| (the reference's LDM "taylor"), here named "taylor-first-order".

"converged" is the regime where the papers make their claims (docs/RESULTS.md, "The converged study"):

- fine-tunes of 2000 steps at batch 32: 12.2% of the continued teacher's 16,400 steps, the nearest round
  number to CIFAR-10's 100K / 800K = 12.5% in Diff-Pruning's Table 1 (the papers' "10-20%");
- lr 2e-4 (the teacher's and the paper's CIFAR-10 lr); EMA 0.9999 with the latent-diffusion warm-up
  min(mu, (1+n)/(10+n)) (common/ema.py), so at step 2000 the decay is 0.9955, a ~220-step horizon, and
  no weight of the freshly pruned model survives; the EMA and the raw weights are both measured;
- the gradient batch of taylor / diff-pruning: 128 images, the paper's;
- evaluation: metrics/probe.py's STUDY config (DDIM-100, quad skip, no x0 clipping; 256 samples);
- rows random, magnitude, taylor (the paper's: the reference's ``--pruner taylor`` for its DDPM table is the
  Diff-Pruning score over ALL timesteps, i.e. diff-pruning at thr 0.0), diff-pruning at thr 0.05, 0.1 and
  0.2, scratch (the random-pruned architecture re-initialised) at the same budget: 5 seeds each, except
  the threshold rows 0.1 and 0.2 (3 seeds); the LAPTOP layer rows at 3 seeds, after the channel rows;
- output KD at equal weights (L_task + L_out, as the feature variants' 1/1/1), so C6 compares only what
  is distilled;
- the curve of C3: diff-pruning at 0.05 fine-tuned to 20% of the teacher's steps, measured every 5%.
"""
from __future__ import annotations

from metrics.probe import STUDY  # the paper's sampler at 256 samples: DDIM-100, quad, no x0 clipping

CHANNEL_FIRST = ("random", "magnitude", "taylor-first-order", "diff-pruning@0.0", "diff-pruning@0.02",
                 "diff-pruning@0.05", "diff-pruning@0.1", "scratch")
CHANNEL_CONVERGED = ("random", "magnitude", "taylor", "diff-pruning@0.05", "diff-pruning@0.1", "diff-pruning@0.2",
                     "scratch")
LAYER = ("layer:output-loss", "layer:random", "layer:handcrafted", "layer:taylor",
         "layer:output-loss+output", "layer:output-loss+feature", "layer:output-loss+feature-normalized")
CHANNEL = tuple(dict.fromkeys(CHANNEL_FIRST + CHANNEL_CONVERGED + ("diff-pruning@0.0",)))
ALL_METHODS = CHANNEL + LAYER

# The row -> what pruning.prune runs (method, threshold). The paper's "taylor" is diff-pruning at thr 0.0;
# the first-order variant is pruning.importance's per-slice |sum_k w_k G_k|.
FIRST_ORDER_METHOD = "taylor-first-order"  # pruning.spec's name of the first-order variant
PRUNE_AS = {"taylor": ("diff-pruning", 0.0), "taylor-first-order": (FIRST_ORDER_METHOD, None)}

STUDIES: dict[str, dict] = {
    "first": dict(seeds=[0, 1, 2], few_seeds=3, methods=list(CHANNEL_FIRST + LAYER), few_seed_methods=[],
                  steps=200, lr=5e-4, ema_decay=0.99, ema_warmup=False, batch_size=8, num_samples=128,
                  sample_steps=50, skip_type="uniform", clip_x0=True, kd_weights="paper", measure_raw=False,
                  curve_methods=["diff-pruning@0.05"], curve_steps=1200, curve_every=400, sweep_ratios=[0.15, 0.5],
                  work="runs/reproduce", results_sub=""),
    "converged": dict(seeds=[0, 1, 2, 3, 4], few_seeds=3, methods=list(CHANNEL_CONVERGED + LAYER),
                      few_seed_methods=["diff-pruning@0.1", "diff-pruning@0.2", *LAYER], steps=2000, lr=2e-4,
                      ema_decay=0.9999, ema_warmup=True, batch_size=128, num_samples=STUDY.num_samples,
                      sample_steps=STUDY.sample_steps, skip_type=STUDY.skip_type, clip_x0=STUDY.clip_x0,
                      kd_weights="equal", measure_raw=True,
                      curve_methods=["diff-pruning@0.05"], curve_steps=3280, curve_every=820, sweep_ratios=[],
                      work="runs/converged", results_sub="converged"),
}


def split_method(name: str) -> tuple[str, float | None, str]:
    """'diff-pruning@0.05' -> ('diff-pruning', 0.05, 'none'); 'layer:output-loss+feature' -> ('layer:output-loss',
    None, 'feature'); 'taylor' -> ('diff-pruning', 0.0, 'none') (PRUNE_AS)."""
    base, _, distill = name.partition("+")
    if base in PRUNE_AS:
        method, thr = PRUNE_AS[base]
        return method, thr, distill or "none"
    method, _, thr = base.partition("@")
    return method, (float(thr) if thr else None), distill or "none"


def kd_lambdas(kd_weights: str, distill: str) -> dict:
    """TrainConfig's loss weights: "paper" leaves each mode's defaults (output KD 0.3 task + 0.7 KD, feature
    modes 1/1/1); "equal" gives every variant lambda_task = lambda_out = 1 (and lambda_feat = 1)."""
    if distill == "none" or kd_weights == "paper":
        return {}
    return {"lambda_task": 1.0, "lambda_out": 1.0, "lambda_feat": 1.0 if distill.startswith("feature") else None}


def seeds_of(cfg, method: str) -> list[int]:
    """The seeds a row runs: all of --seeds, or the first --few-seeds for the rows that need fewer."""
    return list(cfg.seeds[:cfg.few_seeds]) if method in cfg.few_seed_methods else list(cfg.seeds)


def cell_settings(cfg, teacher_sha256: str | None = None) -> dict:
    """What every cell's numbers depend on, kept in each new cell and checked against each saved one
    (benchmarks/cells.py): the teacher's file, the pruning, the fine-tune and the measurement. Cells saved
    before the study recorded them are taken as made with the study's preset, which docs/RESULTS.md states."""
    from benchmarks.cells import file_sha256

    return {"teacher": {"sha256": teacher_sha256 or file_sha256(cfg.teacher)},  # given: not hashed again
            "prune": {"batch_size": cfg.batch_size, "calib_size": cfg.calib_size, "max_timesteps": cfg.max_timesteps},
            "finetune": {"steps": cfg.steps, "lr": cfg.lr, "ema_decay": cfg.ema_decay, "ema_warmup": cfg.ema_warmup,
                         "kd_weights": cfg.kd_weights},
            "curve": {"steps": cfg.curve_steps, "every": cfg.curve_every},  # the curve cells' own (Study.cell)
            "measure": {"num_samples": cfg.num_samples, "sample_steps": cfg.sample_steps, "skip_type": cfg.skip_type,
                        "clip_x0": cfg.clip_x0, "heldout_images": cfg.heldout_images, "measure_raw": cfg.measure_raw}}
