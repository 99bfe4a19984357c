"""Segment your own images with an IDDC checkpoint (released format or written by train.py).

    python predict.py --checkpoint checkpoints/cocostuff27_vits16.pth --input photo.jpg --output-dir out/
    python predict.py --checkpoint FILE --input photos/ --output-dir out/ --assignment eval.json

Each image is segmented with the published sliding-window protocol (224 windows, overlap 75, flip
averaging) at its own resolution, and gets, at its original size:
  <stem>_clusters.png  indexed PNG whose pixel values are the cluster ids
  <stem>_color.png     the segmentation in colour
  <stem>_overlay.png   the colours blended over the image
plus one legend.png. Clusters have no names of their own: with --assignment (an eval.py
--output-json file) each cluster is coloured and named by the class the Hungarian matching gave it.
--dataset chooses the class names and palette (the checkpoint's dataset; default cocostuff27).
--crf refines the stitched probabilities with STEGO's dense CRF at the image's size.
Images are read as viewers show them (EXIF orientation, 16-bit and transparent images converted).
In an input folder, files whose extension is not an image's (notes.txt, a video) are listed as
skipped and do not change the exit code; an image file that cannot be decoded is reported, the
others are still segmented, and the exit code is 1. No output replaces an input, or a file
predict.py did not write; every PNG is written atomically.
"""

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import PngImagePlugin
from tqdm import tqdm

from data.photos import IMAGE_EXTENSIONS, OUTPUT_MARK, open_photo, written_by_iddc
from data.registry import DATASET_NAMES, DEFAULT_DATASET, get_dataset
from data.spec import DataError
from engine.crf import CRFPool, require_pydensecrf
from engine.segment import at_size, segment, window_probabilities
from engine.visualize import colorize, indexed_png, legend, map_clusters, overlay
from modules.checkpoint import load_iddc_model
from modules.weights import CheckpointError
from utils.cli import ArgumentParser, check_at_least, entry_point, resolve_device
from utils.errors import EXIT_OK, EXIT_PROBLEMS, OptionError, OutputError, ReportedError
from utils.files import check_writable_dir, save_image_atomic
from utils.lock import hold_folder_lock
from utils.log import setup_logger

OUTPUT_SUFFIXES = ("_clusters.png", "_color.png", "_overlay.png")
LEGEND_FILE = "legend.png"
SHOW_NAMES = 5


class InputError(ReportedError, ValueError):
    """An --input path or the --assignment file is not what predict.py expects."""


def build_parser():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="IDDC checkpoint (released format or written by train.py)")
    parser.add_argument(
        "--input",
        required=True,
        nargs="+",
        metavar="PATH",
        help="image files and/or folders (their images, not recursive)",
    )
    parser.add_argument("--output-dir", required=True, help="where the PNGs are written")
    parser.add_argument(
        "--dataset",
        choices=DATASET_NAMES,
        default=DEFAULT_DATASET,
        help="the checkpoint's dataset: class names and colours",
    )
    parser.add_argument(
        "--assignment",
        default=None,
        metavar="EVAL_JSON",
        help="eval.py --output-json file: colour and name clusters by their matched class",
    )
    parser.add_argument(
        "--patch-size",
        type=int,
        choices=(16, 8, 14),
        default=None,
        help="expected patch size (default: read from the checkpoint)",
    )
    parser.add_argument("--window", type=int, default=224, help="sliding window size")
    parser.add_argument("--overlap", type=int, default=75, help="sliding window overlap")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True, help="flip averaging per window")
    parser.add_argument(
        "--crf", action="store_true", help="refine with STEGO's dense CRF at the image's size (docs/evaluation.md)"
    )
    parser.add_argument(
        "--crf-workers",
        type=int,
        default=None,
        help="CRF processes running beside the forwards (default: CPU cores, at most 8; 0: none)",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16 autocast is faster on GPUs")
    parser.add_argument("--batch-size", type=int, default=32, help="windows (flips included) per backbone forward")
    return parser


def output_paths(stem, out_dir):
    return [Path(out_dir) / f"{stem}{suffix}" for suffix in OUTPUT_SUFFIXES]


def list_images(inputs):
    """(images, skipped) from files and folders.

    Folders are read non-recursively, sorted by name: a file with an extension of IMAGE_EXTENSIONS
    is an image, except the PNGs of an earlier predict.py run; any other file is returned in
    ``skipped`` to be listed, hidden files (.DS_Store and the like) not even that. Files named
    directly are taken as images whatever their name. Whether an image decodes is found when it
    is read.
    """
    images, skipped = [], []
    for entry in map(Path, inputs):
        if entry.is_dir():
            for path in sorted(p for p in entry.iterdir() if p.is_file() and not p.name.startswith(".")):
                if path.suffix.lower() not in IMAGE_EXTENSIONS:
                    skipped.append(path)
                elif not written_by_iddc(path):
                    images.append(path)
        elif entry.is_file():
            images.append(entry)
        else:
            raise InputError(f"--input {entry}: no such file or folder")
    if not images:
        found = (
            f"; {len(skipped)} file(s) that are not images by their extension, e.g. "
            f"{', '.join(p.name for p in skipped[:SHOW_NAMES])}"
            if skipped
            else ""
        )
        raise InputError(f"--input {' '.join(inputs)}: no images found{found}")
    stems = [path.stem for path in images]
    clashes = sorted({stem for stem in stems if stems.count(stem) > 1})
    if clashes:
        raise InputError(
            f"--input: several images share the name(s) {clashes[:5]}, so their outputs would overwrite each other"
        )
    return images, skipped


def check_outputs(images, out_dir, protected):
    """Before any work: no output may replace an input, nor a file predict.py did not write.

    ``protected`` are the other files the run reads (checkpoint, assignment). Files of an earlier
    run (they carry OUTPUT_MARK) are replaced, so that predicting again into a folder works.
    """
    kept = set()
    for path in [*images, *protected]:
        if path is not None and Path(path).exists():
            stat = os.stat(path)
            kept.add((stat.st_dev, stat.st_ino))
    planned = [(out, image) for image in images for out in output_paths(image.stem, out_dir)]
    planned.append((Path(out_dir) / LEGEND_FILE, None))
    for out, image in planned:
        if not out.exists():
            continue
        what = f"the output {out.name}" + (f" of {image.name}" if image is not None else "")
        stat = os.stat(out)
        if out.is_dir():
            raise OutputError(f"--output-dir {out_dir}: {what} would replace the folder {out}")
        if (stat.st_dev, stat.st_ino) in kept:
            raise OutputError(
                f"--output-dir {out_dir}: {what} would replace {out}, an input of this run; choose another --output-dir"
            )
        if not written_by_iddc(out):
            raise OutputError(
                f"--output-dir {out_dir}: {what} would replace {out}, which predict.py did not write; "
                f"move it away or choose another --output-dir"
            )


def load_assignment(path, num_clusters, num_classes):
    """cluster_to_class (num_clusters,) from an eval.py JSON; -1 marks a cluster matched to no class."""
    path = Path(path)
    try:
        assignment = json.loads(path.read_text())["assignment"]
        cluster_to_class = np.array([int(assignment[str(k)]) for k in range(num_clusters)], dtype=np.int64)
    except FileNotFoundError as err:
        raise InputError(f"--assignment {path}: no such file") from err
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise InputError(
            f"--assignment {path}: expected an eval.py --output-json file whose 'assignment' maps every cluster "
            f"'0'..'{num_clusters - 1}' to a class index ({type(err).__name__}: {err})"
        ) from err
    if ((cluster_to_class < -1) | (cluster_to_class >= num_classes)).any():
        raise InputError(
            f"--assignment {path}: class indices must lie in -1..{num_classes - 1}, "
            f"got {sorted(set(cluster_to_class.tolist()))}"
        )
    return cluster_to_class


def cluster_colours(cluster_to_class, palette):
    """Colour of each cluster id: its matched class's colour, or its own palette entry."""
    if cluster_to_class is None:
        return palette
    colours = np.zeros((len(cluster_to_class), 3), dtype=np.uint8)
    matched = cluster_to_class >= 0
    colours[matched] = palette[cluster_to_class[matched]]
    return colours  # unmatched clusters stay black


def save_png(image, path):
    """Atomically, with OUTPUT_MARK (indexed PNGs keep their palette)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(*OUTPUT_MARK)
    save_image_atomic(image, path, pnginfo=info)


def write_outputs(image, clusters, stem, out_dir, cluster_to_class, palette):
    """The three PNGs of one image, all at the image's size."""
    clusters_png, colour_png, overlay_png = output_paths(stem, out_dir)
    save_png(indexed_png(clusters, cluster_colours(cluster_to_class, palette)), clusters_png)
    shown = clusters if cluster_to_class is None else map_clusters(clusters, cluster_to_class)  # (H, W)
    colour = colorize(shown, palette)
    save_png(colour, colour_png)
    save_png(overlay(image, colour), overlay_png)


def write_legend(out_dir, num_clusters, cluster_to_class, spec):
    """legend.png: matched class names (with their clusters) or plain cluster ids."""
    if cluster_to_class is None:
        entries = [(f"cluster {k}", spec.palette[k]) for k in range(num_clusters)]
    else:
        matched = sorted((c, k) for k, c in enumerate(cluster_to_class) if c >= 0)  # in class order
        entries = [(f"{spec.class_names[c]} (cluster {k})", spec.palette[c]) for c, k in matched]
    save_png(legend([name for name, _ in entries], [colour for _, colour in entries]), Path(out_dir) / LEGEND_FILE)


def load_model(args, device, spec):
    model, _ = load_iddc_model(args.checkpoint, patch_size=args.patch_size)
    if model.num_classes > len(spec.palette):
        raise CheckpointError(
            f"{args.checkpoint}: {model.num_classes} clusters, but the {spec.name} palette has only "
            f"{len(spec.palette)} colours; pass the --dataset the checkpoint was trained for"
        )
    if args.window < model.patch_size or args.window % model.patch_size:
        raise InputError(
            f"--window {args.window}: must be a multiple of the checkpoint's ViT patch ({model.patch_size})"
        )
    return model.to(device).eval()


def predict_all(model, paths, out_dir, cluster_to_class, args, device, logger, palette):
    """Segment every image; the ones that cannot be read are reported and passed over. Returns them."""
    failed = []
    with CRFPool(args.crf_workers) if args.crf else contextlib.nullcontext() as crf:
        for path in tqdm(paths, desc="predict", unit="img"):
            try:
                image = open_photo(path)
            except DataError as err:
                logger.warning("not segmented: %s", err)
                failed.append(path)
                continue
            if crf is None:
                clusters = segment(
                    model, image, device, args.window, args.overlap, args.flip, args.precision, args.batch_size
                )
                write_outputs(image, clusters, path.stem, out_dir, cluster_to_class, palette)
                continue
            pixels, probs = window_probabilities(
                model, image, device, args.window, args.overlap, args.flip, args.precision, args.batch_size
            )
            crf.submit(pixels, probs, (path, image))  # the CRF runs while the next image goes through the model
            write_refined(crf.finished(), out_dir, cluster_to_class, palette)
        if crf is not None:
            write_refined(crf.finished(wait_all=True), out_dir, cluster_to_class, palette)
    return failed


def write_refined(finished, out_dir, cluster_to_class, palette):
    """The PNGs of the images whose CRF is done: [((path, image), maps (1, H', W'))]."""
    for (path, image), maps in finished:
        write_outputs(image, at_size(maps[0], image.size), path.stem, out_dir, cluster_to_class, palette)


@entry_point
def main(argv=None):
    args = build_parser().parse_args(argv)
    if not 0 <= args.overlap < args.window:  # as eval.py checks them
        raise OptionError(
            f"--overlap must lie in 0..{args.window - 1} (below --window {args.window}), got {args.overlap}"
        )
    check_at_least(args.batch_size, "--batch-size", 1)
    check_at_least(args.crf_workers, "--crf-workers", 0)
    device = torch.device(resolve_device(args.device))
    if args.crf:
        require_pydensecrf()
    spec = get_dataset(args.dataset)
    logger = setup_logger()
    paths, skipped = list_images(args.input)
    out_dir = check_writable_dir(args.output_dir, "--output-dir")
    check_outputs(paths, out_dir, [args.checkpoint, args.assignment])
    hold_folder_lock(out_dir, "--output-dir")
    model = load_model(args, device, spec)
    cluster_to_class = None
    if args.assignment:
        cluster_to_class = load_assignment(args.assignment, model.num_classes, spec.num_classes)
    for path in skipped:
        logger.info("skipped: %s: not an image by its extension", path)
    failed = predict_all(model, paths, out_dir, cluster_to_class, args, device, logger, spec.palette)
    write_legend(out_dir, model.num_classes, cluster_to_class, spec)
    logger.info(
        "%d of %d images segmented, PNGs in %s%s",
        len(paths) - len(failed),
        len(paths),
        out_dir,
        f"; {len(skipped)} file(s) that are not images skipped" if skipped else "",
    )
    if failed:
        print(
            f"error: {len(failed)} of {len(paths)} image(s) could not be read: "
            f"{', '.join(str(path) for path in failed[:SHOW_NAMES])}"
            f"{', ...' if len(failed) > SHOW_NAMES else ''} (see 'not segmented' above)",
            file=sys.stderr,
        )
        return EXIT_PROBLEMS
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
