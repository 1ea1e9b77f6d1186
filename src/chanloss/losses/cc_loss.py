"""CC-Loss: channel correlation loss (Song, Chang, Ma, Li, Tan, ICPR 2020, arXiv 2010.05469)."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chanloss.core.validation import (
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
PLACEMENTS = ("gate", "branch")
#: The default weight per placement. Gate: the ratio's gradient share on the feature map
#: against cross-entropy's is of order 1 at the start of training
#: (benchmarks/bench_cc_grad_share.py, docs/cc-loss.md). Branch: 1, as before the gate existed,
#: so that side-branch configs and checkpoints train as they did.
DEFAULT_WEIGHTS = {"gate": 0.01, "branch": 1.0}
DEFAULT_WEIGHT = DEFAULT_WEIGHTS["gate"]


@register_loss("cc")
class CCLoss(Loss):
    """Channel correlation loss, CC-Loss (Song et al., "CC-Loss: Channel Correlation Loss for
    Image Classification", ICPR 2020, arXiv 2010.05469).

    What the paper's public abstract states: a channel attention module produces a channel
    attention vector for every sample during training; a Euclidean distance matrix between
    these vectors is used to make the vectors of the same class identical and those of
    different classes differ. The full text is not available to us; two outside facts and our
    reconstruction are in docs/cc-loss.md (a reader's note says the attention module is an SE
    block; the closest public design puts it in the forward path and uses the ratio form).

    1. Attention ``a`` in ``(0, 1)^C`` from a squeeze-and-excitation block (Hu et al., CVPR
       2018), ``a = sigmoid(W2 relu(W1 GAP(F) + b1) + b2)``. ``placement``:

       - ``"gate"`` (default): the SE block is the model's channel gate
         (:class:`~chanloss.models.gate.SEGate`, ``model.channel_gate: se``, added by the
         trainer when unset, with this loss's ``reduction`` unless ``model.gate_reduction`` is
         given); the classifier reads ``F * (2 a)``. The loss owns no parameters and
         consumes the model's ``attention`` ``(B, C)``.
       - ``"branch"`` (the project's earlier reading): the loss owns the SE block as a
         training-only side branch on ``features`` ``(B, C, H, W)``; the classifier never sees
         it. ``hidden = max(C // reduction, min(min_hidden, C))`` (raised with a warning).
    2. ``D[i, j] = ||a_i - a_j||^2`` from the Gram matrix (``O(B^2)`` memory, never
       ``(B, B, C)``), clamped at 0, diagonal excluded; ``a`` is centred on its batch mean
       first (distances are unchanged; without it the Gram form loses about 4 digits to
       cancellation in float32 when the ``a`` sit near 0.5).
    3. ``P = {(i, j): i != j, y_i = y_j}``, ``N = {(i, j): y_i != y_j}`` (ordered pairs);
       ``intra``, ``inter`` are the means of ``D`` over ``P``, ``N`` (``pair_reduction="mean"``,
       default: independent of batch size and class count) or their sums (``"sum"``; equal to
       the means' ratio times ``|P| / |N|``, about ``1 / (K - 1)`` in a balanced batch).
    4. ``form``:

       - ``"ratio"`` (default, the form with outside support): ``cc = intra / (inter + eps)``.
         Without pairs in ``N``, ``cc = 0`` with gradient 0; without pairs in ``P``,
         ``intra = 0``. Scale-free, so its gradient grows like ``1 / s`` as the attention
         vectors converge (differences of size ``s``).
       - ours, bounded (always ``pair_reduction="mean"``; an empty set's mean is 0):
         ``"margin"``: ``relu(intra_c - inter_c + margin)`` on the per-channel means
         ``D / C``; ``"softplus"``: ``temperature * softplus((intra_c - inter_c) /
         temperature)``; ``"cosine"``: ``intra_n - inter_n`` on the squared distances of the
         L2-normalised ``a`` (``2 - 2 cos``). Their gradients are 2 to 3 orders of magnitude
         below cross-entropy's on the feature map at weight 1 (docs/cc-loss.md).

    Terms: ``{"cc": cc}``; ``weights = {"cc": weight}``, by default 0.01 with the gate (its
    gradient on the feature map is then of the order of cross-entropy's at initialisation) and 1
    with the branch (as before the gate existed). ``consumes``: ``"attention"``
    (gate) or ``"features"`` (branch, ``forward(features, labels)`` with ``C ==
    num_channels``). The branch's SE layers are ordinary parameters: move the loss with
    ``.to(device)``, give its parameters to the optimiser and keep its ``state_dict``.

    Distributed training (``gather=True``, a process group of world size > 1 initialised):
    ``a`` and the labels are all-gathered with autograd, so every rank computes the loss of the
    global batch, identical on all ranks; the gradient w.r.t. each rank's input is that rank's
    share of the global gradient. DDP *averages* gradients over ranks, so a trainer multiplies
    this loss by ``world_size`` in the objective it back-propagates (not in what it logs); the
    property :attr:`gathers_across_ranks` says when that applies. ``all_gather`` needs equal
    per-rank batch sizes (a ``DistributedSampler`` pads every rank to the same sample count);
    the sizes are compared with one small collective when the input is on the CPU or
    ``check_finite=True``, and a mismatch raises ``ValueError`` on every rank.
    """

    consumes: str = "attention"  # per instance: "features" with placement="branch"
    #: What ``chanloss tune`` varies (see chanloss.losses.search); a gate trial gets the gate
    #: added to its model by the trainer.
    search_space = {
        "weight": LogUniform(0.01, 10.0),
        "placement": Choice(PLACEMENTS),
        # pair_reduction "sum" exists only for the ratio form, so the form is tuned instead
        "form": Choice(("ratio", "margin", "softplus", "cosine")),
    }

    def __init__(
        self,
        *,
        num_channels: int,
        placement: str = "gate",
        reduction: int = 16,
        weight: float | None = None,
        pair_reduction: str = "mean",
        eps: float = 1e-6,
        gather: bool = True,
        form: str = "ratio",
        margin: float = 0.1,
        temperature: float = 0.1,
        min_hidden: int = 4,
        check_finite: bool = False,
    ) -> None:
        placement = check_choice("placement", placement, PLACEMENTS)
        if weight is None:
            weight = DEFAULT_WEIGHTS[placement]
        super().__init__(
            weights={"cc": check_float("weight", weight, low=0.0)},
            check_finite=check_bool("check_finite", check_finite),
        )
        self.num_channels = check_int("num_channels", num_channels, low=1)
        self.placement = check_choice("placement", placement, PLACEMENTS)
        self.consumes = "attention" if self.placement == "gate" else "features"
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
        self.hidden = 0
        if self.placement == "branch":
            self._build_branch()

    def _build_branch(self) -> None:
        self.hidden = max(1, self.num_channels // self.reduction)
        floor = min(self.min_hidden, self.num_channels)
        if self.hidden < floor:
            warnings.warn(
                f"CCLoss: the attention's hidden width num_channels // reduction = "
                f"{self.num_channels} // {self.reduction} = {self.hidden} is below "
                f"min_hidden={self.min_hidden}; using {floor} (set min_hidden=1 to keep "
                f"{self.hidden}, or a smaller reduction)",
                stacklevel=3,
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
        """The side branch's SE channel attention ``a`` in ``(0, 1)``, shape ``(B, C)``, for
        analysis (``placement="branch"``; with the gate, read the model's ``attention``)."""
        if self.placement != "branch":
            raise ValueError(
                "CCLoss(placement='gate') owns no attention: read the model output's attention"
            )
        features = check_tensor(
            "features", features, ndim=4, layout="(B, C, H, W)", sizes={1: self.num_channels}
        )
        features = as_compute_dtype(features)
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self._attention(features)

    def validate(self, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if self.placement == "gate":
            if inputs is None:
                raise ValueError(
                    "CCLoss(placement='gate') reads the model's channel-gate attention, and the "
                    "model has no gate; set model.channel_gate: se (or placement: branch)"
                )
            attention = check_tensor(
                "attention", inputs, ndim=2, layout="(B, C)", sizes={1: self.num_channels}
            )
            return attention, self._check_labels(labels, attention)
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
        return features, self._check_labels(labels, features)

    def _check_labels(self, labels: Tensor, inputs: Tensor) -> Tensor:
        labels = check_labels(
            labels, batch_size=inputs.shape[0], num_classes=None, validate_values=False
        )
        if self.check_finite or labels.device.type == "cpu":
            low = int(labels.min())
            if low < 0:
                raise ValueError(f"labels must be class indices >= 0, got a label {low}")
        return labels

    def compute_terms(self, inputs: Tensor, labels: Tensor, **kwargs: object) -> dict[str, Tensor]:
        if kwargs:
            raise ValueError(f"CCLoss takes no keyword arguments, got {sorted(kwargs)}")
        a = self._attention(inputs) if self.placement == "branch" else inputs
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
            f"num_channels={self.num_channels}, placement={self.placement!r}, "
            f"hidden={self.hidden}, form={self.form!r}, "
            f"pair_reduction={self.pair_reduction!r}, eps={self.eps:g}, gather={self.gather}, "
            f"weights={self.weights}"
        )
