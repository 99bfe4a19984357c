"""The IDDC training loss (docs/method.md#the-loss; official ``CrossContrastiveCorrelationLoss``).

The loss has four parts, all computed from two augmented crops of the same images:

* ``pos``: positions of view 0 and view 1 whose (frozen) backbone features agree
  (cosine > ``pos_threshold``) are pulled together in the cluster-probability space:
  mean over the selected pairs of ``exp(1 - <p0, p1>) * max(<u0, u1>, 1e-8)``.
* ``neg``: positions of an image and of another image of the batch (view 0 of image
  ``(b + s) mod B`` for a few shifts ``s``) whose features disagree (cosine < ``neg_threshold``)
  are pushed apart: mean of ``exp(<p0, p0_s>) * (1 - max(<u0, u0_s>, 0))``, averaged over the shifts.
* ``balance``: the imbalance-aware Weibull prior on the mean cluster probabilities of view 0.
* ``entropy``: ``mean_c q_c log q_c`` of the same mean probabilities, logged only.

``total = pos + neg_weight * neg + balance_weight * balance / 50`` (the ``/ 50`` is the official
``train_every.py``'s).

The values equal the original definition. What differs from the original code, on purpose:

* memory: the original keeps eight (B, h*w, h*w) correlation tensors (four of features, four of
  probabilities) plus boolean-index copies alive until backward, about 1 GB at B = 16, 28x28. Here
  each term is reduced to a scalar sum, a count and the gradients w.r.t. the (small) probability
  maps inside one custom autograd function, chunk by chunk of the batch, reusing two correlation
  buffers; nothing of size (h*w)^2 is kept for backward.
* masked means are ``sum(where(mask, value, 0)) / count``: an empty mask gives 0 (not NaN) and the
  counts are returned for logging.
* B = 2 works (the only shift is 1), B = 1 is an error; the shifts are the caller's (seeded by
  the training step rather than drawn from numpy's global generator).
* the loss is always computed in float32, also under bf16 autocast (bf16 cosines can flip the
  0.2 / 0.12 masks).
"""

import contextlib
import math
import operator
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from utils import distributed

__all__ = ["IDDCLoss", "weibull_balance"]

# Official train_every.py: loss = loss_pos + w0 * loss_neg + w1 * loss_bal / 50.
BALANCE_DIVISOR = 50.0

# Autocast can only be switched off for device types that know autocast.
_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu")

# Auto chunking: samples per chunk such that one (chunk, h*w, h*w) float32 buffer stays below
# this many elements (2^24 floats = 64 MiB: B = 16 at 14x14 or 28x28 is one chunk, or two for
# the negatives, which split the batch where the partner index wraps around).
# Chunks bound the peak memory. Much smaller chunks were up to ~25% faster on an idle 2-core CPU
# (cache), but they multiply the number of kernels / parallel regions, and on an oversubscribed
# CPU (data-loader workers, other jobs) each parallel region waits for a descheduled thread: with
# one image per chunk a step was ~5x slower there than with whole-batch chunks.
_AUTO_CHUNK_ELEMENTS = 1 << 24


def weibull_balance(x: torch.Tensor, scale: float = 5.0, shape: float = 0.3) -> torch.Tensor:
    """Mean over clusters of the Weibull density ``g(x) = (k/l) (x/l)^(k-1) exp(-(x/l)^k)``.

    ``x`` (K,) are the mean cluster probabilities, normalised by their maximum (+1e-6) by the
    caller. With k < 1 the density is decreasing and steep near 0, so a dying cluster is punished
    hard while a small but alive one is only pushed mildly (docs/method.md#the-loss).
    """
    z = x / scale  # (K,)
    return ((shape / scale) * torch.pow(z, shape - 1.0) * torch.exp(-torch.pow(z, shape))).mean()


def _chunks(batch: int, shift: int, chunk: int, rows: Tuple[int, int]) -> List[Tuple[int, int, int]]:
    """Row ranges ``(start, stop, partner_start)`` covering ``rows`` for partner ``(b + shift) % B``.

    The rows are first split at the wrap-around point ``B - shift`` so that, within a range,
    the partner rows are a contiguous slice too (no rolled copies of the inputs are needed).
    ``rows`` is the whole batch in one process, a process's share of the global batch under DDP.
    """
    first, last = rows
    wrap = batch - shift
    pieces = [(first, min(last, wrap), shift), (max(first, wrap), last, shift - batch)]
    out = []
    for lo, hi, offset in pieces:
        if hi <= lo:
            continue
        n_chunks = -(-(hi - lo) // chunk)  # ceil; then sizes as even as possible, each <= chunk
        bounds = [lo + (hi - lo) * i // n_chunks for i in range(n_chunks + 1)]
        out.extend((start, stop, start + offset) for start, stop in zip(bounds[:-1], bounds[1:]))
    return out


class _MaskedCorrelationSum(torch.autograd.Function):
    """Sum and count of a masked, weighted exp of a probability correlation; light backward.

    For pairs of positions (i, j) of image b and its partner image b' = (b + shift) mod B::

        f = <ua[b, i], ub[b', j]>      feature cosine, no gradient
        c = <pa[b, i], pb[b', j]>      probability correlation, differentiable
        positive:  mask = f > t,  value = exp(1 - c) * max(f, 1e-8)
        negative:  mask = f < t,  value = exp(c) * (1 - max(f, 0))

    Returns ``(sum over the mask of value, mask count)``. Because the output is a scalar, the
    gradients w.r.t. ``pa`` and ``pb`` (only (B, h*w, K) each) are computed right away in forward
    while the (chunk, h*w, h*w) buffers are at hand, and backward only scales them by the incoming
    gradient. So no (h*w)^2 tensor outlives forward, and the whole term needs two such buffers
    (plus a boolean mask) of one chunk at a time.
    """

    @staticmethod
    def forward(ctx, ua_t, ub, pa_t, pb, shift, positive, threshold, chunk, need_grad, rows):
        # ua_t (B, N, C) normalised features of the rows; ub (B, C, N) of the partners (unshifted:
        # the partner of row b is row (b + shift) % B). pa_t (B, N, K), pb (B, K, N) probabilities.
        # Only rows[0] <= b < rows[1] are summed (a process's share of the global batch).
        batch, n_pos_a, _ = ua_t.shape
        n_pos_b = ub.shape[2]
        chunks = _chunks(batch, shift, chunk, rows)
        rows = max(stop - start for start, stop, _ in chunks)
        f_buf = ua_t.new_empty((rows, n_pos_a, n_pos_b))  # (b, N, N) feature cosines, then weights
        c_buf = ua_t.new_empty((rows, n_pos_a, n_pos_b))  # (b, N, N) prob. correlations, then values
        fast_pos = positive and threshold >= 1e-8
        m_buf = None if fast_pos else torch.empty((rows, n_pos_a, n_pos_b), dtype=torch.bool, device=ua_t.device)

        total = ua_t.new_zeros(())
        count = torch.zeros((), dtype=torch.int64, device=ua_t.device)
        grad_pa = torch.zeros_like(pa_t, memory_format=torch.contiguous_format) if need_grad else None  # (B, N, K)
        grad_pb = torch.zeros_like(pb, memory_format=torch.contiguous_format) if need_grad else None  # (B, K, N)

        for start, stop, p_start in chunks:
            b = stop - start
            p_stop = p_start + b
            f = torch.bmm(ua_t[start:stop], ub[p_start:p_stop], out=f_buf[:b])  # (b, N, N)
            if fast_pos:
                # Fast path (the usual t+ = 0.2): on the mask f > t >= 1e-8, so max(f, 1e-8) = f and
                # every selected weight is > 0: one in-place pass gives where(f > t, f, 0) and the
                # count is the number of nonzero weights.
                w = F.threshold_(f, threshold, 0.0)  # (b, N, N)
                count += torch.count_nonzero(w)
            else:
                mask = m_buf[:b]  # (b, N, N)
                if positive:
                    torch.gt(f, threshold, out=mask)
                    w = f.clamp_(min=1e-8)  # max(f, 1e-8), as the original
                else:
                    torch.lt(f, threshold, out=mask)
                    w = f.clamp_(min=0.0).neg_().add_(1.0)  # 1 - max(f, 0), as the original
                count += torch.count_nonzero(mask)
                w.masked_fill_(mask.logical_not_(), 0.0)  # (b, N, N) weights, 0 off the mask
                del mask

            # Positive term: exp(1 - c) = e * exp(-c); the bmm of the negated (small) rows gives -c
            # directly, saving passes over the (b, N, N) buffer; e scales the sum and gradients at the end.
            a_rows = -pa_t[start:stop] if positive else pa_t[start:stop]  # (b, N, K)
            g = torch.bmm(a_rows, pb[p_start:p_stop], out=c_buf[:b])  # (b, N, N): -c or c
            g.exp_().mul_(w)  # (b, N, N): exp(-c) * w  or  exp(c) * w  (= d sum / d c, up to -e)
            total += g.sum()
            if need_grad:
                # d sum / d pa[b, i, k] = sum_j G[b, i, j] pb[b', k, j];  d sum / d pb[b', k, j] = sum_i G pa.
                grad_pa[start:stop].baddbmm_(g, pb[p_start:p_stop].transpose(1, 2))  # (b, N, K)
                grad_pb[p_start:p_stop].baddbmm_(pa_t[start:stop].transpose(1, 2), g)  # (b, K, N)
            del f, g, w

        if positive:
            e = math.e
            total = total * e
            if need_grad:
                grad_pa.mul_(-e)
                grad_pb.mul_(-e)
        ctx.grads = (grad_pa, grad_pb)
        ctx.mark_non_differentiable(count)
        return total, count

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total, grad_count):
        grad_pa, grad_pb = ctx.grads  # kept (they are small) so that retain_graph=True works
        if grad_pa is None:  # forward ran without a need for gradients
            return (None,) * 10
        return None, None, grad_pa * grad_total, grad_pb * grad_total, None, None, None, None, None, None


def _masked_sum(ua_t, ub, pa_t, pb, shift, positive, threshold, chunk, rows=None):
    need_grad = torch.is_grad_enabled() and (pa_t.requires_grad or pb.requires_grad)
    rows = (0, ua_t.shape[0]) if rows is None else (int(rows[0]), int(rows[1]))
    return _MaskedCorrelationSum.apply(
        ua_t, ub, pa_t, pb, int(shift), bool(positive), float(threshold), int(chunk), bool(need_grad), rows
    )


ShiftsLike = Union[Sequence[int], np.ndarray, torch.Tensor]


class IDDCLoss(nn.Module):
    """IDDC loss: positive / negative correlation terms, Weibull balance prior, entropy (logged).

    Args:
        pos_threshold: t+; pairs of view 0 / view 1 positions with feature cosine > t+ are positives.
        neg_threshold: t-; pairs of an image / a shifted image with feature cosine < t- are negatives.
        neg_weight: w0 (lambda1) in ``total``.
        balance_weight: w1 (lambda2) in ``total`` (0.4 for S/16, 0.25 for S/8 on COCO-27).
        num_negatives: how many batch shifts are drawn for the negatives (3 in the original).
        weibull_scale, weibull_shape: l and k of the Weibull prior (5 and 0.3 in the original).
        chunk_size: images per chunk of the correlation computation; ``None`` picks it so that one
            (chunk, h*w, h*w) float32 buffer holds at most 2^24 elements. Only speed and memory
            depend on it, not the values (beyond float rounding).
    """

    def __init__(
        self,
        pos_threshold: float = 0.2,
        neg_threshold: float = 0.12,
        neg_weight: float = 1.4,
        balance_weight: float = 0.4,
        num_negatives: int = 3,
        weibull_scale: float = 5.0,
        weibull_shape: float = 0.3,
        chunk_size: Optional[int] = None,
    ):
        super().__init__()
        if int(num_negatives) != num_negatives or num_negatives < 1:
            raise ValueError(f"num_negatives must be a positive integer, got {num_negatives!r}")
        if chunk_size is not None and (int(chunk_size) != chunk_size or chunk_size < 1):
            raise ValueError(f"chunk_size must be None or a positive integer, got {chunk_size!r}")
        if weibull_scale <= 0 or weibull_shape <= 0:
            raise ValueError("weibull_scale and weibull_shape must be positive")
        self.pos_threshold = float(pos_threshold)
        self.neg_threshold = float(neg_threshold)
        self.neg_weight = float(neg_weight)
        self.balance_weight = float(balance_weight)
        self.num_negatives = int(num_negatives)
        self.weibull_scale = float(weibull_scale)
        self.weibull_shape = float(weibull_shape)
        self.chunk_size = None if chunk_size is None else int(chunk_size)

    def extra_repr(self) -> str:
        return (
            f"pos_threshold={self.pos_threshold}, neg_threshold={self.neg_threshold}, "
            f"neg_weight={self.neg_weight}, balance_weight={self.balance_weight}, "
            f"num_negatives={self.num_negatives}"
        )

    # ------------------------------------------------------------------ shifts
    def _check_shifts(self, neg_shifts: ShiftsLike, batch_size: int) -> List[int]:
        if isinstance(neg_shifts, torch.Tensor):
            neg_shifts = neg_shifts.tolist()
        elif isinstance(neg_shifts, np.ndarray):
            neg_shifts = neg_shifts.tolist()
        try:
            shifts = list(neg_shifts)
        except TypeError:
            raise ValueError(f"neg_shifts must be a sequence of ints, got {neg_shifts!r}") from None
        if len(shifts) != self.num_negatives:
            raise ValueError(
                f"neg_shifts must hold num_negatives={self.num_negatives} shifts, got {len(shifts)}: {shifts}"
            )
        out = []
        for s in shifts:
            if isinstance(s, bool):
                raise ValueError(f"neg_shifts must be ints, got {s!r}")
            try:
                s = operator.index(s)
            except TypeError:
                raise ValueError(f"neg_shifts must be ints, got {s!r}") from None
            if not 1 <= s <= batch_size - 1:
                raise ValueError(f"each negative shift must be in 1..B-1 = 1..{batch_size - 1}, got {s}")
            out.append(int(s))
        return out

    # ------------------------------------------------------------------ checks
    @staticmethod
    def _check_inputs(feats, feats_aug, logits, logits_aug):
        named = (("feats", feats), ("feats_aug", feats_aug), ("logits", logits), ("logits_aug", logits_aug))
        for name, t in named:
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 4:
                raise ValueError(f"{name} must be 4-D (B, C, h, w), got shape {tuple(t.shape)}")
            if not t.is_floating_point():
                raise TypeError(f"{name} must be a floating point tensor, got {t.dtype}")
            if t.device != feats.device:
                raise ValueError(f"{name} is on {t.device} but feats is on {feats.device}")
        if feats_aug.shape != feats.shape:
            raise ValueError(
                f"feats and feats_aug must have the same shape, got {tuple(feats.shape)} and {tuple(feats_aug.shape)}"
            )
        if logits_aug.shape != logits.shape:
            raise ValueError(
                "logits and logits_aug must have the same shape, "
                f"got {tuple(logits.shape)} and {tuple(logits_aug.shape)}"
            )
        if logits.shape[0] != feats.shape[0] or logits.shape[2:] != feats.shape[2:]:
            raise ValueError(
                "feats (B, C, h, w) and logits (B, K, h, w) must agree in batch size and map size, "
                f"got {tuple(feats.shape)} and {tuple(logits.shape)}"
            )
        if min(feats.shape[1], logits.shape[1], feats.shape[2], feats.shape[3]) < 1:
            raise ValueError(f"empty input: feats {tuple(feats.shape)}, logits {tuple(logits.shape)}")

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        feats: torch.Tensor,
        feats_aug: torch.Tensor,
        logits: torch.Tensor,
        logits_aug: torch.Tensor,
        neg_shifts: ShiftsLike,
        across_processes: bool = False,
    ) -> Dict[str, object]:
        """Loss terms for one step.

        Args:
            feats, feats_aug: (B, C, h, w) backbone features of the two crops (no gradient flows
                into them: the feature side only selects and weights pairs).
            logits, logits_aug: (B, K, h, w) classifier outputs before softmax.
            neg_shifts: ``num_negatives`` ints in 1..B-1: the partner of image b is image (b + s) mod B
                of view 0; B is the global batch with ``across_processes``. The caller draws them
                (training: ``engine.training.negative_shifts``, uniform over 1..B-2 as the original's
                ``randint(1, B - 1)``, seeded by the step so that resumed and multi-process runs agree).
            across_processes: the inputs are this process's contiguous share (rank order) of a global
                batch split equally over a torch.distributed process group; the loss is the one of the
                global batch (see ``_forward_global``). Without a process group of 2 or more it is the
                single-process loss.

        Returns a dict of 0-dim float32 tensors ``pos``, ``neg``, ``balance``, ``entropy``, ``total``,
        plus, for logging, ``n_pos`` and ``n_neg`` (0-dim int64: selected pairs; ``n_neg`` summed over
        the shifts), ``n_neg_per_shift`` (num_negatives,) int64 and ``neg_shifts`` (tuple of ints).
        ``objective`` is the tensor to call ``backward()`` on: ``total`` itself in one process; under
        ``across_processes`` this process's part of it, such that the gradients summed over the
        processes are those of the global ``total`` (which is then a detached, global value).
        """
        self._check_inputs(feats, feats_aug, logits, logits_aug)
        world = distributed.world_size() if across_processes else 1
        batch = feats.shape[0] * world
        if batch < 2:
            raise ValueError(f"IDDCLoss needs a batch of at least 2 images for the negatives, got B={batch}")
        shifts = self._check_shifts(neg_shifts, batch)

        dev_type = feats.device.type
        no_autocast = (
            torch.autocast(device_type=dev_type, enabled=False)
            if dev_type in _AUTOCAST_DEVICES
            else contextlib.nullcontext()
        )
        with no_autocast:
            inputs = (feats.float(), feats_aug.float(), logits.float(), logits_aug.float(), shifts)
            if world == 1:
                out = self._forward_fp32(*inputs)
                out["objective"] = out["total"]
                return out
            return self._forward_global(*inputs, world)

    def _forward_fp32(self, f0, f1, z0, z1, shifts: List[int]) -> Dict[str, object]:
        batch, _, h, w = f0.shape
        n = h * w
        chunk = self.chunk_size or max(1, _AUTO_CHUNK_ELEMENTS // (n * n))

        p0 = F.softmax(z0, dim=1).flatten(2)  # (B, K, N)
        p1 = F.softmax(z1, dim=1).flatten(2)  # (B, K, N)
        with torch.no_grad():
            u0 = F.normalize(f0, dim=1).flatten(2)  # (B, C, N)
            u1 = F.normalize(f1, dim=1).flatten(2)  # (B, C, N)
        u0_t = u0.transpose(1, 2)  # (B, N, C)
        p0_t = p0.transpose(1, 2)  # (B, N, K)

        # Positive term: view 0 against view 1 of the same image.
        pos_sum, n_pos = _masked_sum(u0_t, u1, p0_t, p1, 0, True, self.pos_threshold, chunk)
        pos = pos_sum / n_pos.clamp(min=1)  # 0 when nothing is selected

        # Negative terms: view 0 against view 0 of image (b + s) mod B. Shifts s and B - s select
        # the same pairs (image b with b + s is image b + s with b, correlations transposed), so
        # they give the same term: compute each class once and weight it by its multiplicity.
        canon = [min(s, batch - s) for s in shifts]
        terms: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
        for s in canon:
            if s not in terms:
                neg_sum, n_neg_s = _masked_sum(u0_t, u0, p0_t, p0, s, False, self.neg_threshold, chunk)
                terms[s] = (neg_sum / n_neg_s.clamp(min=1), n_neg_s)
        neg = sum(canon.count(s) * terms[s][0] for s in terms) / len(shifts)
        n_neg_per_shift = torch.stack([terms[s][1] for s in canon])  # (num_negatives,)

        # Balance (Weibull) and entropy: mean cluster probabilities of view 0 only, as the original.
        q = p0.mean(dim=(0, 2))  # (K,)
        x = q / q.max() + 1e-6  # (K,)
        balance = weibull_balance(x, self.weibull_scale, self.weibull_shape)
        entropy = (q * torch.log(q.clamp(min=1e-6))).mean()

        total = pos + self.neg_weight * neg + self.balance_weight * balance / BALANCE_DIVISOR
        return {
            "pos": pos,
            "neg": neg,
            "balance": balance,
            "entropy": entropy,
            "total": total,
            "n_pos": n_pos,
            "n_neg": n_neg_per_shift.sum(),
            "n_neg_per_shift": n_neg_per_shift,
            "neg_shifts": tuple(shifts),
        }

    def _forward_global(self, f0, f1, z0, z1, shifts: List[int], world: int) -> Dict[str, object]:
        """The loss of the global batch, from this process's share of it.

        Deliberately the single-process objective, split: view 0's normalised features and
        probabilities are gathered from every process (the probabilities with autograd, so the
        gradients of the partners flow back to the process that owns them), image b's negative
        partner is image (b + s) mod B of the *global* batch, each masked mean is a global sum over
        a global count, and the balance and entropy terms use the global mean cluster
        probabilities. ``objective`` holds this process's share of the sums over the global counts
        plus 1/N of the (replicated) balance term, so the gradients summed over the processes are
        the global loss's gradients; the caller sums them (it does not average them).
        """
        local_batch, _, h, w = f0.shape
        n = h * w
        chunk = self.chunk_size or max(1, _AUTO_CHUNK_ELEMENTS // (n * n))
        first = distributed.rank() * local_batch
        rows = (first, first + local_batch)

        p0 = F.softmax(z0, dim=1).flatten(2)  # (b, K, N)
        p1 = F.softmax(z1, dim=1).flatten(2)  # (b, K, N)
        with torch.no_grad():
            u0 = F.normalize(f0, dim=1).flatten(2)  # (b, C, N)
            u1 = F.normalize(f1, dim=1).flatten(2)  # (b, C, N)
            u0_all = distributed.gather_batch(u0)  # (B, C, N)
        p0_all = distributed.gather_batch_with_grad(p0)  # (B, K, N)
        batch = p0_all.shape[0]

        pos_sum, n_pos = _masked_sum(u0.transpose(1, 2), u1, p0.transpose(1, 2), p1, 0, True, self.pos_threshold, chunk)
        canon = [min(s, batch - s) for s in shifts]
        unique = sorted(set(canon))
        neg_parts = [
            _masked_sum(
                u0_all.transpose(1, 2),
                u0_all,
                p0_all.transpose(1, 2),
                p0_all,
                s,
                False,
                self.neg_threshold,
                chunk,
                rows,
            )
            for s in unique
        ]

        # One all-reduce of every local sum and count (float64: counts stay exact).
        local = torch.stack(
            [pos_sum.detach().double(), n_pos.double()]
            + [v for s_sum, s_count in neg_parts for v in (s_sum.detach().double(), s_count.double())]
        )
        glob = distributed.all_reduce_sum(local)  # (2 + 2 * len(unique),)
        pos_count = glob[1].clamp(min=1).float()
        pos = (glob[0] / glob[1].clamp(min=1)).float()
        pos_part = pos_sum / pos_count
        neg_counts = glob[3::2].clamp(min=1)  # (len(unique),)
        neg_terms = (glob[2::2] / neg_counts).float()  # (len(unique),)
        weights = [canon.count(s) / len(shifts) for s in unique]
        neg = sum(weight * term for weight, term in zip(weights, neg_terms))
        neg_part = sum(
            weight * s_sum / count.float() for weight, (s_sum, _), count in zip(weights, neg_parts, neg_counts)
        )
        n_neg_per_shift = torch.stack([glob[3 + 2 * unique.index(s)].round().long() for s in canon])  # (num_negatives,)

        q = p0_all.mean(dim=(0, 2))  # (K,) global mean cluster probabilities, on every process
        x = q / q.max() + 1e-6  # (K,)
        balance = weibull_balance(x, self.weibull_scale, self.weibull_shape)
        entropy = (q * torch.log(q.clamp(min=1e-6))).mean()

        total = pos + self.neg_weight * neg + self.balance_weight * balance.detach() / BALANCE_DIVISOR
        objective = pos_part + self.neg_weight * neg_part + self.balance_weight * balance / BALANCE_DIVISOR / world
        return {
            "pos": pos,
            "neg": neg,
            "balance": balance.detach(),
            "entropy": entropy.detach(),
            "total": total,
            "objective": objective,
            "n_pos": glob[1].round().long(),
            "n_neg": n_neg_per_shift.sum(),
            "n_neg_per_shift": n_neg_per_shift,
            "neg_shifts": tuple(shifts),
        }
