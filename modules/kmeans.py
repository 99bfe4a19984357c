"""The "backbone + k-means" baseline of the peers' tables: frozen features, k-means, cosine logits.

The segmenter answers like IDDCModel (``forward`` gives features, codes and logits; ``num_classes``
and ``patch_size``), so the evaluation protocols, flips and the CRF treat it exactly as IDDC.
"""

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.errors import OptionError, ReportedError
from utils.optional import require
from utils.precision import autocast_context

# As requirements.txt writes it; a faiss GPU build, when installed instead, serves as well.
FAISS_REQUIREMENT = "faiss-cpu>=1.7.4"
# STEGO's cluster probe is evaluated as softmax(2 * cosine similarity) (its alpha = 2).
DEFAULT_LOGIT_SCALE = 2.0


class KMeansSegmenter(nn.Module):
    """Logits = ``logit_scale`` * cosine similarity of each L2-normalised patch feature to each
    normalised centroid, as STEGO's cluster probe scores its clusters."""

    def __init__(self, backbone, centroids, logit_scale=DEFAULT_LOGIT_SCALE):
        super().__init__()
        self.backbone = backbone.eval()
        for param in backbone.parameters():
            param.requires_grad_(False)
        self.register_buffer("centroids", F.normalize(torch.as_tensor(centroids, dtype=torch.float32), dim=1))  # (K, C)
        self.logit_scale = logit_scale

    @property
    def num_classes(self):
        return self.centroids.shape[0]

    @property
    def patch_size(self):
        return self.backbone.patch_size

    def train(self, mode=True):
        """The backbone stays frozen in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, images):
        with torch.no_grad():
            features = self.backbone(images)  # (B, C, h, w)
        normed = F.normalize(features.float(), dim=1)  # (B, C, h, w)
        cosine = torch.einsum("bchw,kc->bkhw", normed, self.centroids)  # (B, K, h, w)
        return features, normed, self.logit_scale * cosine


@torch.no_grad()
def sample_features(backbone, loader, num_samples, seed, device="cpu", precision="fp32"):
    """(num_samples, C) float32 L2-normalised patch features, the same number drawn from each image.

    Every image of ``loader`` contributes ceil(num_samples / images) patches at positions drawn
    from (seed, image index), so the sample does not depend on batching or worker count.
    """
    num_images = len(loader.dataset)
    if num_images == 0:
        raise ReportedError("k-means: the training split of --data-root has no images to sample features from")
    per_image = math.ceil(num_samples / num_images)
    samples, index = [], 0
    for batch in loader:
        images = torch.stack([sample["image"] for sample in batch]).to(device)  # (B, 3, H, W)
        with autocast_context(device, precision):
            features = backbone(images)  # (B, C, h, w)
        features = F.normalize(features.float().flatten(2), dim=1).transpose(1, 2).cpu()  # (B, h*w, C)
        for image_features in features:
            rng = np.random.default_rng([seed, index])
            take = rng.choice(image_features.shape[0], size=min(per_image, image_features.shape[0]), replace=False)
            samples.append(image_features[torch.from_numpy(take)])
            index += 1
    drawn = torch.cat(samples)  # (N, C)
    if drawn.shape[0] > num_samples:
        keep = np.random.default_rng([seed, -1]).choice(drawn.shape[0], size=num_samples, replace=False)
        drawn = drawn[torch.from_numpy(np.sort(keep))]
    return drawn.numpy().astype(np.float32)


def require_faiss():
    """The faiss module, or an error with the install command (baseline_kmeans.py checks it first)."""
    return require("faiss", FAISS_REQUIREMENT, "the k-means baseline")


def kmeans_plus_plus(features, num_clusters, rng):
    """k-means++ seeding (D^2 sampling): initial centroids (K, C) that avoid most poor local optima
    of faiss's uniform random initialisation."""
    chosen = [rng.integers(features.shape[0])]
    nearest = ((features - features[chosen[0]]) ** 2).sum(axis=1)  # (N,)
    for _ in range(1, num_clusters):
        total = nearest.sum()
        index = rng.choice(features.shape[0], p=nearest / total) if total > 0 else rng.integers(features.shape[0])
        chosen.append(index)
        nearest = np.minimum(nearest, ((features - features[index]) ** 2).sum(axis=1))
    return features[chosen].copy()


def fit_kmeans(features, num_clusters, iterations=100, restarts=5, seed=0, use_gpu=None):
    """Centroids (K, C) and inertia of the best of ``restarts`` faiss k-means runs (Euclidean,
    k-means++ seeding drawn from (seed, restart)).

    ``use_gpu`` None uses a GPU when the installed faiss is a GPU build and sees one. All the
    points are used (faiss would otherwise subsample to 256 per centroid).
    """
    faiss = require_faiss()
    features = np.ascontiguousarray(features, dtype=np.float32)
    count, dim = features.shape
    if count < num_clusters:
        raise OptionError(f"k-means: {count} feature samples cannot make {num_clusters} clusters; raise --num-samples")
    if use_gpu is None:
        use_gpu = hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
    # faiss's OpenMP threads otherwise spin against torch's on a busy CPU (100x slower here).
    faiss.omp_set_num_threads(torch.get_num_threads())
    best = None
    for restart in range(restarts):
        kmeans = faiss.Kmeans(
            dim,
            num_clusters,
            niter=iterations,
            seed=seed + restart,
            gpu=bool(use_gpu),
            verbose=False,
            max_points_per_centroid=math.ceil(count / num_clusters) + 1,
            min_points_per_centroid=1,
        )
        kmeans.train(
            features, init_centroids=kmeans_plus_plus(features, num_clusters, np.random.default_rng([seed, restart]))
        )
        distances, _ = kmeans.index.search(features, 1)
        inertia = float(distances.astype(np.float64).sum())
        if best is None or inertia < best[1]:
            best = (torch.from_numpy(kmeans.centroids.copy()), inertia)
    return best
