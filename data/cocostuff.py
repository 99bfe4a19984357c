"""COCO-Stuff-27: split lists, the fine -> coarse label map and image/label reading.

Layout under a data root (docs/datasets.md#coco-stuff-27-cocostuff27)::

    images/{train2017,val2017}/ID.jpg
    annotations/{train2017,val2017}/ID.png      # stuffthingmaps: fine ids 0..181, 255 unlabelled
    curated/{train2017,val2017}/Coco164kFull_Stuff_Coarse_7.txt   # optional: shipped copies are used otherwise

``COCOSTUFF27`` is this module's dataset spec (data/spec.py); COCO-Stuff-171 (data/cocostuff171.py)
shares its layout and lists with another label map.
"""

import json
from pathlib import Path

import numpy as np

from data.spec import DataError, DatasetSpec, label_lookup, map_labels, read_split_list

PACKAGE_DIR = Path(__file__).resolve().parent
LABEL_MAP_FILE = PACKAGE_DIR / "cocostuff27.json"
SHIPPED_CURATED_DIR = PACKAGE_DIR / "curated"
SPLIT_LIST_NAME = "Coco164kFull_Stuff_Coarse_7.txt"
SPLITS = ("train", "val")
# The curated lists behind the published numbers: 49,629 train and 2,175 val images
# (docs/datasets.md#coco-stuff-27-cocostuff27).
CURATED_SIZES = {"train": 49629, "val": 2175}

# One colour per COCO-Stuff-27 class, in the order of cocostuff27.json's coarse_names. Stuff that
# has a natural colour gets it (sky light blue, water navy, plant green, ground brown) so pictures
# read at a glance; the rest are well-separated hues.
PALETTE = np.array(
    [
        (0, 130, 200),  # electronic
        (70, 240, 240),  # appliance
        (255, 225, 25),  # food-things
        (128, 0, 0),  # furniture-things
        (240, 50, 230),  # indoor
        (250, 190, 212),  # kitchen
        (145, 30, 180),  # accessory
        (245, 130, 48),  # animal
        (0, 128, 128),  # outdoor
        (230, 25, 75),  # person
        (210, 245, 60),  # sports
        (220, 190, 255),  # vehicle
        (255, 250, 200),  # ceiling
        (128, 128, 0),  # floor
        (255, 128, 192),  # food-stuff
        (128, 64, 255),  # furniture-stuff
        (128, 128, 128),  # rawmaterial
        (75, 0, 130),  # textile
        (255, 255, 255),  # wall
        (170, 255, 195),  # window
        (64, 64, 64),  # building
        (170, 110, 40),  # ground
        (60, 180, 75),  # plant
        (135, 206, 250),  # sky
        (250, 128, 114),  # solid
        (100, 0, 60),  # structural
        (0, 0, 128),  # water
    ],
    dtype=np.uint8,
)
PALETTE.setflags(write=False)


def split_folder(split):
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")
    return f"{split}2017"


def split_list_path(data_root, split):
    """The data root's own curated list wins over the copy shipped with the project."""
    own = Path(data_root) / "curated" / split_folder(split) / SPLIT_LIST_NAME
    if own.is_file():
        return own
    return SHIPPED_CURATED_DIR / split_folder(split) / SPLIT_LIST_NAME


def read_split_ids(data_root, split):
    return read_split_list(split_list_path(data_root, split))


def image_path(data_root, split, image_id):
    return Path(data_root) / "images" / split_folder(split) / f"{image_id}.jpg"


def label_path(data_root, split, image_id):
    return Path(data_root) / "annotations" / split_folder(split) / f"{image_id}.png"


def check_data_root(data_root, split):
    """Fail early, with one message, when the folders a split needs are missing."""
    root = Path(data_root)
    if not root.is_dir():
        raise DataError(f"--data-root {root}: no such folder (expected images/, annotations/ and optionally curated/)")
    for sub in ("images", "annotations"):
        folder = root / sub / split_folder(split)
        if not folder.is_dir():
            raise DataError(
                f"{folder}: missing; the data root must hold {sub}/{split_folder(split)}/ (see docs/datasets.md)"
            )


class CocoStuffSpec(DatasetSpec):
    """The COCO-Stuff layout with a fine id -> class map file; COCO-Stuff-27 and -171
    (docs/datasets.md#coco-stuff-27-cocostuff27).

    The map file (cocostuff27.json, cocostuff171.json) holds ``fine_to_coarse`` ({fine id: class})
    and ``coarse_names``; fine ids it does not list are data errors, not a class.
    """

    splits = SPLITS
    official_sizes = CURATED_SIZES

    def __init__(self, name, label_map_file, description):
        self.name = name
        self.label_map_file = Path(label_map_file)
        with open(self.label_map_file) as f:
            label_map = json.load(f)
        self.lut = label_lookup(label_map["fine_to_coarse"])
        self.class_names = tuple(label_map["coarse_names"])
        self.description = description

    def check_root(self, data_root, split):
        check_data_root(data_root, split)

    def split_ids(self, data_root, split):
        return read_split_ids(data_root, split)

    def split_source(self, data_root, split):
        return split_list_path(data_root, split)

    def split_name(self, split):
        return split_folder(split)

    def image_path(self, data_root, split, image_id):
        return image_path(data_root, split, image_id)

    def label_path(self, data_root, split, image_id):
        return label_path(data_root, split, image_id)

    def map_label(self, raw, source):
        known = f"{self.label_map_file.name} maps {self.num_classes} classes and 255; is this a stuffthingmaps PNG?"
        return map_labels(raw, self.lut, source, known)


class CocoStuff27Spec(CocoStuffSpec):
    palette = PALETTE


COCOSTUFF27 = CocoStuff27Spec(
    "cocostuff27", LABEL_MAP_FILE, "COCO-Stuff-27: the 27 coarse classes of the curated lists"
)
