"""What each cluster is: the images where it covers the most, and its share of every pixel scanned.

A model trained on a collection nobody labelled has clusters, not classes; a user names them by
looking at them. scripts/gallery.py and the naming tab of app.py's page show the same pictures,
made here, from maps made by the one function predict.py uses (engine/segment.py), so the gallery
shows what predict.py will write.

The API (app.py calls it on its examples or its --data-root as scripts/gallery.py does)::

    paths, labels = find_gallery_images(data_root)   # or inputs=[files and folders]
    chosen = seeded_sample(len(paths), 60, seed=0)   # indices of a seeded sample, in order
    gallery = scan_clusters(model, paths, device, labels=labels, per_cluster=12, short_side=None)
    gallery.shares()                    # (K,) each cluster's fraction of all the pixels scanned
    gallery.top[k]                      # [GalleryEntry], best first: .label, .shares (K,), .picture, .clusters
    entry_panels(entry, k, colours)     # (cluster k highlighted, the rest dimmed; the whole segmentation)
    cluster_sheet(gallery, k, names)    # cluster k's sheet, a PIL image (names: engine.names.ClusterNames)
    check_gallery_outputs(out_dir, K)   # before the work: no file of the user's would be replaced
    write_gallery(gallery, out_dir, names, checkpoint, logger)   # the sheets, clusters.yaml, index.html

Shares are counted on the maps at each image's original size, as predict.py writes them, so the
gallery's shares and predict's ``shares.csv`` agree. The pictures are thumbnails: the working
image scaled to fit THUMBNAIL and its map taken at that size (nearest).

The files (docs/own_data.md): ``index.html`` (self-contained: inline style, relative links, no
script, nothing fetched from a network), ``cluster_NNN.png`` (one sheet per cluster, carrying the
project's PNG mark, written atomically) and ``clusters.yaml`` in the names format with each
cluster's share. A ``clusters.yaml`` that already holds a name other than the default ``cluster N``
is the user's work and is never replaced: the new file is ``clusters.new.yaml`` beside it. The
same inputs give the same files, byte for byte: nothing in them depends on the time or the machine.
"""

import bisect
import dataclasses
import html
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFont

from data.photos import display_path, read_photo, scan_images, written_by_iddc
from data.spec import DataError
from engine.names import DEFAULT_NAME, colour_text, file_sha256, write_names
from engine.outputs import save_marked_png
from engine.segment import segment
from engine.visualize import colorize
from utils.errors import OutputError
from utils.files import write_text_atomic

THUMBNAIL = (192, 144)  # (width, height) box each picture is scaled to fit
PANEL_GAP, MARGIN, CAPTION_HEIGHT, HEADER_HEIGHT, SHEET_COLUMNS = 4, 8, 18, 30, 3
FONT_SIZE = 13  # Pillow's own font (FreeType's when Pillow has it, its bitmap font otherwise)
PANEL_BACKGROUND = (235, 235, 235)
# Outside the cluster a pixel keeps a quarter of its value over a dark grey: the scene stays
# recognisable while the cluster stands out; the cluster's outline is drawn in its colour.
DIM_DIVISOR, DIM_OFFSET = 4, 48
INDEX_FILE, NAMES_FILE, NEW_NAMES_FILE = "index.html", "clusters.yaml", "clusters.new.yaml"
GENERATOR = "iddc scripts/gallery.py"  # index.html's <meta name="generator">: a page the gallery wrote


def sheet_name(cluster):
    return f"cluster_{cluster:03d}.png"


@dataclass
class GalleryEntry:
    """One image in a cluster's top list (shared by the lists of every cluster it is in)."""

    index: int  # position in the scanned list: ties in share go to the earlier image
    label: str  # the image's path as shown (relative to its input folder)
    shares: np.ndarray  # (K,) fraction of the image's pixels in each cluster
    picture: Image.Image  # RGB thumbnail of the image
    clusters: np.ndarray  # (h, w) uint8 cluster map at the thumbnail's size


@dataclass
class ClusterGallery:
    """What a scan found: pixel counts per cluster and the ``per_cluster`` best images of each."""

    num_clusters: int
    per_cluster: int
    pixel_counts: np.ndarray  # (K,) int64, over every image at its original size
    top: list  # K lists of GalleryEntry, highest share first
    scanned: int = 0
    failed: list = field(default_factory=list)  # (label, reason) of the images that could not be read

    @property
    def total_pixels(self):
        return int(self.pixel_counts.sum())

    def shares(self):
        """(K,) float64: each cluster's fraction of all pixels scanned (zeros when none was)."""
        total = self.total_pixels
        return self.pixel_counts / total if total else np.zeros(self.num_clusters)

    def add(self, label, picture, clusters, counts):
        """Count one image (``counts`` (K,) at its original size) and keep its thumbnail where it
        enters a cluster's top list."""
        index = self.scanned
        self.scanned += 1
        self.pixel_counts += counts
        shares = counts / max(1, int(counts.sum()))  # (K,)
        entry = None
        for cluster in np.flatnonzero(counts):
            ranked = self.top[cluster]
            if len(ranked) == self.per_cluster and shares[cluster] <= ranked[-1].shares[cluster]:
                continue
            if entry is None:
                entry = GalleryEntry(index, label, shares, *thumbnail(picture, clusters))
            keys = [(-other.shares[cluster], other.index) for other in ranked]
            ranked.insert(bisect.bisect(keys, (-shares[cluster], index)), entry)
            del ranked[self.per_cluster :]


def find_gallery_images(data_root=None, inputs=()):
    """(paths, labels as shown) of every image under ``data_root`` (a folder dataset's root: its
    labels/ folder apart) or ``inputs`` (files, and folders searched at any depth), as the folder
    dataset finds them; labels are relative to the folder each image was found in."""
    option, exclude_top = ("--data-root", ("labels",)) if data_root is not None else ("--input", ())
    paths, labels, skipped = [], [], 0
    for entry in [Path(data_root)] if data_root is not None else map(Path, inputs or ()):
        if entry.is_dir():
            found = scan_images(entry, exclude_top=exclude_top, check_stems=False)
            paths += [found.root / path for path in found.images]
            labels += [display_path(path) for path in found.images]
            skipped += len(found.skipped)
        elif entry.is_file() and data_root is None:
            paths.append(entry)
            labels.append(display_path(entry.name))
        else:
            raise DataError(f"{option} {entry}: no such {'folder' if data_root is not None else 'file or folder'}")
    if not paths:
        where = f"{option} {data_root if data_root is not None else ' '.join(map(str, inputs))}"
        others = f" ({skipped} file(s) that are not images by their extension)" if skipped else ""
        raise DataError(f"{where}: no images found{others}")
    return paths, labels


def seeded_sample(count, sample, seed=0):
    """Indices of ``sample`` of ``count`` items, in their order; all of them when there are fewer."""
    if count <= sample:
        return list(range(count))
    return sorted(np.random.default_rng(seed).choice(count, size=sample, replace=False).tolist())


def empty_gallery(num_clusters, per_cluster):
    return ClusterGallery(
        num_clusters, per_cluster, np.zeros(num_clusters, dtype=np.int64), [[] for _ in range(num_clusters)]
    )


def thumbnail(picture, clusters, box=THUMBNAIL):
    """(RGB picture, uint8 map) scaled to fill ``box``, aspect kept; ``clusters`` is (H, W) at any size."""
    width, height = picture.size
    scale = min(box[0] / width, box[1] / height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small_map = Image.fromarray(clusters.astype(np.uint8)).resize(size, Image.NEAREST)
    return picture.convert("RGB").resize(size, Image.BILINEAR), np.asarray(small_map)  # (h, w)


def scan_clusters(
    model,
    paths,
    device,
    labels=None,
    per_cluster=12,
    short_side=None,
    window=224,
    overlap=75,
    flip=True,
    precision="fp32",
    batch_size=32,
    progress=None,
    logger=None,
):
    """Segment every image of ``paths`` as predict.py does and gather the gallery.

    ``labels`` are the paths as shown (default the paths themselves); ``short_side`` the working
    size (None: the image's own). An image that cannot be read is recorded in ``failed`` (and
    logged as a warning) and passed over. ``progress`` wraps the iteration (e.g. tqdm).
    """
    gallery = empty_gallery(model.num_classes, per_cluster)
    labels = [display_path(path) for path in paths] if labels is None else labels
    pairs = list(zip(paths, labels))
    for path, label in progress(pairs) if progress is not None else pairs:
        try:
            image, original = read_photo(path, short_side)
        except DataError as err:
            if logger is not None:
                logger.warning("not scanned: %s", err)
            gallery.failed.append((label, str(err)))
            continue
        clusters = segment(model, image, device, window, overlap, flip, precision, batch_size, size=original)  # (H, W)
        counts = np.bincount(clusters.reshape(-1), minlength=model.num_classes)  # (K,)
        gallery.add(label, image, clusters, counts)
    return gallery


def highlight(picture, clusters, cluster, colour):
    """``picture`` with the pixels of ``cluster`` as they are, outlined in ``colour``, the rest dimmed.

    ``clusters`` is the (h, w) map of the picture's pixels."""
    pixels = np.asarray(picture.convert("RGB"), dtype=np.uint8)  # (h, w, 3)
    inside = clusters == cluster  # (h, w)
    shown = np.where(inside[..., None], pixels, pixels // DIM_DIVISOR + DIM_OFFSET).astype(np.uint8)  # (h, w, 3)
    padded = np.pad(inside, 1, mode="edge")  # (h + 2, w + 2)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]  # (h, w)
    shown[inside & ~interior] = colour
    return Image.fromarray(shown)


def entry_panels(entry, cluster, colours):
    """(the cluster highlighted, the whole segmentation) of one GalleryEntry, in ``colours`` (K, 3)
    (``ClusterNames.merged_colours()``: clusters of one name in one colour)."""
    return highlight(entry.picture, entry.clusters, cluster, colours[cluster]), colorize(entry.clusters, colours)


def _fit_text(draw, text, width):
    """``text`` cut from the left ("...") to fit ``width`` pixels: the file name stays readable."""
    if draw.textlength(text) <= width:
        return text
    while text and draw.textlength("..." + text) > width:
        text = text[1:]
    return "..." + text


def cluster_title(cluster, name):
    default = DEFAULT_NAME.format(cluster)
    return default if name == default else f"{default}: {name}"


def cluster_sheet(gallery, cluster, names):
    """The sheet of one cluster: a title with its colour and share, then for each of its top
    images the cluster highlighted beside the whole segmentation (``names``' merged colours), with
    the image's share and path."""
    colours = names.merged_colours()  # (K, 3)
    entries = gallery.top[cluster]
    tile_width, tile_height = 2 * THUMBNAIL[0] + PANEL_GAP, THUMBNAIL[1] + CAPTION_HEIGHT
    rows = max(1, -(-len(entries) // SHEET_COLUMNS))
    width = MARGIN + SHEET_COLUMNS * (tile_width + MARGIN)
    sheet = Image.new("RGB", (width, HEADER_HEIGHT + rows * (tile_height + MARGIN) + MARGIN), "white")
    draw = ImageDraw.Draw(sheet)
    draw.font = ImageFont.load_default(size=FONT_SIZE)
    swatch = HEADER_HEIGHT - 2 * MARGIN
    draw.rectangle((MARGIN, MARGIN, MARGIN + swatch, MARGIN + swatch), fill=tuple(int(v) for v in colours[cluster]))
    title = (
        f"{cluster_title(cluster, names.names[cluster])}: {100 * gallery.shares()[cluster]:.2f}% of the pixels scanned"
    )
    if not entries:
        title += " (in none of the images scanned)"
    draw.text((2 * MARGIN + swatch, MARGIN + 2), _fit_text(draw, title, width - 3 * MARGIN - swatch), fill="black")
    for position, entry in enumerate(entries):
        left = MARGIN + (position % SHEET_COLUMNS) * (tile_width + MARGIN)
        top = HEADER_HEIGHT + (position // SHEET_COLUMNS) * (tile_height + MARGIN)
        for column, panel in enumerate(entry_panels(entry, cluster, colours)):
            box_left = left + column * (THUMBNAIL[0] + PANEL_GAP)
            draw.rectangle((box_left, top, box_left + THUMBNAIL[0] - 1, top + THUMBNAIL[1] - 1), fill=PANEL_BACKGROUND)
            offset = ((THUMBNAIL[0] - panel.size[0]) // 2, (THUMBNAIL[1] - panel.size[1]) // 2)
            sheet.paste(panel, (box_left + offset[0], top + offset[1]))
        caption = f"{100 * entry.shares[cluster]:.1f}%  {entry.label}"
        draw.text((left, top + THUMBNAIL[1] + 2), _fit_text(draw, caption, tile_width), fill="black")
    return sheet


def check_gallery_outputs(out_dir, num_clusters):
    """Before any work: the sheets and index.html replace only files the gallery wrote."""
    out_dir = Path(out_dir)
    for path in [out_dir / sheet_name(cluster) for cluster in range(num_clusters)] + [out_dir / INDEX_FILE]:
        if path.is_dir():
            raise OutputError(f"--output-dir {out_dir}: the gallery's {path.name} would replace the folder {path}")
        ours = written_by_iddc(path) if path.suffix == ".png" else _index_written_by_gallery(path)
        if path.exists() and not ours:
            raise OutputError(
                f"--output-dir {out_dir}: the gallery's {path.name} would replace {path}, which the gallery did not "
                f"write; move it away or choose another --output-dir"
            )


def _index_written_by_gallery(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return f'<meta name="generator" content="{GENERATOR}">' in handle.read(4096)
    except OSError:
        return False


def only_default_names(path):
    """Whether the names file ``path`` names every cluster ``cluster N`` (nobody has edited it);
    a file that cannot be read as one is taken as the user's (False)."""
    try:
        content = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    entries = content.get("clusters") if isinstance(content, dict) else None
    if not isinstance(entries, list):
        return False
    return all(
        isinstance(entry, dict) and entry.get("name") == DEFAULT_NAME.format(entry.get("id")) for entry in entries
    )


def write_gallery(gallery, out_dir, names, checkpoint, logger=None):
    """Write the sheets, clusters.yaml (or clusters.new.yaml) and index.html; returns the names
    file written. ``names`` colour and name the clusters and are written with this scan's shares
    and ``checkpoint``'s file name and sha256."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for cluster in range(gallery.num_clusters):
        save_marked_png(cluster_sheet(gallery, cluster, names), out_dir / sheet_name(cluster))
    names_path = out_dir / NAMES_FILE
    if names_path.exists() and not only_default_names(names_path):
        names_path = out_dir / NEW_NAMES_FILE
        if logger is not None:
            logger.warning(
                "%s holds names someone wrote: kept as it is; this scan's names file is %s",
                out_dir / NAMES_FILE,
                names_path,
            )
    scanned_names = dataclasses.replace(
        names,
        shares=[float(share) for share in gallery.shares()],
        checkpoint=Path(checkpoint).name,
        sha256=file_sha256(checkpoint),
        source=None,
    )
    write_names(names_path, scanned_names)
    write_text_atomic(out_dir / INDEX_FILE, index_html(gallery, scanned_names, names_path.name))
    return names_path


INDEX_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
td, th { padding: 2px 10px; text-align: left; border-bottom: 1px solid #ddd; }
td.share { text-align: right; }
.swatch { display: inline-block; width: 1em; height: 1em; border: 1px solid #666; vertical-align: middle; }
section { margin-top: 2em; }
section img { max-width: 100%; border: 1px solid #ccc; }
ol { columns: 3; font-size: 0.85em; }
"""


def index_html(gallery, names, names_file):
    """The page: every cluster with its colour, name and share, then each cluster's sheet and the
    list of its top images. Relative links only, inline style, no script."""
    escape = html.escape
    shares = gallery.shares()
    colours = names.merged_colours()  # (K, 3)
    checkpoint = escape(str(names.checkpoint))
    rows, sections = [], []
    for cluster in range(gallery.num_clusters):
        swatch = f'<span class="swatch" style="background:{colour_text(colours[cluster])}"></span>'
        name = escape(names.names[cluster])
        rows.append(
            f'<tr><td><a href="#cluster-{cluster}">{cluster}</a></td><td>{swatch}</td><td>{name}</td>'
            f'<td class="share">{100 * shares[cluster]:.2f}%</td><td>{len(gallery.top[cluster])}</td></tr>'
        )
        items = "".join(
            f"<li>{100 * entry.shares[cluster]:.1f}% {escape(entry.label)}</li>" for entry in gallery.top[cluster]
        )
        sheet = sheet_name(cluster)
        sections.append(
            f'<section id="cluster-{cluster}">\n<h2>{swatch} {escape(cluster_title(cluster, names.names[cluster]))}: '
            f"{100 * shares[cluster]:.2f}% of the pixels scanned</h2>\n"
            f'<a href="{sheet}"><img src="{sheet}" alt="cluster {cluster}: its top images"></a>\n'
            f"<ol>{items}</ol>\n</section>"
        )
    failed = ""
    if gallery.failed:
        failed = (
            "<p>Not scanned (could not be read): " + ", ".join(escape(label) for label, _ in gallery.failed) + "</p>\n"
        )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="generator" content="{GENERATOR}">\n'
        f"<title>Clusters of {checkpoint}</title>\n<style>{INDEX_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>Clusters of {checkpoint}</h1>\n"
        f"<p>{gallery.scanned} images scanned ({gallery.total_pixels:,} pixels at their original sizes). For each "
        f"cluster, the {gallery.per_cluster} images where it covers the most: on the left the cluster (the rest "
        f"dimmed), on the right the whole segmentation, under it the cluster's share of that image.</p>\n"
        f'<p>Name the clusters in <a href="{names_file}">{names_file}</a> (clusters given one name become one '
        f"class), then give it to predict.py with <code>--names</code>.</p>\n"
        f"{failed}"
        "<table>\n<tr><th>id</th><th>colour</th><th>name</th><th>share</th><th>images</th></tr>\n"
        + "\n".join(rows)
        + "\n</table>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )
