"""Will a request fit this machine? Checked before the work, in one line (before this check a 20000-image
sample grid died out of memory with a traceback; 100 million evaluation samples ran silently).

    check_fits("--num-samples 20000", memory=bytes_held, disk=bytes_written, folder=out)

An estimate above what is there is a ``UserError`` naming the flag; one above ``NOTE_BYTES`` is announced.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from common.errors import UserError

MEMORY_FRACTION = 0.8  # leave the rest to the model, the interpreter and everyone else on the machine
NOTE_BYTES = 2 ** 30   # announce requests above 1 GiB


def available_memory() -> int | None:
    """Bytes of physical memory available now, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def total_memory(device: str = "cpu") -> int | None:
    """Bytes of memory the device has in all, used or not (an empty machine's): a CUDA device's own memory, else
    the physical memory (MemTotal of /proc/meminfo); None where the platform does not say."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def free_disk(folder: str | os.PathLike) -> int:
    """Free bytes on the file system that holds ``folder`` (or would: its nearest existing ancestor)."""
    probe = Path(folder).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def gib(n: float) -> str:
    return f"{n / 2 ** 30:.1f} GiB"


def check_fits(what: str, *, memory: int = 0, disk: int = 0, folder: str | os.PathLike | None = None,
               prefix: str = "") -> None:
    """Raise a one-line UserError naming ``what`` when ``memory`` bytes exceed MEMORY_FRACTION of the available
    memory or ``disk`` bytes exceed the free space under ``folder``; print a note above NOTE_BYTES."""
    if disk and folder is not None and disk > (free := free_disk(folder)):
        raise UserError(f"{what}: writes up to {gib(disk)}, {folder} has {gib(free)} free")
    available = available_memory()
    if memory and available is not None and memory > MEMORY_FRACTION * available:
        raise UserError(f"{what}: holds {gib(memory)} in memory, {gib(available)} are available; ask for less")
    if max(memory, disk) > NOTE_BYTES:
        print(f"{prefix}note: {what} writes up to {gib(disk)} and holds {gib(memory)} in memory")
