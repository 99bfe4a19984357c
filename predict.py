"""Segment your own images with an IDDC checkpoint (released format or written by train.py).

    python predict.py --checkpoint checkpoints/cocostuff27_vits16.pth --input photo.jpg --output-dir out/
    python predict.py --checkpoint FILE --input photos/ --output-dir out/ --assignment eval.json
    python predict.py --dataset cityscapes27 --checkpoint FILE --input street.png --output-dir out/ --assignment eval.json

Each image is segmented with the published sliding-window protocol (224 windows, overlap 75, flip
averaging) at its own resolution (--crf: then refined with STEGO's dense CRF), and gets, at its
original size:
  <stem>_clusters.png  indexed PNG whose pixel values are the cluster ids
  <stem>_color.png     the segmentation in colour
  <stem>_overlay.png   the colours blended over the image
plus one legend.png. Clusters have no names of their own: with --assignment (an eval.py
--output-json file) each cluster is coloured and named by the class the Hungarian matching gave it.
--dataset chooses the class names and palette (the checkpoint's dataset; default cocostuff27).
Unreadable images are reported and skipped; the exit code is then 1.
"""
import argparse
import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from data.registry import DATASET_NAMES, DEFAULT_DATASET, get_dataset
from data.spec import DataError, read_image
from data.transforms import to_normalized_tensor, upscaled_size
from utils.checkpoint import CheckpointError, load_iddc_model
from utils.crf import CRFPool
from utils.evaluation import resize_nearest, sliding_probabilities
from utils.log import setup_logger
from utils.visualize import colorize, indexed_png, legend, map_clusters, overlay

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class InputError(ValueError):
    """An --input path or the --assignment file is not what predict.py expects."""


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="IDDC checkpoint (released format or written by train.py)")
    parser.add_argument("--input", required=True, nargs="+", metavar="PATH", help="image files and/or folders (their images, not recursive)")
    parser.add_argument("--output-dir", required=True, help="where the PNGs are written")
    parser.add_argument("--dataset", choices=DATASET_NAMES, default=DEFAULT_DATASET, help="the checkpoint's dataset: class names and colours")
    parser.add_argument("--assignment", default=None, metavar="EVAL_JSON", help="eval.py --output-json file: colour and name clusters by their matched class")
    parser.add_argument("--patch-size", type=int, choices=(16, 8, 14), default=None, help="expected patch size (default: read from the checkpoint)")
    parser.add_argument("--window", type=int, default=224, help="sliding window size")
    parser.add_argument("--overlap", type=int, default=75, help="sliding window overlap")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True, help="flip averaging per window")
    parser.add_argument("--crf", action="store_true", help="refine with STEGO's dense CRF at the image's size (see README)")
    parser.add_argument("--crf-workers", type=int, default=None, help="CRF processes running beside the forwards (default: CPU cores, at most 8; 0: none)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16 autocast is faster on GPUs")
    parser.add_argument("--batch-size", type=int, default=32, help="windows (flips included) per backbone forward")
    return parser


def list_images(inputs):
    """Image files from files and folders (folders: non-recursive, sorted by name)."""
    paths = []
    for entry in map(Path, inputs):
        if entry.is_dir():
            paths.extend(sorted(p for p in entry.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif entry.is_file():
            paths.append(entry)
        else:
            raise InputError(f"--input {entry}: no such file or folder")
    if not paths:
        raise InputError(f"--input {' '.join(inputs)}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    stems = [path.stem for path in paths]
    clashes = sorted({stem for stem in stems if stems.count(stem) > 1})
    if clashes:
        raise InputError(f"--input: several images share the name(s) {clashes[:5]}, so their outputs would overwrite each other")
    return paths


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
        raise InputError(f"--assignment {path}: class indices must lie in -1..{num_classes - 1}, got {sorted(set(cluster_to_class.tolist()))}")
    return cluster_to_class


def window_probabilities(model, image, device, window=224, overlap=75, flip=True, precision="fp32", batch_size=32):
    """(normalised image (3, H', W'), cluster probabilities (K, H', W')) of a PIL image by overlapping
    windows; images with a side under the window are upscaled first (aspect kept, as eval.py's
    sliding protocol)."""
    resized = image.resize(upscaled_size(*image.size, window), Image.BILINEAR)
    pixels = to_normalized_tensor(resized).to(device)  # (3, H', W')
    with torch.no_grad():
        return pixels, sliding_probabilities(model, pixels, window, overlap, flip, precision, batch_size)


def at_image_size(clusters, image):
    """A (H', W') map brought to the PIL image's size with torch's legacy nearest, as a numpy array."""
    if tuple(clusters.shape) != (image.height, image.width):
        clusters = resize_nearest(clusters, (image.height, image.width))  # (H, W)
    return clusters.cpu().numpy()


def cluster_colours(cluster_to_class, palette):
    """Colour of each cluster id: its matched class's colour, or its own palette entry."""
    if cluster_to_class is None:
        return palette
    colours = np.zeros((len(cluster_to_class), 3), dtype=np.uint8)
    matched = cluster_to_class >= 0
    colours[matched] = palette[cluster_to_class[matched]]
    return colours  # unmatched clusters stay black


def write_outputs(image, clusters, stem, out_dir, cluster_to_class, palette):
    """The three PNGs of one image, all at the image's size."""
    indexed_png(clusters, cluster_colours(cluster_to_class, palette)).save(out_dir / f"{stem}_clusters.png")
    shown = clusters if cluster_to_class is None else map_clusters(clusters, cluster_to_class)  # (H, W)
    colour = colorize(shown, palette)
    colour.save(out_dir / f"{stem}_color.png")
    overlay(image, colour).save(out_dir / f"{stem}_overlay.png")


def write_legend(out_dir, num_clusters, cluster_to_class, spec):
    """legend.png: matched class names (with their clusters) or plain cluster ids."""
    if cluster_to_class is None:
        entries = [(f"cluster {k}", spec.palette[k]) for k in range(num_clusters)]
    else:
        matched = sorted((c, k) for k, c in enumerate(cluster_to_class) if c >= 0)  # in class order
        entries = [(f"{spec.class_names[c]} (cluster {k})", spec.palette[c]) for c, k in matched]
    legend([name for name, _ in entries], [colour for _, colour in entries]).save(out_dir / "legend.png")


def load_model(args, device, spec):
    model, _ = load_iddc_model(args.checkpoint, patch_size=args.patch_size)
    if model.num_classes > len(spec.palette):
        raise CheckpointError(f"{args.checkpoint}: {model.num_classes} clusters, but the {spec.name} palette has only "
                              f"{len(spec.palette)} colours; pass the --dataset the checkpoint was trained for")
    return model.to(device).eval()


def predict_all(model, paths, out_dir, cluster_to_class, args, device, logger, palette):
    """Segment every image; unreadable ones are reported and skipped. Returns the failed paths."""
    failed = []
    with CRFPool(args.crf_workers) if args.crf else contextlib.nullcontext() as crf:
        for path in tqdm(paths, desc="predict", unit="img"):
            try:
                image = read_image(path)
            except DataError as err:
                logger.warning("skipped: %s", err)
                failed.append(path)
                continue
            pixels, probs = window_probabilities(model, image, device, args.window, args.overlap, args.flip, args.precision, args.batch_size)
            if crf is None:
                write_outputs(image, at_image_size(probs.argmax(dim=0), image), path.stem, out_dir, cluster_to_class, palette)
                continue
            crf.submit(pixels, probs, (path, image))  # the CRF runs while the next image goes through the model
            write_refined(crf.finished(), out_dir, cluster_to_class, palette)
        if crf is not None:
            write_refined(crf.finished(wait_all=True), out_dir, cluster_to_class, palette)
    return failed


def write_refined(finished, out_dir, cluster_to_class, palette):
    """The PNGs of the images whose CRF is done: [((path, image), maps (1, H', W'))]."""
    for (path, image), maps in finished:
        write_outputs(image, at_image_size(maps[0], image), path.stem, out_dir, cluster_to_class, palette)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.overlap < args.window:
        parser.error(f"--overlap must lie in 0..{args.window - 1} (below --window {args.window}), got {args.overlap}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.crf_workers is not None and args.crf_workers < 0:
        parser.error(f"--crf-workers must be >= 0, got {args.crf_workers}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    logger = setup_logger()
    spec = get_dataset(args.dataset)
    try:
        paths = list_images(args.input)
        model = load_model(args, device, spec)
        cluster_to_class = None
        if args.assignment:
            cluster_to_class = load_assignment(args.assignment, model.num_classes, spec.num_classes)
    except (CheckpointError, InputError) as err:
        logger.error("error: %s", err)
        return 2
    if args.window % model.patch_size:
        parser.error(f"--window {args.window} is not a multiple of the backbone's patch size {model.patch_size}")
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = predict_all(model, paths, out_dir, cluster_to_class, args, device, logger, spec.palette)
    write_legend(out_dir, model.num_classes, cluster_to_class, spec)
    logger.info("%d of %d images segmented, PNGs in %s", len(paths) - len(failed), len(paths), out_dir)
    if failed:
        logger.error("error: %d image(s) could not be read: %s", len(failed), ", ".join(map(str, failed)))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
