"""The gradient pass's memory (pruning/memory.py): the estimate against a hand count, prune.py's refusal before any
weight is read when the device's total memory cannot hold it, and an out-of-memory error inside the pass turned
into one line (a random SDXL diff-pruning on 24 GB died in the first backward with a raw allocator traceback)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from common.cli import UserError
from diffusion.schedule import Schedule
from pruning import memory
from pruning.gradients import accumulate_gradients


def test_the_estimate_is_weight_gradient_and_snapshot_of_every_unet_parameter(tmp_path):
    """Hand count on the tiny pipeline: 4 B x (W + G) per U-Net parameter, a third copy (the per-t snapshot) when
    the micro-batch splits the batch, plus the frozen parts' 4 B per element; the counts come from the configs."""
    from models.pipelines import load_latent
    from tiny_pipeline import write_tiny_pipeline

    folder = write_tiny_pipeline(tmp_path / "pipe")
    counts = memory.folder_parameters(folder)
    pipe = load_latent(folder)
    by_hand = {k: sum(t.numel() for t in (*m.parameters(), *m.buffers())) for k, m in pipe.modules().items()}
    assert counts == by_hand
    P, F = by_hand["unet"], sum(n for k, n in by_hand.items() if k != "unet")
    assert memory.gradient_pass_bytes(P, frozen_params=F, micro_batch=64, batch_size=64) == 4 * (2 * P + F)
    assert memory.gradient_pass_bytes(P, frozen_params=F, micro_batch=8, batch_size=64) == 4 * (3 * P + F)
    assert memory.folder_parameters(folder / "unet") is None  # not a pipeline folder


def test_a_gradient_method_that_cannot_fit_the_total_memory_is_refused_before_loading(tmp_path, monkeypatch):
    from models import pipelines
    from tiny_pipeline import write_tiny_pipeline

    import prune

    folder = write_tiny_pipeline(tmp_path / "pipe")
    monkeypatch.setattr(memory, "total_memory", lambda device: 10_000)
    monkeypatch.setattr(pipelines, "load_latent", lambda *a, **k: pytest.fail("weights were read"))
    with pytest.raises(UserError, match=r"--model .*pipe: the gradient pass of method 'diff-pruning' needs at least "
                                        r".* GiB .* more than the 0.0 GiB that device cpu has in all; use a GPU with "
                                        r"more memory \(--device cuda\)"):
        prune.main(prune.parse_args(["--model", str(folder), "--out", str(tmp_path / "runs"), "--method",
                                     "diff-pruning", "--ratio", "0.3"]))
    # The data-free methods hold no gradient: the same machine is not refused.
    assert memory.gradient_copies(micro_batch=4, batch_size=4) == 2


class _Raises(nn.Module):
    """eps_theta that fails in its forward with ``error`` (a stand-in for the allocator)."""

    def __init__(self, error: Exception):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.error = error

    def forward(self, x, t):
        raise self.error


CPU_OOM = RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you "
                       "tried to allocate 10485760000 bytes. Error code 12 (Cannot allocate memory)")


@pytest.mark.parametrize("micro_batch, where", [(4, r"timesteps t=0\.\.1, 4 samples in one pass"),
                                                (1, r"timestep t=0, samples 0\.\.0 of the batch")])
def test_out_of_memory_in_the_pass_is_one_line_naming_the_timestep(micro_batch, where):
    x0 = torch.zeros(2, 1, 4, 4)
    with pytest.raises(UserError, match=rf"out of memory in the gradient pass at {where} \(--micro-batch \d+, "
                                        r"--batch-size 2\): give a smaller --micro-batch .* smaller --batch-size") as e:
        accumulate_gradients(_Raises(CPU_OOM), Schedule(), x0, thr=0.0, micro_batch=micro_batch)
    assert "\n" not in str(e.value)


def test_other_errors_in_the_pass_are_not_translated():
    with pytest.raises(RuntimeError, match="shape mismatch") as e:
        accumulate_gradients(_Raises(RuntimeError("shape mismatch")), Schedule(), torch.zeros(2, 1, 4, 4), thr=0.0,
                             micro_batch=2)
    assert not isinstance(e.value, UserError)
    assert memory.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory")) and memory.is_out_of_memory(CPU_OOM)
