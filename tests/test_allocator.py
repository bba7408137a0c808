"""common/allocator.py: glibc's malloc told to keep freed activation memory (the scripts' default)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from common import allocator


def test_the_thresholds_are_set_on_glibc_and_the_environment_turns_it_off(monkeypatch):
    if allocator._glibc() is None:
        pytest.skip("not glibc: retain_freed_memory is a no-op by design")
    monkeypatch.delenv("DIFFPRUNE_MALLOC", raising=False)
    assert allocator._apply() is True
    monkeypatch.setenv("DIFFPRUNE_MALLOC", "default")
    assert allocator._apply() is False


def test_a_process_that_applies_it_computes_the_same_to_float_rounding():
    """retain_freed_memory() in a fresh process: the same matmul chain as without it, up to the last bits (MKL
    picks its blocking by buffer alignment); DIFFPRUNE_MALLOC=default leaves the defaults."""
    code = ("import torch\nfrom common import allocator\n"
            "allocator.retain_freed_memory(); allocator.retain_freed_memory()\n"
            "def main(n):\n"
            "    g = torch.Generator().manual_seed(0)\n"
            "    a = torch.randn(64, 1024, generator=g)\n"
            "    for _ in range(3):\n"
            "        a = torch.tanh(a @ torch.randn(1024, 1024, generator=g) / 32)\n"
            "    print(float(a.abs().sum()), allocator._applied)\n"
            "main(1)\n")
    outputs = []
    for env in ({}, {"DIFFPRUNE_MALLOC": "default"}):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**__import__("os").environ, **env})
        outputs.append(done.stdout.split())
    (value_on, applied_on), (value_off, applied_off) = outputs
    # The sum of |a|, not of a: the signed sum of 65,536 tanh values cancels to about 1/800 of their
    # magnitude, which turns float32 reordering (MKL's blocking, thread split) into 1e-4 relative noise.
    assert abs(float(value_on) - float(value_off)) <= 1e-4 * abs(float(value_off))
    assert applied_off == "False"
    assert applied_on == ("True" if allocator._glibc() is not None else "False")
