"""bench.core.distributed.map_batches / map_loaded: round-robin batches, results back in batch order
on every process."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from bench.core import distributed


def test_one_process_is_a_plain_loop():
    assert distributed.map_batches(sum, [[1, 2], [3], [4, 5, 6]]) == [3, 3, 15]


def test_two_processes_split_round_robin_and_gather_in_order(monkeypatch):
    batches = [[i] * (i + 1) for i in range(5)]          # batch b holds b+1 copies of b
    ran: dict[int, list[int]] = {0: [], 1: []}
    shares: dict[int, dict] = {}

    def run_as(rank: int) -> list:
        monkeypatch.setattr(distributed, "process_shard", lambda: (rank, 2))

        def run(batch):
            ran[rank].append(batch[0])
            return sum(batch)

        def all_gather_object(out, mine):             # what gloo does: every rank's dict, in rank order
            shares[rank] = mine
            if len(shares) < 2:
                raise _Waiting                         # the other rank has not run yet
            out[:] = [shares[0], shares[1]]

        monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
        return distributed.map_batches(run, batches)

    class _Waiting(Exception):
        pass

    try:
        run_as(1)                                      # rank 1 runs its share, then waits for rank 0
    except _Waiting:
        pass
    gathered = run_as(0)
    assert ran == {0: [0, 2, 4], 1: [1, 3]}
    assert gathered == [0, 2, 6, 12, 20] == [sum(b) for b in batches]


class _Squares(Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(i * i)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_map_loaded_collates_the_given_batches_in_order(num_workers):
    batches = [range(0, 3), range(3, 4), range(4, 10)]
    got = distributed.map_loaded(lambda batch: batch.tolist(), _Squares(), batches, num_workers=num_workers)
    assert got == [[0, 1, 4], [9], [16, 25, 36, 49, 64, 81]]


def test_map_loaded_loads_only_this_process_share(monkeypatch):
    loaded: list[int] = []

    class _Recorded(_Squares):
        def __getitem__(self, i: int) -> torch.Tensor:
            loaded.append(i)
            return super().__getitem__(i)

    monkeypatch.setattr(distributed, "process_shard", lambda: (1, 2))
    monkeypatch.setattr(dist, "all_gather_object", lambda out, mine: out.__setitem__(
        slice(None), [{0: "r0", 2: "r2"}, mine]))
    got = distributed.map_loaded(lambda batch: batch.tolist(), _Recorded(), [[0, 1], [2], [3], [4, 5]])
    assert loaded == [2, 4, 5]                        # batches 1 and 3 only
    assert got == ["r0", [4], "r2", [16, 25]]
