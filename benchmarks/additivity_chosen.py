"""Benchmark: additivity where it matters -- the layer sets the criteria choose, against the true optimum.

    python -m benchmarks.additivity_chosen                 # resumable; rerun after an interruption
    python -m benchmarks.additivity_chosen --report-only   # rebuild the files from the saved cells

LAPTOP-Diff (Zhang et al. 2024, arXiv 2404.11098, Sec. 3) chooses the units to remove by a knapsack on the
single-unit output losses, which is exact when L(S) = sum_{i in S} L({i}). Random subsets of 2-6 units
(pruning/layers/additivity.py) say little about the sets that matter: those that reach the budget. Here,
on the teacher and at the parameter count of the ratio-0.3 channel model (as benchmarks/reproduce.py):

1. every set each criterion chooses (output-loss, taylor, random, handcrafted; per seed, built exactly as
   reproduce.py builds them) is measured: L(S) on one fixed evaluation calibration set against the
   prediction sum_{i in S} L({i}) on the same set;
2. every minimal cover of the budget (pruning/layers/exhaustive.py; 1,432 on the tiny teacher) is measured,
   which gives the true best L(S) and each chosen set's rank and excess over it;
3. the optimum and the chosen sets are measured again on a second, independent calibration set (is the
   optimum an artefact of the 64 triples?), and units are added to the optimum one at a time (is a
   non-minimal set ever better?);
4. Pearson r of L(S) against the summed single scores, per subset size, for random subsets of 2, 4, 6
   units and for the budget-reaching covers, with and without the subsets that hold the dominant unit.

Every step is a cell in --work (benchmarks/cells.py); the covers are measured --chunk at a time. Writes
benchmarks/results/additivity_chosen.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.additivity_report import write_report
from benchmarks.cells import CellStore
from common.defaults import TEACHER_CHECKPOINT
from data.procedural import ProceduralShapes
from diffusion.schedule import Schedule
from models.loading import load
from pruning.layers import LayerPruning, find_units, make_calibration, output_losses, prune_layers
from pruning.layers import exhaustive
from pruning.layers.additivity import random_subsets

RESULTS = Path(__file__).resolve().parent / "results"
CRITERIA = ("output-loss", "taylor", "random", "handcrafted")


class Search:
    def __init__(self, cfg: argparse.Namespace):
        self.cfg = cfg
        self.cells = CellStore(Path(cfg.work) / "cells", tag="additivity")
        self.teacher = load(cfg.teacher)
        self.units = find_units(self.teacher)
        self.paths = [u.path for u in self.units]
        self.costs = [u.params for u in self.units]
        total = sum(p.numel() for p in self.teacher.parameters())
        self.target = int(-(-cfg.target_params * total // 1))  # ceil, as prune_layers
        self._covers = None
        self.train_set = ProceduralShapes(image_size=self.teacher.config.image_size, split="train")
        self.calib = {s: make_calibration(self.images(s, cfg.calib_size), Schedule(), size=cfg.calib_size, seed=s)
                      for s in (cfg.eval_seed, cfg.check_seed)}

    def images(self, seed: int, count: int) -> torch.Tensor:
        """The training images benchmarks/reproduce.py draws for ``seed`` (the same generator and order)."""
        g = torch.Generator().manual_seed(10_000 + seed)
        return torch.stack([self.train_set[int(i)] for i in torch.randperm(len(self.train_set), generator=g)[:count]])

    def losses(self, subsets, calib_seed: int) -> list[float]:
        sets = [frozenset(s) for s in subsets]
        return output_losses(self.teacher, self.calib[calib_seed], sets, self.cfg.batch_size).tolist()

    # ------------------------------------------------------------------ cells
    def chosen_cell(self, criterion: str, seed: int) -> dict:
        """The set ``criterion`` removes at ``seed``, built as reproduce.py's layer rows build it."""
        c = self.cfg

        def run() -> dict:
            count = c.grad_batch if criterion == "taylor" else c.calib_size
            spec = LayerPruning.applicable(criterion=criterion, target_params=c.target_params, calib_size=c.calib_size,
                                           thr=0.05, batch_size=c.grad_batch, micro_batch=64, seed=seed)
            _, report = prune_layers(self.teacher, spec, self.images(seed, count))
            return {"criterion": criterion, "seed": seed, "removed": sorted(report.removed),
                    "solver": report.solver, "scores": report.scores}
        return self.cells.get(f"chosen-{criterion}-s{seed}", run)

    def singles_cell(self) -> dict:
        return self.cells.get("singles", lambda: {str(s): dict(zip(self.paths, self.losses([[p] for p in self.paths], s)))
                                                  for s in self.calib})

    def random_subsets_cell(self) -> dict:
        def run() -> dict:
            subsets = [sorted(s) for s in random_subsets(self.paths, (2, 4, 6), 12, seed=0)]
            return {"subsets": subsets, "measured": self.losses(subsets, self.cfg.eval_seed)}
        return self.cells.get("random-subsets", run)

    def set_cell(self, removed: list[str]) -> dict:
        """L(S) of one set on both calibration sets (a chosen set need not be a minimal cover)."""
        key = "-".join(str(self.paths.index(p)) for p in sorted(removed, key=self.paths.index))
        return self.cells.get(f"set-{key}", lambda: {"removed": sorted(removed), **{
            f"calib{s}": self.losses([removed], s)[0] for s in self.calib}})

    def covers(self) -> list[tuple[int, ...]]:
        if self._covers is None:
            self._covers = exhaustive.minimal_covers(self.costs, self.target)
        return self._covers

    def cover_chunk_cell(self, index: int) -> dict:
        covers = self.covers()[index * self.cfg.chunk:(index + 1) * self.cfg.chunk]
        subsets = [[self.paths[i] for i in s] for s in covers]
        return self.cells.get(f"covers-{index:03d}", lambda: {"first": index * self.cfg.chunk,
                                                              "measured": self.losses(subsets, self.cfg.eval_seed)})

    def check_cell(self, measured: np.ndarray) -> dict:
        """The best covers on the second calibration set; the optimum plus one unit on the first."""
        def run() -> dict:
            covers = self.covers()
            order = np.argsort(measured)[:self.cfg.top]
            top = [sorted(self.paths[i] for i in covers[j]) for j in order]
            plus = [sorted(top[0] + [p]) for p in self.paths if p not in top[0]]
            return {"top": top, "top_eval": measured[order].tolist(), "top_check": self.losses(top, self.cfg.check_seed),
                    "optimum_plus_one": plus, "optimum_plus_one_eval": self.losses(plus, self.cfg.eval_seed)}
        return self.cells.get(f"check-top{self.cfg.top}", run)

    # ------------------------------------------------------------------ the run
    def run(self) -> dict:
        c = self.cfg
        n_chunks = -(-len(self.covers()) // c.chunk)
        done = {}
        self.singles_cell()
        self.random_subsets_cell()
        # Cheap criteria first, taylor (a gradient pass per seed) at its first seed, then the covers, then the
        # remaining taylor seeds: an interrupted run has the optimum before the repeats.
        first = [(k, s) for k in CRITERIA for s in c.seeds if k != "taylor" and (k != "handcrafted" or s == c.seeds[0])]
        jobs = [*first, ("taylor", c.seeds[0]), *[("covers", i) for i in range(n_chunks)],
                *[("taylor", s) for s in c.seeds[1:]]]
        chosen, sets = [], {}
        for kind, arg in jobs:
            if c.stop_after and time.perf_counter() - c.started > c.stop_after:
                print(f"[additivity] --stop-after {c.stop_after} s reached; rerun to continue", flush=True)
                break
            if kind == "covers":
                done[arg] = self.cover_chunk_cell(arg)
                continue
            chosen.append(self.chosen_cell(kind, arg))
            sets.setdefault(tuple(chosen[-1]["removed"]), self.set_cell(chosen[-1]["removed"]))
        return {"chosen": chosen, "sets": list(sets.values()), "chunks": done, "n_chunks": n_chunks}

    def saved(self) -> dict:
        """Whatever cells exist, without computing anything."""
        c = self.cfg
        n_chunks = -(-len(self.covers()) // c.chunk)
        chosen = [x for k in CRITERIA for s in c.seeds if (x := self.cells.load(f"chosen-{k}-s{s}")) is not None]
        chunks = {i: x for i in range(n_chunks) if (x := self.cells.load(f"covers-{i:03d}")) is not None}
        sets = [json.loads(p.read_text()) for p in sorted(self.cells.directory.glob("set-*.json"))]
        return {"chosen": chosen, "sets": sets, "chunks": chunks, "n_chunks": n_chunks}


def main(cfg: argparse.Namespace) -> dict:
    torch.set_num_threads(cfg.threads)
    cfg.started = time.perf_counter()
    search = Search(cfg)
    state = search.saved() if cfg.report_only else search.run()
    measured = None
    if len(state["chunks"]) == state["n_chunks"]:
        measured = np.concatenate([np.asarray(state["chunks"][i]["measured"]) for i in range(state["n_chunks"])])
    check = search.cells.load(f"check-top{cfg.top}")
    if measured is not None and check is None and not cfg.report_only:
        check = search.check_cell(measured)
    return write_report(cfg, search, state, measured, check)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default=str(TEACHER_CHECKPOINT))
    p.add_argument("--target-params", type=float, default=None,
                   help="fraction of parameters to remove [default: that of the ratio-0.3 channel model, read "
                        "from benchmarks/results/reproduce.json]")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    p.add_argument("--calib-size", type=int, default=64, help="calibration triples (reproduce.py's) [64]")
    p.add_argument("--grad-batch", type=int, default=8, help="taylor's gradient batch in the committed runs [8]")
    p.add_argument("--eval-seed", type=int, default=0, help="the calibration set L(S) is measured on [0]")
    p.add_argument("--check-seed", type=int, default=1, help="the independent second calibration set [1]")
    p.add_argument("--chunk", type=int, default=64, help="covers measured per cell [64]")
    p.add_argument("--top", type=int, default=20, help="best covers re-measured on the second calibration [20]")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass [256]")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--stop-after", type=float, default=0, help="start no new cover chunk after N seconds (0: never)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--work", default="runs/additivity_chosen")
    p.add_argument("--results", default=str(RESULTS))
    return p


def parse(argv=None) -> argparse.Namespace:
    cfg = build_parser().parse_args(argv)
    if not Path(cfg.teacher).is_file():
        raise SystemExit(f"additivity_chosen: --teacher {cfg.teacher} does not exist")
    if cfg.target_params is None:
        rows = json.loads((RESULTS / "reproduce.json").read_text())["rows"]
        teacher = json.loads((RESULTS / "reproduce.json").read_text())["teacher_metrics"]["params"]
        cfg.target_params = 1 - rows["random"]["params"] / teacher
    return cfg


if __name__ == "__main__":
    main(parse())
