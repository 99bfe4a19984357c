"""Image and label transforms of the evaluation protocols (SPEC §5 and §7)."""

import math

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from utils.constants import IMAGENET_MEAN, IMAGENET_STD

PIL_INTERPOLATION = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR}


def to_normalized_tensor(image):
    return TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD, inplace=True)  # (3, H, W), no second copy


def label_tensor(label):
    return torch.from_numpy(np.array(label, dtype=np.uint8))  # (H, W)


def upscaled_size(width, height, min_side):
    """(width, height) with the short side raised to ``min_side`` (aspect kept), rounded up.

    The original computes the same size but passes floats to PIL and crashes; here the size is
    an integer and the image is then treated at its new size.
    """
    if min(width, height) >= min_side:
        return width, height
    if width <= height:
        return min_side, int(math.ceil(height / width * min_side))
    return int(math.ceil(width / height * min_side)), min_side


def upscale_short_side(image, label, min_side):
    """Image (bilinear) and label (nearest) upscaled for windows that would not fit otherwise."""
    size = upscaled_size(*image.size, min_side)
    if size == image.size:
        return image, label
    return image.resize(size, Image.BILINEAR), label.resize(size, Image.NEAREST)


class SlidingTransform:
    """Full-resolution image (upscaled only when a side is under the window)."""

    def __init__(self, window=224):
        self.window = window

    def __call__(self, image, label):
        image, label = upscale_short_side(image, label, self.window)
        return to_normalized_tensor(image), label_tensor(label)


class PhotoTransform:
    """The ``photo`` protocol: the image as read (the ``folder`` dataset reads it at its working
    size), upscaled only when a side is under the window; the label stays at its own size, where
    the map is scored (engine/segment.py's maps, as predict.py writes them)."""

    def __init__(self, window=224):
        self.window = window

    def __call__(self, image, label):
        size = upscaled_size(*image.size, self.window)
        image = image if size == image.size else image.resize(size, Image.BILINEAR)
        return to_normalized_tensor(image), label_tensor(label)


class ResizeTransform:
    """The original's val_mode 2: PIL bilinear to size x size (aspect not kept), label nearest."""

    def __init__(self, size=320):
        self.size = size

    def __call__(self, image, label):
        size = (self.size, self.size)
        return to_normalized_tensor(image.resize(size, Image.BILINEAR)), label_tensor(label.resize(size, Image.NEAREST))


class CenterCropTransform:
    """The peers' protocol (STEGO, HP, CAUSE, PiCIE): short side to size, centre crop size x size."""

    def __init__(self, size=320, interpolation="nearest"):
        if interpolation not in PIL_INTERPOLATION:
            raise ValueError(f"image interpolation must be one of {sorted(PIL_INTERPOLATION)}, got {interpolation!r}")
        self.size = size
        self.interpolation = InterpolationMode(interpolation)

    def __call__(self, image, label):
        image = TF.center_crop(TF.resize(image, self.size, self.interpolation), self.size)
        label = TF.center_crop(TF.resize(label, self.size, InterpolationMode.NEAREST), self.size)
        return to_normalized_tensor(image), label_tensor(label)


def normalize_uint8(images):
    """ToTensor + ImageNet Normalize of uint8 (..., 3, H, W) images, on their device.

    The same float32 operations in the same order as ``to_normalized_tensor`` (divide by 255,
    subtract the mean, divide by the std), so the values are identical; done on the device so the
    loader ships a quarter of the bytes.
    """
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(3, 1, 1)  # (3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(3, 1, 1)  # (3, 1, 1)
    return images.float().div_(255).sub_(mean).div_(std)  # (..., 3, H, W)
