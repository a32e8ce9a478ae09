"""Fixtures shared by the test modules."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """The machine is shared: one intra-op thread is faster here and keeps results bit-stable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_teacher():
    from bench.assets.teachers import load_teacher

    return load_teacher("tiny")
