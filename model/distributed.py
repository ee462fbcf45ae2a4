"""Several processes, one job: `torchrun` starts them, `torch.distributed` joins them (gloo on CPUs, NCCL on GPUs).

A command run without torchrun gets a one-process `Ranks` whose collectives do nothing, so every caller has a single
code path. Rank 0 is the one that writes files and prints progress; every rank reads the shared embedding cache.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: validates, checkpoints, writes and prints."""
        return self.rank == 0

    @property
    def joined(self) -> bool:
        return self.world > 1

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's share of `items` (every world-th item from its rank on): shares differ in length by at most 1
        and together hold every item once."""
        return list(items[self.rank::self.world])

    def barrier(self) -> None:
        if self.joined:
            dist.barrier()

    def from_main(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (a picklable object: a decision, a score)."""
        if not self.joined:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def join(device: torch.device | str | None = None) -> Ranks:
    """Join the process group torchrun set up in the environment (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`...), or a
    one-process `Ranks` when not started by torchrun. Backend: NCCL when `device` is CUDA (each process then takes
    GPU `LOCAL_RANK`: call this before building models), else gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        gpu = torch.device(device or "cpu").type == "cuda"
        if gpu:
            torch.cuda.set_device(local_rank)  # one GPU per process: "cuda" now means this rank's
        dist.init_process_group("nccl" if gpu else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), local_rank)


def leave(ranks: Ranks) -> None:
    """Destroy the process group (at the end of a command), so the processes exit cleanly."""
    if ranks.joined and dist.is_initialized():
        dist.destroy_process_group()
