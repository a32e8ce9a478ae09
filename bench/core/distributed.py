"""Sharding under `accelerate launch`: which process this is, a barrier, and the map of a list of
batches over the processes whose results come back, in order, to every process.

Batches, not items, are what the processes share: process r of P runs batches b with b % P == r,
each exactly the batch one process would run, so every batch's numbers are the one-process numbers
(network kernels are not batch-invariant in the last bits) and the gathered result is equal to the
one-process result, not just close to it. Outside `accelerate launch` everything here is a plain loop.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence, TypeVar

import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

Item = TypeVar("Item")
Out = TypeVar("Out")


def _launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or "ACCELERATE_USE_CPU" in os.environ


def process_shard() -> tuple[int, int]:
    """(process index, number of processes) under `accelerate launch`, (0, 1) otherwise."""
    if _launched():
        from accelerate import PartialState

        state = PartialState()
        return state.process_index, state.num_processes
    return 0, 1


def is_main_process() -> bool:
    return process_shard()[0] == 0


def barrier() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def map_batches(run: Callable[[Sequence[Item]], Out], batches: Sequence[Sequence[Item]]) -> list[Out]:
    """``[run(batch) for batch in batches]``, the batches shared round-robin among the processes and
    the results gathered back to every process in batch order."""
    rank, world = process_shard()
    mine = {b: run(batches[b]) for b in range(len(batches)) if b % world == rank}
    return _gathered(mine, len(batches), world)


def map_loaded(run: Callable[[Any], Out], dataset: Dataset, batches: Sequence[Sequence[int]], *,
               num_workers: int = 0, pin_memory: bool = False) -> list[Out]:
    """:func:`map_batches` over batches of ``dataset`` indices, each batch loaded (``dataset[i]``
    for its indices, collated) by a ``DataLoader`` before ``run`` sees it: ``num_workers`` worker
    processes decode ahead of the network, into page-locked memory when ``pin_memory`` (then the
    host-to-GPU copy can run asynchronously, ``.to(device, non_blocking=True)``). The batches and
    their order are the given ones, so the results equal the plain loop's exactly."""
    rank, world = process_shard()
    own = [b for b in range(len(batches)) if b % world == rank]
    loader = DataLoader(dataset, batch_sampler=[list(batches[b]) for b in own], num_workers=num_workers,
                        pin_memory=pin_memory, prefetch_factor=4 if num_workers else None)
    mine = {b: run(batch) for b, batch in zip(own, loader)}
    return _gathered(mine, len(batches), world)


def _gathered(mine: dict[int, Out], count: int, world: int) -> list[Out]:
    """This process's results (by batch index) and every other process's, in batch order."""
    if world == 1:
        return [mine[b] for b in range(count)]
    gathered: list[dict[int, Out] | None] = [None] * world
    dist.all_gather_object(gathered, mine)
    merged = {b: out for part in gathered for b, out in (part or {}).items()}
    return [merged[b] for b in range(count)]


__all__ = ["barrier", "is_main_process", "map_batches", "map_loaded", "process_shard"]
