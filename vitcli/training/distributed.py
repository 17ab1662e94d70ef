"""Many processes, one run: DistributedDataParallel set-up, data sharding, metric reduction.

`torchrun --nproc_per_node N -m vitcli train ...` starts N copies of the command with RANK,
WORLD_SIZE and LOCAL_RANK in the environment; `init_distributed` turns those into a process
group (NCCL between GPUs, gloo on CPU). Without them everything here is a no-op, so the same
training code serves one process and many.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from vitcli.devices import resolve_device
from vitcli.errors import UsageError, VitError

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: its rank among `world_size` and the device it drives."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")  # noqa: RUF009 - immutable, safe to share

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and reports progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistEnv:
    """A DistEnv from torchrun's environment, starting the process group if needed.

    Each process drives the GPU of its LOCAL_RANK (one GPU per process, torchrun's
    convention); on CPU all processes share the cores, gloo carries the gradients.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device)
    if world_size <= 1:
        return DistEnv(device=resolved)
    if resolved.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} "
                             "GPUs here; use --nproc_per_node ≤ the number of GPUs")
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
    elif resolved.type == "mps":
        raise UsageError("multi-process training on Apple MPS is not supported; use --device cpu")
    if not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=resolved if backend == "nccl"
                                else None)
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, device=resolved)


def shutdown_distributed(env: DistEnv, wait_for_all: bool = False) -> None:
    """Leave the process group (so torchrun sees a clean exit).

    After a run that every rank finished, a barrier first: rank 0 still writes its files
    while the others are done, and a gloo rank that tears its group down under a peer can
    abort at exit ("terminate called without an active exception"). After an error there
    is no barrier, since the failed rank would never reach it.
    """
    if env.distributed and dist.is_initialized():
        if wait_for_all:
            dist.barrier()
        dist.destroy_process_group()


def shard(batch: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """This rank's share of one global batch of indices: every world_size-th, from rank.

    The same interleaving as DistributedSampler. Every rank draws the same seeded permutation
    and cuts the same global batches, so the union of the shards is exactly the batch a single
    process would train on, and DDP's gradient average equals that process's gradient.
    """
    return batch[env.rank::env.world_size]


def process_batch(batch_size: int, images: int, env: DistEnv) -> int:
    """The images one process trains on in a step: the global batch (at most the training
    images, cut to a multiple of the processes, as the Trainer cuts it) shared out by
    `shard`. What `--precision auto` weighs (devices.choose_precision)."""
    return max(min(batch_size, images) // env.world_size, 1)


def all_reduce_mean(values: list[float], env: DistEnv) -> list[float]:
    """The mean of each value over all ranks (identity in one process)."""
    if not env.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device(env))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / env.world_size).tolist()


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every rank if it is True on any (so all ranks stop together)."""
    if not env.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_comm_device(env))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast(value: Any, env: DistEnv) -> Any:
    """Rank 0's `value` (any picklable object from our own process group) on every rank."""
    if not env.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=_comm_device(env))
    return box[0]


def gather_rows(array: np.ndarray, env: DistEnv) -> np.ndarray | None:
    """Rank 0 gets every rank's rows interleaved back into one array (see `shard`); others None.

    Used for validation: rank r predicts rows r::world_size, rank 0 reassembles the
    full (N, K) logits and computes the metrics once.
    """
    if not env.distributed:
        return array
    parts: list[np.ndarray] | None = [None] * env.world_size if env.is_main else None  # type: ignore[list-item]
    dist.gather_object(array, parts, dst=0)
    if not env.is_main:
        return None
    n = sum(len(p) for p in parts)
    out = np.empty((n,) + array.shape[1:], dtype=array.dtype)
    for r, part in enumerate(parts):
        out[r::env.world_size] = part
    return out


def rank0_first(fn: Callable[[], T], env: DistEnv) -> T:
    """fn() on rank 0, then on the other ranks; a VitError on rank 0 is raised on every rank.

    For work whose result rank 0 caches (decoding the data) so that the others read the
    cache instead of repeating it at the same time. A plain barrier would leave the other
    ranks waiting when rank 0 stops on a user error, to die with a gloo/NCCL traceback.
    """
    if not env.distributed:
        return fn()
    if env.is_main:
        try:
            result = fn()
        except VitError as exc:
            broadcast((str(exc), exc.exit_code), env)
            raise
        broadcast(None, env)
        return result
    failed = broadcast(None, env)
    if failed is not None:
        raise VitError(failed[0], exit_code=failed[1])
    return fn()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def _comm_device(env: DistEnv) -> torch.device:
    """NCCL only moves CUDA tensors; gloo moves CPU ones."""
    return env.device if env.device.type == "cuda" else torch.device("cpu")
