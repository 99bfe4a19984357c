"""Cityscapes-27: the 27 classes of Cityscapes label ids 7..33, as PiCIE and STEGO evaluate it.

Layout under a data root (the official zips ``leftImg8bit_trainvaltest.zip`` and
``gtFine_trainvaltest.zip`` unpacked; scripts/prepare_data.py cityscapes27 does it)::

    leftImg8bit/{train,val}/CITY/CITY_SEQ_FRAME_leftImg8bit.png     # 2048x1024 RGB
    gtFine/{train,val}/CITY/CITY_SEQ_FRAME_gtFine_labelIds.png      # label ids 0..33

Label ids 7..33 (road ... bicycle) become classes 0..26; ids 0..6 (unlabeled, ego vehicle,
rectification border, out of roi, static, dynamic, ground) and 255 are ignored, as in PiCIE's
``FINE_DICT`` and STEGO's ``CityscapesSeg`` (label - 7, negatives ignored); any value 34..254 is a
data error naming the file. Splits are discovered from the folders (2,975 train and 500 val
images in the official release), ids are the file names' ``CITY_SEQ_FRAME`` part.

Training follows STEGO's preparation of these large images (its crop_datasets.py, crop type
"five", crop ratio 0.5): every training image yields five crops of half its width and height (the
four corners and the centre; 1024x512 for 2048x1024 images), and each crop then goes through the
usual IDDC pair sampling (flip, random resize, two overlapping 224 crops) at its own resolution,
the scale at which the sliding protocol evaluates. scripts/prepare_data.py writes the crops as
lossless PNGs under ``five_crops/train/CITY/`` (STEGO writes them to disk too), because decoding a
whole 2048x1024 PNG for every crop would starve the GPU; without them the crops are cut on the fly
from the full images, with the same result. PiCIE instead trains on the unlabelled ``train_extra``
and ``test`` images and evaluates on train + val; that is not followed.
"""

from pathlib import Path

import numpy as np
from PIL import Image

from data.spec import DataError, DatasetSpec, label_lookup, map_labels, read_image

FIRST_CLASS_ID = 7
CLASS_NAMES = (
    "road",
    "sidewalk",
    "parking",
    "rail track",
    "building",
    "wall",
    "fence",
    "guard rail",
    "bridge",
    "tunnel",
    "pole",
    "polegroup",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "caravan",
    "trailer",
    "train",
    "motorcycle",
    "bicycle",
)
# The official Cityscapes colours (cityscapesScripts' labels.py), except polegroup, which shares
# pole's grey there and gets a darker one here so that the two stay apart in pictures and legends.
PALETTE = np.array(
    [
        (128, 64, 128),
        (244, 35, 232),
        (250, 170, 160),
        (230, 150, 140),
        (70, 70, 70),
        (102, 102, 156),
        (190, 153, 153),
        (180, 165, 180),
        (150, 100, 100),
        (150, 120, 90),
        (153, 153, 153),
        (110, 110, 110),
        (250, 170, 30),
        (220, 220, 0),
        (107, 142, 35),
        (152, 251, 152),
        (70, 130, 180),
        (220, 20, 60),
        (255, 0, 0),
        (0, 0, 142),
        (0, 0, 70),
        (0, 60, 100),
        (0, 0, 90),
        (0, 0, 110),
        (0, 80, 100),
        (0, 0, 230),
        (119, 11, 32),
    ],
    dtype=np.uint8,
)
PALETTE.setflags(write=False)
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
CROPS_FOLDER = "five_crops"
FIVE_CROPS = 5
CROP_RATIO = 0.5


def city_of(image_id):
    """'aachen' of 'aachen_000000_000019' (city names have no underscore; sequence and frame follow)."""
    return image_id.rsplit("_", 2)[0]


def crop_paths(data_root, split, image_id, crop):
    """Where scripts/prepare_data.py writes crop ``crop`` of an image and of its label ids."""
    folder = Path(data_root) / CROPS_FOLDER / split / city_of(image_id)
    return folder / f"{image_id}_crop{crop}{IMAGE_SUFFIX}", folder / f"{image_id}_crop{crop}{LABEL_SUFFIX}"


def five_crop_boxes(width, height, ratio=CROP_RATIO):
    """(left, top, right, bottom) of the four corner crops and the centre crop, each ``ratio`` of the
    image's sides, in torchvision's five_crop order (STEGO's "five" crops)."""
    crop_w, crop_h = int(width * ratio), int(height * ratio)
    left, top = int(round((width - crop_w) / 2)), int(round((height - crop_h) / 2))
    return [
        (0, 0, crop_w, crop_h),
        (width - crop_w, 0, width, crop_h),
        (0, height - crop_h, crop_w, height),
        (width - crop_w, height - crop_h, width, height),
        (left, top, left + crop_w, top + crop_h),
    ]


class CityscapesSpec(DatasetSpec):
    name = "cityscapes27"
    class_names = CLASS_NAMES
    palette = PALETTE
    default_protocol = "sliding"
    # Sliding predictions and labels are scored on a 320x640 grid: the 2:1 aspect of the images and
    # the short side of COCO's 320x320 grid and of the peers' 320 resize.
    score_size = (320, 640)
    description = "Cityscapes-27: label ids 7..33 of the fine annotations"
    official_sizes = {"train": 2975, "val": 500}
    lut = label_lookup(
        {
            **{raw: 255 for raw in range(FIRST_CLASS_ID)},
            **{FIRST_CLASS_ID + k: k for k in range(len(CLASS_NAMES))},
            255: 255,
        }
    )

    def check_root(self, data_root, split):
        """Fail early, naming what is missing: the root, a split folder, or a city folder of gtFine."""
        self.check_split(split)
        root = Path(data_root)
        if not root.is_dir():
            raise DataError(
                f"--data-root {root}: no such folder (expected leftImg8bit/ and gtFine/; see docs/datasets.md)"
            )
        images, labels = root / "leftImg8bit" / split, root / "gtFine" / split
        for folder in (images, labels):
            if not folder.is_dir():
                raise DataError(
                    f"{folder}: missing; unpack the official Cityscapes zips with "
                    f"'python scripts/prepare_data.py cityscapes27 --data-root {root}'"
                )
        cities = sorted(path.name for path in images.iterdir() if path.is_dir())
        if not cities:
            raise DataError(f"{images}: no city folders (expected {images}/CITY/CITY_SEQ_FRAME{IMAGE_SUFFIX})")
        missing = [city for city in cities if not (labels / city).is_dir()]
        if missing:
            raise DataError(
                f"{labels / missing[0]}: city folder missing ({len(missing)} of the {len(cities)} cities "
                f"of {images} have no labels: {', '.join(missing[:5])})"
            )

    def split_ids(self, data_root, split):
        """Every image of the split's city folders, sorted, so all processes see the same order."""
        self.check_split(split)
        images = Path(data_root) / "leftImg8bit" / split
        ids = sorted(path.name[: -len(IMAGE_SUFFIX)] for path in images.glob(f"*/*{IMAGE_SUFFIX}"))
        if not ids:
            raise DataError(f"{images}: no images (expected {images}/CITY/CITY_SEQ_FRAME{IMAGE_SUFFIX})")
        return ids

    def split_source(self, data_root, split):
        return Path(data_root) / "leftImg8bit" / split

    def image_path(self, data_root, split, image_id):
        return Path(data_root) / "leftImg8bit" / split / city_of(image_id) / f"{image_id}{IMAGE_SUFFIX}"

    def label_path(self, data_root, split, image_id):
        return Path(data_root) / "gtFine" / split / city_of(image_id) / f"{image_id}{LABEL_SUFFIX}"

    def read_raw_label(self, path):
        """The label ids of a gtFine *_labelIds.png, which must be single-channel (a colour PNG would
        otherwise be turned into grey levels that look like ids)."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: label file not found")
        try:
            with Image.open(path) as label:
                mode = label.mode
                raw = np.array(label)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise DataError(f"{path}: cannot read the label ({err})") from err
        if raw.ndim != 2:
            raise DataError(f"{path}: expected a single-channel labelIds PNG, got mode {mode}")
        return raw

    def map_label(self, raw, source):
        return map_labels(raw, self.lut, source, "Cityscapes label ids 0..33 and 255")

    def train_items(self, data_root, split):
        return [(image_id, crop) for image_id in self.split_ids(data_root, split) for crop in range(FIVE_CROPS)]

    def read_train_raw(self, data_root, split, item):
        """One of the five crops of an image: the prepared files when present, else cut from the image."""
        image_id, crop = item
        image_file, label_file = crop_paths(data_root, split, image_id, crop)
        if image_file.is_file() and label_file.is_file():
            image, raw = read_image(image_file), self.read_raw_label(label_file)
            if raw.shape != (image.height, image.width):
                raise DataError(
                    f"{label_file}: label is {raw.shape[1]}x{raw.shape[0]} but the image is "
                    f"{image.width}x{image.height}; delete {Path(data_root) / CROPS_FOLDER} to cut the crops anew"
                )
            return image, raw, str(label_file)
        image, raw, source = super().read_train_raw(data_root, split, image_id)
        left, top, right, bottom = five_crop_boxes(*image.size)[crop]
        return image.crop((left, top, right, bottom)), raw[top:bottom, left:right], source


CITYSCAPES27 = CityscapesSpec()
