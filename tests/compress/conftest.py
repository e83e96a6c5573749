"""Shared fixtures: the digits split and one small trained teacher CNN (session-scoped: training
is the slow part). Torch is held to one thread: the machine's 2 cores are shared."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _digits import digits_split, train_teacher  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return digits_split(0)


@pytest.fixture(scope="session")
def _teacher(digits):
    xtr, ytr, _, _ = digits
    return train_teacher(xtr, ytr, epochs=6, width=16)


@pytest.fixture
def teacher(_teacher):
    """A fresh copy per test: pruning passes modify their input."""
    import copy

    return copy.deepcopy(_teacher)
