"""Seeding: every random number generator from the config's ``seed``.

:func:`seed_everything` seeds python, numpy and torch; :func:`seed_rank` gives every process of
a multi-process run its own global generators (augmentation) after the shared model is built;
:func:`seed_worker` seeds a ``DataLoader`` worker.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from chanloss.run.distributed import get_rank, get_world_size

__all__ = ["seed_everything", "seed_rank", "seed_worker"]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the global generator other code draws from
    torch.manual_seed(seed)


def seed_rank(seed: int) -> None:
    """Seed python, numpy and torch's global generators differently on every rank.

    Called after the model and losses are built (from the shared ``seed``), so that random
    augmentation differs between ranks; a single process keeps its generators untouched.
    """
    world = get_world_size()
    if world <= 1:
        return
    seed_everything(seed * 1_000_003 + 7919 * (get_rank() + 1))


def seed_worker(seed: int, worker_id: int) -> None:
    """A ``DataLoader`` worker: one thread, python/numpy/torch seeded from ``seed`` and its id."""
    torch.set_num_threads(1)
    seed_everything(seed * 1000 + worker_id)
