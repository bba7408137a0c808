"""Benchmark: LAPTOP-Diff layer pruning on the shipped tiny teacher (criteria, additivity, distillation).

    python -m benchmarks.layer_pruning [--steps 100] [--seeds 0 1 2] [--num-samples 16]

1. Additivity (LAPTOP-Diff, arXiv 2404.11098, Sec. 3): the single-unit scores of output-loss, taylor and
   random on the teacher; random unit subsets of sizes 2, 4, 6, 8 with their measured output loss L(S);
   Pearson r, Spearman rho and the slope of L(S) against the summed scores. Also how stable the output-loss
   ranking is across calibration sets (another seed; 4x the size).
2. Criteria at a 30% parameter reduction: output-loss (exact knapsack), random (knapsack on seeded random
   scores: a different architecture per seed), handcrafted (the BK-SDM-style rule, in order), taylor
   (knapsack on the Diff-Pruning score summed per unit). Each pruned model is measured right after pruning
   and after the same short fine-tune with plain training (train.py, the teacher's recipe at lr 5e-4).
3. Distillation: the output-loss model fine-tuned with the same budget and --distill output, feature and
   feature-normalized (teacher: the dense model).

Measures: #params, MACs (paper convention), the held-out eps-MSE (fixed (x0, t, eps) triples from the shapes
test split) and SSIM to the teacher's samples from the same noise (deterministic DDIM, 50 steps, x0 clipped).
Every (variant, seed) cell is saved in --work as it finishes and skipped when the script is run again, so an
interrupted run resumes. Writes benchmarks/results/layer_pruning.json and .md and layer_pruning_additivity.png;
while cells are missing, the files say "partial".
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import train
from benchmarks.cells import CellStore
from common.defaults import TEACHER_CHECKPOINT
from data.procedural import ProceduralShapes
from diffusion.ddpm import HeldOutLoss
from training.distill import Distiller
from diffusion.samplers import sample
from diffusion.schedule import Schedule
from metrics.macs import count_macs
from metrics.ssim import consistency
from models.checkpoint import environment, save_checkpoint
from models.loading import load
from pruning.layers import LayerPruning, find_units, make_calibration, prune_layers
from pruning.layers.additivity import additivity_report, format_report
from pruning.layers.criteria import LAYER_CRITERIA, CriterionInputs
from reports.plots import plot_additivity

RESULTS = Path(__file__).resolve().parent / "results"
CRITERIA = ("output-loss", "random", "handcrafted", "taylor")
DISTILL = ("output", "feature", "feature-normalized")


class Bench:
    def __init__(self, cfg: argparse.Namespace):
        self.cfg = cfg
        self.work = Path(cfg.work)
        self.cells = CellStore(self.work / "cells", tag="bench")
        self.teacher = load(cfg.teacher)
        size = self.teacher.config.image_size
        test = ProceduralShapes(image_size=size, split="test")
        self.heldout = HeldOutLoss(torch.stack([test[i] for i in range(cfg.heldout_images)]), Schedule(),
                                   draws=cfg.heldout_draws, seed=1234)
        train_set = ProceduralShapes(image_size=size, split="train")
        g = torch.Generator().manual_seed(0)
        idx = torch.randperm(len(train_set), generator=g)[:cfg.calib_images]
        self.images = torch.stack([train_set[int(i)] for i in idx])  # calibration images and taylor's batch
        self._teacher_images = None

    # ------------------------------------------------------------------ cells
    def cell(self, name: str, fn, run: bool = True) -> dict | None:
        """Run fn() once; its JSON result is kept in work/cells/<name>.json and reused on a rerun
        (benchmarks/cells.py). With run=False only a saved result is returned (None when there is none)."""
        return self.cells.get(name, fn, run)

    def teacher_images(self) -> torch.Tensor:
        if self._teacher_images is None:
            self._teacher_images = self.samples(self.teacher)
        return self._teacher_images

    def samples(self, model) -> torch.Tensor:
        c = model.config
        return sample(model.eval(), Schedule(), indices=list(range(self.cfg.num_samples)), seed=0,
                      image_shape=(3, c.image_size, c.image_size), steps=self.cfg.sample_steps,
                      batch_size=self.cfg.num_samples, clip_x0=True)

    def measure(self, model) -> dict:
        macs = count_macs(model, model.example_inputs())
        ssim = consistency((self.samples(model) + 1) / 2, (self.teacher_images() + 1) / 2)
        return {"params": macs.params, "macs_paper": macs.macs_paper, "heldout_loss": self.heldout(model.eval()),
                "ssim_to_teacher": ssim}

    # ------------------------------------------------------------------ 1. additivity
    def additivity(self) -> dict:
        cfg = self.cfg
        schedule = Schedule()
        calib = make_calibration(self.images, schedule, size=cfg.calib_size, seed=0)
        units = find_units(self.teacher)
        inputs = CriterionInputs(calib=calib, x0=self.images[:cfg.taylor_batch], schedule=schedule, thr=cfg.thr,
                                 micro_batch=cfg.taylor_batch, seed=0)
        scores = {name: LAYER_CRITERIA[name](self.teacher, units, inputs) for name in ("output-loss", "taylor", "random")}
        report = additivity_report(self.teacher, calib, scores, sizes=cfg.subset_sizes, per_size=cfg.subsets, seed=0)
        # Stability of the output-loss ranking: another calibration seed, and 4x the calibration size.
        from scipy.stats import spearmanr

        stability = {}
        for label, size, seed in (("seed 1, same size", cfg.calib_size, 1), ("seed 2, 4x size", 4 * cfg.calib_size, 2)):
            other = LAYER_CRITERIA["output-loss"](self.teacher, units, CriterionInputs(
                calib=make_calibration(self.images, schedule, size=size, seed=seed)))
            stability[label] = float(spearmanr([scores["output-loss"][u.path] for u in units],
                                               [other[u.path] for u in units])[0])
        report["stability_spearman"] = stability
        report["scores"] = scores
        return report

    def imbalance(self, pruned_path: Path) -> dict:
        """Per-stage feature-KD terms of the freshly pruned output-loss model on one batch: raw and normalised."""
        student = load(pruned_path)
        g = torch.Generator().manual_seed(5)
        x0 = self.images[:32]
        t = torch.randint(0, 1000, (x0.shape[0],), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        out = {}
        for mode in ("feature", "feature-normalized"):
            d = Distiller(student, self.teacher, mode=mode)
            with torch.no_grad():
                _, logs = d(student, student, Schedule(), x0, t, eps)
            out[mode] = {k.split("/", 1)[1]: v for k, v in logs.items() if k.startswith("kd_feat/")}
        return out

    # ------------------------------------------------------------------ 2./3. prune, fine-tune, measure
    def prune(self, criterion: str, seed: int, scores: dict | None) -> tuple[Path, dict]:
        # Only the random criterion depends on the seed; the others prune the same way for every seed.
        key = f"prune-{criterion}" + (f"-s{seed}" if criterion == "random" else "")
        path = self.work / f"{key}.pt"

        def run():
            spec = LayerPruning.applicable(criterion=criterion, target_params=self.cfg.target,
                                           calib_size=self.cfg.calib_size, thr=self.cfg.thr,
                                           batch_size=self.cfg.taylor_batch, micro_batch=self.cfg.taylor_batch,
                                           seed=seed if criterion == "random" else 0)
            small, report = prune_layers(self.teacher, spec, self.images, scores=scores)
            save_checkpoint(path, config=small.config, state_dict=small.state_dict(),
                            meta={"layer_report": report.summary()})
            print(report.table(), flush=True)
            return {"removed": report.removed, "params_after": report.params_after, "macs_after": report.macs_after,
                    **self.measure(small)}
        return path, self.cell(key, run)

    def finetune(self, pruned: Path, name: str, seed: int, distill: str = "none", run: bool = True) -> dict | None:
        def run_cell():
            cfg = self.cfg
            kd = {} if distill == "none" else {"distill": distill, "teacher": str(cfg.teacher)}
            tc = train.TrainConfig(model=str(pruned), steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                                   loss_reduction="mean", ema_decay=cfg.ema_decay, ckpt_every=cfg.steps,
                                   heldout_images=0, seed=seed, out=str(self.work / "runs" / name), **kd)
            run_dir = train.main(tc)
            return {"seed": seed, **self.measure(load(run_dir / "model.pt"))}
        return self.cell(f"{name}-s{seed}", run_cell, run)


def summarize(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def main(cfg: argparse.Namespace) -> dict:
    torch.set_num_threads(cfg.threads)
    wall = time.perf_counter()
    results_dir = Path(cfg.results)
    b = Bench(cfg)
    teacher = b.cell("teacher", lambda: b.measure(b.teacher))
    add = b.cell("additivity", b.additivity)
    print(format_report(add), flush=True)
    print("output-loss ranking stability (Spearman):", add["stability_spearman"], flush=True)
    results_dir.mkdir(exist_ok=True)
    plot_additivity(add, results_dir / "layer_pruning_additivity.png")

    rows: dict[str, dict[str, list[dict]]] = {}
    expected = 0
    plan = [(c, "plain") for c in CRITERIA] + [("output-loss", d) for d in DISTILL]
    imbalance = None
    for seed in cfg.seeds:  # seed-major order: a partial run still has every variant at the first seed(s)
        for criterion, variant in plan:
            name = f"{criterion}-{variant}"
            expected += 1
            if variant not in cfg.variants and not (b.work / "cells" / f"{name}-s{seed}.json").exists():
                continue  # another invocation runs this variant (several processes may share one --work)
            try:
                # output-loss and taylor: the additivity cell's scores, from the same calibration set / batch and seed
                path, pruned = b.prune(criterion, seed, add["scores"].get(criterion) if criterion != "random" else None)
                if criterion == "output-loss" and imbalance is None:
                    imbalance = b.cell("imbalance", lambda: b.imbalance(path))
                r = rows.setdefault(name, {"pruned": [], "finetuned": []})
                r["pruned"].append(pruned)
                if cfg.stop_after and time.perf_counter() - wall > cfg.stop_after and variant in cfg.variants:
                    raise TimeoutError("time budget spent")
                tuned = b.finetune(path, name, seed, "none" if variant == "plain" else variant,
                                   run=variant in cfg.variants)
                if tuned is not None:
                    r["finetuned"].append(tuned)
            except TimeoutError:
                print(f"[bench] stopping: --stop-after {cfg.stop_after} s reached; results are partial", flush=True)
                break
        else:
            continue
        break

    done = sum(len(r["finetuned"]) for r in rows.values())
    table = []
    for name, r in rows.items():
        if not r["finetuned"]:
            continue
        entry = {"variant": name, "seeds": [x["seed"] for x in r["finetuned"]],
                 "params": r["pruned"][0]["params"], "macs_paper": r["pruned"][0]["macs_paper"],
                 "removed": [p["removed"] for p in r["pruned"]]}
        for stage in ("pruned", "finetuned"):
            for metric in ("heldout_loss", "ssim_to_teacher"):
                entry[f"{stage}_{metric}"] = summarize([x[metric] for x in r[stage]])
        entry["finetune_seconds"] = summarize([x["seconds"] for x in r["finetuned"]])
        table.append(entry)
    command = (f"python -m benchmarks.layer_pruning --steps {cfg.steps} --batch-size {cfg.batch_size} "
               f"--ema-decay {cfg.ema_decay} --seeds {' '.join(map(str, cfg.seeds))} --num-samples {cfg.num_samples} "
               f"--sample-steps {cfg.sample_steps} --heldout-images {cfg.heldout_images} "
               f"--heldout-draws {cfg.heldout_draws} --subsets {cfg.subsets} --calib-size {cfg.calib_size}")
    result = {"benchmark": "layer_pruning", "partial": done < expected, "cells_done": done, "cells_expected": expected,
              "command": command, "wall_seconds_this_invocation": round(time.perf_counter() - wall, 1),
              "seconds_all_cells": round(sum(json.loads(p.read_text()).get("seconds", 0)
                                             for p in (b.work / "cells").glob("*.json")), 1),
              "teacher": str(cfg.teacher), "teacher_metrics": teacher, "target_params": cfg.target,
              "finetune": {"steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "ema_decay": cfg.ema_decay,
                           "loss_reduction": "mean"},
              "sampling": {"num_samples": cfg.num_samples, "ddim_steps": cfg.sample_steps, "clip_x0": True},
              "heldout": {"images": cfg.heldout_images, "draws": cfg.heldout_draws},
              "additivity": {k: v for k, v in add.items() if k in ("sizes", "per_size", "calibration_size",
                                                                   "stability_spearman")}
              | {"stats": {k: v["stats"] for k, v in add["criteria"].items()}, "scores": add["scores"]},
              "feature_kd_terms_at_start": imbalance, "rows": table, "environment": environment()}
    (results_dir / "layer_pruning.json").write_text(json.dumps(result, indent=2) + "\n")
    (results_dir / "layer_pruning.md").write_text(markdown(result) + "\n")
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    f = lambda s: f"{s['mean']:.5f} ± {s['std']:.5f}"  # noqa: E731
    g = lambda s: f"{s['mean']:.4f} ± {s['std']:.4f}"  # noqa: E731
    lines = [("**PARTIAL RESULTS** " if r["partial"] else "") + f"({r['cells_done']} of {r['cells_expected']} "
             f"fine-tune cells)", "", f"`{r['command']}`", "",
             f"Teacher: held-out eps-MSE {r['teacher_metrics']['heldout_loss']:.5f}, {r['teacher_metrics']['params']:,} params. "
             f"Target: remove {r['target_params']:.0%} of the parameters. Mean ± std over seeds {r['rows'][0]['seeds'] if r['rows'] else '-'}"
             f" ({r['finetune']['steps']} fine-tune steps).", "",
             "| variant | params | MACs | eps-MSE pruned | SSIM pruned | eps-MSE fine-tuned | SSIM fine-tuned | n |",
             "|---|---|---|---|---|---|---|---|"]
    for e in r["rows"]:
        lines.append(f"| {e['variant']} | {e['params'] / 1e6:.3f}M | {e['macs_paper'] / 1e6:.1f}M | "
                     f"{f(e['pruned_heldout_loss'])} | {g(e['pruned_ssim_to_teacher'])} | "
                     f"{f(e['finetuned_heldout_loss'])} | {g(e['finetuned_ssim_to_teacher'])} | {e['finetuned_heldout_loss']['n']} |")
    lines += ["", "Additivity (measured L(S) against summed single-unit scores):", "",
              "| criterion | \\|S\\| | n | Pearson r | Spearman rho | slope |", "|---|---|---|---|---|---|"]
    for name, stats in r["additivity"]["stats"].items():
        for k, s in stats.items():
            v = lambda x, spec: "-" if x is None else format(x, spec)  # noqa: E731
            lines.append(f"| {name} | {k} | {s['n']} | {v(s['pearson'], '.3f')} | {v(s['spearman'], '.3f')} | "
                         f"{v(s['slope'], '.4g')} |")
    lines += ["", f"Output-loss ranking stability (Spearman with other calibration sets): "
              f"{json.dumps(r['additivity']['stability_spearman'])}"]
    if r["feature_kd_terms_at_start"]:
        lines += ["", "Feature-KD terms per stage of the freshly pruned output-loss model (one batch of 32):", "",
                  "| stage | MSE (feature) | normalised |", "|---|---|---|"]
        raw, norm = r["feature_kd_terms_at_start"]["feature"], r["feature_kd_terms_at_start"]["feature-normalized"]
        lines += [f"| {k} | {raw[k]:.4g} | {norm[k]:.4g} |" for k in raw]
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default=str(TEACHER_CHECKPOINT))
    p.add_argument("--target", type=float, default=0.3, help="fraction of the parameters to remove")
    p.add_argument("--steps", type=int, default=100, help="fine-tune steps of every variant")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--ema-decay", type=float, default=0.95, help="EMA of the fine-tune: a horizon of ~20 steps, "
                                                                 "short enough for a 100-step fine-tune")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--heldout-images", type=int, default=256)
    p.add_argument("--heldout-draws", type=int, default=2)
    p.add_argument("--calib-images", type=int, default=64)
    p.add_argument("--calib-size", type=int, default=64)
    p.add_argument("--taylor-batch", type=int, default=8)
    p.add_argument("--thr", type=float, default=0.05)
    p.add_argument("--subsets", type=int, default=20, help="random subsets per size for the additivity report")
    p.add_argument("--subset-sizes", type=int, nargs="+", default=[2, 4, 6, 8])
    p.add_argument("--stop-after", type=float, default=0, help="stop starting new fine-tunes after this many "
                                                               "seconds (0: never); the results are marked partial")
    p.add_argument("--variants", nargs="*", default=["plain", *DISTILL], choices=["plain", *DISTILL],
                   help="fine-tune variants to RUN in this invocation (none: only report); saved cells of the others "
                        "are still reported")
    p.add_argument("--threads", type=int, default=1, help="torch threads; 1 is several times faster than 2 on "
                                                           "a shared, oversubscribed 2-core machine")
    p.add_argument("--results", default=str(RESULTS), help="where the JSON, markdown and plot go")
    p.add_argument("--work", default="/tmp/layer_pruning_bench")
    main(p.parse_args())
