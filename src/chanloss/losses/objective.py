"""The objective: the configured losses applied to a model's outputs and combined.

:class:`ModelWithLosses` runs the model and hands each loss the output it consumes (logits,
embedding or feature maps), so that under DDP the losses' parameters are synchronised with the
model's; :class:`Objective` combines the losses' terms into the weighted sum that is
back-propagated, ``sum_i weight_i * loss_i.combine(terms_i)``, and the values that are logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from chanloss.core.errors import LossInputError

__all__ = ["ModelWithLosses", "Objective", "backward_scale"]


def backward_scale(loss: nn.Module, world_size: int) -> int:
    """The factor of ``loss`` in the back-propagated objective with ``world_size`` DDP ranks.

    A loss computed on the batch gathered from all ranks (``gathers_across_ranks``, CC-Loss)
    gives every rank its share of the global gradient, and the shares add up to the global
    gradient; DDP averages over ranks, so the term is multiplied by the world size. Per-rank
    batch means (cross-entropy, MC-Loss) are averaged correctly as they are.
    """
    return world_size if getattr(loss, "gathers_across_ranks", False) else 1


class ModelWithLosses(nn.Module):
    """The model and the configured losses as one module, so DDP synchronises both.

    ``forward(x, labels, generator)`` returns the model's output and, per loss, its terms
    (``loss.terms(out.<consumes>, labels)``; ``generator`` goes to the losses that take one).
    Computing the losses inside the wrapped forward lets DDP see which parameters (the losses'
    included) take part in the step.
    """

    def __init__(
        self, model: nn.Module, losses: Sequence[nn.Module], takes_generator: Sequence[bool]
    ) -> None:
        super().__init__()
        self.model = model
        self.losses = nn.ModuleList(losses)
        self.takes_generator = list(takes_generator)

    def forward(
        self, x: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Any, list[dict[str, Tensor]]]:
        out = self.model(x)
        terms = []
        for index, (loss, takes) in enumerate(zip(self.losses, self.takes_generator, strict=True)):
            kwargs = {"generator": generator} if takes else {}
            try:
                terms.append(loss.terms(getattr(out, loss.consumes), labels, **kwargs))
            except ValueError as err:
                raise LossInputError(index, err) from None
        return out, terms


class Objective:
    """The weighted sum of the configured losses' terms.

    ``losses[i]`` has the weight ``weights[i]``, logs the terms ``logged[i]`` (names of its
    ``terms``) and enters the back-propagated sum multiplied by ``scales[i]`` (see
    :func:`backward_scale`; the objective itself is unscaled).
    """

    def __init__(
        self,
        losses: Sequence[nn.Module],
        weights: Sequence[float],
        logged: Sequence[Sequence[str]],
        scales: Sequence[int],
    ) -> None:
        self.parts = list(zip(losses, weights, logged, scales, strict=True))

    def __call__(
        self, loss_terms: Sequence[dict[str, Tensor]]
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """``(objective, to_backward, logged values)`` of one step, given each loss's terms."""
        values: list[Tensor] = []
        objective: Tensor | None = None
        to_backward: Tensor | None = None
        for (loss, weight, logged, scale), terms in zip(self.parts, loss_terms, strict=True):
            part = weight * loss.combine(terms)
            objective = part if objective is None else objective + part
            scaled = part if scale == 1 else part * scale
            to_backward = scaled if to_backward is None else to_backward + scaled
            values.extend(terms[t].detach().float() for t in logged)
        if objective is None or to_backward is None:
            raise ValueError("the objective needs at least one loss")
        return objective, to_backward, values
