"""Numbered run folders that are never overwritten (runs/<kind>/00003-<desc>/), config files and seeding.

Also the two writers every checkpoint and result share: ``environment()`` (versions) and ``atomic_torch_save``.

A run folder is identified by what the run wrote into it, never by where a file happens to sit:
``run.json`` holds a random run id that every checkpoint of the run repeats (``mark_run`` /
``read_run_marker``). ``RunLock`` keeps a second process out of a folder that one is writing, and
``remove_stale_tmp`` deletes what an interrupted atomic write left behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch


def new_run_dir(root: str | os.PathLike, desc: str) -> Path:
    """Create root/NNNNN-desc with NNNNN one more than the largest existing number."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in root.iterdir() if (m := re.match(r"^(\d+)-", p.name))]
    run = root / f"{max(numbers, default=0) + 1:05d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', desc)}"
    run.mkdir()  # fails rather than overwrite, should two processes race
    return run


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """The one atomic writer of every output file: yields a temporary path in ``path``'s folder (named
    ``.<name>.<random>.tmp``, so ``remove_stale_tmp`` finds what a killed process left); when the block ends
    the file is fsynced and renamed over ``path``, on any error it is removed. A reader (or a kill -9) sees
    the old file or the whole new one, never a 0-byte or half-written one. Writers that pick a format from
    the suffix need it named: ``img.save(tmp, format="PNG")``, ``fig.savefig(tmp, format="png")``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would make every output private to its writer
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (``atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def replace_between(path: str | os.PathLike, begin: str, end: str, inner: str, *, append: bool = False) -> bool:
    """Replace the text between the markers ``begin`` and ``end`` of the file ``path`` by ``inner`` (everything
    else stays), written atomically. Without both markers: with ``append`` add ``begin + inner + end`` at the end
    (creating the file), else leave the file as it is. True when the file was written."""
    path = Path(path)
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + begin + inner + end + rest.split(end, 1)[1]
    elif append:
        text = (text.rstrip() + "\n\n" if text else "") + begin + inner + end + "\n"
    else:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, text)
    return True


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (``atomic_path``)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; ask torch for deterministic kernels where it has them."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


# ----------------------------------------------------------------------------------------------- run identity
RUN_MARKER = "run.json"  # written by the run into its own folder; identifies it (never path arithmetic)


def mark_run(run_dir: str | os.PathLike, kind: str) -> str:
    """Write ``run_dir/run.json`` with a fresh run id; checkpoints of the run carry the same id."""
    run_id = uuid.uuid4().hex
    write_json(Path(run_dir) / RUN_MARKER, {"kind": kind, "run_id": run_id})
    return run_id


def read_run_marker(run_dir: str | os.PathLike) -> dict | None:
    """The marker of a run folder, or None where the folder has none (or an unreadable one)."""
    path = Path(run_dir) / RUN_MARKER
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and "run_id" in marker else None


class RunLock:
    """An exclusive lock on a run folder, held while a process writes into it.

    ``flock`` on ``run_dir/.lock``: the kernel releases it when the process ends, however it ends (kill -9
    included), so a stale lock never blocks a resume, and a second live process is refused at once.
    """

    def __init__(self, run_dir: str | os.PathLike, what: str):
        self.path, self.what, self._fd = Path(run_dir) / ".lock", what, None

    def acquire(self) -> "RunLock":
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLocked(f"{self.path.parent} is in use by another process (pid {holder}) {self.what}; "
                            "wait for it to finish or stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class RunLocked(OSError):
    """Another live process holds the run folder's lock."""


def clean_interrupted_runs(root: str | os.PathLike) -> list[Path]:
    """Delete the temporaries that killed writers left in the run folders under ``root`` (each folder only
    while no live process holds its ``RunLock``). Returns the files removed."""
    root, removed = Path(root), []
    if not root.is_dir():
        return removed
    for run in sorted(p for p in root.iterdir() if p.is_dir() and any(".tmp" in q.name for q in p.iterdir())):
        had_lock = (run / ".lock").exists()
        try:
            with RunLock(run, "cleaning it") as lock:
                removed += remove_stale_tmp(run)
                if not had_lock:  # leave the folder as it was, less the temporaries
                    lock.path.unlink()
        except (RunLocked, OSError):  # in use, or not ours to write: leave it
            continue
    return removed


def remove_stale_tmp(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``*.tmp*`` files an interrupted atomic write left in ``folder`` (call with the lock held)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.is_file() and ".tmp" in p.name]
    for p in stale:
        p.unlink()
    return stale


def environment() -> dict[str, str]:
    """Versions saved next to every checkpoint and result, for reproducibility."""
    return {"torch": str(torch.__version__), "numpy": str(np.__version__), "python": platform.python_version()}


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temp file in the target folder, fsync, then rename over ``path`` (``atomic_path``)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


@contextlib.contextmanager
def build_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` while one process builds the cache file ``path``: concurrent processes (a
    study's shards) wait and then read it instead of each building it. Blocking; the kernel drops the lock when
    the holder ends, however it ends, so a killed builder never blocks the next. The lock file lives in the
    system's temporary folder, named by ``path``'s absolute location, so nothing is created beside ``path``
    until the build writes it (a failed first build leaves the caller's folders as they were)."""
    import fcntl
    import hashlib

    where = Path(tempfile.gettempdir()) / "diffprune-locks"
    where.mkdir(exist_ok=True)
    name = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:32]
    with open(where / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
