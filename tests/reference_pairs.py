"""The training-pair pipeline as first written (flip, resize and normalise whole images, then crop).

Kept as the reference the faster ``data.pairs.TrainingPairs`` is checked against (tests) and
measured against (benchmarks/bench_train.py). It draws the same random numbers in the same order.
"""

import numpy as np
from PIL import Image

from data.cocostuff import COCOSTUFF27
from data.pairs import overlapping_crops, random_resize_size
from data.transforms import label_tensor, to_normalized_tensor


def reference_pair(data_root, split, image_id, seed, epoch, index, crop=224):
    """{'image', 'image_aug'} normalised float (3, crop, crop), 'label' (crop, crop), 'crops'."""
    rng = np.random.default_rng([seed, epoch, index])
    image = COCOSTUFF27.read_image(data_root, split, image_id)
    label = Image.fromarray(COCOSTUFF27.read_label(data_root, split, image_id))
    if rng.random() <= 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
        label = label.transpose(Image.FLIP_LEFT_RIGHT)
    size = random_resize_size(*image.size, rng, min_side=crop)
    image = image.resize(size, Image.BILINEAR)
    label = label.resize(size, Image.NEAREST)
    (top0, left0), (top1, left1) = overlapping_crops(*size, rng, crop)
    return {
        "image": to_normalized_tensor(image.crop((left0, top0, left0 + crop, top0 + crop))),
        "image_aug": to_normalized_tensor(image.crop((left1, top1, left1 + crop, top1 + crop))),
        "label": label_tensor(label.crop((left0, top0, left0 + crop, top0 + crop))).long(),
        "crops": (top0, left0, top1, left1),
    }
