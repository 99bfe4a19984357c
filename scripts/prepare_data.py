"""Fill a benchmark's data root (download or unpack), then check it; or only check it.

    python scripts/prepare_data.py cocostuff27 --data-root DIR [--splits val train]   # COCO-Stuff-27 and -171: one download
    python scripts/prepare_data.py cityscapes27 --data-root DIR [--zips-dir DIR]    # the two official zips, after registering
    python scripts/prepare_data.py potsdam3 --data-root DIR                          # STEGO's potsdam.zip
    python scripts/prepare_data.py DATASET --data-root DIR --check [--check-limit N]

COCO-Stuff (-27 and -171 read the same files) is downloaded as scripts/prepare_cocostuff.py does.
Cityscapes needs a login at cityscapes-dataset.com, so the two official zips are taken from
``--zips-dir`` (default ``DATA_ROOT/downloads``) and their train and val folders unpacked; the zips
are left in place. Once the check passes, the five training crops of every train image (STEGO's
preparation, data/cityscapes.py) are written to ``five_crops/train/`` as lossless PNGs. Potsdam-3 is STEGO's preparation, downloaded from STEGO's public storage (or
taken from ``--zips-dir``). Every step can be re-run: a folder only appears once fully unpacked,
and folders already there are skipped. A check of every listed id (image present, label present
and readable with values of the dataset's label map) ends every run.
"""

import os
import posixpath
import shutil
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a file, the script only sees scripts/
    sys.path.insert(0, str(REPO_ROOT))

from data.cityscapes import FIVE_CROPS, crop_paths, five_crop_boxes  # noqa: E402
from data.potsdam import SPLIT_FILES as POTSDAM_SPLIT_FILES  # noqa: E402
from data.registry import DATASET_NAMES, get_dataset  # noqa: E402
from data.spec import DataError  # noqa: E402
from scripts.prepare_cocostuff import _positive_int, unpack_folder  # noqa: E402
from scripts.prepare_cocostuff import prepare_root as prepare_cocostuff_root
from utils.cli import ArgumentParser
from utils.download import DownloadError, download_file  # noqa: E402

CITYSCAPES_DOWNLOADS = "https://www.cityscapes-dataset.com/downloads/"
CITYSCAPES_REGISTER = "https://www.cityscapes-dataset.com/register/"
# Top folder of the data root -> (official zip, its size as the download page gives it).
CITYSCAPES_ZIPS = {
    "leftImg8bit": ("leftImg8bit_trainvaltest.zip", "11GB"),
    "gtFine": ("gtFine_trainvaltest.zip", "241MB"),
}
CITYSCAPES_SIZES = {"train": 2975, "val": 500}
# STEGO's download_datasets.py fetches its preparations of the datasets from here.
POTSDAM_URL = "https://marhamilresearch4.blob.core.windows.net/stego-public/pytorch_data/potsdam.zip"
POTSDAM_ZIP = "potsdam.zip"
POTSDAM_SIZES = {"train": 4545, "val": 855}
CHECK_WORKERS = 8
SHOW_IDS = 5


def prepare_cityscapes(data_root, splits, zips_dir, *, quiet=False):
    """Unpack ``leftImg8bit/<split>`` and ``gtFine/<split>`` from the official zips, skipping those present."""
    root, zips_dir = Path(data_root), Path(zips_dir)
    say = (lambda message: None) if quiet else print
    missing = [(top, split) for top in CITYSCAPES_ZIPS for split in splits if not (root / top / split).is_dir()]
    for top, split in ((t, s) for t in CITYSCAPES_ZIPS for s in splits if (t, s) not in missing):
        say(f"{root / top / split} already there, skipping")
    needed = [top for top in CITYSCAPES_ZIPS if any(top == wanted for wanted, _ in missing)]
    absent = [
        zips_dir / CITYSCAPES_ZIPS[top][0] for top in needed if not (zips_dir / CITYSCAPES_ZIPS[top][0]).is_file()
    ]
    if absent:
        wanted = " and ".join(f"{path.name} ({CITYSCAPES_ZIPS[path.name.split('_')[0]][1]})" for path in absent)
        raise DataError(
            f"missing {', '.join(map(str, absent))}: Cityscapes needs a login; register at {CITYSCAPES_REGISTER}, "
            f"download {wanted} from {CITYSCAPES_DOWNLOADS} into {zips_dir} (or pass --zips-dir), "
            f"then run this command again"
        )
    for top, split in missing:
        zip_path = zips_dir / CITYSCAPES_ZIPS[top][0]
        say(f"unpacking {top}/{split}/ of {zip_path.name} to {root / top / split}")
        (root / top).mkdir(parents=True, exist_ok=True)
        unpack_folder(zip_path, f"{top}/{split}", root / top / split, quiet=quiet)


def _write_crops(spec, data_root, image_id):
    """The five crops of one train image and of its raw label ids, each written to a temporary file
    and renamed, so that a crop file is either whole or absent."""
    targets = [crop_paths(data_root, "train", image_id, crop) for crop in range(FIVE_CROPS)]
    if all(image.is_file() and label.is_file() for image, label in targets):
        return
    image = Image.open(spec.image_path(data_root, "train", image_id)).convert("RGB")
    label = Image.open(spec.label_path(data_root, "train", image_id))
    targets[0][0].parent.mkdir(parents=True, exist_ok=True)
    for box, paths in zip(five_crop_boxes(*image.size), targets):
        for source, path in zip((image, label), paths):
            tmp = path.with_name(f".{path.name}.tmp")
            source.crop(box).save(tmp, format="PNG")
            os.replace(tmp, path)


def write_five_crops(spec, data_root, *, quiet=False):
    """Cut every train image of Cityscapes into its five crops once, so training reads 1024x512 PNGs
    instead of decoding a whole 2048x1024 one per crop. Crops already written are kept."""
    ids = spec.split_ids(data_root, "train")
    with ThreadPoolExecutor(max_workers=min(CHECK_WORKERS, os.cpu_count() or 1)) as pool:
        jobs = pool.map(lambda image_id: _write_crops(spec, data_root, image_id), ids)
        for _ in tqdm(jobs, total=len(ids), desc="five crops", unit="img", disable=quiet):
            pass


def potsdam_prefix(zip_path):
    """The folder of the zip that holds STEGO's Potsdam (``potsdam/`` or the zip's top)."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile as err:
        raise DataError(f"{zip_path} is damaged or incomplete ({err}). Delete it and run this command again.") from err
    lists = [name for name in names if name.endswith(POTSDAM_SPLIT_FILES["val"])]
    if not lists:
        raise DataError(
            f"{zip_path}: no {POTSDAM_SPLIT_FILES['val']} inside; it is not STEGO's potsdam.zip. "
            f"Delete it and run this command again."
        )
    return posixpath.dirname(lists[0])  # zip member names always use "/"


def prepare_potsdam(data_root, zips_dir, *, base_url=None, keep_zip=False, quiet=False):
    """Fill ``imgs/``, ``gt/`` and the split lists from STEGO's potsdam.zip (downloaded when absent)."""
    root, zips_dir = Path(data_root), Path(zips_dir)
    say = (lambda message: None) if quiet else print
    lists = sorted({*POTSDAM_SPLIT_FILES.values(), "unlabelled_train.txt", "all.txt"})
    folders = [name for name in ("imgs", "gt") if not (root / name).is_dir()]
    files = [name for name in lists if not (root / name).is_file()]
    if not folders and not files:
        say(f"{root} already holds imgs/, gt/ and the split lists, skipping")
        return
    zip_path = zips_dir / POTSDAM_ZIP
    if zip_path.exists():
        say(f"using {zip_path}, downloaded earlier")
    else:
        url = POTSDAM_URL if base_url is None else base_url.rstrip("/") + "/" + POTSDAM_ZIP
        say(f"downloading {url} to {zip_path}")
        download_file(url, zip_path, quiet=quiet)
    prefix = potsdam_prefix(zip_path)
    root.mkdir(parents=True, exist_ok=True)
    for name in folders:
        say(f"unpacking {name}/ of {zip_path.name} to {root / name}")
        unpack_folder(zip_path, f"{prefix}/{name}" if prefix else name, root / name, quiet=quiet)
    with zipfile.ZipFile(zip_path) as archive:
        present = set(archive.namelist())
        for name in files:
            member = f"{prefix}/{name}" if prefix else name
            if member not in present:
                continue  # only the train and val lists are needed; the check reports them
            tmp = root / f".{name}.unpacking"
            with archive.open(member) as source, open(tmp, "wb") as target:
                shutil.copyfileobj(source, target)
            os.replace(tmp, root / name)
    if not keep_zip:
        zip_path.unlink()


@dataclass
class SplitReport:
    """What ``check_dataset`` found for one split; ``bad_labels`` holds (id, what is wrong) pairs."""

    split: str
    listed: int
    checked: int
    missing_images: list = field(default_factory=list)
    missing_labels: list = field(default_factory=list)
    bad_labels: list = field(default_factory=list)

    @property
    def ok(self):
        return not (self.missing_images or self.missing_labels or self.bad_labels)


def _check_id(spec, root, split, image_id):
    """(id, whether the image exists, None | "missing" | what is wrong with the label)."""
    has_image = spec.image_path(root, split, image_id).is_file()
    if not spec.label_path(root, split, image_id).is_file():
        return image_id, has_image, "missing"
    try:
        spec.read_label(root, split, image_id)
    except DataError as err:
        return image_id, has_image, str(err)
    return image_id, has_image, None


def check_dataset(spec, data_root, splits, *, limit=None, quiet=False):
    """Check every listed id of ``splits`` (the first ``limit`` of each); one SplitReport per split."""
    reports = []
    for split in splits:
        spec.check_root(data_root, split)
        ids = spec.split_ids(data_root, split)
        chosen = ids[:limit] if limit else ids
        report = SplitReport(split, len(ids), len(chosen))
        with ThreadPoolExecutor(max_workers=min(CHECK_WORKERS, os.cpu_count() or 1)) as pool:
            results = pool.map(lambda image_id: _check_id(spec, data_root, split, image_id), chosen)
            for image_id, has_image, problem in tqdm(
                results, total=len(chosen), desc=f"check {split}", unit="img", disable=quiet
            ):
                if not has_image:
                    report.missing_images.append(image_id)
                if problem == "missing":
                    report.missing_labels.append(image_id)
                elif problem is not None:
                    report.bad_labels.append((image_id, problem))
        reports.append(report)
    return reports


def format_reports(spec, reports, official_sizes=None):
    """Human-readable summary of ``check_dataset``'s reports, ending in an OK or FAILED line."""
    lines = []
    for report in reports:
        scope = (
            f"{report.checked} ids"
            if report.checked == report.listed
            else f"the first {report.checked} of {report.listed} ids"
        )
        lines.append(f"{spec.name} {report.split}: checked {scope}")
        expected = (official_sizes or {}).get(report.split)
        if expected and report.listed != expected:
            lines.append(
                f"  note: the official {report.split} split has {expected} images, this root has {report.listed}"
            )
        for what, ids in (
            ("missing images", report.missing_images),
            ("missing labels", report.missing_labels),
            ("bad labels", [f"{i} ({problem})" for i, problem in report.bad_labels]),
        ):
            if ids:
                more = ", ..." if len(ids) > SHOW_IDS else ""
                lines.append(f"  {what}: {len(ids)} (e.g. {', '.join(ids[:SHOW_IDS])}{more})")
    if all(report.ok for report in reports):
        lines.append(f"OK: {sum(report.checked for report in reports)} images")
    else:
        failed = ", ".join(report.split for report in reports if not report.ok)
        lines.append(
            f"FAILED: problems in {failed}; re-run without --check to fetch what is missing, or replace the files named above"
        )
    return "\n".join(lines)


def build_parser():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("dataset", choices=DATASET_NAMES)
    parser.add_argument("--data-root", type=Path, required=True, help="folder to fill (or check)")
    parser.add_argument(
        "--splits", nargs="+", choices=("train", "val"), default=["val", "train"], help="splits to prepare or check"
    )
    parser.add_argument("--check", action="store_true", help="only check the data root; download or unpack nothing")
    parser.add_argument(
        "--check-limit", type=_positive_int, metavar="N", help="check only the first N ids of each split"
    )
    parser.add_argument(
        "--zips-dir",
        type=Path,
        default=None,
        help="cityscapes27: where the official zips are; potsdam3: where potsdam.zip is or goes "
        "(default DATA_ROOT/downloads)",
    )
    parser.add_argument("--keep-zips", action="store_true", help="keep downloaded zips (COCO-Stuff, Potsdam)")
    parser.add_argument("--base-url", help="download from a mirror instead of the official hosts (COCO-Stuff, Potsdam)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    spec = get_dataset(args.dataset)
    splits = list(dict.fromkeys(args.splits))
    zips_dir = args.zips_dir or args.data_root / "downloads"
    official = {"cityscapes27": CITYSCAPES_SIZES, "potsdam3": POTSDAM_SIZES}.get(spec.name)
    try:
        if not args.check:
            if spec.name.startswith("cocostuff"):
                prepare_cocostuff_root(args.data_root, splits, base_url=args.base_url, keep_zips=args.keep_zips)
            elif spec.name == "cityscapes27":
                prepare_cityscapes(args.data_root, splits, zips_dir)
            elif spec.name == "potsdam3":
                prepare_potsdam(args.data_root, zips_dir, base_url=args.base_url, keep_zip=args.keep_zips)
        reports = check_dataset(spec, args.data_root, splits, limit=args.check_limit)
        ok = all(report.ok for report in reports)
        if ok and spec.name == "cityscapes27" and "train" in splits and not args.check:
            write_five_crops(spec, args.data_root)
    except (DataError, DownloadError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_reports(spec, reports, official))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
