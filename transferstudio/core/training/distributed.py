"""Several processes, one run: what ``torchrun`` tells a process, and the few collectives the
engine needs. Training itself uses PyTorch's DistributedDataParallel (applied in place by
``torch.distributed._composable.replicate``, so methods keep calling their own modules).

Rank 0 alone writes (checkpoints, the run index, logs); every rank agrees on the run through
:meth:`Distributed.broadcast`; training metrics are summed with :meth:`all_reduce_sum`. Before
an evaluation every rank takes rank 0's buffers (:meth:`sync_buffers`), so all evaluate the
model rank 0 saves; an evaluation split is shared out with :meth:`shard` and put back together
with :meth:`gather_shards`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any


def process_rank() -> int:
    """This process's rank in a ``torchrun`` launch (0 when not launched by torchrun): the one
    place that reads ``RANK``."""
    return int(os.environ.get("RANK", "0"))


@dataclass
class Distributed:
    """This process's place in a launch (one process: rank 0 of 1, every call a no-op)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    started_group: bool = False

    @classmethod
    def from_env(cls) -> Distributed:
        """From torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``."""
        return cls(
            rank=process_rank(),
            world=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def start(self, device_type: str) -> None:
        """Join the process group: NCCL between GPUs, Gloo on CPUs."""
        import torch.distributed as dist

        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
            self.started_group = True

    def stop(self, together: bool = True) -> None:
        """Leave the process group. ``together`` (every rank ended the run at the same point:
        completed or stopped by agreement) waits for the others first; a rank that failed on
        its own leaves at once, so that torchrun sees it exit and ends the others."""
        import torch.distributed as dist

        if self.started_group and dist.is_initialized():
            if together:
                # A rank that tears Gloo down while another still talks to it can abort at
                # exit ("terminate called without an active exception"); the barrier made it
                # rarer, and transferstudio/__main__.py skips the teardown where it happened.
                with contextlib.suppress(Exception):
                    dist.barrier()
            # Not after a failure: the others are inside a training collective, and a barrier
            # there never matches (a job hung in CI until the disk-full run was killed).
            dist.destroy_process_group()
            self.started_group = False

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.enabled:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over the ranks."""
        if not self.enabled:
            return values
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, by rank."""
        if not self.enabled:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def sync_buffers(self, modules: dict[str, Any]) -> None:
        """Rank 0's buffers (BatchNorm running statistics) in every rank's ``modules``.

        DistributedDataParallel broadcasts them at the start of each training forward, so after
        an epoch's last step every rank holds statistics updated by its own share of the batch;
        evaluating those would give each rank a slightly different model from the one rank 0
        saves."""
        if not self.enabled:
            return
        import torch.distributed as dist

        for module in modules.values():
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    def shard(self, n: int) -> list[int]:
        """This rank's share of ``n`` items: ``rank, rank + world, ...``, padded by wrapping
        around (as DistributedSampler pads) so that every rank has ``ceil(n / world)`` items
        and runs as many batches (the per-batch stop check is a collective)."""
        total = -(-n // self.world) * self.world
        return [i % n for i in range(self.rank, total, self.world)]

    def gather_shards(self, part: Any, n: int) -> Any:
        """The ``n`` items in their order from every rank's ``part`` (a tensor whose rows are
        this rank's :meth:`shard`); padding rows are dropped."""
        if not self.enabled:
            return part
        return interleave_shards(self.all_gather(part.cpu()), n)


def interleave_shards(parts: list[Any], n: int) -> Any:
    """Row ``j`` of rank ``r``'s part is item ``j * world + r`` (see :meth:`Distributed.shard`):
    the parts interleaved, cut to ``n`` rows."""
    import torch

    return torch.stack(parts, dim=1).reshape(-1, *parts[0].shape[1:])[:n]


def _distributed_sampler_base():
    from torch.utils.data.distributed import DistributedSampler

    return DistributedSampler


class EpochShardSampler(_distributed_sampler_base()):
    """A DistributedSampler over the permutation a single process would draw with
    ``generator`` (``torch.randperm``, as DataLoader's shuffling does): rank ``r`` takes items
    ``r, r + world, ...``, so batch ``k`` of every rank together is batch ``k`` of one process
    with the global batch size. Padded like DistributedSampler when ``world`` does not divide
    the dataset."""

    def __init__(self, dataset, world: int, rank: int, generator) -> None:
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=False)
        self.generator = generator

    def __iter__(self):
        import torch

        order = torch.randperm(len(self.dataset), generator=self.generator).tolist()
        order += order[: self.total_size - len(order)]
        return iter(order[self.rank : self.total_size : self.num_replicas])


def replicate_trainable(modules: dict[str, Any]) -> list[str]:
    """Apply DistributedDataParallel in place to every module with trainable parameters (its
    gradients are averaged over the ranks in backward); returns their names."""
    from torch.distributed._composable import replicate

    names = []
    for name, module in modules.items():
        if any(p.requires_grad for p in module.parameters()):
            replicate(module)
            names.append(name)
    return names
