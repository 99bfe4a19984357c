"""COCO-Stuff-27: split lists, the fine -> coarse label map and image/label reading.

Layout under a data root (SPEC §6)::

    images/{train2017,val2017}/ID.jpg
    annotations/{train2017,val2017}/ID.png      # stuffthingmaps: fine ids 0..181, 255 unlabelled
    curated/{train2017,val2017}/Coco164kFull_Stuff_Coarse_7.txt   # optional: shipped copies are used otherwise
"""
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data.scan import missing_files
from utils.errors import ReportedError

PACKAGE_DIR = Path(__file__).resolve().parent
LABEL_MAP_FILE = PACKAGE_DIR / "cocostuff27.json"
SHIPPED_CURATED_DIR = PACKAGE_DIR / "curated"
SPLIT_LIST_NAME = "Coco164kFull_Stuff_Coarse_7.txt"
SPLITS = ("train", "val")
IGNORE_INDEX = 255
NUM_CLASSES = 27
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataError(ReportedError, ValueError):
    """A data root, image, label or split list is not what the project expects."""


@lru_cache(maxsize=1)
def load_label_map():
    """Return (lookup table of 256 entries, class names).

    Unknown fine ids map to -1 in the table so that they can be detected and reported
    instead of silently becoming a class.
    """
    with open(LABEL_MAP_FILE) as f:
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
        raise DataError(f"{path}: {len(repeated)} id(s) listed more than once (first: {', '.join(repeated[:5])}); "
                        f"each image may be listed once")
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
            raise DataError(f"{folder}: missing; the data root must hold {sub}/{split_folder(split)}/ (see README, 'Data')")


SHOW_MISSING = 5


def check_split_files(data_root, split, limit=None):
    """Fail before the long work, with a count and the first names, when listed files are missing.

    A fast scan (folder listings, no decoding) of every image and label the split's first
    ``limit`` ids need; ``scripts/prepare_cocostuff.py --check`` opens them all. Returns the ids.
    """
    check_data_root(data_root, split)
    ids = read_split_ids(data_root, split)[:limit]
    problems = []
    for kind, path_of in (("images", image_path), ("labels", label_path)):
        missing = missing_files([path_of(data_root, split, image_id) for image_id in ids])
        if missing:
            names = ", ".join(path.name for path in missing[:SHOW_MISSING]) + (", ..." if len(missing) > SHOW_MISSING else "")
            problems.append(f"{len(missing)} of {len(ids)} {kind} missing in {missing[0].parent} ({names})")
    if problems:
        raise DataError(f"--data-root {data_root}, {split_folder(split)} split ({split_list_path(data_root, split)}): "
                        f"{'; '.join(problems)}. `python scripts/prepare_cocostuff.py --data-root {data_root} --check` lists them all")
    return ids


def read_image(path):
    """RGB PIL image, as the original reads it (PIL convert('RGB'))."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot read the image ({err})") from err


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


class CocoStuffEval(torch.utils.data.Dataset):
    """The evaluation split: (normalised image, coarse label, id) with a protocol's resizing.

    ``transform(image, label) -> (image tensor, label tensor)`` comes from data/transforms.py.
    """

    def __init__(self, data_root, transform, split="val", limit=None):
        check_data_root(data_root, split)
        self.data_root = Path(data_root)
        self.split = split
        self.ids = read_split_ids(data_root, split)[:limit]
        self.transform = transform

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        image_id = self.ids[index]
        image = read_image(image_path(self.data_root, self.split, image_id))
        label = read_coarse_label(label_path(self.data_root, self.split, image_id))
        if label.shape != (image.height, image.width):
            raise DataError(
                f"{label_path(self.data_root, self.split, image_id)}: label is {label.shape[1]}x{label.shape[0]} "
                f"but the image is {image.width}x{image.height}"
            )
        image, label = self.transform(image, Image.fromarray(label))
        return {"image": image, "label": label, "id": image_id}
