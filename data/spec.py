"""The dataset abstraction: one object per benchmark that knows its classes, label mapping, splits
and files, so that training, evaluation, prediction and the scripts never depend on a layout.

A benchmark is a ``DatasetSpec`` subclass in its own module under data/ (cocostuff.py,
cocostuff171.py, cityscapes.py, potsdam.py) and one line in data/registry.py, which maps the
``--dataset`` names to instances. What a spec provides:

- ``class_names``, ``palette`` (one RGB colour per class) and ``num_classes``;
- ``split_ids(root, split)``, ``image_path`` / ``label_path`` and ``check_root(root, split)``; split
  list files are read by ``read_split_list``, the one reader of every dataset;
- ``split_name`` / ``split_source`` / ``official_sizes``: how the layout names a split, where its ids
  come from and how many the official release has, for the reports of data/check.py;
- ``read_image`` (PIL RGB) and ``read_label`` (uint8 class ids, 255 = ignore; any raw value outside
  the dataset's label map is a ``DataError`` naming the file);
- ``train_items`` / ``read_train_raw``: the per-dataset preprocessing of training images before the
  generic pair sampling of data/pairs.py (e.g. Cityscapes' five crops);
- evaluation defaults: ``default_protocol`` and ``score_size`` (the grid the sliding protocol scores on);
- what the data root holds: ``has_train_labels`` (the training pairs carry labels, so the linear probe
  can learn) and ``has_validation(root)`` (a labelled split scores every epoch and picks
  ``best_model.pth``); both are true of every benchmark.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data.scan import missing_files
from utils.errors import ReportedError

SHOW_MISSING = 5  # missing files named in a split scan's error
SHOW_REPEATED = 5  # repeated ids named in a split list's error


class DataError(ReportedError, ValueError):
    """A data root, image, label or split list is not what the project expects.

    Raised in a DataLoader worker, it comes back re-created from "Caught DataError in DataLoader
    worker process N. Original Traceback ... DataError: <message>"; only <message> is kept, so that
    the entry points report one line naming the file, whatever --num-workers is.
    """

    def __init__(self, message):
        marker = f"{type(self).__name__}: "
        if message.startswith("Caught ") and "Original Traceback" in message and marker in message:
            message = message.rstrip().rsplit(marker, 1)[1]
        super().__init__(message)


def read_image(path):
    """RGB PIL image, as the original reads it (PIL convert('RGB'))."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            img.load()
            return img if img.mode == "RGB" else img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot read the image ({err})") from err


def read_split_list(path):
    """The ids of a split list file, one per line, read as people write them.

    A UTF-8 byte-order mark (Windows editors write one), Windows or old Mac line endings and
    spaces or tabs around an id are not part of the id; blank lines are skipped. An empty list, or
    an id listed twice (it would be scored, or trained on, twice), is a DataError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split list not found")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start}); save the split list as UTF-8"
        ) from err
    except OSError as err:
        raise DataError(f"{path}: cannot read the split list ({err.strerror or err})") from err
    ids = [line.strip() for line in text.splitlines()]
    ids = [image_id for image_id in ids if image_id]
    if not ids:
        raise DataError(f"{path}: the split list is empty")
    if len(set(ids)) != len(ids):
        seen, repeated = set(), []
        for image_id in ids:
            if image_id in seen and image_id not in repeated:
                repeated.append(image_id)
            seen.add(image_id)
        raise DataError(
            f"{path}: {len(repeated)} id(s) listed more than once (first: {', '.join(repeated[:SHOW_REPEATED])}); "
            f"each image may be listed once"
        )
    return ids


def label_lookup(raw_to_class):
    """A 256-entry int16 table from a {raw value: class id} mapping; unmapped raw values are -1,
    so that they can be reported instead of silently becoming a class."""
    lut = np.full(256, -1, dtype=np.int16)
    for raw, cls in raw_to_class.items():
        lut[int(raw)] = int(cls)
    lut.setflags(write=False)
    return lut


def map_labels(raw, lut, source, known):
    """Class ids (uint8, 255 kept) of a raw label array through ``lut``; a value outside the map is a
    DataError naming ``source`` and what the map ``known``s."""
    raw = np.asarray(raw)
    if raw.dtype != np.uint8:
        if raw.size and (raw.min() < 0 or raw.max() > 255):
            bad = np.unique(raw[(raw < 0) | (raw > 255)])
            raise DataError(f"{source}: label values {bad.tolist()[:10]} are not in the label map ({known})")
        raw = raw.astype(np.uint8)
    mapped = lut[raw]
    if (mapped < 0).any():
        bad = np.unique(raw[mapped < 0])
        raise DataError(f"{source}: label values {bad.tolist()[:10]} are not in the label map ({known})")
    return mapped.astype(np.uint8)


def distinct_palette(count):
    """``count`` well-separated RGB colours (PASCAL VOC's bit-interleaving scheme, starting at 1 so
    that no class is black, the colour of ignored pixels)."""
    palette = np.zeros((count, 3), dtype=np.uint8)
    for index in range(count):
        value, colour = index + 1, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                colour[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        palette[index] = colour
    palette.setflags(write=False)
    return palette


class DatasetSpec:
    """What training, evaluation and prediction need to know about one benchmark.

    Subclasses set the class attributes and implement ``split_ids``, ``split_source``,
    ``image_path``, ``label_path``, ``check_root`` and ``map_label``; reading and the training
    preprocessing have defaults that suit one image file and one label file per id.
    """

    name = None
    class_names = ()
    palette = None
    splits = ("train", "val")
    default_protocol = "sliding"
    score_size = (320, 320)  # (H, W) grid the sliding protocol scores predictions and labels on
    description = ""
    official_sizes = {}  # split -> number of images of the official release, where it is known
    has_train_labels = True  # the training pairs carry labels: the linear probe is trained on them
    substitutes_damaged = False  # an image that fails to decode in training stops the run (data/pairs.py)

    @property
    def num_classes(self):
        return len(self.class_names)

    def __repr__(self):
        return f"<dataset {self.name}: {self.num_classes} classes>"

    def has_validation(self, data_root=None):
        """Whether ``data_root`` holds a labelled validation split (every benchmark does)."""
        return True

    def check_split(self, split):
        if split not in self.splits:
            raise DataError(f"{self.name}: split must be one of {self.splits}, got {split!r}")

    # Layout: implemented by every dataset.
    def check_root(self, data_root, split):
        raise NotImplementedError

    def split_ids(self, data_root, split):
        raise NotImplementedError

    def split_source(self, data_root, split):
        """Where ``split_ids`` takes the split's ids from (a list file, or the folder it scans)."""
        raise NotImplementedError

    def split_name(self, split):
        """The split as the dataset's layout and reports name it (COCO-Stuff: ``val2017``)."""
        return split

    def image_path(self, data_root, split, image_id):
        raise NotImplementedError

    def label_path(self, data_root, split, image_id):
        raise NotImplementedError

    def map_label(self, raw, source):
        """Class ids (uint8, 255 = ignore) of a raw label array read from ``source``."""
        raise NotImplementedError

    def check_split_files(self, data_root, split, limit=None):
        """Fail before the long work, with a count and the first names, when listed files are missing.

        A fast scan (folder listings, no decoding) of every image and label the split's first
        ``limit`` ids need; ``scripts/prepare_data.py DATASET --check`` (data/check.py) decodes them
        all. Returns the ids.
        """
        self.check_root(data_root, split)
        ids = self.split_ids(data_root, split)[:limit]
        problems = []
        for kind, path_of in (("images", self.image_path), ("labels", self.label_path)):
            missing = missing_files([path_of(data_root, split, image_id) for image_id in ids])
            if missing:
                names = ", ".join(path.name for path in missing[:SHOW_MISSING]) + (
                    ", ..." if len(missing) > SHOW_MISSING else ""
                )
                problems.append(f"{len(missing)} of {len(ids)} {kind} missing in {missing[0].parent} ({names})")
        if problems:
            raise DataError(
                f"--data-root {data_root}, {self.name} {split} split: {'; '.join(problems)}. "
                f"`python scripts/prepare_data.py {self.name} --data-root {data_root} --check` lists them all"
            )
        return ids

    # Reading.
    def read_image(self, data_root, split, image_id):
        return read_image(self.image_path(data_root, split, image_id))

    def read_raw_label(self, path):
        """The raw label values of a single-channel PNG, read as the original reads COCO's (convert('L'))."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: label file not found")
        try:
            with Image.open(path) as label:
                return np.array(label.convert("L"))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise DataError(f"{path}: cannot read the label ({err})") from err

    def read_label(self, data_root, split, image_id):
        path = self.label_path(data_root, split, image_id)
        return self.map_label(self.read_raw_label(path), str(path))

    def read_pair(self, data_root, split, image_id):
        """(PIL RGB image, PIL 'L' label of class ids) of one id, checked to be the same size."""
        image = self.read_image(data_root, split, image_id)
        label = self.read_label(data_root, split, image_id)
        if label.shape != (image.height, image.width):
            raise DataError(
                f"{self.label_path(data_root, split, image_id)}: label is {label.shape[1]}x{label.shape[0]} "
                f"but the image is {image.width}x{image.height}"
            )
        return image, Image.fromarray(label)

    # Training preprocessing, before the pair sampling of data/pairs.py.
    def train_items(self, data_root, split):
        """What one training sample is drawn from; by default one item per image id."""
        return self.split_ids(data_root, split)

    def read_train_raw(self, data_root, split, item):
        """(PIL RGB image, raw label array (H, W), the label's source) of one training item; by default
        the whole image. Raw, so that the pair sampling maps only the crops it keeps."""
        image = self.read_image(data_root, split, item)
        path = self.label_path(data_root, split, item)
        raw = self.read_raw_label(path)
        if raw.shape != (image.height, image.width):
            raise DataError(
                f"{path}: label is {raw.shape[1]}x{raw.shape[0]} but the image is {image.width}x{image.height}"
            )
        return image, raw, str(path)


class SegmentationEval(torch.utils.data.Dataset):
    """An evaluation split: (normalised image, class-id label, id) with a protocol's resizing.

    ``transform(image, label) -> (image tensor, label tensor)`` comes from data/transforms.py.
    """

    def __init__(self, spec, data_root, transform, split="val", limit=None):
        spec.check_root(data_root, split)
        self.spec = spec
        self.data_root = Path(data_root)
        self.split = split
        self.ids = spec.split_ids(data_root, split)[:limit]
        self.transform = transform

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        image_id = self.ids[index]
        image, label = self.spec.read_pair(self.data_root, self.split, image_id)
        image, label = self.transform(image, label)
        return {"image": image, "label": label, "id": image_id}
