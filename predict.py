"""Segment your own images and clips with an IDDC checkpoint (released format or written by train.py).

    python predict.py --checkpoint checkpoints/cocostuff27_vits16.pth --input photo.jpg --output-dir out/
    python predict.py --checkpoint FILE --names clusters.yaml --input DIR --recursive --output-dir masks/
    torchrun --nproc_per_node 4 predict.py ... (the same options: the images are shared out)
    python predict.py --checkpoint FILE --input clip.mp4 --output-dir masks/

Each image is segmented with the published sliding-window protocol (224 windows, overlap 75, flip
averaging) at its working size (--short-side; a folder model's own by default, else the image's
size), and gets, at its original size and at its path relative to its input folder:
  <stem>_clusters.png  indexed PNG whose pixel values are the cluster ids
  <stem>_color.png     the segmentation in colour
  <stem>_overlay.png   the colours blended over the image
(--outputs chooses among them), plus one legend.png and shares.csv (each image's share of every
named class). Clusters are named and coloured by --names (a names file), by --assignment (an eval.py
--output-json file: the class the Hungarian matching gave each cluster), by the names file beside
the checkpoint, or else as "cluster N"; clusters of one name are one class. A clip (--input
clip.mp4) gets <stem>_overlay.mp4, <stem>_color.mp4 and <stem>/<frame>_clusters.png.

predict.json in the output folder records the checkpoint and the options: the same command again
continues the job (images whose outputs are complete are skipped), another checkpoint or other
options are refused, --overwrite redoes everything. No output replaces an input, or a file
predict.py did not write; every file is written atomically. Files that are not images are listed as
skipped; an image or clip that cannot be decoded is reported, the others are still segmented, and
the exit code is 1 (docs/predicting.md).
"""

import argparse
import contextlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from data.photos import display_path, open_photo, read_photo, scan_images, working_size, written_by_iddc
from data.registry import DATASET_NAMES, DEFAULT_DATASET, get_dataset
from data.spec import DataError
from data.video import is_video, read_frames, require_av, video_info, video_written_by_iddc
from engine.crf import CRFPool, require_pydensecrf
from engine.names import (
    NamesError,
    add_names_options,
    colour_text,
    default_names,
    default_palette,
    file_sha256,
    names_from_assignment,
    resolve_names,
)
from engine.outputs import (
    OUTPUT_KINDS,
    PNG_SUFFIXES,
    RECORDS_FOLDER,
    VIDEO_SUFFIXES,
    cluster_counts,
    colour_picture,
    frame_clusters_path,
    frame_path_text,
    read_record,
    save_marked_png,
    share_row,
    video_codec,
    video_writer,
    write_image_outputs,
    write_legend,
    write_record,
    write_shares_csv,
)
from engine.segment import at_size, segment, window_probabilities
from engine.visualize import indexed_png, overlay
from modules.checkpoint import add_expect_patch_size, load_iddc_model
from utils import distributed
from utils.cli import ArgumentParser, check_at_least, entry_point, resolve_device
from utils.errors import EXIT_OK, EXIT_PROBLEMS, OptionError, OutputError, ReportedError
from utils.files import check_writable_dir, write_text_atomic
from utils.lock import hold_folder_lock
from utils.log import setup_logger

JOB_FILE = "predict.json"
SHARES_FILE = "shares.csv"
LEGEND_FILE = "legend.png"
SHOW_NAMES = 5
# The options predict.json records: the ones that change what is written. Their flags, for messages.
RECORDED_OPTIONS = {
    "outputs": "--outputs",
    "short_side": "--short-side",
    "window": "--window",
    "overlap": "--overlap",
    "flip": "--flip",
    "crf": "--crf",
    "precision": "--precision",
    "every": "--every",
    "names": "the cluster names and colours (--names, --assignment or the names file beside the checkpoint)",
}


class InputError(ReportedError, ValueError):
    """An --input path or the --assignment file is not what predict.py expects."""


def output_kinds(text):
    """--outputs: a comma-separated subset of OUTPUT_KINDS, kept in their order."""
    chosen = {part.strip() for part in text.split(",") if part.strip()}
    unknown = sorted(chosen - set(OUTPUT_KINDS))
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"expected one or more of {','.join(OUTPUT_KINDS)} separated by commas, got {text!r}"
        )
    return tuple(kind for kind in OUTPUT_KINDS if kind in chosen)


def build_parser():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="IDDC checkpoint (released format or written by train.py)")
    parser.add_argument(
        "--input",
        required=True,
        nargs="+",
        metavar="PATH",
        help="image files, video files and/or folders (their images; at any depth with --recursive)",
    )
    parser.add_argument("--output-dir", required=True, help="where the outputs are written")
    parser.add_argument(
        "--recursive", action="store_true", help="search input folders at any depth (labels/ at their top skipped)"
    )
    parser.add_argument(
        "--outputs",
        type=output_kinds,
        default=OUTPUT_KINDS,
        metavar="KINDS",
        help="which outputs to write: any of clusters,color,overlay (default: all three)",
    )
    parser.add_argument("--overwrite", action="store_true", help="redo every image, replacing the job in --output-dir")
    parser.add_argument(
        "--dataset",
        choices=DATASET_NAMES,
        default=DEFAULT_DATASET,
        help="the checkpoint's dataset: class names and colours of --assignment",
    )
    add_names_options(parser)
    parser.add_argument(
        "--assignment",
        default=None,
        metavar="EVAL_JSON",
        help="eval.py --output-json file: colour and name clusters by their matched class",
    )
    parser.add_argument(
        "--short-side",
        type=int,
        default=None,
        metavar="S",
        help="segment images whose short side is above S at short side S; outputs stay at the original size "
        "(default: the checkpoint's own working size for a folder model, else the image's own size)",
    )
    parser.add_argument("--every", type=int, default=1, metavar="N", help="videos: segment every Nth frame")
    add_expect_patch_size(parser)
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


@dataclass
class Item:
    """One input: an image or a clip, and its path relative to the input folder it was found in
    (a file named directly: its name), which its outputs keep."""

    source: Path
    relative: Path
    video: bool = False

    def base(self, out_dir):
        """The outputs' common start: OUT/<relative folder>/<stem>."""
        return Path(out_dir) / self.relative.parent / self.relative.stem

    def output_files(self, out_dir, kinds):
        """{kind: path} of the files written for it (a clip's clusters are a folder of frames)."""
        base = self.base(out_dir)
        if not self.video:
            return {kind: base.with_name(base.name + PNG_SUFFIXES[kind]) for kind in kinds}
        files = {kind: base.with_name(base.name + VIDEO_SUFFIXES[kind]) for kind in kinds if kind in VIDEO_SUFFIXES}
        if "clusters" in kinds:
            files["clusters"] = base
        return files


def list_inputs(inputs, recursive, logger):
    """(items, skipped) from files and folders, in the folders' scan order (data/photos.py).

    A folder's images are found by their extension, with the ``folder`` dataset's scan rules
    (hidden files and folders, the PNGs the project wrote and, with ``recursive``, a top-level
    ``labels/`` are passed over); other files are returned in ``skipped`` to be listed. Files named
    directly are taken as images, or as clips by a video extension, whatever else their name.
    """
    items, skipped = [], []
    for entry in map(Path, inputs):
        if entry.is_dir():
            try:
                scan = scan_images(entry, exclude_top=("labels",) if recursive else (), recursive=recursive)
            except DataError as err:
                raise InputError(f"--input {entry}: {err}") from err
            items += [Item(entry / relative, relative) for relative in scan.images]
            skipped += [entry / relative for relative in scan.skipped]
            for folder, reason in scan.unreadable_dirs:
                logger.warning("skipped: %s: cannot list the folder (%s)", display_path(entry / folder), reason)
        elif entry.is_file():
            items.append(Item(entry, Path(entry.name), is_video(entry)))
        else:
            raise InputError(f"--input {entry}: no such file or folder")
    if not items:
        found = (
            f"; {len(skipped)} file(s) that are not images by their extension, e.g. "
            f"{', '.join(display_path(p.name) for p in skipped[:SHOW_NAMES])}"
            if skipped
            else ""
        )
        raise InputError(f"--input {' '.join(inputs)}: no images found{found}")
    return items, skipped


def check_one_output_each(items, out_dir):
    """Before any work: two inputs whose outputs would share names (two files given directly with
    one name, one file found in two input folders at one relative path) are refused, naming both."""
    first = {}
    for item in items:
        key = item.base(out_dir)
        if key in first:
            raise InputError(
                f"--input: {display_path(first[key].source)} and {display_path(item.source)} would both be written "
                f"as {display_path(key)}_*; rename one or segment them into different --output-dir folders"
            )
        first[key] = item


def check_outputs(items, out_dir, kinds, protected, done):
    """Before any work: no output may replace an input, nor a file predict.py did not write.

    ``protected`` are the other files the run reads (checkpoint, names, assignment). Files of an
    earlier run (they carry OUTPUT_MARK) are replaced; the outputs of the ``done`` items (their
    records say predict.py wrote them) are kept and not even opened.
    """
    kept = set()
    for path in [*(item.source for item in items), *protected]:
        if path is not None and Path(path).exists():
            stat = os.stat(path)
            kept.add((stat.st_dev, stat.st_ino))
    planned = [
        (out, item) for item in items if item.relative not in done for out in item.output_files(out_dir, kinds).values()
    ]
    planned.append((Path(out_dir) / LEGEND_FILE, None))
    for out, item in planned:
        if not out.exists():
            continue
        what = f"the output {display_path(out.name)}" + (f" of {display_path(item.source)}" if item else "")
        stat = os.stat(out)
        if item is not None and item.video and out == item.base(out_dir):
            if not out.is_dir():
                raise OutputError(f"--output-dir {out_dir}: {what} (a folder of frames) would replace the file {out}")
            continue
        if out.is_dir():
            raise OutputError(f"--output-dir {out_dir}: {what} would replace the folder {out}")
        if (stat.st_dev, stat.st_ino) in kept:
            raise OutputError(
                f"--output-dir {out_dir}: {what} would replace {out}, an input of this run; choose another --output-dir"
            )
        ours = video_written_by_iddc(out) if out.suffix == ".mp4" else written_by_iddc(out)
        if not ours:
            raise OutputError(
                f"--output-dir {out_dir}: {what} would replace {display_path(out)}, which predict.py did not write; "
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


def cluster_names(args, model, meta, spec, logger):
    """The names and colours the outputs use: --assignment's matched classes, else --names (or the
    file beside the checkpoint), else ``cluster N`` in the dataset's palette (a benchmark model) or
    the fixed palette of clusters (a folder model, or more clusters than the palette has)."""
    num_clusters = model.num_classes
    if args.assignment:
        cluster_to_class = load_assignment(args.assignment, num_clusters, spec.num_classes)
        return names_from_assignment(cluster_to_class, spec.class_names, spec.palette)
    names = resolve_names(args.checkpoint, num_clusters, args.names, args.strict_names, logger)
    if names is not None:
        logger.info("cluster names from %s", names.source)
        return names
    trained_on = (meta.get("config") or {}).get("dataset")
    own_palette = trained_on != "folder" and num_clusters <= len(spec.palette)
    return default_names(num_clusters, spec.palette if own_palette else default_palette(num_clusters))


def job_description(args, checkpoint_sha256, names, short_side):
    """What predict.json records: the checkpoint and the options that change the outputs."""
    options = {
        "outputs": ",".join(args.outputs),
        "short_side": short_side,
        "window": args.window,
        "overlap": args.overlap,
        "flip": args.flip,
        "crf": args.crf,
        "precision": args.precision,
        "every": args.every,
        "names": [[name, colour_text(colour)] for name, colour in zip(names.names, names.colours)],
    }
    return {"checkpoint": Path(args.checkpoint).name, "sha256": checkpoint_sha256, "options": options}


def check_job(out_dir, job, overwrite):
    """Refuse, in one line naming the difference, to continue a job of another checkpoint or other
    options in ``out_dir`` (--overwrite replaces it); a shares.csv of no job is the user's own."""
    job_file, shares = Path(out_dir) / JOB_FILE, Path(out_dir) / SHARES_FILE
    if not job_file.exists():
        if shares.exists():
            raise OutputError(
                f"--output-dir {out_dir}: holds {SHARES_FILE} but no {JOB_FILE}, so predict.py did not write it; "
                f"move it away or choose another --output-dir"
            )
        return
    if overwrite:
        return
    hint = "run it with the options it records, pass --overwrite to redo everything, or choose another --output-dir"
    try:
        earlier = json.loads(job_file.read_text())
        earlier_sha, earlier_options = earlier["sha256"], earlier["options"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise OutputError(f"--output-dir {out_dir}: {job_file} is not a predict.py job file ({err}); {hint}") from err
    if earlier_sha != job["sha256"]:
        raise OutputError(
            f"--output-dir {out_dir}: holds the job of another checkpoint ({earlier.get('checkpoint')}, sha256 "
            f"{str(earlier_sha)[:12]}...) than {job['checkpoint']} (sha256 {job['sha256'][:12]}...); {hint}"
        )
    for key, flag in RECORDED_OPTIONS.items():
        if earlier_options.get(key) != job["options"][key]:
            shown = (
                ""
                if key == "names"
                else f": {describe(earlier_options.get(key))} there, {describe(job['options'][key])} here"
            )
            raise OutputError(f"--output-dir {out_dir}: holds a job with other {flag}{shown}; {hint}")


def describe(value):
    return "none" if value is None else str(value)


def default_short_side(args, meta):
    """--short-side, else the working size a folder model was trained at (None: the image's own)."""
    if args.short_side is not None:
        return args.short_side
    return (meta.get("config") or {}).get("short_side")


def load_model(args, device):
    model, meta = load_iddc_model(args.checkpoint, patch_size=args.expect_patch_size)
    if args.window < model.patch_size or args.window % model.patch_size:
        raise InputError(
            f"--window {args.window}: must be a multiple of the checkpoint's ViT patch ({model.patch_size})"
        )
    return model.to(device).eval(), meta


class Predictor:
    """Segments the items of one process and writes their outputs and records."""

    def __init__(self, model, names, args, device, out_dir, short_side, logger):
        self.model, self.names, self.args, self.device = model, names, args, device
        self.out_dir, self.short_side, self.logger = out_dir, short_side, logger
        self.failed = []

    def segment(self, image, size):
        args = self.args
        return segment(
            self.model, image, self.device, args.window, args.overlap, args.flip, args.precision, args.batch_size, size
        )

    def run(self, items, show_progress):
        with CRFPool(self.args.crf_workers) if self.args.crf else contextlib.nullcontext() as crf:
            for item in tqdm(items, desc="predict", unit="input", disable=not show_progress):
                try:
                    if item.video:
                        self.predict_video(item)
                    else:
                        self.predict_image(item, crf)
                except DataError as err:
                    self.logger.warning("not segmented: %s", err)
                    self.failed.append(item)
                if crf is not None:
                    self.finish_refined(crf.finished())
            if crf is not None:
                self.finish_refined(crf.finished(wait_all=True))
        return self.failed

    def predict_image(self, item, crf):
        image, original = read_photo(item.source, self.short_side)
        if crf is None:
            self.finish_image(item, image, original, self.segment(image, original))
            return
        args = self.args
        pixels, probs = window_probabilities(
            self.model, image, self.device, args.window, args.overlap, args.flip, args.precision, args.batch_size
        )
        crf.submit(pixels, probs, (item, image, original))  # the CRF runs while the next image goes through the model

    def finish_refined(self, finished):
        """The outputs of the images whose CRF is done: [((item, image, original size), maps (1, H', W'))]."""
        for (item, image, original), maps in finished:
            self.finish_image(item, image, original, at_size(maps[0], original))

    def finish_image(self, item, image, original, clusters):
        """Outputs at the original size, then the record that says they are complete."""
        paths = item.output_files(self.out_dir, self.args.outputs)
        write_image_outputs(
            paths, clusters, self.names, lambda: image if image.size == original else open_photo(item.source)
        )
        counts = cluster_counts(clusters, self.names.num_clusters)
        write_record(self.out_dir, item.relative, [share_row(display_path(item.relative), *original, counts)])

    def predict_video(self, item):
        """The chosen videos and frame PNGs of a clip, every --every-th frame; each frame is
        segmented as the same frame saved as an image would be."""
        info = video_info(item.source)
        files, kinds = item.output_files(self.out_dir, self.args.outputs), self.args.outputs
        codec, codec_name = video_codec()
        rate = info.rate / self.args.every
        rows = []
        with contextlib.ExitStack() as stack:
            writers = {
                kind: stack.enter_context(video_writer(files[kind], info.width, info.height, rate, codec))
                for kind in VIDEO_SUFFIXES
                if kind in kinds
            }
            if writers:
                self.logger.info(
                    "%s: videos in %s (%s) at %s frames/s", display_path(item.source), codec_name, codec, rate
                )
            for frame, image in read_frames(item.source, self.args.every):
                target = working_size(*image.size, self.short_side)  # as read_photo sizes an image file
                working = image if target == image.size else image.resize(target, Image.BILINEAR)
                clusters = self.segment(working, image.size)  # (H, W)
                if "clusters" in kinds:
                    save_marked_png(
                        indexed_png(clusters, self.names.merged_colours()),
                        frame_clusters_path(files["clusters"], frame),
                    )
                if writers:
                    colour = colour_picture(clusters, self.names)
                    if "color" in writers:
                        writers["color"](colour)
                    if "overlay" in writers:
                        writers["overlay"](overlay(image, colour))
                counts = cluster_counts(clusters, self.names.num_clusters)
                rows.append(share_row(frame_path_text(item.relative, frame), *image.size, counts))
        write_record(self.out_dir, item.relative, rows)


def done_items(items, out_dir, kinds):
    """The relative paths of the items whose record and outputs are all there (a continued job skips them)."""
    done = set()
    for item in items:
        if read_record(out_dir, item.relative) is not None and all(
            path.exists() for path in item.output_files(out_dir, kinds).values()
        ):
            done.add(item.relative)
    return done


def finish_job(items, out_dir, names):
    """Rank 0, once every process is done: legend.png and shares.csv from every item's record."""
    write_legend(Path(out_dir) / LEGEND_FILE, names)
    rows = []
    for item in items:
        rows += read_record(out_dir, item.relative) or []
    write_shares_csv(Path(out_dir) / SHARES_FILE, rows, names)


@dataclass
class Job:
    """One command's work: its inputs, output folder, model, names and what predict.json records."""

    args: argparse.Namespace
    items: list
    skipped: list
    out_dir: Path
    model: torch.nn.Module
    names: object  # engine.names.ClusterNames
    short_side: int
    device: torch.device
    description: dict
    logger: object


def run_job(job):
    """Continue (or start) the job in its output folder: check it, share the inputs still to do
    out between the processes, segment them, then rank 0 writes legend.png and shares.csv.
    Everything it writes is in ``job.out_dir``."""
    args, items, out_dir, logger = job.args, job.items, job.out_dir, job.logger
    main_process = distributed.is_main()
    check_job(out_dir, job.description, args.overwrite)
    done = set() if args.overwrite else done_items(items, out_dir, args.outputs)
    check_outputs(items, out_dir, args.outputs, [args.checkpoint, args.names, args.assignment], done)
    for path in job.skipped:
        logger.info("skipped: %s: not an image by its extension", display_path(path))
    distributed.barrier()  # every process has found what is done before anything is written
    if main_process:
        if args.overwrite:
            shutil.rmtree(Path(out_dir) / RECORDS_FOLDER, ignore_errors=True)
        write_text_atomic(Path(out_dir) / JOB_FILE, json.dumps(job.description, indent=2) + "\n")
    distributed.barrier()  # the old records are gone before any process writes a new one
    todo = [item for item in items if item.relative not in done]
    if done:
        logger.info("%d of %d inputs already done in %s (%s): skipped", len(done), len(items), out_dir, JOB_FILE)
    mine = todo[distributed.rank() :: distributed.world_size()]
    predictor = Predictor(job.model, job.names, args, job.device, out_dir, job.short_side, logger)
    failed = predictor.run(mine, main_process)
    counts = distributed.all_reduce_sum(torch.tensor([len(mine) - len(failed), len(failed)]))
    distributed.barrier()
    distributed.cleanup()
    if main_process:
        finish_job(items, out_dir, job.names)
        segmented, failures = counts.tolist()
        if failures:
            logger.warning("%d input(s) could not be read; each process names its own", failures)
        logger.info(
            "%d of %d inputs segmented now, %d before; outputs, %s and %s in %s%s",
            segmented,
            len(items),
            len(done),
            SHARES_FILE,
            LEGEND_FILE,
            out_dir,
            f"; {len(job.skipped)} file(s) that are not images skipped" if job.skipped else "",
        )
    if failed:
        print(
            f"error: {len(failed)} of {len(mine)} image(s) could not be read: "
            f"{', '.join(display_path(item.source) for item in failed[:SHOW_NAMES])}"
            f"{', ...' if len(failed) > SHOW_NAMES else ''} (see 'not segmented' above)",
            file=sys.stderr,
        )
        return EXIT_PROBLEMS
    return EXIT_OK


@entry_point
def main(argv=None):
    args = build_parser().parse_args(argv)
    if not 0 <= args.overlap < args.window:  # as eval.py checks them
        raise OptionError(
            f"--overlap must lie in 0..{args.window - 1} (below --window {args.window}), got {args.overlap}"
        )
    check_at_least(args.batch_size, "--batch-size", 1)
    check_at_least(args.crf_workers, "--crf-workers", 0)
    check_at_least(args.short_side, "--short-side", 1)
    check_at_least(args.every, "--every", 1)
    if args.names and args.assignment:
        raise NamesError(
            f"--names {args.names} and --assignment {args.assignment}: give one of them; both would name the clusters"
        )
    device = torch.device(resolve_device(args.device))
    if args.crf:
        require_pydensecrf()
    spec = get_dataset(args.dataset)
    device = distributed.init_from_env(device)
    logger = setup_logger()
    items, skipped = list_inputs(args.input, args.recursive, logger)
    videos = [item.source for item in items if item.video]
    if videos:
        require_av()
        if args.crf:
            raise OptionError(f"--crf refines images, not videos; segment {display_path(videos[0])} without --crf")
    out_dir = check_writable_dir(args.output_dir, "--output-dir")
    check_one_output_each(items, out_dir)
    hold_folder_lock(out_dir, "--output-dir")
    model, meta = load_model(args, device)
    names = cluster_names(args, model, meta, spec, logger)
    short_side = default_short_side(args, meta)
    description = job_description(args, file_sha256(args.checkpoint), names, short_side)
    job = Job(args, items, skipped, out_dir, model, names, short_side, device, description, logger)
    return run_job(job)


if __name__ == "__main__":
    sys.exit(main())
