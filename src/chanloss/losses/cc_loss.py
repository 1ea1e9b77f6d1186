"""CC-Loss: channel correlation loss (Song, Chang, Ma, Li, Tan, ICPR 2020, arXiv 2010.05469)."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chanloss._validation import (
    as_compute_dtype,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_labels,
    check_tensor,
)
from chanloss.losses import distributed
from chanloss.losses.base import Loss
from chanloss.losses.registry import register_loss
from chanloss.losses.search import Choice, LogUniform

PAIR_REDUCTIONS = ("mean", "sum")
FORMS = ("ratio", "margin", "cosine", "softplus")


@register_loss("cc")
class CCLoss(Loss):
    """Channel correlation loss, CC-Loss (Song et al., "CC-Loss: Channel Correlation Loss for
    Image Classification", ICPR 2020, arXiv 2010.05469).

    What the paper's public abstract states: a channel attention module produces a channel
    attention vector for every sample during training; a Euclidean distance matrix between
    these vectors is used to make the vectors of the same class identical and those of
    different classes differ. The full text (and so its equations) is not available to us;
    everything below beyond that is **our reconstruction** (docs/design.md, "CC-Loss"):

    1. Attention (squeeze-and-excitation, owned by the loss, training only):
       ``z = GAP(F)``, ``a = sigmoid(W2 relu(W1 z + b1) + b2)`` with
       ``W1: C -> hidden`` and ``W2`` back to ``C``, ``hidden = max(C // reduction,
       min(min_hidden, C))``: a ``C // reduction`` below ``min_hidden`` is raised to it with a
       warning (30 channels at the SE default reduction 16 would give a 1-unit bottleneck).
       The SE form and the floor are ours.
    2. ``D[i, j] = ||a_i - a_j||^2`` from the Gram matrix (``O(B^2)`` memory, never
       ``(B, B, C)``), clamped at 0; the diagonal is excluded. Squared distances are ours.
       ``a`` is centred on its batch mean first (distances are unchanged): the sigmoid
       outputs sit near 0.5, and without centring the Gram form loses about 4 digits to
       cancellation in float32 (relative error 8e-5 instead of 1e-8 at C = 512, B = 64).
    3. ``P = {(i, j): i != j, y_i = y_j}``, ``N = {(i, j): y_i != y_j}`` (ordered pairs);
       ``cc = intra / (inter + eps)`` where ``intra``, ``inter`` are the means of ``D`` over
       ``P``, ``N`` (``pair_reduction="mean"``, ours: independent of batch size and class
       count) or their sums (``"sum"``, as a secondary description writes it). The ratio form
       is ours. Without pairs in ``N``, ``cc = 0`` with gradient 0; without pairs in ``P``,
       ``intra = 0`` (so ``cc = 0``: the ratio then carries no signal and its gradient is 0).
    4. ``form`` (all ours; the abstract allows any of them): ``"ratio"`` is 3. It is
       scale-free, so its gradient grows like ``1 / s`` as the attention vectors converge
       (differences of size ``s``). The bounded alternatives use the means (always
       ``pair_reduction="mean"``; an empty set's mean is 0, so a batch without positive pairs
       still separates the classes and one without negative pairs still pulls together):

       - ``"margin"``: ``relu(intra_c - inter_c + margin)`` with ``intra_c``, ``inter_c`` the
         means of the per-channel squared distance ``D / C`` (in ``[0, 1]`` for sigmoid
         attention); a hinge: zero once the classes are ``margin`` further apart than the
         samples of one class.
       - ``"softplus"``: ``temperature * softplus((intra_c - inter_c) / temperature)``, a
         smooth hinge at 0 that never switches off.
       - ``"cosine"``: ``intra_n - inter_n`` on the squared distances of the L2-normalised
         attention vectors, ``||a_i/|a_i| - a_j/|a_j|||^2 = 2 - 2 cos(a_i, a_j)``, in
         ``[-2, 2]``.

       Their gradients w.r.t. ``a`` are bounded (by ``2 / C`` times the largest attention
       difference for ``margin``/``softplus``, and by a constant over ``|a|`` for ``cosine``),
       so they shrink rather than grow as the attention vectors converge.

    Terms: ``{"cc": cc}``; ``weights = {"cc": weight}``. ``consumes = "features"``:
    ``forward(features, labels)`` with features ``(B, C, H, W)``, ``C == num_channels``.
    The SE layers are ordinary parameters: move the loss with ``.to(device)``, give its
    parameters to the optimiser and keep its ``state_dict`` in checkpoints. They are cast to
    the (at least float32) compute dtype of the features inside the call.

    Distributed training (``gather=True``, a process group of world size > 1 initialised):
    ``a`` and the labels are all-gathered with autograd, so every rank computes the loss of the
    global batch, identical on all ranks; the gradient w.r.t. each rank's features (and the SE
    parameters' gradient on each rank) is that rank's share of the global gradient, and the
    shares sum to the single-process gradient on the global batch. DDP *averages* gradients
    over ranks, so a trainer must multiply this loss by ``world_size`` in the objective it
    back-propagates (not in what it logs) to get the single-process gradient; the property
    :attr:`gathers_across_ranks` says when that applies. Per-rank losses that are batch means
    (cross-entropy) are not multiplied. ``all_gather`` needs equal per-rank batch sizes (a
    ``DistributedSampler`` pads every rank to the same sample count, so equal batch sizes
    follow with the same ``batch_size``). The sizes are compared with one small collective
    when the features are on the CPU or ``check_finite=True`` (it reads the sizes on the host,
    so on accelerators it is off by default) and a mismatch raises ``ValueError`` on every
    rank.
    """

    consumes = "features"
    #: What ``chanloss tune`` varies (see chanloss.losses.search).
    search_space = {
        "weight": LogUniform(1e-3, 10.0),
        "reduction": Choice((4, 8, 16)),
        # pair_reduction "sum" exists only for the ratio form, so the form is tuned instead
        "form": Choice(("margin", "softplus", "cosine", "ratio")),
    }

    def __init__(
        self,
        *,
        num_channels: int,
        reduction: int = 16,
        weight: float = 1.0,
        pair_reduction: str = "mean",
        eps: float = 1e-6,
        gather: bool = True,
        form: str = "margin",
        margin: float = 0.1,
        temperature: float = 0.1,
        min_hidden: int = 4,
        check_finite: bool = False,
    ) -> None:
        super().__init__(
            weights={"cc": check_float("weight", weight, low=0.0)},
            check_finite=check_bool("check_finite", check_finite),
        )
        self.num_channels = check_int("num_channels", num_channels, low=1)
        self.reduction = check_int("reduction", reduction, low=1)
        self.pair_reduction = check_choice("pair_reduction", pair_reduction, PAIR_REDUCTIONS)
        self.eps = check_float("eps", eps, low=0.0, low_inclusive=False)
        self.gather = check_bool("gather", gather)
        self.form = check_choice("form", form, FORMS)
        self.margin = check_float("margin", margin, low=0.0)
        self.temperature = check_float("temperature", temperature, low=0.0, low_inclusive=False)
        self.min_hidden = check_int("min_hidden", min_hidden, low=1)
        if self.form != "ratio" and self.pair_reduction != "mean":
            raise ValueError(
                f"pair_reduction='sum' is only for form='ratio' (the bounded forms use means), "
                f"got form={self.form!r}"
            )
        self.hidden = max(1, self.num_channels // self.reduction)
        floor = min(self.min_hidden, self.num_channels)
        if self.hidden < floor:
            warnings.warn(
                f"CCLoss: the attention's hidden width num_channels // reduction = "
                f"{self.num_channels} // {self.reduction} = {self.hidden} is below "
                f"min_hidden={self.min_hidden}; using {floor} (set min_hidden=1 to keep "
                f"{self.hidden}, or a smaller reduction)",
                stacklevel=2,
            )
            self.hidden = floor
        self.fc1 = nn.Linear(self.num_channels, self.hidden)
        self.fc2 = nn.Linear(self.hidden, self.num_channels)

    @property
    def gathers_across_ranks(self) -> bool:
        """True when the loss is computed on the batch all-gathered from several ranks."""
        return self.gather and distributed.is_distributed()

    # -- the API -----------------------------------------------------------------------------
    def attention(self, features: Tensor) -> Tensor:
        """The SE channel attention ``a`` in ``(0, 1)``, shape ``(B, C)``, for analysis."""
        features = check_tensor(
            "features", features, ndim=4, layout="(B, C, H, W)", sizes={1: self.num_channels}
        )
        features = as_compute_dtype(features)
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self._attention(features)

    def validate(self, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        features = check_tensor(
            "features", inputs, ndim=4, layout="(B, C, H, W)", sizes={1: self.num_channels}
        )
        if features.shape[2] == 0 or features.shape[3] == 0:
            raise ValueError(
                f"features must have H >= 1 and W >= 1 in (B, C, H, W), "
                f"got shape {tuple(features.shape)}"
            )
        param = self.fc1.weight
        if features.device != param.device:
            raise ValueError(
                f"features must be on the loss's device {param.device} (move the loss with "
                f".to(device)), got features on {features.device}"
            )
        labels = check_labels(
            labels, batch_size=features.shape[0], num_classes=None, validate_values=False
        )
        if self.check_finite or labels.device.type == "cpu":
            low = int(labels.min())
            if low < 0:
                raise ValueError(f"labels must be class indices >= 0, got a label {low}")
        return features, labels

    def compute_terms(self, inputs: Tensor, labels: Tensor, **kwargs: object) -> dict[str, Tensor]:
        if kwargs:
            raise ValueError(f"CCLoss takes no keyword arguments, got {sorted(kwargs)}")
        a = self._attention(inputs)
        if self.gathers_across_ranks:
            if self.check_finite or a.device.type == "cpu":
                distributed.check_equal_batch_sizes(a.shape[0], a.device)
            a = distributed.all_gather_with_grad(a)
            labels = distributed.all_gather_no_grad(labels)
        return {"cc": self._cc(a, labels)}

    # -- internals ---------------------------------------------------------------------------
    def _attention(self, features: Tensor) -> Tensor:
        dtype = features.dtype
        z = features.mean(dim=(2, 3))
        h = torch.relu(nn.functional.linear(z, self.fc1.weight.to(dtype), self.fc1.bias.to(dtype)))
        return torch.sigmoid(
            nn.functional.linear(h, self.fc2.weight.to(dtype), self.fc2.bias.to(dtype))
        )

    def _cc(self, a: Tensor, labels: Tensor) -> Tensor:
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(a.shape[0], dtype=torch.bool, device=a.device)
        pos = same & ~eye
        neg = ~same
        if self.form == "cosine":
            u = F.normalize(a, dim=1)
            dist = (2.0 - 2.0 * (u @ u.T)).clamp_min(0.0)
        else:
            # Distances do not change under a shift; centring first keeps the Gram-matrix form
            # accurate when the attention vectors are close to each other (e.g. all near 0.5).
            a = a - a.mean(dim=0, keepdim=True)
            sq = (a * a).sum(dim=1)
            dist = (sq[:, None] + sq[None, :] - 2.0 * (a @ a.T)).clamp_min(0.0)
        zero = dist.new_zeros(())
        intra = torch.where(pos, dist, zero).sum()
        inter = torch.where(neg, dist, zero).sum()
        n_neg = neg.sum()
        if self.pair_reduction == "mean":
            intra = intra / pos.sum().clamp_min(1)
            inter = inter / n_neg.clamp_min(1)
        if self.form == "cosine":
            return intra - inter
        if self.form in ("margin", "softplus"):
            gap = (intra - inter) / self.num_channels
            if self.form == "margin":
                return torch.relu(gap + self.margin)
            return self.temperature * F.softplus(gap / self.temperature)
        has_neg = n_neg > 0
        # Without negative pairs the denominator is replaced by 1 so that the discarded branch
        # stays finite and its zero gradient does not turn into NaN.
        ratio = intra / torch.where(has_neg, inter + self.eps, torch.ones_like(inter))
        return torch.where(has_neg, ratio, zero)

    def extra_repr(self) -> str:
        return (
            f"num_channels={self.num_channels}, hidden={self.hidden}, form={self.form!r}, "
            f"pair_reduction={self.pair_reduction!r}, eps={self.eps:g}, gather={self.gather}, "
            f"weights={self.weights}"
        )
