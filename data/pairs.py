"""Training pairs (SPEC §4): two overlapping 224 crops of one randomly flipped and resized image.

The dataset spec (data/spec.py) gives the images: ``train_items`` and ``read_train_raw`` (which may
preprocess, e.g. Cityscapes' five crops); the sampling below is the same for every dataset.

Every random number of a sample comes from a generator seeded by (seed, epoch, index), and the
epoch travels with the index (the sampler yields ``(epoch, index)`` keys), so a sample is the same
whichever worker or process draws it, persistent loader workers see every new epoch, and a
resumed run sees exactly the data an uninterrupted one would.

Speed: the original flips, resizes and normalises the whole image, then crops. Here only the two
crops are produced:

* label: the nearest-neighbour resize is separable, so the source row and column of every output
  pixel are looked up once per (source size, resized size) by resizing an index ramp with Pillow
  itself; the crop's rows and columns then index the raw label directly, and only the crop is
  mapped to class ids. Bit-identical to flip + resize + crop of the whole mapped label.
* image: each crop is resampled straight from the source with Pillow's ``box`` option (same
  bilinear filter, same sample positions). Pillow holds the box corners in float32, so the filter
  taps' weights differ from a whole-image resize in their last bits: measured on random images,
  about 10-25% of the values differ, by at most 2 (of 255); see tests/test_pairs.py.
* images leave the worker as uint8 (4x less to collate and copy); ``data.transforms.normalize_uint8``
  turns them into the ImageNet-normalised floats of ToTensor + Normalize on the device, with the
  same operations in the same order.
"""

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data.spec import DataError

SUBSTITUTE_TRIES = 20  # substitutes drawn for a damaged image before the run gives up


def random_resize_size(width, height, rng, low=0.8, high=1.2, min_side=224):
    """Width and height scaled independently by factors in [low, high], as the original's
    ``random_resize``; then enlarged (aspect kept) when a side falls under the crop, where the
    original would fail."""
    new_w = int(width * ((high - low) * rng.random() + low))
    new_h = int(height * ((high - low) * rng.random() + low))
    short = min(new_w, new_h)
    if short < min_side:
        new_w, new_h = math.ceil(new_w * min_side / short), math.ceil(new_h * min_side / short)
    return max(new_w, min_side), max(new_h, min_side)


def overlapping_crops(width, height, rng, crop=224):
    """(top, left) of two crops: the first anywhere, the second within crop/2 of it on each axis.

    Follows the original's ``random_crop_overlap``: offsets are rounded fractions of the free range.
    """
    p_w0, p_h0, p_w1, p_h1 = rng.random(4)
    left0 = round((width - crop) * p_w0)
    top0 = round((height - crop) * p_h0)
    lo_w, hi_w = max(left0 - crop // 2, 0), min(left0 + crop // 2, width - crop)
    lo_h, hi_h = max(top0 - crop // 2, 0), min(top0 + crop // 2, height - crop)
    left1 = lo_w + round((hi_w - lo_w) * p_w1)
    top1 = lo_h + round((hi_h - lo_h) * p_h1)
    return (top0, left0), (top1, left1)


@lru_cache(maxsize=4096)
def nearest_source_indices(source_length, resized_length):
    """Source index of every output position of Pillow's NEAREST resize along one axis."""
    ramp = Image.fromarray(np.arange(source_length, dtype=np.int32)[None, :])  # mode "I", (1, source_length)
    indices = np.asarray(ramp.resize((resized_length, 1), Image.NEAREST))[0].astype(np.intp)  # (resized_length,)
    indices.setflags(write=False)
    return indices


def crop_resized_image(image, resized_size, top, left, crop, flip):
    """``crop`` x ``crop`` uint8 (crop, crop, 3) at (top, left) of the image flipped (when ``flip``)
    and resized bilinearly to ``resized_size``, resampled from the source region only."""
    width, height = image.size
    resized_w, resized_h = resized_size
    if flip:  # the crop at ``left`` of the flipped image is the mirror of the one at resized_w - left - crop
        left = resized_w - left - crop
    scale_x, scale_y = width / resized_w, height / resized_h
    box = (left * scale_x, top * scale_y, (left + crop) * scale_x, (top + crop) * scale_y)
    pixels = np.asarray(image.resize((crop, crop), Image.BILINEAR, box=box))  # (crop, crop, 3)
    return pixels[:, ::-1] if flip else pixels


def crop_resized_label(label, resized_size, top, left, crop, flip):
    """The same crop of the label (H, W), flipped and NEAREST-resized: (crop, crop) uint8."""
    height, width = label.shape
    resized_w, resized_h = resized_size
    rows = nearest_source_indices(height, resized_h)[top : top + crop]  # (crop,)
    cols = nearest_source_indices(width, resized_w)
    if flip:  # column j of the flipped label is column width - 1 - j of the label
        cols = width - 1 - cols
    return label[np.ix_(rows, cols[left : left + crop])]  # (crop, crop)


def _chw(pixels):
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)  # (3, H, W) uint8, owning its memory


class TrainingPairs(torch.utils.data.Dataset):
    """Keys are ``(epoch, index)``; yields {'image', 'image_aug', 'label', 'crops'}.

    'image' and 'image_aug' are uint8 (3, crop, crop) (normalise with
    ``data.transforms.normalize_uint8``), 'label' uint8 (crop, crop) class ids of the first crop
    (255 ignored; it feeds the linear probe only), 'crops' (top0, left0, top1, left1).
    """

    def __init__(self, spec, data_root, split="train", crop=224, seed=0, limit=None):
        spec.check_root(data_root, split)
        self.spec = spec
        self.data_root = Path(data_root)
        self.split = split
        self.crop = crop
        self.seed = seed
        self.items = spec.train_items(data_root, split)[:limit]

    def __len__(self):
        return len(self.items)

    def read_item(self, epoch, index):
        """(image, raw label, source, index of the damaged item or -1) of item ``index``.

        A spec that ``substitutes_damaged`` (the ``folder`` dataset: a truncated JPEG passes the header
        scan) has a damaged item replaced by another one drawn from (seed, epoch, index), so the sample
        is the same in every process and after a resume; the trainer names the damaged item.
        """
        item, attempt = index, 0
        while True:
            try:
                image, raw_label, source = self.spec.read_train_raw(self.data_root, self.split, self.items[item])
                return image, raw_label, source, (-1 if attempt == 0 else index)
            except DataError:
                attempt += 1
                if not self.spec.substitutes_damaged or attempt > SUBSTITUTE_TRIES:
                    raise
            item = int(np.random.default_rng([self.seed, epoch, index, attempt]).integers(len(self.items)))

    def __getitem__(self, key):
        epoch, index = key
        rng = np.random.default_rng([self.seed, epoch, index])
        image, raw_label, source, damaged = self.read_item(epoch, index)  # raw (H, W)
        flip = rng.random() <= 0.5  # drawn in the original's order: flip, resize factors, crops
        size = random_resize_size(*image.size, rng, min_side=self.crop)
        (top0, left0), (top1, left1) = overlapping_crops(*size, rng, self.crop)
        crop = self.crop
        sample = {
            "image": _chw(crop_resized_image(image, size, top0, left0, crop, flip)),  # (3, c, c) uint8
            "image_aug": _chw(crop_resized_image(image, size, top1, left1, crop, flip)),  # (3, c, c) uint8
            "label": torch.from_numpy(
                self.spec.map_label(crop_resized_label(raw_label, size, top0, left0, crop, flip), source)
            ),  # (c, c) uint8
            "crops": torch.tensor([top0, left0, top1, left1]),
        }
        if self.spec.substitutes_damaged:
            sample["damaged"] = torch.tensor(damaged)  # the item this sample replaces, or -1
        return sample
