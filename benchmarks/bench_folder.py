"""Training pairs per second from a folder of 12 MP JPEGs (the ``folder`` dataset, docs/own_data.md):
JPEG draft decoding at the working size against decoding at full size and then resizing.

    python benchmarks/bench_folder.py [--images 8] [--repeats 3] [--short-side 480]

Writes ``--images`` synthetic 4000x3000 JPEGs (a phone camera's 12 MP) to a temporary folder and
draws every image's training pair through data/pairs.py's TrainingPairs, in this process, one
thread: once as the ``folder`` dataset reads images (data/photos.py's read_photo: Pillow's draft
mode decodes at 1/2, 1/4 or 1/8 of the size, never below the working size, then a bilinear resize),
once decoding every image at full size and resizing it (the way without draft mode). The pair
sampling after the read is the same code. Prints each repeat's pairs/s, the medians and their ratio.
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file, benchmarks/ is first on the path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import check_counts, temporary_folder
from data.folder import FolderSpec
from data.pairs import TrainingPairs
from data.photos import read_photo, working_size
from utils.cli import ArgumentParser, entry_point

PHOTO_SIZE = (4000, 3000)  # 12 MP


class FullDecodeFolder(FolderSpec):
    """The ``folder`` dataset with every image decoded at full size, then resized to the working size."""

    def read_image(self, data_root, split, image_id):
        image = read_photo(self.image_path(data_root, split, image_id))[0]
        return image.resize(working_size(*image.size, self.short_side), Image.BILINEAR)


def write_photos(root, count):
    """``count`` 12 MP JPEGs of smooth colour fields with fine noise (a photo's detail, for the decoder)."""
    rng = np.random.default_rng(0)
    for index in range(count):
        small = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize(PHOTO_SIZE, Image.BICUBIC)
        pixels = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, size=(PHOTO_SIZE[1], PHOTO_SIZE[0], 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / f"photo{index:03d}.jpg", quality=90)


def pairs_per_second(spec, root, epoch):
    """Every training item's pair once: pairs per second."""
    pairs = TrainingPairs(spec, root, "train", seed=0)
    start = time.perf_counter()
    for index in range(len(pairs)):
        pairs[(epoch, index)]
    return len(pairs) / (time.perf_counter() - start)


def build_parser():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=8, help="12 MP JPEGs written and read")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs a measurement")
    parser.add_argument("--short-side", type=int, default=480, help="the working size (train.py's --short-side)")
    return parser


@entry_point
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_counts(args, {"--images": 1, "--repeats": 1, "--short-side": 1})
    torch.set_num_threads(1)
    with temporary_folder("folder") as root:
        write_photos(root, args.images)
        rates = {"draft": [], "full": []}
        for repeat in range(args.repeats):
            for name, spec_class in (("draft", FolderSpec), ("full", FullDecodeFolder)):
                spec = spec_class(root)
                spec.short_side = args.short_side
                rates[name].append(pairs_per_second(spec, root, repeat))
    for name, what in (("draft", "draft decoding"), ("full", "full decode + resize")):
        print(f"{what:>22}: {' '.join(f'{rate:.2f}' for rate in rates[name])} pairs/s")
    draft, full = statistics.median(rates["draft"]), statistics.median(rates["full"])
    print(
        f"medians: {draft:.2f} vs {full:.2f} pairs/s from {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEGs at short side "
        f"{args.short_side}: draft decoding is {draft / full:.2f}x (goal 3x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
