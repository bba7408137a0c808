"""The rows and settings of the text-to-image study (benchmarks/reproduce_t2i.py), as plain data.

A row names what is pruned and how it is fine-tuned:

    layer:<criterion>@<target>[+<distill>]   LAPTOP-Diff layer pruning (Zhang et al. 2024, arXiv 2404.11098, Sec. 3)
                                             to <target> = the fraction of U-Net parameters removed
    channel:<method>@<ratio>                 channel pruning at the Diff-Pruning paper's local ratio (Fang et al.
                                             2023, arXiv 2305.10924, Sec. 4.1)

The three claims and their rows:

- C5' (LAPTOP-Diff's Table 1 in miniature): output-loss, taylor, random and handcrafted layer pruning at 30% and
  50% of the U-Net's parameters, each plain-fine-tuned with the same budget. "handcrafted" on the embedded
  teacher (SD-1's block types at three levels, one (ResNet, attention) pair per down block; models/sd/presets.py
  t2i-shapes) is BK-SDM's removal ORDER (Kim et al. 2023, arXiv 2305.15798, Sec. 3.1; pruning/layers/sd.py
  ``handcrafted_order``: the block pairs BK-SDM drops first, then the mid block, then the rest, innermost level
  first) taken by the ``ranked`` solver until the parameter target is reached. BK-SDM's fixed
  ``architecture=`` presets are refused for this U-Net (pruning/layers/bksdm.py ``check_sd1``: four levels and
  two pairs per down block), and a fixed architecture would not land on 30% / 50% anyway.
- C6' (LAPTOP-Diff Sec. 3.3): the output-loss student at ``C6_TARGET`` with no KD (the C5' row itself), output
  KD, feature KD and normalised feature KD, at EQUAL weights lambda_task = lambda_out = lambda_feat = 1
  (reproduce_config.kd_lambdas "equal"), so the variants differ only in what is distilled.
- C1' (Diff-Pruning Table 1's rows, on a latent text-to-image teacher): diff-pruning against random, magnitude
  and taylor channel pruning at ratio 0.3; "taylor" is the paper's (the reference's ``--pruner taylor``: the
  Diff-Pruning score over every timestep = diff-pruning at thr 0; reproduce_config.PRUNE_AS).
"""
from __future__ import annotations

from dataclasses import dataclass

from benchmarks.reproduce_config import PRUNE_AS, kd_lambdas

LAYER_CRITERIA = ("output-loss", "taylor", "random", "handcrafted")
LAYER_TARGETS = (0.3, 0.5)
KD_MODES = ("output", "feature", "feature-normalized")
C6_TARGET = 0.5  # LAPTOP-Diff's headline: 4.0% PickScore drop at 50% with its full method
CHANNEL_METHODS = ("diff-pruning", "random", "magnitude", "taylor")
CHANNEL_RATIO = 0.3

# LAPTOP-Diff (arXiv 2404.11098), abstract and Table 1: the relative PickScore decline of SD-v1.5's U-Net at 50%
# of its parameters removed, its method against the best of the other pruning methods.
PUBLISHED_DROP_50 = {"LAPTOP-Diff (output-loss + normalised feature KD)": 0.040, "best other method": 0.082}


@dataclass(frozen=True)
class Row:
    name: str
    kind: str          # "layer" | "channel"
    method: str        # layer criterion, or channel method as the row names it
    amount: float      # layer: fraction of parameters removed; channel: ratio
    distill: str       # "none" | output | feature | feature-normalized

    @property
    def pruned_name(self) -> str:
        """Rows differing only in their distillation share one pruned model."""
        return self.name.split("+", 1)[0]


def parse_row(name: str) -> Row:
    """'layer:output-loss@0.5+feature' -> Row(kind='layer', method='output-loss', amount=0.5, distill='feature')."""
    base, _, distill = name.partition("+")
    kind, sep, rest = base.partition(":")
    method, at, amount = rest.partition("@")
    known = LAYER_CRITERIA if kind == "layer" else CHANNEL_METHODS if kind == "channel" else ()
    if not sep or not at or method not in known or (distill and (kind != "layer" or distill not in KD_MODES)):
        raise ValueError(f"row {name!r}: expected layer:<{'|'.join(LAYER_CRITERIA)}>@<fraction>[+<"
                         f"{'|'.join(KD_MODES)}>] or channel:<{'|'.join(CHANNEL_METHODS)}>@<ratio>")
    try:
        value = float(amount)
    except ValueError:
        raise ValueError(f"row {name!r}: {amount!r} is not a number") from None
    if not 0 < value < 1:
        raise ValueError(f"row {name!r}: the fraction {value} is not in (0, 1)")
    return Row(name=name, kind=kind, method=method, amount=value, distill=distill or "none")


def default_rows() -> list[str]:
    """C5' (4 criteria x 2 targets), C6' (3 KD variants; no KD is the C5' row), C1' (4 channel methods)."""
    rows = [f"layer:{c}@{t}" for t in LAYER_TARGETS for c in LAYER_CRITERIA]
    rows += [f"layer:output-loss@{C6_TARGET}+{k}" for k in KD_MODES]
    rows += [f"channel:{m}@{CHANNEL_RATIO}" for m in CHANNEL_METHODS]
    return rows


def prune_args(row: Row, *, seed: int, calib_size: int, batch_size: int, thr: float, max_timesteps: int | None) -> list[str]:
    """prune.py's flags for the pruned model of ``row`` at ``seed`` (its --model / --out are the caller's)."""
    args = ["--seed", str(seed), "--num-samples", "0"]
    if row.kind == "layer":
        args += ["--method", "layer", "--criterion", row.method, "--target-params", str(row.amount),
                 "--calib-size", str(calib_size), "--additivity-subsets", "0"]
        if row.method == "taylor":
            args += ["--batch-size", str(batch_size), "--thr", str(thr)]
    else:
        method, row_thr = PRUNE_AS.get(row.method, (row.method, thr if row.method == "diff-pruning" else None))
        args += ["--method", method, "--ratio", str(row.amount)]
        if method == "diff-pruning":
            args += ["--batch-size", str(batch_size), "--thr", str(row_thr)]
    gradient = row.method in ("taylor", "diff-pruning")
    if gradient and max_timesteps:
        args += ["--max-timesteps", str(max_timesteps)]
    return args


def distill_settings(row: Row, teacher: str) -> dict:
    """train.TrainConfig's distillation fields of ``row``: none, or the mode at equal loss weights."""
    if row.distill == "none":
        return {}
    lambdas = {k: v for k, v in kd_lambdas("equal", row.distill).items() if v is not None}
    return {"distill": row.distill, "teacher": teacher, **lambdas}


# The measurement (LAPTOP-Diff's and BK-SDM's protocol in miniature): one sample per held-out prompt at a fixed
# classifier-free guidance and sampler, the same noise index i for prompt i in every model. A class-conditional
# teacher (training/class_conditioning.py) is measured on --num-prompts / 4 samples of each shape kind instead,
# at CLASS_GUIDANCE (benchmarks/class_teacher_curve.py's default).
GUIDANCE = 5.0
CLASS_GUIDANCE = 3.0
SCHEDULER = "dpmpp_2m"  # DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095)
SAMPLE_STEPS = 25
