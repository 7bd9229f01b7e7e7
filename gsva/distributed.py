"""Process-group helpers shared by training (DeepSpeed data parallelism) and evaluation (image sharding).

Rank and world size come from the launcher's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``: set by
``torchrun`` and the ``deepspeed`` launcher). On a CPU the process group uses gloo; with CUDA, NCCL with one GPU per
process.
"""

from __future__ import annotations

import os

import torch

__all__ = ["rank_and_world", "init_process_group", "all_finite", "gather_objects", "barrier"]


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment; (0, 1) without a launcher."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def init_process_group() -> tuple[int, int]:
    """Join the launcher's process group (no-op for a single process); returns (rank, world size).
    With CUDA each process takes the GPU ``LOCAL_RANK`` first (NCCL collectives need each rank on its own device)."""
    rank, world = rank_and_world()
    if world == 1:
        return rank, world
    import torch.distributed as dist

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def all_finite(loss: torch.Tensor, world: int) -> bool:
    """Whether ``loss`` (any shape) is finite on every process: one MIN all-reduce when ``world`` > 1, so that all
    ranks skip or keep a micro-batch together and count bad steps alike."""
    finite = torch.isfinite(loss.detach()).all().to(torch.float32).reshape(1)
    if world > 1:
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    return bool(finite.item())


def gather_objects(obj, world: int) -> list:
    """Every process's ``obj`` (picklable), in rank order, on every process (``[obj]`` for a single process)."""
    if world == 1:
        return [obj]
    out: list = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def barrier(world: int) -> None:
    """Wait for every process (no-op for a single process)."""
    if world > 1:
        torch.distributed.barrier()
