"""Label-free diagnostics of a run's clusters, logged every epoch (docs/training.md).

Without labels there is no validation metric, yet a user choosing the number of clusters K wants
to see what the clusters do: how the pixels are shared among them, how many are (nearly) empty,
and how confident the assignment is. These are measured on a fixed sample of training images,
the same every epoch (drawn from ``--seed``), so that the epochs and the variants of a sweep
compare on the same pixels.
"""

import numpy as np
import torch
import torch.nn.functional as F

from data.transforms import normalize_uint8
from utils.precision import autocast_context

DIAGNOSTIC_IMAGES = 32  # training images in the sample (all of them when there are fewer)
EMPTY_SHARE = 0.001  # a cluster with a smaller share of the sample's pixels counts as empty
FORWARD_IMAGES = 8  # images a backbone forward of the sample holds


def diagnostic_indices(num_items, seed, count=DIAGNOSTIC_IMAGES):
    """The training items of the sample: ``count`` distinct ones drawn from ``seed``, in order."""
    rng = np.random.default_rng([seed, 20])
    return sorted(rng.choice(num_items, size=min(count, num_items), replace=False).tolist())


def diagnostic_images(pairs, seed):
    """(n, 3, crop, crop) uint8: the first view of each sampled item's epoch-0 training pair
    (``data.pairs.TrainingPairs``), a fixed crop of the training image."""
    return torch.stack([pairs[(0, index)]["image"] for index in diagnostic_indices(len(pairs), seed)])


@torch.no_grad()
def cluster_diagnostics(backbone, heads, images, device, precision):
    """For each of ``heads`` (a module mapping backbone features to (codes, logits), as
    ``engine.training.TrainableHead``): each cluster's share of the sample's pixels, the number of
    empty clusters and the mean top probability. One backbone forward per chunk serves every head;
    the logits are upsampled to the image (bilinear) as in evaluation, image by image."""
    counts = [None] * len(heads)
    top_sums = [0.0] * len(heads)
    pixels = 0
    for chunk in images.split(FORWARD_IMAGES):
        inputs = normalize_uint8(chunk.to(device))  # (b, 3, H, W)
        with autocast_context(device, precision):
            features = backbone(inputs)  # (b, C, h, w)
        for index, head in enumerate(heads):
            with autocast_context(device, precision):
                logits = head(features)[1]  # (b, K, h, w)
            for image_logits in logits.float():
                upsampled = F.interpolate(image_logits[None], size=inputs.shape[-2:], mode="bilinear")  # (1, K, H, W)
                top, cluster = upsampled.softmax(dim=1).max(dim=1)  # (1, H, W) each
                found = torch.bincount(cluster.flatten(), minlength=upsampled.shape[1]).double().cpu()  # (K,)
                counts[index] = found if counts[index] is None else counts[index] + found
                top_sums[index] += top.double().sum().item()
        pixels += inputs.shape[0] * inputs.shape[-2] * inputs.shape[-1]
    results = []
    for count, top_sum in zip(counts, top_sums):
        shares = (count / pixels).tolist()
        results.append(
            {
                "images": images.shape[0],
                "num_clusters": len(shares),
                "empty_clusters": sum(share < EMPTY_SHARE for share in shares),
                "top_probability": top_sum / pixels,
                "largest_share": max(shares),
                "share": {str(cluster): share for cluster, share in enumerate(shares)},
            }
        )
    return results
