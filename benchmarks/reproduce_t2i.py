"""Benchmark: the text-to-image study (C5', C6', C1'): both papers' claims on the embedded SD-1-style teacher.

    python -m benchmarks.reproduce_t2i --teacher checkpoints/t2i_shapes               # resumable, all cells
    python -m benchmarks.reproduce_t2i --shards 2 --shard 0 --threads 1 &             # CPU: two one-thread
    python -m benchmarks.reproduce_t2i --shards 2 --shard 1 --threads 1               #   processes, one --work
    python -m benchmarks.reproduce_t2i --device cuda --threads 4                      # GPU: one process
    python -m benchmarks.reproduce_t2i --report-only                                  # tables from saved cells

It extends benchmarks/reproduce.py's machinery to a latent text-to-image teacher (a pipeline folder): the same
resumable cells (benchmarks/cells.py), seeds, sharding and verdict rule (benchmarks/stats.py: Welch's t-test,
Holm within a claim, difference of means with its bootstrap interval). The rows and claims are
benchmarks/reproduce_t2i_config.py's: C5' layer pruning (output-loss, taylor, random, BK-SDM's handcrafted
order) at 30% and 50% of the U-Net's parameters; C6' the 50% output-loss student with no KD, output KD, feature
KD and normalised feature KD at equal loss weights; C1' diff-pruning against random, magnitude and taylor
channel pruning at ratio 0.3. A cell is one row at one seed:

  1. prune.py on --teacher with the row's spec and the seed (the calibration / gradient draw, random scores),
     its pruned pipeline kept in --work/prune/pruned-<row>-s<seed>/ (one pruned model per criterion, target
     and seed: the KD rows share the no-KD row's);
  2. train.py fine-tunes its U-Net, the same budget for every row: --budget x --teacher-steps steps (the
     papers' "10-20% of the training cost"; default 12.5% of 12,000 = 1500 steps) at batch 64 (the teacher's),
     lr --lr, EMA --ema-decay with warm-up, fine-tune seed = the cell's seed (same data order and noise for
     every row of a seed); an interrupted fine-tune resumes exactly from its last checkpoint (--ckpt-every);
  3. measured: one sample per held-out prompt (--prompts, the first --num-prompts) at guidance 5 with 25
     DPM-Solver++(2M) steps, prompt i from noise index i in every model: attribute accuracy (all and per
     attribute, metrics/attributes.py), CLIP-shapes score (metrics/clip_score.py, the tiny shapes CLIP) and
     FD-shapes / KID-shapes against the real test images the prompts describe (metrics/fd_shapes.py).

A class-conditional teacher (no text encoder, a class per shape kind: training/class_conditioning.py, e.g. the
class-token twin of docs/TEACHER.md) runs the same rows: pruning calibrates on (latent, kind) pairs, the
fine-tunes train on class labels, and step 3 samples --num-prompts / 4 images of each kind at guidance 3,
measured by kind accuracy (primary) and FD-shapes against matched real images (metrics/class_shapes.py):
Diff-Pruning's latent-diffusion setting (a class-conditional LDM) in miniature.

The teacher is measured once by the same protocol (its samples are deterministic), and every metric is reported
as LAPTOP-Diff reports PickScore: the RELATIVE DROP from the teacher, (teacher - student) / teacher for the
higher-is-better metrics and (student - teacher) / teacher for FD-shapes (positive = worse), mean +- std over
the seeds (benchmarks/reproduce_t2i_report.py). Every cell records its wall and CPU seconds per phase.
Writes --results/reproduce_t2i.{json,md} and the generated block of docs/RESULTS.md.

CPU-time plan (one-thread timings on this 2-core machine, 2026-12-07, while the teacher trained at raised
priority: load 4.5, they varied 2x): one optimizer step at batch 64 takes 3.4-7 s for the dense t2i-shapes U-Net
(2.2M params), 1.6 s for a 50% layer-pruned student, +1.4 s with the teacher's KD forward; one guided sampling
forward for 16 prompts ~0.7 s. A 1500-step cell (the default budget) is so 0.7-3 h of fine-tuning, ~3 min of measuring 128 prompts,
and for the taylor rows (layer and channel) up to ~1 h of pruning (1000 timesteps of a 64-image gradient batch;
diff-pruning stops at its threshold). Per seed (15 rows) ~10-12 CPU-hours; the default 3 seeds ~30-70
CPU-hours, i.e. ~15-35 h wall as two one-thread shards. On one H100 a step is milliseconds: the whole study
is well under an hour (`--device cuda`). The first use also caches the VAE posterior of the 20,000 train
images (training/latent.py), once per --work.
"""
from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import json
import time
from pathlib import Path

import torch

import prune
import train
from benchmarks.cells import CellStore, check_device, file_sha256, run_jobs
from benchmarks.reproduce_t2i_config import (CLASS_GUIDANCE, GUIDANCE, SAMPLE_STEPS, SCHEDULER, default_rows,
                                             distill_settings, parse_row, prune_args)
from benchmarks.reproduce_t2i_report import write_report
from common.allocator import retain_freed_memory
from common.runs import RUN_MARKER

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"


class Measure:
    """The study's measurement of one pipeline folder (module docstring, step 3); readers built once. With
    ``labels`` (a class-conditional teacher) the samples are of those shape kinds and are measured by kind
    accuracy and FD-shapes (metrics/class_shapes.py) instead of prompt following."""

    def __init__(self, prompts: list[str], *, seed: int, batch_size: int, device: str,
                 labels: list[int] | None = None):
        from metrics.clip_score import load_clip_scorer
        from metrics.t2i_shapes import SHAPES_CLIP, ShapesMetrics

        self.prompts, self.seed, self.batch_size, self.device, self.labels = prompts, seed, batch_size, device, labels
        if labels is not None:
            from metrics.class_shapes import ClassShapesMetrics
            self.shapes, self.clip = ClassShapesMetrics.build(labels), None
        else:  # missing reader checkpoints fail here, before sampling
            self.shapes, self.clip = ShapesMetrics.build(len(prompts)), load_clip_scorer(SHAPES_CLIP)

    def describe(self) -> dict:
        if self.labels is not None:
            return {"class_labels": f"0..3, {len(self.labels) // 4} each", "guidance": CLASS_GUIDANCE,
                    "scheduler": SCHEDULER, "steps": SAMPLE_STEPS, "seed": self.seed,
                    "reader_sha256": self.shapes.reader.weights_sha256}
        return {"prompts": len(self.prompts), "guidance": GUIDANCE, "scheduler": SCHEDULER, "steps": SAMPLE_STEPS,
                "seed": self.seed, "clip": "shapes", "reader_sha256": self.shapes.reader.weights_sha256}

    @torch.no_grad()
    def __call__(self, folder: str | Path) -> dict:
        from metrics.clip_score import clip_score
        from metrics.macs import count_macs
        from metrics.t2i_evaluation import as_tensor, resize
        from models.pipelines import load_latent
        from models.pipelines.text_to_image import Request, generate

        pipe = load_latent(folder)
        macs = count_macs(pipe.unet, pipe.unet.example_inputs())
        pipe = pipe.to(self.device)
        request = Request(guidance_scale=GUIDANCE if self.labels is None else CLASS_GUIDANCE, steps=SAMPLE_STEPS,
                          scheduler=SCHEDULER, seed=self.seed, batch_size=self.batch_size)
        if self.labels is not None:  # kind accuracy overall and per kind, flat: cell["kind_accuracy"]["disc"]
            images = generate(pipe, request, range(len(self.labels)), class_labels=self.labels)
            m = self.shapes.measure(as_tensor(resize(images, None)))
            k = m["kind_accuracy"]
            return {"params": macs.params, "macs_paper": macs.macs_paper,
                    "kind_accuracy": {"all": k["all"], **k["per_class"]},
                    "fd_shapes": m["fd_shapes"], "kid_shapes": m["kid_shapes"]}
        images = generate(pipe, request, range(len(self.prompts)), prompts=self.prompts)
        x = as_tensor(resize(images, None))  # 8-bit, as evaluate.py's PNGs
        m = self.shapes.measure(x, self.prompts)
        s = clip_score(*self.clip, x, self.prompts)
        return {"params": macs.params, "macs_paper": macs.macs_paper,
                "attribute_accuracy": {k: v for k, v in m["attribute_accuracy"].items() if k != "n"},
                "clip_score": s.score, "clip_mean_cosine": s.mean_cosine,
                "fd_shapes": m["fd_shapes"], "kid_shapes": m["kid_shapes"]}


def study_settings(cfg: argparse.Namespace, steps: int, prompts: list[str]) -> dict:
    """What a cell's numbers depend on, by part: the teacher (its files), the pruning, the fine-tune and the
    measurement. Each cell keeps the parts it depends on; a saved cell made otherwise is refused, not reused.
    The device is not among them: GPU and CPU cells of one setting may be pooled (each cell names its device)."""
    teacher = Path(cfg.teacher)  # a pipeline folder: all its files
    return {"teacher": {"sha256": file_sha256(teacher)},
            "prune": {"calib_size": cfg.calib_size, "gradient_batch": cfg.gradient_batch, "thr": cfg.thr,
                      "max_timesteps": cfg.max_timesteps},
            "finetune": {"steps": steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "ema_decay": cfg.ema_decay},
            "measure": {"prompts_sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
                        "num_prompts": len(prompts), "sample_seed": cfg.sample_seed}}


PARTS = {"teacher": ("teacher", "measure"), "pruned": ("teacher", "prune"),
         "main": ("teacher", "prune", "finetune", "measure")}  # the settings each kind of cell depends on


class T2IStudy:
    def __init__(self, cfg: argparse.Namespace):
        from metrics.t2i_evaluation import read_prompts

        self.cfg = cfg
        self.work = Path(cfg.work)
        (self.work / "runs").mkdir(parents=True, exist_ok=True)
        (self.work / "cache").mkdir(parents=True, exist_ok=True)
        cache = self.work / "runs" / "cache"  # train.py caches latents in <out>/../cache, prune.py in work/cache
        if not cache.is_symlink() and not cache.exists():  # (exists() follows the link: a dangling one is there)
            try:
                cache.symlink_to(Path("..") / "cache", target_is_directory=True)
            except FileExistsError:  # another shard made it between the test and here
                pass
        self.cells = CellStore(self.work / "cells", tag="reproduce_t2i")
        self.prompts = read_prompts(cfg.prompts)[:cfg.num_prompts]
        self.rows = [parse_row(r) for r in cfg.rows]
        # what new cells are checked against (a report reads the settings the cells keep: no teacher needed)
        self.settings = None if cfg.report_only else study_settings(cfg, self.steps(), self.prompts)
        self._measure = None

    def cell(self, kind: str, name: str, fn, *, rebuild=None) -> dict:
        """Cell ``name`` of ``kind`` (PARTS): computed once with the settings it depends on kept in it; a saved
        cell made with other settings is a one-line refusal. ``rebuild(saved)``: whether a saved cell must be
        computed again (its files are missing here); the new one keeps the old as "replaces"."""
        mine = {part: self.settings[part] for part in PARTS[kind]}
        saved = self.cells.get(name, lambda: {**fn(), "device": self.cfg.device}, settings=mine)
        if rebuild is None or not rebuild(saved):  # (a cell computed just now has its files)
            return saved
        again = {**fn(), "settings": mine, "device": self.cfg.device, "replaces": saved}
        self.cells.put(name, again)
        print(f"[reproduce_t2i] {name}: its files are not here; computed again", flush=True)
        return again

    @property
    def measure(self) -> Measure:
        if self._measure is None:
            from models.pipelines.text_to_image import folder_info

            c = self.cfg
            labels = None
            if not folder_info(c.teacher).has_text:  # a class-conditional teacher: --num-prompts / 4 per kind
                labels = [y for y in range(4) for _ in range(max(1, c.num_prompts // 4))]
            self._measure = Measure(self.prompts, seed=c.sample_seed, batch_size=c.sample_batch, device=c.device,
                                    labels=labels)
        return self._measure

    def steps(self) -> int:
        """The fine-tune budget: --steps, else --budget of the teacher's --teacher-steps."""
        return self.cfg.steps or max(1, round(self.cfg.budget * self.cfg.teacher_steps))

    # ------------------------------------------------------------------ cells
    def teacher_cell(self) -> dict:
        def run() -> dict:
            cpu0 = time.process_time()
            return {**self.measure(self.cfg.teacher), "measure_cpu_s": round(time.process_time() - cpu0, 1)}
        return self.cell("teacher", "teacher", run)

    def pruned(self, row, seed: int) -> dict:
        """The pruned pipeline of ``row`` at ``seed`` (prune.py's run folder), computed once."""
        c = self.cfg

        name = f"pruned-{row.pruned_name}-s{seed}"
        parent = self.work / "prune" / name  # one folder per cell: its prune.py run folder is found by the cell

        def run() -> dict:
            cpu0 = time.process_time()
            argv = ["--model", str(c.teacher), "--out", str(parent), "--device", c.device,
                    *prune_args(row, seed=seed, calib_size=c.calib_size, batch_size=c.gradient_batch, thr=c.thr,
                                max_timesteps=c.max_timesteps)]
            folder = prune.main(prune.parse_args(argv))
            report = json.loads((folder / "report.json").read_text())
            return {"row": row.pruned_name, "seed": seed, "run": str(folder), "prune_argv": argv,
                    "params_before": report["params_before"], "params_after": report["params_after"],
                    "cpu_s": round(time.process_time() - cpu0, 1)}

        def missing(saved: dict) -> bool:
            """A cell restored from another machine (benchmarks/reproduce_parallel.py --restore) names a folder
            that is not here: the pruning is a function of the seed and the settings, so it is done again."""
            return not (Path(saved["run"]) / "pipeline" / "model_index.json").is_file()
        # Rows sharing a pruned model may sit in two shards: the second waits for the first's cell (flock; a
        # killed holder releases it) instead of pruning the same model again.
        parent.mkdir(parents=True, exist_ok=True)
        with open(self.work / "prune" / f".{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self.cell("pruned", name, run, rebuild=missing)

    def finetune(self, row, seed: int, pipeline: str) -> Path:
        """Fine-tune ``pipeline``'s U-Net as ``row`` says, resuming an interrupted run of the same cell."""
        c = self.cfg
        out = self.work / "runs" / f"{row.name}-s{seed}"
        tc = train.TrainConfig(model=pipeline, steps=self.steps(), batch_size=c.batch_size, lr=c.lr,
                               ema_decay=c.ema_decay, ema_warmup=True, ckpt_every=c.ckpt_every, log_every=50,
                               heldout_images=0, seed=seed, out=str(out), device=c.device,
                               **distill_settings(row, str(c.teacher)))
        started = sorted(p.parent for p in out.glob(f"*/{RUN_MARKER}")
                         if (p.parent / "checkpoints" / "latest.pt").is_file())
        if not started:
            return train.main(tc)
        # a resume continues with the run's saved settings: an interrupted run made otherwise is refused
        saved = json.loads((started[-1] / "config.json").read_text())["train"]
        mine = dataclasses.asdict(tc)
        free = ("steps", "device", "out", "ckpt_every")  # a resume may change these
        differ = sorted(k for k in mine if k not in free and saved.get(k) != mine[k])
        if differ:
            raise SystemExit(f"reproduce_t2i: the interrupted fine-tune {started[-1]} was started with other settings "
                             f"({', '.join(differ)}); use another --work, or remove that run")
        return train.main(tc, resume=str(started[-1]))

    def main_cell(self, name: str, seed: int) -> dict:
        row = parse_row(name)

        def run() -> dict:
            pruned = self.pruned(row, seed)
            start, cpu0 = time.perf_counter(), time.process_time()
            run_dir = self.finetune(row, seed, str(Path(pruned["run"]) / "pipeline"))
            tuned, cpu1 = time.perf_counter(), time.process_time()
            out = {"row": name, "seed": seed, "steps": self.steps(), "run": str(run_dir),
                   "params_before": pruned["params_before"], **self.measure(run_dir / "pipeline")}
            out["timing"] = {"prune_s": pruned.get("seconds"), "prune_cpu_s": pruned.get("cpu_s"),
                             "finetune_s": round(tuned - start, 1), "finetune_cpu_s": round(cpu1 - cpu0, 1),
                             "measure_s": round(time.perf_counter() - tuned, 1),
                             "measure_cpu_s": round(time.process_time() - cpu1, 1)}
            return out
        return self.cell("main", f"{name}-s{seed}", run)

    def plan(self) -> list[tuple[str, tuple]]:
        """The teacher, then every row seed-major (a partial run has every row at the first seeds)."""
        return [("teacher_cell", ())] + [("main_cell", (r.name, s)) for s in self.cfg.seeds for r in self.rows]


def check_args(cfg: argparse.Namespace) -> None:
    """Refuse, in one line and before any work, what would run nothing or could not run."""
    if not 0 <= cfg.shard < cfg.shards:
        raise SystemExit(f"reproduce_t2i: --shard {cfg.shard} is outside 0..{cfg.shards - 1} (--shards {cfg.shards})")
    check_device("reproduce_t2i", cfg.device)
    for r in cfg.rows:
        try:
            parse_row(r)
        except ValueError as e:
            raise SystemExit(f"reproduce_t2i: --rows: {e}") from None
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise SystemExit(f"reproduce_t2i: --seeds {cfg.seeds} repeats a seed")
    positive = {"--batch-size": cfg.batch_size, "--ckpt-every": cfg.ckpt_every, "--calib-size": cfg.calib_size,
                "--gradient-batch": cfg.gradient_batch, "--sample-batch": cfg.sample_batch, "--threads": cfg.threads,
                "--shards": cfg.shards, "--budget": cfg.budget, "--lr": cfg.lr, "--teacher-steps": cfg.teacher_steps}
    for flag, v in positive.items():
        if not v > 0:
            raise SystemExit(f"reproduce_t2i: {flag} {v}: must be positive")
    if cfg.steps < 0 or not 0 <= cfg.ema_decay < 1 or not 0 <= cfg.thr <= 1:
        raise SystemExit(f"reproduce_t2i: --steps {cfg.steps} (>= 0), --ema-decay {cfg.ema_decay} (in [0, 1)) and "
                         f"--thr {cfg.thr} (in [0, 1]): one is out of range")
    if cfg.max_timesteps is not None and cfg.max_timesteps < 1:
        raise SystemExit(f"reproduce_t2i: --max-timesteps {cfg.max_timesteps}: must be at least 1")
    if not cfg.report_only:
        from common.cli import UserError
        from metrics.t2i_evaluation import read_prompts
        try:
            available = len(read_prompts(cfg.prompts))
        except UserError as e:
            raise SystemExit(f"reproduce_t2i: {e}") from None
        if cfg.num_prompts > available:
            raise SystemExit(f"reproduce_t2i: --num-prompts {cfg.num_prompts}: {cfg.prompts} holds {available}")
    if not cfg.report_only and not (Path(cfg.teacher) / "model_index.json").is_file():
        raise SystemExit(f"reproduce_t2i: --teacher {cfg.teacher} is not a pipeline folder (no model_index.json)")
    if not cfg.report_only:
        from models.pipelines.text_to_image import folder_info

        info = folder_info(cfg.teacher)
        if not info.has_text and info.num_classes < 4:  # measured by shape kind (training/class_conditioning.py)
            raise SystemExit(f"reproduce_t2i: --teacher {cfg.teacher} has neither a text encoder nor a class for "
                             f"each of the 4 shape kinds ({info.num_classes} classes)")
        least = 2 if info.has_text else 4  # FD needs two samples; a class teacher samples num_prompts / 4 per kind
        if cfg.num_prompts < least:
            raise SystemExit(f"reproduce_t2i: --num-prompts {cfg.num_prompts}: at least {least} for this teacher")
    if cfg.report_only and not list((Path(cfg.work) / "cells").glob("*-s*.json")):
        raise SystemExit(f"reproduce_t2i: --report-only, but {Path(cfg.work) / 'cells'} has no finished cell")


def main(cfg: argparse.Namespace) -> dict:
    check_args(cfg)
    torch.set_num_threads(cfg.threads)
    wall = time.perf_counter()
    study = T2IStudy(cfg)
    jobs = study.plan()
    run_jobs(study, jobs, cfg, "reproduce_t2i")
    return write_report(cfg, study, jobs, time.perf_counter() - wall)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default=str(REPO / "checkpoints" / "t2i_shapes"), help="the dense pipeline folder")
    p.add_argument("--rows", nargs="+", default=default_rows(), help="rows (benchmarks/reproduce_t2i_config.py)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--teacher-steps", type=int, default=12000,
                   help="the teacher's training steps at batch 64 [12000: the shipped checkpoints/t2i_shapes]")
    p.add_argument("--budget", type=float, default=0.125, help="fine-tune steps as a share of --teacher-steps [0.125]")
    p.add_argument("--steps", type=int, default=0, help="fine-tune steps, overriding --budget (0: use --budget)")
    p.add_argument("--batch-size", type=int, default=64, help="fine-tune batch (the teacher's) [64]")
    p.add_argument("--lr", type=float, default=1e-4, help="fine-tune learning rate [1e-4]")
    p.add_argument("--ema-decay", type=float, default=0.9999, help="EMA decay, with the warm-up (common/ema.py)")
    p.add_argument("--ckpt-every", type=int, default=100, help="fine-tune checkpoints (what a kill loses) [100]")
    p.add_argument("--calib-size", type=int, default=64, help="layer pruning's calibration triples [64]")
    p.add_argument("--gradient-batch", type=int, default=64, help="taylor / diff-pruning gradient batch [64]")
    p.add_argument("--thr", type=float, default=0.05, help="diff-pruning's (and layer taylor's) threshold [0.05]")
    p.add_argument("--max-timesteps", type=int, default=None, help="cap the gradient loop (timing runs only)")
    p.add_argument("--prompts", default=str(REPO / "data" / "prompts" / "shapes_heldout.txt"))
    p.add_argument("--num-prompts", type=int, default=128, help="the first N held-out prompts, one sample each")
    p.add_argument("--sample-seed", type=int, default=0, help="noise seed of every measurement [0]")
    p.add_argument("--sample-batch", type=int, default=16, help="prompts per sampling batch [16]")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shards", type=int, default=1, help="split the cells over this many processes")
    p.add_argument("--shard", type=int, default=0, help="this process's share: cells i with i %% shards == shard")
    p.add_argument("--report-only", action="store_true", help="run nothing: rebuild the report from saved cells")
    p.add_argument("--stop-after", type=float, default=0, help="start no new cell after this many seconds (0: never)")
    p.add_argument("--work", default="runs/reproduce_t2i")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--docs", default=str(REPO / "docs" / "RESULTS.md"),
                   help="RESULTS.md whose generated block is refreshed ('' to leave it alone)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


if __name__ == "__main__":
    retain_freed_memory()  # common/allocator.py: the cells' passes reuse freed activations
    main(parse_args())
