"""Mutual-channel loss (MC-Loss): Chang et al., "The Devil is in the Channels", IEEE TIP 2020."""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from chanloss.core.validation import check_choice, check_float, check_int, check_labels
from chanloss.losses._mc_core import _MCCore, _Segment
from chanloss.losses.base import Loss
from chanloss.losses.registry import register_loss
from chanloss.losses.search import Choice, LogUniform


class _DefaultKeepRatio(float):
    """The default ``keep_ratio`` (2/3); a distinct object so that an explicit value is seen."""


_DEFAULT_KEEP_RATIO = _DefaultKeepRatio(2.0 / 3.0)
_POOLS = ("max", "avg")
GROUP_AVERAGES = ("pooled", "per_size")
PAPER_READINGS = ("equation", "code")


def _check_drop(drop: object, sizes: list[int]) -> dict[int, int]:
    """``drop`` (an int, or ``{group size: count}``) as ``{size: channels dropped}``."""
    if not isinstance(drop, dict):
        n = check_int("drop", drop, low=0)
        if n > sizes[0] - 1:
            raise ValueError(
                f"drop must be in [0, {sizes[0] - 1}] so that the smallest group ({sizes[0]} "
                f"channels) keeps at least one channel, got {n}"
            )
        return dict.fromkeys(sizes, n)
    out = {}
    for key, value in drop.items():
        size = int(key) if isinstance(key, str) and key.isdigit() else key
        if size not in sizes:
            raise ValueError(
                f"drop keys must be the group sizes {sizes} (channels per group), got {key!r}"
            )
        n = check_int(f"drop[{size}]", value, low=0)
        if n > size - 1:
            raise ValueError(
                f"drop[{size}] must be in [0, {size - 1}] so that a group of {size} channels "
                f"keeps at least one channel, got {n}"
            )
        out[size] = n
    missing = [s for s in sizes if s not in out]
    if missing:
        raise ValueError(f"drop must give a count for every group size {sizes}, missing {missing}")
    return out


@register_loss("mc")
class MCLoss(Loss):
    """Mutual-channel loss of Chang et al., "The Devil is in the Channels: Mutual-Channel Loss
    for Fine-Grained Image Classification", IEEE TIP 29 (2020): the paper's
    ``L_MC = L_dis - lambda * L_div`` (its discriminality and diversity components), with the
    weighting of the authors' code (PRIS-CV/Mutual-Channel-Loss).

    The ``C`` channels of the feature map ``F`` ``(B, C, H, W)`` are split into ``K`` groups of
    consecutive channels (``q, r = divmod(C, K)``: the first ``K - r`` groups have ``q`` channels,
    the last ``r`` have ``q + 1``). Two terms (see docs/design.md, "MC-Loss"):

    - ``dis`` (discriminality component, ``L_dis``): in training a random channel-wise attention mask keeps
      ``keep(g) = max(1, round(keep_ratio * size(g)))`` channels of every group (rounded half
      up), or all but ``drop`` of them (``drop``: an int for every group, or ``{size: count}``
      per group size, e.g. ``{10: 4, 11: 4}``); the masked features are pooled across the channels of
      each group (``pool="max"``: CCMP, ``"avg"``: CCAP), averaged over ``H, W`` and the ``(B, K)``
      scores go into cross-entropy with the labels.
    - ``div`` (diversity component; the paper's ``L_div`` is ``mean S``, see :meth:`from_paper`):
      a softmax over the ``H * W`` positions of every unmasked channel, CCMP per group, summed
      over the positions: ``S[b, g]`` in ``[1, size(g)]``. With ``group_average="pooled"``
      (default) ``div = 1 - mean_{b, g}(S[b, g] / size(g))``, one mean over all groups, in
      ``[0, 1 - 1/size]``. With ``"per_size"`` (the authors' ResNet-50 script, MC_ResNet50.py)
      the groups of each size ``s`` are averaged separately and the results added:
      ``div = sum_s (1 - mean_{b, g: size(g) = s} S[b, g] / s)``. The two are identical when
      every group has the same size; with 152 groups of 10 and 48 of 11 (2048 channels, 200
      classes) ``per_size`` is about twice ``pooled`` and weighs each 11-channel group
      ``152 / 48`` times as much as a 10-channel one.

    ``forward = alpha * dis + beta * div`` (the authors' VGG16 code: ``alpha=1.5``,
    ``beta=20``). The authors' ResNet-50 recipe is ``CE + 0.0005 * (dis + 10 * div)`` with
    ``group_average="per_size"`` and ``drop=4`` (6 of 10 and 7 of 11 channels kept): a config
    entry ``{name: mc, weight: 0.0005, alpha: 1.0, beta: 10.0, drop: 4, group_average:
    per_size}``.

    The mask is one ``(C,)`` draw per call shared by the batch (the authors' behaviour) or one
    per sample with ``per_sample_mask=True``; it is drawn on the features' device from
    ``generator`` when given. In ``eval()`` mode, or when ``mask`` (``(C,)`` or ``(B, C)``,
    multiplied into the features; 0/1 or bool) is passed, nothing is drawn.

    Gradients of a group maximum are split equally between tied channels (as with ``amax``).
    Dropped channels (0 after masking) never take the ``dis`` gradient: where every kept channel
    of a group is negative the group's masked maximum is a constant 0, and where the kept
    maximum is exactly 0 the kept channels at 0 take it. Backward is first order only; the
    hot path is a custom autograd function (``chanloss.losses._mc_core``) without loops over
    classes.
    """

    consumes = "features"
    #: keep_ratio gets no default when drop is given (giving both is an error).
    exclusive_params = {"keep_ratio": "drop"}
    #: What ``chanloss tune`` varies (see chanloss.losses.search).
    search_space = {
        "alpha": LogUniform(1e-3, 10.0),
        "beta": LogUniform(1e-2, 100.0),
        "keep_ratio": Choice((1 / 3, 2 / 3, 1.0)),
        "pool": Choice(("max", "avg")),
    }

    def __init__(
        self,
        *,
        num_classes: int,
        num_channels: int,
        alpha: float = 1.5,
        beta: float = 20.0,
        keep_ratio: float = _DEFAULT_KEEP_RATIO,
        drop: int | dict[int, int] | None = None,
        pool: str = "max",
        per_sample_mask: bool = False,
        group_average: str = "pooled",
        check_finite: bool = False,
    ) -> None:
        alpha = check_float("alpha", alpha, low=0.0)
        beta = check_float("beta", beta, low=0.0)
        super().__init__(weights={"dis": alpha, "div": beta}, check_finite=check_finite)
        self.num_classes = check_int("num_classes", num_classes, low=1)
        self.num_channels = check_int("num_channels", num_channels, low=1)
        if self.num_channels < self.num_classes:
            raise ValueError(
                f"num_channels must be >= num_classes (at least one channel per class), "
                f"got num_channels={self.num_channels} < num_classes={self.num_classes}"
            )
        self.pool = check_choice("pool", pool, _POOLS)
        self.group_average = check_choice("group_average", group_average, GROUP_AVERAGES)
        self.per_sample_mask = bool(per_sample_mask)
        q, r = divmod(self.num_channels, self.num_classes)
        if q == 1:
            warnings.warn(
                f"MCLoss with num_channels={self.num_channels} and num_classes="
                f"{self.num_classes} has groups of one channel; their diversity term is constant",
                stacklevel=2,
            )
        if drop is not None:
            if keep_ratio is not _DEFAULT_KEEP_RATIO:
                raise ValueError(
                    f"give either keep_ratio or drop, not both: got keep_ratio={keep_ratio!r} "
                    f"and drop={drop!r}"
                )
            self.drop: dict[int, int] | None = _check_drop(drop, [q, q + 1] if r else [q])
            self.keep_ratio: float | None = None
        else:
            self.drop = None
            self.keep_ratio = check_float(
                "keep_ratio", keep_ratio, low=0.0, high=1.0, low_inclusive=False
            )
        sizes = (q,) * (self.num_classes - r) + (q + 1,) * r
        self.group_sizes: tuple[int, ...] = sizes
        segments, start, group = [], 0, 0
        for size, count in ((q, self.num_classes - r), (q + 1, r)):
            if count:
                segments.append(
                    _Segment(start, start + size * count, group, count, size, self._keep(size))
                )
                start, group = start + size * count, group + count
        self._segments = tuple(segments)
        index = torch.repeat_interleave(torch.arange(self.num_classes), torch.tensor(sizes))
        self.register_buffer("group_index", index, persistent=False)
        self.register_buffer("_inv_sizes", 1.0 / torch.tensor(sizes, dtype=torch.float64), False)

    def _keep(self, size: int) -> int:
        if self.drop is not None:
            return size - self.drop[size]
        return max(1, math.floor(self.keep_ratio * size + 0.5))  # type: ignore[operator]

    @property
    def group_keep(self) -> tuple[int, ...]:
        """Channels kept by the channel-wise attention in each group, ``(K,)``."""
        return tuple(seg.keep for seg in self._segments for _ in range(seg.groups))

    @classmethod
    def from_paper(
        cls, *, mu: float, lam: float, reading: str = "equation", **kwargs: object
    ) -> MCLoss:
        """Build the loss from the paper's ``mu`` and ``lambda``.

        The paper (Chang et al., TIP 2020, arXiv 2002.04264) writes the objective as
        ``Loss = L_CE + mu * L_MC`` and ``L_MC = L_dis - lambda * L_div`` (its equations 2 and 3,
        as numbered in the arXiv version), with ``L_div = 1/c sum_i h(F_i)`` the mean over the
        class groups of ``h(F_i) = sum_positions max_channels softmax`` (our ``S``, in
        ``[1, xi]``; its equations 7 and 8). The authors' code instead weights the normalised
        ``1 - S / xi`` (our ``div``). Which of the two the paper's published values refer to
        is not stated, so both readings are offered (docs/mc-loss.md shows the numbers):

        - ``reading="equation"`` (default): ``lambda`` multiplies the paper's ``L_div = mean S``.
          ``-mu * lambda * mean S = mu * lambda * xi * (1 - mean S / xi) - const``, so
          ``alpha = mu`` and ``beta = mu * lambda * xi``: the same gradients for equal group
          sizes ``xi = C / K``. With uneven groups (``q`` and ``q + 1`` channels) the mean size
          ``C / K`` is used and a group gets within a factor ``1 +- 1/q`` of its gradient under
          the paper's weights (no ``group_average`` reproduces the un-normalised mean exactly).
        - ``reading="code"``: ``lambda`` multiplies the normalised ``div`` as in the authors'
          scripts, ``alpha = mu``, ``beta = mu * lambda``; ``xi`` does not enter.

        Under the ``"equation"`` reading a ``lambda`` meant for the code's form over-weights
        diversity by ``xi`` (3x for the VGG16 600-channel setting, 10.24x for ResNet-50).
        """
        mu = check_float("mu", mu, low=0.0)
        lam = check_float("lam", lam, low=0.0)
        reading = check_choice("reading", reading, PAPER_READINGS)
        if "alpha" in kwargs or "beta" in kwargs:
            raise ValueError(
                f"from_paper takes mu and lam instead of alpha and beta, got "
                f"{sorted(k for k in kwargs if k in ('alpha', 'beta'))}"
            )
        num_classes = check_int("num_classes", kwargs.get("num_classes"), low=1)
        num_channels = check_int("num_channels", kwargs.get("num_channels"), low=1)
        xi = num_channels / num_classes if reading == "equation" else 1.0
        return cls(alpha=mu, beta=mu * lam * xi, **kwargs)  # type: ignore[arg-type]

    # -- the API -------------------------------------------------------------------------------
    def forward(  # type: ignore[override]
        self,
        features: Tensor,
        labels: Tensor,
        *,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``alpha * dis + beta * div``, a 0-d tensor."""
        return super().forward(features, labels, mask=mask, generator=generator)

    def terms(  # type: ignore[override]
        self,
        features: Tensor,
        labels: Tensor,
        *,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """``{"dis": ..., "div": ...}``, unweighted 0-d tensors."""
        return super().terms(features, labels, mask=mask, generator=generator)

    def validate(self, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Features ``(B, C, H, W)`` with ``C == num_channels``; labels in ``[0, num_classes)``."""
        if not isinstance(inputs, Tensor):
            raise ValueError(
                f"features must be a torch.Tensor of shape (B, C, H, W), got {type(inputs).__name__}"
            )
        if not inputs.is_floating_point():
            raise ValueError(f"features must be a floating-point tensor, got dtype {inputs.dtype}")
        if inputs.dim() != 4:
            raise ValueError(
                f"features must have 4 dimensions (B, C, H, W), got shape {tuple(inputs.shape)}"
            )
        b, c, h, w = inputs.shape
        if b == 0:
            raise ValueError(
                f"features is an empty batch: expected B >= 1, got shape {(b, c, h, w)}"
            )
        if c != self.num_channels:
            raise ValueError(
                f"features must have num_channels={self.num_channels} channels (dimension 1 of "
                f"(B, C, H, W)), got {c} (shape {(b, c, h, w)})"
            )
        if h * w == 0:
            raise ValueError(f"features must have H, W >= 1, got shape {(b, c, h, w)}")
        labels = check_labels(
            labels, batch_size=b, num_classes=self.num_classes, validate_values=self.check_finite
        )
        return inputs, labels

    def compute_terms(  # type: ignore[override]
        self,
        inputs: Tensor,
        labels: Tensor,
        *,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        b, c = inputs.shape[:2]
        x = inputs.reshape(b, c, -1)
        kept = self._resolve_mask(inputs, mask, generator)
        bias = floor = None
        if kept is not None:
            bias, floor = self._bias_and_floor(kept, x.dtype)
        sums, scores = _MCCore.apply(x, bias, floor, self._segments, self.pool)
        dis = F.cross_entropy(scores, labels)
        if len(self._segments) == 1:
            div = 1.0 - sums.mean() / self._segments[0].size
        elif self.group_average == "per_size":
            first, second = self._segments  # at most two sizes, q and q + 1
            div = (1.0 - sums[:, first.groups_slice].mean() / first.size) + (
                1.0 - sums[:, second.groups_slice].mean() / second.size
            )
        else:
            div = 1.0 - (sums * self._inv_sizes.to(sums.dtype)).mean()
        return {"dis": dis, "div": div}

    # -- the mask ------------------------------------------------------------------------------
    def draw_mask(
        self,
        batch_size: int = 1,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """A channel-wise attention mask ``(batch_size, C)`` of 0/1 keeping ``keep(g)`` per group.

        Uniform keys are drawn for all channels at once and sorted inside every group (one
        ``argsort`` per run of equal-sized groups); the ``keep(g)`` lowest ranks are kept.
        """
        device = torch.device(device) if device is not None else self.group_index.device
        return self._draw_kept(batch_size, device, generator).to(dtype)

    def _draw_kept(
        self, rows: int, device: torch.device, generator: torch.Generator | None
    ) -> Tensor:
        if generator is not None and generator.device.type != device.type:
            raise ValueError(
                f"generator must be on the features' device {device}, got a generator on "
                f"{generator.device}"
            )
        keys = torch.rand(rows, self.num_channels, generator=generator, device=device)
        kept = torch.zeros(rows, self.num_channels, device=device, dtype=torch.bool)
        for seg in self._segments:
            cols = kept[:, seg.start : seg.stop]
            if seg.keep == seg.size:
                cols.fill_(True)
                continue
            shape = (rows, seg.groups, seg.size)
            ranks = keys[:, seg.start : seg.stop].view(shape).argsort(-1)[..., : seg.keep]
            cols.view(shape).scatter_(-1, ranks, True)
        return kept

    def _resolve_mask(
        self, features: Tensor, mask: Tensor | None, generator: torch.Generator | None
    ) -> Tensor | None:
        """The kept channels ``(1 or B, C)`` (bool) for this call, or ``None`` (all kept)."""
        if mask is not None:
            return self._check_mask(features, mask)
        if not self.training or all(seg.keep == seg.size for seg in self._segments):
            return None
        rows = features.shape[0] if self.per_sample_mask else 1
        return self._draw_kept(rows, features.device, generator)

    def _check_mask(self, features: Tensor, mask: object) -> Tensor:
        b, c = features.shape[:2]
        if not isinstance(mask, Tensor):
            raise ValueError(
                f"mask must be a torch.Tensor of shape ({c},) or ({b}, {c}), "
                f"got {type(mask).__name__}"
            )
        if mask.shape not in ((c,), (b, c)):
            raise ValueError(f"mask must have shape ({c},) or ({b}, {c}), got {tuple(mask.shape)}")
        if mask.device != features.device:
            raise ValueError(
                f"mask must be on the features' device {features.device}, got {mask.device}"
            )
        if mask.dtype == torch.bool:
            return mask.reshape(-1, c)
        if not mask.is_floating_point():
            raise ValueError(
                f"mask must be a bool or floating-point tensor, got dtype {mask.dtype}"
            )
        mask = mask.detach()
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(
                "mask must hold only 0 and 1 (drop or keep a channel), got other values"
            )
        return (mask != 0).reshape(-1, c)

    def _bias_and_floor(self, kept: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``bias`` ``(R, C, 1)``: 0 kept, -inf dropped; ``floor`` ``(R, K, 1, 1)``: 0 where a
        group dropped a channel (its masked maximum is at least that channel's 0), else -inf."""
        inf = torch.tensor(float("inf"), dtype=dtype, device=kept.device)
        zero = torch.zeros((), dtype=dtype, device=kept.device)
        bias = torch.where(kept, zero, -inf)
        rows = kept.shape[0]
        dropped = [
            (~kept[:, seg.start : seg.stop]).view(rows, seg.groups, seg.size).any(-1)
            for seg in self._segments
        ]
        any_dropped = dropped[0] if len(dropped) == 1 else torch.cat(dropped, 1)
        floor = torch.where(any_dropped, zero, -inf)
        return bias.unsqueeze(-1), floor[..., None, None]

    # -- analysis helpers ----------------------------------------------------------------------
    def cross_channel_pool(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        """CCMP (or CCAP with ``pool="avg"``) of ``features * mask``: ``(B, K, H, W)``."""
        b, c, h, w = features.shape
        if mask is not None:
            kept = self._check_mask(features, mask)
            features = features * kept[..., None, None].to(features.dtype)
        parts = []
        for seg in self._segments:
            xv = features[:, seg.start : seg.stop].reshape(b, seg.groups, seg.size, h, w)
            parts.append(xv.amax(2) if self.pool == "max" else xv.mean(2))
        return torch.cat(parts, 1)

    def group_scores(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        """The ``(B, K)`` class scores of the ``dis`` term (no mask unless one is given)."""
        return self.cross_channel_pool(features, mask).mean((2, 3))

    def extra_repr(self) -> str:
        cwa = f"drop={self.drop}" if self.drop is not None else f"keep_ratio={self.keep_ratio:.4g}"
        return (
            f"num_classes={self.num_classes}, num_channels={self.num_channels}, {cwa}, "
            f"pool={self.pool!r}, per_sample_mask={self.per_sample_mask}, "
            f"group_average={self.group_average!r}, weights={self.weights}"
        )
