"""One photo in, one cluster map out: the function predict.py, eval.py's ``folder`` protocol, the
gallery and the page share, so that a user's predictions, scores and pictures agree.

A photo is segmented with the published sliding-window protocol (224 windows, overlap 75, flip
averaging) at its working size (``--short-side``; its own size by default) and the map is brought
back to the original size with torch's legacy nearest.
"""

import torch
from PIL import Image

from data.transforms import to_normalized_tensor, upscaled_size
from engine.evaluation import resize_nearest, sliding_class_maps, sliding_probabilities


def segment(model, image, device, window=224, overlap=75, flip=True, precision="fp32", batch_size=32, size=None):
    """Cluster map (H, W) of a PIL image, as a numpy array at ``size`` (width, height; default the
    image's own), by overlapping windows.

    Images with a side under the window are upscaled first (aspect kept, as eval.py's sliding
    protocol) and the map is brought back with torch's legacy nearest. Windows are stitched band
    by band into the class map, so memory stays bounded whatever the image size.
    """
    upscaled = upscaled_size(*image.size, window)
    resized = image if upscaled == image.size else image.resize(upscaled, Image.BILINEAR)
    pixels = to_normalized_tensor(resized).to(device)  # (3, H', W')
    with torch.no_grad():
        clusters = sliding_class_maps(model, [pixels], window, overlap, flip, precision, batch_size)[0][0]  # (H', W')
    return at_size(clusters, size or image.size)


def window_probabilities(model, image, device, window=224, overlap=75, flip=True, precision="fp32", batch_size=32):
    """(normalised image (3, H', W'), cluster probabilities (K, H', W')) of a PIL image, for the CRF,
    which needs the stitched probabilities (held whole at the image's size: only with --crf)."""
    resized = image.resize(upscaled_size(*image.size, window), Image.BILINEAR)
    pixels = to_normalized_tensor(resized).to(device)  # (3, H', W')
    with torch.no_grad():
        return pixels, sliding_probabilities(model, pixels, window, overlap, flip, precision, batch_size)


def at_size(clusters, size):
    """A (H', W') map brought to ``size`` (width, height) with torch's legacy nearest, as a numpy
    array of the map's dtype (uint8 for up to 256 clusters: a 6000x4000 int64 map would be 192 MB).

    Legacy nearest picks, per axis, a source row and column for every output one; they are found by
    resizing the index ramps themselves (``resize_nearest``), so the pixels are exactly those of
    resizing the whole map, gathered without a float copy of it."""
    width, height = size
    clusters = clusters.cpu()
    if tuple(clusters.shape) == (height, width):
        return clusters.numpy()
    rows = source_indices(clusters.shape[0], height)  # (H,)
    columns = source_indices(clusters.shape[1], width)  # (W,)
    return clusters.numpy()[rows[:, None], columns[None, :]]  # (H, W)


def source_indices(length, size):
    """The source index legacy nearest takes for each of ``size`` outputs along an axis of ``length``."""
    ramp = torch.arange(length)[None, :]  # (1, length)
    return resize_nearest(ramp, (1, size))[0].numpy()  # (size,)
