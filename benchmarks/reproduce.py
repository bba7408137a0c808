"""Benchmark: both papers' tables in miniature on the embedded default, with seeds, spreads and verdicts.

    python -m benchmarks.reproduce                       # the first study (resumable; see docs/RESULTS.md)
    python -m benchmarks.reproduce --study converged --teacher checkpoints/tiny_shapes_16400.pt \
        --shards 2 --shard 0 --threads 1                 # and --shard 1 in a second process: same cells, split

The two studies' settings are benchmarks/reproduce_config.py's presets (every flag can still override them).
What it runs, on --teacher, every cell with the same fine-tune recipe (train.py, batch 32, Adam lr --lr, EMA
--ema-decay with or without warm-up, --steps steps) and, per seed, the same fine-tune seed and so the same data
order and noise:

- ratio 0.3, the Diff-Pruning paper's local rule (Fang et al. 2023, Sec. 4.1): the rows of --methods (first
  study: random, magnitude, taylor-first-order, diff-pruning at thr 0.0, 0.02, 0.05 and 0.1, scratch;
  converged study: random, magnitude, taylor (the paper's), diff-pruning at 0.05, 0.1, 0.2, scratch);
- LAPTOP-Diff layer pruning (Zhang et al. 2024, Sec. 3) at the parameter count of the ratio-0.3 channel model:
  the output-loss, random, handcrafted and taylor criteria with plain fine-tuning, and output-loss with each
  distillation variant (output KD, feature KD, normalised feature KD; the dense teacher distils);
- per seed: the pruning's own randomness (the random choice, the gradient batch x0 and its noise, the
  calibration set) and the fine-tune's;
- once (the first seed): quality against fine-tuning steps up to --curve-steps for diff-pruning (thr 0.05)
  (the papers' "10-20% of the training cost"), a ratio sweep (diff-pruning at --sweep-ratios), the
  L_t curve with each threshold's cut, LAPTOP's additivity report for output-loss, taylor and random, and
  the per-stage feature-KD losses of the layer-pruned student before and after normalisation.

Each model is measured by metrics/probe.py: FD-shapes and KID-shapes of --num-samples DDIM samples, SSIM to the
teacher's samples from the same noise, the held-out eps-MSE, params and MACs; with --measure-raw the raw
(non-EMA) weights too (keys ``*_raw``). Every cell's result is written to
--work/cells/<name>.json when it finishes and never recomputed (an interrupted fine-tune resumes exactly from its
last checkpoint), so the script can be stopped and rerun at any time; cells are run seed-major, so a partial
run has every method at the first seeds. Verdicts (benchmarks/reproduce_report.py, benchmarks/stats.py): Welch's
t-test per pair, Holm-corrected within each claim, with the difference of means and its bootstrap interval.
Writes reproduce.json, reproduce.md and the plots into --results.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import train
from common.allocator import retain_freed_memory
from common.defaults import TEACHER_CHECKPOINT
from benchmarks.cells import CellStore, check_device, run_jobs
from benchmarks.reproduce_config import (cell_settings, ALL_METHODS, CHANNEL, STUDIES, kd_lambdas, seeds_of,
                                         split_method)
from benchmarks.reproduce_report import write_report
from common.runs import RUN_MARKER
from data.procedural import ProceduralShapes
from diffusion.schedule import DiffusionConfig, Schedule
from metrics.probe import ProbeConfig, QualityProbe
from models.checkpoint import save_checkpoint, training_steps
from models.loading import load
from pruning import ChannelPruning, prune
from pruning.layers import LayerPruning, make_calibration, prune_layers

RESULTS = Path(__file__).resolve().parent / "results"


class Study:
    def __init__(self, cfg: argparse.Namespace):
        self.cfg = cfg
        self.work = Path(cfg.work)
        for sub in ("pruned", "runs"):
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        self.cells = CellStore(self.work / "cells", tag="reproduce")
        self.settings = cell_settings(cfg)
        # cells without settings (written before they were recorded) are the preset's: reused only under it
        preset = parse_args(["--study", cfg.study, "--teacher", cfg.teacher])
        self.legacy = self.settings == cell_settings(preset, self.settings["teacher"]["sha256"])
        self.teacher = load(cfg.teacher)
        self.train_set = ProceduralShapes(image_size=self.teacher.config.image_size, split="train")
        self._probe = None
        self._layer_target = None

    # ------------------------------------------------------------------ bookkeeping
    def cell(self, name: str, fn) -> dict:
        """fn()'s JSON result, computed once and kept in work/cells/<name>.json with the settings it was made
        with; a saved cell made with others is refused (benchmarks/cells.py, reproduce_config.cell_settings)."""
        return self.cells.get(name, fn, settings=self.settings_of(name), legacy=self.legacy)

    def settings_of(self, name: str) -> dict:
        """The settings cell ``name`` depends on: all but the curve's own, which only the curve cells read."""
        return self.settings if name.startswith("curve-") else {k: v for k, v in self.settings.items() if k != "curve"}

    @property
    def probe(self) -> QualityProbe:
        if self._probe is None:
            c = self.cfg
            self._probe = QualityProbe(ProbeConfig(num_samples=c.num_samples, sample_steps=c.sample_steps,
                                                   skip_type=c.skip_type, clip_x0=c.clip_x0,
                                                   heldout_images=c.heldout_images), device=c.device)
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
            cpu0 = time.process_time()
            if method.startswith("layer:"):
                criterion = method.split(":", 1)[1]
                spec = LayerPruning.applicable(criterion=criterion, target_params=self.layer_target(),
                                               calib_size=self.cfg.calib_size, thr=0.05, batch_size=self.cfg.batch_size,
                                               micro_batch=64, seed=seed, max_timesteps=self.cfg.max_timesteps)
                small, report = prune_layers(self.teacher, spec, self.images(
                    seed, self.cfg.calib_size if criterion != "taylor" else self.cfg.batch_size))
                info = {"removed": report.removed, "target_params": self.layer_target()}
            else:
                spec = ChannelPruning.applicable(method=method, ratio=ratio, thr=thr if thr is not None else 0.05,
                                                 batch_size=self.cfg.batch_size, micro_batch=64, seed=seed,
                                                 max_timesteps=self.cfg.max_timesteps)
                # the gradient pass runs on --device; the layer criteria above stay on the CPU (they are cheap)
                device = torch.device(self.cfg.device)
                x0 = self.images(seed, self.cfg.batch_size).to(device) if spec.gradient else None
                small, report = prune(load(self.cfg.teacher).to(device), tuple(x.to(device) for x in self.example()),
                                      spec, x0, schedule=Schedule(DiffusionConfig(loss_reduction="sum")), progress=False)
                small = small.cpu()
                if report.timesteps is not None:
                    ts = report.timesteps
                    info = {"kept_timesteps": len(ts.kept), "losses": ts.losses, "stopped_at": ts.stopped_at,
                            "loss_max": ts.loss_max}
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            save_checkpoint(tmp, config=small.config, state_dict=small.state_dict(),
                            meta={"reproduce": {"method": method_name, "seed": seed, "ratio": ratio}})
            tmp.replace(path)
            return {"method": method_name, "seed": seed, "ratio": ratio, "device": self.cfg.device,
                    "heldout_loss": self.probe.heldout(small.eval()), **info,
                    "cpu_s": round(time.process_time() - cpu0, 1)}

        saved = self.cells.load(f"pruned-{key}")
        if saved is not None and not path.exists():
            self.cells.check_settings(f"pruned-{key}", saved, self.settings_of(key), legacy=self.legacy)
            self._rebuild(f"pruned-{key}", saved, run)
        return path, self.cell(f"pruned-{key}", run)

    def _rebuild(self, name: str, saved: dict, run) -> None:
        """A pruned-model cell restored without its checkpoint (cells committed from another machine, docs/
        RESULTS.md): the pruning is a function of the seed, so it is redone. On the cell's own device it must
        give the same held-out loss (else the cell is another teacher's or code version's: refused); on another
        device the gradient scores may differ by float reordering, so the cell is replaced by the one that
        describes the checkpoint now on disk, and the change is printed."""
        again = run()
        if abs(again["heldout_loss"] - saved["heldout_loss"]) <= 1e-6 * abs(saved["heldout_loss"]):
            return
        was = saved.get("device", "cpu")
        if was == self.cfg.device:
            raise SystemExit(f"reproduce: cell {name} says held-out loss {saved['heldout_loss']:.6g}, pruning it "
                             f"again gives {again['heldout_loss']:.6g}: the cell is from another teacher or code version")
        self.cells.put(name, {**again, "settings": self.settings_of(name), "replaces": saved})
        print(f"[reproduce] {name}: made on {was}, pruned again on {self.cfg.device}: held-out loss "
              f"{saved['heldout_loss']:.6g} -> {again['heldout_loss']:.6g}; the cell now describes this model", flush=True)

    # ------------------------------------------------------------------ fine-tuning
    def finetune(self, pruned: Path, name: str, seed: int, distill: str, steps: int, keep_every: int = 0) -> Path:
        """Fine-tune ``pruned`` (resuming an interrupted run of the same name); returns the run folder."""
        c = self.cfg
        out = self.work / "runs" / name
        kd = {} if distill == "none" else {"distill": distill, "teacher": str(c.teacher),
                                           **{k: v for k, v in kd_lambdas(c.kd_weights, distill).items() if v}}
        tc = train.TrainConfig(model=str(pruned), steps=steps, batch_size=32, lr=c.lr, loss_reduction="mean", device=c.device,
                               ema_decay=c.ema_decay, ema_warmup=c.ema_warmup, ckpt_every=keep_every or steps,
                               keep_every=keep_every, heldout_images=0, seed=seed, out=str(out), **kd)
        runs = sorted(p.parent for p in out.glob(f"*/{RUN_MARKER}"))
        return train.main(tc, resume=str(runs[-1])) if runs else train.main(tc)

    def main_cell(self, method_name: str, seed: int, ratio: float | None = None) -> dict:
        ratio = self.cfg.ratio if ratio is None else ratio
        name = f"{method_name}-r{ratio}-s{seed}"

        def run() -> dict:
            path, pruned = self.pruned(method_name, seed, ratio)
            start, cpu0 = time.perf_counter(), time.process_time()
            run_dir = self.finetune(path, name, seed, split_method(method_name)[2], self.cfg.steps)
            tuned, cpu1 = time.perf_counter(), time.process_time()
            out = {"method": method_name, "seed": seed, "ratio": ratio, "pruned_heldout_loss": pruned["heldout_loss"],
                   **self.probe(load(run_dir / "model.pt"))}
            if self.cfg.measure_raw:  # the raw weights: the EMA's effect is measured, not assumed
                raw = self.probe(load(run_dir / "model.pt", ema=False))
                out.update({f"{k}_raw": raw[k] for k in ("fd_shapes", "kid_shapes", "ssim_to_teacher", "heldout_loss")})
            # wall seconds depend on the machine's load; CPU seconds of this one-thread process much less
            out["timing"] = {"device": self.cfg.device, "prune_s": pruned.get("seconds"), "prune_cpu_s": pruned.get("cpu_s"),
                             "finetune_s": round(tuned - start, 1), "finetune_cpu_s": round(cpu1 - cpu0, 1),
                             "measure_s": round(time.perf_counter() - tuned, 1),
                             "measure_cpu_s": round(time.process_time() - cpu1, 1)}
            return out
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
                                     micro_batch=64, max_timesteps=self.cfg.max_timesteps, seed=0)
            scores = {k: LAYER_CRITERIA[k](self.teacher, units, inputs) for k in ("output-loss", "taylor", "random")}
            rep = additivity_report(self.teacher, calib, scores, sizes=[2, 4, 6], per_size=12, seed=0)
            return {"stats": {k: v["stats"] for k, v in rep["criteria"].items()}}
        return self.cell("additivity", run)

    def feature_spread_cell(self) -> dict:
        """C6's premise: the per-stage feature-KD terms (training/distill.py) of the output-loss layer-pruned
        student (first seed, before fine-tuning) against the teacher on one batch of 64 (x_t, t), as plain MSE
        and normalised; the spread (largest / smallest stage) is what normalisation is meant to remove."""
        from diffusion.ddpm import q_sample
        from training.distill import capture, feature_kd_terms, stage_taps

        def run() -> dict:
            path, _ = self.pruned("layer:output-loss", self.cfg.seeds[0], self.cfg.ratio)
            student, g = load(path), torch.Generator().manual_seed(0)
            x0 = self.images(1000, 64)
            t = torch.randint(0, 1000, (64,), generator=g)
            x_t = q_sample(Schedule(), x0, t, torch.randn(x0.shape, generator=g))
            taps = stage_taps(self.teacher.config)
            with torch.no_grad(), capture(student, taps) as f_s, capture(self.teacher, taps) as f_t:
                student(x_t, t.float())
                self.teacher(x_t, t.float())
                terms = {k: {n: float(v) for n, v in feature_kd_terms(f_s, f_t, normalized=k == "normalized").items()}
                         for k in ("mse", "normalized")}
            # stages the removed units do not reach (encoder stages, for a decoder-only removal) give exactly 0
            spread = {k: max(v.values()) / min(x for x in v.values() if x > 0) for k, v in terms.items()}
            return {"terms": terms, "spread": spread, "zero_stages": [n for n, x in terms["mse"].items() if x == 0],
                    "student": path.name}
        return self.cell("feature-spread", run)

    def teacher_cell(self) -> dict:
        return self.cell("teacher", lambda: {"method": "teacher", **self.probe(self.teacher)})

    # ------------------------------------------------------------------ the plan
    def plan(self) -> list[tuple[str, tuple]]:
        """Every cell, in run order: the main table seed by seed (a partial run has every method at the first
        seeds), then the seed-0 extras."""
        c = self.cfg
        jobs: list[tuple[str, tuple]] = [] if c.only == "spread" else [("teacher_cell", ())]
        if c.only in ("all", "main"):
            for group in ([m for m in c.methods if not m.startswith("layer:")],
                          [m for m in c.methods if m.startswith("layer:")]):  # channel rows first
                jobs += [("main_cell", (m, seed)) for seed in c.seeds for m in group if seed in seeds_of(c, m)]
        if c.only in ("all", "extras"):
            if any(m.startswith("layer:") for m in c.methods):
                jobs += [("additivity_cell", ()), ("feature_spread_cell", ())]
            jobs += [("curve_cell", (m, c.seeds[0])) for m in c.curve_methods]
            jobs += [("main_cell", (m, c.seeds[0], r)) for r in c.sweep_ratios for m in c.sweep_methods]
        if c.only == "spread":
            jobs.append(("feature_spread_cell", ()))
        return jobs


def check_args(cfg: argparse.Namespace) -> None:
    """Refuse, in one line and before any work, what would run nothing or overwrite the committed results."""
    if not 0 <= cfg.shard < cfg.shards:
        raise SystemExit(f"reproduce: --shard {cfg.shard} is outside 0..{cfg.shards - 1} (--shards {cfg.shards})")
    if not Path(cfg.teacher).is_file():
        raise SystemExit(f"reproduce: --teacher {cfg.teacher} does not exist")
    check_device("reproduce", cfg.device)
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
    run_jobs(study, jobs, cfg, "reproduce")
    return write_report(cfg, study, jobs, time.perf_counter() - wall)


def build_parser(study: str = "first") -> argparse.ArgumentParser:
    """The flags, with ``study``'s preset (benchmarks/reproduce_config.py) as their defaults."""
    d = STUDIES[study]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--study", choices=sorted(STUDIES), default=study,
                   help="which study's settings are the defaults (benchmarks/reproduce_config.py) [first]")
    p.add_argument("--teacher", default=str(TEACHER_CHECKPOINT))
    p.add_argument("--seeds", type=int, nargs="+", default=d["seeds"])
    p.add_argument("--few-seeds", type=int, default=d["few_seeds"], help="seeds of the --few-seed-methods rows")
    p.add_argument("--few-seed-methods", nargs="*", default=d["few_seed_methods"], choices=ALL_METHODS)
    p.add_argument("--methods", nargs="+", default=d["methods"], choices=ALL_METHODS)
    p.add_argument("--ratio", type=float, default=0.3, help="channel sparsity of the main table [0.3]")
    p.add_argument("--steps", type=int, default=d["steps"], help="fine-tune steps of every main cell")
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument("--ema-decay", type=float, default=d["ema_decay"])
    p.add_argument("--ema-warmup", action=argparse.BooleanOptionalAction, default=d["ema_warmup"],
                   help="EMA decay min(mu, (1+n)/(10+n)) at update n (common/ema.py)")
    p.add_argument("--kd-weights", choices=("paper", "equal"), default=d["kd_weights"],
                   help="output KD at Diff-Pruning's 0.3/0.7 ('paper') or at 1/1 like the feature variants")
    p.add_argument("--measure-raw", action=argparse.BooleanOptionalAction, default=d["measure_raw"],
                   help="measure the raw (non-EMA) weights too")
    p.add_argument("--batch-size", type=int, default=d["batch_size"],
                   help="the ONE gradient batch of taylor / diff-pruning (the paper's: 128)")
    p.add_argument("--max-timesteps", type=int, default=None,
                   help="cap the timesteps of every gradient pass (channel and layer taylor, diff-pruning; timing and test runs only: changes the method)")
    p.add_argument("--calib-size", type=int, default=64, help="LAPTOP output-loss calibration triples [64]")
    p.add_argument("--curve-methods", nargs="*", default=d["curve_methods"], choices=CHANNEL)
    p.add_argument("--curve-steps", type=int, default=d["curve_steps"], help="length of the fine-tune curves")
    p.add_argument("--curve-every", type=int, default=d["curve_every"], help="measure the curves every N steps")
    p.add_argument("--sweep-ratios", type=float, nargs="*", default=d["sweep_ratios"])
    p.add_argument("--sweep-methods", nargs="*", default=["diff-pruning@0.05"], choices=CHANNEL)
    p.add_argument("--num-samples", type=int, default=d["num_samples"], help="DDIM samples per model")
    p.add_argument("--sample-steps", type=int, default=d["sample_steps"])
    p.add_argument("--skip-type", choices=("uniform", "quad"), default=d["skip_type"], help="DDIM timestep spacing")
    p.add_argument("--clip-x0", action=argparse.BooleanOptionalAction, default=d["clip_x0"],
                   help="clamp the predicted x0 to [-1, 1] at every DDIM step")
    p.add_argument("--heldout-images", type=int, default=256, help="test images of the held-out eps-MSE [256]")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu",
                   help="where the gradient pass, the fine-tunes and the sampling run: cpu, cuda, cuda:1 [cpu]; "
                        "the layer criteria, FD-shapes and SSIM stay on the CPU")
    p.add_argument("--shards", type=int, default=1, help="split the cells over this many processes")
    p.add_argument("--shard", type=int, default=0, help="this process's share: cells i with i %% shards == shard")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: rebuild the tables, plots and verdicts from the saved cells")
    p.add_argument("--only", choices=("all", "main", "extras", "spread"), default="all",
                   help="run only the main table or only the seed-0 extras (another process may run the rest in "
                        "the same --work; the report covers every saved cell either way)")
    p.add_argument("--stop-after", type=float, default=0, help="start no new cell after this many seconds (0: never)")
    p.add_argument("--results", default=str(RESULTS / d["results_sub"]))
    p.add_argument("--docs", default=str(Path(__file__).resolve().parents[1] / "docs" / "RESULTS.md"),
                   help="RESULTS.md whose generated block (of this study) is refreshed ('' to leave it alone)")
    p.add_argument("--work", default=d["work"])
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Two passes: --study picks the preset, then every other flag may override it."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--study", choices=sorted(STUDIES), default="first")
    study = pre.parse_known_args(argv)[0].study
    return build_parser(study).parse_args(argv)


if __name__ == "__main__":
    retain_freed_memory()  # common/allocator.py: the cells' passes reuse freed activations
    main(parse_args())
