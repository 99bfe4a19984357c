"""COCO-Stuff-27: split lists, the fine -> coarse label map and image/label reading.

Layout under a data root (SPEC §6)::

    images/{train2017,val2017}/ID.jpg
    annotations/{train2017,val2017}/ID.png      # stuffthingmaps: fine ids 0..181, 255 unlabelled
    curated/{train2017,val2017}/Coco164kFull_Stuff_Coarse_7.txt   # optional: shipped copies are used otherwise

``COCOSTUFF27`` is this module's dataset spec (data/spec.py); COCO-Stuff-171 (data/cocostuff171.py)
shares its layout and lists with another label map.
"""

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from data.spec import DataError, DatasetSpec, SegmentationEval, map_labels, read_image  # noqa: F401  (re-exported)

PACKAGE_DIR = Path(__file__).resolve().parent
LABEL_MAP_FILE = PACKAGE_DIR / "cocostuff27.json"
SHIPPED_CURATED_DIR = PACKAGE_DIR / "curated"
SPLIT_LIST_NAME = "Coco164kFull_Stuff_Coarse_7.txt"
SPLITS = ("train", "val")
NUM_CLASSES = 27

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


@lru_cache(maxsize=4)
def load_label_map(path=LABEL_MAP_FILE):
    """Return (lookup table of 256 entries, class names) of a label map file (fine id -> class).

    Unknown fine ids map to -1 in the table so that they can be detected and reported
    instead of silently becoming a class.
    """
    with open(path) as f:
        spec = json.load(f)
    lut = np.full(256, -1, dtype=np.int16)
    for fine, coarse in spec["fine_to_coarse"].items():
        lut[int(fine)] = int(coarse)
    lut.setflags(write=False)
    return lut, tuple(spec["coarse_names"])


def class_names():
    return load_label_map()[1]


def map_fine_to_coarse(fine_label, source="label"):
    """Map a uint8 fine label array to coarse ids (uint8, 255 kept).

    A value outside the map is a data error, named with its source file.
    """
    lut, _ = load_label_map()
    fine_label = np.asarray(fine_label)
    coarse = lut[fine_label]
    if (coarse < 0).any():
        bad = np.unique(fine_label[coarse < 0])
        raise DataError(
            f"{source}: label values {bad.tolist()[:10]} are not in the COCO-Stuff fine -> coarse map "
            f"({LABEL_MAP_FILE.name} knows 0..181 and 255); is this a stuffthingmaps PNG?"
        )
    return coarse.astype(np.uint8)


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
    path = split_list_path(data_root, split)
    with open(path) as f:
        ids = [line.strip() for line in f if line.strip()]
    if not ids:
        raise DataError(f"{path}: the split list is empty")
    if len(set(ids)) != len(ids):  # a repeated id would be scored (or trained on) twice
        seen, repeated = set(), []
        for image_id in ids:
            if image_id in seen and image_id not in repeated:
                repeated.append(image_id)
            seen.add(image_id)
        raise DataError(
            f"{path}: {len(repeated)} id(s) listed more than once (first: {', '.join(repeated[:5])}); "
            f"each image may be listed once"
        )
    return ids


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
                f"{folder}: missing; the data root must hold {sub}/{split_folder(split)}/ (see README, 'Data')"
            )


def read_coarse_label(path):
    """Coarse label (uint8 numpy array, 255 = ignore) from a stuffthingmaps PNG."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: label file not found")
    try:
        with Image.open(path) as lab:
            fine = np.array(lab.convert("L"))
    except (OSError, SyntaxError) as err:
        raise DataError(f"{path}: cannot read the label ({err})") from err
    return map_fine_to_coarse(fine, source=str(path))


class CocoStuffSpec(DatasetSpec):
    """The COCO-Stuff layout (SPEC §6) with a fine id -> class map file; COCO-Stuff-27 and -171."""

    splits = SPLITS

    def __init__(self, name, label_map_file, description):
        self.name = name
        self.label_map_file = Path(label_map_file)
        self.lut, self.class_names = load_label_map(self.label_map_file)
        self.description = description

    def check_root(self, data_root, split):
        check_data_root(data_root, split)

    def split_ids(self, data_root, split):
        return read_split_ids(data_root, split)

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


class CocoStuffEval(SegmentationEval):
    """The COCO-Stuff-27 evaluation split (see data/spec.py's SegmentationEval)."""

    def __init__(self, data_root, transform, split="val", limit=None):
        super().__init__(COCOSTUFF27, data_root, transform, split=split, limit=limit)
