"""Download a released IDDC checkpoint (COCO-Stuff-27) from Google Drive.

    python scripts/download_checkpoint.py vits16|vits8 [--dest FILE] [--proxy URL]

The registry below is the single place that knows the released files and the numbers the paper
reports for them, so that evaluation code can import it and compare.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a file, the script only sees scripts/
    sys.path.insert(0, str(REPO_ROOT))

from utils.cli import ArgumentParser, entry_point  # noqa: E402
from utils.download import DownloadError, download_google_drive  # noqa: E402
from utils.files import check_writable_file  # noqa: E402


@dataclass(frozen=True)
class ReleasedCheckpoint:
    gdrive_id: str
    file_name: str
    paper_acc: float  # pixel accuracy (%) on COCO-Stuff-27 val, as published
    paper_miou: float  # mIoU (%), as published


RELEASED_CHECKPOINTS = {
    "vits16": ReleasedCheckpoint("11a_S4t7KbyQJRzKLnhSIoSQ59ykPCxBl", "cocostuff27_vits16.pth", 59.9, 25.8),
    "vits8": ReleasedCheckpoint("1TNkAyky3903eRRH8OEvrB9EyCKxgNA8w", "cocostuff27_vits8.pth", 58.3, 25.5),
}
CHECKPOINT_DIR = REPO_ROOT / "checkpoints"


def default_dest(name):
    return CHECKPOINT_DIR / RELEASED_CHECKPOINTS[name].file_name


def drive_page(name):
    """The page a person opens in a browser to fetch the file by hand."""
    return f"https://drive.google.com/file/d/{RELEASED_CHECKPOINTS[name].gdrive_id}/view"


def fetch_checkpoint(name, dest=None, *, proxy=None, quiet=False, option="--dest"):
    """Download checkpoint ``name`` to ``dest`` (default: checkpoints/) unless it exists; return its path.

    Says what it does unless ``quiet``; raises DownloadError when the file cannot be fetched, and
    OutputError (naming ``option``, what the caller calls ``dest``) before any transfer when
    ``dest`` cannot be written. ``proxy`` ("http://host:port") is handed to gdown.
    """
    checkpoint = RELEASED_CHECKPOINTS[name]
    dest = Path(dest) if dest is not None else default_dest(name)
    say = (lambda message: None) if quiet else print
    if dest.is_file():
        say(f"{dest} already exists; nothing to do (delete it to download it again).")
        return dest
    check_writable_file(dest, option)
    say(
        f"Downloading the IDDC {name} checkpoint (Google Drive id {checkpoint.gdrive_id}; paper: "
        f"{checkpoint.paper_acc} Acc / {checkpoint.paper_miou} mIoU) to {dest}"
    )
    download_google_drive(checkpoint.gdrive_id, dest, proxy=proxy, quiet=quiet)
    say(f"Saved {dest} ({dest.stat().st_size / 2**20:.1f} MiB)")
    return dest


def build_parser():
    parser = ArgumentParser(description="Download a released IDDC checkpoint (COCO-Stuff-27).")
    parser.add_argument(
        "name",
        choices=sorted(RELEASED_CHECKPOINTS),
        help="backbone of the checkpoint: "
        + ", ".join(
            f"{key} ({c.paper_acc} Acc / {c.paper_miou} mIoU in the paper)"
            for key, c in sorted(RELEASED_CHECKPOINTS.items())
        ),
    )
    parser.add_argument(
        "--dest", type=Path, default=None, help="where to write it (default: checkpoints/<file name> in the repository)"
    )
    parser.add_argument(
        "--proxy",
        default=None,
        metavar="URL",
        help="HTTP(S) proxy for Google Drive, e.g. http://host:3128 (default: HTTPS_PROXY if set)",
    )
    return parser


@entry_point
def main(argv=None):
    args = build_parser().parse_args(argv)
    dest = args.dest if args.dest is not None else default_dest(args.name)
    check_writable_file(dest, "--dest")
    try:
        fetch_checkpoint(args.name, dest, proxy=args.proxy)
    except DownloadError as err:  # exit 1: the network or the server, not the user's input
        raise DownloadError(
            f"could not download the {args.name} checkpoint: {err.reason}. Download it by hand from "
            f"{drive_page(args.name)} and put it at {dest} (a partial download is resumed when this command "
            f"is run again)."
        ) from err
    return 0


if __name__ == "__main__":
    sys.exit(main())
