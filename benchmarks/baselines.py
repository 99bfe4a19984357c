"""Plain transcriptions of what the optimised code computes, each written the direct way.

They serve twice, from this one place: the benchmarks measure the optimised code against them
(bench_loss.py, bench_train.py), and the tests use them as independent oracles (tests/test_loss.py,
tests/test_pairs.py). Training, evaluation and prediction never run them.

* ``reference_loss``: docs/method.md#the-loss term by term, as ``modules.loss.IDDCLoss`` must equal it:
  einsum correlations over every pair of positions, boolean-mask means and the Weibull formula
  written out. It keeps every correlation tensor alive and gives NaN for an empty mask, exactly
  like the original code.
* ``whole_image_pair``: the training-pair pipeline as first written (flip, resize and normalise
  the whole image, then crop), which ``data.pairs.TrainingPairs`` replaced. Its resize factors and
  crop offsets are transcribed here from the original's ``random_resize`` and
  ``random_crop_overlap`` (docs/method.md#training-pairs), not taken from ``data.pairs``, and it
  draws the same random numbers in the same order: flip, two resize factors, four crop fractions.
"""

import math
from typing import Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from data.transforms import label_tensor, to_normalized_tensor


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
    """docs/method.md#the-loss term by term; ``shifts`` are the negative shifts (partner (b + s) mod B)."""
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


def original_resized_size(width, height, rng, crop):
    """The original's ``random_resize``: width and height times ``(1.2 - 0.8) * p + 0.8`` for two
    uniform draws p, truncated to integers; then, where the original would fail on a side under the
    crop, the short side raised to the crop with the aspect kept (rounded up)."""
    factor_w, factor_h = ((1.2 - 0.8) * p + 0.8 for p in rng.random(2))
    resized_w, resized_h = int(width * factor_w), int(height * factor_h)
    short = min(resized_w, resized_h)
    if short < crop:
        resized_w, resized_h = math.ceil(resized_w * crop / short), math.ceil(resized_h * crop / short)
    return max(resized_w, crop), max(resized_h, crop)


def original_crop_offsets(width, height, rng, crop):
    """The original's ``random_crop_overlap``: four uniform draws place the first crop's left and top
    at rounded fractions of the free range, then the second's within half a crop of the first's,
    clipped to the image: ((top0, left0), (top1, left1))."""
    draws = rng.random(4)  # left of crop 0, top of crop 0, left of crop 1, top of crop 1
    left0 = round((width - crop) * draws[0])
    top0 = round((height - crop) * draws[1])
    offsets = []
    for first, length, draw in ((left0, width, draws[2]), (top0, height, draws[3])):
        low, high = max(first - crop // 2, 0), min(first + crop // 2, length - crop)
        offsets.append(low + round((high - low) * draw))
    left1, top1 = offsets
    return (top0, left0), (top1, left1)


def whole_image_pair(spec, data_root, split, item, seed, epoch, index, crop=224):
    """The training pair of ``item`` (key (epoch, index)) of dataset ``spec``, cut from the whole
    flipped and resized image and its whole mapped label: {'image', 'image_aug'} normalised float
    (3, crop, crop), 'label' (crop, crop) int64 class ids, 'crops' (top0, left0, top1, left1)."""
    rng = np.random.default_rng([seed, epoch, index])
    image, raw_label, source = spec.read_train_raw(data_root, split, item)
    label = Image.fromarray(spec.map_label(raw_label, source))
    if rng.random() <= 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
        label = label.transpose(Image.FLIP_LEFT_RIGHT)
    size = original_resized_size(*image.size, rng, crop)
    image = image.resize(size, Image.BILINEAR)
    label = label.resize(size, Image.NEAREST)
    (top0, left0), (top1, left1) = original_crop_offsets(*size, rng, crop)
    return {
        "image": to_normalized_tensor(image.crop((left0, top0, left0 + crop, top0 + crop))),
        "image_aug": to_normalized_tensor(image.crop((left1, top1, left1 + crop, top1 + crop))),
        "label": label_tensor(label.crop((left0, top0, left0 + crop, top0 + crop))).long(),
        "crops": (top0, left0, top1, left1),
    }
