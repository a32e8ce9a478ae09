"""Sharding under `accelerate launch`: which process this is, a barrier, and the map of a list of
batches over the processes whose results come back, in order, to every process.

Batches, not items, are what the processes share: process r of P runs batches b with b % P == r,
each exactly the batch one process would run, so every batch's numbers are the one-process numbers
(network kernels are not batch-invariant in the last bits) and the gathered result is equal to the
one-process result, not just close to it. Outside `accelerate launch` everything here is a plain loop.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence, TypeVar

import torch.distributed as dist

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
    if world == 1:
        return [mine[b] for b in range(len(batches))]
    gathered: list[dict[int, Out] | None] = [None] * world
    dist.all_gather_object(gathered, mine)
    merged = {b: out for part in gathered for b, out in (part or {}).items()}
    return [merged[b] for b in range(len(batches))]


__all__ = ["barrier", "is_main_process", "map_batches", "process_shard"]
