"""Fill a dataset's data root (download and unpack), then check it; or only check it.

    python scripts/prepare_data.py cocostuff27 --data-root DIR [--splits val train]  # ~20 GB, serves -171 too
    python scripts/prepare_data.py cityscapes27 --data-root DIR [--zips-dir DIR]    # the official zips
    python scripts/prepare_data.py potsdam3 --data-root DIR                          # STEGO's potsdam.zip
    python scripts/prepare_data.py DATASET --data-root DIR --check [--check-limit N]
    python scripts/prepare_data.py folder --data-root DIR --check                   # your own images

COCO-Stuff (cocostuff27 and cocostuff171 read the same files): the curated split lists shipped with
the project are copied to DIR/curated/, the COCO 2017 images and the stuffthingmaps labels are
downloaded and unpacked to DIR/images/ and DIR/annotations/ (train2017.zip alone is 18 GB).
Cityscapes needs a login at cityscapes-dataset.com, so its two official zips are taken from
--zips-dir and left in place; once the check passes, the five training crops of every train image
(STEGO's preparation, data/cityscapes.py) are written to DIR/five_crops/train/ as lossless PNGs.
Potsdam-3 is STEGO's preparation, downloaded from STEGO's public storage. The ``folder`` dataset
(your own images, docs/own_data.md) has nothing to download: it is only checked (data/check.py's
check_folder: every image and label decoded).

Every step can be interrupted and re-run: zips download to --zips-dir (default DIR/downloads) and
resume, a folder only appears once its zip is fully unpacked, and folders already there are
skipped. A check of every listed id ends every run (data/check.py): each image and label decoded,
the label's values in the dataset's map, its size equal to its image's. Problems are listed file by
file; the last line summarises them per split, and the exit code is 1 when there are any.
"""

import hashlib
import posixpath
import shutil
import sys
import zipfile
import zlib
from argparse import ArgumentTypeError
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple, Optional

from PIL import Image
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a file, the script only sees scripts/ (E402: pyproject.toml)
    sys.path.insert(0, str(REPO_ROOT))

from data.check import check_folder, check_splits, worker_count
from data.cityscapes import FIVE_CROPS, crop_paths, five_crop_boxes
from data.cocostuff import SHIPPED_CURATED_DIR, SPLIT_LIST_NAME, SPLITS, read_split_ids, split_folder
from data.potsdam import SPLIT_FILES as POTSDAM_SPLIT_FILES
from data.registry import ALL_DATASET_NAMES, get_dataset
from data.spec import DataError
from utils.cli import ArgumentParser, entry_point
from utils.download import download_file
from utils.errors import EXIT_OK, EXIT_PROBLEMS, OptionError
from utils.files import atomic_path, check_writable_dir, save_image_atomic

DOWNLOADS = "downloads"  # the default --zips-dir, under the data root

COCO_IMAGES_BASE_URL = "http://images.cocodataset.org/"
COCO_LABELS_ZIP = "stuffthingmaps_trainval2017.zip"
COCO_LABELS_URL = f"http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/{COCO_LABELS_ZIP}"
# Prefixes of the md5 of the curated lists the project ships (SPEC §6): they define the splits
# behind the published numbers, so a damaged copy must not spread into data roots.
CURATED_MD5_PREFIX = {"train": "bf3d54a2", "val": "de66cfb9"}

CITYSCAPES_DOWNLOADS = "https://www.cityscapes-dataset.com/downloads/"
CITYSCAPES_REGISTER = "https://www.cityscapes-dataset.com/register/"
# Top folder of the data root -> (official zip, its size as the download page gives it).
CITYSCAPES_ZIPS = {
    "leftImg8bit": ("leftImg8bit_trainvaltest.zip", "11GB"),
    "gtFine": ("gtFine_trainvaltest.zip", "241MB"),
}

# STEGO's download_datasets.py fetches its preparations of the datasets from here.
POTSDAM_URL = "https://marhamilresearch4.blob.core.windows.net/stego-public/pytorch_data/potsdam.zip"
POTSDAM_ZIP = "potsdam.zip"
POTSDAM_LISTS = ("all.txt", "labelled_test.txt", "labelled_train.txt", "unlabelled_train.txt")


class DamagedFile(DataError):
    """A zip (or a file shipped with the project) that cannot be used: found by the run, exit 1."""

    exit_code = EXIT_PROBLEMS


# ---------------------------------------------------------------- zips


def unpack_folder(zip_path, folder, target, *, again="Delete it and run this command again.", quiet=False):
    """Extract the files under ``folder/`` in ``zip_path`` into the new directory ``target``.

    Files go to a hidden sibling first, renamed to ``target`` when all are out, so ``target``
    never exists half-filled and an interrupted unpack is simply redone. Extracting reads every
    member through its CRC, which is how a damaged zip is caught (a separate testzip would read an
    18 GB zip twice). ``again`` tells the user how to get a sound zip.
    """
    zip_path, target = Path(zip_path), Path(target)
    tmp = target.with_name(f".{target.name}.unpacking")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = [m for m in archive.infolist() if m.filename.startswith(f"{folder}/") and not m.is_dir()]
            if not members:
                raise DamagedFile(f"{zip_path}: holds no files under {folder}/; it is not the expected zip. {again}")
            for member in tqdm(members, desc=f"unpack {zip_path.name}:{folder}", unit="file", disable=quiet):
                archive.extract(member, tmp)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DamagedFile(f"{zip_path} is damaged or incomplete ({err}). {again}") from err
    target.parent.mkdir(parents=True, exist_ok=True)
    (tmp / folder).replace(target)
    shutil.rmtree(tmp)
    return target


def fetch_zip(url, zip_path, *, quiet=False):
    """``zip_path``, downloaded from ``url`` (resuming a partial download) unless an earlier run did."""
    say = (lambda message: None) if quiet else print
    if zip_path.exists():
        say(f"using {zip_path}, downloaded earlier")
    else:
        say(f"downloading {url} to {zip_path}")
        download_file(url, zip_path, quiet=quiet)
    return zip_path


def install_from_zip(url, zip_path, folders, parent, *, keep_zip=False, quiet=False):
    """Make ``parent/<folder>`` for each of ``folders`` from the zip at ``url``, skipping those present.

    The zip is fetched only when something is missing, and deleted afterwards unless ``keep_zip``.
    """
    zip_path, parent = Path(zip_path), Path(parent)
    say = (lambda message: None) if quiet else print
    missing = [folder for folder in folders if not (parent / folder).is_dir()]
    for folder in folders:
        if folder not in missing:
            say(f"{parent / folder} already there, skipping")
    if not missing:
        return
    fetch_zip(url, zip_path, quiet=quiet)
    for folder in missing:
        say(f"unpacking {folder}/ of {zip_path.name} to {parent / folder}")
        unpack_folder(zip_path, folder, parent / folder, quiet=quiet)
    if not keep_zip:
        zip_path.unlink()


# ---------------------------------------------------------------- COCO-Stuff


def coco_urls(base_url=None):
    """URLs of the zips: ``{"train": ..., "val": ..., "labels": ...}``.

    ``base_url`` (a mirror, or the tests' loopback server) replaces both hosts:
    ``BASE/zips/{train,val}2017.zip`` and ``BASE/stuffthingmaps_trainval2017.zip``.
    """
    base = COCO_IMAGES_BASE_URL if base_url is None else base_url.rstrip("/") + "/"
    urls = {split: f"{base}zips/{split_folder(split)}.zip" for split in SPLITS}
    urls["labels"] = COCO_LABELS_URL if base_url is None else base + COCO_LABELS_ZIP
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
            raise DamagedFile(
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
        with atomic_path(own) as tmp:
            shutil.copyfile(shipped, tmp)


def prepare_cocostuff(data_root, splits, zips_dir, *, base_url=None, keep_zips=False, quiet=False):
    """Fill ``data_root`` for ``splits``: curated lists, stuffthingmaps labels, then COCO images."""
    root, zips_dir = Path(data_root), Path(zips_dir)
    urls = coco_urls(base_url)
    folders = [split_folder(split) for split in splits]
    install_curated_lists(root, splits, quiet=quiet)
    install_from_zip(
        urls["labels"], zips_dir / COCO_LABELS_ZIP, folders, root / "annotations", keep_zip=keep_zips, quiet=quiet
    )
    for split, folder in zip(splits, folders):
        install_from_zip(
            urls[split], zips_dir / f"{folder}.zip", [folder], root / "images", keep_zip=keep_zips, quiet=quiet
        )


# ---------------------------------------------------------------- Cityscapes


def cityscapes_to_unpack(data_root, splits, zips_dir):
    """The (top folder, split) pairs the data root lacks; a DataError naming the official zips
    when one of those needed is not in ``zips_dir`` (they are the user's input: checked first)."""
    root, zips_dir = Path(data_root), Path(zips_dir)
    missing = [(top, split) for top in CITYSCAPES_ZIPS for split in splits if not (root / top / split).is_dir()]
    needed = [top for top in CITYSCAPES_ZIPS if any(top == wanted for wanted, _ in missing)]
    absent = [top for top in needed if not (zips_dir / CITYSCAPES_ZIPS[top][0]).is_file()]
    if absent:
        wanted = " and ".join(f"{CITYSCAPES_ZIPS[top][0]} ({CITYSCAPES_ZIPS[top][1]})" for top in absent)
        raise DataError(
            f"missing {', '.join(str(zips_dir / CITYSCAPES_ZIPS[top][0]) for top in absent)}: Cityscapes needs a "
            f"login; register at {CITYSCAPES_REGISTER}, download {wanted} from {CITYSCAPES_DOWNLOADS} into "
            f"{zips_dir} (or pass --zips-dir), then run this command again"
        )
    return missing


def prepare_cityscapes(data_root, splits, zips_dir, *, base_url=None, keep_zips=False, quiet=False):
    """Unpack ``leftImg8bit/<split>`` and ``gtFine/<split>`` from the official zips, skipping those present.

    The zips are the user's downloads: never fetched, never deleted (``base_url`` and ``keep_zips``
    do not apply).
    """
    root, zips_dir = Path(data_root), Path(zips_dir)
    say = (lambda message: None) if quiet else print
    missing = cityscapes_to_unpack(root, splits, zips_dir)
    for top, split in ((t, s) for t in CITYSCAPES_ZIPS for s in splits if (t, s) not in missing):
        say(f"{root / top / split} already there, skipping")
    for top, split in missing:
        zip_path = zips_dir / CITYSCAPES_ZIPS[top][0]
        say(f"unpacking {top}/{split}/ of {zip_path.name} to {root / top / split}")
        again = f"Download it again from {CITYSCAPES_DOWNLOADS}."
        unpack_folder(zip_path, f"{top}/{split}", root / top / split, again=again, quiet=quiet)


def _write_crops(spec, data_root, image_id):
    """The five crops of one train image and of its raw label ids; each file appears whole or not at all."""
    targets = [crop_paths(data_root, "train", image_id, crop) for crop in range(FIVE_CROPS)]
    if all(image.is_file() and label.is_file() for image, label in targets):
        return
    image = Image.open(spec.image_path(data_root, "train", image_id)).convert("RGB")
    label = Image.open(spec.label_path(data_root, "train", image_id))
    targets[0][0].parent.mkdir(parents=True, exist_ok=True)
    for box, paths in zip(five_crop_boxes(*image.size), targets):
        for source, path in zip((image, label), paths):
            save_image_atomic(source.crop(box), path)


def write_five_crops(spec, data_root, *, quiet=False):
    """Cut every train image of Cityscapes into its five crops once, so training reads 1024x512 PNGs
    instead of decoding a whole 2048x1024 one per crop. Crops already written are kept."""
    ids = spec.split_ids(data_root, "train")
    with ThreadPoolExecutor(max_workers=worker_count()) as pool:
        jobs = pool.map(partial(_write_crops, spec, data_root), ids)
        for _ in tqdm(jobs, total=len(ids), desc="five crops", unit="img", disable=quiet):
            pass


# ---------------------------------------------------------------- Potsdam


def potsdam_prefix(zip_path):
    """The folder of the zip that holds STEGO's Potsdam (``potsdam/`` or the zip's top)."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile as err:
        raise DamagedFile(
            f"{zip_path} is damaged or incomplete ({err}). Delete it and run this command again."
        ) from err
    lists = [name for name in names if name.endswith(POTSDAM_SPLIT_FILES["val"])]
    if not lists:
        raise DamagedFile(
            f"{zip_path}: no {POTSDAM_SPLIT_FILES['val']} inside; it is not STEGO's potsdam.zip. "
            f"Delete it and run this command again."
        )
    return posixpath.dirname(lists[0])  # zip member names always use "/"


def prepare_potsdam(data_root, splits, zips_dir, *, base_url=None, keep_zips=False, quiet=False):
    """Fill ``imgs/``, ``gt/`` and the split lists from STEGO's potsdam.zip (both splits: one zip)."""
    root, zips_dir = Path(data_root), Path(zips_dir)
    say = (lambda message: None) if quiet else print
    folders = [name for name in ("imgs", "gt") if not (root / name).is_dir()]
    files = [name for name in POTSDAM_LISTS if not (root / name).is_file()]
    if not folders and not files:
        say(f"{root} already holds imgs/, gt/ and the split lists, skipping")
        return
    url = POTSDAM_URL if base_url is None else base_url.rstrip("/") + "/" + POTSDAM_ZIP
    zip_path = fetch_zip(url, zips_dir / POTSDAM_ZIP, quiet=quiet)
    prefix = potsdam_prefix(zip_path)
    for name in folders:
        say(f"unpacking {name}/ of {zip_path.name} to {root / name}")
        unpack_folder(zip_path, f"{prefix}/{name}" if prefix else name, root / name, quiet=quiet)
    with zipfile.ZipFile(zip_path) as archive:
        present = set(archive.namelist())
        for name in files:
            member = f"{prefix}/{name}" if prefix else name
            if member not in present:
                continue  # only the train and val lists are needed; the check reports them
            with archive.open(member) as source, atomic_path(root / name) as tmp, open(tmp, "wb") as target:
                shutil.copyfileobj(source, target)
    if not keep_zips:
        zip_path.unlink()


# ---------------------------------------------------------------- command line


class Preparation(NamedTuple):
    """How a dataset's root is filled: ``fill(data_root, splits, zips_dir, *, base_url, keep_zips)``;
    whether it downloads into --zips-dir; what of the user's input it needs, checked before anything
    is written (``inputs(data_root, splits, zips_dir)`` raises a DataError), or None."""

    fill: Callable
    downloads: bool
    inputs: Optional[Callable] = None


PREPARATIONS = {
    "cocostuff27": Preparation(prepare_cocostuff, downloads=True),
    "cocostuff171": Preparation(prepare_cocostuff, downloads=True),
    "cityscapes27": Preparation(prepare_cityscapes, downloads=False, inputs=cityscapes_to_unpack),
    "potsdam3": Preparation(prepare_potsdam, downloads=True),
}


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def build_parser(dataset=None, description=__doc__):
    """The options of ``prepare_data.py DATASET``; with ``dataset`` given, those of an alias that
    prepares that dataset only (scripts/prepare_cocostuff.py), without the DATASET argument."""
    parser = ArgumentParser(description=description)
    if dataset is None:
        parser.add_argument("dataset", choices=ALL_DATASET_NAMES)
    parser.add_argument("--data-root", type=Path, required=True, help="folder to fill (or check)")
    parser.add_argument(
        "--splits",
        nargs="+",
        choices=SPLITS,
        default=["val", "train"],
        help="splits to prepare or check (default: val train; COCO's train2017.zip alone is 18 GB)",
    )
    parser.add_argument("--check", action="store_true", help="only check the data root; download or unpack nothing")
    parser.add_argument(
        "--check-limit", type=positive_int, metavar="N", help="check only the first N ids of each split (faster)"
    )
    parser.add_argument(
        "--zips-dir",
        type=Path,
        default=None,
        help="where the zips are downloaded to (COCO-Stuff, Potsdam) or where the official zips are "
        "(Cityscapes); default DATA_ROOT/downloads",
    )
    parser.add_argument(
        "--keep-zips", action="store_true", help="keep the downloaded zips in --zips-dir (COCO-Stuff, Potsdam)"
    )
    parser.add_argument(
        "--base-url",
        help="download from a mirror instead of the official hosts: COCO-Stuff BASE/zips/{train,val}2017.zip and "
        f"BASE/{COCO_LABELS_ZIP}, Potsdam BASE/{POTSDAM_ZIP}",
    )
    return parser


def prepare(spec, args, splits):
    """Fill the data root, once the user's input is found and the data root and the download folder
    are proven writable: a refused command writes nothing, a long download is not lost at the end."""
    preparation = PREPARATIONS[spec.name]
    zips_dir = args.zips_dir or args.data_root / DOWNLOADS
    if preparation.inputs is not None:
        preparation.inputs(args.data_root, splits, zips_dir)
    root = check_writable_dir(args.data_root, "--data-root")
    if preparation.downloads:
        check_writable_dir(zips_dir, "--zips-dir")
    try:
        preparation.fill(root, splits, zips_dir, base_url=args.base_url, keep_zips=args.keep_zips)
    finally:
        # The default folder of the downloads goes once they are unpacked and deleted.
        if preparation.downloads and args.zips_dir is None and zips_dir.is_dir() and not any(zips_dir.iterdir()):
            zips_dir.rmdir()


def run(argv=None, *, dataset=None, description=__doc__):
    """``prepare_data.py [DATASET] ARGS``; ``dataset`` fixes the dataset (an alias's command line)."""
    args = build_parser(dataset, description).parse_args(argv)
    if (dataset or args.dataset) == "folder":
        if not args.check:
            raise OptionError(
                f"folder: nothing to download; the folder dataset is your own images in --data-root. Check them with "
                f"`python scripts/prepare_data.py folder --data-root {args.data_root} --check`"
            )
        print(check_folder(args.data_root, say=partial(print, flush=True)), flush=True)
        return EXIT_OK
    spec = get_dataset(dataset or args.dataset)
    splits = list(dict.fromkeys(args.splits))
    if not args.check:
        prepare(spec, args, splits)
    verdict = check_splits(spec, args.data_root, splits, limit=args.check_limit, say=partial(print, flush=True))
    if spec.name == "cityscapes27" and "train" in splits and not args.check:
        write_five_crops(spec, args.data_root)
    print(verdict, flush=True)
    return EXIT_OK


@entry_point
def main(argv=None):
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
