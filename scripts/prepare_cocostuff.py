"""Download COCO-Stuff (COCO 2017 images + stuffthingmaps) into the project's layout, or check a data
root: the older name of ``python scripts/prepare_data.py cocostuff27``, kept for instructions that
use it. It takes the same options and behaves exactly as that command (see its --help).

    python scripts/prepare_cocostuff.py --data-root DIR [--splits val train] [--keep-zips]
    python scripts/prepare_cocostuff.py --data-root DIR --check [--check-limit N]
"""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a file, the script only sees scripts/ (E402: pyproject.toml)
    sys.path.insert(0, str(REPO_ROOT))

from scripts.prepare_data import run
from utils.cli import entry_point


@entry_point
def main(argv=None):
    return run(argv, dataset="cocostuff27", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
