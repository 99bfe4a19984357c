"""What is written for a segmented image or clip: the marked PNGs and videos, the legend, and each
image's shares of the named classes (its record, and ``shares.csv`` built from the records).

predict.py, the gallery and the page call these, so that a cluster looks and is counted the same
everywhere: clusters of one name are one class (docs/predicting.md), coloured as their lowest id.
"""

import contextlib
import csv
import io
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import PngImagePlugin

from data.photos import OUTPUT_MARK, display_path
from data.video import require_av
from engine.visualize import colorize, indexed_png, legend, overlay
from utils.files import atomic_path, save_image_atomic, write_text_atomic

OUTPUT_KINDS = ("clusters", "color", "overlay")
PNG_SUFFIXES = {"clusters": "_clusters.png", "color": "_color.png", "overlay": "_overlay.png"}
VIDEO_SUFFIXES = {"color": "_color.mp4", "overlay": "_overlay.mp4"}
# zlib level of the overlays: a photo's pixels hardly compress, and level 6 (PIL's default, kept for
# the maps) spends 6x the time of level 1 on them for files 15% smaller (a 24 MP overlay: 38 s vs 6 s).
OVERLAY_COMPRESSION = 1
FRAME_DIGITS = 6
RECORDS_FOLDER = ".shares"  # hidden: a scan of the output folder never takes it for photos
SHARE_DIGITS = 6
# Encoders tried in order for the videos: H.264 where the PyAV wheel has it, else MPEG-4 Part 2.
VIDEO_CODECS = (("libx264", "H.264"), ("mpeg4", "MPEG-4 Part 2"))


def save_marked_png(image, path, **params):
    """Atomically, with OUTPUT_MARK (indexed PNGs keep their palette); ``params`` go to PIL's save."""
    info = PngImagePlugin.PngInfo()
    info.add_text(*OUTPUT_MARK)
    save_image_atomic(image, path, pnginfo=info, **params)


def cluster_counts(clusters, num_clusters):
    """(K,) int64: pixels of each cluster id in a (H, W) map."""
    return np.bincount(np.asarray(clusters).reshape(-1), minlength=num_clusters)[:num_clusters]


def class_shares(counts, names, pixels):
    """Fraction of ``pixels`` each class of ``names`` covers (clusters of one name added up), in
    the order of :meth:`ClusterNames.classes`."""
    counts = np.asarray(counts, dtype=np.int64)
    return [int(counts[ids].sum()) / pixels for _, _, ids in names.classes()]


def colour_picture(clusters, names):
    """The colour map of a (H, W) cluster map: each pixel in its class's colour."""
    return colorize(clusters, names.merged_colours())


def write_image_outputs(paths, clusters, names, load_image):
    """The PNGs of one image, at the map's size: ``paths`` {kind: path} of OUTPUT_KINDS chosen by
    --outputs; ``load_image()`` gives the image at that size (read only for an overlay)."""
    if "clusters" in paths:
        save_marked_png(indexed_png(clusters, names.merged_colours()), paths["clusters"])
    if "color" in paths or "overlay" in paths:
        colour = colour_picture(clusters, names)
        if "color" in paths:
            save_marked_png(colour, paths["color"])
        if "overlay" in paths:
            save_marked_png(overlay(load_image(), colour), paths["overlay"], compress_level=OVERLAY_COMPRESSION)


def write_legend(path, names):
    entries = names.legend_entries()
    save_marked_png(legend([text for text, _ in entries], [colour for _, colour in entries]), path)


def record_path(out_dir, relative):
    """Where the shares of the input at ``relative`` (to its input folder) are kept."""
    return Path(out_dir) / RECORDS_FOLDER / f"{relative}.json"


def share_row(path_text, width, height, counts):
    """One row of a record: the image's (or frame's) path text, original size, cluster pixel counts."""
    return {"path": path_text, "width": int(width), "height": int(height), "counts": [int(c) for c in counts]}


def write_record(out_dir, relative, rows):
    """The record of one input, written after its outputs: its presence says they are complete."""
    write_text_atomic(record_path(out_dir, relative), json.dumps({"rows": rows}))


def read_record(out_dir, relative):
    """The rows of an input's record, or None if it has none (not done, or an unreadable record)."""
    try:
        return json.loads(record_path(out_dir, relative).read_text())["rows"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def shares_csv_text(rows, names):
    """``shares.csv``: path, width, height, then each class's fraction of the image's pixels, one row
    per image sorted by path (docs/predicting.md)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "width", "height", *(name for name, _, _ in names.classes())])
    for row in sorted(rows, key=lambda row: row["path"]):
        shares = class_shares(row["counts"], names, row["width"] * row["height"])
        writer.writerow([row["path"], row["width"], row["height"], *(f"{share:.{SHARE_DIGITS}f}" for share in shares)])
    return buffer.getvalue()


def write_shares_csv(path, rows, names):
    with atomic_path(path) as tmp:
        tmp.write_text(shares_csv_text(rows, names), encoding="utf-8")


def frame_path_text(relative, frame):
    """The ``path`` of a video frame in shares.csv: the clip's path, ``#``, the frame number."""
    return f"{display_path(relative)}#{frame:0{FRAME_DIGITS}d}"


def frame_clusters_path(base, frame):
    """``OUT/clip/<frame number, 6 digits>_clusters.png`` for the clip whose outputs start with ``base``."""
    return Path(base) / f"{frame:0{FRAME_DIGITS}d}{PNG_SUFFIXES['clusters']}"


def video_codec():
    """(encoder name, what the log calls it): H.264 when the PyAV wheel can encode it."""
    av = require_av()
    for codec, description in VIDEO_CODECS:
        try:
            av.codec.Codec(codec, "w")
        except (av.FFmpegError, ValueError):
            continue
        return codec, description
    return VIDEO_CODECS[-1]


@contextlib.contextmanager
def video_writer(path, width, height, rate, codec):
    """``write(image)`` for the frames of an MP4 at ``path``, written to a temporary file beside it
    and renamed onto it when the block ends without an error (an interrupted clip leaves no half
    video), its container marked as the PNGs are."""
    av = require_av()
    with atomic_path(path) as temporary:
        container = av.open(str(temporary), mode="w", format="mp4")
        try:
            container.metadata["comment"] = OUTPUT_MARK[1]
            stream = container.add_stream(codec, rate=Fraction(rate))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"

            def write(image):
                for packet in stream.encode(av.VideoFrame.from_image(image.convert("RGB"))):
                    container.mux(packet)

            yield write
            for packet in stream.encode(None):
                container.mux(packet)
        finally:
            container.close()
