"""Potsdam-3: STEGO's preparation of ISPRS Potsdam, 3 classes, on 200x200 tiles.

Layout under a data root (STEGO's ``potsdam.zip`` unpacked; scripts/prepare_data.py potsdam3 does
it)::

    imgs/ID.mat                 # variable 'img': 200x200x4 uint8, R, G, B, infrared
    gt/ID.mat                   # variable 'gt': 200x200 ISPRS class ids 0..5
    labelled_train.txt          # ids of the train split (4,545 tiles)
    labelled_test.txt           # ids of the val split (855 tiles)
    unlabelled_train.txt, all.txt

The tiles come from IIC's preparation (xu-ji/IIC, potsdam_prepare.py): the 38 RGBIR orthophotos of
6000x6000 are halved and cut into 15x15 tiles of 200x200 (8,550 tiles); the 5,400 tiles of the 24
labelled photos are split at random into 855 test and 4,545 train tiles. As STEGO's ``Potsdam``
dataset reads them, the infrared channel is dropped and the six ISPRS classes are merged into three:
impervious surfaces (0) and cars (4) -> roads and cars; buildings (1) and clutter (5) -> buildings
and clutter; low vegetation (2) and trees (3) -> trees and vegetation; 255 is ignored and any other
value is a data error naming the file (STEGO would silently make it class 0).
"""

from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import loadmat
from scipy.io.matlab import MatReadError

from data.spec import DataError, DatasetSpec, label_lookup, map_labels, read_split_list

SPLIT_FILES = {"train": "labelled_train.txt", "val": "labelled_test.txt"}
CLASS_NAMES = ("roads and cars", "buildings and clutter", "trees and vegetation")
RAW_TO_CLASS = {0: 0, 4: 0, 1: 1, 5: 1, 2: 2, 3: 2, 255: 255}
# Grey for roads, blue for buildings (ISPRS' building colour), green for vegetation.
PALETTE = np.array([(190, 190, 190), (0, 0, 255), (0, 160, 0)], dtype=np.uint8)
PALETTE.setflags(write=False)


def load_mat_array(path, key, what):
    """The array ``key`` of a MATLAB file, with one clear error for a missing, unreadable or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} file not found")
    try:
        content = loadmat(path)
    except (MatReadError, ValueError, TypeError, OSError) as err:
        raise DataError(f"{path}: cannot read the {what} as a MATLAB file ({err})") from err
    if key not in content:
        raise DataError(f"{path}: no '{key}' variable (found {sorted(k for k in content if not k.startswith('__'))})")
    return np.asarray(content[key])


class PotsdamSpec(DatasetSpec):
    name = "potsdam3"
    class_names = CLASS_NAMES
    palette = PALETTE
    # The peers' protocol on STEGO's tiles; the 200x200 tiles are upscaled to 320 by its resize.
    default_protocol = "center320"
    description = "Potsdam-3: STEGO's 200x200 tiles of ISPRS Potsdam, 3 merged classes"
    official_sizes = {"train": 4545, "val": 855}
    lut = label_lookup(RAW_TO_CLASS)

    def check_root(self, data_root, split):
        self.check_split(split)
        root = Path(data_root)
        if not root.is_dir():
            raise DataError(
                f"--data-root {root}: no such folder (expected imgs/, gt/ and the split lists; see docs/datasets.md)"
            )
        for path in (root / "imgs", root / "gt", root / SPLIT_FILES[split]):
            if not path.exists():
                raise DataError(
                    f"{path}: missing; fetch STEGO's Potsdam with "
                    f"'python scripts/prepare_data.py potsdam3 --data-root {root}'"
                )

    def split_ids(self, data_root, split):
        return read_split_list(self.split_source(data_root, split))

    def split_source(self, data_root, split):
        self.check_split(split)
        return Path(data_root) / SPLIT_FILES[split]

    def image_path(self, data_root, split, image_id):
        return Path(data_root) / "imgs" / f"{image_id}.mat"

    def label_path(self, data_root, split, image_id):
        return Path(data_root) / "gt" / f"{image_id}.mat"

    def read_image(self, data_root, split, image_id):
        """The R, G, B channels of the tile (infrared dropped, as STEGO)."""
        path = self.image_path(data_root, split, image_id)
        pixels = load_mat_array(path, "img", "image")
        if pixels.ndim != 3 or pixels.shape[2] < 3 or pixels.dtype != np.uint8:
            raise DataError(f"{path}: 'img' must be an HxWx3 or HxWx4 uint8 array, got {pixels.shape} {pixels.dtype}")
        return Image.fromarray(np.ascontiguousarray(pixels[:, :, :3]))

    def read_raw_label(self, path):
        raw = load_mat_array(path, "gt", "label")
        if raw.ndim != 2:
            raise DataError(f"{path}: 'gt' must be an HxW array of class ids, got shape {raw.shape}")
        return raw

    def map_label(self, raw, source):
        return map_labels(raw, self.lut, source, "ISPRS Potsdam class ids 0..5 and 255")


POTSDAM3 = PotsdamSpec()
