"""The ``folder`` dataset: a user's own collection, a folder of images at any depth (docs/own_data.md).

Unlike a benchmark's fixed spec, a ``FolderSpec`` is built from its data root: the images, the
classes and the palette are what the root holds.

- Images are found by data/photos.py's scan (any depth, any case of the extensions predict.py
  reads; hidden files, the project's own PNGs and ``labels/`` left out) and read upright at the
  working size (``short_side``, default 480; JPEG draft decoding), as predict.py reads them.
- ``labels/`` holds optional label PNGs at the images' relative paths (``a/x.jpg`` ->
  ``labels/a/x.png``): class ids 0..C-1, 255 ignored, palette-mode PNGs read as their indices.
  The labelled images are the validation split and are never trained on; all others are.
- ``classes.txt`` optionally names the C classes, one per line; without it C is the largest
  label value + 1.

The scan opens every image's header (no decoding) before the first step: files that cannot be
opened are left out and reported (``excluded``). An image that opens but fails to decode while
training (a truncated JPEG) is replaced by a deterministic substitute (data/pairs.py).
"""

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from data.photos import display_path, escape_undecodable, header_size, read_photo, scan_images
from data.spec import DataError, DatasetSpec, distinct_palette

NAME = "folder"
LABELS_DIR = "labels"
CLASSES_FILE = "classes.txt"
FILE_LIST = "files.json"  # the run's images, saved in its folder: --resume trains on exactly these
EXCLUDED_FILE = "excluded.txt"  # files left out or substituted, one "path<TAB>reason" line each
DEFAULT_SHORT_SIDE = 480
SCAN_THREADS = 8  # files whose headers are read at once
SHOW_GONE = 5  # files named in the error of a resumed run whose images are gone
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def opened_size(path):
    """(upright size, None), or (None, why the file cannot be opened)."""
    try:
        return header_size(path), None
    except IMAGE_ERRORS as err:
        return None, str(err)


def read_label_values(path):
    """The class ids of a label PNG as stored (uint8 or wider, (H, W)): palette-mode PNGs give their
    indices, as annotation tools write them; a colour label is a DataError."""
    try:
        with Image.open(path) as label:
            if label.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L", "1"):
                raise DataError(
                    f"{path}: label is a {label.mode} image; a label holds one class id per pixel "
                    f"(greyscale or palette mode)"
                )
            return np.array(label)
    except IMAGE_ERRORS as err:
        raise DataError(f"{path}: cannot read the label ({err})") from err


def read_class_names(path):
    """The names of ``classes.txt`` (UTF-8, one per line, blank lines skipped); a repeated name is a DataError."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read the class names ({err})") from err
    names = [line.strip() for line in text.splitlines() if line.strip()]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataError(f"{path}: class name {repeated[0]!r} is given more than once; each class is named once")
    if not names:
        raise DataError(f"{path}: no class name in it; write one name per line, or remove the file")
    return names


@dataclass
class FolderContents:
    """What a folder holds: relative image paths (str) of each split, the classes, what was left out."""

    train: list = field(default_factory=list)
    val: list = field(default_factory=list)
    class_names: list = field(default_factory=list)
    excluded: list = field(default_factory=list)  # (relative path, reason)
    skipped: int = 0  # files that are not images
    unreadable_dirs: list = field(default_factory=list)  # (relative folder, reason)
    orphan_labels: list = field(default_factory=list)  # label files without an image

    def as_json(self):
        return json.dumps({"train": self.train, "val": self.val, "class_names": self.class_names}, indent=0)


def label_relative(image_relative):
    return str(Path(LABELS_DIR, image_relative).with_suffix(".png"))


def scan_folder(root):
    """A folder's contents from file headers and its label files (decoded: they decide C).

    Every refusal is one DataError naming the file: no image, a label of another size than its
    image, a label value >= C, a bad classes.txt.
    """
    root = Path(root)
    scan = scan_images(root, exclude_top=(LABELS_DIR,))
    contents = FolderContents(skipped=len(scan.skipped), unreadable_dirs=list(scan.unreadable_dirs))
    sizes = {}
    with ThreadPoolExecutor(max_workers=SCAN_THREADS) as pool:  # headers of a network folder: a few at once
        headers = pool.map(opened_size, [root / relative for relative in scan.images])
        for relative, (size, reason) in zip(scan.images, headers):
            if size is None:
                contents.excluded.append((str(relative), f"cannot open the image ({reason})"))
            else:
                sizes[str(relative)] = size
    if not sizes:
        found = f"{len(scan.images)} image(s) that cannot be opened and " if scan.images else ""
        raise DataError(f"--data-root {root}: no image found ({found}{len(scan.skipped)} other file(s) skipped)")
    labelled, largest = {}, -1
    for relative, size in sizes.items():
        path = root / label_relative(relative)
        if not path.is_file():
            continue
        values = read_label_values(path)
        if (values.shape[1], values.shape[0]) != size:
            raise DataError(
                f"{path}: label is {values.shape[1]}x{values.shape[0]} but its image {root / relative} is "
                f"{size[0]}x{size[1]} (upright); draw labels on the upright image"
            )
        present = np.unique(values)
        present = present[present != 255]
        labelled[relative] = int(present.max()) if present.size else -1
        largest = max(largest, labelled[relative])
    classes_path = root / CLASSES_FILE
    if classes_path.is_file():
        contents.class_names = read_class_names(classes_path)
        for relative, top in labelled.items():
            if top >= len(contents.class_names):
                raise DataError(
                    f"{root / label_relative(relative)}: label value {top}, but {classes_path} names "
                    f"{len(contents.class_names)} classes (values 0..{len(contents.class_names) - 1}, 255 ignored)"
                )
    elif largest >= 0:
        contents.class_names = [f"class {index}" for index in range(largest + 1)]
    if labelled and largest >= 255:
        raise DataError(f"--data-root {root}: label values go up to {largest}; class ids are 0..254 (255 is ignored)")
    contents.val = [relative for relative in sizes if relative in labelled]
    contents.train = [relative for relative in sizes if relative not in labelled]
    contents.orphan_labels = orphan_labels(root, sizes)
    return contents


def orphan_labels(root, images):
    """The label PNGs under ``root/labels`` (relative to it, sorted) that no image of ``images``
    (relative paths) has."""
    stems = {str(Path(relative).with_suffix("")) for relative in images}
    labels_root = Path(root, LABELS_DIR)
    found = []
    for folder, _, files in os.walk(labels_root):
        for name in files:
            relative = Path(folder, name).relative_to(labels_root)
            if relative.suffix.lower() == ".png" and str(relative.with_suffix("")) not in stems:
                found.append(relative)
    return sorted(found)


def excluded_lines(excluded):
    """``excluded.txt``'s lines: the relative path (undecodable bytes as \\xNN), a tab, the reason."""
    return "".join(f"{display_path(path)}\t{escape_undecodable(reason)}\n" for path, reason in excluded)


class FolderSpec(DatasetSpec):
    """The ``folder`` dataset of one data root (see the module's docstring)."""

    name = NAME
    description = "your own images, in a folder at any depth, with optional labels (docs/own_data.md)"
    default_protocol = "photo"
    score_size = None  # scored at each label's own size
    has_train_labels = False  # the training pairs read no label: the linear probe has nothing to learn
    substitutes_damaged = True  # an image that fails to decode in training is replaced (data/pairs.py)

    def __init__(self, data_root):
        self.root = Path(data_root)
        self.short_side = DEFAULT_SHORT_SIDE
        self._contents = None

    @property
    def contents(self):
        if self._contents is None:
            self._contents = scan_folder(self.root)
        return self._contents

    def use_file_list(self, path):
        """Train on the images a run's ``files.json`` lists (a resumed run): files added to the folder
        since are ignored; files gone are a DataError naming them."""
        try:
            saved = json.loads(Path(path).read_text(encoding="utf-8"))
            contents = FolderContents(train=saved["train"], val=saved["val"], class_names=saved["class_names"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(f"{path}: not a file list written by train.py ({err})") from err
        gone = [relative for relative in contents.train + contents.val if not (self.root / relative).is_file()]
        if gone:
            names = ", ".join(display_path(relative) for relative in gone[:SHOW_GONE])
            raise DataError(
                f"--data-root {self.root}: {len(gone)} image(s) of the run's file list {path} are gone ({names}"
                f"{', ...' if len(gone) > SHOW_GONE else ''}); put them back to resume, or start a new run"
            )
        self._contents = contents

    @property
    def class_names(self):
        return tuple(self.contents.class_names)

    @property
    def palette(self):
        return distinct_palette(max(1, self.num_classes))

    def has_validation(self, data_root=None):
        """Whether the root holds labelled images (they form the validation split)."""
        return bool(self.contents.val)

    def check_root(self, data_root, split):
        self.check_split(split)
        return self.contents

    def split_ids(self, data_root, split):
        return list(getattr(self.contents, split))

    def split_source(self, data_root, split):
        return str(self.root)

    def check_split_files(self, data_root, split, limit=None):
        return self.split_ids(data_root, split)[:limit]

    def image_path(self, data_root, split, image_id):
        return Path(data_root) / image_id

    def label_path(self, data_root, split, image_id):
        return Path(data_root) / label_relative(image_id)

    def map_label(self, raw, source):
        """Class ids as stored; a value >= C (other than 255) is a DataError naming the file and the value."""
        raw = np.asarray(raw)
        bad = np.unique(raw[(raw >= self.num_classes) & (raw != 255)])
        if bad.size:
            raise DataError(f"{source}: label value {int(bad[0])} >= the {self.num_classes} classes")
        return raw.astype(np.uint8)

    def read_image(self, data_root, split, image_id):
        """The image upright, at the working size (``short_side``)."""
        return read_photo(self.image_path(data_root, split, image_id), self.short_side)[0]

    def read_raw_label(self, path):
        return read_label_values(path)

    def read_pair(self, data_root, split, image_id):
        """(PIL RGB image at the working size, PIL 'L' label at the original size): the protocol
        segments at the working size and scores at the label's (engine/evaluation.py)."""
        image, original = read_photo(self.image_path(data_root, split, image_id), self.short_side)
        path = self.label_path(data_root, split, image_id)
        label = self.map_label(read_label_values(path), str(path))
        if (label.shape[1], label.shape[0]) != original:
            raise DataError(
                f"{path}: label is {label.shape[1]}x{label.shape[0]} but the image is {original[0]}x{original[1]}"
            )
        return image, Image.fromarray(label)

    def read_train_raw(self, data_root, split, item):
        """The image at the working size and an all-ignored label (no view of it is ever copied)."""
        image = self.read_image(data_root, split, item)
        ignored = np.broadcast_to(np.uint8(255), (image.height, image.width))  # (H, W), no memory of its own
        return image, ignored, str(self.image_path(data_root, split, item))
