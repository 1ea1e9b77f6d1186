"""The objective: several losses applied to one model output and combined, in one class.

:class:`MultipleLosses` (the role of pytorch-metric-learning's ``MultipleLosses``) owns the
configured losses, their weights, the terms that are logged and the summing: given a model's
output it hands each loss the output it consumes (logits, embedding, feature maps or the
channel gate's attention) and returns the weighted sum

``objective = sum_i weight_i * loss_i.combine(terms_i)``

that is back-propagated, and the terms that are logged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from chanloss.core.errors import LossInputError

__all__ = ["Combined", "MultipleLosses", "backward_scale"]


def backward_scale(loss: nn.Module, world_size: int) -> int:
    """The factor of ``loss`` in the back-propagated objective with ``world_size`` DDP ranks.

    A loss computed on the batch gathered from all ranks (``gathers_across_ranks``, CC-Loss)
    gives every rank its share of the global gradient, and the shares add up to the global
    gradient; DDP averages over ranks, so the term is multiplied by the world size. Per-rank
    batch means (cross-entropy, MC-Loss) are averaged correctly as they are.
    """
    return world_size if getattr(loss, "gathers_across_ranks", False) else 1


class Combined(NamedTuple):
    """One step's objective: ``objective`` (the weighted sum, what is reported),
    ``to_backward`` (each loss multiplied by its :func:`backward_scale`) and ``logged`` (the
    logged terms, detached, in float32, in the order of :attr:`MultipleLosses.logged`)."""

    objective: Tensor
    to_backward: Tensor
    logged: list[Tensor]


class MultipleLosses(nn.Module):
    """Several losses as one objective, ``sum_i weight_i * loss_i.combine(terms_i)``.

    ``losses[i]`` (a :class:`~chanloss.losses.base.Loss`) has the weight ``weights[i]``
    (default 1), the name ``names[i]`` (default its class name), logs the terms ``logged[i]``
    (default all its terms) and receives the step's ``generator`` when ``takes_generator[i]``.
    With ``world_size`` DDP ranks a loss that gathers across ranks enters the back-propagated
    sum multiplied by the world size (:func:`backward_scale`); the objective itself is unscaled.

    ``terms(out, labels)`` computes every loss's terms from a model output, ``combine(terms)``
    the :class:`Combined` sums, and ``forward(out, labels)`` the objective. The losses iterate
    and index like an ``nn.ModuleList``.
    """

    def __init__(
        self,
        losses: Sequence[nn.Module],
        weights: Sequence[float] | None = None,
        *,
        names: Sequence[str] | None = None,
        logged: Sequence[Sequence[str]] | None = None,
        takes_generator: Sequence[bool] | None = None,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        if not losses:
            raise ValueError("MultipleLosses needs at least one loss")
        self.losses = nn.ModuleList(losses)
        count = len(self.losses)
        self.weights = list(weights) if weights is not None else [1.0] * count
        self.names = list(names) if names is not None else [type(x).__name__ for x in losses]
        self.logged = (
            [list(t) for t in logged] if logged is not None else [list(x.weights) for x in losses]
        )
        self.takes_generator = (
            [bool(t) for t in takes_generator] if takes_generator is not None else [False] * count
        )
        for what, values in (
            ("weights", self.weights),
            ("names", self.names),
            ("logged", self.logged),
            ("takes_generator", self.takes_generator),
        ):
            if len(values) != count:
                raise ValueError(f"{count} losses but {len(values)} {what}; expected one each")
        if world_size < 1:
            raise ValueError(f"world_size must be at least 1, got {world_size}")
        self.scales = [backward_scale(loss, world_size) for loss in self.losses]

    def __len__(self) -> int:
        return len(self.losses)

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self.losses)

    def __getitem__(self, index: int) -> nn.Module:
        return self.losses[index]

    def terms(
        self, out: Any, labels: Tensor, generator: torch.Generator | None = None
    ) -> list[dict[str, Tensor]]:
        """Every loss's unweighted terms, ``loss.terms(out.<consumes>, labels)``. A loss that
        refuses its input raises :class:`~chanloss.core.errors.LossInputError` with its index."""
        terms = []
        for index, (loss, takes) in enumerate(zip(self.losses, self.takes_generator, strict=True)):
            kwargs = {"generator": generator} if takes else {}
            try:
                terms.append(loss.terms(getattr(out, loss.consumes), labels, **kwargs))
            except ValueError as err:
                raise LossInputError(index, err) from None
        return terms

    def combine(self, loss_terms: Sequence[dict[str, Tensor]]) -> Combined:
        """The :class:`Combined` sums of one step, given each loss's terms."""
        if len(loss_terms) != len(self.losses):
            raise ValueError(f"{len(loss_terms)} sets of terms for {len(self.losses)} losses")
        values: list[Tensor] = []
        objective: Tensor | None = None
        to_backward: Tensor | None = None
        parts = zip(self.losses, self.weights, self.logged, self.scales, loss_terms, strict=True)
        for loss, weight, logged, scale, terms in parts:
            part = weight * loss.combine(terms)
            objective = part if objective is None else objective + part
            scaled = part if scale == 1 else part * scale
            to_backward = scaled if to_backward is None else to_backward + scaled
            values.extend(terms[t].detach().float() for t in logged)
        assert objective is not None and to_backward is not None  # at least one loss
        return Combined(objective, to_backward, values)

    def forward(self, out: Any, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The weighted sum of the losses on a model output ``out``, a 0-d tensor."""
        return self.combine(self.terms(out, labels, generator)).objective

    @property
    def head(self) -> nn.Module | None:
        """The first loss that scores the classes (``provides_logits``: a margin head, L-GM)."""
        return next((x for x in self.losses if getattr(x, "provides_logits", False)), None)

    def class_scores(self, out: Any) -> Tensor:
        """Accuracy logits: the :attr:`head`'s ``logits(embedding)``, else ``out.logits``."""
        head = self.head
        return out.logits if head is None else head.logits(out.embedding)

    def update_schedule(self, step: int) -> None:
        """Every loss's schedule hook, before the optimisation step ``step``."""
        for loss in self.losses:
            loss.update_schedule(step)

    def update_state(self, out: Any, labels: Tensor) -> None:
        """Every loss's state hook after the optimiser step (the centre loss's centres), with
        the detached output it consumes."""
        for loss in self.losses:
            loss.update_state(getattr(out, loss.consumes).detach(), labels)
