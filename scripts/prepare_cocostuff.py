"""Download and unpack COCO-Stuff (COCO 2017 images + stuffthingmaps) into the project's layout,
or check an existing data root.

    python scripts/prepare_cocostuff.py --data-root DIR [--splits val train] [--keep-zips]
    python scripts/prepare_cocostuff.py --data-root DIR --check [--check-limit N]

Layout written (SPEC §6): ``images/{train2017,val2017}/ID.jpg``, ``annotations/{train2017,val2017}/ID.png``
and ``curated/{train2017,val2017}/Coco164kFull_Stuff_Coarse_7.txt``. Every step can be interrupted
and re-run: zips download to ``DIR/downloads/`` and resume, a folder only appears once its zip is
fully unpacked, and folders already there are skipped. A check of the result ends every run.
"""

import argparse
import hashlib
import os
import shutil
import sys
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a file, the script only sees scripts/
    sys.path.insert(0, str(REPO_ROOT))

from data.cocostuff import (  # noqa: E402
    SHIPPED_CURATED_DIR,
    SPLIT_LIST_NAME,
    SPLITS,
    DataError,
    image_path,
    label_path,
    load_label_map,
    read_split_ids,
    split_folder,
    split_list_path,
)
from utils.cli import entry_point  # noqa: E402
from utils.download import download_file  # noqa: E402
from utils.errors import EXIT_OK, EXIT_PROBLEMS  # noqa: E402

IMAGES_BASE_URL = "http://images.cocodataset.org/"
LABELS_ZIP = "stuffthingmaps_trainval2017.zip"
LABELS_URL = f"http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/{LABELS_ZIP}"
# Prefixes of the md5 of the curated lists the project ships (SPEC §6): they define the splits
# behind the published numbers, so a damaged copy must not spread into data roots.
CURATED_MD5_PREFIX = {"train": "bf3d54a2", "val": "de66cfb9"}
CHECK_WORKERS = 8
SHOW_IDS = 5


def source_urls(base_url=None):
    """URLs of the zips: ``{"train": ..., "val": ..., "labels": ...}``.

    ``base_url`` (a mirror, or the tests' loopback server) replaces both hosts:
    ``BASE/zips/{train,val}2017.zip`` and ``BASE/stuffthingmaps_trainval2017.zip``.
    """
    base = IMAGES_BASE_URL if base_url is None else base_url.rstrip("/") + "/"
    urls = {split: f"{base}zips/{split_folder(split)}.zip" for split in SPLITS}
    urls["labels"] = LABELS_URL if base_url is None else base + LABELS_ZIP
    return urls


def _md5(path):
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def install_curated_lists(data_root, splits, *, quiet=False):
    """Copy the shipped split lists into ``data_root/curated/`` after checking their md5.

    A list the data root already has is kept (it is what the loaders read), with a note when it
    is not the official one.
    """
    for split in splits:
        folder = split_folder(split)
        shipped = SHIPPED_CURATED_DIR / folder / SPLIT_LIST_NAME
        digest = _md5(shipped)
        if not digest.startswith(CURATED_MD5_PREFIX[split]):
            raise DataError(
                f"{shipped}: md5 {digest} does not start with {CURATED_MD5_PREFIX[split]}; the project's "
                f"copy of the curated {split} list is damaged, restore it from the repository"
            )
        own = Path(data_root) / "curated" / folder / SPLIT_LIST_NAME
        if own.is_file():
            if _md5(own) != digest and not quiet:
                print(
                    f"note: keeping {own}, this data root's own {split} list, which is not the official one "
                    f"({len(read_split_ids(data_root, split))} ids)"
                )
            continue
        own.parent.mkdir(parents=True, exist_ok=True)
        tmp = own.with_name(own.name + ".tmp")
        shutil.copyfile(shipped, tmp)
        os.replace(tmp, own)


def unpack_folder(zip_path, folder, target, *, quiet=False):
    """Extract the files under ``folder/`` in ``zip_path`` into the new directory ``target``.

    Files go to a hidden sibling first, renamed to ``target`` when all are out, so ``target``
    never exists half-filled and an interrupted unpack is simply redone. Extracting reads every
    member through its CRC, which is how a damaged zip is caught (a separate testzip would read an
    18 GB zip twice).
    """
    zip_path, target = Path(zip_path), Path(target)
    tmp = target.with_name(f".{target.name}.unpacking")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = [m for m in archive.infolist() if m.filename.startswith(f"{folder}/") and not m.is_dir()]
            if not members:
                raise DataError(
                    f"{zip_path}: holds no files under {folder}/; it is not the expected zip. "
                    f"Delete it and run this command again."
                )
            for member in tqdm(members, desc=f"unpack {zip_path.name}:{folder}", unit="file", disable=quiet):
                archive.extract(member, tmp)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(
            f"{zip_path} is damaged or incomplete ({err}). Delete it and run this command again to download it anew."
        ) from err
    os.replace(tmp / folder, target)
    shutil.rmtree(tmp)
    return target


def install_from_zip(url, zip_path, folders, parent, *, keep_zip=False, quiet=False):
    """Make ``parent/<folder>`` for each of ``folders`` from the zip at ``url``, skipping those present.

    The zip is downloaded to ``zip_path`` (resuming a partial download) only when something is
    missing, and deleted afterwards unless ``keep_zip``.
    """
    zip_path, parent = Path(zip_path), Path(parent)
    say = (lambda message: None) if quiet else print
    missing = [folder for folder in folders if not (parent / folder).is_dir()]
    for folder in folders:
        if folder not in missing:
            say(f"{parent / folder} already there, skipping")
    if not missing:
        return
    if zip_path.exists():
        say(f"using {zip_path}, downloaded earlier")
    else:
        say(f"downloading {url} to {zip_path}")
        download_file(url, zip_path, quiet=quiet)
    parent.mkdir(parents=True, exist_ok=True)
    for folder in missing:
        say(f"unpacking {folder}/ of {zip_path.name} to {parent / folder}")
        unpack_folder(zip_path, folder, parent / folder, quiet=quiet)
    if not keep_zip:
        zip_path.unlink()


def prepare_root(data_root, splits, *, base_url=None, keep_zips=False, quiet=False):
    """Fill ``data_root`` for ``splits``: curated lists, stuffthingmaps labels, then COCO images."""
    root = Path(data_root)
    downloads = root / "downloads"
    urls = source_urls(base_url)
    folders = [split_folder(split) for split in splits]
    install_curated_lists(root, splits, quiet=quiet)
    install_from_zip(
        urls["labels"], downloads / LABELS_ZIP, folders, root / "annotations", keep_zip=keep_zips, quiet=quiet
    )
    for split, folder in zip(splits, folders):
        install_from_zip(
            urls[split], downloads / f"{folder}.zip", [folder], root / "images", keep_zip=keep_zips, quiet=quiet
        )
    if downloads.is_dir() and not any(downloads.iterdir()):
        downloads.rmdir()


@dataclass
class SplitCheck:
    """What ``check_root`` found for one split; ``bad_images`` and ``bad_labels`` hold (id, what is wrong)."""

    split: str
    list_path: Path
    listed: int
    checked: int
    missing_images: list = field(default_factory=list)
    missing_labels: list = field(default_factory=list)
    bad_images: list = field(default_factory=list)
    bad_labels: list = field(default_factory=list)

    @property
    def ok(self):
        return not (self.missing_images or self.missing_labels or self.bad_images or self.bad_labels)


def _decode(path, label=False):
    """(size, label values or None, problem or None) of a file decoded fully: a truncated file
    fails here, where opening it alone would not. Label values are read as the loaders read
    them (``convert('L')``)."""
    try:
        with Image.open(path) as image:
            image.load()
            values = np.unique(np.asarray(image.convert("L"))) if label else None
            return image.size, values, None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return None, None, f"unreadable ({err})"


def _check_id(root, split, lut, image_id):
    """(id, image problem, label problem); a problem is None, "missing" or what is wrong.

    Both files are decoded fully, and the label's values and size are checked against the map
    and its image.
    """
    image_file, label_file = image_path(root, split, image_id), label_path(root, split, image_id)
    image_size, image_problem = None, "missing"
    if image_file.is_file():
        image_size, _, image_problem = _decode(image_file)
    if not label_file.is_file():
        return image_id, image_problem, "missing"
    label_size, values, label_problem = _decode(label_file, label=True)
    if values is not None:
        bad = values[lut[values] < 0]
        if bad.size:
            label_problem = f"values {bad.tolist()[:10]} not in the fine -> coarse map"
        elif image_size is not None and label_size != image_size:
            label_problem = f"label is {label_size[0]}x{label_size[1]} but its image is {image_size[0]}x{image_size[1]}"
    return image_id, image_problem, label_problem


def check_root(data_root, splits, *, limit=None, quiet=False):
    """Open every listed image and label of ``splits`` fully and check what the loaders will need.

    Returns one SplitCheck per split; ``limit`` checks only the first ``limit`` ids of each list.
    Files are decoded in parallel threads (Pillow decodes without holding the GIL).
    """
    root = Path(data_root)
    if not root.is_dir():
        raise DataError(f"--data-root {root}: no such folder")
    lut, _ = load_label_map()
    reports = []
    for split in splits:
        ids = read_split_ids(root, split)
        chosen = ids[:limit] if limit else ids
        report = SplitCheck(split, split_list_path(root, split), len(ids), len(chosen))
        with ThreadPoolExecutor(max_workers=min(CHECK_WORKERS, 2 * (os.cpu_count() or 1))) as pool:
            results = pool.map(partial(_check_id, root, split, lut), chosen)
            for image_id, image_problem, label_problem in tqdm(
                results, total=len(chosen), desc=f"check {split_folder(split)}", unit="img", disable=quiet
            ):
                if image_problem == "missing":
                    report.missing_images.append(image_id)
                elif image_problem is not None:
                    report.bad_images.append((image_id, image_problem))
                if label_problem == "missing":
                    report.missing_labels.append(image_id)
                elif label_problem is not None:
                    report.bad_labels.append((image_id, label_problem))
        reports.append(report)
    return reports


SHOW_BAD = 50


def format_check(reports, data_root=None):
    """Human-readable report of ``check_root``: missing files counted (with examples), every bad
    file on its own line (up to SHOW_BAD a kind), and an OK or FAILED line."""
    lines = []
    for report in reports:
        folder = split_folder(report.split)
        scope = (
            f"{report.checked} ids"
            if report.checked == report.listed
            else f"the first {report.checked} of {report.listed} ids"
        )
        lines.append(f"{folder}: checked {scope} of {report.list_path}")
        for what, ids in (("missing images", report.missing_images), ("missing labels", report.missing_labels)):
            if ids:
                more = ", ..." if len(ids) > SHOW_IDS else ""
                lines.append(f"  {what}: {len(ids)} (e.g. {', '.join(ids[:SHOW_IDS])}{more})")
        for what, bad, path_of in (
            ("bad images", report.bad_images, image_path),
            ("bad labels", report.bad_labels, label_path),
        ):
            if bad:
                lines.append(f"  {what}: {len(bad)}")
                for image_id, problem in bad[:SHOW_BAD]:
                    where = f": {path_of(data_root, report.split, image_id)}" if data_root is not None else ""
                    lines.append(f"    {image_id} ({problem}){where}")
                if len(bad) > SHOW_BAD:
                    lines.append(f"    ... and {len(bad) - SHOW_BAD} more")
    total = sum(report.checked for report in reports)
    if all(report.ok for report in reports):
        lines.append(f"OK: {total} images")
    else:
        lines.append(
            f"FAILED: problems in {', '.join(split_folder(r.split) for r in reports if not r.ok)}; "
            f"re-run without --check to fetch what is missing, or replace the files named above"
        )
    return "\n".join(lines)


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


@entry_point
def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Download COCO-Stuff (COCO 2017 images + stuffthingmaps, ~20 GB for both splits) into "
        "the project's data layout, or check an existing data root."
    )
    parser.add_argument("--data-root", type=Path, required=True, help="folder to fill (or check)")
    parser.add_argument(
        "--splits",
        nargs="+",
        choices=SPLITS,
        default=["val", "train"],
        help="splits to prepare or check (default: val train; train2017.zip alone is 18 GB)",
    )
    parser.add_argument("--check", action="store_true", help="only check the data root; download nothing")
    parser.add_argument(
        "--check-limit", type=_positive_int, metavar="N", help="check only the first N ids of each split (faster)"
    )
    parser.add_argument("--keep-zips", action="store_true", help="keep the zips in DATA_ROOT/downloads/")
    parser.add_argument(
        "--base-url",
        help="download from a mirror: BASE/zips/{train,val}2017.zip and "
        f"BASE/{LABELS_ZIP} instead of the official hosts",
    )
    args = parser.parse_args(argv)
    splits = list(dict.fromkeys(args.splits))
    if not args.check:
        try:
            prepare_root(args.data_root, splits, base_url=args.base_url, keep_zips=args.keep_zips)
        except DataError as err:  # a damaged download or project copy: a problem the run met (exit 1)
            err.exit_code = EXIT_PROBLEMS
            raise
    reports = check_root(args.data_root, splits, limit=args.check_limit)
    print(format_check(reports, args.data_root), flush=True)
    if not all(report.ok for report in reports):
        print(f"error: --data-root {args.data_root} has the problems listed above", file=sys.stderr)
        return EXIT_PROBLEMS
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
