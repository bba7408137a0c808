"""Benchmark: both papers' tables in miniature on the embedded default, with seeds, spreads and verdicts.

    python benchmarks/reproduce.py                       # the committed run (resumable; see docs/RESULTS.md)
    python benchmarks/reproduce.py --shards 2 --shard 0  # and --shard 1 in a second process: same cells, split

What it runs, on the shipped teacher (checkpoints/tiny_shapes.pt), every cell with the same fine-tune recipe
(train.py, batch 32, Adam lr --lr, EMA --ema-decay, --steps steps) and, per seed, the same fine-tune seed and so
the same data order and noise:

- ratio 0.3, the Diff-Pruning paper's local rule (Fang et al. 2023, Sec. 4.1): random, magnitude, taylor,
  diff-pruning at thr 0.0, 0.02, 0.05 and 0.1, scratch (random pruning, re-initialised);
- LAPTOP-Diff layer pruning (Zhang et al. 2024, Sec. 3) at the parameter count of the ratio-0.3 channel model:
  the output-loss, random, handcrafted and taylor criteria with plain fine-tuning, and output-loss with each
  distillation variant (output KD, feature KD, normalised feature KD; the dense teacher distils);
- per seed: the pruning's own randomness (the random choice, the gradient batch x0 and its noise, the
  calibration set) and the fine-tune's;
- once (the first seed): quality against fine-tuning steps up to --curve-steps for diff-pruning (thr 0.05)
  (the papers' "10-20% of the training cost"), a ratio sweep (diff-pruning at --sweep-ratios), the
  L_t curve with each threshold's cut, and LAPTOP's additivity report for output-loss, taylor and random.

Each model is measured by metrics/probe.py: FD-shapes and KID-shapes of --num-samples DDIM samples, SSIM to the
teacher's samples from the same noise, the held-out eps-MSE, params and MACs. Every cell's result is written to
--work/cells/<name>.json when it finishes and never recomputed (an interrupted fine-tune resumes exactly from its
last checkpoint), so the script can be stopped and rerun at any time; cells are run seed-major, so a partial
run has every method at the first seeds. Verdicts (benchmarks/reproduce_report.py) compare means only where the
seeds' mean +- std intervals do not overlap. Writes benchmarks/results/reproduce.json, reproduce.md and the plots.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train  # noqa: E402
from common.defaults import TEACHER_CHECKPOINT  # noqa: E402
from benchmarks.cells import CellStore  # noqa: E402
from benchmarks.reproduce_report import write_report  # noqa: E402
from common.runs import RUN_MARKER  # noqa: E402
from data.procedural import ProceduralShapes  # noqa: E402
from diffusion.schedule import DiffusionConfig, Schedule  # noqa: E402
from metrics.probe import ProbeConfig, QualityProbe  # noqa: E402
from models.checkpoint import save_checkpoint, training_steps  # noqa: E402
from models.loading import load  # noqa: E402
from pruning import prune  # noqa: E402
from pruning.layers import make_calibration, prune_layers  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CHANNEL = ("random", "magnitude", "taylor", "diff-pruning@0.0", "diff-pruning@0.02", "diff-pruning@0.05",
           "diff-pruning@0.1", "scratch")
LAYER = ("layer:output-loss", "layer:random", "layer:handcrafted", "layer:taylor",
         "layer:output-loss+output", "layer:output-loss+feature", "layer:output-loss+feature-normalized")


def split_method(name: str) -> tuple[str, float | None, str]:
    """'diff-pruning@0.05' -> ('diff-pruning', 0.05, 'none'); 'layer:output-loss+feature' -> ('layer:output-loss',
    None, 'feature')."""
    base, _, distill = name.partition("+")
    method, _, thr = base.partition("@")
    return method, (float(thr) if thr else None), distill or "none"


class Study:
    def __init__(self, cfg: argparse.Namespace):
        self.cfg = cfg
        self.work = Path(cfg.work)
        for sub in ("pruned", "runs"):
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        self.cells = CellStore(self.work / "cells", tag="reproduce")
        self.teacher = load(cfg.teacher)
        self.train_set = ProceduralShapes(image_size=self.teacher.config.image_size, split="train")
        self._probe = None
        self._layer_target = None

    # ------------------------------------------------------------------ bookkeeping
    def cell(self, name: str, fn) -> dict:
        """fn()'s JSON result, computed once and kept in work/cells/<name>.json (benchmarks/cells.py)."""
        return self.cells.get(name, fn)

    @property
    def probe(self) -> QualityProbe:
        if self._probe is None:
            c = self.cfg
            self._probe = QualityProbe(ProbeConfig(num_samples=c.num_samples, sample_steps=c.sample_steps,
                                                   heldout_images=c.heldout_images))
            self._probe.set_reference(self.teacher)
            (self.work / "probe.json").write_text(json.dumps(self._probe.describe(), indent=2) + "\n")
        return self._probe

    def probe_description(self) -> dict:
        """The measurement settings (saved when the probe was first built; a report needs no sampling)."""
        path = self.work / "probe.json"
        return json.loads(path.read_text()) if path.exists() else self.probe.describe()

    def images(self, seed: int, count: int) -> torch.Tensor:
        """``count`` training images drawn by ``seed``: the gradient batch / calibration images of that seed."""
        g = torch.Generator().manual_seed(10_000 + seed)
        return torch.stack([self.train_set[int(i)] for i in torch.randperm(len(self.train_set), generator=g)[:count]])

    def teacher_steps(self) -> int:
        """The teacher's total training steps (the unit of the papers' "share of the training cost")."""
        return training_steps(self.cfg.teacher)

    # ------------------------------------------------------------------ pruning
    def layer_target(self) -> float:
        """The fraction of parameters the ratio-0.3 channel model removes (LAPTOP rows are pruned to it)."""
        if self._layer_target is None:
            small, _ = prune(load(self.cfg.teacher), self.example(), method="magnitude", ratio=self.cfg.ratio,
                             progress=False)
            before = sum(p.numel() for p in self.teacher.parameters())
            self._layer_target = 1 - sum(p.numel() for p in small.parameters()) / before
        return self._layer_target

    def example(self) -> tuple:
        s = self.teacher.config.image_size
        return torch.zeros(1, 3, s, s), torch.ones(1)

    def pruned(self, method_name: str, seed: int, ratio: float) -> tuple[Path, dict]:
        """The pruned (not yet fine-tuned) model of one method, seed and ratio, as a checkpoint, and its report.
        The distillation variants of a criterion share its pruned model (the part of the name before '+')."""
        method_name = method_name.split("+", 1)[0]
        key = f"{method_name}-r{ratio}-s{seed}"
        path = self.work / "pruned" / f"{key}.pt"

        def run() -> dict:
            method, thr, _ = split_method(method_name)
            info: dict = {}
            if method.startswith("layer:"):
                criterion = method.split(":", 1)[1]
                small, report = prune_layers(self.teacher, criterion=criterion, target_params=self.layer_target(),
                                             images=self.images(seed, self.cfg.calib_size if criterion != "taylor"
                                                                else self.cfg.batch_size),
                                             calib_size=self.cfg.calib_size, thr=0.05, micro_batch=64, seed=seed)
                info = {"removed": report.removed, "target_params": self.layer_target()}
            else:
                small, report = prune(load(self.cfg.teacher), self.example(), method=method, ratio=ratio,
                                      data=self.images(seed, self.cfg.batch_size),
                                      schedule=Schedule(DiffusionConfig(loss_reduction="sum")),
                                      thr=thr if thr is not None else 0.05, micro_batch=64, seed=seed, progress=False)
                if report.timesteps is not None:
                    ts = report.timesteps
                    info = {"kept_timesteps": len(ts.kept), "losses": ts.losses, "stopped_at": ts.stopped_at,
                            "loss_max": ts.loss_max}
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            save_checkpoint(tmp, config=small.config, state_dict=small.state_dict(),
                            meta={"reproduce": {"method": method_name, "seed": seed, "ratio": ratio}})
            tmp.replace(path)
            return {"method": method_name, "seed": seed, "ratio": ratio,
                    "heldout_loss": self.probe.heldout(small.eval()), **info}
        return path, self.cell(f"pruned-{key}", run)

    # ------------------------------------------------------------------ fine-tuning
    def finetune(self, pruned: Path, name: str, seed: int, distill: str, steps: int, keep_every: int = 0) -> Path:
        """Fine-tune ``pruned`` (resuming an interrupted run of the same name); returns the run folder."""
        c = self.cfg
        out = self.work / "runs" / name
        kd = {} if distill == "none" else {"distill": distill, "teacher": str(c.teacher)}
        tc = train.TrainConfig(model=str(pruned), steps=steps, batch_size=32, lr=c.lr, loss_reduction="mean",
                               ema_decay=c.ema_decay, ckpt_every=keep_every or steps, keep_every=keep_every,
                               heldout_images=0, seed=seed, out=str(out), **kd)
        runs = sorted(p.parent for p in out.glob(f"*/{RUN_MARKER}"))
        return train.main(tc, resume=str(runs[-1])) if runs else train.main(tc)

    def main_cell(self, method_name: str, seed: int, ratio: float | None = None) -> dict:
        ratio = self.cfg.ratio if ratio is None else ratio
        name = f"{method_name}-r{ratio}-s{seed}"

        def run() -> dict:
            path, pruned = self.pruned(method_name, seed, ratio)
            run_dir = self.finetune(path, name, seed, split_method(method_name)[2], self.cfg.steps)
            return {"method": method_name, "seed": seed, "ratio": ratio, "pruned_heldout_loss": pruned["heldout_loss"],
                    **self.probe(load(run_dir / "model.pt"))}
        return self.cell(name, run)

    def curve_cell(self, method_name: str, seed: int = 0) -> dict:
        """Quality against fine-tune steps: one long run, its kept checkpoints measured."""
        c = self.cfg
        name = f"curve-{method_name}-s{seed}"

        def run() -> dict:
            path, _ = self.pruned(method_name, seed, c.ratio)
            run_dir = self.finetune(path, name, seed, "none", c.curve_steps, keep_every=c.curve_every)
            points = [{"step": 0, **self.probe(load(path))}]
            for ckpt in sorted((run_dir / "checkpoints").glob("step_*.pt")):
                points.append({"step": int(ckpt.stem.split("_")[1]), **self.probe(load(ckpt))})
            return {"method": method_name, "seed": seed, "points": points}
        return self.cell(name, run)

    def additivity_cell(self) -> dict:
        from pruning.layers import find_units
        from pruning.layers.additivity import additivity_report
        from pruning.layers.criteria import LAYER_CRITERIA, CriterionInputs

        def run() -> dict:
            schedule = Schedule()
            images = self.images(0, self.cfg.calib_size)
            calib = make_calibration(images, schedule, size=self.cfg.calib_size, seed=0)
            units = find_units(self.teacher)
            inputs = CriterionInputs(calib=calib, x0=images[:self.cfg.batch_size], schedule=schedule, thr=0.05,
                                     micro_batch=64, seed=0)
            scores = {k: LAYER_CRITERIA[k](self.teacher, units, inputs) for k in ("output-loss", "taylor", "random")}
            rep = additivity_report(self.teacher, calib, scores, sizes=[2, 4, 6], per_size=12, seed=0)
            return {"stats": {k: v["stats"] for k, v in rep["criteria"].items()}}
        return self.cell("additivity", run)

    def teacher_cell(self) -> dict:
        return self.cell("teacher", lambda: {"method": "teacher", **self.probe(self.teacher)})

    # ------------------------------------------------------------------ the plan
    def plan(self) -> list[tuple[str, tuple]]:
        """Every cell, in run order: the main table seed by seed (a partial run has every method at the first
        seeds), then the seed-0 extras."""
        c = self.cfg
        jobs: list[tuple[str, tuple]] = [("teacher_cell", ())]
        if c.only in ("all", "main"):
            jobs += [("main_cell", (m, seed)) for seed in c.seeds for m in c.methods]
        if c.only in ("all", "extras"):
            if any(m.startswith("layer:") for m in c.methods):
                jobs.append(("additivity_cell", ()))
            jobs += [("curve_cell", (m, c.seeds[0])) for m in c.curve_methods]
            jobs += [("main_cell", (m, c.seeds[0], r)) for r in c.sweep_ratios for m in c.sweep_methods]
        return jobs


def check_args(cfg: argparse.Namespace) -> None:
    """Refuse, in one line and before any work, what would run nothing or overwrite the committed results."""
    if not 0 <= cfg.shard < cfg.shards:
        raise SystemExit(f"reproduce: --shard {cfg.shard} is outside 0..{cfg.shards - 1} (--shards {cfg.shards})")
    if not Path(cfg.teacher).is_file():
        raise SystemExit(f"reproduce: --teacher {cfg.teacher} does not exist")
    finished = [p for p in (Path(cfg.work) / "cells").glob("*-s*.json") if not p.name.startswith("pruned-")]
    if cfg.report_only and not finished:
        raise SystemExit(f"reproduce: --report-only, but {Path(cfg.work) / 'cells'} has no finished cell; "
                         f"{cfg.results} is left as it is")


def main(cfg: argparse.Namespace) -> dict:
    check_args(cfg)
    torch.set_num_threads(cfg.threads)
    wall = time.perf_counter()
    study = Study(cfg)
    jobs = study.plan()
    for i, (fn, args) in enumerate(jobs):
        if i % cfg.shards != cfg.shard or cfg.report_only:
            continue
        if cfg.stop_after and time.perf_counter() - wall > cfg.stop_after:
            print(f"[reproduce] --stop-after {cfg.stop_after} s reached; rerun to continue", flush=True)
            break
        print(f"[reproduce] job {i + 1}/{len(jobs)}: {fn}{args}", flush=True)
        getattr(study, fn)(*args)
    return write_report(cfg, study, jobs, time.perf_counter() - wall)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default=str(TEACHER_CHECKPOINT))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(CHANNEL + LAYER), choices=CHANNEL + LAYER)
    p.add_argument("--ratio", type=float, default=0.3, help="channel sparsity of the main table [0.3]")
    p.add_argument("--steps", type=int, default=200, help="fine-tune steps of every main cell [200]")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--ema-decay", type=float, default=0.99, help="a ~100-step EMA horizon, short enough for "
                                                                 "the fine-tune budget")
    p.add_argument("--batch-size", type=int, default=8, help="the ONE gradient batch of taylor / diff-pruning [8]")
    p.add_argument("--calib-size", type=int, default=64, help="LAPTOP output-loss calibration triples [64]")
    p.add_argument("--curve-methods", nargs="*", default=["diff-pruning@0.05"], choices=CHANNEL)
    p.add_argument("--curve-steps", type=int, default=1200, help="length of the fine-tune curves [1200]")
    p.add_argument("--curve-every", type=int, default=400, help="measure the curves every N steps [400]")
    p.add_argument("--sweep-ratios", type=float, nargs="*", default=[0.15, 0.5])
    p.add_argument("--sweep-methods", nargs="*", default=["diff-pruning@0.05"], choices=CHANNEL)
    p.add_argument("--num-samples", type=int, default=128, help="DDIM samples per model for FD-shapes/KID/SSIM")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--heldout-images", type=int, default=256, help="test images of the held-out eps-MSE [256]")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shards", type=int, default=1, help="split the cells over this many processes")
    p.add_argument("--shard", type=int, default=0, help="this process's share: cells i with i %% shards == shard")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: rebuild the tables, plots and verdicts from the saved cells")
    p.add_argument("--only", choices=("all", "main", "extras"), default="all",
                   help="run only the main table or only the seed-0 extras (another process may run the rest in "
                        "the same --work; the report covers every saved cell either way)")
    p.add_argument("--stop-after", type=float, default=0, help="start no new cell after this many seconds (0: never)")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--docs", default=str(Path(__file__).resolve().parents[1] / "docs" / "RESULTS.md"),
                   help="RESULTS.md whose generated block is refreshed ('' to leave it alone)")
    p.add_argument("--work", default="runs/reproduce")
    return p


if __name__ == "__main__":
    main(build_parser().parse_args())
