"""Names and colours of a model's clusters: the one format every tool reads and writes.

A model trained on a collection nobody labelled has clusters, not classes. The user looks at them
(scripts/gallery.py, the page of app.py) and writes names into a YAML file; predict.py, eval.py's
pictures, the gallery and the page then colour and name the clusters by it::

    checkpoint: last_model.pth        # file name and sha256 of the checkpoint the names were made for
    sha256: 3f2a...
    clusters:
      - {id: 0, name: sky, colour: "#87ceeb", share: 0.2134}   # share: fraction 0..1 of the pixels scanned
      - {id: 1, name: ground, colour: "#8b4513", share: 0.1022}

Clusters given the same name are one class in the outputs (legend, shares, colour map), coloured as
their lowest id. Without ``--names`` and ``--assignment``, ``<checkpoint stem>.clusters.yaml`` beside
the checkpoint is used when present (docs/own_data.md).
"""

import functools
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from data.spec import distinct_palette
from utils.errors import ReportedError
from utils.files import write_text_atomic

NAMES_SUFFIX = ".clusters.yaml"
DEFAULT_NAME = "cluster {}"
COLOUR_PATTERN = re.compile(r"#[0-9a-fA-F]{6}")
UNMATCHED_COLOUR = (0, 0, 0)  # a cluster an --assignment matched to no class, as predict.py always drew it


class NamesError(ReportedError, ValueError):
    """A names file (or --names/--assignment together) is not what the tools expect."""


@dataclass
class ClusterNames:
    """One name, colour and (optional) share per cluster id, and the checkpoint they were made for."""

    names: list  # (K,) str
    colours: np.ndarray  # (K, 3) uint8
    shares: list  # (K,) float or None
    checkpoint: str = None
    sha256: str = None
    source: Path = None  # the file they were read from, if any

    @property
    def num_clusters(self):
        return len(self.names)

    def classes(self):
        """[(name, colour, cluster ids)] with clusters of one name merged, in the order of each
        name's first cluster id; a merged class has the colour of its lowest id."""
        merged = {}
        for cluster, name in enumerate(self.names):
            merged.setdefault(name, []).append(cluster)
        return [(name, self.colours[ids[0]], ids) for name, ids in merged.items()]

    def class_of_cluster(self):
        """(K,) index into :meth:`classes` of every cluster id."""
        lookup = np.zeros(self.num_clusters, dtype=np.int64)
        for index, (_, _, ids) in enumerate(self.classes()):
            lookup[ids] = index
        return lookup

    def merged_colours(self):
        """(K, 3) uint8: every cluster in its class's colour (the colour map and overlay use it)."""
        classes = self.classes()
        return np.stack([classes[index][1] for index in self.class_of_cluster()])  # (K, 3)

    def legend_entries(self):
        """[(text, colour)] of a legend: each class's name, with its cluster ids unless it is the
        default name of its one cluster."""
        entries = []
        for name, colour, ids in self.classes():
            if len(ids) == 1 and name == DEFAULT_NAME.format(ids[0]):
                entries.append((name, colour))
            else:
                label = f"cluster {ids[0]}" if len(ids) == 1 else f"clusters {', '.join(map(str, ids))}"
                entries.append((f"{name} ({label})", colour))
        return entries

    def is_default(self):
        """Whether every name is the default ``cluster N`` (a file nobody has edited)."""
        return all(name == DEFAULT_NAME.format(cluster) for cluster, name in enumerate(self.names))

    def to_yaml(self):
        entries = []
        for cluster, (name, colour) in enumerate(zip(self.names, self.colours)):
            entry = {"id": cluster, "name": name, "colour": colour_text(colour)}
            if self.shares is not None and self.shares[cluster] is not None:
                entry["share"] = round(float(self.shares[cluster]), 6)
            entries.append(entry)
        header = yaml.safe_dump({"checkpoint": self.checkpoint, "sha256": self.sha256}, sort_keys=False)
        rows = "".join(
            "  - " + yaml.safe_dump(entry, default_flow_style=True, sort_keys=False, width=10**6).strip() + "\n"
            for entry in entries
        )
        return header + "clusters:\n" + rows


def colour_text(colour):
    return "#" + "".join(f"{int(value):02x}" for value in colour)


def default_palette(num_clusters):
    """The fixed palette of clusters without names: distinct colours, none black (ignored pixels)."""
    return distinct_palette(num_clusters)


def default_names(num_clusters, palette=None, shares=None, checkpoint=None, sha256=None):
    """``cluster N`` in ``palette`` (default :func:`default_palette`) for every cluster id."""
    palette = default_palette(num_clusters) if palette is None else np.asarray(palette, dtype=np.uint8)
    return ClusterNames(
        [DEFAULT_NAME.format(cluster) for cluster in range(num_clusters)],
        np.array(palette[:num_clusters], dtype=np.uint8),
        list(shares) if shares is not None else None,
        None if checkpoint is None else Path(checkpoint).name,
        sha256,
    )


def file_sha256(path):
    """The file's sha256, computed once per version of the file (a command asks for it in several
    places: the names' check, predict.json, the gallery's names file)."""
    stat = os.stat(path)
    return _sha256_of(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256_of(path, size, mtime_ns):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def names_file_beside(checkpoint):
    """``<checkpoint stem>.clusters.yaml`` in the checkpoint's folder: the names found without --names."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + NAMES_SUFFIX)


def read_names(path, num_clusters):
    """The names of a YAML names file for a model of ``num_clusters``; a file that is not YAML (or
    holds a tag that would build an object), an unknown or missing id, a repeated id or a bad colour
    is one NamesError naming the file and the entry."""
    path = Path(path)
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise NamesError(f"{path}: cannot read the names file ({err.strerror or err})") from err
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise NamesError(f"{path}: not a YAML names file ({str(err).splitlines()[0]})") from err
    expected = "expected 'clusters:' with one {id, name, colour} entry per cluster (docs/own_data.md)"
    if not isinstance(content, dict) or not isinstance(content.get("clusters"), list):
        raise NamesError(f"{path}: {expected}")
    names, colours, shares = {}, {}, {}
    for index, entry in enumerate(content["clusters"], 1):
        where = f"{path}: clusters entry {index}"
        if not isinstance(entry, dict) or "id" not in entry or "name" not in entry:
            raise NamesError(f"{where}: {expected}, got {entry!r}")
        cluster = entry["id"]
        if isinstance(cluster, bool) or not isinstance(cluster, int) or not 0 <= cluster < num_clusters:
            raise NamesError(f"{where}: id {cluster!r} is not a cluster of this model (ids 0..{num_clusters - 1})")
        if cluster in names:
            raise NamesError(f"{where}: id {cluster} is given twice")
        name = entry["name"]
        if not isinstance(name, (str, int, float)) or isinstance(name, bool) or not str(name).strip():
            raise NamesError(f"{where}: id {cluster}: name {name!r}: expected a non-empty text")
        colour = entry.get("colour")
        if colour is not None and (not isinstance(colour, str) or not COLOUR_PATTERN.fullmatch(colour)):
            raise NamesError(f"{where}: id {cluster}: colour {colour!r}: expected #rrggbb")
        share = entry.get("share")
        if share is not None and (
            isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1
        ):
            raise NamesError(f"{where}: id {cluster}: share {share!r}: expected a fraction 0..1")
        names[cluster], colours[cluster], shares[cluster] = str(name).strip(), colour, share
    missing = [cluster for cluster in range(num_clusters) if cluster not in names]
    if missing:
        raise NamesError(
            f"{path}: cluster id(s) {missing[:10]}{' ...' if len(missing) > 10 else ''} missing; "
            f"a names file names every cluster 0..{num_clusters - 1}"
        )
    palette = default_palette(num_clusters)
    rgb = np.array(
        [
            palette[cluster] if colours[cluster] is None else [int(colours[cluster][i : i + 2], 16) for i in (1, 3, 5)]
            for cluster in range(num_clusters)
        ],
        dtype=np.uint8,
    )
    share_list = [shares[cluster] for cluster in range(num_clusters)]
    return ClusterNames(
        [names[cluster] for cluster in range(num_clusters)],
        rgb,
        None if all(share is None for share in share_list) else share_list,
        content.get("checkpoint"),
        content.get("sha256"),
        path,
    )


def write_names(path, names):
    write_text_atomic(path, names.to_yaml())


def names_from_assignment(cluster_to_class, class_names, palette):
    """Names from an eval.py matching: each cluster named and coloured as its class (clusters of
    one class merge), clusters matched to no class ``cluster N`` in black."""
    names, colours = [], []
    for cluster, matched in enumerate(cluster_to_class):
        if matched >= 0:
            names.append(class_names[matched])
            colours.append(palette[matched])
        else:
            names.append(DEFAULT_NAME.format(cluster))
            colours.append(UNMATCHED_COLOUR)
    return ClusterNames(names, np.array(colours, dtype=np.uint8), None)


def add_names_options(parser, what="the outputs"):
    """--names and --strict-names, one meaning in every command that colours and names clusters."""
    parser.add_argument(
        "--names",
        default=None,
        metavar="FILE",
        help=f"names file naming and colouring the clusters in {what} (default: <checkpoint stem>.clusters.yaml "
        "beside the checkpoint, when present; docs/own_data.md)",
    )
    parser.add_argument(
        "--strict-names", action="store_true", help="refuse a names file made for another checkpoint (sha256)"
    )


def resolve_names(checkpoint, num_clusters, names_path=None, strict=False, logger=None):
    """The names a tool uses for ``checkpoint``: ``names_path`` if given, else the file beside the
    checkpoint when present, else None (the caller's default: ``cluster N``, or an --assignment).

    A names file made for another checkpoint (its sha256 differs) is a warning naming both files, an
    error with ``strict``.
    """
    path = Path(names_path) if names_path is not None else names_file_beside(checkpoint)
    if names_path is None and not path.is_file():
        return None
    names = read_names(path, num_clusters)
    if names.sha256 is not None and names.sha256 != file_sha256(checkpoint):
        message = (
            f"{path}: made for another checkpoint ({names.checkpoint}, sha256 {str(names.sha256)[:12]}...) "
            f"than {checkpoint}"
        )
        if strict:
            raise NamesError(message + " (--strict-names)")
        if logger is not None:
            logger.warning("%s; its names are used anyway (--strict-names refuses them)", message)
    return names
