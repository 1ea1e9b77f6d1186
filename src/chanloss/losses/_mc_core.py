"""The hot path of MC-Loss (:class:`~chanloss.losses.mc_loss.MCLoss`): its channel groups laid
out as segments of equal-sized groups, and both branches (channel-wise attention with
cross-channel max or average pooling, and the diversity sums) in one autograd function with a
hand-written backward, without loops over classes or channels."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class _Segment(NamedTuple):
    """A run of consecutive groups that all have ``size`` channels (at most two per loss)."""

    start: int  # first channel
    stop: int  # one past the last channel
    first_group: int
    groups: int
    size: int
    keep: int  # channels kept per group by the channel-wise attention

    @property
    def groups_slice(self) -> slice:
        return slice(self.first_group, self.first_group + self.groups)


def _group_max(v: Tensor) -> Tensor:
    """``v.amax(-2, keepdim=True)`` for ``v`` ``(..., s, P)``.

    For ``s <= 4`` the upper half of the rows is folded onto the lower half with an elementwise
    ``maximum`` until one row is left (the middle row of an odd count is folded into the first
    row in place): at most three calls that read the data about once. CPU ``amax`` over so
    short a strided axis is slower; for longer groups it is the faster one.
    """
    s = v.shape[-2]
    if s > 4:
        return v.amax(-2, keepdim=True)
    while s > 1:
        half = s // 2
        folded = torch.maximum(v[..., :half, :], v[..., s - half :, :])
        if s % 2:
            first = folded[..., :1, :]
            torch.maximum(first, v[..., half : half + 1, :], out=first)
        v, s = folded, half
    return v


def _tie_share(indicator: Tensor, weight: Tensor, idle: Tensor | None = None) -> Tensor:
    """``weight`` divided by the number of channels that reach their group's maximum.

    ``indicator`` ``(B, n, s, P)`` holds 1 where a channel equals its group's maximum. Without
    ties there is one such channel per ``(b, g, p)``, less the ``idle`` (a count) positions
    where no channel can (a masked maximum raised to its floor); on CPU that is checked with
    one sum (exact below 2**24) and the per-position count is only built when there are ties.
    On other devices the count is always built, so that no step waits for the host.
    """
    rows = indicator.numel() // indicator.shape[2]
    if indicator.device.type == "cpu" and rows < 2**24:
        expected = rows if idle is None else rows - float(idle)
        if float(indicator.sum()) == expected:
            return weight
    count = indicator.sum(2, keepdim=True)
    return weight / (count if idle is None else count.clamp_min(1))


# CPU work is done a few samples at a time so that the passes over one block of the buffers
# after the first find it in cache; elsewhere the whole batch is one block.
_CPU_BLOCK_BYTES = 2**21


def _blocks(x: Tensor) -> list[slice]:
    b = x.shape[0]
    if x.device.type != "cpu":
        return [slice(0, b)]
    rows = max(1, _CPU_BLOCK_BYTES // max(1, x[0].numel() * x.element_size()))
    return [slice(i, min(b, i + rows)) for i in range(0, b, rows)]


def _rows(t: Tensor | None, block: slice) -> Tensor | None:
    """The block's rows of a per-sample tensor; a tensor shared by the batch (1 row) as is."""
    return t if t is None or t.shape[0] == 1 else t[block]


class _MCCore(torch.autograd.Function):
    """Both MC-Loss branches on ``(B, C, P)`` features, with a hand-written backward.

    Inputs: ``x`` ``(B, C, P)``; ``bias`` ``(R, C, 1)`` (0 for kept, -inf for dropped channels)
    or ``None``; ``floor`` ``(R, K, 1, 1)`` (0 for groups with a dropped channel, -inf
    otherwise) or ``None``. Outputs ``S`` ``(B, K)`` (diversity sums of the unmasked features)
    and the class scores ``(B, K)`` (GAP of the cross-channel pooled masked features).

    The max over a group of the masked features ``m * x`` is ``max(max over kept channels,
    0 if a channel was dropped)``, computed as ``max(group_max(x + bias), floor)``, so dropped
    channels never tie with kept ones. Group-max gradients go to the channels equal to the
    maximum (ties share equally, as with ``amax``), rebuilt in backward with one comparison
    against the saved maximum already raised to the floor: where that is the floor (every kept
    channel below 0) no channel is marked, so no separate test of the floor is needed; on CPU
    forward counts those positions for the no-ties check.

    Two ``(B, C, P)`` buffers per step: the softmax, and ``x + bias``, which backward turns into
    the gradient in place (a second backward with ``retain_graph`` rebuilds it). On CPU both
    passes run over blocks of samples (``_CPU_BLOCK_BYTES`` of features each) with block-sized
    scratch for the diversity branch's softmax backward, so that the several elementwise ops
    on a block find it in cache.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        bias: Tensor | None,
        floor: Tensor | None,
        segments: tuple[_Segment, ...],
        pool: str,
    ) -> tuple[Tensor, Tensor]:
        p = torch.empty_like(x)
        kept_buf = torch.empty_like(x) if pool == "max" and bias is not None else None
        kept = x if kept_buf is None else kept_buf
        p_views = [_seg_view(p, seg) for seg in segments]
        kept_views = [_seg_view(kept, seg) for seg in segments]
        floors = [None if floor is None else floor[:, seg.groups_slice] for seg in segments]
        sums, scores, pmaxes, kmaxes, idles = [], [], [], [], []
        if pool == "avg":
            chan_mean = x.mean(-1)
            if bias is not None:
                chan_mean = chan_mean.masked_fill(bias.squeeze(-1) < 0, 0.0)
            mean_views = [_seg_view(chan_mean[..., None], seg) for seg in segments]
        ctx.blocks = _blocks(x)
        for block in ctx.blocks:
            torch.softmax(x[block], -1, out=p[block])
            if kept_buf is not None:
                torch.add(x[block], _rows(bias, block), out=kept_buf[block])
            for j in range(len(segments)):
                pmax = _group_max(p_views[j][block])
                sums.append(pmax.sum((2, 3)))
                pmaxes.append(pmax)
                if pool == "max":
                    kmax = _group_max(kept_views[j][block])
                    if floors[j] is not None:
                        fl = _rows(floors[j], block)
                        if x.device.type == "cpu":  # positions below the floor (no channel's)
                            # (compared into a float buffer: a bool sum is several times slower)
                            idles.append(torch.lt(kmax, fl, out=torch.empty_like(kmax)).sum())
                        kmax = torch.maximum(kmax, fl)
                    kmaxes.append(kmax)
                    scores.append(kmax.mean((2, 3)))
                else:
                    scores.append(mean_views[j][block].mean((2, 3)))
        ctx.segments = segments
        ctx.pool = pool
        # x + bias is our own intermediate, on ctx (not saved): backward overwrites it
        ctx.kept_buf = kept_buf
        ctx.idles = idles or None
        ctx.save_for_backward(x, p, bias, floor, *pmaxes, *kmaxes)
        nblocks = len(ctx.blocks)
        return _assemble(sums, nblocks, len(segments)), _assemble(scores, nblocks, len(segments))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_sums: Tensor, grad_scores: Tensor
    ) -> tuple[Tensor, None, None, None, None]:
        segments: tuple[_Segment, ...] = ctx.segments
        blocks: list[slice] = ctx.blocks
        x, p, bias, floor, *maxes = ctx.saved_tensors
        pmaxes, kmaxes = maxes[: len(blocks) * len(segments)], maxes[len(blocks) * len(segments) :]
        masked_max = ctx.pool == "max" and bias is not None
        if masked_max and ctx.kept_buf is not None:
            grad, ctx.kept_buf = ctx.kept_buf, None  # x + bias, overwritten below
        elif masked_max:  # a second backward (retain_graph) after the first used it up
            grad = x + bias
        else:
            grad = torch.empty_like(x)
        npos = x.shape[2]
        rows_max = max(block.stop - block.start for block in blocks)
        ind = torch.empty((rows_max, *x.shape[1:]), dtype=x.dtype, device=x.device)
        div_grad = torch.empty_like(ind)
        # with the terms added up linearly (the usual case) every S gets the same gradient;
        # on CPU that is checked once, and the weights stay 0-d
        if grad_sums.device.type == "cpu" and bool((grad_sums == grad_sums[0, 0]).all()):
            grad_sums = grad_sums[0, 0].expand(grad_sums.shape)
        views = [
            (
                _seg_view(p, seg),
                _seg_view(grad, seg),
                _seg_view(x, seg),
                _seg_view(ind, seg),
                _seg_view(div_grad, seg),
                grad_sums[:, seg.groups_slice, None, None],
                grad_scores[:, seg.groups_slice, None, None] / npos,
                None if floor is None else floor[:, seg.groups_slice],
                None
                if bias is None
                else (bias[:, seg.start : seg.stop] == 0).view(
                    bias.shape[0], seg.groups, seg.size, 1
                ),
            )
            for seg in segments
        ]
        i = 0
        for block in blocks:
            rows = block.stop - block.start
            for j in range(len(segments)):
                pv, _, _, iv, _, gsum, _, _, _ = views[j]
                torch.eq(pv[block], pmaxes[i + j], out=iv[:rows])
                iv[:rows].mul_(_tie_share(iv[:rows], gsum[block]))
            # d/dp of sum_pos max_c p is the indicator (in ind, weighted): softmax backward
            torch._softmax_backward_data(
                ind[:rows], p[block], -1, x.dtype, grad_input=div_grad[:rows]
            )
            for j, seg in enumerate(segments):
                _, gv, xv, _, dv, _, gscore, fl, keep = views[j]
                gv, dv, gscore = gv[block], dv[:rows], gscore[block]
                if ctx.pool == "max":
                    # the saved maximum is raised to the floor: where no kept channel reaches
                    # it (all below 0, a dropped channel's 0 is the maximum) none is marked
                    torch.eq(gv if masked_max else xv[block], kmaxes[i + j], out=gv)
                    if fl is None:
                        share = _tie_share(gv, gscore)
                    elif ctx.idles is not None:
                        share = _tie_share(gv, gscore, ctx.idles[i + j])
                    else:
                        share = _tie_share(gv, gscore, gv.new_zeros(()))
                    torch.addcmul(dv, gv, share, out=gv)
                else:
                    step = gscore / seg.size
                    if keep is not None:
                        step = step * _rows(keep, block)
                    torch.add(dv, step, out=gv)
            i += len(segments)
        return grad, None, None, None, None


def _seg_view(t: Tensor, seg: _Segment) -> Tensor:
    """``(N, groups, size, P)`` view of a segment's channels of ``t`` ``(N, C, P)``."""
    if seg.start == 0 and seg.stop == t.shape[1]:
        return t.view(t.shape[0], seg.groups, seg.size, t.shape[2])
    return t[:, seg.start : seg.stop].view(t.shape[0], seg.groups, seg.size, t.shape[2])


def _assemble(parts: list[Tensor], nblocks: int, nsegments: int) -> Tensor:
    """``(B, K)`` from per-(block, segment) pieces listed block by block."""
    if len(parts) == 1:
        return parts[0]
    rows = [torch.cat(parts[i * nsegments : (i + 1) * nsegments], 1) for i in range(nblocks)]
    return torch.cat(rows, 0)
