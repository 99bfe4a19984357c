"""What app.py serves, without the page: the checkpoints it offers, the models it keeps loaded, and
one photo segmented exactly as predict.py segments it (docs/app.md).

The page must show the maps predict.py writes, so a photo is read by data/photos.py's reader and
segmented by engine/segment.py's functions (the CRF by engine/crf.py's pool, as predict.py runs
it); nothing here re-implements them. Listing the checkpoints reads names and sizes only: a file
is loaded when it is chosen, and only listed files can be loaded, never a path from the browser.
"""

import collections
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from data.photos import IMAGE_EXTENSIONS, display_path, read_photo
from data.registry import DATASET_NAMES, DEFAULT_DATASET, get_dataset
from data.spec import DataError
from engine.crf import CRFPool
from engine.names import default_names, default_palette, names_from_assignment, resolve_names
from engine.outputs import save_marked_png
from engine.segment import at_size, segment, window_probabilities
from engine.visualize import indexed_png
from modules.checkpoint import load_iddc_model
from modules.weights import CheckpointError
from utils.errors import ReportedError

CHECKPOINT_NAMES = ("best_model.pth", "last_model.pth")
CHECKPOINT_SUFFIXES = (".pth", ".pt")
HIGHLIGHT_DIM = 0.25  # the rest of the image, when one cluster is shown alone


class PageError(ReportedError, ValueError):
    """A request the page cannot serve (a checkpoint not listed, an upload that is no image)."""


@dataclass(frozen=True)
class CheckpointEntry:
    """A checkpoint the page offers: ``key`` is its path as listed (relative to the project folder
    where it lies inside it), the one thing the browser sends back."""

    key: str
    path: Path
    size: int
    shown: str  # how the page names it: the key, or for a file outside the project its path from the current folder

    def label(self, loaded=None):
        size = f"{self.size / 2**20:.1f} MB"
        if loaded is None:
            return f"{self.shown} ({size})"
        return f"{self.shown} ({size}; {loaded.dataset}, {loaded.backbone}, K={loaded.num_clusters})"


def listed_key(path, project_root):
    path = Path(os.path.abspath(path))
    try:
        return path.relative_to(project_root).as_posix()
    except ValueError:
        return display_path(path)


def shown_name(key, path):
    """A key outside the project (an absolute path) as the user gave it: from the current folder
    when the file lies under it; the page shows this, the browser still sends the key."""
    if not Path(key).is_absolute():
        return key
    try:
        return display_path(path.relative_to(os.path.abspath(os.curdir)))
    except ValueError:
        return key


def find_checkpoints(project_root, files=(), checkpoint_dir=None, search_dirs=None):
    """[CheckpointEntry] the page offers: ``files`` when given; otherwise every .pth/.pt file in
    ``checkpoint_dir`` and every best_model.pth / last_model.pth under ``search_dirs`` (default
    outputs/ and runs/ of the project), at any depth. Names and sizes only: nothing is read."""
    project_root = Path(os.path.abspath(project_root))
    if files:
        found = [Path(file) for file in files]
    else:
        found = []
        folder = Path(checkpoint_dir) if checkpoint_dir else project_root / "checkpoints"
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
        roots = search_dirs if search_dirs is not None else [project_root / "outputs", project_root / "runs"]
        for root in map(Path, roots):
            if root.is_dir():
                found += sorted(p for p in root.rglob("*.pth") if p.name in CHECKPOINT_NAMES and p.is_file())
    entries, seen = [], set()
    for path in found:
        key = listed_key(path, project_root)
        if key not in seen:
            seen.add(key)
            absolute = Path(os.path.abspath(path))
            entries.append(CheckpointEntry(key, absolute, path.stat().st_size, shown_name(key, absolute)))
    return entries


@dataclass
class LoadedModel:
    """A checkpoint in memory with the names and colours its outputs use."""

    entry: CheckpointEntry
    model: object
    names: object  # engine.names.ClusterNames
    dataset: str
    backbone: str
    default_short_side: int  # the checkpoint's own working size (None: each image's own size)

    @property
    def num_clusters(self):
        return self.model.num_classes


def resolve_checkpoint_names(path, num_clusters, dataset, trained_on, assignment_loader, logger=None):
    """The ClusterNames of a checkpoint: its names file, else ``assignment_loader(num_clusters,
    num_classes)`` (an --assignment), else ``cluster N``: in the dataset's palette for a benchmark
    model, in the fixed palette of clusters for a folder model (or more clusters than the palette
    has), as predict.py colours them."""
    names = resolve_names(path, num_clusters, logger=logger)
    if names is not None:
        return names
    spec = get_dataset(dataset)
    if assignment_loader is not None:
        cluster_to_class = assignment_loader(num_clusters, spec.num_classes)
        return names_from_assignment(cluster_to_class, spec.class_names, spec.palette)
    own_palette = trained_on != "folder" and num_clusters <= len(spec.palette)
    palette = spec.palette if own_palette else default_palette(num_clusters)
    return default_names(num_clusters, palette, checkpoint=path)


class ModelCache:
    """At most ``capacity`` loaded models; loading one more drops the least recently used.

    One lock serialises loading and use, so two requests for one checkpoint load it once.
    """

    def __init__(self, entries, device, capacity=2, assignment_loader=None, logger=None):
        self.entries = {entry.key: entry for entry in entries}
        self.device = device
        self.capacity = capacity
        self.assignment_loader = assignment_loader
        self.logger = logger
        self.loaded = collections.OrderedDict()
        self.lock = threading.RLock()

    def entry(self, key):
        if key not in self.entries:
            listed = ", ".join(self.entries) or "none"
            raise PageError(f"checkpoint {key!r} is not one the page lists (listed: {listed})")
        return self.entries[key]

    def get(self, key):
        """The LoadedModel of a listed checkpoint, loading it (and dropping the oldest) if needed."""
        entry = self.entry(key)
        with self.lock:
            if key in self.loaded:
                self.loaded.move_to_end(key)
                return self.loaded[key]
            loaded = self._load(entry)
            while len(self.loaded) >= self.capacity:
                self.loaded.popitem(last=False)
            self.loaded[key] = loaded
            return loaded

    def loaded_keys(self):
        with self.lock:
            return list(self.loaded)

    def _load(self, entry):
        try:
            model, extra = load_iddc_model(entry.path)
        except CheckpointError:
            raise
        except Exception as err:  # a damaged file: torch.load raises whatever its unpickler met
            raise CheckpointError(f"{entry.key}: cannot load the checkpoint ({type(err).__name__}: {err})") from err
        config = extra.get("config") if isinstance(extra.get("config"), dict) else {}
        dataset = config.get("dataset") if config.get("dataset") in DATASET_NAMES else DEFAULT_DATASET
        names = resolve_checkpoint_names(
            entry.path, model.num_classes, dataset, config.get("dataset"), self.assignment_loader, logger=self.logger
        )
        return LoadedModel(
            entry,
            model.to(self.device).eval(),
            names,
            dataset,
            model.backbone_name or "ViT",
            config.get("short_side") or None,
        )


@dataclass
class Segmentation:
    """One photo's result: the cluster map at the original size and the picture at its working size."""

    name: str
    image: Image.Image  # RGB at the working size
    clusters: np.ndarray  # (H, W) cluster ids at the original size
    loaded: LoadedModel

    def shares(self):
        """[(name, colour, share of the image's pixels)] per class (merged names), largest first."""
        counts = np.bincount(self.clusters.reshape(-1), minlength=self.loaded.num_clusters)  # (K,)
        total = max(1, int(self.clusters.size))
        rows = [(name, colour, float(counts[ids].sum()) / total) for name, colour, ids in self.loaded.names.classes()]
        return sorted((row for row in rows if row[2] > 0), key=lambda row: -row[2])

    def preview_clusters(self, max_side=None):
        """(h, w) cluster ids at the working size, or smaller so that no side exceeds ``max_side``."""
        width, height = self.image.size
        if max_side and max(width, height) > max_side:
            scale = max_side / max(width, height)
            width, height = max(1, round(width * scale)), max(1, round(height * scale))
        if self.clusters.shape == (height, width):
            return self.clusters
        indices_y = (np.arange(height) * self.clusters.shape[0] // height).astype(np.int64)
        indices_x = (np.arange(width) * self.clusters.shape[1] // width).astype(np.int64)
        return self.clusters[indices_y][:, indices_x]  # (h, w)

    def colour(self, max_side=None, only=None):
        """The colour map (merged names' colours); with ``only`` a class name, that class alone."""
        clusters = self.preview_clusters(max_side)
        colours = self.loaded.names.merged_colours()  # (K, 3)
        picture = colours[clusters]  # (h, w, 3)
        if only is not None:
            picture = np.where(self.class_mask(clusters, only)[..., None], picture, 255).astype(np.uint8)
        return Image.fromarray(picture)

    def overlay(self, opacity=0.5, max_side=None, only=None):
        """The colours blended over the photo; with ``only`` that class in colour, the rest dimmed."""
        clusters = self.preview_clusters(max_side)
        photo = np.asarray(self.image.resize(clusters.shape[::-1], Image.BILINEAR), dtype=np.float32)  # (h, w, 3)
        colours = self.loaded.names.merged_colours().astype(np.float32)[clusters]  # (h, w, 3)
        blended = photo * (1 - opacity) + colours * opacity
        if only is not None:
            blended = np.where(self.class_mask(clusters, only)[..., None], blended, photo * HIGHLIGHT_DIM)
        return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))

    def class_mask(self, clusters, name):
        ids = [ids for class_name, _, ids in self.loaded.names.classes() if class_name == name]
        return np.isin(clusters, ids[0] if ids else [])


def save_clusters_png(clusters, colours, path):
    """The indexed clusters PNG (pixel value = cluster id, ``colours`` its palette) as predict.py
    writes it: atomically, with the project's PNG mark."""
    save_marked_png(indexed_png(clusters, colours), path)


def check_image_name(name):
    if Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
        raise PageError(
            f"{name}: not an image (expected a photo such as .jpg, .png, .webp or .tif; "
            f"{len(IMAGE_EXTENSIONS)} extensions are read)"
        )


def check_pixels(path):
    """Refuse an image above Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS), read from
    its header. Pillow itself only warns up to twice the limit, and would decode such a file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except Image.DecompressionBombError as err:
        raise PageError(f"{path.name}: {err}; it is refused as a decompression bomb") from err
    except (OSError, SyntaxError, ValueError):
        return  # not decodable: the photo reader says so
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        raise PageError(
            f"{path.name}: {width}x{height} is {width * height} pixels, above Pillow's decompression-bomb limit "
            f"of {limit}; it is refused as a decompression bomb"
        )


def segment_photo(loaded, path, device, flip=True, crf=False, short_side=None, precision="fp32", batch_size=32):
    """A Segmentation of the photo at ``path``, the maps exactly predict.py's for the same options.

    ``short_side`` None uses the checkpoint's own working size (the image's own for the
    benchmarks' checkpoints), as predict.py's default does.
    """
    path = Path(path)
    check_image_name(path.name)
    check_pixels(path)
    try:
        image, original = read_photo(path, short_side or loaded.default_short_side)
    except DataError as err:
        raise PageError(str(err).replace(str(path), path.name)) from err
    if crf:
        with CRFPool(workers=0) as pool:
            pixels, probs = window_probabilities(loaded.model, image, device, flip=flip, precision=precision)
            pool.submit(pixels, probs, None)
            ((_, maps),) = pool.finished(wait_all=True)
        clusters = at_size(maps[0], original)
    else:
        clusters = segment(
            loaded.model, image, device, flip=flip, precision=precision, batch_size=batch_size, size=original
        )
    return Segmentation(path.name, image, clusters, loaded)
