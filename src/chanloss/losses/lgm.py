"""L-GM loss: large-margin Gaussian Mixture loss (Wan, Zhong, Li, Chen, CVPR 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chanloss.core.validation import (
    check_choice,
    check_float,
    check_int,
)
from chanloss.losses.base import Loss
from chanloss.losses.registry import register_loss
from chanloss.losses.search import LogUniform, Uniform

COVARIANCES = ("identity", "diagonal")


@register_loss("lgm")
class LGMLoss(Loss):
    """Large-margin Gaussian Mixture loss, L-GM (Wan et al., "Rethinking Feature Distribution
    for Loss Functions in Image Classification", CVPR 2018, arXiv 1803.02988).

    The embeddings ``x`` of class ``k`` are modelled as ``N(mu_k, Lambda_k)`` with equal class
    priors. With the Mahalanobis term
    ``d_k = (x - mu_k)^T Lambda_k^{-1} (x - mu_k) / 2`` the class score (log posterior up to a
    constant shared by all classes) is ``s_k = -d_k - log|Lambda_k| / 2``.

    - Classification loss with margin (the paper's ``L^m_cls``, Sec. 3.2): the true class's
      distance is scaled by ``1 + alpha``,
      ``cls = mean_i -log softmax_k(-d_k (1 + alpha [k = y_i]) - log|Lambda_k| / 2)_{y_i}``.
    - Likelihood regularisation (the paper's ``L_lkd``, the negative log-likelihood of the
      features under their class's Gaussian without the ``(D/2) log 2 pi`` constant), averaged
      over the batch: ``lkd = mean_i d_{y_i} + log|Lambda_{y_i}| / 2``.
    - ``L_GM = L^m_cls + lambda L_lkd``.

    Terms: ``{"cls": cls, "lkd": lkd}``; ``weights = {"cls": 1.0, "lkd": likelihood_weight}``.
    Defaults: ``alpha = 0.1``, ``likelihood_weight = 0.01`` and identity covariance, as in the
    authors' TensorFlow ``lgm_logits`` (WeitaoVan/L-GM-loss), whose regulariser is
    ``lambda * l2_loss(x - mu_y) / N`` = ``lambda * mean_i ||x_i - mu_{y_i}||^2 / 2``, equal to
    ``lkd`` above for identity covariance. The paper's equation numbers could not be read from
    the sources we had; the formulas follow its Sec. 3.1-3.2 (the PyTorch port
    YirongMao/softmax_variants cites them as Eqs. 17-18 for the diagonal case).

    ``covariance="identity"``: ``Lambda_k = I`` (``d_k = ||x - mu_k||^2 / 2``).
    ``covariance="diagonal"``: learnable ``Lambda_k = diag(exp(log_var[k]))``, ``log_var``
    ``(K, D)`` initialised to 0. (The port above leaves ``Lambda`` out of its ``lkd``
    distance; we use the true negative log-likelihood.)

    Parameters: the means ``weight`` ``(K, D)`` (the shape of ``nn.Linear(D, K).weight``,
    Xavier-uniform initialised as in the authors' code) and, for ``"diagonal"``, ``log_var``.
    ``logits(embedding)`` returns ``s_k`` without margin. Distances use the expansion
    ``|x|^2 - 2 x.mu + |mu|^2`` (matrix products, ``O(B K)`` memory), clamped at 0.
    """

    consumes = "embedding"
    #: What ``chanloss tune`` varies (see chanloss.losses.search).
    search_space = {"alpha": Uniform(0.0, 1.0), "likelihood_weight": LogUniform(1e-4, 0.1)}
    provides_logits = True

    def __init__(
        self,
        *,
        num_classes: int,
        embedding_dim: int,
        alpha: float = 0.1,
        likelihood_weight: float = 0.01,
        covariance: str = "identity",
        check_finite: bool = False,
    ) -> None:
        super().__init__(
            weights={
                "cls": 1.0,
                "lkd": check_float("likelihood_weight", likelihood_weight, low=0.0),
            },
            check_finite=check_finite,
        )
        self.num_classes = check_int("num_classes", num_classes, low=1)
        self.embedding_dim = check_int("embedding_dim", embedding_dim, low=1)
        self.alpha = check_float("alpha", alpha, low=0.0)
        self.covariance = check_choice("covariance", covariance, COVARIANCES)
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.embedding_dim))
        nn.init.xavier_uniform_(self.weight)
        self.log_var: nn.Parameter | None = None
        if self.covariance == "diagonal":
            self.log_var = nn.Parameter(torch.zeros(self.num_classes, self.embedding_dim))

    # -- the API -----------------------------------------------------------------------------
    def compute_logits(self, x: Tensor) -> Tensor:
        """Class scores ``s_k = -d_k - log|Lambda_k| / 2`` ``(B, K)`` without margin."""
        dist, half_logdet = self._distances(x)
        return -dist - half_logdet

    def compute_terms(self, inputs: Tensor, labels: Tensor, **kwargs: object) -> dict[str, Tensor]:
        if kwargs:
            raise ValueError(f"LGMLoss takes no keyword arguments, got {sorted(kwargs)}")
        dist, half_logdet = self._distances(inputs)
        scale = 1.0 + self.alpha * F.one_hot(labels, self.num_classes).to(dist.dtype)
        cls = F.cross_entropy(-dist * scale - half_logdet, labels)

        mu = self.weight.to(inputs.dtype).index_select(0, labels)
        sq = (inputs - mu).square()
        if self.log_var is None:
            lkd = 0.5 * sq.sum(dim=1)
        else:
            log_var = self.log_var.to(inputs.dtype).index_select(0, labels)
            lkd = 0.5 * (sq * torch.exp(-log_var)).sum(dim=1) + 0.5 * log_var.sum(dim=1)
        return {"cls": cls, "lkd": lkd.mean()}

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, "
            f"alpha={self.alpha:g}, covariance={self.covariance!r}, {super().extra_repr()}"
        )

    # -- internals ---------------------------------------------------------------------------
    def _distances(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``d`` ``(B, K)`` and ``log|Lambda_k| / 2`` ``(K,)`` (zeros for identity)."""
        mu = self.weight.to(x.dtype)
        if self.log_var is None:
            sq = (
                x.square().sum(dim=1, keepdim=True)
                - 2.0 * x @ mu.T
                + mu.square().sum(dim=1).unsqueeze(0)
            )
            return 0.5 * sq.clamp(min=0.0), x.new_zeros(self.num_classes)
        log_var = self.log_var.to(x.dtype)
        inv_var = torch.exp(-log_var)
        sq = (
            x.square() @ inv_var.T
            - 2.0 * x @ (mu * inv_var).T
            + (mu.square() * inv_var).sum(dim=1).unsqueeze(0)
        )
        return 0.5 * sq.clamp(min=0.0), 0.5 * log_var.sum(dim=1)
