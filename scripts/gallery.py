"""See what each cluster of a checkpoint is, to name it (docs/own_data.md).

    python scripts/gallery.py --checkpoint runs/mine/last_model.pth --data-root DIR --output-dir runs/mine/gallery
    python scripts/gallery.py --checkpoint FILE --input photos/ more/photo.jpg --output-dir gallery/

For every cluster: the images where it covers the most, each with the cluster highlighted (the
rest dimmed) beside the whole segmentation, and the cluster's share of all the pixels scanned.
The images are a seeded sample (--sample, --seed) of those found under --data-root (its labels/
folder apart) or --input, at any depth, as the folder dataset finds them, segmented as predict.py
segments them (the same function, at the working size --short-side). Writes into --output-dir:
  index.html         the page to open (self-contained, relative links, nothing fetched)
  cluster_NNN.png    one sheet per cluster
  clusters.yaml      the names file (docs/own_data.md): `cluster N` and each share, to edit and
                     give to predict.py --names; a clusters.yaml someone already edited is kept and
                     this one is written as clusters.new.yaml.
The same inputs give the same files.
"""

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a file, the script only sees scripts/
    sys.path.insert(0, str(REPO_ROOT))

from engine.gallery import check_gallery_outputs, find_gallery_images, scan_clusters, seeded_sample, write_gallery
from engine.names import add_names_options, default_names, resolve_names
from modules.checkpoint import load_iddc_model
from utils.cli import ArgumentParser, check_at_least, entry_point, resolve_device
from utils.errors import EXIT_OK, EXIT_PROBLEMS
from utils.files import check_writable_dir
from utils.log import setup_logger

DEFAULT_SAMPLE = 60  # ViT-S/16 at 480x640 with flips: 10 s an image on 2 busy CPU cores (docs/own_data.md)
SHOW_NAMES = 5


def build_parser():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="IDDC checkpoint (released format or written by train.py)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data-root", default=None, metavar="DIR", help="a folder dataset's root (labels/ not scanned)"
    )
    source.add_argument(
        "--input", nargs="+", default=None, metavar="PATH", help="image files and/or folders (searched at any depth)"
    )
    parser.add_argument("--output-dir", required=True, help="where index.html, the sheets and clusters.yaml go")
    parser.add_argument("--per-cluster", type=int, default=12, help="images shown per cluster")
    parser.add_argument(
        "--sample", type=int, default=DEFAULT_SAMPLE, help="images scanned: a seeded sample of those found"
    )
    parser.add_argument("--seed", type=int, default=0, help="the sample's seed")
    add_names_options(parser, "the sheets and index.html")
    parser.add_argument(
        "--short-side",
        type=int,
        default=None,
        help="working size: images with a longer short side are scaled down to it "
        "(default: the checkpoint's, else each image's own size)",
    )
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True, help="flip averaging per window")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16 autocast is faster on GPUs")
    parser.add_argument("--batch-size", type=int, default=32, help="windows (flips included) per backbone forward")
    return parser


@entry_point
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_at_least(args.per_cluster, "--per-cluster", 1)
    check_at_least(args.sample, "--sample", 1)
    check_at_least(args.batch_size, "--batch-size", 1)
    check_at_least(args.short_side, "--short-side", 1)
    device = torch.device(resolve_device(args.device))
    out_dir = check_writable_dir(args.output_dir, "--output-dir")
    logger = setup_logger()
    paths, labels = find_gallery_images(args.data_root, args.input)
    model, extra = load_iddc_model(args.checkpoint)
    num_clusters = model.num_classes
    names = resolve_names(args.checkpoint, num_clusters, args.names, args.strict_names, logger)
    names = names if names is not None else default_names(num_clusters)
    check_gallery_outputs(out_dir, num_clusters)
    config = extra.get("config") if isinstance(extra.get("config"), dict) else {}
    short_side = args.short_side if args.short_side is not None else config.get("short_side")
    chosen = seeded_sample(len(paths), args.sample, args.seed)
    logger.info(
        "scanning %d of %d images%s, %d clusters",
        len(chosen),
        len(paths),
        f" at short side {short_side}" if short_side else "",
        num_clusters,
    )
    gallery = scan_clusters(
        model.to(device).eval(),
        [paths[index] for index in chosen],
        device,
        labels=[labels[index] for index in chosen],
        per_cluster=args.per_cluster,
        short_side=short_side,
        flip=args.flip,
        precision=args.precision,
        batch_size=args.batch_size,
        progress=lambda items: tqdm(items, desc="gallery", unit="img"),
        logger=logger,
    )
    names_path = write_gallery(gallery, out_dir, names, args.checkpoint, logger)
    logger.info("gallery of %d clusters in %s; names file %s", num_clusters, out_dir / "index.html", names_path)
    if gallery.failed:
        shown = ", ".join(label for label, _ in gallery.failed[:SHOW_NAMES])
        print(
            f"error: {len(gallery.failed)} of {len(chosen)} image(s) could not be read: {shown}"
            f"{', ...' if len(gallery.failed) > SHOW_NAMES else ''} (see 'not scanned' above)",
            file=sys.stderr,
        )
        return EXIT_PROBLEMS
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
