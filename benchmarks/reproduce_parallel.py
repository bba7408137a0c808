"""Run one study of benchmarks/reproduce.py (or reproduce_t2i.py) as many shard processes at once, in a time box.

    python -m benchmarks.reproduce_parallel --processes 12 --deadline 540 --stop-after 360 \
        --restore benchmarks/results/converged/cells --pack OUT/cells.tar.gz \
        -- --study converged --teacher checkpoints/tiny_shapes_16400.pt --device cuda

``--script reproduce_t2i`` runs the text-to-image study instead (the same flags and cells). Everything after
``--`` goes to the study script unchanged; this script adds ``--shards P --shard i --threads 1
--stop-after S --docs ''`` to each process. It is made for a borrowed machine with a time limit (a GPU on which
one small model leaves most of the card idle, so a dozen processes share it; or a many-core CPU):

1. ``--restore DIR``: copy the cells finished elsewhere (JSON files, docs/RESULTS.md) into the study's
   ``--work``/cells first, so nothing finished is computed again; a cell already there is kept as it is.
2. Start the P shard processes (each cell belongs to exactly one of them: reproduce.py's ``--shards``), each
   logging to ``--work``/parallel/shard_<i>.log. ``--stop-after S``: none starts a new cell after S seconds.
3. At ``--deadline`` seconds, any process still running is stopped (its cell in flight is lost; finished
   cells never are: benchmarks/cells.py writes each one whole when it ends). Choose S so that a cell started
   at S ends before the deadline.
4. ``--pack FILE``: every finished cell of ``--work``/cells in one .tar.gz (the one file a borrowed machine
   needs to send back), then a summary line. Tables and verdicts: ``reproduce.py --report-only`` (or
   ``reproduce_t2i.py --report-only``) where the cells are unpacked into that study's ``--work``/cells.

Exit status 0 when every process ended by itself, 1 when the deadline stopped some.
"""
from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

SCRIPTS = ("reproduce", "reproduce_t2i")  # benchmarks/<name>.py: both take --shards/--shard/--stop-after/--work


def restore(source: Path, cells: Path) -> int:
    """Copy source/*.json into cells without replacing any; returns how many were copied."""
    if not source.is_dir():
        raise SystemExit(f"reproduce_parallel: --restore {source} is not a folder")
    cells.mkdir(parents=True, exist_ok=True)
    copied = 0
    for f in sorted(source.glob("*.json")):
        if not (cells / f.name).exists():
            shutil.copy2(f, cells / f.name)
            copied += 1
    return copied


def launch(args: argparse.Namespace, work: Path) -> list[tuple[subprocess.Popen, Path]]:
    logs = work / "parallel"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = []
    for i in range(args.processes):
        cmd = [sys.executable, "-m", f"benchmarks.{args.script}", *args.reproduce, "--shards", str(args.processes),
               "--shard", str(i), "--threads", "1", "--stop-after", str(args.stop_after), "--docs", ""]
        log = logs / f"shard_{i}.log"
        with open(log, "w") as out:
            procs.append((subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env), log))
    return procs


def wait(procs: list[tuple[subprocess.Popen, Path]], deadline: float) -> list[int]:
    """Wait for every process until ``deadline`` (a time.monotonic() value); stop the rest. Returns the shards
    that were stopped."""
    while time.monotonic() < deadline and any(p.poll() is None for p, _ in procs):
        time.sleep(2)
    stopped = [i for i, (p, _) in enumerate(procs) if p.poll() is None]
    for i in stopped:
        procs[i][0].terminate()
    for i in stopped:
        try:
            procs[i][0].wait(timeout=20)
        except subprocess.TimeoutExpired:
            procs[i][0].kill()
    return stopped


def pack(cells: Path, target: Path) -> int:
    files = sorted(cells.glob("*.json"))
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w:gz") as tar:
        for f in files:
            tar.add(f, arcname=f"cells/{f.name}")
    return len(files)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    start = time.monotonic()
    script = importlib.import_module(f"benchmarks.{args.script}")
    study = script.parse_args(args.reproduce)
    script.check_args(study)  # the study's one-line refusals (teacher, device, ...) once, before any process starts
    work = Path(study.work)
    cells = work / "cells"
    before = len(list(cells.glob("*.json"))) if cells.is_dir() else 0
    copied = restore(Path(args.restore), cells) if args.restore else 0
    procs = launch(args, work)
    stopped = wait(procs, start + args.deadline)
    failed = [i for i, (p, _) in enumerate(procs) if i not in stopped and p.returncode != 0]
    after = len(list(cells.glob("*.json"))) if cells.is_dir() else 0
    packed = pack(cells, Path(args.pack)) if args.pack else None
    print(f"[parallel] {args.processes} shards, {time.monotonic() - start:.0f} s: {copied} cells restored, "
          f"{after - before - copied} finished here, {after} in {cells}"
          + (f"; packed into {args.pack}" if packed is not None else "")
          + (f"; stopped at the deadline: shards {stopped}" if stopped else "")
          + (f"; FAILED: shards {failed} (see {work / 'parallel'})" if failed else ""), flush=True)
    for i in failed:
        print(f"--- shard {i} ---\n" + procs[i][1].read_text()[-2000:], flush=True)
    return 1 if stopped or failed else 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--script", choices=SCRIPTS, default="reproduce", help="which study [reproduce]")
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="shard processes [CPU count]")
    p.add_argument("--deadline", type=float, required=True, help="seconds after which running shards are stopped")
    p.add_argument("--stop-after", type=float, required=True, help="seconds after which no shard starts a cell")
    p.add_argument("--restore", help="a folder of finished cells to copy in first")
    p.add_argument("--pack", help="a .tar.gz to write every finished cell into at the end")
    args = p.parse_args(ours)
    if args.processes < 1:
        p.error(f"--processes must be >= 1, got {args.processes}")
    if not 0 < args.stop_after < args.deadline:
        p.error(f"need 0 < --stop-after < --deadline, got {args.stop_after} and {args.deadline}")
    if not rest:  # no accidental default study on every core
        p.error("give the study's own flags after --, e.g. -- --study converged --teacher checkpoints/tiny_shapes_16400.pt")
    taken = {"--shards", "--shard", "--threads", "--stop-after", "--docs"} & set(rest)
    if taken:
        p.error(f"{sorted(taken)} are set by this script for each shard; leave them out after --")
    args.reproduce = rest
    return args


if __name__ == "__main__":
    sys.exit(main())
