"""Test-wide settings: one torch thread per test process (the CI machine has 2 cores and
pytest-xdist runs two workers; more threads only oversubscribe)."""

import torch

torch.set_num_threads(1)
