"""Data-parallel set-up, written once for train.py and evaluate.py.

``torchrun --nproc_per_node N script.py ...`` starts N processes with WORLD_SIZE, RANK and LOCAL_RANK in
the environment; a plain ``python script.py`` has none of them and runs as the single rank 0 without a
process group. Every collective below is a no-op in that case, so the scripts read the same either way:

    ctx = setup(cfg.device)                    # Distributed(rank, world, device)
    run_dir = ctx.broadcast(new_run_dir(...) if ctx.is_main else None)
    ctx.barrier()
    ctx.close()

The backend is gloo on CPU and nccl on CUDA, where each process takes the GPU ``cuda:LOCAL_RANK``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run: rank in [0, world), and the device it computes on."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        """True when a process group exists (world > 1)."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (any picklable object)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of a CPU tensor over ranks (a copy; ``x`` itself is left unchanged)."""
        x = x.clone()
        if self.enabled:
            dist.all_reduce(x)
            x /= self.world
        return x

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is true on at least one rank (so that every rank stops together)."""
        t = torch.tensor([1.0 if flag else 0.0])
        if self.enabled:
            dist.all_reduce(t)
        return bool(t.item() > 0)

    def check_same_weights(self, model: torch.nn.Module, step: int) -> None:
        """Raise unless every rank holds the same weights (a per-tensor checksum compared across ranks)."""
        if not self.enabled:
            return
        sums = torch.stack([p.detach().double().sum() for p in model.parameters()])
        gathered = [torch.empty_like(sums) for _ in range(self.world)]
        dist.all_gather(gathered, sums)
        worst = max((g - gathered[0]).abs().max().item() for g in gathered)
        if worst > 1e-6 * (1 + gathered[0].abs().max().item()):
            raise RuntimeError(f"data-parallel ranks diverged at step {step}: max checksum difference {worst:.3g}")
        if self.is_main:
            print(f"[distributed] step {step}: {self.world} ranks in sync (max checksum difference {worst:.1e})")

    def close(self) -> None:
        """Leave the process group (idempotent)."""
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def setup(device: str) -> Distributed:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); else the single rank 0.

    device: the requested device ("cpu", "cuda", "cuda:1"). Under torchrun on CUDA each rank computes on
    ``cuda:LOCAL_RANK`` instead, whatever index was asked for.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed(0, 1, device)
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    return Distributed(dist.get_rank(), dist.get_world_size(), device)


PARALLEL_STRATEGIES = ("ddp", "fsdp")


def data_parallel(module: torch.nn.Module, ctx: Distributed, *, strategy: str = "ddp",
                  units: list[torch.nn.Module] = ()) -> torch.nn.Module:
    """``module`` made data-parallel over the process group (returned unchanged for a single process).

    "ddp"   torch's DistributedDataParallel: every rank holds all weights; gradients are averaged in backward.
    "fsdp"  torch's FSDP2 (``torch.distributed.fsdp.fully_shard``, ZeRO-3 style): every parameter is split into
            ``world`` shards, one per rank; each of ``units`` (modules the forward calls, e.g. a U-Net's ResNets
            and transformers) is gathered just before it runs and freed after, and ``module`` itself becomes the
            root unit for the remaining parameters. Gradients are reduce-scattered (averaged), so each rank keeps
            its shard's gradient: ``p.grad`` is a DTensor, ``p.grad.full_tensor()`` the whole one. Use it when
            the weights, gradients and optimizer state of one student do not fit one GPU. ``module`` is changed
            in place (its class becomes an FSDP subclass); apply activation checkpointing before this.
    Both work on CPU with gloo (the tests run them with two processes) and on CUDA with nccl.
    """
    if strategy not in PARALLEL_STRATEGIES:
        raise ValueError(f"data-parallel strategy must be one of {PARALLEL_STRATEGIES}, got {strategy!r}")
    if not ctx.enabled:
        return module
    if strategy == "ddp":
        cuda = ctx.device.startswith("cuda")
        return torch.nn.parallel.DistributedDataParallel(module,
                                                         device_ids=[torch.device(ctx.device)] if cuda else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(torch.device(ctx.device).type, (ctx.world,))
    for unit in units:
        fully_shard(unit, mesh=mesh)
    fully_shard(module, mesh=mesh)
    return module
