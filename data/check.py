"""Checking a data root file by file, the same way for every dataset (``scripts/prepare_data.py
DATASET --check``, which also ends every preparation).

Every listed image is decoded (a truncated file opens, it does not decode), every label is decoded
and its values mapped through the dataset's label map, and its size is compared with its image's:
what training or evaluation would stop on hours later is found here, with the files named one by
one. The split sizes are compared with the official release's, where it is known.
"""

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.folder import CLASSES_FILE, LABELS_DIR, label_relative, orphan_labels, read_class_names, read_label_values
from data.photos import display_path, read_photo, scan_images
from data.spec import DataError
from utils.errors import EXIT_PROBLEMS

MAX_WORKERS = 8


def worker_count():
    """Threads that read files at once: Pillow decodes without holding the GIL and network file
    systems answer several requests at a time, so twice the cores, at most MAX_WORKERS."""
    return min(MAX_WORKERS, 2 * (os.cpu_count() or 1))


class ProblemsFound(DataError):
    """A check found files that training or evaluation cannot use (exit 1: the check itself worked)."""

    exit_code = EXIT_PROBLEMS


@dataclass(frozen=True)
class Problem:
    """One file that cannot be used: the id it belongs to, the file, and what is wrong with it."""

    image_id: str
    path: Path
    what: str

    def __str__(self):
        return f"{self.image_id} ({self.what}): {self.path}"


@dataclass
class SplitCheck:
    """What ``check_split`` found in one split; ``name`` is the split as the layout names it."""

    name: str
    listed: int
    checked: int
    problems: list = field(default_factory=list)


def _unreadable(kind, err, path):
    """What is wrong with a file a reader refused, without the file name the reader's message starts with."""
    if err.__cause__ is not None:  # the decoder failed: truncated, damaged or not that kind of file
        return f"unreadable {kind} ({err.__cause__})"
    return f"bad {kind}: {str(err).removeprefix(f'{path}: ')}"


def check_item(spec, data_root, split, image_id):
    """The problems of one id: its image and label missing or not decodable, label values outside the
    dataset's map, a label whose size differs from its image's. Read by the dataset's own readers,
    as training and evaluation read them."""
    image_file, label_file = spec.image_path(data_root, split, image_id), spec.label_path(data_root, split, image_id)
    problems, image = [], None
    if not image_file.is_file():
        problems.append(Problem(image_id, image_file, "image missing"))
    else:
        try:
            image = spec.read_image(data_root, split, image_id)
        except DataError as err:
            problems.append(Problem(image_id, image_file, _unreadable("image", err, image_file)))
    if not label_file.is_file():
        problems.append(Problem(image_id, label_file, "label missing"))
        return problems
    try:
        raw = spec.read_raw_label(label_file)
    except DataError as err:
        problems.append(Problem(image_id, label_file, _unreadable("label", err, label_file)))
        return problems
    try:
        spec.map_label(raw, str(label_file))
    except DataError as err:
        problems.append(Problem(image_id, label_file, str(err).removeprefix(f"{label_file}: ")))
    if image is not None and raw.shape[:2] != (image.height, image.width):
        problems.append(
            Problem(
                image_id,
                label_file,
                f"label is {raw.shape[1]}x{raw.shape[0]} but its image is {image.width}x{image.height}",
            )
        )
    return problems


def check_split(spec, data_root, split, *, limit=None, say=print, quiet=False):
    """Check the first ``limit`` ids (all by default) of a split, with a progress bar on stderr.

    ``say`` receives the report's lines as they are known: what is checked, a note when the split's
    size is not the official one, each problem on its own line, and the split's verdict. A root or
    list that cannot be read at all is a DataError (exit 2), raised before any file is read.
    """
    spec.check_root(data_root, split)
    ids = spec.split_ids(data_root, split)
    chosen = ids[:limit] if limit else ids
    name = spec.split_name(split)
    scope = f"{len(chosen)} ids" if len(chosen) == len(ids) else f"the first {len(chosen)} of {len(ids)} ids"
    say(f"{spec.name} {name}: checking {scope} of {spec.split_source(data_root, split)}")
    official = spec.official_sizes.get(split)
    if official and official != len(ids):
        say(f"  note: the official {name} split has {official} images, this root has {len(ids)}")
    report = SplitCheck(name, len(ids), len(chosen))
    with ThreadPoolExecutor(max_workers=worker_count()) as pool:
        results = pool.map(lambda image_id: check_item(spec, data_root, split, image_id), chosen)
        for problems in tqdm(results, total=len(chosen), desc=f"check {name}", unit="img", disable=quiet):
            report.problems.extend(problems)
    for problem in report.problems:
        say(f"  {problem}")
    verdict = f"FAILED, {count_problems(len(report.problems))}" if report.problems else "OK, no problems"
    say(f"{spec.name} {name}: {verdict} in {len(chosen)} ids")
    return report


def count_problems(count):
    return f"{count} problem{'' if count == 1 else 's'}"


def summary(reports):
    """One line of what a check found per split: ``3 problems in val2017, 0 in train2017``."""
    parts = [f"{count_problems(len(reports[0].problems))} in {reports[0].name}"]
    parts += [f"{len(report.problems)} in {report.name}" for report in reports[1:]]
    return ", ".join(parts)


def check_splits(spec, data_root, splits, *, limit=None, say=print, quiet=False):
    """Check ``splits`` one after the other (see ``check_split``) and return the last line to show.

    Problems raise ProblemsFound, whose message (the error line) summarises them per split; else
    the returned line does, starting with OK.
    """
    reports = [check_split(spec, data_root, split, limit=limit, say=say, quiet=quiet) for split in splits]
    found = summary(reports)
    if any(report.problems for report in reports):
        raise ProblemsFound(
            f"--data-root {data_root}: {found} (listed above); replace the files named there, or delete "
            f"the folders that hold them and run this command without --check to unpack them anew"
        )
    return f"OK: {found} ({sum(report.checked for report in reports)} images checked)"


def check_folder(root, *, say=print, quiet=False):
    """``prepare_data.py folder --check``: decode every image and label of a ``folder`` root (data/folder.py)
    and report as the benchmarks' checks do: images per format and other files skipped, then each
    problem on its own line (unreadable images, label files without an image, labels of another size,
    label values >= C, a bad classes.txt), the smallest, median and largest image, and the verdict.
    Returns the last line; problems raise ProblemsFound (exit 1)."""
    root = Path(root)
    scan = scan_images(root, exclude_top=(LABELS_DIR,))
    formats = Counter(path.suffix.lower().lstrip(".") for path in scan.images)
    say(f"folder: checking {len(scan.images)} images of {root}")
    say(f"  images per format: {', '.join(f'{name} {count}' for name, count in sorted(formats.items())) or 'none'}")
    say(f"  non-image files skipped: {len(scan.skipped)}; the project's own PNGs skipped: {len(scan.outputs)}")
    for folder, reason in scan.unreadable_dirs:
        say(f"  folder skipped, it cannot be read ({reason}): {display_path(root / folder)}")
    problems, sizes, largest, values_by_label = [], [], -1, {}

    def decode(relative):
        try:
            return read_photo(root / relative)[1], None
        except DataError as err:
            return None, str(err).removeprefix(f"{root / relative}: ")

    with ThreadPoolExecutor(max_workers=worker_count()) as pool:
        results = pool.map(decode, scan.images)
        for relative, (size, reason) in tqdm(zip(scan.images, results), total=len(scan.images), disable=quiet):
            if size is None:
                problems.append(f"unreadable image ({reason}): {display_path(root / relative)}")
                continue
            sizes.append(size)
            label_path = root / label_relative(relative)
            if not label_path.is_file():
                continue
            try:
                values = read_label_values(label_path)
            except DataError as err:
                problems.append(
                    f"unreadable label ({str(err).removeprefix(f'{label_path}: ')}): {display_path(label_path)}"
                )
                continue
            if (values.shape[1], values.shape[0]) != size:
                problems.append(
                    f"label is {values.shape[1]}x{values.shape[0]}, its image {size[0]}x{size[1]}: "
                    f"{display_path(label_path)}"
                )
            present = np.unique(values)
            present = present[present != 255]
            if present.size:
                largest = max(largest, int(present.max()))
                values_by_label[label_path] = present
    for relative in orphan_labels(root, scan.images):
        problems.append(f"label file without an image: {display_path(root / LABELS_DIR / relative)}")
    classes = root / CLASSES_FILE
    count = largest + 1
    if classes.is_file():
        try:
            count = len(read_class_names(classes))
        except DataError as err:
            problems.append(f"bad class names ({str(err).removeprefix(f'{classes}: ')}): {display_path(classes)}")
    for label_path, present in values_by_label.items():
        if present.max() >= count or present.max() >= 255:
            problems.append(f"label value {int(present.max())} >= the {count} classes: {display_path(label_path)}")
    for problem in problems:
        say(f"  {problem}")
    if sizes:
        by_area = sorted(sizes, key=lambda size: (size[0] * size[1], size))
        median = by_area[len(by_area) // 2]
        say(
            f"  image sizes: smallest {by_area[0][0]}x{by_area[0][1]}, median {median[0]}x{median[1]}, "
            f"largest {by_area[-1][0]}x{by_area[-1][1]}"
        )
    say(f"  classes: {count if count > 0 else 'none (no label file)'}")
    if problems:
        raise ProblemsFound(f"--data-root {root}: {count_problems(len(problems))} in folder (listed above)")
    if not sizes:
        raise DataError(f"--data-root {root}: no image found ({len(scan.skipped)} other file(s) skipped)")
    return f"OK: 0 problems in folder ({len(sizes)} images checked)"
