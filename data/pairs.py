"""Training pairs (SPEC §4): two overlapping 224 crops of one randomly flipped and resized image.

The dataset spec (data/spec.py) gives the images: ``train_items`` and ``read_train_pair`` (which may
preprocess, e.g. Cityscapes' five crops); the sampling below is the same for every dataset.

Every random number of a sample comes from a generator seeded by (seed, epoch, index), so a
sample is the same whichever worker or process draws it, and a resumed run sees exactly the data
an uninterrupted one would.
"""
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data.cocostuff import COCOSTUFF27
from data.transforms import label_tensor, to_normalized_tensor


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


class TrainingPairs(torch.utils.data.Dataset):
    """Yields {'image', 'image_aug', 'label', 'crops'}; the label (of the first crop) feeds the probe only."""

    def __init__(self, spec, data_root, split="train", crop=224, seed=0, limit=None):
        spec.check_root(data_root, split)
        self.spec = spec
        self.data_root = Path(data_root)
        self.split = split
        self.crop = crop
        self.seed = seed
        self.epoch = 0
        self.items = spec.train_items(data_root, split)[:limit]

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image, label = self.spec.read_train_pair(self.data_root, self.split, self.items[index])
        if rng.random() <= 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
            label = label.transpose(Image.FLIP_LEFT_RIGHT)
        size = random_resize_size(*image.size, rng, min_side=self.crop)
        image = image.resize(size, Image.BILINEAR)
        label = label.resize(size, Image.NEAREST)
        (top0, left0), (top1, left1) = overlapping_crops(*size, rng, self.crop)
        c = self.crop
        return {
            "image": to_normalized_tensor(image.crop((left0, top0, left0 + c, top0 + c))),  # (3, c, c)
            "image_aug": to_normalized_tensor(image.crop((left1, top1, left1 + c, top1 + c))),  # (3, c, c)
            "label": label_tensor(label.crop((left0, top0, left0 + c, top0 + c))).long(),  # (c, c)
            "crops": torch.tensor([top0, left0, top1, left1]),
        }


class CocoStuffPairs(TrainingPairs):
    """COCO-Stuff-27's training pairs."""

    def __init__(self, data_root, split="train", crop=224, seed=0, limit=None):
        super().__init__(COCOSTUFF27, data_root, split=split, crop=crop, seed=seed, limit=limit)
