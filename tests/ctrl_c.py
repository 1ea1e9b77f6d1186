"""A test-only loss that presses Ctrl-C at chosen steps, shared by the interrupt and prune tests."""

from __future__ import annotations

import os
import signal

import torch.nn.functional as F
from torch import Tensor

from chanloss.losses.base import Loss


class CtrlCLoss(Loss):
    """Test-only loss (zero) that sends this process SIGINT at the global steps ``AT`` (a class
    attribute, so that the interrupted and the resumed run have the same config)."""

    AT: list[int] = []

    def __init__(self) -> None:
        super().__init__(weights={"zero": 1.0})

    def update_schedule(self, step: int) -> None:
        for _ in range(self.AT.count(step)):
            os.kill(os.getpid(), signal.SIGINT)

    def compute_terms(self, inputs: Tensor, labels: Tensor, **kwargs: object) -> dict[str, Tensor]:
        return {"zero": 0.0 * F.cross_entropy(inputs, labels)}
