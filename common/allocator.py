"""Keep freed activation memory inside the process (glibc's malloc), so a U-Net pass does not page-fault it in
again at every step.

Why: glibc serves large requests (above its mmap threshold, at most 32 MiB) with a fresh ``mmap`` and returns
them to the OS when freed; smaller ones come from the heap, whose top is handed back (trimmed) once more than
the trim threshold is free. A forward + backward of the embedded teacher at 64 images allocates and frees
activations of 4 to 17 MiB hundreds of times per step, so every step touches fresh pages: the quiet
``python prune.py`` run recorded in docs/PERFORMANCE.md took 25.6 million minor page faults and 63 s of
system time. With the two thresholds raised, the freed blocks stay in the heap and are reused.

Measured on this repository's 2-core machine (docs/PERFORMANCE.md, "The gradient pass"): the forward +
backward of the gradient pass got about 10% faster. PyTorch's own CPU tuning guide reaches the same end by
preloading jemalloc or tcmalloc; this needs no extra library.

What it changes besides speed: buffer addresses, and some oneDNN/MKL kernels choose their blocking by the
alignment of their buffers, so results can differ in the last float bits from a run without it (as between
two thread counts); a run is still reproducible with the same setting. The cost is memory: the heap keeps
its peak size until the process ends (a job's peak RSS, not more). The scripts call it in their
``__main__`` block only, so library users and the test suite keep the C library's defaults.
Nothing changes where the C library is not glibc (macOS, musl, Windows): ``retain_freed_memory`` returns
False there and the scripts run as before. ``DIFFPRUNE_MALLOC=default`` in the environment turns it off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt parameter numbers from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 2 ** 20  # glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 2 ** 31 - 1       # the largest int mallopt takes: in effect, never trim the heap top

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); True when they were set.

    The scripts' ``__main__`` blocks call it; it changes where later allocations come from (see the module
    docstring for the last-bit effect on some kernels)."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if os.environ.get("DIFFPRUNE_MALLOC", "").lower() == "default":
        return False
    libc = _glibc()
    if libc is None:
        return False
    # mallopt returns 1 on success, 0 when glibc refuses the value
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                          TRIM_THRESHOLD))


def _glibc():
    """The process's C library when it is glibc, else None (``gnu_get_libc_version`` exists only in glibc)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 - the attribute lookup is the glibc test
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def applied() -> bool:
    """Whether ``retain_freed_memory`` has set the thresholds in this process (for a run's record)."""
    return bool(_applied)
