"""A benchmark's resumable results: each named cell is computed once and kept as JSON.

benchmarks/reproduce.py and benchmarks/layer_pruning.py are long runs made of independent cells (one method at
one seed, an additivity report, ...). A cell's result is written to <directory>/<name>.json the moment it
finishes; a rerun of the script reads it back instead of recomputing, so a run stopped at any point loses at
most the cell in flight. Several processes may share one directory (reproduce.py's --shards): a file is
written under a name private to the writing process and renamed into place, so a reader never sees half a
file and two writers of the same cell leave one whole result.

A cell may keep the settings its numbers depend on (``get(..., settings=...)``: e.g. the teacher's sha256, the
fine-tune and the measurement); a saved cell made with other settings is then a one-line refusal, never reused
as if it had been made with these. Cells saved before a study recorded settings have none: ``legacy`` says
whether they are taken as made with the current ones (the study's preset, stated in its docs) or refused.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable


class CellStore:
    def __init__(self, directory: str | Path, tag: str):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.tag = tag  # prefix of the one-line log each finished cell prints

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def load(self, name: str) -> dict | None:
        """The saved result of cell `name`, or None when it has not finished yet."""
        path = self.path(name)
        return json.loads(path.read_text()) if path.exists() else None

    def get(self, name: str, fn: Callable[[], dict], run: bool = True, *, settings: dict | None = None,
            legacy: bool = False) -> dict | None:
        """fn()'s result, computed only when no saved one exists (and run is True; otherwise None).
        The result gains 'seconds', the wall time fn took, and ``settings`` (module docstring), against which
        a saved cell is checked first."""
        saved = self.load(name)
        if saved is not None and settings is not None:
            self.check_settings(name, saved, settings, legacy)
        if saved is not None or not run:
            return saved
        start = time.perf_counter()
        result = fn() if settings is None else {**fn(), "settings": settings}
        result["seconds"] = round(time.perf_counter() - start, 1)
        self.put(name, result)
        short = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in result.items()
                 if not isinstance(v, (dict, list))}
        print(f"[{self.tag}] {name}: {json.dumps(short)}", flush=True)
        return result


    def check_settings(self, name: str, saved: dict, settings: dict, legacy: bool) -> None:
        """SystemExit naming the cell and the settings that differ (parts of two levels: "finetune.lr")."""
        if "settings" not in saved:
            if legacy:
                return
            raise SystemExit(f"[{self.tag}] cell {self.path(name)} records no settings; use another --work, or "
                             "remove the cell")
        theirs = saved["settings"]
        differ = sorted(f"{part}.{k}" for part, values in settings.items() for k in values
                        if theirs.get(part, {}).get(k) != values[k])
        if differ:
            raise SystemExit(f"[{self.tag}] cell {self.path(name)} was made with other settings "
                             f"({', '.join(differ)}); use another --work, or remove the cell")

    def put(self, name: str, result: dict) -> None:
        """Write cell ``name`` whole (a private temporary renamed into place), replacing a saved one."""
        path = self.path(name)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(path)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (what sha256sum prints), or of a folder's files (their relative paths and bytes,
    in sorted order): the same weights under another name or in another place hash the same."""
    import hashlib

    path, h = Path(path), hashlib.sha256()
    if not path.is_dir():
        h.update(path.read_bytes())
        return h.hexdigest()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def run_jobs(study, jobs: list, cfg, tag: str) -> None:
    """Run this shard's share of ``jobs`` ((method name, args) pairs, ``study``'s methods): job i belongs to shard
    i % cfg.shards; none with --report-only; stop before a job once --stop-after seconds have passed (rerun
    to continue: every job is a resumable cell)."""
    wall = time.perf_counter()
    for i, (fn, args) in enumerate(jobs):
        if i % cfg.shards != cfg.shard or cfg.report_only:
            continue
        if cfg.stop_after and time.perf_counter() - wall > cfg.stop_after:
            print(f"[{tag}] --stop-after {cfg.stop_after} s reached; rerun to continue", flush=True)
            break
        print(f"[{tag}] job {i + 1}/{len(jobs)}: {fn}{args}", flush=True)
        getattr(study, fn)(*args)


def check_device(tag: str, device: str) -> None:
    """A study's --device, refused in one line before any work: not a device, no CUDA, or neither cpu nor cuda."""
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise SystemExit(f"{tag}: --device {device!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"{tag}: --device {device} but torch {torch.__version__} sees no CUDA device")
    if parsed.type not in ("cpu", "cuda"):
        raise SystemExit(f"{tag}: --device {device}: only cpu and cuda are supported")
