"""Plain, direct transcription of SPEC section 3 (the IDDC loss), used as a reference.

It is deliberately naive: einsum correlations over every pair of positions, boolean-mask means
and the Weibull formula written out as in the SPEC. It keeps every correlation tensor alive and
gives NaN for an empty mask, exactly like the original code; it exists only so that the tests
and the benchmark can compare ``modules.loss.IDDCLoss`` against a second, independent reading
of the SPEC. Shared by ``tests/test_loss.py`` and ``benchmarks/bench_loss.py``.
"""

from typing import Dict, Sequence

import torch
import torch.nn.functional as F


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """F(a, b)[n, h, w, i, j] = <a[n, :, h, w], b[n, :, i, j]>."""
    return torch.einsum("nchw,ncij->nhwij", a, b)  # (B, h, w, h, w)


def reference_loss(
    f0: torch.Tensor,
    f1: torch.Tensor,
    z0: torch.Tensor,
    z1: torch.Tensor,
    shifts: Sequence[int],
    t_pos: float = 0.2,
    t_neg: float = 0.12,
    w0: float = 1.4,
    w1: float = 0.4,
) -> Dict[str, torch.Tensor]:
    """SPEC section 3 term by term; ``shifts`` are the negative shifts (partner (b + s) mod B)."""
    p0 = F.softmax(z0, dim=1)  # (B, K, h, w)
    p1 = F.softmax(z1, dim=1)  # (B, K, h, w)
    u0 = F.normalize(f0, dim=1)  # (B, C, h, w)
    u1 = F.normalize(f1, dim=1)  # (B, C, h, w)

    with torch.no_grad():
        fc_pos = correlation(u0, u1)  # (B, h, w, h, w)
    cc_pos = correlation(p0, p1)  # (B, h, w, h, w)
    mask = fc_pos > t_pos
    pos = (torch.exp(1 - cc_pos) * fc_pos.clamp(min=1e-8))[mask].mean()

    negs = []
    for s in shifts:
        u0_s = torch.roll(u0, shifts=-int(s), dims=0)  # partner (b + s) mod B
        p0_s = torch.roll(p0, shifts=-int(s), dims=0)
        with torch.no_grad():
            fc = correlation(u0, u0_s)  # (B, h, w, h, w)
        cc = correlation(p0, p0_s)  # (B, h, w, h, w)
        m = fc < t_neg
        negs.append((torch.exp(cc) * (1 - fc.clamp(min=0)))[m].mean())
    neg = sum(negs) / len(negs)

    x = p0.mean(dim=(0, 2, 3))  # (K,)
    x = x / x.max() + 1e-6
    lam, k = 5.0, 0.3
    g = (k / lam) * (x / lam) ** (k - 1) * torch.exp(-((x / lam) ** k))
    balance = g.mean()

    q = p0.mean(dim=(0, 2, 3))  # (K,)
    entropy = (q * torch.log(q.clamp(min=1e-6))).mean()

    total = pos + w0 * neg + w1 * balance / 50
    return {"pos": pos, "neg": neg, "balance": balance, "entropy": entropy, "total": total}
