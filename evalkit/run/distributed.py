"""Data parallelism under ``torchrun`` (or ``accelerate launch``): one model copy per process.

Each rank takes a disjoint shard of the samples and journals its own rows in the shared run
folder; rank 0 checks the folder first, and merges every rank's journal into the tables at the
end. The result equals a single-process run, and ``--resume`` works with any world size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> str:
        """Each process gets its own GPU: cuda -> cuda:LOCAL_RANK."""
        if self.size > 1 and requested in ("auto", "cuda"):
            import torch

            if torch.cuda.is_available():
                return f"cuda:{self.local_rank}"
        return requested

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, value):
        """Rank 0's value on every rank (e.g. a default run folder named by the time)."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def shard(self, items: list) -> list:
        return items[self.rank :: self.size]


def current_world() -> World:
    """The world this process runs in; starts the process group when launched by torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
